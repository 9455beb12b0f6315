//! What a failing executor call makes of a run's attempt: the instance that does not
//! answer ([`unreachable`]) and the call that fails for any other reason ([`exec_failed`]).
//! Both mark the run's status at once (a condition False since the first failure) and end
//! the attempt only when the failures have lasted their grace, counted from that first
//! failure, so that a blip costs nothing.

use std::time::Duration;

use jiff::Timestamp;

use super::{interrupted, EffectivePolicy};
use crate::api::conditions::set_false_since;
use crate::api::reasons::Reason;
use crate::api::run::RunStatus;
use crate::core::add;

/// The run condition that says whether its instance answers.
pub const REACHABLE: &str = "InstanceReachable";
/// The run condition that says whether kpool can start, follow and stop the run's job on
/// its instance (False, e.g. with `MissingBackend`, while it cannot).
pub const JOB_CONTROL: &str = "JobControl";

/// What becomes of a run whose instance does not answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Unreachable {
    /// Within the grace: `InstanceReachable` is False; the run is given up at `deadline`
    /// if the instance stays so. `event`: the Warning to send and the status to write,
    /// the first time only (nothing changed otherwise).
    Waiting { deadline: Timestamp, event: Option<String> },
    /// The grace is over: the run lets go of the instance, which is held until the job is
    /// stopped there; the run is interrupted (`retried`: back to Pending, else Terminated
    /// with `InstanceUnreachable`). `message` says so, for the status and the Event.
    GaveUp { message: String, retried: bool },
}

/// The run's instance `instance` does not answer (`why`): `InstanceReachable` goes False
/// (since the first time) and, once `grace` has passed since then, the run is
/// [`interrupted`] with `InstanceUnreachable`. `status` carries the transition.
pub fn unreachable(
    status: &mut RunStatus,
    policy: &EffectivePolicy,
    instance: &str,
    why: &str,
    grace: Duration,
    generation: Option<i64>,
    now: Timestamp,
) -> Unreachable {
    let msg = format!("instance {instance} does not answer ({why})");
    let (first, since) =
        set_false_since(&mut status.conditions, REACHABLE, Reason::InstanceUnreachable, &msg, generation, now);
    let deadline = add(since, grace);
    if now < deadline {
        let event = first.then(|| format!("{msg}; giving up at {deadline} if it stays so"));
        return Unreachable::Waiting { deadline, event };
    }
    let message = format!("{msg} for {}s; the instance is held until the job is stopped there", grace.as_secs());
    let retried = interrupted(status, policy, Reason::InstanceUnreachable, now);
    Unreachable::GaveUp { message, retried }
}

/// The executor call that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Starting the job.
    Start,
    /// Asking how the job is doing.
    Follow,
}

impl Call {
    fn verb(self) -> &'static str {
        match self {
            Call::Start => "start",
            Call::Follow => "follow",
        }
    }
}

/// Why an executor call failed, as far as the decision goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The job cannot run there (no container runtime, an image that cannot be pulled).
    Unsupported,
    /// The instance's `Backend` is gone.
    MissingBackend,
    /// The instance does not answer.
    Unreachable,
    /// Anything else.
    Other,
}

/// A failed executor call: which, why, and the whole error chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure<'a> {
    pub call: Call,
    pub fault: Fault,
    pub detail: &'a str,
}

/// What a failed executor call makes of the run's attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecVerdict {
    /// The job cannot run: the run fails now with `Unsupported`.
    Fail { reason: Reason, message: String },
    /// Try the call again (the error goes back to the controller). `JobControl` is False
    /// with `reason`; `changed`: it changed, so it is written and the Warning is sent.
    Retry { reason: Reason, message: String, changed: bool },
    /// The failures lasted the limit: the attempt ends for `reason`
    /// ([`attempt_failed`](super::attempt_failed)); `status` carries the condition.
    EndAttempt { reason: Reason, message: String },
}

/// How long the failures of `call` may last before the attempt ends: the unreachable
/// grace; a start, no longer than the run's `maxDuration` either.
pub fn exec_limit(call: Call, policy: &EffectivePolicy, grace: Duration) -> Duration {
    match (call, policy.max_duration) {
        (Call::Start, Some(max)) => max.min(grace),
        _ => grace,
    }
}

/// The executor's call for the job on `instance` failed (`failure`). `JobControl` goes False (since the first failure) with the reason
/// the fault maps to: `MissingBackend`, `InstanceUnreachable`, else `StartFailed` for a
/// start and `ExecutorError` for the rest; once the failures have lasted `limit`
/// ([`exec_limit`]), the attempt ends. An `Unsupported` job fails the run at once.
pub fn exec_failed(
    status: &mut RunStatus,
    failure: Failure,
    instance: &str,
    limit: Duration,
    generation: Option<i64>,
    now: Timestamp,
) -> ExecVerdict {
    let Failure { call, fault, detail } = failure;
    let reason = match (fault, call) {
        (Fault::Unsupported, _) => return ExecVerdict::Fail { reason: Reason::Unsupported, message: detail.into() },
        (Fault::MissingBackend, _) => Reason::MissingBackend,
        (Fault::Unreachable, _) => Reason::InstanceUnreachable,
        (Fault::Other, Call::Start) => Reason::StartFailed,
        (Fault::Other, Call::Follow) => Reason::ExecutorError,
    };
    let message = format!("failed to {} the job on instance {instance}: {detail}", call.verb());
    let before = crate::api::conditions::find(&status.conditions, JOB_CONTROL).cloned();
    let (_, since) = set_false_since(&mut status.conditions, JOB_CONTROL, reason, &message, generation, now);
    if now >= add(since, limit) {
        return ExecVerdict::EndAttempt { reason, message: format!("{message} (for {}s)", limit.as_secs()) };
    }
    let changed = crate::api::conditions::find(&status.conditions, JOB_CONTROL) != before.as_ref();
    ExecVerdict::Retry { reason, message, changed }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::conditions::find;
    use crate::api::policy::{PolicySpec, RetryEvent, RetrySpec};
    use crate::api::run::RunPhase;
    use crate::core::policy::{effective_policy, Origin};
    use crate::core::run::assigned;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy(spec: PolicySpec) -> EffectivePolicy {
        effective_policy(&[&spec], Origin::Run).unwrap()
    }

    const GRACE: Duration = Duration::from_secs(300);

    fn running() -> RunStatus {
        let mut s = RunStatus { submitted_at: Some(Time(t("2026-01-01T00:00:00Z"))), ..Default::default() };
        assigned(&mut s, "i", t("2026-01-01T00:00:00Z"));
        s
    }

    fn retry_on(events: Vec<RetryEvent>) -> EffectivePolicy {
        policy(PolicySpec {
            retry: Some(RetrySpec { on: Some(events), duration: Some("1h".into()) }),
            ..Default::default()
        })
    }

    #[test]
    fn an_instance_that_does_not_answer_is_given_up_exactly_at_the_grace_from_the_first_failure() {
        let none = policy(PolicySpec::default());
        let mut s = running();
        let first = t("2026-01-01T00:10:00Z");
        let deadline = t("2026-01-01T00:15:00Z");
        let v = unreachable(&mut s, &none, "i", "timeout", GRACE, Some(1), first);
        let event = "instance i does not answer (timeout); giving up at 2026-01-01T00:15:00Z if it stays so";
        assert_eq!(v, Unreachable::Waiting { deadline, event: Some(event.into()) });
        let c = find(&s.conditions, REACHABLE).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InstanceUnreachable"));
        // Seen again within the grace: the deadline stays, nothing new to say or write.
        for (at, want) in [
            ("2026-01-01T00:10:01Z", Unreachable::Waiting { deadline, event: None }),
            ("2026-01-01T00:14:59Z", Unreachable::Waiting { deadline, event: None }),
        ] {
            assert_eq!(unreachable(&mut s, &none, "i", "timeout", GRACE, Some(1), t(at)), want, "{at}");
            assert_eq!(s.phase, RunPhase::Running);
        }
        // Exactly at the grace: given up, Terminated without a retry policy.
        let v = unreachable(&mut s, &none, "i", "timeout", GRACE, Some(1), deadline);
        let message =
            "instance i does not answer (timeout) for 300s; the instance is held until the job is stopped there";
        assert_eq!(v, Unreachable::GaveUp { message: message.into(), retried: false });
        assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Terminated, Some("InstanceUnreachable")));
    }

    #[test]
    fn an_unreachable_instance_retries_the_run_only_within_an_interruption_window() {
        for (p, at, retried) in [
            (retry_on(vec![RetryEvent::Interruption]), "2026-01-01T00:59:59Z", true),
            (retry_on(vec![RetryEvent::Interruption]), "2026-01-01T01:00:00Z", false),
            (retry_on(vec![RetryEvent::Error, RetryEvent::NoCapacity]), "2026-01-01T00:30:00Z", false),
        ] {
            let mut s = running();
            let v = unreachable(&mut s, &p, "i", "x", Duration::ZERO, None, t(at));
            assert!(matches!(v, Unreachable::GaveUp { retried: r, .. } if r == retried), "{at}: {v:?}");
            let phase = if retried { RunPhase::Pending } else { RunPhase::Terminated };
            assert_eq!(s.phase, phase, "{at}");
            assert_eq!(s.history.last().map(|a| a.reason.as_str()), Some("InstanceUnreachable"));
        }
    }

    /// [`exec_failed`] for the job on instance `i`.
    fn fail(s: &mut RunStatus, call: Call, fault: Fault, detail: &str, limit: Duration, at: &str) -> ExecVerdict {
        exec_failed(s, Failure { call, fault, detail }, "i", limit, Some(2), t(at))
    }

    #[test]
    fn executor_faults_map_to_reasons() {
        let now = "2026-01-01T00:10:00Z";
        for (call, fault, reason) in [
            (Call::Start, Fault::MissingBackend, Reason::MissingBackend),
            (Call::Follow, Fault::MissingBackend, Reason::MissingBackend),
            (Call::Start, Fault::Unreachable, Reason::InstanceUnreachable),
            (Call::Follow, Fault::Unreachable, Reason::InstanceUnreachable),
            (Call::Start, Fault::Other, Reason::StartFailed),
            (Call::Follow, Fault::Other, Reason::ExecutorError),
        ] {
            let mut s = running();
            let v = fail(&mut s, call, fault, "boom", GRACE, now);
            let message = format!("failed to {} the job on instance i: boom", call.verb());
            assert_eq!(v, ExecVerdict::Retry { reason, message, changed: true }, "{call:?} {fault:?}");
            let c = find(&s.conditions, JOB_CONTROL).unwrap();
            let seen = (c.status.as_str(), c.reason.as_str(), c.observed_generation);
            assert_eq!(seen, ("False", reason.as_str(), Some(2)));
        }
        for call in [Call::Start, Call::Follow] {
            let mut s = running();
            let v = fail(&mut s, call, Fault::Unsupported, "cannot run the job: no runtime", GRACE, now);
            let message = "cannot run the job: no runtime".to_string();
            assert_eq!(v, ExecVerdict::Fail { reason: Reason::Unsupported, message });
            assert_eq!(find(&s.conditions, JOB_CONTROL), None, "nothing to retry, nothing marked");
        }
    }

    #[test]
    fn failures_end_the_attempt_exactly_at_the_limit_from_the_first_and_change_nothing_in_between() {
        let mut s = running();
        let first = fail(&mut s, Call::Follow, Fault::Other, "e", GRACE, "2026-01-01T00:10:00Z");
        assert!(matches!(first, ExecVerdict::Retry { changed: true, .. }), "{first:?}");
        let same = fail(&mut s, Call::Follow, Fault::Other, "e", GRACE, "2026-01-01T00:14:59Z");
        assert!(matches!(same, ExecVerdict::Retry { changed: false, .. }), "{same:?}");
        // Another error within the grace is news: written, the grace still from the first.
        let other = fail(&mut s, Call::Follow, Fault::MissingBackend, "gone", GRACE, "2026-01-01T00:12:00Z");
        assert!(matches!(other, ExecVerdict::Retry { changed: true, reason: Reason::MissingBackend, .. }));
        let end = fail(&mut s, Call::Follow, Fault::MissingBackend, "gone", GRACE, "2026-01-01T00:15:00Z");
        let message = "failed to follow the job on instance i: gone (for 300s)".to_string();
        assert_eq!(end, ExecVerdict::EndAttempt { reason: Reason::MissingBackend, message });
    }

    #[test]
    fn a_start_fails_no_later_than_max_duration() {
        let none = policy(PolicySpec::default());
        let short = policy(PolicySpec { max_duration: Some("1m".into()), ..Default::default() });
        let long = policy(PolicySpec { max_duration: Some("1h".into()), ..Default::default() });
        assert_eq!(exec_limit(Call::Start, &none, GRACE), GRACE);
        assert_eq!(exec_limit(Call::Start, &short, GRACE), Duration::from_secs(60));
        assert_eq!(exec_limit(Call::Start, &long, GRACE), GRACE);
        assert_eq!(exec_limit(Call::Follow, &short, GRACE), GRACE, "a running job is bounded by maxDuration itself");
        // Just before and at the start's limit under a 1m maxDuration.
        let limit = exec_limit(Call::Start, &short, GRACE);
        let mut s = running();
        fail(&mut s, Call::Start, Fault::Other, "e", limit, "2026-01-01T00:10:00Z");
        let before = fail(&mut s, Call::Start, Fault::Other, "e", limit, "2026-01-01T00:10:59Z");
        assert!(matches!(before, ExecVerdict::Retry { .. }), "{before:?}");
        let at = fail(&mut s, Call::Start, Fault::Other, "e", limit, "2026-01-01T00:11:00Z");
        assert!(matches!(at, ExecVerdict::EndAttempt { reason: Reason::StartFailed, .. }), "{at:?}");
    }
}
