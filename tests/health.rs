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
use kpool::backends::allow::Allowances;
use kpool::backends::aws::client::Params;
use support::*;
use support_aws::{moto, small};
use support_ssh::*;

/// A harness with the real backends, allowed to reach moto (and `also`), and the aws
/// Backend `ec2` on moto whose catalog has the one `row`.
async fn ec2_on_moto(row: &str, also: &[&str]) -> Harness {
    let moto = moto();
    let endpoints: Vec<&str> = std::iter::once(moto.endpoint.as_str()).chain(also.iter().copied()).collect();
    let h = Harness::with_real_backends_allowing(INSTALLATION, Allowances::default().with_endpoints(endpoints)).await;
    let (creds, catalog, backend) = moto.backend_objects("ec2", row, Default::default());
    h.create(creds).await;
    h.create(catalog).await;
    h.create(backend).await;
    h
}

#[tokio::test]
async fn a_spot_machine_aws_takes_back_is_seen_as_reclaimed() {
    let moto = moto();
    let h = ec2_on_moto("t3.micro,us-east-1,0.0031,2,1.0,0,,,True,,,,x86,{}\n", &[]).await;
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

/// The EC2 state (`running`, `terminated`, …) of instance `id` in `region`, straight at moto.
async fn ec2_state(region: &str, id: &str) -> String {
    let mut p = Params::new();
    p.set("InstanceId.1", id);
    let xml = moto().ec2().call(region, "DescribeInstances", &p).await.expect("DescribeInstances");
    let at = xml.find("<instanceState>").expect("an instance state");
    let state = &xml[at..];
    let start = state.find("<name>").unwrap() + "<name>".len();
    state[start..start + state[start..].find("</name>").unwrap()].to_string()
}

#[tokio::test]
async fn a_machine_outside_the_edited_regions_is_not_gone_and_is_terminated_where_it_runs() {
    use kpool::api::backend::Backend;
    use kube::api::PostParams;
    let h = ec2_on_moto("t3.micro,us-east-1,0.0104,2,1.0,0,,,False,,,,x86,{}\n", &[]).await;
    let policy =
        PolicySpec { backends: Some(vec!["ec2".into()]), idle_duration: Some("off".into()), ..Default::default() };
    h.instance("moved", InstanceSpec { resources: small(), policy, ..Default::default() }).await;
    h.settle(3).await;
    let st = h.get_instance("moved").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);
    assert_eq!(st.offer.as_ref().unwrap().region, "us-east-1");
    let id = st.provider_id.clone().unwrap();

    // The Backend now launches in us-west-2 only; the machine still runs in us-east-1.
    let backends = h.api::<Backend>();
    let mut edited = backends.get("ec2").await.expect("the Backend");
    edited.spec.regions = vec!["us-west-2".into()];
    backends.replace("ec2", &PostParams::default(), &edited).await.expect("edit the regions");

    // Health checks look where the machine was launched: it is there, nothing is lost.
    for _ in 0..2 {
        h.advance(Duration::from_secs(60));
        h.settle(2).await;
    }
    let st = h.get_instance("moved").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);
    assert_eq!(ec2_state("us-east-1", &id).await, "running");

    // Deleting the instance terminates its machine in us-east-1.
    let mut deleted = false;
    for _ in 0..20 {
        let _ = h.delete_instance("moved").await;
        if h.api::<kpool::api::instance::Instance>().get_opt("moved").await.unwrap().is_none() {
            deleted = true;
            break;
        }
        h.advance(Duration::from_secs(5));
    }
    assert!(deleted, "the instance is still there: {:?}", h.get_instance("moved").await.status);
    assert!(
        matches!(ec2_state("us-east-1", &id).await.as_str(), "shutting-down" | "terminated"),
        "{}",
        ec2_state("us-east-1", &id).await
    );
}

#[tokio::test]
async fn a_teardown_the_provider_cannot_do_says_why_and_never_marks_the_machine_gone() {
    use kpool::api::backend::Backend;
    use kube::api::PostParams;
    let moto = moto();
    // An endpoint the operator allows but where nothing answers (the Backend is pointed
    // at an EC2 that does not have, or cannot be reached for, the machine).
    let dead = {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}")
    };
    let h = ec2_on_moto("t3.micro,us-east-1,0.0104,2,1.0,0,,,False,,,,x86,{}\n", &[dead.as_str()]).await;
    let policy =
        PolicySpec { backends: Some(vec!["ec2".into()]), idle_duration: Some("off".into()), ..Default::default() };
    h.instance("stuck", InstanceSpec { resources: small(), policy, ..Default::default() }).await;
    h.settle(3).await;
    let st = h.get_instance("stuck").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);
    let id = st.provider_id.clone().unwrap();

    let backends = h.api::<Backend>();
    let point = |endpoint: String| {
        let backends = backends.clone();
        async move {
            let mut edited = backends.get("ec2").await.expect("the Backend");
            edited.spec.endpoint = Some(endpoint);
            backends.replace("ec2", &PostParams::default(), &edited).await.expect("edit the endpoint");
        }
    };
    point(dead.clone()).await;

    // The health check cannot ask: nothing changes.
    h.advance(Duration::from_secs(60));
    h.settle(2).await;
    assert_eq!(h.get_instance("stuck").await.status.unwrap().phase, InstancePhase::Idle);

    // Deleting the instance fails loudly and keeps it (and its finalizer) until it works.
    for _ in 0..3 {
        assert!(h.delete_instance("stuck").await.is_err());
        h.advance(Duration::from_secs(5));
    }
    let st = h.get_instance("stuck").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Terminating, "{:?}", st.conditions);
    let teardown = find(&st.conditions, "Teardown").expect("a Teardown condition");
    assert_eq!((teardown.status.as_str(), teardown.reason.as_str()), ("False", "DeleteFailed"), "{teardown:?}");
    assert!(teardown.message.contains("deleting the machine failed"), "{}", teardown.message);
    assert_eq!(ec2_state("us-east-1", &id).await, "running");

    // Pointed back, the teardown finishes: the machine is terminated and the instance goes.
    point(moto.endpoint.clone()).await;
    let mut deleted = false;
    for _ in 0..20 {
        let _ = h.delete_instance("stuck").await;
        if h.api::<kpool::api::instance::Instance>().get_opt("stuck").await.unwrap().is_none() {
            deleted = true;
            break;
        }
        h.advance(Duration::from_secs(5));
    }
    assert!(deleted, "the instance is still there: {:?}", h.get_instance("stuck").await.status);
    assert!(matches!(ec2_state("us-east-1", &id).await.as_str(), "shutting-down" | "terminated"));
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
