//! An idle instance, as one transition per step: the deadline of its idle spell chosen
//! (`idleDuration: auto`), waiting for it, and expiring at it.

use jiff::Timestamp;

use crate::api::instance::{AutoIdle, InstancePhase, InstanceStatus};
use crate::api::reasons::Reason;
use crate::core::idle_auto::spell;
use crate::core::transition::Transition;

/// The `Ready` message of an idle instance: its deadline (`None`: kept until removed) and,
/// under `idleDuration: auto`, why (`auto`: the spell's record).
pub fn idle_message(deadline: Option<Timestamp>, auto: Option<&AutoIdle>) -> String {
    match (deadline, auto) {
        (Some(d), Some(a)) => format!("{}; terminates at {d} unless a run takes it", a.reason),
        (Some(d), None) => format!("idle; terminates at {d} unless a run takes it"),
        (None, _) => "idle; kept until removed".to_string(),
    }
}

/// The deadline of the current idle spell is chosen (`record`, under `idleDuration:
/// auto`): recorded, and `Ready` says it and why.
pub fn spell_chosen(status: &mut InstanceStatus, record: AutoIdle) -> Transition {
    let message = idle_message(Some(record.deadline.0), Some(&record));
    status.idle_auto = Some(record);
    Transition::write().said(Reason::Idle, message)
}

/// An instance that waits for its idle `deadline` (or is busy): an idle one says when it
/// ends (and, under `idleDuration: auto` (`auto`), why), written only when that changed.
pub fn waiting(status: &InstanceStatus, deadline: Option<Timestamp>, auto: bool) -> Transition {
    if status.phase != InstancePhase::Idle {
        return Transition::none();
    }
    let message = idle_message(deadline, spell::current(status).filter(|_| auto));
    Transition::none().said(Reason::Idle, message)
}

/// The idle deadline passed: Terminating (the teardown deletes the machine), with a Normal
/// `IdleTimeout` Event. Under `idleDuration: auto` the spell's saving is settled as
/// expired and the message says why it ended then. The spell that ended, if it was one
/// of `auto`'s, for the pool's learned gaps.
pub fn expired(status: &mut InstanceStatus) -> (Transition, Option<AutoIdle>) {
    let record = spell::current(status).cloned();
    super::terminate(status);
    if let Some(record) = &record {
        spell::saving_expired(status, record);
    }
    let message = match &record {
        Some(auto) => format!("idle deadline elapsed ({}); terminating the machine", auto.reason),
        None => "idle duration elapsed; terminating the machine".to_string(),
    };
    let t = Transition::write().said(Reason::IdleTimeout, message.clone()).event(false, Reason::IdleTimeout, message);
    (t, record)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const SINCE: &str = "2026-01-01T00:00:00Z";
    const DEADLINE: &str = "2026-01-01T00:10:00Z";

    fn idle() -> InstanceStatus {
        InstanceStatus { phase: InstancePhase::Idle, idle_since: Some(Time(t(SINCE))), ..Default::default() }
    }

    fn record(since: &str) -> AutoIdle {
        AutoIdle {
            since: Time(t(since)),
            idle_seconds: 600,
            deadline: Time(t(DEADLINE)),
            shape: "aws/g5.xlarge".into(),
            boot_seconds: 60,
            risk_seconds: 0.0,
            reason: "covers 90% of past gaps".into(),
            context: None,
        }
    }

    #[test]
    fn a_chosen_spell_is_recorded_and_said_with_why() {
        let mut s = idle();
        let got = spell_chosen(&mut s, record(SINCE));
        let said = "covers 90% of past gaps; terminates at 2026-01-01T00:10:00Z unless a run takes it";
        assert_eq!(got, Transition::write().said(Reason::Idle, said));
        assert_eq!(s.idle_auto, Some(record(SINCE)));
    }

    #[test]
    fn an_idle_instance_says_its_deadline_and_why_only_under_auto_and_a_busy_one_nothing() {
        let mut s = idle();
        s.idle_auto = Some(record(SINCE));
        let deadline = Some(t(DEADLINE));
        let plain = "idle; terminates at 2026-01-01T00:10:00Z unless a run takes it";
        let auto = "covers 90% of past gaps; terminates at 2026-01-01T00:10:00Z unless a run takes it";
        assert_eq!(waiting(&s, deadline, false), Transition::none().said(Reason::Idle, plain));
        assert_eq!(waiting(&s, deadline, true), Transition::none().said(Reason::Idle, auto));
        assert_eq!(waiting(&s, None, false), Transition::none().said(Reason::Idle, "idle; kept until removed"));
        // A record of an earlier spell says nothing about this one.
        s.idle_auto = Some(record("2025-12-31T00:00:00Z"));
        assert_eq!(waiting(&s, deadline, true), Transition::none().said(Reason::Idle, plain));
        s.phase = InstancePhase::Busy;
        assert_eq!(waiting(&s, deadline, true), Transition::none());
    }

    #[test]
    fn an_expired_instance_is_terminating_and_its_auto_spell_settled() {
        let mut s = idle();
        let (got, ended) = expired(&mut s);
        let said = "idle duration elapsed; terminating the machine";
        assert_eq!(got, Transition::write().said(Reason::IdleTimeout, said).event(false, Reason::IdleTimeout, said));
        assert_eq!((s.phase, ended), (InstancePhase::Terminating, None));
        assert_eq!(s.usage, None, "no saving to settle without a spell");

        let mut s = idle();
        s.idle_auto = Some(record(SINCE));
        let (got, ended) = expired(&mut s);
        let said = "idle deadline elapsed (covers 90% of past gaps); terminating the machine";
        assert_eq!(got.said.map(|s| s.message).as_deref(), Some(said));
        assert_eq!(ended, Some(record(SINCE)));
        assert_eq!(s.usage.map(|u| u.settled_vs_5m), Some(1), "a 10-minute spell settles its saving");
    }
}
