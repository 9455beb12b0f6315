//! `Pool.status.cost`: the pool's spend from its instances' billed time, busy and idle
//! apart, with the runs they served; it stays when ended Instances are deleted.

mod support;

use std::time::Duration;

use kpool::api::instance::InstancePhase;
use kpool::api::pool::{Pool, PoolSpec, Spend};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::RunSpec;
use support::*;

/// Eight CPUs: an m5.2xlarge at $0.384/h.
fn run_in(pool: &str) -> RunSpec {
    let resources = ResourcesSpec { cpu: Some("8".into()), ..Default::default() };
    RunSpec { pool: Some(pool.into()), resources, ..Default::default() }
}

async fn cost(h: &Harness) -> kpool::api::pool::PoolCost {
    h.api::<Pool>().get("p").await.unwrap().status.unwrap().cost.expect("status.cost")
}

#[tokio::test]
async fn the_pool_sums_its_instances_spend_and_keeps_it_when_they_are_deleted() {
    let h = Harness::new().await;
    h.pool("p", PoolSpec::default()).await;
    // a: 30 min busy, then 5 idle minutes until its idle duration ends it.
    h.run("a", run_in("p")).await;
    h.settle(3).await;
    h.advance(Duration::from_secs(1800));
    h.exec.exit("a", 0);
    h.settle(3).await;
    h.advance(Duration::from_secs(300));
    h.settle(4).await;
    let first = h.get_run("a").await.status.unwrap().instance.unwrap();
    assert_eq!(h.get_instance(&first).await.status.unwrap().phase, InstancePhase::Terminated);
    // b: a new machine; then c reuses it; both run 10 min.
    h.run("b", run_in("p")).await;
    h.settle(3).await;
    h.advance(Duration::from_secs(600));
    h.exec.exit("b", 0);
    h.settle(3).await;
    h.run("c", run_in("p")).await;
    h.settle(3).await;
    h.advance(Duration::from_secs(600));
    h.exec.exit("c", 0);
    h.settle(3).await;
    let c = cost(&h).await;
    // a: 2100 s (1800 busy, 300 idle); b's machine: 1200 s busy so far, 2 runs, 1 reused.
    let want = Spend {
        dollars: 0.352,
        busy_dollars: 0.32,
        idle_dollars: 0.032,
        runs: 3,
        reused_runs: 1,
        instances: 2,
        ..Default::default()
    };
    assert_eq!(c.total, want, "{c:?}");
    assert_eq!(c.deleted, Spend::default());

    // a's Instance is deleted: its spend moves to `deleted`, the total stays.
    let _ = h.delete_instance(&first).await;
    h.settle(2).await;
    let c = cost(&h).await;
    assert_eq!(c.total, want, "{c:?}");
    assert_eq!(
        c.deleted,
        Spend {
            dollars: 0.224,
            busy_dollars: 0.192,
            idle_dollars: 0.032,
            runs: 1,
            reused_runs: 0,
            instances: 1,
            ..Default::default()
        }
    );
    assert_eq!(c.recently_deleted.len(), 1);
}

/// A fold retried (a crash between it and the finalizer's removal) is not counted twice.
#[tokio::test]
async fn a_retried_fold_counts_once() {
    let h = Harness::new().await;
    h.pool("p", PoolSpec::default()).await;
    h.run("a", run_in("p")).await;
    h.settle(3).await;
    h.advance(Duration::from_secs(3600));
    h.exec.exit("a", 0);
    h.settle(3).await;
    let name = h.get_run("a").await.status.unwrap().instance.unwrap();
    let inst = h.get_instance(&name).await;
    let st = inst.status.clone().unwrap();
    for _ in 0..2 {
        kpool::controllers::pool_cost::fold(&h.ctx, &inst, &st).await.unwrap();
    }
    let c = cost(&h).await;
    assert_eq!((c.deleted.instances, c.deleted.dollars), (1, 0.384), "{c:?}");
    // The instance still exists (its finalizer not removed yet): not counted twice either.
    h.settle(2).await;
    assert_eq!(cost(&h).await.total.instances, 1);
}
