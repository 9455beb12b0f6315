use super::*;
use crate::api::policy::{PolicySpec, RetrySpec, TerminationPolicy};
use crate::core::policy::{effective_policy, Origin};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn offer(name: &str, price: f64) -> Offer {
    Offer {
        backend: "b".into(),
        region: "r".into(),
        instance_type: name.into(),
        cpu: 8,
        memory: 32.0,
        price,
        ..Offer::default()
    }
}

fn identified() -> InstanceStatus {
    InstanceStatus { machine_name: Some("kpool-uid".into()), pool: Some("p".into()), ..InstanceStatus::default() }
}

fn policy(spec: PolicySpec, origin: Origin) -> EffectivePolicy {
    effective_policy(&[&spec], origin).unwrap()
}

#[test]
fn identity_is_recorded_before_anything_else() {
    let p = policy(PolicySpec::default(), Origin::Manual);
    assert_eq!(next_step(&InstanceStatus::default(), &p, t("2026-01-01T00:00:00Z")), Step::RecordIdentity);
    assert_eq!(next_step(&identified(), &p, t("2026-01-01T00:00:00Z")), Step::ChooseOffer);
}

#[test]
fn full_lifecycle_pending_to_terminated() {
    let now = t("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec::default(), Origin::Run);
    let mut s = identified();
    start_provisioning(&mut s, offer("a", 1.0), now);
    assert_eq!(s.phase, InstancePhase::Provisioning);
    assert_eq!(next_step(&s, &p, now), Step::Launch);
    let m = Machine {
        name: "kpool-uid".into(),
        provider_id: "i-1".into(),
        state: MachineState::Pending,
        address: None,
        tags: Default::default(),
    };
    launched(&mut s, &m, now);
    assert_eq!(s.phase, InstancePhase::Provisioning);
    assert_eq!(next_step(&s, &p, now), Step::Poll);
    let running = Machine { state: MachineState::Running, address: Some("10.1.1.1".into()), ..m };
    observe_machine(&mut s, &running, now);
    assert_eq!(s.phase, InstancePhase::Idle);
    assert_eq!(s.address.as_deref(), Some("10.1.1.1"));
    // Idle for 5 minutes (run-provisioned default), then expired.
    assert_eq!(next_step(&s, &p, now), Step::IdleUntil(Some(t("2026-01-01T00:05:00Z"))));
    let job = JobRef { run: "run-1".into(), run_uid: "u1".into(), attempt: 0 };
    claim(&mut s, job.clone(), t("2026-01-01T00:02:00Z"));
    let mid = accrued(&s, t("2026-01-01T00:32:00Z"));
    assert_eq!((mid.total, mid.busy, mid.idle), (1920, 1800, 120), "the busy spell under way counts");
    assert_eq!(next_step(&s, &p, t("2026-01-01T01:00:00Z")), Step::CheckRun("run-1".into()));
    // Its run let go of it while the job may still run: held, to stop that job first.
    s.run = None;
    assert_eq!(next_step(&s, &p, t("2026-01-01T01:00:00Z")), Step::Fence(job));
    release(&mut s, t("2026-01-01T01:00:00Z"));
    assert_eq!(next_step(&s, &p, t("2026-01-01T01:04:59Z")), Step::IdleUntil(Some(t("2026-01-01T01:05:00Z"))));
    assert_eq!(next_step(&s, &p, t("2026-01-01T01:05:00Z")), Step::Expire);
    terminate(&mut s);
    assert_eq!(next_step(&s, &p, now), Step::Teardown);
    gone(&mut s, t("2026-01-01T01:06:00Z"));
    assert_eq!(next_step(&s, &p, now), Step::Done);
    // Launched at 00:00, idle 2 min, busy 58 min, idle 5 min, 1 min tearing down (the
    // idle clock runs until the machine is gone): billed 66 min in all, then no more.
    let usage = s.usage.clone().unwrap();
    assert_eq!((usage.busy_seconds, usage.idle_seconds, usage.runs), (3480, 480, 1));
    let end = accrued(&s, t("2026-01-02T00:00:00Z"));
    assert_eq!((end.total, end.busy, end.idle), (3960, 3480, 480));
    gone(&mut s, t("2026-01-02T00:00:00Z"));
    assert_eq!(accrued(&s, t("2026-01-03T00:00:00Z")), end, "ended once");
}

#[test]
fn manual_instances_idle_72h_and_dont_destroy_never_expires() {
    let now = t("2026-01-01T00:00:00Z");
    let mut s = identified();
    s.phase = InstancePhase::Idle;
    s.idle_since = Some(Time(now));
    let manual = policy(PolicySpec::default(), Origin::Manual);
    assert_eq!(idle_deadline(&s, &manual), Some(t("2026-01-04T00:00:00Z")));
    let keep = policy(
        PolicySpec { termination_policy: Some(TerminationPolicy::DontDestroy), ..Default::default() },
        Origin::Run,
    );
    assert_eq!(next_step(&s, &keep, t("2030-01-01T00:00:00Z")), Step::IdleUntil(None));
}

#[test]
fn launch_failure_falls_back_to_the_next_offer_and_records_why() {
    let now = t("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec::default(), Origin::Run);
    let ranked = vec![offer("a", 1.0), offer("b", 2.0)];
    let mut s = identified();
    let chosen = choose_offer(&s, &ranked, &p, now).unwrap();
    start_provisioning(&mut s, chosen, now);
    assert_eq!(s.offer.as_ref().unwrap().instance_type, "a");
    let err = BackendError::InsufficientCapacity("none left".into());
    assert_eq!(launch_failed(&mut s, &err, &ranked, &p, now), LaunchFailure::NextOffer);
    assert_eq!(s.offer.as_ref().unwrap().instance_type, "b");
    assert_eq!(s.attempts.len(), 1);
    assert_eq!(s.attempts[0].error, "InsufficientCapacity");
    assert_eq!(s.attempts[0].offer.instance_type, "a");
    // The last offer fails too: without a retry policy, the instance fails.
    assert_eq!(launch_failed(&mut s, &err, &ranked, &p, now), LaunchFailure::Fail(Reason::NoCapacity));
    assert_eq!(s.phase, InstancePhase::Failed);
    assert_eq!(s.attempts.len(), 2);
}

#[test]
fn retry_window_sends_the_instance_back_to_pending_until_it_ends() {
    let start = t("2026-01-01T00:00:00Z");
    let p = policy(
        PolicySpec { retry: Some(RetrySpec { on: None, duration: Some("10m".into()) }), ..Default::default() },
        Origin::Run,
    );
    let ranked = vec![offer("a", 1.0)];
    let mut s = identified();
    start_provisioning(&mut s, offer("a", 1.0), start);
    let err = BackendError::InsufficientCapacity("x".into());
    let later = t("2026-01-01T00:09:50Z");
    assert_eq!(launch_failed(&mut s, &err, &ranked, &p, later), LaunchFailure::RetryAt(t("2026-01-01T00:10:00Z")));
    assert_eq!(s.phase, InstancePhase::Pending);
    assert!(s.attempts.is_empty(), "a new round starts fresh");
    // provisioning_started_at is kept, so the window does not restart.
    start_provisioning(&mut s, offer("a", 1.0), t("2026-01-01T00:10:00Z"));
    assert_eq!(s.provisioning_started_at.as_ref().unwrap().0, start);
    assert_eq!(
        launch_failed(&mut s, &err, &ranked, &p, t("2026-01-01T00:10:00Z")),
        LaunchFailure::Fail(Reason::NoCapacity)
    );
}

#[test]
fn no_offers_at_all_fails_with_no_offers() {
    let p = policy(PolicySpec::default(), Origin::Run);
    let s = identified();
    assert_eq!(choose_offer(&s, &[], &p, t("2026-01-01T00:00:00Z")), Err(NoOffer::Fail(Reason::NoOffers)));
}

#[test]
fn rate_limits_retry_later_without_burning_the_offer() {
    let now = t("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec::default(), Origin::Run);
    let mut s = identified();
    start_provisioning(&mut s, offer("a", 1.0), now);
    let err = BackendError::RateLimited { message: "slow down".into(), retry_after: Some(Duration::from_secs(7)) };
    assert_eq!(
        launch_failed(&mut s, &err, &[offer("a", 1.0)], &p, now),
        LaunchFailure::RetryAt(t("2026-01-01T00:00:07Z"))
    );
    assert!(s.attempts.is_empty());
    assert_eq!(s.phase, InstancePhase::Provisioning);
}

#[test]
fn attempts_are_bounded() {
    let now = t("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec::default(), Origin::Run);
    let ranked: Vec<Offer> = (0..50).map(|i| offer(&format!("t{i:02}"), 1.0 + i as f64)).collect();
    let mut s = identified();
    start_provisioning(&mut s, ranked[0].clone(), now);
    let err = BackendError::Other("boom".into());
    for _ in 0..30 {
        launch_failed(&mut s, &err, &ranked, &p, now);
    }
    assert_eq!(s.attempts.len(), MAX_ATTEMPTS_KEPT);
}

#[test]
fn throttling_backs_off_without_blaming_the_offer() {
    let now = t("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec::default(), Origin::Run);
    let mut s = identified();
    start_provisioning(&mut s, offer("a", 1.0), now);
    let err = BackendError::RateLimited { message: "slow down".into(), retry_after: Some(Duration::from_secs(7)) };
    let out = launch_failed(&mut s, &err, &[offer("a", 1.0)], &p, now);
    assert_eq!(out, LaunchFailure::RetryAt(t("2026-01-01T00:00:07Z")));
    assert!(s.attempts.is_empty());
    assert_eq!(next_step(&s, &p, t("2026-01-01T00:00:06Z")), Step::WaitUntil(t("2026-01-01T00:00:07Z")));
    assert_eq!(next_step(&s, &p, t("2026-01-01T00:00:07Z")), Step::Launch);
}

#[test]
fn an_instance_its_run_waits_for_outlives_a_zero_idle_duration_for_the_claim_window() {
    let now = t("2026-01-01T00:00:00Z");
    let zero = policy(PolicySpec { idle_duration: Some("0s".into()), ..Default::default() }, Origin::Run);
    let mut s = identified();
    s.phase = InstancePhase::Idle;
    s.idle_since = Some(Time(now));
    // Nobody waits for it: gone at once.
    assert_eq!(next_step(&s, &zero, now), Step::Expire);
    // Its run has not claimed it yet: kept for the claim window, then expired.
    assert_eq!(next_step_awaited(&s, &zero, now), Step::IdleUntil(Some(t("2026-01-01T00:02:00Z"))));
    assert_eq!(
        next_step_awaited(&s, &zero, t("2026-01-01T00:01:59Z")),
        Step::IdleUntil(Some(t("2026-01-01T00:02:00Z")))
    );
    assert_eq!(next_step_awaited(&s, &zero, t("2026-01-01T00:02:00Z")), Step::Expire);
    // A longer idle duration is not shortened.
    let p = policy(PolicySpec::default(), Origin::Run);
    assert_eq!(next_step_awaited(&s, &p, t("2026-01-01T00:04:00Z")), Step::IdleUntil(Some(t("2026-01-01T00:05:00Z"))));
    assert_eq!(next_step_awaited(&s, &p, t("2026-01-01T00:05:00Z")), Step::Expire);
}

#[test]
fn a_busy_instance_its_run_let_go_of_is_held_while_it_records_the_job_else_released() {
    use crate::core::transition::Transition;
    let now = t("2026-01-01T00:10:00Z");
    let job = JobRef { run: "r".into(), run_uid: "u".into(), attempt: 0 };
    let busy =
        |job: Option<JobRef>| InstanceStatus { phase: InstancePhase::Busy, run: Some("r".into()), job, ..identified() };
    let mut s = busy(Some(job.clone()));
    let held = Transition::write().said(Reason::Fencing, "run r no longer holds the instance; stopping its job");
    assert_eq!(run_let_go(&mut s, "r", now), held);
    assert_eq!((s.phase, s.run.as_deref(), s.job.as_ref()), (InstancePhase::Busy, None, Some(&job)));
    let mut s = busy(None);
    let released = Transition::write().said(Reason::Idle, "run r no longer holds the instance").event(
        false,
        Reason::Released,
        "run r is gone or finished",
    );
    assert_eq!(run_let_go(&mut s, "r", now), released);
    assert_eq!((s.phase, s.run.as_deref(), s.idle_since.map(|t| t.0)), (InstancePhase::Idle, None, Some(now)));
}

#[test]
fn a_given_up_instance_is_terminating_said_and_counted() {
    use crate::core::transition::{Effect, Transition};
    let mut s = InstanceStatus { phase: InstancePhase::Idle, ..identified() };
    let want = Transition::write()
        .said(Reason::Reclaimed, "taken back")
        .event(true, Reason::Reclaimed, "taken back")
        .effect(Effect::Teardown { reason: Reason::Reclaimed });
    assert_eq!(give_up(&mut s, Reason::Reclaimed, "taken back"), want);
    assert_eq!(s.phase, InstancePhase::Terminating);
}

#[test]
fn a_retired_instance_is_terminating_and_warns_only_when_over_its_budget() {
    use crate::core::transition::Transition;
    for (reason, warning) in [(Reason::BudgetExceeded, true), (Reason::WarmSurplus, false)] {
        let mut s = InstanceStatus { phase: InstancePhase::Idle, ..identified() };
        let want = Transition::write().said(reason, "why").event(warning, reason, "why");
        assert_eq!(retire(&mut s, reason, "why"), want, "{reason}");
        assert_eq!(s.phase, InstancePhase::Terminating, "{reason}");
    }
}

#[test]
fn an_instance_no_run_needs_is_ended_only_while_it_holds_no_machine() {
    use crate::api::instance::{LaunchAttempt, LaunchOutcome};
    use crate::core::transition::Transition;
    let attempt = |outcome| LaunchAttempt {
        backend: "b".into(),
        region: "r".into(),
        instance_type: "t".into(),
        outcome,
        at: Time(t("2026-01-01T00:00:00Z")),
        lookups: 0,
    };
    let at = |phase, outcomes: &[LaunchOutcome], provider: Option<&str>| InstanceStatus {
        phase,
        launch_attempts: outcomes.iter().map(|o| attempt(*o)).collect(),
        provider_id: provider.map(str::to_string),
        ..identified()
    };
    use InstancePhase::*;
    use LaunchOutcome::*;
    let ended = Unneeded::Delete(Transition::write().said(Reason::NotNeeded, "run r found i"));
    let gone = Unneeded::Delete(Transition::none());
    // (status, decision, phase after)
    for (mut s, want, phase) in [
        (at(Pending, &[], None), ended.clone(), Terminated),
        (at(Pending, &[Refused, Absent], None), ended.clone(), Terminated),
        (at(Pending, &[Refused, Unknown], None), Unneeded::Kept, Pending),
        (at(Pending, &[Launched], None), Unneeded::Kept, Pending),
        (at(Provisioning, &[Sent], None), Unneeded::Kept, Provisioning),
        (at(Idle, &[Launched], Some("i-1")), Unneeded::Kept, Idle),
        (at(Terminated, &[], None), gone.clone(), Terminated),
        (at(Failed, &[Refused], None), gone.clone(), Failed),
        (at(Failed, &[Launched], Some("i-1")), Unneeded::Kept, Failed),
    ] {
        let before = (s.phase, s.launch_attempts.len(), s.provider_id.clone());
        assert_eq!(not_needed(&mut s, "run r found i"), want, "{before:?}");
        assert_eq!(s.phase, phase, "{before:?}");
    }
}
