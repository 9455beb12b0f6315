//! The health verdict of a live (Idle or Busy) instance: what the provider's answer about
//! its machine, with what the instance's status already says, makes of it.
//!
//! `Running` -> reachable; `Pending` -> up at the provider but not answering: the
//! `Reachable` condition goes False at once and, after the unreachable grace (counted
//! from when it went False), the instance is given up with reason `Unreachable`;
//! `Stopping`, `Terminated` or `NotFound` -> the provider took the machine back (a spot
//! reclaim, a termination outside kpool): given up at once with reason `Reclaimed`
//! (spot) or `MachineGone`. A failing provider call says nothing about the machine.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::conditions::{clear_false, find, set_false_since, REACHABLE};
use crate::api::instance::{InstancePhase, InstanceStatus};
use crate::api::reasons::Reason;
use crate::core::add;
use crate::core::machine::{BackendError, Machine, MachineState};
use crate::core::transition::Transition;

/// The message of the `Reachable` condition while the machine does not answer.
pub const NOT_ANSWERING: &str = "the machine does not answer";

/// What the health check makes of the provider's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The provider did not answer: nothing is known and nothing changes.
    Unknown,
    /// The machine is up: `Reachable` goes back to True if it was False.
    Reachable,
    /// Up at the provider but not answering, and the instance went idle less than a check
    /// interval ago (its machine may still be coming back, e.g. a kubernetes slot Pod
    /// created again when a job ends): not counted yet.
    Settling,
    /// Not answering ([`NOT_ANSWERING`]); the instance is given up at `deadline` if it
    /// stays so.
    Unreachable { deadline: Timestamp },
    /// Given up: the instance is terminated with `reason`; `message` says why.
    Lost { reason: Reason, message: String },
}

/// The verdict on a live instance whose machine the provider described as `answer`.
/// `spot`: the instance's offer is spot; `grace`: how long a machine may not answer;
/// `interval`: the time between two health checks.
pub fn verdict(
    answer: Result<&Machine, &BackendError>,
    status: &InstanceStatus,
    spot: bool,
    grace: Duration,
    interval: Duration,
    now: Timestamp,
) -> Verdict {
    let gone = |what: String| {
        let reason = if spot { Reason::Reclaimed } else { Reason::MachineGone };
        let message = match &status.run {
            Some(run) => format!("{what}; run {run} is interrupted"),
            None => what,
        };
        Verdict::Lost { reason, message }
    };
    match answer {
        Ok(m) if m.state == MachineState::Running => Verdict::Reachable,
        Ok(m) if m.state == MachineState::Pending => {
            let recently_idle = status.phase == InstancePhase::Idle
                && status.idle_since.as_ref().is_some_and(|t| now < add(t.0, interval));
            if recently_idle {
                return Verdict::Settling;
            }
            let since = find(&status.conditions, REACHABLE)
                .filter(|c| c.status == "False")
                .map_or(now, |c| c.last_transition_time.0);
            let deadline = add(since, grace);
            if now < deadline {
                return Verdict::Unreachable { deadline };
            }
            let message = format!("{NOT_ANSWERING} for {}s; terminating the instance", grace.as_secs());
            Verdict::Lost { reason: Reason::Unreachable, message }
        }
        Ok(m) => gone(format!("the provider reports machine {} {:?}", m.provider_id, m.state)),
        Err(BackendError::NotFound(_)) => gone("the provider no longer has the machine".to_string()),
        Err(_) => Verdict::Unknown,
    }
}

/// The message of the `Reachable` condition (and its Event) when the machine answers again.
pub const ANSWERS_AGAIN: &str = "the machine answers again";

/// What the verdict makes of the instance: `status` carries the change, the transition
/// says what to write and say. Reachable again -> `Reachable` True, written with a Normal
/// Event (nothing when it was not False); not answering -> `Reachable` False since the
/// first time, written with a Warning saying when the instance is given up (the first time
/// only); lost -> [`give_up`](super::give_up) with the verdict's reason (`Reachable` False
/// too when it is `Unreachable`); unknown or settling -> nothing.
pub fn transition(
    verdict: Verdict,
    status: &mut InstanceStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Transition {
    let conditions = &mut status.conditions;
    match verdict {
        Verdict::Unknown | Verdict::Settling => Transition::none(),
        Verdict::Reachable => {
            match clear_false(conditions, REACHABLE, Reason::Reachable, ANSWERS_AGAIN, generation, now) {
                true => Transition::write().event(false, Reason::Reachable, ANSWERS_AGAIN),
                false => Transition::none(),
            }
        }
        Verdict::Unreachable { deadline } => {
            let (first, _) =
                set_false_since(conditions, REACHABLE, Reason::Unreachable, NOT_ANSWERING, generation, now);
            if !first {
                return Transition::none();
            }
            let note = format!("{NOT_ANSWERING}; the instance is terminated at {deadline} if it stays so");
            Transition::write().event(true, Reason::Unreachable, note)
        }
        Verdict::Lost { reason, message } => {
            if reason == Reason::Unreachable {
                set_false_since(conditions, REACHABLE, Reason::Unreachable, NOT_ANSWERING, generation, now);
            }
            super::give_up(status, reason, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::conditions::condition;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn machine(state: MachineState) -> Machine {
        Machine { name: "kpool-u".into(), provider_id: "i-1".into(), state, address: None, tags: Default::default() }
    }

    const GRACE: Duration = Duration::from_secs(300);
    const INTERVAL: Duration = Duration::from_secs(30);

    fn busy(run: Option<&str>) -> InstanceStatus {
        InstanceStatus { phase: InstancePhase::Busy, run: run.map(String::from), ..Default::default() }
    }

    #[test]
    fn a_running_machine_is_reachable_and_a_provider_error_tells_nothing() {
        let now = t("2026-01-01T00:00:00Z");
        let m = machine(MachineState::Running);
        assert_eq!(verdict(Ok(&m), &busy(None), false, GRACE, INTERVAL, now), Verdict::Reachable);
        for e in [
            BackendError::Unanswered("timeout".into()),
            BackendError::RateLimited { message: "x".into(), retry_after: None },
        ] {
            assert_eq!(verdict(Err(&e), &busy(None), false, GRACE, INTERVAL, now), Verdict::Unknown, "{e:?}");
        }
    }

    #[test]
    fn a_machine_the_provider_took_back_is_lost_reclaimed_when_spot_else_gone() {
        let now = t("2026-01-01T00:00:00Z");
        let notfound = BackendError::NotFound("kpool-u".into());
        for (answer, spot, run, reason, message) in [
            (Err(&notfound), true, None, Reason::Reclaimed, "the provider no longer has the machine"),
            (Err(&notfound), false, None, Reason::MachineGone, "the provider no longer has the machine"),
            (
                Err(&notfound),
                false,
                Some("r"),
                Reason::MachineGone,
                "the provider no longer has the machine; run r is interrupted",
            ),
        ] {
            let v = verdict(answer, &busy(run), spot, GRACE, INTERVAL, now);
            assert_eq!(v, Verdict::Lost { reason, message: message.into() });
        }
        for state in [MachineState::Stopping, MachineState::Terminated] {
            let m = machine(state);
            let v = verdict(Ok(&m), &busy(None), true, GRACE, INTERVAL, now);
            let message = format!("the provider reports machine i-1 {state:?}");
            assert_eq!(v, Verdict::Lost { reason: Reason::Reclaimed, message });
        }
    }

    #[test]
    fn a_machine_that_does_not_answer_is_given_up_after_the_grace_counted_from_the_condition() {
        let m = machine(MachineState::Pending);
        let first = t("2026-01-01T00:00:00Z");
        // First seen: the grace starts now.
        assert_eq!(
            verdict(Ok(&m), &busy(None), false, GRACE, INTERVAL, first),
            Verdict::Unreachable { deadline: t("2026-01-01T00:05:00Z") }
        );
        // Reachable False since `first`: the deadline stays, then it is given up.
        let mut st = busy(None);
        st.conditions = vec![condition(&[], REACHABLE, false, Reason::Unreachable, NOT_ANSWERING, None, first)];
        let later = t("2026-01-01T00:04:59Z");
        assert_eq!(
            verdict(Ok(&m), &st, false, GRACE, INTERVAL, later),
            Verdict::Unreachable { deadline: t("2026-01-01T00:05:00Z") }
        );
        let message = "the machine does not answer for 300s; terminating the instance".to_string();
        assert_eq!(
            verdict(Ok(&m), &st, true, GRACE, INTERVAL, t("2026-01-01T00:05:00Z")),
            Verdict::Lost { reason: Reason::Unreachable, message }
        );
        // A True condition is no start of the grace.
        st.conditions = vec![condition(&[], REACHABLE, true, Reason::Reachable, "ok", None, first)];
        assert_eq!(
            verdict(Ok(&m), &st, false, GRACE, INTERVAL, later),
            Verdict::Unreachable { deadline: t("2026-01-01T00:09:59Z") }
        );
    }

    #[test]
    fn a_just_released_instance_gets_one_interval_before_not_answering_counts() {
        let m = machine(MachineState::Pending);
        let st = InstanceStatus {
            phase: InstancePhase::Idle,
            idle_since: Some(Time(t("2026-01-01T00:00:00Z"))),
            ..Default::default()
        };
        assert_eq!(verdict(Ok(&m), &st, false, GRACE, INTERVAL, t("2026-01-01T00:00:29Z")), Verdict::Settling);
        assert!(matches!(
            verdict(Ok(&m), &st, false, GRACE, INTERVAL, t("2026-01-01T00:00:30Z")),
            Verdict::Unreachable { .. }
        ));
    }

    #[test]
    fn the_verdict_is_written_and_said_only_when_it_is_news() {
        use crate::core::transition::{Effect, Event};
        let first = t("2026-01-01T00:00:00Z");
        let later = t("2026-01-01T00:01:00Z");
        let deadline = t("2026-01-01T00:05:00Z");
        let down = || {
            let mut st = busy(Some("r"));
            st.conditions = vec![condition(&[], REACHABLE, false, Reason::Unreachable, NOT_ANSWERING, None, first)];
            st
        };
        let state = |st: &InstanceStatus| find(&st.conditions, REACHABLE).map(|c| (c.status.clone(), c.reason.clone()));
        // Nothing known or settling: nothing, whatever the status says.
        for v in [Verdict::Unknown, Verdict::Settling] {
            let mut st = down();
            assert_eq!(transition(v.clone(), &mut st, Some(1), later), Transition::none(), "{v:?}");
            assert_eq!(st, down());
        }
        // Answering again: news only when it was not answering.
        let mut st = down();
        let want = Transition::write().event(false, Reason::Reachable, ANSWERS_AGAIN);
        assert_eq!(transition(Verdict::Reachable, &mut st, Some(1), later), want);
        assert_eq!(state(&st), Some(("True".into(), "Reachable".into())));
        assert_eq!(transition(Verdict::Reachable, &mut st, Some(1), later), Transition::none());
        let mut fresh = busy(None);
        assert_eq!(transition(Verdict::Reachable, &mut fresh, Some(1), later), Transition::none());
        // Not answering: said the first time only, with the deadline.
        let mut st = busy(None);
        let note = "the machine does not answer; the instance is terminated at 2026-01-01T00:05:00Z if it stays so";
        let want = Transition::write().event(true, Reason::Unreachable, note);
        assert_eq!(transition(Verdict::Unreachable { deadline }, &mut st, Some(1), first), want);
        assert_eq!(state(&st), Some(("False".into(), "Unreachable".into())));
        assert_eq!(transition(Verdict::Unreachable { deadline }, &mut st, Some(1), later), Transition::none());
        // Lost: given up (Terminating) with the reason, counted; `Reachable` False only
        // when it is for not answering.
        for (reason, reachable) in [
            (Reason::Unreachable, Some(("False".to_string(), "Unreachable".to_string()))),
            (Reason::Reclaimed, None),
            (Reason::MachineGone, None),
        ] {
            let mut st = busy(Some("r"));
            let lost = Verdict::Lost { reason, message: "gone".into() };
            let tr = transition(lost, &mut st, Some(1), later);
            assert_eq!(st.phase, InstancePhase::Terminating, "{reason:?}");
            assert!(tr.write);
            assert_eq!(tr.said.map(|s| (s.reason, s.message)), Some((reason, "gone".to_string())));
            assert_eq!(tr.events, vec![Event { warning: true, reason, message: "gone".into() }]);
            assert_eq!(tr.effect, Effect::Teardown { reason });
            assert_eq!(state(&st), reachable, "{reason:?}");
        }
    }
}
