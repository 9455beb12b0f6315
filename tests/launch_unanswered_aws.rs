//! A launch whose answer is lost, against moto's EC2: the controllers (in-memory API,
//! production backend factory) launch through a proxy that forwards `RunInstances` to
//! moto (the instance starts) and loses the answer. Whatever the backends and regions,
//! exactly one machine lives once the instance is up, and none once it is deleted.

mod support;
#[allow(dead_code)] // the catalog helpers are for the backend tests
mod support_aws;

use std::time::Duration;

use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, InstanceSpec, LaunchOutcome};
use kpool::api::policy::PolicySpec;
use kpool::backends::allow::Allowances;
use kpool::backends::aws::client::Params;
use support::*;
use support_aws::proxy::{Fault, Lost, Proxy};
use support_aws::{moto, small, REGIONS};

/// One catalog row: t3.micro in `region` at `price`.
fn row(region: &str, price: f64) -> String {
    format!("t3.micro,{region},{price},2,1.0,0,,,False,,,,x86,{{}}\n")
}

/// A harness with the real backends, allowed to reach the proxy, and one aws Backend per
/// `(name, regions, catalog rows)`, all on moto through the proxy.
async fn on_moto(backends: &[(&str, &[&str], String)]) -> (Harness, Proxy) {
    let moto = moto();
    let proxy = Proxy::start(&moto.endpoint).await;
    let allow = Allowances::default().with_endpoints([proxy.endpoint.as_str()]);
    let h = Harness::with_real_backends_allowing(INSTALLATION, allow).await;
    for (name, regions, rows) in backends {
        let (creds, catalog, mut backend) = moto.backend_objects(name, rows, Default::default());
        backend.spec.regions = regions.iter().map(|r| r.to_string()).collect();
        backend.spec.endpoint = Some(proxy.endpoint.clone());
        h.create(creds).await;
        h.create(catalog).await;
        h.create(backend).await;
    }
    (h, proxy)
}

/// The EC2 instances tagged with machine `name` that are not terminated (or shutting
/// down), in every region, as `region/instance-id`, straight at moto.
async fn live_at_moto(name: &str) -> Vec<String> {
    let ec2 = moto().ec2();
    let mut live = Vec::new();
    for region in REGIONS {
        let mut p = Params::new();
        p.filter("tag:kpool.dev/machine", &[name])
            .filter("instance-state-name", &["pending", "running", "stopping", "stopped"]);
        let xml = ec2.call(region, "DescribeInstances", &p).await.expect("DescribeInstances");
        for part in xml.split("<instanceId>").skip(1) {
            live.push(format!("{region}/{}", &part[..part.find("</instanceId>").unwrap()]));
        }
    }
    live
}

/// Creates the instance `name` (launched on `backends` only), loses the answer of its
/// first `RunInstances` with `lost`, and checks: no other launch while the outcome is
/// unknown, then exactly one live machine, where the instance says it is; none once the
/// instance is deleted.
async fn lose_the_launch_answer(h: &Harness, proxy: &Proxy, name: &str, lost: Lost) {
    proxy.fail_next("RunInstances", 1, Fault::LoseReply(lost));
    let policy = PolicySpec { idle_duration: Some("off".into()), ..Default::default() };
    h.instance(name, InstanceSpec { resources: small(), policy, ..Default::default() }).await;
    h.settle(3).await;
    let st = h.get_instance(name).await.status.unwrap();
    let machine = st.machine_name.clone().unwrap();
    let live = live_at_moto(&machine).await;
    assert_eq!(live.len(), 1, "the lost launch started the machine, and nothing else was launched: {live:?}");
    assert_eq!(proxy.seen("RunInstances").len(), 1, "no other launch while the first one's outcome is unknown");
    assert_eq!(st.phase, InstancePhase::Provisioning, "{:?}", st.conditions);
    let resolving = find(&st.conditions, "LaunchResolved").expect("LaunchResolved");
    assert_eq!(resolving.reason, "Resolving", "{resolving:?}");

    h.advance(Duration::from_secs(5));
    h.settle(3).await;
    let st = h.get_instance(name).await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);
    let offer = st.offer.clone().unwrap();
    let live = live_at_moto(&machine).await;
    assert_eq!(live.len(), 1, "exactly one live machine across regions: {live:?}");
    assert_eq!(
        live[0],
        format!("{}/{}", offer.region, st.provider_id.clone().unwrap()),
        "the instance records where it runs"
    );
    assert_eq!(proxy.seen("RunInstances").len(), 1);
    assert_eq!(st.launch_attempts.len(), 1, "{:?}", st.launch_attempts);
    assert_eq!(st.launch_attempts[0].outcome, LaunchOutcome::Launched);

    let mut deleted = false;
    for _ in 0..5 {
        if h.delete_instance(name).await.is_ok() {
            deleted = true;
            break;
        }
    }
    assert!(deleted, "the instance is deleted");
    assert_eq!(live_at_moto(&machine).await, Vec::<String>::new(), "no machine once the instance is deleted");
}

#[tokio::test]
async fn a_dropped_launch_answer_in_a_two_region_backend_leaves_one_machine_in_the_region_it_records() {
    let rows = row("us-east-1", 0.0104) + &row("us-west-2", 0.0116);
    let (h, proxy) = on_moto(&[("ec2", &REGIONS, rows)]).await;
    lose_the_launch_answer(&h, &proxy, "two-regions", Lost::Drop).await;
}

#[tokio::test]
async fn a_launch_answered_with_a_server_error_after_it_took_effect_leaves_one_machine_across_two_backends() {
    let (h, proxy) = on_moto(&[
        ("east", &["us-east-1"], row("us-east-1", 0.0104)),
        ("west", &["us-west-2"], row("us-west-2", 0.0116)),
    ])
    .await;
    lose_the_launch_answer(&h, &proxy, "two-backends", Lost::Status(503)).await;
}

#[tokio::test]
async fn a_lost_launch_answer_with_no_other_offer_is_found_instead_of_failing_and_leaking() {
    let (h, proxy) = on_moto(&[("only", &["us-east-1"], row("us-east-1", 0.0104))]).await;
    lose_the_launch_answer(&h, &proxy, "one-offer", Lost::Status(500)).await;
}
