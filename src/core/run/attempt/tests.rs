use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::conditions::{find, set_false_since};
use crate::api::policy::{PolicySpec, RetryEvent, RetrySpec};
use crate::core::policy::{effective_policy, Origin};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const SUBMITTED: &str = "2026-01-01T00:00:00Z";
const NOW: &str = "2026-01-01T00:30:00Z";
const GEN: Option<i64> = Some(3);

fn policy(retry_on: Option<RetryEvent>) -> EffectivePolicy {
    let retry = retry_on.map(|e| RetrySpec { on: Some(vec![e]), duration: Some("1h".into()) });
    effective_policy(&[&PolicySpec { retry, ..Default::default() }], Origin::Run).unwrap()
}

/// On attempt 2, running on `i` since midnight.
fn running() -> RunStatus {
    let mut s = RunStatus { submitted_at: Some(Time(t(SUBMITTED))), attempts: 2, ..Default::default() };
    assigned(&mut s, "i", t(SUBMITTED));
    s
}

/// Whether condition `type_` is True, and its reason.
fn cond(s: &RunStatus, type_: &str) -> Option<(String, String)> {
    find(&s.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

fn falsify(s: &mut RunStatus, type_: &str) {
    set_false_since(&mut s.conditions, type_, Reason::ExecutorError, "no", GEN, t(SUBMITTED));
}

#[test]
fn a_started_job_runs_there_and_is_announced_only_when_asked() {
    for announce in [false, true] {
        let mut s = RunStatus { submitted_at: Some(Time(t(SUBMITTED))), ..Default::default() };
        falsify(&mut s, JOB_CONTROL);
        let got = started(&mut s, "i", announce, GEN, t(NOW));
        let mut want = Transition::write().said(Reason::Assigned, "running on instance i");
        if announce {
            want = want.event(false, Reason::Assigned, "running on instance i");
        }
        assert_eq!(got, want, "{announce}");
        assert_eq!((s.phase, s.instance.as_deref()), (RunPhase::Running, Some("i")));
        assert_eq!(s.started_at, Some(Time(t(NOW))));
        assert_eq!(cond(&s, JOB_CONTROL), Some(("True".into(), "Controlled".into())));
    }
}

#[test]
fn a_running_job_is_written_only_when_a_condition_comes_back() {
    let p = policy(None);
    // Nothing was False: nothing to write or say.
    let mut s = running();
    assert_eq!(answered(&mut s, &p, "i", &JobState::Running, GEN, t(NOW)), Transition::none());
    // The job answers again: written, nothing said.
    let mut s = running();
    falsify(&mut s, JOB_CONTROL);
    assert_eq!(answered(&mut s, &p, "i", &JobState::Running, GEN, t(NOW)), Transition::write());
    assert_eq!(cond(&s, JOB_CONTROL), Some(("True".into(), "Controlled".into())));
    // The instance answers again: written, with a Normal Event.
    let mut s = running();
    falsify(&mut s, REACHABLE);
    let got = answered(&mut s, &p, "i", &JobState::Running, GEN, t(NOW));
    assert_eq!(got, Transition::write().event(false, Reason::Reachable, "instance i answers again"));
    assert_eq!(cond(&s, REACHABLE), Some(("True".into(), "Reachable".into())));
}

#[test]
fn an_exited_job_is_written_with_the_conditions_that_came_back_said_first() {
    let p = policy(None);
    let mut s = running();
    falsify(&mut s, REACHABLE);
    let got = answered(&mut s, &p, "i", &JobState::Exited(0), GEN, t(NOW));
    let want = Transition::write()
        .said(Reason::Completed, "the job exited with code 0")
        .event(false, Reason::Reachable, "instance i answers again")
        .event(false, Reason::Succeeded, "the job exited with code 0")
        .effect(Effect::Release { instance: "i".into(), ended: true });
    assert_eq!(got, want);
    assert_eq!((s.phase, cond(&s, REACHABLE).unwrap().0.as_str()), (RunPhase::Succeeded, "True"));
}

#[test]
fn an_ended_attempt_is_retried_within_the_window_and_frees_the_instance_of_that_attempt() {
    let msg = "failed to start the job on instance i: boom (for 300s)";
    // Retried: Pending for attempt 3, JobControl True again, the job of attempt 2 fenced.
    let mut s = running();
    falsify(&mut s, JOB_CONTROL);
    let got = attempt_ended(&mut s, &policy(Some(RetryEvent::Error)), "i", Reason::StartFailed, msg, GEN, t(NOW));
    let want = Transition::write()
        .event(true, Reason::StartFailed, msg)
        .effect(Effect::ReleaseAttempt { instance: "i".into(), attempt: 2 })
        .said(Reason::Retrying, format!("{msg}; retrying"));
    assert_eq!(got, want);
    assert_eq!((s.phase, s.attempts, s.instance.as_deref()), (RunPhase::Pending, 3, None));
    assert_eq!(cond(&s, JOB_CONTROL), Some(("True".into(), "Retrying".into())));
    assert_eq!(s.history.last().map(|a| a.reason.as_str()), Some("StartFailed"));
    // No retry on errors (one on interruptions only): Failed with the reason.
    for p in [policy(None), policy(Some(RetryEvent::Interruption))] {
        let mut s = running();
        let got = attempt_ended(&mut s, &p, "i", Reason::ExecutorError, msg, GEN, t(NOW));
        let want = Transition::write()
            .event(true, Reason::ExecutorError, msg)
            .effect(Effect::ReleaseAttempt { instance: "i".into(), attempt: 2 })
            .said(Reason::ExecutorError, msg);
        assert_eq!(got, want);
        assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Failed, Some("ExecutorError")));
    }
}

#[test]
fn a_failed_call_is_tried_again_saying_so_once_or_ends_the_attempt() {
    let p = policy(None);
    let mut s = running();
    let retry = |changed| ExecVerdict::Retry { reason: Reason::MissingBackend, message: "gone".into(), changed };
    let said = Transition::write().event(true, Reason::MissingBackend, "gone");
    assert_eq!(exec(retry(true), &mut s, &p, "i", GEN, t(NOW)), Exec::Again(said));
    assert_eq!(exec(retry(false), &mut s, &p, "i", GEN, t(NOW)), Exec::Again(Transition::none()));
    let fail = ExecVerdict::Fail { reason: Reason::Unsupported, message: "no runtime".into() };
    assert_eq!(exec(fail, &mut s, &p, "i", GEN, t(NOW)), Exec::Unsupported("no runtime".into()));
    assert_eq!(s, running(), "neither changes the status");
    let end = ExecVerdict::EndAttempt { reason: Reason::ExecutorError, message: "lasted".into() };
    let mut want_status = running();
    let want = attempt_ended(&mut want_status, &p, "i", Reason::ExecutorError, "lasted", GEN, t(NOW));
    assert_eq!(exec(end, &mut s, &p, "i", GEN, t(NOW)), Exec::Ended(want));
    assert_eq!(s, want_status);
}

#[test]
fn a_refused_start_fails_the_run_and_frees_the_instance_before_the_write() {
    let mut s = RunStatus { submitted_at: Some(Time(t(SUBMITTED))), ..Default::default() };
    let got = start_refused(&mut s, "i", "no container runtime", t(NOW));
    let want = Transition::write()
        .said(Reason::Unsupported, "no container runtime")
        .event(true, Reason::Unsupported, "no container runtime")
        .effect(Effect::FreeUnstarted { instance: "i".into() });
    assert_eq!(got, want);
    assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Failed, Some("Unsupported")));
}

#[test]
fn an_unreachable_instance_is_said_once_then_held_for_its_job_when_the_run_lets_go() {
    let deadline = t("2026-01-01T00:35:00Z");
    let job = JobRef { run: "r".into(), run_uid: "u".into(), attempt: 2 };
    let quiet = Unreachable::Waiting { deadline, event: None };
    assert_eq!(unreachable(quiet, "i", job.clone()), Transition::none());
    let first = Unreachable::Waiting { deadline, event: Some("no answer".into()) };
    let want = Transition::write().event(true, Reason::InstanceUnreachable, "no answer");
    assert_eq!(unreachable(first, "i", job.clone()), want);
    for retried in [false, true] {
        let gave_up = Unreachable::GaveUp { message: "gone quiet".into(), retried };
        let got = unreachable(gave_up, "i", job.clone());
        let said = match retried {
            true => (Reason::Retrying, "gone quiet; retrying"),
            false => (Reason::InstanceUnreachable, "gone quiet"),
        };
        let want = Transition::write()
            .event(true, Reason::InstanceUnreachable, "gone quiet")
            .said(said.0, said.1)
            .effect(Effect::Hold { instance: "i".into(), job: job.clone(), why: "gone quiet".into() });
        assert_eq!(got, want, "{retried}");
    }
}
