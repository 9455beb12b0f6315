use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::api::conditions::find;
use crate::api::policy::{PolicySpec, RetryEvent, RetrySpec};
use crate::core::machine::MachineState;
use crate::core::policy::{effective_policy, Origin};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const NOW: &str = "2026-01-01T00:00:00Z";
const GEN: Option<i64> = Some(1);

fn offer(name: &str, region: &str) -> Offer {
    Offer {
        backend: "aws".into(),
        region: region.into(),
        instance_type: name.into(),
        cpu: 8,
        memory: 32.0,
        price: 1.5,
        ..Offer::default()
    }
}

fn identified() -> InstanceStatus {
    InstanceStatus { machine_name: Some("kpool-u".into()), pool: Some("p".into()), ..Default::default() }
}

/// Provisioning `g5` in `a` since `NOW`.
fn provisioning() -> InstanceStatus {
    let mut s = identified();
    start_provisioning(&mut s, offer("g5", "a"), t(NOW));
    s
}

fn machine(state: MachineState, address: Option<&str>) -> Machine {
    Machine {
        name: "kpool-u".into(),
        provider_id: "i-1".into(),
        state,
        address: address.map(Into::into),
        tags: BTreeMap::new(),
    }
}

fn policy(retry: bool) -> EffectivePolicy {
    let retry = retry.then(|| RetrySpec { on: Some(vec![RetryEvent::NoCapacity]), duration: Some("1h".into()) });
    effective_policy(&[&PolicySpec { retry, ..Default::default() }], Origin::Manual).unwrap()
}

fn condition(s: &InstanceStatus, type_: &str) -> Option<(String, String)> {
    find(&s.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

#[test]
fn identity_is_recorded_and_an_invalid_spec_fails_keeping_it() {
    let mut s = InstanceStatus::default();
    assert_eq!(
        identity(&mut s, "kpool-u".into(), "p".into()),
        Transition::write().said(Reason::Pending, "waiting for an offer")
    );
    assert_eq!((s.machine_name.as_deref(), s.pool.as_deref()), (Some("kpool-u"), Some("p")));
    // An invalid policy keeps a machine name already recorded.
    let mut s = InstanceStatus { machine_name: Some("kpool-old".into()), ..Default::default() };
    let got = invalid_policy(&mut s, "kpool-u".into(), "p".into(), "bad profile");
    let msg = "bad profile; fix the spec or the profile";
    assert_eq!(got, Transition::write().said(Reason::InvalidSpec, msg).event(true, Reason::InvalidSpec, msg));
    assert_eq!(
        (s.phase, s.machine_name.as_deref(), s.pool.as_deref()),
        (InstancePhase::Failed, Some("kpool-old"), Some("p"))
    );
    let mut s = identified();
    let got = invalid_resources(&mut s, "bad gpu");
    assert_eq!(got.said.map(|s| s.message).as_deref(), Some("bad gpu; create a new Instance with valid resources"));
    assert_eq!(s.phase, InstancePhase::Failed);
}

#[test]
fn waiting_for_room_or_budget_is_announced_when_news_and_writes_nothing_else() {
    let room = no_room("p", Some(4));
    assert_eq!(
        room,
        Transition::none()
            .said(Reason::PoolAtCapacity, "pool p has reached maxInstances (4); waiting for room")
            .announce(false)
    );
    let budget = over_budget("pool p would spend $9/h of $8/h");
    assert_eq!(
        budget,
        Transition::none().said(Reason::BudgetExceeded, "pool p would spend $9/h of $8/h; waiting").announce(true)
    );
}

#[test]
fn a_chosen_offer_is_recorded_before_the_launch_and_a_spot_fallback_said_first() {
    for fallback in [None, Some("spot refused twice".to_string())] {
        let mut s = identified();
        let got = offer_chosen(&mut s, offer("g5", "a"), fallback.clone(), t(NOW));
        let mut msg = "launching g5 in a on aws at $1.5/h".to_string();
        let mut want = Transition::write();
        if let Some(why) = &fallback {
            msg = format!("{msg} ({why})");
            want = want.event(false, Reason::SpotFallback, why.clone());
        }
        assert_eq!(got, want.said(Reason::Provisioning, msg.clone()).event(false, Reason::Provisioning, msg));
        assert_eq!((s.phase, s.offer.map(|o| o.instance_type)), (InstancePhase::Provisioning, Some("g5".into())));
    }
}

#[test]
fn no_offer_left_retries_within_the_window_from_its_first_look_or_fails() {
    let at = t("2026-01-01T00:00:30Z");
    let mut s = identified();
    let got = no_offer(&mut s, &NoOffer::RetryAt(at), "no offer fits 8 CPUs", t(NOW));
    assert_eq!(got, Transition::write().said(Reason::WaitingForCapacity, "no offer fits 8 CPUs; retrying"));
    assert_eq!((s.provisioning_started_at.clone(), s.next_attempt_at.clone()), (Some(Time(t(NOW))), Some(Time(at))));
    // The round keeps the time of its first look.
    no_offer(&mut s, &NoOffer::RetryAt(at), "again", at);
    assert_eq!(s.provisioning_started_at, Some(Time(t(NOW))));
    let mut s = identified();
    let got = no_offer(&mut s, &NoOffer::Fail(Reason::NoOffers), "none", t(NOW));
    assert_eq!(got, Transition::write().said(Reason::NoOffers, "none").event(true, Reason::NoOffers, "none"));
    assert_eq!(s.phase, InstancePhase::Failed);
    let mut s = provisioning();
    assert_eq!(no_offer_to_launch(&mut s), Transition::write());
    assert_eq!(s.phase, InstancePhase::Pending);
}

#[test]
fn a_launched_machine_is_recorded_and_idle_only_once_running() {
    for (state, reason) in [(MachineState::Pending, Reason::Provisioning), (MachineState::Running, Reason::Idle)] {
        let mut s = provisioning();
        let got = machine_launched(&mut s, &machine(state, None), t(NOW));
        let msg = "machine i-1 launched (g5)";
        assert_eq!(got, Transition::write().said(reason, msg).event(false, Reason::Launched, msg), "{state:?}");
        assert_eq!(s.provider_id.as_deref(), Some("i-1"));
    }
}

#[test]
fn an_unanswered_launch_is_resolved_before_any_other_offer() {
    let mut s = provisioning();
    let err = BackendError::Unanswered("timeout".into());
    let (got, at) = unanswered(&mut s, &err, GEN, t(NOW));
    let msg = "launch of g5 in a on aws got no answer (no answer: timeout); looking for machine kpool-u there before \
               trying any other offer";
    let want = Transition::write().said(Reason::ResolvingLaunch, msg).event(true, Reason::LaunchUnanswered, msg);
    assert_eq!(got, want);
    assert_eq!(at, crate::core::add(t(NOW), launch::LOOKUP_BACKOFF));
    assert_eq!(s.next_attempt_at, Some(Time(at)));
    assert_eq!(condition(&s, LAUNCH_RESOLVED), Some(("False".into(), "Resolving".into())));
}

#[test]
fn a_look_up_adopts_the_machine_waits_while_unsure_and_gives_up_only_once_absent() {
    let unknown = || {
        let mut s = provisioning();
        unanswered(&mut s, &BackendError::Unanswered("timeout".into()), GEN, t(NOW));
        s
    };
    // Found: adopted.
    let mut s = unknown();
    let m = machine(MachineState::Pending, None);
    let Resolved::Adopted(got) = resolved(&mut s, Ok(&m), GEN, t(NOW)) else { panic!("adopted") };
    let msg = "machine i-1 (kpool-u) found where the unanswered launch went; it is this instance's";
    assert_eq!(got, Transition::write().said(Reason::Provisioning, msg).event(false, Reason::Launched, msg));
    assert_eq!(condition(&s, LAUNCH_RESOLVED), Some(("True".into(), "MachineFound".into())));
    assert_eq!(s.provider_id.as_deref(), Some("i-1"));
    // Not there, or the look-up failed, before it can be believed absent: look again.
    let later = crate::core::add(t(NOW), Duration::from_secs(10));
    for (looked, why) in [
        (Err(BackendError::NotFound("x".into())), "not there yet"),
        (Ok(machine(MachineState::Terminated, None)), "not there yet"),
        (Err(BackendError::Other("503".into())), "the look-up failed: 503"),
    ] {
        let mut s = unknown();
        let Resolved::LookAgainAt(got, at) = resolved(&mut s, looked.as_ref(), GEN, later) else {
            panic!("{why}: looked again")
        };
        assert_eq!(got.said.as_ref().map(|s| s.reason), Some(Reason::ResolvingLaunch));
        let msg = got.said.map(|s| s.message).unwrap_or_default();
        assert!(msg.contains(&format!("machine kpool-u: {why}; looking again at {at}")), "{msg}");
        assert!(got.write && got.events.is_empty(), "{why}");
        assert_eq!(s.provider_id, None);
    }
    // Not there once the launch can be believed absent: the launch failed.
    let mut s = unknown();
    let absent_at = crate::core::add(t(NOW), launch::ABSENT_AFTER);
    let Resolved::Absent(err) = resolved(&mut s, Err(&BackendError::NotFound("x".into())), GEN, absent_at) else {
        panic!("absent")
    };
    assert!(matches!(err, BackendError::Unanswered(m) if m.contains("no machine kpool-u in a on aws")));
    assert_eq!(condition(&s, LAUNCH_RESOLVED), Some(("True".into(), "NoMachine".into())));
}

#[test]
fn a_failed_launch_tries_the_next_offer_then_retries_or_fails_saying_each_time() {
    let ranked = [offer("g5", "a"), offer("g5", "b")];
    let err = BackendError::InsufficientCapacity("none left".into());
    let said_err = "failed to launch g5 in a: insufficient capacity: none left";
    // Another offer is left: Provisioning with it.
    let mut s = provisioning();
    let (got, next) = failed_launch(&mut s, &err, &ranked, &policy(false), t(NOW));
    let want = Transition::write()
        .event(true, Reason::InsufficientCapacity, said_err)
        .said(Reason::Provisioning, "g5 in a failed (InsufficientCapacity); trying g5 in b");
    assert_eq!((got, next), (want, LaunchFailure::NextOffer));
    // None left: within the window it waits, else it fails with a second Warning.
    let mut s = provisioning();
    let (got, next) = failed_launch(&mut s, &err, &ranked[..1], &policy(true), t(NOW));
    assert!(matches!(next, LaunchFailure::RetryAt(_)));
    let said = "g5 in a failed: insufficient capacity: none left; retrying";
    assert_eq!(
        got,
        Transition::write().event(true, Reason::InsufficientCapacity, said_err).said(Reason::WaitingForCapacity, said)
    );
    let mut s = provisioning();
    let (got, next) = failed_launch(&mut s, &err, &ranked[..1], &policy(false), t(NOW));
    let last = "every offer failed, the last with: insufficient capacity: none left";
    let want = Transition::write()
        .event(true, Reason::InsufficientCapacity, said_err)
        .said(Reason::NoCapacity, last)
        .event(true, Reason::NoCapacity, last);
    assert_eq!((got, next, s.phase), (want, LaunchFailure::Fail(Reason::NoCapacity), InstancePhase::Failed));
}

#[test]
fn a_starting_machine_is_written_on_a_new_address_up_when_running_and_a_failed_offer_when_gone() {
    let mut s = provisioning();
    let got = machine_up(&mut s, &machine(MachineState::Running, Some("10.0.0.1")), t(NOW));
    let want = Transition::write().said(Reason::Idle, "machine is up; ready for runs").event(
        false,
        Reason::Ready,
        "machine i-1 is up",
    );
    assert_eq!((got, s.phase, s.address.as_deref()), (want, InstancePhase::Idle, Some("10.0.0.1")));
    let mut s = provisioning();
    assert_eq!(machine_starting(&mut s, &machine(MachineState::Pending, None), t(NOW)), Transition::none());
    let starting = machine(MachineState::Pending, Some("10.0.0.1"));
    assert_eq!(machine_starting(&mut s, &starting, t(NOW)), Transition::write());
    assert_eq!((s.phase, s.address.as_deref()), (InstancePhase::Provisioning, Some("10.0.0.1")));
    assert_eq!(machine_starting(&mut s, &starting, t(NOW)), Transition::none(), "the same address is no news");
    s.provider_id = Some("i-1".into());
    let err = machine_went_away(&mut s);
    assert!(matches!(err, BackendError::InsufficientCapacity(_)));
    assert_eq!(s.provider_id, None);
}
