//! `idleDuration: auto` through the controllers, on the in-memory API with the manual
//! clock: an idle instance gets a deadline chosen from its pool's learned gaps and says
//! why; the pool's status keeps what was learned, and a new controller goes on from it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, InstanceSpec};
use kpool::api::policy::PolicySpec;
use kpool::api::pool::PoolSpec;
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use kpool::backends::fake::FakeFactory;
use kpool::controllers::Context;
use kpool::core::idle_auto::spell::ShapeGaps;
use support::*;

const BOOT: Duration = Duration::from_secs(90);

fn cpu(spec: &str) -> ResourcesSpec {
    ResourcesSpec { cpu: Some(spec.into()), ..Default::default() }
}

async fn auto_pool(h: &Harness) {
    let defaults = PolicySpec { idle_duration: Some("auto".into()), ..Default::default() };
    h.pool("learn", PoolSpec { defaults: Some(defaults), ..Default::default() }).await;
}

/// Lets machines launched during `f` take [`BOOT`] to come up.
async fn booting<F: std::future::Future<Output = ()>>(h: &Harness, f: F) {
    h.backend.set_pending_polls(u32::MAX);
    f.await;
    h.settle(1).await;
    h.advance(BOOT);
    h.backend.set_pending_polls(0);
    h.settle(1).await;
}

async fn gaps_of(h: &Harness, shape: &str) -> ShapeGaps {
    let pool = h.api::<kpool::api::pool::Pool>().get("learn").await.unwrap();
    pool.status.unwrap_or_default().idle_gaps.get(shape).cloned().unwrap_or_default()
}

#[tokio::test]
async fn an_auto_instance_gets_a_deadline_and_says_why_and_its_pool_learns_the_gap() {
    let h = Harness::new().await;
    auto_pool(&h).await;
    let spec = InstanceSpec { pool: Some("learn".into()), resources: cpu("4.."), ..Default::default() };
    booting(&h, async {
        h.instance("box", spec).await;
    })
    .await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!((st.phase, st.boot_seconds), (InstancePhase::Idle, Some(90)), "{st:?}");
    let auto = st.idle_auto.clone().expect("a deadline chosen by auto");
    let since = st.idle_since.clone().unwrap();
    assert_eq!((auto.since.clone(), auto.idle_seconds), (since.clone(), 90), "nothing learned yet: one boot");
    assert_eq!(auto.deadline.0, since.0 + Duration::from_secs(90));
    let ready = find(&st.conditions, "Ready").unwrap();
    assert!(ready.message.contains("idle 1m30s (one boot, ski-rental): 0 gaps seen"), "{}", ready.message);
    assert!(ready.message.contains(&auto.deadline.0.to_string()), "{}", ready.message);

    // A run takes it after 30 s: the pool learns a 30 s gap, idled through by auto.
    h.advance(Duration::from_secs(30));
    h.run("job", RunSpec { pool: Some("learn".into()), resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_run("job").await.status.unwrap().instance.as_deref(), Some("box"));
    let gaps = gaps_of(&h, &auto.shape).await;
    assert_eq!((gaps.summary.gaps(), gaps.summary.auto_cost, gaps.summary.bound_cost), (1, 30.0, 30.0));

    // Idle again: a new spell, a new deadline; when it runs out the pool counts the
    // spell as expired (idled 90 s, plus the boot a later run pays).
    h.exec.exit("job", 0);
    h.settle(2).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!(st.idle_auto.as_ref().map(|a| &a.since), st.idle_since.as_ref());
    h.advance(Duration::from_secs(91));
    h.settle(2).await;
    assert_ne!(h.get_instance("box").await.status.unwrap().phase, InstancePhase::Idle);
    let gaps = gaps_of(&h, &auto.shape).await;
    assert_eq!((gaps.summary.auto_cost, gaps.summary.bound_cost, gaps.expired.len()), (210.0, 120.0, 1));
}

#[tokio::test]
async fn learned_gaps_change_the_deadline_and_survive_a_new_controller() {
    let mut h = Harness::new().await;
    auto_pool(&h).await;
    // Runs 120 s apart, each for a moment: one boot (90 s) of idling is not enough, so
    // each run launches a machine, which tells the pool the gap it missed.
    let mut last = String::new();
    for n in 0..9 {
        let name = format!("job-{n}");
        let spec = RunSpec { pool: Some("learn".into()), resources: cpu("4.."), ..Default::default() };
        booting(&h, async {
            h.run(&name, spec).await;
        })
        .await;
        let run = h.get_run(&name).await.status.unwrap();
        assert_eq!(run.phase, RunPhase::Running, "{name}: {run:?}");
        last = run.instance.unwrap();
        h.exec.exit(&name, 0);
        h.settle(2).await;
        if n < 8 {
            let auto = h.get_instance(&last).await.status.unwrap().idle_auto.expect("a deadline chosen by auto");
            assert_eq!(auto.idle_seconds, 90, "{name}: still learning: {}", auto.reason);
            h.advance(Duration::from_secs(91));
            h.settle(2).await;
            h.advance(Duration::from_secs(29));
        }
    }
    let st = h.get_instance(&last).await.status.unwrap();
    let auto = st.idle_auto.clone().expect("a deadline chosen by auto");
    let gaps = gaps_of(&h, &auto.shape).await;
    // Eight launches told eight gaps of 120 s; no instance was reused within 90 s.
    assert_eq!(gaps.summary.gaps(), 8, "{gaps:?}");
    // Gaps longer than a boot: idling through one costs more than booting again, so
    // the instance goes at once (within the 2x guarantee's slack, just: 90 s of risk).
    assert_eq!(auto.idle_seconds, 0, "{} {gaps:?}", auto.reason);
    // All eight spells started alike (no other instance idle, the last run a boot ago):
    // the context's own histogram decides, and the reason says which context.
    let why = "idle 0s: 0% of the last 8 gaps of spells starting as this one (i0a2: no other instance idle, no run arrived for a boot or more) were shorter; expected saving $0.0048 per idle spell against ski-rental";
    assert_eq!(auto.reason, why);
    assert_eq!(auto.context.as_deref(), Some("i0a2"));

    // A new controller (nothing in memory) goes on from the pool's status: the next
    // run's machine tells a ninth gap, and its idle spell is decided from all nine.
    let client = h.ctx.client.clone();
    let factory = Arc::new(FakeFactory::with([h.backend.clone()]));
    h.ctx = Arc::new(Context::new(client, factory, Arc::new(h.exec.clone()), Arc::new(h.clock.clone())));
    h.advance(Duration::from_secs(120));
    let spec = RunSpec { pool: Some("learn".into()), resources: cpu("4.."), ..Default::default() };
    booting(&h, async {
        h.run("after", spec).await;
    })
    .await;
    let inst = h.get_run("after").await.status.unwrap().instance.unwrap();
    assert_ne!(inst, last, "the last instance went at once");
    h.exec.exit("after", 0);
    h.settle(2).await;
    let st = h.get_instance(&inst).await.status.unwrap();
    let auto = st.idle_auto.expect("a deadline chosen by auto");
    assert_eq!(auto.idle_seconds, 0, "{}", auto.reason);
    assert!(auto.reason.starts_with("idle 0s: 0% of the last 9 gaps"), "{}", auto.reason);
    assert_ne!(st.phase, InstancePhase::Idle, "gone at its deadline");
}

#[tokio::test]
async fn a_pool_write_that_meets_a_conflict_is_made_again_and_counts_once() {
    let h = Harness::new().await;
    auto_pool(&h).await;
    h.fail_status_writes.store(2, std::sync::atomic::Ordering::SeqCst);
    let observe = |g: &mut ShapeGaps| g.summary.observe(Duration::from_secs(30));
    kpool::controllers::idle_gaps::record(&h.ctx, NS, "learn", "aws/c5.xlarge", observe).await.unwrap();
    assert_eq!(h.fail_status_writes.load(std::sync::atomic::Ordering::SeqCst), 0, "both conflicts met");
    assert_eq!(gaps_of(&h, "aws/c5.xlarge").await.summary.gaps(), 1, "counted once");
    // A pool that is not there learns nothing, and is no error.
    kpool::controllers::idle_gaps::record(&h.ctx, NS, "gone", "aws/c5.xlarge", observe).await.unwrap();
}

/// The context of a spell comes from the controller's caches: the pool's other idle
/// instances of the shape and its last run arrival. It is recorded with the deadline and
/// keys the histogram the spell's gap joins.
#[tokio::test]
async fn a_spells_context_is_seen_recorded_and_learned_from() {
    let h = Harness::new().await;
    auto_pool(&h).await;
    let spec = || InstanceSpec { pool: Some("learn".into()), resources: cpu("4.."), ..Default::default() };
    booting(&h, async {
        h.instance("box-a", spec()).await;
        h.instance("box-b", spec()).await;
    })
    .await;
    let a = h.get_instance("box-a").await.status.unwrap().idle_auto.unwrap();
    let b = h.get_instance("box-b").await.status.unwrap().idle_auto.unwrap();
    // No run seen yet; the one that went idle second saw the other idle.
    let mut seen = [a.context.clone().unwrap(), b.context.clone().unwrap()];
    seen.sort();
    assert_eq!(seen, ["i0a2", "i1a2"]);

    // A run takes box-a (first by name) 30 s later, and the gap joins box-a's context.
    h.advance(Duration::from_secs(30));
    h.run("job", RunSpec { pool: Some("learn".into()), resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_run("job").await.status.unwrap().instance.as_deref(), Some("box-a"));
    let gaps = gaps_of(&h, &a.shape).await;
    let learned: Vec<(&str, u32)> = gaps.contexts.iter().map(|(k, c)| (k.as_str(), c.iter().sum())).collect();
    assert_eq!(learned, vec![(a.context.as_deref().unwrap(), 1)], "{gaps:?}");

    // It ends 10 s later: box-b is idle, and the run arrived 10 s before.
    h.advance(Duration::from_secs(10));
    h.exec.exit("job", 0);
    h.settle(2).await;
    let st = h.get_instance("box-a").await.status.unwrap();
    let auto = st.idle_auto.unwrap();
    assert_eq!(auto.context.as_deref(), Some("i1a0"), "{}", auto.reason);
}
