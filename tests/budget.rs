//! Budgets (`Pool.spec.budget`, `Profile.spec.budget`): a launch that would go beyond
//! `maxHourlyPrice` or `maxSpend` waits with `BudgetExceeded`, naming the budget and the
//! figures; what runs is stopped for it only under a pool's `enforce: terminate`.

mod support;

use std::time::Duration;

use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, InstanceSpec};
use kpool::api::pool::{BudgetEnforce, BudgetSpec, Pool, PoolSpec, SpendLimit};
use kpool::api::profile::{BudgetScope, Profile, ProfileBudget, ProfileSpec};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use support::*;

/// Eight CPUs: an m5.2xlarge at $0.384/h.
fn cpu8() -> ResourcesSpec {
    ResourcesSpec { cpu: Some("8".into()), ..Default::default() }
}

fn run_in(pool: &str) -> RunSpec {
    RunSpec { pool: Some(pool.into()), resources: cpu8(), ..Default::default() }
}

/// The Ready reason and message of run `run`'s provisioning instance.
async fn waiting(h: &Harness, run: &str) -> (String, String) {
    let name = h.get_run(run).await.status.unwrap().provisioning_instance.expect("a provisioning instance");
    let st = h.get_instance(&name).await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Pending, "{st:?}");
    let c = find(&st.conditions, "Ready").unwrap();
    (c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_launch_beyond_the_hourly_budget_waits_and_the_run_takes_what_frees_up() {
    let h = Harness::new().await;
    let budget = BudgetSpec { max_hourly_price: Some(0.5), ..Default::default() };
    h.pool("capped", PoolSpec { budget: Some(budget), ..Default::default() }).await;
    h.run("a", run_in("capped")).await;
    h.settle(3).await;
    assert_eq!(h.get_run("a").await.status.unwrap().phase, RunPhase::Running);
    h.run("b", run_in("capped")).await;
    h.settle(3).await;
    assert_eq!(h.get_run("b").await.status.unwrap().phase, RunPhase::Provisioning);
    let (reason, message) = waiting(&h, "b").await;
    assert_eq!(reason, "BudgetExceeded");
    assert!(message.contains("budget.maxHourlyPrice $0.5/h") && message.contains("$0.3840/h"), "{message}");
    assert_eq!(h.backend.creates().len(), 1, "no second launch");
    let scheduled = find(&h.get_run("b").await.status.unwrap().conditions, "Scheduled").unwrap().message.clone();
    assert!(scheduled.contains("BudgetExceeded"), "the run says why it waits: {scheduled}");

    // a ends: b takes its idle instance; the waiting one is ended, never launched.
    h.exec.exit("a", 0);
    h.settle(4).await;
    let st = h.get_run("b").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "{st:?}");
    assert_eq!(h.backend.creates().len(), 1);
}

#[tokio::test]
async fn a_spend_limit_holds_launches_until_the_window_has_moved_on() {
    let h = Harness::new().await;
    let limit = SpendLimit { dollars: 0.1, per: "1d".into() };
    h.pool(
        "capped",
        PoolSpec { budget: Some(BudgetSpec { max_spend: Some(limit), ..Default::default() }), ..Default::default() },
    )
    .await;
    // 20 minutes at $0.384/h is $0.128; then 5 idle minutes until it is torn down.
    h.run("a", run_in("capped")).await;
    h.settle(3).await;
    h.advance(Duration::from_secs(1200));
    h.exec.exit("a", 0);
    h.settle(2).await;
    h.advance(Duration::from_secs(300));
    h.settle(3).await;
    h.run("b", run_in("capped")).await;
    h.settle(3).await;
    let (reason, message) = waiting(&h, "b").await;
    assert_eq!(reason, "BudgetExceeded");
    assert!(message.contains("budget.maxSpend $0.1 per 1d: $0.1600 spent"), "{message}");
    assert_eq!(h.backend.creates().len(), 1);

    // A day after a's machine went, the window holds nothing: b launches.
    h.advance(Duration::from_secs(86_400));
    h.settle(4).await;
    assert_eq!(h.get_run("b").await.status.unwrap().phase, RunPhase::Running);
    assert_eq!(h.backend.creates().len(), 2);
}

/// Two launches checked at the same moment: each sees the other's machine not launched
/// yet, but the second still counts the first's price (the process keeps the launches it
/// let through until the cache shows them), so together they stay within the cap.
#[tokio::test]
async fn two_launches_checked_at_once_stay_within_the_hourly_budget() {
    let h = Harness::new().await;
    let budget = BudgetSpec { max_hourly_price: Some(0.5), ..Default::default() };
    h.pool("capped", PoolSpec { budget: Some(budget), ..Default::default() }).await;
    for name in ["i1", "i2"] {
        let spec = InstanceSpec { pool: Some("capped".into()), resources: cpu8(), ..Default::default() };
        h.instance(name, spec).await;
        h.reconcile_instance(name).await.unwrap();
    }
    let (a, b) = tokio::join!(h.reconcile_instance("i1"), h.reconcile_instance("i2"));
    a.unwrap();
    b.unwrap();
    let phases = [h.get_instance("i1").await, h.get_instance("i2").await].map(|i| {
        let st = i.status.unwrap();
        (st.phase, find(&st.conditions, "Ready").unwrap().reason.clone())
    });
    let waits = phases.iter().filter(|p| **p == (InstancePhase::Pending, "BudgetExceeded".to_string())).count();
    let launched = phases.iter().filter(|p| p.0 != InstancePhase::Pending).count();
    assert_eq!((waits, launched), (1, 1), "one launches, one waits: {phases:?}");
    h.settle(3).await;
    assert_eq!(h.backend.creates().len(), 1, "$0.384 + $0.384 would be over $0.5/h");
}

/// A Profile's budget covers the instances launched under it across pools (an instance's
/// own profile, else its pool's); with `scope: Namespace` it covers every instance.
#[tokio::test]
async fn profile_and_namespace_budgets_cover_their_instances_across_pools() {
    let h = Harness::new().await;
    let limits = BudgetSpec { max_hourly_price: Some(0.5), ..Default::default() };
    let profile = |scope| ProfileSpec {
        budget: Some(ProfileBudget { limits: limits.clone(), scope: Some(scope) }),
        ..Default::default()
    };
    h.create(Profile::new("gpu-team", profile(BudgetScope::Profile))).await;
    for pool in ["a", "b"] {
        h.pool(pool, PoolSpec { profile: Some("gpu-team".into()), ..Default::default() }).await;
    }
    h.pool("free", PoolSpec::default()).await;
    h.run("in-a", run_in("a")).await;
    h.settle(3).await;
    assert_eq!(h.get_run("in-a").await.status.unwrap().phase, RunPhase::Running);
    h.run("in-b", run_in("b")).await;
    h.run("in-free", run_in("free")).await;
    h.settle(3).await;
    let (reason, message) = waiting(&h, "in-b").await;
    assert_eq!(reason, "BudgetExceeded");
    assert!(message.starts_with("profile gpu-team's budget.maxHourlyPrice $0.5/h"), "{message}");
    assert_eq!(h.get_run("in-free").await.status.unwrap().phase, RunPhase::Running, "pool free has no profile");
    assert_eq!(h.backend.creates().len(), 2);

    // A namespace-wide budget of $0.8/h: the two running ($0.768/h) leave no room anywhere.
    let team = ProfileSpec {
        budget: Some(ProfileBudget {
            limits: BudgetSpec { max_hourly_price: Some(0.8), ..Default::default() },
            scope: Some(BudgetScope::Namespace),
        }),
        ..Default::default()
    };
    h.create(Profile::new("whole-namespace", team)).await;
    h.run("in-free-2", run_in("free")).await;
    h.settle(3).await;
    let (reason, message) = waiting(&h, "in-free-2").await;
    assert_eq!(reason, "BudgetExceeded");
    assert!(message.starts_with("the namespace's (profile whole-namespace) budget.maxHourlyPrice $0.8/h"), "{message}");
    assert_eq!(h.backend.creates().len(), 2);
}

/// `enforce: terminate`: once the spend window is full, the pool's live instances are
/// ended (the run on one is interrupted, with the budget as the reason); the controller
/// looks again at the moment the window fills, not on a polling period.
#[tokio::test]
async fn enforce_terminate_ends_instances_once_the_spend_window_is_full() {
    let h = Harness::new().await;
    let budget = BudgetSpec {
        max_spend: Some(SpendLimit { dollars: 0.02, per: "1d".into() }),
        enforce: Some(BudgetEnforce::Terminate),
        ..Default::default()
    };
    let pool = h.pool("strict", PoolSpec { budget: Some(budget), ..Default::default() }).await;
    h.run("a", run_in("strict")).await;
    h.settle(3).await;
    let st = h.get_run("a").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "{st:?}");
    // $0.02 at $0.384/h is 187.5 s: the pool asks to be looked at again then.
    let action = kpool::controllers::pool::reconcile(
        std::sync::Arc::new(h.api::<Pool>().get("strict").await.unwrap()),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(188)), "{pool:?}");
    h.advance(Duration::from_secs(180));
    h.settle(2).await;
    assert_eq!(h.get_run("a").await.status.unwrap().phase, RunPhase::Running, "$0.0192 spent: not yet");
    h.advance(Duration::from_secs(60));
    h.settle(4).await;
    let st = h.get_run("a").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("Interrupted")), "{st:?}");
    let why = find(&st.conditions, "Succeeded").unwrap().message.clone();
    assert!(why.contains("budget.maxSpend $0.02 per 1d") && why.contains("enforce: terminate"), "{why}");
    assert!(h.backend.live_machines().is_empty(), "the machine is deleted");
}

/// Lowering `maxHourlyPrice` under `enforce: terminate` ends the fewest instances that
/// bring the pool within it, idle ones first; with `enforce: wait` nothing is ended.
#[tokio::test]
async fn a_lowered_hourly_cap_under_enforce_terminate_ends_idle_instances_first() {
    let h = Harness::new().await;
    h.pool("p", PoolSpec::default()).await;
    h.run("busy", run_in("p")).await;
    h.run("done", run_in("p")).await;
    h.settle(3).await;
    h.exec.exit("done", 0);
    h.settle(3).await;
    let idle = h.get_run("done").await.status.unwrap().instance.unwrap();
    assert_eq!(h.get_instance(&idle).await.status.unwrap().phase, InstancePhase::Idle);
    let lower = |enforce| {
        let budget = BudgetSpec { max_hourly_price: Some(0.5), enforce: Some(enforce), ..Default::default() };
        serde_json::json!({"spec": {"budget": budget}})
    };
    let pools = h.api::<Pool>();
    let patch = kube::api::Patch::Merge(lower(BudgetEnforce::Wait));
    pools.patch("p", &Default::default(), &patch).await.unwrap();
    h.settle(2).await;
    assert_eq!(h.get_instance(&idle).await.status.unwrap().phase, InstancePhase::Idle, "wait ends nothing");
    let patch = kube::api::Patch::Merge(lower(BudgetEnforce::Terminate));
    pools.patch("p", &Default::default(), &patch).await.unwrap();
    h.settle(3).await;
    let st = h.get_instance(&idle).await.status.unwrap();
    assert!(matches!(st.phase, InstancePhase::Terminating | InstancePhase::Terminated), "{st:?}");
    assert_eq!(find(&st.conditions, "Ready").unwrap().reason, "BudgetExceeded");
    assert_eq!(h.get_run("busy").await.status.unwrap().phase, RunPhase::Running, "one end was enough");
}

/// A simulated month and a half on the test clock: one 2-hour run a day at $0.384/h under
/// `maxSpend: $5 per 30d`. Launches stop once the window holds $5 (a run that started
/// below it finishes: at most one run and its idle minutes beyond), and resume as the
/// window slides past the first days.
#[tokio::test]
async fn a_monthly_spend_limit_over_a_simulated_month_and_a_half() {
    let h = Harness::new().await;
    let limit = SpendLimit { dollars: 5.0, per: "30d".into() };
    let budget = BudgetSpec { max_spend: Some(limit), ..Default::default() };
    h.pool("monthly", PoolSpec { budget: Some(budget), ..Default::default() }).await;
    let day = Duration::from_secs(86_400);
    let (mut ran, mut held) = (Vec::new(), Vec::new());
    for d in 0..45 {
        let name = format!("day-{d}");
        h.run(&name, run_in("monthly")).await;
        h.settle(3).await;
        let started = h.get_run(&name).await.status.unwrap().phase == RunPhase::Running;
        if started {
            ran.push(d);
            h.advance(Duration::from_secs(7200));
            h.exec.exit(&name, 0);
            h.settle(3).await;
            // The idle duration (5m for a run's machine) ends it.
            h.advance(Duration::from_secs(300));
            h.settle(4).await;
            h.advance(day - Duration::from_secs(7500));
        } else {
            held.push(d);
            let (reason, _) = waiting(&h, &name).await;
            assert_eq!(reason, "BudgetExceeded", "day {d}");
            // It is not needed tomorrow: tomorrow's run asks again.
            let _ = h.delete_run(&name).await;
            h.advance(day);
        }
        h.settle(3).await;
        // What the pool's machines spent in the last 30 days, from their statuses.
        let now = h.clock_now();
        let since = now.checked_sub(jiff::SignedDuration::from_hours(30 * 24)).unwrap();
        let spent: f64 = h
            .api::<kpool::api::instance::Instance>()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|i| i.status.as_ref())
            .map(|s| {
                let (secs, _, _) = kpool::core::instance::accrued_within(s, Some(since), now);
                secs * s.offer.as_ref().map_or(0.0, |o| o.price) / 3600.0
            })
            .sum();
        // One run (2 h) and its 5 idle minutes may start just below the limit.
        assert!(spent <= 5.0 + 0.384 * (2.0 + 5.0 / 60.0) + 1e-6, "day {d}: ${spent:.4} in the window");
    }
    // A run and its idle tail cost $0.80: 7 fit in $5 (the 7th starting at $4.80).
    assert_eq!(&ran[..7], &[0, 1, 2, 3, 4, 5, 6], "ran {ran:?}");
    assert_eq!(held.first(), Some(&7), "held {held:?}");
    assert!(ran.iter().any(|&d| d >= 30), "launches resume once the window slides: ran {ran:?}");
}
