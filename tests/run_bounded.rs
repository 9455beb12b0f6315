//! Runs never hang, and a job that may still run keeps its instance (reconcile tests on the
//! in-memory API with the scripted executor):
//! - the job of a run that let go of its instance (the host did not answer, the job could
//!   not be stopped) is stopped there — fenced — before the instance is Idle again; a host
//!   that is not a cloud VM is never given back while its job may run;
//! - a start, a follow or a stop that keeps failing ends the run (or its attempt, retried
//!   within the policy), and the instance comes back to Idle; `maxDuration` always holds.

mod support;

use std::time::Duration;

use kpool::api::backend::{Backend, BackendType};
use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, InstanceSpec, JobRef};
use kpool::api::policy::{CreationPolicy, PolicySpec, RetryEvent, RetrySpec};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec, RunStatus};
use kpool::backends::fake::Call;
use kpool::controllers::fence::JOB_FENCED;
use kpool::controllers::run::JOB_CONTROL;
use kpool::exec::ExecError;
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use support::*;

/// The unreachable grace of the harness's controllers (the default).
const GRACE: Duration = Duration::from_secs(300);

fn cpu() -> ResourcesSpec {
    ResourcesSpec { cpu: Some("4..".into()), ..Default::default() }
}

fn retry_on(event: RetryEvent) -> Option<RetrySpec> {
    Some(RetrySpec { on: Some(vec![event]), duration: Some("1h".into()) })
}

/// An idle instance `cpu`, then run `job` on it with `policy` (Reuse: it never provisions).
async fn running(h: &Harness, policy: PolicySpec) {
    h.instance("cpu", InstanceSpec { resources: cpu(), ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Idle);
    let policy = PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..policy };
    h.run("job", RunSpec { resources: cpu(), policy, ..Default::default() }).await;
    h.settle(2).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("cpu")), "{st:?}");
}

fn job_ref(run: &kpool::api::run::Run, attempt: u32) -> JobRef {
    JobRef { run: run.name_any(), run_uid: run.uid().unwrap(), attempt }
}

fn condition(st: &RunStatus, type_: &str) -> (String, String, String) {
    let c = find(&st.conditions, type_).unwrap_or_else(|| panic!("no {type_} in {:?}", st.conditions));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

async fn instance_phase(h: &Harness) -> (InstancePhase, Option<String>) {
    let st = h.get_instance("cpu").await.status.unwrap();
    (st.phase, st.run)
}

#[tokio::test]
async fn an_interrupted_runs_host_is_fenced_before_it_takes_the_retried_run() {
    let h = Harness::new().await;
    let policy = PolicySpec { retry: retry_on(RetryEvent::Interruption), ..Default::default() };
    running(&h, policy).await;
    let first = job_ref(&h.get_run("job").await, 0);

    // The host stops answering past the grace: the run is retried, the instance held.
    h.exec.set_unreachable(true);
    h.settle(1).await;
    h.advance(GRACE + Duration::from_secs(1));
    h.settle(2).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.attempts), (RunPhase::Pending, 1), "{st:?}");
    assert_eq!(instance_phase(&h).await, (InstancePhase::Busy, None), "held, not Idle");
    let ist = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(ist.job.as_ref(), Some(&first));
    let c = find(&ist.conditions, JOB_FENCED).expect("JobFenced");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "FencePending"), "{c:?}");
    assert!(h.exec.fenced().is_empty());
    assert_eq!(h.exec.started().len(), 1, "nothing else started on the host");

    // It answers again: the first job is stopped there, then the retried run takes it.
    h.exec.set_unreachable(false);
    h.advance(Duration::from_secs(15));
    h.settle(2).await;
    assert_eq!(h.exec.fenced(), [first]);
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("cpu")), "{st:?}");
    let ist = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(ist.job, Some(job_ref(&h.get_run("job").await, 1)));
    assert_eq!(find(&ist.conditions, JOB_FENCED).unwrap().status, "True");
    assert!(!h.backend.calls().iter().any(|c| matches!(c, Call::Delete { .. })), "the instance is kept");
}

#[tokio::test]
async fn a_host_that_never_answers_again_is_not_given_back_while_its_job_may_run() {
    let h = Harness::new().await;
    running(&h, PolicySpec::default()).await;
    // A host of your own: giving its machine back does not stop the job on it.
    let patch = serde_json::json!({"spec": {"type": "ssh"}});
    h.api::<Backend>().patch("aws", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(h.api::<Backend>().get("aws").await.unwrap().spec.type_, BackendType::Ssh);

    h.exec.set_unreachable(true);
    h.settle(1).await;
    h.advance(GRACE + Duration::from_secs(1));
    h.settle(2).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("InstanceUnreachable")));
    // Held for the grace, then given up; the teardown waits for the job to be stopped.
    h.advance(GRACE + Duration::from_secs(1));
    h.settle(2).await;
    let ist = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(ist.phase, InstancePhase::Terminating, "{:?}", ist.conditions);
    h.advance(GRACE);
    h.settle(2).await;
    let ist = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(ist.phase, InstancePhase::Terminating, "not given back: {:?}", ist.conditions);
    assert_eq!(find(&ist.conditions, JOB_FENCED).unwrap().status, "False");
    assert!(!h.backend.calls().iter().any(|c| matches!(c, Call::Delete { .. })), "{:?}", h.backend.calls());

    // Back: the job is stopped, and only then is the machine given back.
    h.exec.set_unreachable(false);
    h.settle(2).await;
    assert_eq!(h.exec.fenced().len(), 1);
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Terminated);
}

#[tokio::test]
async fn a_deleted_instance_whose_host_never_answers_is_let_go_after_the_grace() {
    let h = Harness::new().await;
    running(&h, PolicySpec::default()).await;
    let patch = serde_json::json!({"spec": {"type": "ssh"}});
    h.api::<Backend>().patch("aws", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    h.exec.set_unreachable(true);
    // Its owner deletes the Instance while its host does not answer: held for the grace,
    // as the job may still run there ...
    let _ = h.delete_instance("cpu").await;
    h.advance(GRACE / 2);
    let _ = h.delete_instance("cpu").await;
    let ist = h.get_instance("cpu").await.status.unwrap();
    let c = find(&ist.conditions, JOB_FENCED).expect("JobFenced");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "FencePending"), "held: {:?}", ist.conditions);
    // ... then let go: the machine is forgotten, and the condition says what may be left.
    h.advance(GRACE / 2 + Duration::from_secs(1));
    // (The in-memory API keeps no deletionTimestamp: each pass of the deletion is one call.)
    let _ = h.delete_instance("cpu").await;
    let _ = h.delete_instance("cpu").await;
    let left = h.api::<kpool::api::instance::Instance>().get_opt("cpu").await.unwrap();
    assert!(left.is_none(), "let go: {:?}", left.map(|i| i.status));
    assert!(h.exec.fenced().is_empty(), "the job was never stopped");
}

#[tokio::test]
async fn a_cloud_machine_whose_job_cannot_be_stopped_is_deleted() {
    let h = Harness::new().await;
    running(&h, PolicySpec::default()).await;
    h.exec.set_unreachable(true);
    h.settle(1).await;
    h.advance(GRACE + Duration::from_secs(1));
    h.settle(2).await;
    assert_eq!(instance_phase(&h).await, (InstancePhase::Busy, None), "held");
    h.advance(GRACE + Duration::from_secs(1));
    h.settle(3).await;
    // Terminating the VM stops the job: the machine is deleted, never reused.
    assert_eq!(h.get_instance("cpu").await.status.unwrap().phase, InstancePhase::Terminated);
    assert!(h.backend.calls().iter().any(|c| matches!(c, Call::Delete { .. })));
}

#[tokio::test]
async fn a_start_that_keeps_failing_fails_the_run_and_frees_the_instance() {
    let h = Harness::new().await;
    h.instance("cpu", InstanceSpec { resources: cpu(), ..Default::default() }).await;
    h.settle(2).await;
    let missing = "spec.env[0].valueFrom: Secret wandb not found in namespace ml";
    h.exec.fail("start", Some(ExecError::Other(missing.into())));
    let reuse = PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() };
    h.run("job", RunSpec { resources: cpu(), policy: reuse, ..Default::default() }).await;
    h.settle(2).await;
    let st = h.get_run("job").await.status.unwrap();
    assert!(!st.phase.is_finished(), "{st:?}");
    let (status, reason, message) = condition(&st, JOB_CONTROL);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "StartFailed"));
    assert!(message.contains(missing), "{message}");

    h.advance(GRACE - Duration::from_secs(1));
    h.settle(1).await;
    assert!(!h.get_run("job").await.status.unwrap().phase.is_finished(), "within the grace");
    h.advance(Duration::from_secs(2));
    h.settle(2).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Failed, Some("StartFailed")), "{st:?}");
    let (_, _, message) = condition(&st, "Succeeded");
    assert!(message.contains(missing), "{message}");
    // Whatever the failed start left on the machine is stopped before it is free again.
    assert_eq!(h.exec.fenced(), [job_ref(&h.get_run("job").await, 0)]);
    assert_eq!(instance_phase(&h).await, (InstancePhase::Idle, None));
}

#[tokio::test]
async fn a_start_that_keeps_failing_is_retried_within_the_policy() {
    let h = Harness::new().await;
    h.instance("cpu", InstanceSpec { resources: cpu(), ..Default::default() }).await;
    h.settle(2).await;
    h.exec.fail("start", Some(ExecError::Other("injected".into())));
    let policy = PolicySpec {
        creation_policy: Some(CreationPolicy::Reuse),
        retry: retry_on(RetryEvent::Error),
        ..Default::default()
    };
    h.run("job", RunSpec { resources: cpu(), policy, ..Default::default() }).await;
    h.settle(2).await;
    h.advance(GRACE + Duration::from_secs(1));
    h.settle(1).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.attempts), (RunPhase::Pending, 1), "{st:?}");
    assert_eq!(st.history.last().map(|a| a.reason.as_str()), Some("StartFailed"));
    h.exec.fail("start", None);
    h.settle(2).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("cpu")), "{st:?}");
    assert_eq!(condition(&st, JOB_CONTROL).0, "True");
}

#[tokio::test]
async fn max_duration_holds_when_the_stop_fails() {
    let h = Harness::new().await;
    running(&h, PolicySpec { max_duration: Some("10m".into()), ..Default::default() }).await;
    h.exec.fail("stop", Some(ExecError::Other("injected: stop hangs".into())));
    h.exec.fail("fence", Some(ExecError::Other("injected: stop hangs".into())));
    h.advance(Duration::from_secs(600));
    h.settle(2).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("MaxDurationExceeded")));
    let (_, _, message) = condition(&st, "Succeeded");
    assert!(message.contains("injected: stop hangs") && message.contains("held"), "{message}");
    assert_eq!(instance_phase(&h).await, (InstancePhase::Busy, None), "held while its job may run");

    h.exec.fail("stop", None);
    h.exec.fail("fence", None);
    h.advance(Duration::from_secs(15));
    h.settle(2).await;
    assert_eq!(h.exec.fenced().len(), 1);
    assert_eq!(instance_phase(&h).await, (InstancePhase::Idle, None));
}

/// The user stops run `job` (`spec.stop`): after a pass it is Terminated, `Stopped`.
async fn stop_by_user(h: &Harness) {
    let patch = serde_json::json!({"spec": {"stop": true}});
    h.api::<kpool::api::run::Run>().patch("job", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    h.settle(1).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("Stopped")));
}

/// A run that ended frees its instance only once the job there is fenced: when the stop
/// worked but the fence that comes before freeing the instance fails, the instance is held
/// (Busy without a run, `Fencing`), never Idle while the job may still run there.
#[tokio::test]
async fn an_ended_runs_instance_whose_fence_fails_is_held_not_freed() {
    let h = Harness::new().await;
    running(&h, PolicySpec::default()).await;
    h.exec.fail("fence", Some(ExecError::Other("injected: host went away".into())));
    stop_by_user(&h).await;
    assert_eq!(instance_phase(&h).await, (InstancePhase::Busy, None), "held while its job may run");
    let ist = h.get_instance("cpu").await.status.unwrap();
    assert_eq!(find(&ist.conditions, "Ready").unwrap().reason, "Fencing");
    let fenced = find(&ist.conditions, JOB_FENCED).unwrap();
    assert_eq!((fenced.status.as_str(), fenced.reason.as_str()), ("False", "FencePending"), "{fenced:?}");

    h.exec.fail("fence", None);
    h.advance(Duration::from_secs(15));
    h.settle(2).await;
    assert_eq!(h.exec.fenced().len(), 1);
    assert_eq!(instance_phase(&h).await, (InstancePhase::Idle, None));
}

#[tokio::test]
async fn a_stop_that_fails_neither_blocks_the_users_stop_nor_the_runs_deletion() {
    let h = Harness::new().await;
    running(&h, PolicySpec::default()).await;
    h.exec.fail("stop", Some(ExecError::Other("injected".into())));
    h.exec.fail("fence", Some(ExecError::Other("injected".into())));
    stop_by_user(&h).await;
    assert_eq!(instance_phase(&h).await, (InstancePhase::Busy, None), "held");

    // A second run on a second instance, deleted while its stop fails.
    h.instance("cpu2", InstanceSpec { resources: cpu(), ..Default::default() }).await;
    h.settle(2).await;
    let reuse = PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() };
    h.run("other", RunSpec { resources: cpu(), policy: reuse, ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_run("other").await.status.unwrap().phase, RunPhase::Running);
    h.delete_run("other").await.unwrap();
    assert!(h.api::<kpool::api::run::Run>().get_opt("other").await.unwrap().is_none(), "deleted");
    let ist = h.get_instance("cpu2").await.status.unwrap();
    assert_eq!((ist.phase, ist.run.as_deref()), (InstancePhase::Busy, None), "held: {ist:?}");
}

#[tokio::test]
async fn a_job_that_cannot_be_followed_ends_its_run_after_the_grace() {
    let h = Harness::new().await;
    running(&h, PolicySpec::default()).await;
    h.exec.fail("status", Some(ExecError::Other("no job of run job on host cpu".into())));
    h.advance(Duration::from_secs(15));
    h.settle(1).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Running);
    assert_eq!(condition(&st, JOB_CONTROL).1, "ExecutorError");
    h.advance(GRACE);
    h.settle(2).await;
    let st = h.get_run("job").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Failed, Some("ExecutorError")), "{st:?}");
    assert!(condition(&st, "Succeeded").2.contains("no job of run job"), "{st:?}");
    assert_eq!(instance_phase(&h).await, (InstancePhase::Idle, None));
}

/// Decide once, write once: a pass of the deletion of a busy instance fences its job (or,
/// on a cloud VM that does not answer, lets deleting the machine stop it) and asks for the
/// machine's deletion, and records both in one status write.
#[tokio::test]
async fn a_pass_of_the_deletion_of_a_busy_instance_writes_its_status_once() {
    for answers in [true, false] {
        let h = Harness::new().await;
        running(&h, PolicySpec::default()).await;
        h.exec.set_unreachable(!answers);
        let before = h.calls_made();
        let _ = h.delete_instance("cpu").await;
        assert_eq!(h.status_writes_since(before, "instances/status"), 1, "answers: {answers}");
        let ist = h.get_instance("cpu").await.status.unwrap();
        assert_eq!((ist.phase, ist.job.as_ref()), (InstancePhase::Terminating, None), "answers: {answers}");
        // Stopped there, or (a cloud VM) stopped by deleting the machine.
        assert_eq!(h.exec.fenced().len(), usize::from(answers), "answers: {answers}");
        assert!(h.backend.calls().iter().any(|c| matches!(c, Call::Delete { .. })), "answers: {answers}");
    }
}
