//! Health checks of live instances against real peers: the controllers (in-memory API,
//! production backend factory) ask moto's EC2 about a spot machine that AWS takes back,
//! and a real sshd that goes away under an idle host.

mod support;
#[allow(dead_code)] // the fault proxy is for the backend tests
mod support_aws;
mod support_ssh;

use std::time::Duration;

use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, InstanceSpec};
use kpool::api::policy::{PolicySpec, SpotPolicy};
use kpool::api::resources::ResourcesSpec;
use kpool::backends::allow::Allowances;
use kpool::backends::aws::client::Params;
use support::*;
use support_aws::moto;
use support_ssh::*;

fn small() -> ResourcesSpec {
    ResourcesSpec {
        cpu: Some("1..".into()),
        memory: Some("0.5GB..".into()),
        disk: Some("1GB..".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_spot_machine_aws_takes_back_is_seen_as_reclaimed() {
    let moto = moto();
    let allow_moto = Allowances::default().with_endpoints([moto.endpoint.as_str()]);
    let h = Harness::with_real_backends_allowing(INSTALLATION, allow_moto).await;
    let (creds, catalog, backend) =
        moto.backend_objects("ec2", "t3.micro,us-east-1,0.0031,2,1.0,0,,,True,,,,x86,{}\n", Default::default());
    h.create(creds).await;
    h.create(catalog).await;
    h.create(backend).await;
    let policy = PolicySpec {
        backends: Some(vec!["ec2".into()]),
        spot_policy: Some(SpotPolicy::Spot),
        idle_duration: Some("off".into()),
        ..Default::default()
    };
    h.instance("spot", InstanceSpec { resources: small(), policy, ..Default::default() }).await;
    h.settle(3).await;
    let st = h.get_instance("spot").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);
    assert!(st.offer.as_ref().unwrap().spot);
    let id = st.provider_id.clone().unwrap();

    // Still there at the next check: nothing changes.
    h.advance(Duration::from_secs(60));
    h.settle(1).await;
    assert_eq!(h.get_instance("spot").await.status.unwrap().phase, InstancePhase::Idle);

    // AWS reclaims the machine (terminated behind kpool's back, straight at moto).
    let raw = moto.ec2();
    let mut p = Params::new();
    p.set("InstanceId.1", id.clone());
    raw.call("us-east-1", "TerminateInstances", &p).await.expect("terminate");

    h.advance(Duration::from_secs(60));
    h.settle(2).await;
    let st = h.get_instance("spot").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Terminated, "{:?}", st.conditions);
    let ready = find(&st.conditions, "Ready").unwrap();
    assert_eq!(ready.reason, "Reclaimed", "{ready:?}");
    assert!(ready.message.contains(&id) || ready.message.contains("no longer has"), "{}", ready.message);
}

#[tokio::test]
async fn an_ssh_host_that_stops_answering_is_released_after_the_grace() {
    let mut sshd = Sshd::start();
    let h = Harness::with_real_backends().await;
    let (key, backend) = sshd.backend_objects("lab", "box");
    h.create(key).await;
    h.create(backend).await;
    let pin = PolicySpec {
        backends: Some(vec!["lab".into()]),
        instance_types: Some(vec!["box".into()]),
        idle_duration: Some("off".into()),
        ..Default::default()
    };
    h.instance("box", InstanceSpec { resources: small(), policy: pin, ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_instance("box").await.status.unwrap().phase, InstancePhase::Idle);

    sshd.stop();
    h.advance(Duration::from_secs(60));
    h.settle(1).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "within the grace");
    let c = find(&st.conditions, "Reachable").expect("flagged at once");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Unreachable"));

    h.advance(Duration::from_secs(300));
    h.settle(2).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Terminated, "{:?}", st.conditions);
    assert_eq!(find(&st.conditions, "Ready").unwrap().reason, "Unreachable");
}
