//! A run following the instance provisioned for it (`status.provisioningInstance`) while
//! no idle instance fits: what the instance's state makes of the run.

use jiff::Timestamp;

use super::{ended, provisioning_failed, retry_deadline, EffectivePolicy};
use crate::api::instance::InstancePhase;
use crate::api::policy::RetryEvent;
use crate::api::reasons::Reason;
use crate::api::run::{RunPhase, RunStatus};
use crate::core::transition::{Effect, Transition};

/// The instance provisioned for the run, as observed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seen<'a> {
    /// Its phase (`None` before its controller wrote a status).
    pub phase: Option<InstancePhase>,
    /// Its `Ready` condition (reason, message), if any.
    pub ready: Option<(&'a str, &'a str)>,
}

/// The run `run` waits for instance `instance`, provisioned for it; `seen` is that
/// instance (`None`: not there), `moved`: the run's queue position changed. Whatever
/// status change there is, `status` carries it.
/// - not there: its create failed after the run's status write (or its answer was lost):
///   it is created now ([`Effect::CreateInstance`]); nothing is written.
/// - Failed, Terminating or Terminated: provisioning failed. Within the run's
///   no-capacity retry window the run goes back to Pending for another attempt
///   ([`provisioning_failed`], `Retrying`); otherwise (or without one) it fails with
///   `NoCapacity`, saying why the instance went.
/// - not launched yet (Pending, or no status) when the retry window has ended: the run
///   fails with `NoCapacity` as it would waiting in Pending, once the instance is deleted
///   ([`Effect::DeleteUnlaunched`]; if it started launching meanwhile the run waits).
/// - otherwise: the run waits, its `Scheduled` condition saying what the instance says;
///   written when that changed or the queue position moved.
pub fn follow(
    status: &mut RunStatus,
    policy: &EffectivePolicy,
    run: &str,
    instance: &str,
    seen: Option<Seen>,
    moved: bool,
    now: Timestamp,
) -> Transition {
    let Some(Seen { phase, ready }) = seen else {
        return Transition::none().effect(Effect::CreateInstance { name: instance.to_string() });
    };
    let deadline = retry_deadline(status, policy, RetryEvent::NoCapacity);
    match phase {
        Some(InstancePhase::Failed | InstancePhase::Terminated | InstancePhase::Terminating) => {
            let why = ready.map_or_else(|| format!("instance {instance} is gone"), |(_, m)| m.to_string());
            if deadline.is_none_or(|d| now >= d) {
                let message = format!("could not provision: {why}");
                return ended(status, RunPhase::Failed, Reason::NoCapacity, None, &message, now);
            }
            provisioning_failed(status, now);
            Transition::write().said(Reason::Retrying, format!("provisioning failed ({why}); retrying"))
        }
        Some(InstancePhase::Pending) | None if deadline.is_some_and(|d| now >= d) => {
            let why = ready.map_or_else(|| format!("instance {instance} did not start"), |(_, m)| m.to_string());
            let message = format!("retry window ended: instance {instance} was never launched: {why}");
            let why = format!("run {run}'s retry window ended before a launch");
            ended(status, RunPhase::Failed, Reason::NoCapacity, None, &message, now)
                .effect(Effect::DeleteUnlaunched { name: instance.to_string(), why })
        }
        _ => {
            let why =
                ready.map_or_else(|| "waiting for the instance to start".to_string(), |(r, m)| format!("{r}: {m}"));
            Transition { write: moved, ..Transition::none() }
                .said(Reason::Provisioning, format!("instance {instance}: {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::policy::{PolicySpec, RetrySpec};
    use crate::core::policy::{effective_policy, Origin};
    use crate::core::transition::Event;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// Provisioning `r-0` since midnight, with a no-capacity retry window of an hour
    /// (`window`) or none.
    fn case(window: bool) -> (RunStatus, EffectivePolicy) {
        let mut s = RunStatus { submitted_at: Some(Time(t("2026-01-01T00:00:00Z"))), ..Default::default() };
        super::super::provisioning(&mut s, "r-0");
        let retry = window.then(|| RetrySpec { on: Some(vec![RetryEvent::NoCapacity]), duration: Some("1h".into()) });
        (s, effective_policy(&[&PolicySpec { retry, ..Default::default() }], Origin::Run).unwrap())
    }

    const BEFORE: &str = "2026-01-01T00:59:59Z";
    const AT: &str = "2026-01-01T01:00:00Z";

    fn seen(phase: Option<InstancePhase>, ready: Option<(&'static str, &'static str)>) -> Option<Seen<'static>> {
        Some(Seen { phase, ready })
    }

    #[test]
    fn an_instance_that_is_not_there_is_created_and_nothing_is_written() {
        let (mut s, p) = case(true);
        let before = s.clone();
        let tr = follow(&mut s, &p, "r", "r-0", None, true, t(AT));
        assert_eq!(tr, Transition::none().effect(Effect::CreateInstance { name: "r-0".into() }));
        assert_eq!(s, before);
    }

    #[test]
    fn a_failed_instance_is_retried_only_before_the_window_ends() {
        for phase in [InstancePhase::Failed, InstancePhase::Terminating, InstancePhase::Terminated] {
            let ready = Some(("NoCapacity", "every offer failed"));
            // Within the window: back to Pending for another attempt, the history says why.
            let (mut s, p) = case(true);
            let tr = follow(&mut s, &p, "r", "r-0", seen(Some(phase), ready), false, t(BEFORE));
            let said = "provisioning failed (every offer failed); retrying";
            assert_eq!(tr, Transition::write().said(Reason::Retrying, said), "{phase:?}");
            assert_eq!((s.phase, s.attempts, s.provisioning_instance.as_deref()), (RunPhase::Pending, 1, None));
            assert_eq!(
                s.history.last().map(|a| (a.reason.as_str(), a.instance.as_deref())),
                Some(("NoCapacity", Some("r-0")))
            );
            // At the window's end, and without a window at all: Failed, saying why.
            for (window, at) in [(true, AT), (false, BEFORE)] {
                let (mut s, p) = case(window);
                let tr = follow(&mut s, &p, "r", "r-0", seen(Some(phase), ready), false, t(at));
                let message = "could not provision: every offer failed";
                let want =
                    Transition::write().said(Reason::NoCapacity, message).event(true, Reason::NoCapacity, message);
                assert_eq!(tr, want, "{phase:?} {window} {at}");
                assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Failed, Some("NoCapacity")));
            }
        }
        // No Ready condition: the message names the instance.
        let (mut s, p) = case(false);
        let tr = follow(&mut s, &p, "r", "r-0", seen(Some(InstancePhase::Failed), None), false, t(BEFORE));
        assert_eq!(tr.said.map(|s| s.message).as_deref(), Some("could not provision: instance r-0 is gone"));
    }

    #[test]
    fn an_unlaunched_instance_ends_the_run_at_the_window_end_once_deleted() {
        for (phase, ready, why) in [
            (Some(InstancePhase::Pending), Some(("PoolAtCapacity", "pool p is full")), "pool p is full"),
            (None, None, "instance r-0 did not start"),
        ] {
            let (mut s, p) = case(true);
            let tr = follow(&mut s, &p, "r", "r-0", seen(phase, ready), false, t(AT));
            let message = format!("retry window ended: instance r-0 was never launched: {why}");
            let effect = Effect::DeleteUnlaunched {
                name: "r-0".into(),
                why: "run r's retry window ended before a launch".into(),
            };
            assert_eq!(tr.effect, effect, "{phase:?}");
            assert_eq!(tr.events, vec![Event { warning: true, reason: Reason::NoCapacity, message: message.clone() }]);
            assert!(tr.write);
            assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Failed, Some("NoCapacity")));
            // Before the end, or without a window: it waits for the instance.
            for (window, at) in [(true, BEFORE), (false, AT)] {
                let (mut s, p) = case(window);
                let tr = follow(&mut s, &p, "r", "r-0", seen(phase, ready), false, t(at));
                assert_eq!(tr.effect, Effect::None, "{phase:?} {window} {at}");
                assert_eq!(s.phase, RunPhase::Provisioning);
            }
        }
    }

    #[test]
    fn a_launching_instance_is_waited_for_past_the_window_and_written_only_on_news() {
        for phase in [Some(InstancePhase::Provisioning), Some(InstancePhase::Idle), Some(InstancePhase::Busy)] {
            for moved in [false, true] {
                let (mut s, p) = case(true);
                let tr = follow(&mut s, &p, "r", "r-0", seen(phase, Some(("Provisioning", "launching"))), moved, t(AT));
                let said = "instance r-0: Provisioning: launching";
                assert_eq!(tr, Transition { write: moved, ..Transition::none() }.said(Reason::Provisioning, said));
                assert_eq!(s.phase, RunPhase::Provisioning);
            }
        }
        let (mut s, p) = case(true);
        let tr = follow(&mut s, &p, "r", "r-0", seen(Some(InstancePhase::Provisioning), None), false, t(BEFORE));
        let said = tr.said.map(|s| s.message);
        assert_eq!(said.as_deref(), Some("instance r-0: waiting for the instance to start"));
    }
}
