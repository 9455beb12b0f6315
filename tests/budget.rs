//! Pool budgets (`Pool.spec.budget`): a launch that would go beyond `maxHourlyPrice` or
//! `maxSpend` waits with `BudgetExceeded`, naming the budget and the figures; what runs is
//! never stopped for it.

mod support;

use std::time::Duration;

use kpool::api::conditions::find;
use kpool::api::instance::InstancePhase;
use kpool::api::pool::{BudgetSpec, PoolSpec, SpendLimit};
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
