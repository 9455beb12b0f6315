//! Warm headroom (`Pool.spec.warm`): the pool keeps `minIdle` idle instances, replaces one
//! a run takes, ends the idle ones beyond it, and never goes beyond `maxInstances` or the
//! budget; time windows raise `minIdle` while they are open, and the pool wakes exactly
//! when one opens or closes.

mod support;

use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, WARM_LABEL};
use kpool::api::pool::{BudgetSpec, Pool, PoolSpec, WarmSpec, WarmStatus, WarmWindow};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn cpu(spec: &str) -> ResourcesSpec {
    ResourcesSpec { cpu: Some(spec.into()), ..Default::default() }
}

fn warm(min_idle: u32) -> Option<WarmSpec> {
    Some(WarmSpec { min_idle, resources: cpu("4"), ..Default::default() })
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
    assert_eq!(warm_status(&h).await, Some(WarmStatus { wanted: 2, ready: 2, starting: 0, ..Default::default() }));
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
    assert_eq!(warm_status(&h).await, Some(WarmStatus { wanted: 2, ready: 2, starting: 0, ..Default::default() }));

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
    assert_eq!(warm_status(&h).await, Some(WarmStatus { wanted: 3, ready: 2, starting: 0, ..Default::default() }));
    let pool = h.api::<Pool>().get("gpu").await.unwrap().status.unwrap();
    let c = find(&pool.conditions, "Warm").expect("a Warm condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NoRoom"), "{c:?}");
    assert!(c.message.contains("maxInstances (2)"), "{}", c.message);
    assert_eq!(h.backend.creates().len(), 2);
}

fn windowed(min_idle: u32, schedule: &str, duration: &str, window_min_idle: u32) -> Option<WarmSpec> {
    let window =
        WarmWindow { schedule: schedule.into(), duration: duration.into(), min_idle: window_min_idle, time_zone: None };
    Some(WarmSpec { min_idle, resources: cpu("4"), windows: vec![window], ..Default::default() })
}

fn time(s: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(s.parse().unwrap())
}

fn idle_count(phases: &[(String, InstancePhase)]) -> usize {
    phases.iter().filter(|(_, p)| *p == InstancePhase::Idle).count()
}

async fn reconcile_pool(h: &Harness) -> Action {
    let pool = h.api::<Pool>().get("gpu").await.unwrap();
    kpool::controllers::pool::reconcile(Arc::new(pool), h.ctx.clone()).await.unwrap()
}

#[tokio::test]
async fn a_window_opens_on_time_launches_headroom_and_its_close_ends_the_surplus() {
    // The harness's clock starts at 10:00 UTC; the window opens at 10:03 for an hour.
    let h = Harness::new().await;
    h.pool("gpu", PoolSpec { warm: windowed(1, "3 10 * * *", "1h", 3), ..Default::default() }).await;
    h.settle(4).await;
    assert_eq!(idle_count(&warm_phases(&h).await), 1);
    let before =
        WarmStatus { wanted: 1, ready: 1, next_change: Some(time("2026-11-28T10:03:00Z")), ..Default::default() };
    assert_eq!(warm_status(&h).await, Some(before));
    // The pool's timer is the window's opening, to the second.
    assert_eq!(reconcile_pool(&h).await, Action::requeue(Duration::from_secs(180)));

    h.advance(Duration::from_secs(180));
    h.settle(4).await;
    assert_eq!(warm_phases(&h).await.len(), 3);
    assert_eq!(idle_count(&warm_phases(&h).await), 3);
    let open = WarmStatus {
        wanted: 3,
        ready: 3,
        starting: 0,
        open_windows: vec!["3 10 * * *".into()],
        next_change: Some(time("2026-11-28T11:03:00Z")),
    };
    assert_eq!(warm_status(&h).await, Some(open));
    let pool = h.api::<Pool>().get("gpu").await.unwrap().status.unwrap();
    let c = find(&pool.conditions, "Warm").unwrap();
    assert!(c.message.contains("window open: 3 10 * * *"), "{}", c.message);

    // A run takes one while the window is open: replaced.
    h.run("train", RunSpec { pool: Some("gpu".into()), resources: cpu("4"), ..Default::default() }).await;
    h.settle(4).await;
    let taken = h.get_run("train").await.status.unwrap().instance.unwrap();
    assert!(taken.starts_with("gpu-warm-"));
    assert_eq!(idle_count(&warm_phases(&h).await), 3);
    assert_eq!(h.backend.creates().len(), 4);

    // The window closes: back to one idle; the busy one stays with its run.
    h.advance(Duration::from_secs(3600));
    h.settle(5).await;
    let phases = warm_phases(&h).await;
    assert_eq!(idle_count(&phases), 1, "{phases:?}");
    assert!(phases.contains(&(taken.clone(), InstancePhase::Busy)), "{phases:?}");
    assert_eq!(phases.len(), 2, "{phases:?}");
    assert_eq!(h.backend.live_machines().len(), 2);
    assert_eq!(h.get_run("train").await.status.unwrap().phase, RunPhase::Running);
    let after = warm_status(&h).await.unwrap();
    assert_eq!((after.wanted, after.ready, after.open_windows.len()), (1, 1, 0));
    assert_eq!(after.next_change, Some(time("2026-11-29T10:03:00Z")));
}

/// The client of the pool controller: before the pool's first status write to instance
/// `victim`, run `claimer` is created with `spec` and reconciled (on the plain context),
/// so that it arrives after the pool looked at the waiting runs and its claim lands
/// between the pool's read and its write.
fn claim_before_write(h: &Harness, victim: &str, claimer: &str, spec: RunSpec) -> Arc<kpool::controllers::Context> {
    let inner = h.ctx.client.clone();
    let run_ctx = h.ctx.clone();
    let target = format!("/instances/{victim}/status");
    let claimer = claimer.to_string();
    let now = h.clock_now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let (inner, run_ctx, claimer, done) = (inner.clone(), run_ctx.clone(), claimer.clone(), done.clone());
        let spec = spec.clone();
        let hit = req.method() == http::Method::PATCH && req.uri().path().ends_with(&target);
        async move {
            if hit && !done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let run = as_created(kpool::api::run::Run::new(&claimer, spec), now);
                let api = kube::Api::<kpool::api::run::Run>::namespaced(inner.clone(), NS);
                api.create(&Default::default(), &run).await?;
                // Its first passes add its finalizer and resolve its pool; then it claims.
                for _ in 0..3 {
                    let run = kube::Api::<kpool::api::run::Run>::namespaced(inner.clone(), NS).get(&claimer).await?;
                    kpool::controllers::run::reconcile(Arc::new(run), run_ctx.clone()).await.expect("the run claims");
                }
            }
            inner.send(req).await
        }
    });
    let client = kube::Client::new(service, NS);
    let factory = Arc::new(kpool::backends::fake::FakeFactory::with([h.backend.clone()]));
    Arc::new(kpool::controllers::Context::new(client, factory, Arc::new(h.exec.clone()), Arc::new(h.clock.clone())))
}

#[tokio::test]
async fn a_warm_instance_claimed_as_its_window_closes_stays_with_its_run() {
    let h = Harness::new().await;
    h.pool("gpu", PoolSpec { warm: windowed(0, "0 10 * * *", "1h", 2), ..Default::default() }).await;
    h.settle(4).await;
    let idle = vec![("gpu-warm-0".to_string(), InstancePhase::Idle), ("gpu-warm-1".to_string(), InstancePhase::Idle)];
    assert_eq!(warm_phases(&h).await, idle);

    // The window closes; a run asks for gpu-warm-1 (the first the pool ends) at that moment.
    h.advance(Duration::from_secs(3600));
    let spec = RunSpec {
        pool: Some("gpu".into()),
        resources: cpu("4"),
        instance: Some("gpu-warm-1".into()),
        ..Default::default()
    };
    let pool = h.api::<Pool>().get("gpu").await.unwrap();
    let racing = claim_before_write(&h, "gpu-warm-1", "late", spec);
    kpool::controllers::pool::reconcile(Arc::new(pool), racing).await.unwrap();
    let claimed = h.get_instance("gpu-warm-1").await.status.unwrap();
    assert_eq!((claimed.phase, claimed.run.as_deref()), (InstancePhase::Busy, Some("late")), "the claim won");
    assert_eq!(h.get_instance("gpu-warm-0").await.status.unwrap().phase, InstancePhase::Terminating);

    h.settle(5).await;
    let st = h.get_run("late").await.status.unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("gpu-warm-1")));
    assert_eq!(warm_phases(&h).await, vec![("gpu-warm-1".to_string(), InstancePhase::Busy)]);
    assert_eq!(h.backend.live_machines().len(), 1);
}

#[tokio::test]
async fn window_headroom_stays_within_the_budget_and_unlaunched_surplus_ends_unlaunched() {
    // m5.xlarge costs $0.192/h: a $0.5/h budget holds two of the four the window wants.
    let h = Harness::new().await;
    let budget = Some(BudgetSpec { max_hourly_price: Some(0.5), ..Default::default() });
    h.pool("gpu", PoolSpec { warm: windowed(0, "0 10 * * *", "1h", 4), budget, ..Default::default() }).await;
    h.settle(4).await;
    assert_eq!(h.backend.live_machines().len(), 2);
    let st = warm_status(&h).await.unwrap();
    assert_eq!((st.wanted, st.ready, st.starting), (4, 2, 2));

    // It closes: the idle ones end, and so do the two that waited for the budget, without
    // ever launching once the idle ones freed it.
    h.advance(Duration::from_secs(3600));
    h.settle(6).await;
    assert_eq!(warm_phases(&h).await, vec![]);
    assert!(h.backend.live_machines().is_empty());
    assert_eq!(h.backend.creates().len(), 2, "nothing launched after the close");
}

#[tokio::test]
async fn a_bad_window_is_reported_by_field_and_value_and_the_base_min_idle_stays() {
    let h = Harness::new().await;
    h.pool("gpu", PoolSpec { warm: windowed(1, "0 8 * * MON", "10h", 4), ..Default::default() }).await;
    h.settle(4).await;
    assert_eq!(idle_count(&warm_phases(&h).await), 1);
    let pool = h.api::<Pool>().get("gpu").await.unwrap().status.unwrap();
    let c = find(&pool.conditions, "Warm").expect("a Warm condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InvalidWindow"), "{c:?}");
    assert!(
        c.message.contains("spec.warm.windows[0].schedule") && c.message.contains("\"0 8 * * MON\""),
        "{}",
        c.message
    );
    assert!(c.message.contains("\"MON\" is not a number"), "{}", c.message);
}

#[tokio::test]
async fn an_idle_warm_instance_a_waiting_run_fits_is_not_ended_as_surplus() {
    // Two warm instances, both busy; two more runs wait for room (maxInstances 2).
    let h = Harness::new().await;
    h.pool("gpu", PoolSpec { max_instances: Some(2), warm: warm(2), ..Default::default() }).await;
    h.settle(4).await;
    let spec = || RunSpec { pool: Some("gpu".into()), resources: cpu("4"), ..Default::default() };
    for name in ["a", "b"] {
        h.run(name, spec()).await;
    }
    h.settle(4).await;
    for name in ["c", "d"] {
        h.run(name, spec()).await;
        h.advance(Duration::from_secs(1));
    }
    h.settle(4).await;
    assert_eq!(h.get_run("c").await.status.unwrap().phase, RunPhase::Pending);
    let launched = h.backend.creates().len();

    // The headroom goes to 0 as the two jobs end; the pool looks before the waiting runs
    // do. Both freed instances are wanted by waiting runs: none is surplus.
    let mut pool = h.api::<Pool>().get("gpu").await.unwrap();
    pool.spec.warm = warm(0);
    h.api::<Pool>().replace("gpu", &Default::default(), &pool).await.unwrap();
    for name in ["a", "b"] {
        h.exec.exit(name, 0);
        h.reconcile_run(name).await.unwrap();
    }
    reconcile_pool(&h).await;
    h.settle(5).await;
    for name in ["c", "d"] {
        let st = h.get_run(name).await.status.unwrap();
        assert_eq!(st.phase, RunPhase::Running, "{name}: {st:?}");
        assert!(st.instance.as_deref().unwrap().starts_with("gpu-warm-"), "{name} took a warm one: {st:?}");
    }
    assert_eq!(h.backend.creates().len(), launched, "no machine launched while fitting ones were idle");
}

#[tokio::test]
async fn a_warm_instance_no_offer_fits_is_not_replaced_before_the_back_off_and_the_pool_says_why() {
    let h = Harness::new().await;
    // No offer has 512 CPUs: the warm instance fails as soon as it looks for one.
    let spec = WarmSpec { min_idle: 1, resources: cpu("512"), ..Default::default() };
    h.pool("gpu", PoolSpec { warm: Some(spec), ..Default::default() }).await;
    let warm_instances = || async {
        let all = h.api::<kpool::api::instance::Instance>().list(&Default::default()).await.unwrap().items;
        let warm = all.into_iter().filter(|i| i.labels().contains_key(WARM_LABEL));
        warm.map(|i| (i.name_any(), i.status.map_or(InstancePhase::Pending, |s| s.phase))).collect::<Vec<_>>()
    };
    h.settle(6).await;
    let failed = vec![("gpu-warm-0".to_string(), InstancePhase::Failed)];
    assert_eq!(warm_instances().await, failed, "one launch, kept with its reason");
    let st = h.api::<Pool>().get("gpu").await.unwrap().status.unwrap();
    let c = find(&st.conditions, "Warm").expect("a Warm condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "WarmLaunchFailed"), "{c:?}");
    assert!(c.message.contains("gpu-warm-0 failed to launch (NoOffers: no offer fits cpu=512"), "{}", c.message);
    assert!(c.message.contains("the next is launched at 2026-"), "{}", c.message);
    // The pool wakes when the back-off ends.
    assert_eq!(reconcile_pool(&h).await, Action::requeue(Duration::from_secs(60)));

    // Within the back-off: nothing new, however often the controllers look.
    h.advance(Duration::from_secs(30));
    h.settle(6).await;
    assert_eq!(warm_instances().await, failed);

    // After it: the failed one is removed and the next launched (and fails again).
    h.advance(Duration::from_secs(31));
    h.settle(6).await;
    assert_eq!(warm_instances().await, vec![("gpu-warm-1".to_string(), InstancePhase::Failed)]);
}
