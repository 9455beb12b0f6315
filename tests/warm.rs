//! Warm headroom (`Pool.spec.warm`): the pool keeps `minIdle` idle instances, replaces one
//! a run takes, ends the idle ones beyond it, and never goes beyond `maxInstances`.

mod support;

use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, WARM_LABEL};
use kpool::api::pool::{Pool, PoolSpec, WarmSpec, WarmStatus};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use kube::ResourceExt;
use support::*;

fn cpu(spec: &str) -> ResourcesSpec {
    ResourcesSpec { cpu: Some(spec.into()), ..Default::default() }
}

fn warm(min_idle: u32) -> Option<WarmSpec> {
    Some(WarmSpec { min_idle, resources: cpu("4"), policy: None })
}

/// The pool's warm instances by phase, ended ones left out.
async fn warm_phases(h: &Harness) -> Vec<(String, InstancePhase)> {
    let all = h.api::<kpool::api::instance::Instance>().list(&Default::default()).await.unwrap().items;
    let mut out: Vec<(String, InstancePhase)> = all
        .into_iter()
        .filter(|i| i.labels().contains_key(WARM_LABEL))
        .map(|i| (i.name_any(), i.status.map_or(InstancePhase::Pending, |s| s.phase)))
        .filter(|(_, p)| !matches!(p, InstancePhase::Terminated | InstancePhase::Failed))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn warm_status(h: &Harness) -> Option<WarmStatus> {
    h.api::<Pool>().get("gpu").await.unwrap().status.and_then(|s| s.warm)
}

#[tokio::test]
async fn a_warm_pool_keeps_min_idle_replaces_what_runs_take_and_ends_the_surplus() {
    let h = Harness::new().await;
    h.pool("gpu", PoolSpec { warm: warm(2), ..Default::default() }).await;
    h.settle(4).await;
    let idle = vec![("gpu-warm-0".to_string(), InstancePhase::Idle), ("gpu-warm-1".to_string(), InstancePhase::Idle)];
    assert_eq!(warm_phases(&h).await, idle);
    assert_eq!(warm_status(&h).await, Some(WarmStatus { wanted: 2, ready: 2, starting: 0 }));
    let launched = h.backend.creates().len();
    assert_eq!(launched, 2);

    // A run takes one at once, and the pool launches a replacement.
    h.run("train", RunSpec { pool: Some("gpu".into()), resources: cpu("4"), ..Default::default() }).await;
    h.settle(4).await;
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running);
    assert!(st.instance.as_deref().unwrap().starts_with("gpu-warm-"), "a warm instance: {st:?}");
    let phases = warm_phases(&h).await;
    assert_eq!(phases.iter().filter(|(_, p)| *p == InstancePhase::Idle).count(), 2, "{phases:?}");
    assert_eq!(phases.iter().filter(|(_, p)| *p == InstancePhase::Busy).count(), 1, "{phases:?}");
    assert_eq!(h.backend.creates().len(), launched + 1);

    // The run ends: three idle, one beyond minIdle is ended; its machine goes.
    h.exec.exit("train", 0);
    h.settle(5).await;
    let phases = warm_phases(&h).await;
    assert_eq!(phases.iter().filter(|(_, p)| *p == InstancePhase::Idle).count(), 2, "{phases:?}");
    assert_eq!(phases.len(), 2, "the surplus one ended and was removed: {phases:?}");
    assert_eq!(h.backend.live_machines().len(), 2);
    assert_eq!(warm_status(&h).await, Some(WarmStatus { wanted: 2, ready: 2, starting: 0 }));

    // minIdle lowered to 0: every idle warm instance ends.
    let mut pool = h.api::<Pool>().get("gpu").await.unwrap();
    pool.spec.warm = warm(0);
    h.api::<Pool>().replace("gpu", &Default::default(), &pool).await.unwrap();
    h.settle(5).await;
    assert_eq!(warm_phases(&h).await, vec![]);
    assert!(h.backend.live_machines().is_empty());
}

#[tokio::test]
async fn warm_headroom_never_goes_beyond_max_instances_and_says_so() {
    let h = Harness::new().await;
    h.pool("gpu", PoolSpec { max_instances: Some(2), warm: warm(3), ..Default::default() }).await;
    h.settle(4).await;
    assert_eq!(warm_phases(&h).await.len(), 2);
    assert_eq!(warm_status(&h).await, Some(WarmStatus { wanted: 3, ready: 2, starting: 0 }));
    let pool = h.api::<Pool>().get("gpu").await.unwrap().status.unwrap();
    let c = find(&pool.conditions, "Warm").expect("a Warm condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NoRoom"), "{c:?}");
    assert!(c.message.contains("maxInstances (2)"), "{}", c.message);
    assert_eq!(h.backend.creates().len(), 2);
}
