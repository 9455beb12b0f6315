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

use crate::api::conditions::{find, REACHABLE};
use crate::api::instance::{InstancePhase, InstanceStatus};
use crate::api::reasons::Reason;
use crate::core::add;
use crate::core::machine::{BackendError, Machine, MachineState};

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
}
