//! A pool's waiting runs are placed from one shared plan (`controllers::placement`): the
//! queue-order assignment is made once for a wave, not once per run, and a plan that no
//! longer holds for a run (a newcomer ahead of it, an instance gone idle since) is made
//! again rather than followed.

mod support;

use kpool::api::instance::{InstancePhase, InstanceSpec};
use kpool::api::policy::{CreationPolicy, PolicySpec};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use support::*;

fn cpu(spec: &str) -> ResourcesSpec {
    ResourcesSpec { cpu: Some(spec.into()), ..Default::default() }
}

/// A run that only ever reuses (so that one left without an instance waits, launching
/// nothing).
fn reusing(priority: i32) -> RunSpec {
    let policy = PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() };
    RunSpec { resources: cpu("4.."), policy, priority, ..Default::default() }
}

async fn idle(h: &Harness, name: &str) {
    h.instance(name, InstanceSpec { resources: cpu("4"), ..Default::default() }).await;
    for _ in 0..4 {
        h.reconcile_instance(name).await.unwrap();
    }
    assert_eq!(h.get_instance(name).await.status.unwrap().phase, InstancePhase::Idle, "{name}");
}

async fn on(h: &Harness, run: &str) -> (RunPhase, Option<String>) {
    let st = h.get_run(run).await.status.unwrap();
    (st.phase, st.instance)
}

#[tokio::test]
async fn a_wave_of_waiting_runs_is_placed_from_one_plan() {
    let h = Harness::new().await;
    let n = 12;
    for i in 0..n {
        h.run(&format!("r{i:02}"), reusing(0)).await;
    }
    h.settle(1).await;
    for i in 0..n {
        idle(&h, &format!("i{i:02}")).await;
    }
    let before = h.ctx.plans.made();
    // Newest first, the order that made every run reassign everything ahead of it.
    for i in (0..n).rev() {
        h.reconcile_run(&format!("r{i:02}")).await.unwrap();
    }
    let mut taken = std::collections::BTreeSet::new();
    for i in 0..n {
        let (phase, instance) = on(&h, &format!("r{i:02}")).await;
        assert_eq!(phase, RunPhase::Running, "r{i:02}");
        assert!(taken.insert(instance.unwrap()), "two runs on one instance");
    }
    assert_eq!(h.ctx.plans.made() - before, 1, "one plan for the wave");
}

#[tokio::test]
async fn a_newcomer_ahead_in_the_queue_is_not_passed_over_by_an_older_plan() {
    let h = Harness::new().await;
    h.run("a-older", reusing(0)).await;
    h.settle(1).await;
    idle(&h, "cpu-x").await;
    // A plan is made (a-older takes cpu-x) by another run's pass: b-other, which fits
    // nothing the plan gives it.
    h.run("b-other", RunSpec { resources: cpu("64.."), ..reusing(0) }).await;
    h.reconcile_run("b-other").await.unwrap();
    assert_eq!(on(&h, "b-other").await, (RunPhase::Pending, None));
    // An urgent run arrives before a-older claims.
    h.run("c-urgent", reusing(10)).await;
    h.reconcile_run("a-older").await.unwrap();
    assert_eq!(on(&h, "a-older").await, (RunPhase::Pending, None), "the urgent run is served first");
    h.reconcile_run("c-urgent").await.unwrap();
    assert_eq!(on(&h, "c-urgent").await, (RunPhase::Running, Some("cpu-x".into())));
}

#[tokio::test]
async fn an_instance_idle_since_the_plan_goes_to_a_run_the_plan_left_without() {
    let h = Harness::new().await;
    for name in ["a-first", "b-second"] {
        h.run(name, reusing(0)).await;
        h.settle(1).await;
    }
    idle(&h, "cpu-x").await;
    // The plan gives cpu-x to a-first and nothing to b-second, which waits.
    h.reconcile_run("b-second").await.unwrap();
    assert_eq!(on(&h, "b-second").await, (RunPhase::Pending, None));
    // Another instance goes idle: b-second takes it without a-first's pass in between.
    idle(&h, "cpu-y").await;
    h.reconcile_run("b-second").await.unwrap();
    assert_eq!(on(&h, "b-second").await, (RunPhase::Running, Some("cpu-y".into())));
    h.reconcile_run("a-first").await.unwrap();
    assert_eq!(on(&h, "a-first").await, (RunPhase::Running, Some("cpu-x".into())));
}

#[tokio::test]
async fn runs_arriving_one_at_a_time_extend_the_plan_in_queue_order() {
    let h = Harness::new().await;
    for name in ["i00", "i01", "i02"] {
        idle(&h, name).await;
    }
    let before = h.ctx.plans.made();
    for (n, name) in ["r0", "r1", "r2"].into_iter().enumerate() {
        h.run(name, reusing(0)).await;
        h.reconcile_run(name).await.unwrap();
        // Each newcomer is last in the queue: it takes the cheapest instance nobody
        // ahead of it was given, ties by name, as a new assignment would.
        assert_eq!(on(&h, name).await, (RunPhase::Running, Some(format!("i0{n}"))), "{name}");
    }
    assert_eq!(h.ctx.plans.made() - before, 1, "one plan, extended by each newcomer");
}
