//! Reconcile tests against the in-memory API: the controllers' decisions end to end,
//! with the fake backend and executor.

mod support;

use std::time::Duration;

use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, InstanceSpec, INSTANCE_FINALIZER, PROVISIONED_FOR_LABEL};
use kpool::api::policy::{CreationPolicy, PolicySpec};
use kpool::api::pool::PoolSpec;
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use kpool::backends::fake::Call;
use kpool::backends::BackendError;
use kube::ResourceExt;
use support::*;

fn gpu(spec: &str) -> ResourcesSpec {
    ResourcesSpec { gpu: Some(spec.into()), ..Default::default() }
}

fn cpu(spec: &str) -> ResourcesSpec {
    ResourcesSpec { cpu: Some(spec.into()), ..Default::default() }
}

async fn idle_instance(h: &Harness, name: &str, resources: ResourcesSpec) {
    h.instance(name, InstanceSpec { resources, ..Default::default() }).await;
    h.settle(2).await;
    let i = h.get_instance(name).await;
    assert_eq!(i.status.as_ref().unwrap().phase, InstancePhase::Idle, "{name}: {:?}", i.status);
}

#[tokio::test]
async fn a_run_reuses_a_fitting_idle_instance() {
    let h = Harness::new().await;
    idle_instance(&h, "a10g", gpu("A10G")).await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    let creates_before = h.backend.creates().len();

    h.run("train", RunSpec { resources: gpu("24GB"), ..Default::default() }).await;
    let errors = h.settle(2).await;
    assert!(errors.is_empty(), "{errors:?}");

    let run = h.get_run("train").await;
    let st = run.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running);
    assert_eq!(st.instance.as_deref(), Some("a10g"));
    assert!(find(&st.conditions, "Scheduled").is_some_and(|c| c.status == "True"));
    let inst = h.get_instance("a10g").await.status.unwrap();
    assert_eq!((inst.phase, inst.run.as_deref()), (InstancePhase::Busy, Some("train")));
    assert_eq!(h.backend.creates().len(), creates_before, "reuse must not provision");
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Idle);
}

#[tokio::test]
async fn a_run_provisions_when_none_fits_then_the_instance_idles_and_is_torn_down() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;

    h.run("train", RunSpec { resources: gpu("A100:80GB:8"), ..Default::default() }).await;
    let errors = h.settle(3).await;
    assert!(errors.is_empty(), "{errors:?}");

    let st = h.get_run("train").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "{st:?}");
    let name = st.instance.clone().unwrap();
    assert_eq!(name, "train-0");
    let inst = h.get_instance(&name).await;
    assert_eq!(inst.provisioned_for(), Some("train"));
    let ist = inst.status.unwrap();
    assert_eq!(ist.offer.as_ref().unwrap().instance_type, "p4de.24xlarge", "cheapest fitting offer");
    assert_eq!(ist.pool.as_deref(), Some("default-pool"));
    assert!(h.api::<kpool::api::pool::Pool>().get("default-pool").await.is_ok(), "default pool created on first use");

    // The job ends: the instance goes back to idle, its clock starts now.
    h.exec.exit("train", 0);
    h.settle(1).await;
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!((st.phase, st.exit_code), (RunPhase::Succeeded, Some(0)));
    let ist = h.get_instance(&name).await.status.unwrap();
    assert_eq!(ist.phase, InstancePhase::Idle);
    assert_eq!(ist.idle_since.unwrap().0, t0());

    // 4m59s later it is still there; at 5m (run-provisioned default) it is torn down.
    h.advance(Duration::from_secs(299));
    h.settle(1).await;
    assert_eq!(h.get_instance(&name).await.status.unwrap().phase, InstancePhase::Idle);
    h.advance(Duration::from_secs(1));
    h.settle(2).await;
    let ist = h.get_instance(&name).await.status.unwrap();
    assert_eq!(ist.phase, InstancePhase::Terminated, "{ist:?}");
    assert_eq!(find(&ist.conditions, "Ready").unwrap().reason, "IdleTimeout");
    let machine = ist.machine_name.unwrap();
    assert!(h.backend.calls().contains(&Call::Delete { name: machine.clone() }));
    assert!(h.backend.live_machines().iter().all(|m| m.name != machine));
    // The hand-added CPU instance (72h default) is untouched.
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Idle);
}

#[tokio::test]
async fn reuse_never_provisions_and_reports_why_it_waits() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    let creates_before = h.backend.creates().len();
    h.run(
        "eval",
        RunSpec {
            resources: gpu("A100"),
            policy: PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() },
            ..Default::default()
        },
    )
    .await;
    h.settle(3).await;
    let st = h.get_run("eval").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Pending);
    let c = find(&st.conditions, "Scheduled").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NoIdleInstance"));
    assert!(c.message.contains("Reuse never provisions"), "{}", c.message);
    assert_eq!(h.backend.creates().len(), creates_before);
    assert_eq!(h.api::<kpool::api::instance::Instance>().list(&Default::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn provisioning_falls_back_to_the_next_offer() {
    let h = Harness::new().await;
    h.backend.no_capacity_for("g5.xlarge");
    h.instance("a10g", InstanceSpec { resources: gpu("A10G"), ..Default::default() }).await;
    h.settle(2).await;
    let st = h.get_instance("a10g").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{st:?}");
    assert_eq!(st.offer.as_ref().unwrap().instance_type, "g5.2xlarge");
    assert_eq!(st.attempts.len(), 1);
    assert_eq!(st.attempts[0].offer.instance_type, "g5.xlarge");
    assert_eq!(st.attempts[0].error, "InsufficientCapacity");
    let tried: Vec<String> = h
        .backend
        .creates()
        .into_iter()
        .map(|c| match c {
            Call::Create { instance_type, .. } => instance_type,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(tried, vec!["g5.xlarge", "g5.2xlarge"]);
    assert_eq!(h.backend.live_machines().len(), 1, "one machine, not two");
}

#[tokio::test]
async fn every_offer_failing_marks_the_instance_failed_with_the_reason() {
    let h = Harness::new().await;
    h.backend.no_capacity_for("g5.xlarge");
    h.backend.no_capacity_for("g5.2xlarge");
    h.instance("a10g", InstanceSpec { resources: gpu("A10G"), ..Default::default() }).await;
    h.settle(2).await;
    let st = h.get_instance("a10g").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Failed);
    assert_eq!(find(&st.conditions, "Ready").unwrap().reason, "NoCapacity");
    assert_eq!(st.attempts.len(), 2);
    assert!(h.backend.live_machines().is_empty());
}

#[tokio::test]
async fn deleting_a_busy_instance_deletes_the_machine_and_interrupts_the_run() {
    let h = Harness::new().await;
    idle_instance(&h, "a10g", gpu("A10G")).await;
    h.run("train", RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    h.settle(1).await;
    assert_eq!(h.get_instance("a10g").await.status.unwrap().phase, InstancePhase::Busy);
    let machine = h.get_instance("a10g").await.status.unwrap().machine_name.unwrap();

    // First pass: delete requested at the backend; the finalizer stays until it is gone.
    let r = h.delete_instance("a10g").await;
    assert!(r.is_err(), "cleanup waits for the backend to confirm");
    let i = h.get_instance("a10g").await;
    assert!(i.finalizers().contains(&INSTANCE_FINALIZER.to_string()));
    assert_eq!(i.status.unwrap().phase, InstancePhase::Terminating);
    // Second pass: the backend reports NotFound; the finalizer goes and the object with it.
    h.delete_instance("a10g").await.expect("cleanup done");
    assert!(h.api::<kpool::api::instance::Instance>().get_opt("a10g").await.unwrap().is_none());
    assert!(h.backend.live_machines().iter().all(|m| m.name != machine));

    // The run notices and ends as interrupted (no retry policy).
    h.settle(1).await;
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("Interrupted")));
}

#[tokio::test]
async fn deleting_an_instance_whose_machine_is_already_gone() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    let machine = h.get_instance("cpu").await.status.unwrap().machine_name.unwrap();
    h.backend.vanish(&machine);
    h.delete_instance("cpu").await.expect("NotFound means done");
    assert!(h.api::<kpool::api::instance::Instance>().get_opt("cpu").await.unwrap().is_none());
    // Still asked to delete, so what the machine left at the provider goes too.
    assert!(h.backend.calls().contains(&Call::Delete { name: machine }));
}

#[tokio::test]
async fn deleting_an_instance_that_never_launched_needs_no_backend() {
    let h = Harness::new().await;
    h.instance("bad", InstanceSpec { resources: gpu("A100:x:y:z"), ..Default::default() }).await;
    h.settle(1).await;
    let st = h.get_instance("bad").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Failed);
    let c = find(&st.conditions, "Ready").unwrap();
    assert_eq!(c.reason, "InvalidSpec");
    assert!(c.message.contains("resources.gpu"), "{}", c.message);
    h.delete_instance("bad").await.expect("nothing to delete");
    assert!(h.backend.creates().is_empty());
}

#[tokio::test]
async fn a_conflict_on_a_status_write_is_retried() {
    let h = Harness::new().await;
    h.instance("cpu", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    // Add the finalizer first.
    h.reconcile_instance("cpu").await.unwrap();
    h.fail_status_writes.store(1, std::sync::atomic::Ordering::SeqCst);
    let err = h.reconcile_instance("cpu").await.unwrap_err();
    assert_eq!(err.category(), "Conflict");
    assert!(err.retry_after() < Duration::from_secs(1), "conflicts are retried quickly");
    assert!(h.backend.creates().is_empty(), "nothing launched on a failed status write");
    // The retry goes through.
    h.settle(2).await;
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Idle);
    assert_eq!(h.backend.creates().len(), 1);
}

#[tokio::test]
async fn a_stale_claim_is_rejected_so_two_runs_never_share_an_instance() {
    let h = Harness::new().await;
    idle_instance(&h, "a10g", gpu("A10G")).await;
    h.run("a", RunSpec { resources: gpu("A10G"), policy: reuse(), ..Default::default() }).await;
    h.run("b", RunSpec { resources: gpu("A10G"), policy: reuse(), ..Default::default() }).await;
    // Both runs get their first status; both then see the same idle instance.
    h.reconcile_run("a").await.unwrap();
    h.reconcile_run("b").await.unwrap();
    let stale_b = h.get_run("b").await;
    h.reconcile_run("a").await.unwrap();
    // b decides on the instance as it was before a's claim: its claim must fail.
    let _ = kpool::controllers::run::reconcile(std::sync::Arc::new(stale_b), h.ctx.clone()).await;
    h.settle(2).await;
    let a = h.get_run("a").await.status.unwrap();
    let b = h.get_run("b").await.status.unwrap();
    assert_eq!((a.phase, a.instance.as_deref()), (RunPhase::Running, Some("a10g")));
    assert_eq!((b.phase, b.instance.as_deref()), (RunPhase::Pending, None));
    assert_eq!(h.get_instance("a10g").await.status.unwrap().run.as_deref(), Some("a"));
}

fn reuse() -> PolicySpec {
    PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() }
}

#[tokio::test]
async fn max_instances_is_never_exceeded_and_the_run_says_why_it_waits() {
    let h = Harness::new().await;
    h.pool("small", PoolSpec { max_instances: Some(1), ..Default::default() }).await;
    h.run("r1", RunSpec { pool: Some("small".into()), resources: gpu("A10G"), ..Default::default() }).await;
    h.run("r2", RunSpec { pool: Some("small".into()), resources: gpu("A100"), ..Default::default() }).await;
    h.settle(3).await;
    // Whichever run is reconciled first takes the one slot (the in-memory API lists in
    // no fixed order, as informers deliver in no fixed order); the other waits.
    let mut runs = [h.get_run("r1").await.status.unwrap(), h.get_run("r2").await.status.unwrap()];
    runs.sort_by_key(|r| r.phase != RunPhase::Running);
    let (running, waiting) = (&runs[0], &runs[1]);
    assert_eq!(running.phase, RunPhase::Running);
    assert_eq!(waiting.phase, RunPhase::Pending);
    let c = find(&waiting.conditions, "Scheduled").unwrap();
    assert_eq!(c.reason, "PoolAtCapacity", "{c:?}");
    assert_eq!(h.backend.live_machines().len(), 1);
    let pool = h.api::<kpool::api::pool::Pool>().get("small").await.unwrap().status.unwrap();
    assert_eq!((pool.busy, pool.total), (1, 1));
    assert!(find(&pool.conditions, "AtCapacity").is_some_and(|c| c.status == "True"));

    // The first run ends; its instance fits only runs like it, so the other run gets the
    // slot once that instance's idle duration has passed and it is gone.
    let first = running.instance.clone().unwrap().trim_end_matches("-0").to_string();
    let second = if first == "r1" { "r2" } else { "r1" };
    h.exec.exit(&first, 0);
    h.settle(1).await;
    assert_eq!(h.get_run(second).await.status.unwrap().phase, RunPhase::Pending);
    h.advance(Duration::from_secs(301));
    h.settle(1).await;
    let st = h.get_run(second).await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "{:?}", st.conditions);
    assert_eq!(h.backend.live_machines().len(), 1);
}

#[tokio::test]
async fn stopping_a_run_frees_its_instance_and_starts_the_idle_clock() {
    let h = Harness::new().await;
    idle_instance(&h, "a10g", gpu("A10G")).await;
    h.run("train", RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    h.settle(1).await;
    h.advance(Duration::from_secs(3600));
    let mut run = h.get_run("train").await;
    run.spec.stop = true;
    h.api::<kpool::api::run::Run>().replace("train", &Default::default(), &run).await.unwrap();
    h.settle(1).await;
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("Stopped")));
    assert_eq!(h.exec.stopped(), vec!["train".to_string()]);
    let ist = h.get_instance("a10g").await.status.unwrap();
    assert_eq!((ist.phase, ist.run.as_deref()), (InstancePhase::Idle, None));
    assert_eq!(ist.idle_since.unwrap().0, h.clock_now());
}

#[tokio::test]
async fn deleting_a_running_run_stops_the_job_and_frees_the_instance() {
    let h = Harness::new().await;
    idle_instance(&h, "a10g", gpu("A10G")).await;
    h.run("train", RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    h.settle(1).await;
    h.delete_run("train").await.unwrap();
    assert!(h.api::<kpool::api::run::Run>().get_opt("train").await.unwrap().is_none());
    // The instance, woken by the delete, stops the job it records (fences it) and is
    // idle again.
    let fenced: Vec<String> = h.exec.fenced().into_iter().map(|j| j.run).collect();
    assert_eq!(fenced, vec!["train".to_string()]);
    let ist = h.get_instance("a10g").await.status.unwrap();
    assert_eq!((ist.phase, ist.run.as_deref(), ist.job.as_ref()), (InstancePhase::Idle, None, None), "{ist:?}");
}

/// A run carries no finalizer: deleting it removes it at once, and the instance being
/// provisioned for it, woken by the delete, drops itself before anything is launched.
#[tokio::test]
async fn a_run_deleted_while_its_instance_waits_to_launch_leaves_no_instance_and_no_machine() {
    let h = Harness::new().await;
    h.run("train", RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    h.reconcile_run("train").await.unwrap();
    let run = h.get_run("train").await;
    assert!(run.finalizers().iter().all(|f| f == support::HOLD), "no finalizer: {:?}", run.finalizers());
    let st = run.status.unwrap();
    assert_eq!(st.provisioning_instance.as_deref(), Some("train-0"), "{st:?}");
    assert!(h.get_instance("train-0").await.status.is_none(), "not reconciled yet");

    h.delete_run("train").await.unwrap();
    assert!(h.api::<kpool::api::run::Run>().get_opt("train").await.unwrap().is_none());
    assert!(
        h.api::<kpool::api::instance::Instance>().get_opt("train-0").await.unwrap().is_none(),
        "the instance is dropped"
    );
    h.settle(2).await;
    assert!(h.backend.creates().is_empty(), "nothing launched: {:?}", h.backend.calls());
}

#[tokio::test]
async fn a_pool_profile_applies_to_its_runs() {
    let h = Harness::new().await;
    h.create(kpool::api::profile::Profile::new(
        "cheap",
        kpool::api::profile::ProfileSpec {
            policy: PolicySpec { max_price: Some(0.5), ..Default::default() },
            ..Default::default()
        },
    ))
    .await;
    h.pool("p", PoolSpec { profile: Some("cheap".into()), ..Default::default() }).await;
    h.run("gpu", RunSpec { pool: Some("p".into()), resources: gpu("A10G"), ..Default::default() }).await;
    h.settle(3).await;
    let st = h.get_run("gpu").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Failed, Some("NoCapacity")), "{st:?}");
    let inst = h.get_instance("gpu-0").await.status.unwrap();
    assert_eq!(find(&inst.conditions, "Ready").unwrap().reason, "NoOffers");
}

#[tokio::test]
async fn rate_limits_are_retried_later_without_marking_the_offer_failed() {
    let h = Harness::new().await;
    h.backend.fail_next_create(BackendError::RateLimited { message: "slow down".into(), retry_after: None });
    h.instance("cpu", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.settle(1).await;
    // Settled: the backoff holds, no second call was made while it runs.
    let st = h.get_instance("cpu").await.status.unwrap();
    assert_ne!(st.phase, InstancePhase::Idle);
    assert!(st.attempts.is_empty(), "throttling is not the offer's fault: {:?}", st.attempts);
    let at = st.next_attempt_at.expect("backoff recorded").0;
    assert_eq!(at, h.clock_now() + jiff::SignedDuration::from_secs(30));
    assert_eq!(h.backend.creates().len(), 1);
    h.advance(Duration::from_secs(31));
    h.settle(1).await;
    let st = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle);
    assert_eq!(h.backend.creates().len(), 2);
    let Call::Create { instance_type, .. } = &h.backend.creates()[1] else { panic!("not a create") };
    assert_eq!(&st.offer.unwrap().instance_type, instance_type);
}

#[tokio::test]
async fn a_stale_copy_of_an_instance_never_launches_a_second_machine() {
    let h = Harness::new().await;
    h.instance("cpu", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.reconcile_instance("cpu").await.unwrap(); // the finalizer
    let stale = h.get_instance("cpu").await;
    h.settle(1).await;
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Idle);
    // A lagging cache hands the reconciler the object from before the launch.
    let err = kpool::controllers::instance::reconcile(std::sync::Arc::new(stale), h.ctx.clone()).await.unwrap_err();
    assert_eq!(err.category(), "Conflict");
    assert_eq!(h.backend.creates().len(), 1);
    assert_eq!(h.backend.live_machines().len(), 1);
}

#[tokio::test]
async fn a_crash_between_launch_and_status_write_adopts_the_machine() {
    let h = Harness::new().await;
    h.instance("cpu", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.settle(1).await;
    let launched = h.get_instance("cpu").await.status.unwrap();
    // The write that recorded the launch is lost: status says Provisioning, no provider id.
    let lost = serde_json::json!({"status": {"phase": "Provisioning", "providerId": null, "idleSince": null}});
    h.api::<kpool::api::instance::Instance>()
        .patch_status("cpu", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&lost))
        .await
        .unwrap();
    h.settle(1).await;
    let st = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle);
    assert_eq!(st.provider_id, launched.provider_id, "the same machine, adopted");
    let names: Vec<String> = h.backend.live_machines().into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec![launched.machine_name.unwrap()]);
}

#[tokio::test]
async fn site_defaults_sit_below_pool_defaults_and_above_the_built_in_ones() {
    let mut h = Harness::new().await;
    std::sync::Arc::get_mut(&mut h.ctx).expect("sole owner").site_defaults.run.idle_duration = Some("1m".into());
    h.pool(
        "long",
        PoolSpec {
            defaults: Some(PolicySpec { idle_duration: Some("10m".into()), ..Default::default() }),
            ..Default::default()
        },
    )
    .await;
    h.run("short", RunSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.run("kept", RunSpec { pool: Some("long".into()), resources: cpu("8.."), ..Default::default() }).await;
    h.settle(2).await;
    let short = h.get_run("short").await.status.unwrap().instance.unwrap();
    let kept = h.get_run("kept").await.status.unwrap().instance.unwrap();
    h.exec.exit("short", 0);
    h.exec.exit("kept", 0);
    h.settle(1).await;
    h.advance(Duration::from_secs(61));
    h.settle(1).await;
    let short = h.get_instance(&short).await.status.unwrap().phase;
    assert_ne!(short, InstancePhase::Idle, "the site's 1m replaced the built-in 5m");
    let kept = h.get_instance(&kept).await.status.unwrap().phase;
    assert_eq!(kept, InstancePhase::Idle, "the pool's 10m wins over the site's 1m");
}

#[tokio::test]
async fn an_unreachable_instance_is_flagged_at_once_and_given_up_after_the_grace() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    h.run("job", RunSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_run("job").await.status.unwrap().phase, RunPhase::Running);

    // A blip: flagged at once, cleared when the host answers again.
    h.exec.set_unreachable(true);
    h.settle(1).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running);
    let c = find(&st.conditions, "InstanceReachable").expect("condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InstanceUnreachable"), "{c:?}");
    h.advance(Duration::from_secs(120));
    h.exec.set_unreachable(false);
    h.settle(1).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!(find(&st.conditions, "InstanceReachable").unwrap().status, "True");

    // Gone for good: after the grace the run is interrupted; the instance, whose job may
    // still run, is held (never Idle) until that job is stopped there.
    h.exec.set_unreachable(true);
    h.settle(1).await;
    h.advance(Duration::from_secs(299));
    h.settle(1).await;
    assert_eq!(h.get_run("job").await.status.unwrap().phase, RunPhase::Running, "still within the grace");
    h.advance(Duration::from_secs(2));
    h.settle(1).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("InstanceUnreachable")));
    let ist = h.get_instance("cpu").await.status.unwrap();
    assert_eq!((ist.phase, ist.run.as_deref()), (InstancePhase::Busy, None), "held: {ist:?}");
    let c = find(&ist.conditions, kpool::controllers::fence::JOB_FENCED).expect("JobFenced");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "FencePending"), "{c:?}");
}

fn retry_on_interruption() -> PolicySpec {
    PolicySpec {
        spot_policy: Some(kpool::api::policy::SpotPolicy::Auto),
        retry: Some(kpool::api::policy::RetrySpec {
            on: Some(vec![kpool::api::policy::RetryEvent::Interruption]),
            duration: Some("1h".into()),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_reclaimed_spot_machine_interrupts_its_run_which_is_retried_on_a_new_instance() {
    let mut spot = offer("g5.xlarge", 4, 16.0, 1, "A10G", 24.0, 0.4);
    spot.spot = true;
    let h = Harness::with_offers(vec![spot]).await;
    h.run("train", RunSpec { resources: gpu("A10G"), policy: retry_on_interruption(), ..Default::default() }).await;
    h.settle(3).await;
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "{st:?}");
    let first = st.instance.clone().unwrap();
    let machine = h.get_instance(&first).await.status.unwrap().machine_name.unwrap();

    // The provider takes the machine back; nothing happens before the next health check.
    h.backend.reclaim(&machine);
    h.settle(1).await;
    assert_eq!(h.get_instance(&first).await.status.unwrap().phase, InstancePhase::Busy);
    h.advance(Duration::from_secs(61));
    h.settle(3).await;

    let lost = h.get_instance(&first).await.status.unwrap();
    assert_eq!(lost.phase, InstancePhase::Terminated);
    let ready = find(&lost.conditions, "Ready").unwrap();
    assert_eq!(ready.reason, "Reclaimed", "{ready:?}");
    assert!(ready.message.contains("run train is interrupted"), "{}", ready.message);

    let st = h.get_run("train").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "retried: {st:?}");
    assert_eq!(st.attempts, 1, "one retry recorded");
    let past: Vec<_> = st.history.iter().map(|a| (a.instance.as_deref(), a.reason.as_str())).collect();
    assert_eq!(past, vec![(Some(first.as_str()), "Interrupted")]);
    assert_ne!(st.instance.as_deref(), Some(first.as_str()), "placed on a new instance");
    assert_eq!(h.backend.creates().len(), 2);
}

#[tokio::test]
async fn a_machine_deleted_outside_kpool_is_noticed_and_its_run_ends_interrupted() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    idle_instance(&h, "spare", cpu("8..")).await;
    h.run("job", RunSpec { resources: cpu("4"), instance: Some("cpu".into()), ..Default::default() }).await;
    h.settle(2).await;
    let machine = h.get_instance("cpu").await.status.unwrap().machine_name.unwrap();
    let spare = h.get_instance("spare").await.status.unwrap().machine_name.unwrap();
    h.backend.vanish(&machine);
    h.advance(Duration::from_secs(60));
    h.settle(3).await;

    let st = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Terminated);
    assert_eq!(find(&st.conditions, "Ready").unwrap().reason, "MachineGone");
    let run = h.get_run("job").await.status.unwrap();
    assert_eq!((run.phase, run.termination_reason.as_deref()), (RunPhase::Terminated, Some("Interrupted")));
    let summary = find(&run.conditions, "Succeeded").unwrap();
    assert!(summary.message.contains("no longer has the machine"), "{}", summary.message);
    // The healthy idle instance was asked too and left alone.
    assert_eq!(h.get_instance("spare").await.status.unwrap().phase, InstancePhase::Idle);
    assert!(h.backend.calls().contains(&Call::Get { name: spare }));
}

#[tokio::test]
async fn an_idle_instance_that_stops_answering_is_flagged_then_terminated_after_the_grace() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    let machine = h.get_instance("cpu").await.status.unwrap().machine_name.unwrap();

    // A blip: flagged at the next check, cleared at the one after.
    h.backend.set_unreachable(&machine, true);
    h.advance(Duration::from_secs(60));
    h.settle(1).await;
    let st = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle);
    let c = find(&st.conditions, "Reachable").expect("condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Unreachable"));
    h.backend.set_unreachable(&machine, false);
    h.advance(Duration::from_secs(60));
    h.settle(1).await;
    assert_eq!(find(&h.get_instance("cpu").await.status.unwrap().conditions, "Reachable").unwrap().status, "True");

    // Down for good: terminated once the grace (5m by default) has passed since it went.
    h.backend.set_unreachable(&machine, true);
    h.advance(Duration::from_secs(60));
    h.settle(1).await;
    for _ in 0..4 {
        h.advance(Duration::from_secs(60));
        h.settle(1).await;
        assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Idle, "within the grace");
    }
    h.advance(Duration::from_secs(60));
    h.settle(2).await;
    let st = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Terminated);
    assert_eq!(find(&st.conditions, "Ready").unwrap().reason, "Unreachable");
    assert!(h.backend.live_machines().is_empty(), "the machine is deleted");
}

#[tokio::test]
async fn a_provider_outage_during_a_health_check_changes_nothing() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    let before = h.backend.calls().len();
    // Health checks are paced: settling again right away asks nothing.
    h.settle(2).await;
    assert!(!h.backend.calls()[before..].iter().any(|c| matches!(c, Call::Get { .. })), "checked too often");
    let machine = h.get_instance("cpu").await.status.unwrap().machine_name.unwrap();
    h.backend.vanish(&machine);
    h.api::<kpool::api::backend::Backend>().delete("aws", &Default::default()).await.unwrap();
    h.advance(Duration::from_secs(60));
    h.settle(2).await;
    let st = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "a provider that cannot be asked is not a lost machine");
    assert!(find(&st.conditions, "Reachable").is_none());
}

#[tokio::test]
async fn a_machine_still_coming_back_after_a_run_gets_one_interval_before_it_counts_as_unreachable() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    let machine = h.get_instance("cpu").await.status.unwrap().machine_name.unwrap();
    h.run("job", RunSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
    h.advance(Duration::from_secs(50));
    h.exec.exit("job", 0);
    h.settle(2).await;
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Idle);

    // Its machine is not ready yet (a slot Pod being created again): not flagged at first…
    h.backend.set_unreachable(&machine, true);
    h.advance(Duration::from_secs(15));
    h.settle(1).await;
    assert!(h.backend.calls().iter().rev().take(3).any(|c| matches!(c, Call::Get { .. })), "it was checked");
    assert!(find(&h.get_instance("cpu").await.status.unwrap().conditions, "Reachable").is_none());
    // …but still not answering one interval later, it is.
    h.advance(Duration::from_secs(60));
    h.settle(1).await;
    let st = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(find(&st.conditions, "Reachable").map(|c| c.status.as_str()), Some("False"));
}

/// The `JobControl` condition of a run.
fn job_control(st: &kpool::api::run::RunStatus) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    find(&st.conditions, kpool::controllers::run::JOB_CONTROL)
}

#[tokio::test]
async fn a_run_on_an_instance_whose_backend_is_missing_says_so_and_starts_nothing() {
    let h = Harness::with_dispatch_executor().await;
    idle_instance(&h, "a10g", gpu("A10G")).await;
    h.api::<kpool::api::backend::Backend>().delete("aws", &Default::default()).await.unwrap();

    h.run("train", RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    let err = h.reconcile_run("train").await.unwrap_err();
    assert_eq!(err.category(), "MissingBackend", "{}", kpool::controllers::chain(&err));

    let st = h.get_run("train").await.status.unwrap();
    assert_ne!(st.phase, RunPhase::Running, "nothing runs: {st:?}");
    let c = job_control(&st).expect("a JobControl condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "MissingBackend"), "{c:?}");
    assert!(c.message.contains("backend aws is not defined in namespace ml"), "{c:?}");
    // Tried again, it says the same and still runs nothing.
    assert_eq!(h.reconcile_run("train").await.unwrap_err().category(), "MissingBackend");
    assert_ne!(h.get_run("train").await.status.unwrap().phase, RunPhase::Running);
}

#[tokio::test]
async fn a_running_run_whose_backend_goes_away_says_so() {
    use kpool::api::run::RunStatus;
    let h = Harness::with_dispatch_executor().await;
    idle_instance(&h, "a10g", gpu("A10G")).await;
    // The run is running on the instance (as a job runner started it).
    let inst = h.get_instance("a10g").await;
    let mut ist = inst.status.clone().unwrap();
    let job = kpool::api::instance::JobRef { run: "train".into(), run_uid: "u-train".into(), attempt: 0 };
    kpool::core::instance::claim(&mut ist, job, h.clock_now());
    h.ctx.write_status(&inst, &ist).await.unwrap();
    h.run("train", RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    let run = h.get_run("train").await;
    let mut st = RunStatus {
        pool: Some("default-pool".into()),
        submitted_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t0())),
        ..Default::default()
    };
    kpool::core::run::assigned(&mut st, "a10g", t0());
    h.ctx.write_status(&run, &st).await.unwrap();

    h.api::<kpool::api::backend::Backend>().delete("aws", &Default::default()).await.unwrap();
    let err = h.reconcile_run("train").await.unwrap_err();
    assert_eq!(err.category(), "MissingBackend", "{}", kpool::controllers::chain(&err));
    let st = h.get_run("train").await.status.unwrap();
    let c = job_control(&st).expect("a JobControl condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "MissingBackend"), "{c:?}");
    assert!(c.message.contains("instance a10g") && c.message.contains("backend aws"), "{c:?}");
}

#[tokio::test]
async fn idle_duration_zero_lets_the_run_take_the_instance_it_provisioned() {
    let h = Harness::new().await;
    let zero = PolicySpec { idle_duration: Some("0s".into()), ..Default::default() };
    h.run("train", RunSpec { resources: gpu("A10G"), policy: zero, ..Default::default() }).await;
    let errors = h.settle(3).await;
    assert!(errors.is_empty(), "{errors:?}");

    let st = h.get_run("train").await.status.unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("train-0")), "{st:?}");
    assert_eq!(h.backend.creates().len(), 1, "one launch, no launch-and-kill churn");
    assert!(!h.backend.calls().iter().any(|c| matches!(c, Call::Delete { .. })), "{:?}", h.backend.calls());

    // Once the run is done nobody waits for the instance: gone at once.
    h.exec.exit("train", 0);
    h.settle(2).await;
    let ist = h.get_instance("train-0").await.status.unwrap();
    assert_eq!(ist.phase, InstancePhase::Terminated, "{ist:?}");
}

#[tokio::test]
async fn an_instance_a_run_never_takes_is_kept_for_the_claim_window_only() {
    let h = Harness::new().await;
    let zero = PolicySpec { idle_duration: Some("0s".into()), ..Default::default() };
    h.run("train", RunSpec { resources: gpu("A10G"), policy: zero, ..Default::default() }).await;
    // The run provisions, then is not reconciled again (its controller lags).
    h.reconcile_run("train").await.unwrap();
    h.reconcile_run("train").await.unwrap();
    for _ in 0..2 {
        h.reconcile_instance("train-0").await.unwrap();
    }
    assert_eq!(h.get_instance("train-0").await.status.unwrap().phase, InstancePhase::Idle);
    h.advance(kpool::core::instance::CLAIM_WINDOW);
    h.reconcile_instance("train-0").await.unwrap();
    assert_eq!(h.get_instance("train-0").await.status.unwrap().phase, InstancePhase::Terminating);
}

#[tokio::test]
async fn a_run_with_a_200_character_name_provisions_and_runs() {
    let h = Harness::new().await;
    let name = format!("train-{}", "a".repeat(194));
    assert_eq!(name.len(), 200);
    h.run(&name, RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    let errors = h.settle(3).await;
    assert!(errors.is_empty(), "{errors:?}");

    let st = h.get_run(&name).await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running, "{st:?}");
    let inst = h.get_instance(st.instance.as_deref().unwrap()).await;
    assert_eq!(inst.provisioned_for(), Some(name.as_str()));
    let uid = h.get_run(&name).await.metadata.uid.unwrap();
    assert_eq!(inst.labels().get(PROVISIONED_FOR_LABEL), Some(&uid));
    assert_eq!(h.backend.creates().len(), 1);
}

#[tokio::test]
async fn a_failed_instance_create_after_the_status_write_is_retried_not_read_as_no_capacity() {
    let h = Harness::new().await;
    h.run("train", RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    h.fail_instance_creates.store(1, std::sync::atomic::Ordering::SeqCst);
    let err = h.reconcile_run("train").await.unwrap_err();
    assert_eq!(err.category(), "KubeApi", "{}", kpool::controllers::chain(&err));
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!((st.phase, st.provisioning_instance.as_deref()), (RunPhase::Provisioning, Some("train-0")));

    let errors = h.settle(3).await;
    assert!(errors.is_empty(), "{errors:?}");
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("train-0")), "{st:?}");
    assert_eq!(st.attempts, 0, "no attempt lost: {st:?}");
    assert!(st.history.is_empty(), "{:?}", st.history);
}

#[tokio::test]
async fn a_stale_copy_of_a_run_that_already_ran_claims_nothing_and_starts_nothing() {
    let h = Harness::new().await;
    h.run("a", RunSpec { resources: gpu("A10G"), policy: reuse(), ..Default::default() }).await;
    h.reconcile_run("a").await.unwrap();
    h.reconcile_run("a").await.unwrap();
    // What a lagging cache still holds: the run waiting for an instance.
    let stale = h.get_run("a").await;
    assert_eq!(stale.status.as_ref().unwrap().phase, RunPhase::Pending);

    for name in ["a10g", "a10g-2"] {
        h.instance(name, InstanceSpec { resources: gpu("A10G"), ..Default::default() }).await;
    }
    h.settle(2).await;
    assert_eq!(h.get_run("a").await.status.unwrap().phase, RunPhase::Running);
    h.exec.exit("a", 0);
    h.settle(1).await;
    assert_eq!(h.get_run("a").await.status.unwrap().phase, RunPhase::Succeeded);
    assert_eq!(h.exec.started(), vec!["a".to_string()]);

    let _ = kpool::controllers::run::reconcile(std::sync::Arc::new(stale), h.ctx.clone()).await;
    assert_eq!(h.exec.started(), vec!["a".to_string()], "the job ran once");
    for name in ["a10g", "a10g-2"] {
        let ist = h.get_instance(name).await.status.unwrap();
        assert_eq!((ist.phase, ist.run.as_deref()), (InstancePhase::Idle, None), "{name}");
    }
    assert_eq!(h.get_run("a").await.status.unwrap().phase, RunPhase::Succeeded);
}

/// The watch brings back the copy this process's finalizer patch wrote after the pass
/// that made it has gone on to claim and start: that copy is known stale from the
/// process's own writes, and its pass neither claims nor reads the run again (not even
/// to record the generation its defaulted status does not show).
#[tokio::test]
async fn a_copy_this_process_wrote_before_its_last_write_is_stale_without_a_read() {
    let h = Harness::new().await;
    idle_instance(&h, "a10g", gpu("A10G")).await;
    idle_instance(&h, "a10g-2", gpu("A10G")).await;
    h.run("a", RunSpec { resources: gpu("A10G"), ..Default::default() }).await;
    let fresh = h.get_run("a").await;
    let mut with_finalizer = h.ctx.add_finalizer(&fresh, kpool::api::run::RUN_FINALIZER).await.unwrap().unwrap();
    // As the API server hands out a run kpool has not written a status for yet.
    let default = kpool::api::run::RunStatus { observed_generation: Some(0), ..Default::default() };
    with_finalizer.status = Some(default);
    h.reconcile_run("a").await.unwrap();
    assert_eq!(h.get_run("a").await.status.unwrap().phase, RunPhase::Running);

    let before = h.calls_made();
    let _ = kpool::controllers::run::reconcile(std::sync::Arc::new(with_finalizer), h.ctx.clone()).await;
    let calls: Vec<ApiCall> = h.api_calls.lock().unwrap()[before..].to_vec();
    let reads_of_runs = calls.iter().filter(|c| c.verb == "get" && c.resource == "runs").count();
    assert_eq!(reads_of_runs, 0, "{calls:?}");
    assert_eq!(h.exec.started(), vec!["a".to_string()], "the job ran once");
    let mut held = Vec::new();
    for name in ["a10g", "a10g-2"] {
        if h.get_instance(name).await.status.unwrap().run.is_some() {
            held.push(name);
        }
    }
    assert_eq!(held.len(), 1, "one instance holds the run: {held:?}");
}

/// A controller that dies after a job exited but before the run recorded it (here: the
/// run's status write fails) must not take the run for interrupted on its next pass, which
/// would lose the exit code (and, with a retry policy, run the job again): the outcome is
/// written before the instance is freed. Found by tests/cluster_crash.rs.
#[tokio::test]
async fn a_crash_after_the_job_exited_keeps_the_run_s_outcome() {
    let h = Harness::new().await;
    h.run("train", RunSpec { resources: gpu("A100:80GB:8"), ..Default::default() }).await;
    h.settle(3).await;
    let name = h.get_run("train").await.status.unwrap().instance.expect("running on an instance");

    h.exec.exit("train", 0);
    h.fail_run_status_writes.store(1, std::sync::atomic::Ordering::SeqCst);
    assert!(h.reconcile_run("train").await.is_err(), "the run's status write fails");
    let errors = h.settle(2).await;
    assert!(errors.is_empty(), "{errors:?}");
    let st = h.get_run("train").await.status.unwrap();
    assert_eq!((st.phase, st.exit_code), (RunPhase::Succeeded, Some(0)), "{st:?}");
    let ist = h.get_instance(&name).await.status.unwrap();
    assert_eq!((ist.phase, ist.run), (InstancePhase::Idle, None));
}

/// A run's provisioning instance that went back to Pending after its launch was refused
/// (no capacity, retrying) holds no machine: when the run finds an idle instance, it is
/// ended and deleted, not left to launch once capacity returns.
#[tokio::test]
async fn a_provisioning_instance_refused_capacity_is_ended_when_its_run_finds_an_idle_one() {
    let h = Harness::new().await;
    let retry = kpool::api::policy::RetrySpec {
        on: Some(vec![kpool::api::policy::RetryEvent::NoCapacity]),
        duration: Some("1h".into()),
    };
    let policy = PolicySpec { retry: Some(retry), ..Default::default() };
    for offer in catalog() {
        h.backend.no_capacity_for(&offer.instance_type);
    }
    h.run("r", RunSpec { resources: cpu("8.."), policy, ..Default::default() }).await;
    h.settle(3).await;
    let st = h.get_instance("r-0").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Pending, "waiting for capacity: {st:?}");
    assert!(!st.launch_attempts.is_empty(), "its launches were refused: {st:?}");
    let refused = h.backend.creates().len();

    // Capacity is back; an instance added by hand goes Idle before r-0 looks again.
    h.backend.clear_no_capacity();
    h.instance("m", InstanceSpec { resources: cpu("8"), ..Default::default() }).await;
    for _ in 0..3 {
        h.reconcile_instance("m").await.unwrap();
    }
    h.settle(3).await;
    assert_eq!(h.get_run("r").await.status.unwrap().instance.as_deref(), Some("m"));
    assert!(h.api::<kpool::api::instance::Instance>().get_opt("r-0").await.unwrap().is_none(), "r-0 is gone");
    h.advance(Duration::from_secs(120));
    h.settle(3).await;
    let later: Vec<_> = h.backend.creates().into_iter().skip(refused).collect();
    assert_eq!(later.len(), 1, "only m launched: {later:?}");
}

/// Found by the simulation: a run whose instance waited for room in its pool (another
/// instance took the last slot between the run's decision and the instance's admission)
/// waited past its retry window, Provisioning for ever.
#[tokio::test]
async fn a_run_whose_instance_waits_for_room_fails_when_its_retry_window_ends() {
    let h = Harness::new().await;
    h.pool("small", PoolSpec { max_instances: Some(1), ..Default::default() }).await;
    let retry = kpool::api::policy::RetrySpec {
        on: Some(vec![kpool::api::policy::RetryEvent::NoCapacity]),
        duration: Some("10m".into()),
    };
    let policy = PolicySpec { retry: Some(retry), ..Default::default() };
    h.run("r", RunSpec { pool: Some("small".into()), resources: cpu("8.."), policy, ..Default::default() }).await;
    h.reconcile_run("r").await.unwrap();
    assert_eq!(h.get_run("r").await.status.unwrap().provisioning_instance.as_deref(), Some("r-0"));
    // A manual instance the run does not fit takes the slot before r-0 is admitted.
    h.instance("m", InstanceSpec { pool: Some("small".into()), resources: cpu("4"), ..Default::default() }).await;
    for _ in 0..4 {
        h.reconcile_instance("m").await.unwrap();
    }
    assert_eq!(h.get_instance("m").await.status.unwrap().phase, InstancePhase::Idle);
    h.reconcile_instance("r-0").await.unwrap();
    h.reconcile_instance("r-0").await.unwrap();
    let ready = find(&h.get_instance("r-0").await.status.unwrap().conditions, "Ready").cloned().unwrap();
    assert_eq!(ready.reason, "PoolAtCapacity");
    h.reconcile_run("r").await.unwrap();
    let st = h.get_run("r").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Provisioning);
    // Its `Scheduled` says what the instance says: that alone is written.
    let c = find(&st.conditions, "Scheduled").unwrap();
    let said = format!("instance r-0: PoolAtCapacity: {}", ready.message);
    assert_eq!((c.status.as_str(), c.reason.as_str(), c.message.as_str()), ("False", "Provisioning", said.as_str()));

    h.advance(Duration::from_secs(601));
    h.reconcile_run("r").await.unwrap();
    let st = h.get_run("r").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Failed, Some("NoCapacity")), "{st:?}");
    assert!(h.api::<kpool::api::instance::Instance>().get_opt("r-0").await.unwrap().is_none(), "r-0 is deleted");
    assert_eq!(h.backend.creates().len(), 1, "only m launched");
}

/// Runs woken together take different instances: each takes what one assignment over the
/// pool's waiting runs, oldest first, gives it, so a newer run reconciled first leaves the
/// cheapest instance to the older one instead of racing it for the same instance.
#[tokio::test]
async fn waiting_runs_claim_in_queue_order_without_racing_for_one_instance() {
    let h = Harness::new().await;
    let reuse = PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() };
    for name in ["r1-older", "r2-newer"] {
        h.run(name, RunSpec { resources: cpu("4.."), policy: reuse.clone(), ..Default::default() }).await;
    }
    h.settle(2).await;
    // Both wait for capacity; then two identical instances become idle at once.
    for name in ["r1-older", "r2-newer"] {
        assert_eq!(h.get_run(name).await.status.unwrap().phase, RunPhase::Pending);
    }
    for name in ["cpu-a", "cpu-b"] {
        h.instance(name, InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
        for _ in 0..4 {
            h.reconcile_instance(name).await.unwrap();
        }
        assert_eq!(h.get_instance(name).await.status.unwrap().phase, InstancePhase::Idle);
    }

    // The newer run is reconciled first: it takes what the older one leaves.
    h.reconcile_run("r2-newer").await.unwrap();
    assert_eq!(h.get_run("r2-newer").await.status.unwrap().instance.as_deref(), Some("cpu-b"));
    h.reconcile_run("r1-older").await.unwrap();
    let st = h.get_run("r1-older").await.status.unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("cpu-a")), "{st:?}");
}

#[tokio::test]
async fn a_free_slot_goes_to_the_run_ahead_in_the_queue_not_to_a_newcomer() {
    let h = Harness::new().await;
    h.pool("small", PoolSpec { max_instances: Some(1), ..Default::default() }).await;
    let in_small =
        |resources, priority| RunSpec { pool: Some("small".into()), resources, priority, ..Default::default() };
    h.run("q0-holder", in_small(cpu("4.."), 0)).await;
    h.settle(2).await;
    assert_eq!(h.get_run("q0-holder").await.status.unwrap().phase, RunPhase::Running);
    // Two GPU runs wait for the one slot; neither fits the holder's instance.
    h.run("q1-older", in_small(gpu("A10G"), 0)).await;
    h.settle(1).await;
    h.run("q2-newer", in_small(gpu("A10G"), 0)).await;
    h.settle(1).await;
    for name in ["q1-older", "q2-newer"] {
        let st = h.get_run(name).await.status.unwrap();
        assert_eq!(find(&st.conditions, "Scheduled").unwrap().reason, "PoolAtCapacity", "{name}");
    }
    // The slot frees; the newer run is reconciled first and leaves it to the older one.
    h.exec.exit("q0-holder", 0);
    h.settle(1).await;
    let _ = h.delete_instance("q0-holder-0").await;
    let _ = h.delete_instance("q0-holder-0").await;
    h.reconcile_run("q2-newer").await.unwrap();
    let st = h.get_run("q2-newer").await.status.unwrap();
    let c = find(&st.conditions, "Scheduled").unwrap();
    assert_eq!((st.provisioning_instance.as_deref(), c.reason.as_str()), (None, "PoolAtCapacity"), "{c:?}");
    assert!(c.message.contains("held for the 1 run(s) ahead"), "{c:?}");
    h.reconcile_run("q1-older").await.unwrap();
    assert_eq!(h.get_run("q1-older").await.status.unwrap().provisioning_instance.as_deref(), Some("q1-older-0"));
}

#[tokio::test]
async fn a_run_of_higher_priority_is_served_before_older_runs() {
    let h = Harness::new().await;
    let reuse = PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() };
    for (name, priority) in [("p1-older", 0), ("p2-urgent", 10)] {
        h.run(name, RunSpec { resources: cpu("4.."), policy: reuse.clone(), priority, ..Default::default() }).await;
    }
    h.settle(2).await;
    h.instance("cpu-a", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    for _ in 0..4 {
        h.reconcile_instance("cpu-a").await.unwrap();
    }
    // The older run is reconciled first, and leaves the one instance to the urgent run.
    h.reconcile_run("p1-older").await.unwrap();
    assert_eq!(h.get_run("p1-older").await.status.unwrap().instance, None);
    h.reconcile_run("p2-urgent").await.unwrap();
    assert_eq!(h.get_run("p2-urgent").await.status.unwrap().instance.as_deref(), Some("cpu-a"));
}

/// A waiting run says where it stands: `status.queuePosition` (priority first, then age)
/// and a `Queued` condition whose reason is what it waits for; both follow the queue as it
/// moves, and the position goes once the run is on an instance.
#[tokio::test]
async fn waiting_runs_show_their_queue_position_and_why_they_wait() {
    let h = Harness::new().await;
    let reuse = PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() };
    for (name, priority) in [("w1-older", 0), ("w2-newer", 0), ("w3-urgent", 5)] {
        h.run(name, RunSpec { resources: cpu("4.."), policy: reuse.clone(), priority, ..Default::default() }).await;
        h.settle(1).await;
    }
    h.settle(1).await;
    let queued = |st: &kpool::api::run::RunStatus| find(&st.conditions, "Queued").cloned().expect("Queued");
    for (name, position) in [("w3-urgent", 1), ("w1-older", 2), ("w2-newer", 3)] {
        let st = h.get_run(name).await.status.unwrap();
        assert_eq!(st.queue_position, Some(position), "{name}: {st:?}");
        let c = queued(&st);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "NoIdleInstance"), "{name}: {c:?}");
        assert!(c.message.starts_with(&format!("position {position} in the queue of pool ")), "{c:?}");
    }
    // One instance frees: the urgent run takes it and leaves the queue; the others move up.
    h.instance("cpu-a", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    for _ in 0..4 {
        h.reconcile_instance("cpu-a").await.unwrap();
    }
    h.settle(1).await;
    let st = h.get_run("w3-urgent").await.status.unwrap();
    assert_eq!((st.instance.as_deref(), st.queue_position), (Some("cpu-a"), None), "{st:?}");
    let c = queued(&st);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Assigned"), "{c:?}");
    for (name, position) in [("w1-older", 1), ("w2-newer", 2)] {
        h.reconcile_run(name).await.unwrap();
        let st = h.get_run(name).await.status.unwrap();
        assert_eq!(st.queue_position, Some(position), "{name}: {st:?}");
        assert!(queued(&st).message.starts_with(&format!("position {position} ")), "{st:?}");
    }
}

/// Decide once, write once: each pass of the run's job check writes the run's status at
/// most once, whatever it found (here, in one pass: the instance answers again, and the job
/// has exited). The instance is written once too, when the run frees it.
#[tokio::test]
async fn one_pass_of_a_running_run_writes_its_status_once() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    h.run("job", RunSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
    h.exec.set_unreachable(true);
    let before = h.calls_made();
    h.reconcile_run("job").await.unwrap();
    assert_eq!(h.status_writes_since(before, "runs/status"), 1, "the instance does not answer: flagged in one write");
    let before = h.calls_made();
    h.reconcile_run("job").await.unwrap();
    assert_eq!(h.status_writes_since(before, "runs/status"), 0, "still not answering: nothing new to write");

    h.advance(Duration::from_secs(30));
    h.exec.set_unreachable(false);
    h.exec.exit("job", 3);
    let before = h.calls_made();
    h.reconcile_run("job").await.unwrap();
    assert_eq!(h.status_writes_since(before, "runs/status"), 1, "answers again and exited: one write");
    assert_eq!(h.status_writes_since(before, "instances/status"), 1, "the instance is freed once");
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.exit_code), (RunPhase::Failed, Some(3)));
    let c = find(&st.conditions, "InstanceReachable").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Reachable"), "the same write says it answers again");
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Idle);
}

/// The same for a run given up on an unreachable instance: the instance is held (one
/// write) before the run lets go of it (one write).
#[tokio::test]
async fn giving_up_on_an_unreachable_instance_writes_each_object_once() {
    let h = Harness::new().await;
    idle_instance(&h, "cpu", cpu("4..")).await;
    h.run("job", RunSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
    h.exec.set_unreachable(true);
    h.reconcile_run("job").await.unwrap();
    h.advance(Duration::from_secs(300));
    let before = h.calls_made();
    h.reconcile_run("job").await.unwrap();
    assert_eq!(h.status_writes_since(before, "runs/status"), 1);
    assert_eq!(h.status_writes_since(before, "instances/status"), 1);
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("InstanceUnreachable")));
}
