//! `spotPolicy: spot-then-on-demand`: spot first, on-demand once spot has found no
//! capacity for `spotFallback.afterWaiting` or the run lost `afterInterruptions` spot
//! machines; the instance's Event says which and why.

mod support;

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kpool::api::policy::{PolicySpec, RetryEvent, RetrySpec, SpotFallbackSpec, SpotPolicy};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use support::*;

fn a10g() -> ResourcesSpec {
    ResourcesSpec { gpu: Some("A10G".into()), ..Default::default() }
}

/// A spot offer (g5.xlarge, $0.40/h) and a dearer on-demand one (g5.2xlarge, $1.21/h).
async fn harness() -> Harness {
    let mut spot = offer("g5.xlarge", 4, 16.0, 1, "A10G", 24.0, 0.4);
    spot.spot = true;
    let on_demand = offer("g5.2xlarge", 8, 32.0, 1, "A10G", 24.0, 1.21);
    Harness::with_offers(vec![spot, on_demand]).await
}

fn spot_then_on_demand(fallback: SpotFallbackSpec, retry: Option<RetrySpec>) -> PolicySpec {
    PolicySpec {
        spot_policy: Some(SpotPolicy::SpotThenOnDemand),
        spot_fallback: Some(fallback),
        retry,
        ..Default::default()
    }
}

/// The notes of the `SpotFallback` Events about instance `name`.
async fn fallbacks(h: &Harness, name: &str) -> Vec<String> {
    let events = h.api::<Event>().list(&Default::default()).await.unwrap().items;
    events
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SpotFallback"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
async fn spot_without_capacity_is_tried_until_the_wait_ends_then_on_demand() {
    let h = harness().await;
    h.backend.no_capacity_for("g5.xlarge");
    let fallback = SpotFallbackSpec { after_waiting: Some("10m".into()), ..Default::default() };
    let policy = spot_then_on_demand(fallback, None);
    h.run("train", RunSpec { resources: a10g(), policy, ..Default::default() }).await;
    h.settle(3).await;
    let launched = |h: &Harness, t: &str| h.backend.creates().iter().filter(|c| format!("{c:?}").contains(t)).count();
    assert!(launched(&h, "g5.xlarge") >= 1, "spot tried first: {:?}", h.backend.creates());
    assert_eq!(launched(&h, "g5.2xlarge"), 0, "no on-demand launch while the wait runs");
    assert_eq!(h.get_run("train").await.status.unwrap().phase, RunPhase::Provisioning);

    // Still spot-only 9 minutes in (looked at again every 30 s, not failed).
    for _ in 0..18 {
        h.advance(Duration::from_secs(30));
        h.settle(1).await;
    }
    assert_eq!(launched(&h, "g5.2xlarge"), 0, "no on-demand launch before 10m");
    assert_eq!(h.get_run("train").await.status.unwrap().phase, RunPhase::Provisioning);

    for _ in 0..4 {
        h.advance(Duration::from_secs(30));
        h.settle(2).await;
    }
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "{st:?}");
    let inst = h.get_instance(st.instance.as_deref().unwrap()).await.status.unwrap();
    let offer = inst.offer.unwrap();
    assert_eq!((offer.instance_type.as_str(), offer.spot), ("g5.2xlarge", false));
    let why = fallbacks(&h, "train-0").await;
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].contains("no spot machine launched within 10m"), "{why:?}");
}

#[tokio::test]
async fn a_run_that_lost_its_spot_machine_is_retried_on_demand() {
    let h = harness().await;
    let retry = RetrySpec { on: Some(vec![RetryEvent::Interruption]), duration: Some("1h".into()) };
    let fallback = SpotFallbackSpec { after_interruptions: Some(1), ..Default::default() };
    let policy = spot_then_on_demand(fallback, Some(retry));
    h.run("train", RunSpec { resources: a10g(), policy, ..Default::default() }).await;
    h.settle(3).await;
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "{st:?}");
    let first = st.instance.clone().unwrap();
    let ist = h.get_instance(&first).await.status.unwrap();
    assert!(ist.offer.as_ref().unwrap().spot, "spot first: {:?}", ist.offer);
    assert!(fallbacks(&h, &first).await.is_empty());

    h.backend.reclaim(&ist.machine_name.unwrap());
    h.advance(Duration::from_secs(61));
    h.settle(3).await;
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!((st.phase, st.attempts), (RunPhase::Running, 1), "{st:?}");
    let second = st.instance.clone().unwrap();
    assert_ne!(second, first);
    let offer = h.get_instance(&second).await.status.unwrap().offer.unwrap();
    assert_eq!((offer.instance_type.as_str(), offer.spot), ("g5.2xlarge", false));
    let why = fallbacks(&h, &second).await;
    assert!(why.iter().any(|w| w.contains("lost 1 spot machine")), "{why:?}");
}
