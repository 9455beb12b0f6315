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
    // Newest first, the order that made every run reassign everything ahead of it. The
    // first pass writes every run's claim (a batch); the others start where theirs is.
    h.reconcile_run(&format!("r{:02}", n - 1)).await.unwrap();
    for i in 0..n {
        let st = h.get_instance(&format!("i{i:02}")).await.status.unwrap();
        assert_eq!(st.phase, InstancePhase::Busy, "i{i:02} claimed by the first pass");
    }
    for i in (0..n - 1).rev() {
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

/// A plan's claims are written by the pass that makes it (a batch), except for a run
/// that waits for an instance provisioned for it: its own pass claims (and lets that
/// instance go). Such a run follows the plan later, unless a run ahead of it came since.
#[tokio::test]
async fn a_newcomer_ahead_in_the_queue_is_not_passed_over_by_an_older_plan() {
    let h = Harness::new().await;
    // a-older provisions an instance (not launched yet) and waits for it.
    h.run("a-older", RunSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.reconcile_run("a-older").await.unwrap();
    let provisioning = h.get_run("a-older").await.status.unwrap().provisioning_instance;
    assert!(provisioning.is_some(), "a-older provisions");
    idle(&h, "cpu-x").await;
    // A plan is made (a-older takes cpu-x) by another run's pass: b-other, which fits
    // nothing the plan gives it. The batch leaves a-older's claim to a-older.
    h.run("b-other", RunSpec { resources: cpu("64.."), ..reusing(0) }).await;
    h.reconcile_run("b-other").await.unwrap();
    assert_eq!(on(&h, "b-other").await, (RunPhase::Pending, None));
    assert_eq!(h.get_instance("cpu-x").await.status.unwrap().phase, InstancePhase::Idle);
    // An urgent run arrives before a-older claims.
    h.run("c-urgent", reusing(10)).await;
    h.reconcile_run("a-older").await.unwrap();
    assert_eq!(on(&h, "a-older").await.1, None, "the urgent run is served first");
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

/// What an instance's change wakes (`runtime::runs_woken_by`, the run controller's watch
/// of instances): a claim wakes the claiming run alone; an instance that went idle wakes
/// the runs waiting in its own pool, not another pool's. Waking every waiting run on
/// every claim made a wave of N runs N² placement passes.
#[tokio::test]
async fn a_claim_wakes_its_run_alone_and_an_idle_instance_the_runs_waiting_in_its_pool() {
    use kpool::api::pool::PoolSpec;
    use kpool::controllers::runtime::runs_woken_by;
    let h = Harness::new().await;
    h.pool("other", PoolSpec::default()).await;
    for r in ["r0", "r1", "r2"] {
        h.run(r, reusing(0)).await;
    }
    h.run("elsewhere", RunSpec { pool: Some("other".into()), ..reusing(0) }).await;
    h.settle(1).await;
    idle(&h, "i0").await;
    let runs = || async {
        let runs: Vec<_> = h.api::<kpool::api::run::Run>().list(&Default::default()).await.unwrap().items;
        runs.into_iter().map(std::sync::Arc::new).collect::<Vec<_>>()
    };
    let woken = |i: &kpool::api::instance::Instance, runs: &[_]| {
        let mut names: Vec<String> = runs_woken_by(i, runs).into_iter().map(|r| r.name).collect();
        names.sort();
        names
    };
    let free = h.get_instance("i0").await;
    assert_eq!(woken(&free, &runs().await), ["r0", "r1", "r2"], "an idle instance wakes its pool's waiting runs");
    h.reconcile_run("r0").await.unwrap();
    let claimed = h.get_instance("i0").await;
    assert_eq!(claimed.status.as_ref().unwrap().run.as_deref(), Some("r0"));
    assert_eq!(woken(&claimed, &runs().await), ["r0"], "a claim wakes its run alone");
}

/// A run whose pass finds its pool's plan being made (another pass holds the pool) waits
/// to be woken and writes nothing: the pass that places it records the generation with
/// its decision. Recording it on the deferred pass cost a read and a status write per
/// run of a stream (and another pass, woken by that write).
#[tokio::test]
async fn a_run_deferred_to_the_pass_placing_its_pool_writes_nothing_until_it_is_placed() {
    use kpool::api::pool::DEFAULT_POOL_NAME;
    use kpool::api::run::{Run, RunStatus};
    let h = Harness::new().await;
    idle(&h, "i00").await;
    // As the API server creates it: the status the schema defaults (phase Pending,
    // generation 0 observed).
    let mut run = Run::new("r0", reusing(0));
    run.metadata.generation = Some(1);
    run.status = Some(RunStatus { observed_generation: Some(0), ..Default::default() });
    let created = h.create(run).await;
    let busy = h.ctx.plans.enter(NS, DEFAULT_POOL_NAME).expect("nobody else holds the pool");
    let woken = h.ctx.plans.woken();
    h.reconcile_run("r0").await.unwrap();
    let deferred = h.get_run("r0").await;
    assert_eq!(deferred.metadata.resource_version, created.metadata.resource_version, "a deferred pass writes nothing");
    drop(busy);
    assert_eq!(h.ctx.plans.woken() - woken, 1, "the run is woken when the pool is free");
    h.reconcile_run("r0").await.unwrap();
    let placed = h.get_run("r0").await.status.unwrap();
    assert_eq!((placed.phase, placed.instance.as_deref()), (RunPhase::Running, Some("i00")));
    assert_eq!(placed.observed_generation, Some(1), "recorded with the claim");
}

/// A change of a pool's counts alone (a claim: one instance less idle, one more busy) is
/// written at most once per `COUNTS_INTERVAL`; the pool looks again when it ends and
/// writes the counts as they are then. A stream of runs wrote the pool once per run.
#[tokio::test]
async fn a_pool_writes_a_change_of_its_counts_alone_at_most_once_per_interval() {
    use kpool::api::pool::{Pool, PoolSpec, DEFAULT_POOL_NAME};
    use kpool::controllers::context::COUNTS_INTERVAL;
    use kube::runtime::controller::Action;
    let mut h = Harness::new().await;
    // The production interval (the harness writes counts at once).
    let fake: std::sync::Arc<dyn kpool::backends::BackendFactory> =
        std::sync::Arc::new(kpool::backends::fake::FakeFactory::with([h.backend.clone()]));
    let ctx = kpool::controllers::Context::new(
        h.ctx.client.clone(),
        fake,
        std::sync::Arc::new(h.exec.clone()),
        std::sync::Arc::new(h.clock.clone()),
    );
    assert_eq!(ctx.counts_interval, COUNTS_INTERVAL);
    h.ctx = std::sync::Arc::new(ctx);
    h.pool(DEFAULT_POOL_NAME, PoolSpec::default()).await;
    idle(&h, "i00").await;
    idle(&h, "i01").await;
    let reconcile = || async {
        let pool = h.api::<Pool>().get(DEFAULT_POOL_NAME).await.unwrap();
        kpool::controllers::pool::reconcile(std::sync::Arc::new(pool), h.ctx.clone()).await.unwrap()
    };
    let counts = || async {
        let st = h.api::<Pool>().get(DEFAULT_POOL_NAME).await.unwrap().status.unwrap();
        (st.idle, st.busy)
    };
    reconcile().await;
    assert_eq!(counts().await, (2, 0));
    h.run("r0", reusing(0)).await;
    h.reconcile_run("r0").await.unwrap();
    assert_eq!(on(&h, "r0").await.0, RunPhase::Running);
    let before = h.calls_made();
    assert_eq!(reconcile().await, Action::requeue(COUNTS_INTERVAL), "looks again when the interval ends");
    assert_eq!(h.status_writes_since(before, "pools/status"), 0, "counts alone wait for the interval");
    assert_eq!(counts().await, (2, 0));
    h.advance(COUNTS_INTERVAL);
    reconcile().await;
    assert_eq!(counts().await, (1, 1), "written once the interval is over");
}
