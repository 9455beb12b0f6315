use super::*;
use crate::api::policy::{PolicySpec, RetrySpec};
use crate::core::policy::{effective_policy, Origin};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn policy(spec: PolicySpec) -> EffectivePolicy {
    effective_policy(&[&spec], Origin::Run).unwrap()
}

fn submitted(at: &str) -> RunStatus {
    RunStatus { submitted_at: Some(Time(t(at))), ..RunStatus::default() }
}

#[test]
fn reuse_or_create_provisions_when_the_pool_has_room() {
    let s = submitted("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec::default());
    assert_eq!(no_fit(&s, &p, "gpu", true, None, t("2026-01-01T00:00:00Z")), NoFit::Provision);
    match no_fit(&s, &p, "gpu", false, None, t("2026-01-01T00:00:00Z")) {
        NoFit::Wait { reason, message, .. } => {
            assert_eq!(reason, "PoolAtCapacity");
            assert!(message.contains("pool gpu"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reuse_never_provisions_and_says_why() {
    let s = submitted("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec { creation_policy: Some(CreationPolicy::Reuse), ..Default::default() });
    match no_fit(&s, &p, "default-pool", true, None, t("2026-01-01T00:00:00Z")) {
        NoFit::Wait { reason, message, retry_at } => {
            assert_eq!(reason, "NoIdleInstance");
            assert!(message.contains("Reuse never provisions"));
            assert_eq!(retry_at, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn waiting_fails_when_the_retry_window_ends() {
    let s = submitted("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec {
        creation_policy: Some(CreationPolicy::Reuse),
        retry: Some(RetrySpec { on: Some(vec![RetryEvent::NoCapacity]), duration: Some("1h".into()) }),
        ..Default::default()
    });
    match no_fit(&s, &p, "p", true, None, t("2026-01-01T00:30:00Z")) {
        NoFit::Wait { retry_at, .. } => assert_eq!(retry_at, Some(t("2026-01-01T01:00:00Z"))),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        no_fit(&s, &p, "p", true, None, t("2026-01-01T01:00:00Z")),
        NoFit::Fail { reason: Reason::NoCapacity, .. }
    ));
}

#[test]
fn pinned_instance_waits_for_that_instance() {
    let s = submitted("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec::default());
    match no_fit(&s, &p, "p", true, Some("a100-1"), t("2026-01-01T00:00:00Z")) {
        NoFit::Wait { reason, message, .. } => {
            assert_eq!(reason, "InstanceNotAvailable");
            assert!(message.contains("a100-1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn lifecycle_and_max_duration() {
    let now = t("2026-01-01T00:00:00Z");
    let p = policy(PolicySpec { max_duration: Some("2h".into()), ..Default::default() });
    let mut s = submitted("2026-01-01T00:00:00Z");
    provisioning(&mut s, "run-1-r0");
    assert_eq!(s.phase, RunPhase::Provisioning);
    assigned(&mut s, "run-1-r0", now);
    assert_eq!(
        (s.phase, s.instance.as_deref(), s.provisioning_instance.as_deref()),
        (RunPhase::Running, Some("run-1-r0"), None)
    );
    assert_eq!(max_duration_deadline(&s, &p), Some(t("2026-01-01T02:00:00Z")));
    assert!(!job_exited(&mut s, &p, 0, t("2026-01-01T01:00:00Z")));
    assert_eq!(
        (s.phase, s.exit_code, s.termination_reason.as_deref()),
        (RunPhase::Succeeded, Some(0), Some("Completed"))
    );
    assert!(s.finished_at.is_some());
}

#[test]
fn errors_and_interruptions_retry_only_when_the_policy_says() {
    let now = t("2026-01-01T00:10:00Z");
    let none = policy(PolicySpec::default());
    let mut s = submitted("2026-01-01T00:00:00Z");
    assigned(&mut s, "i", now);
    assert!(!job_exited(&mut s, &none, 3, now));
    assert_eq!(
        (s.phase, s.exit_code, s.termination_reason.as_deref()),
        (RunPhase::Failed, Some(3), Some("ContainerExitedWithError"))
    );

    let retry = policy(PolicySpec { retry: Some(RetrySpec::default()), ..Default::default() });
    let mut s = submitted("2026-01-01T00:00:00Z");
    assigned(&mut s, "i", now);
    assert!(job_exited(&mut s, &retry, 3, now));
    assert_eq!((s.phase, s.attempts, s.instance.as_deref()), (RunPhase::Pending, 1, None));
    assigned(&mut s, "j", now);
    assert!(interrupted(&mut s, &retry, Reason::Interrupted, now));
    assert_eq!(s.attempts, 2);
    // After the window: terminated with the reason given.
    assigned(&mut s, "k", now);
    assert!(!interrupted(&mut s, &retry, Reason::InstanceUnreachable, t("2026-01-01T01:00:00Z")));
    assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Terminated, Some("InstanceUnreachable")));
}

#[test]
fn every_ended_attempt_is_recorded_with_where_it_ran_and_why_it_ended() {
    let retry = PolicySpec { retry: Some(RetrySpec { on: None, duration: Some("1h".into()) }), ..Default::default() };
    let p = policy(retry);
    let mut s = submitted("2026-01-01T00:00:00Z");
    provisioning(&mut s, "r-0");
    provisioning_failed(&mut s, t("2026-01-01T00:01:00Z"));
    assigned(&mut s, "a", t("2026-01-01T00:02:00Z"));
    assert!(job_exited(&mut s, &p, 2, t("2026-01-01T00:03:00Z")), "retried on error");
    assigned(&mut s, "b", t("2026-01-01T00:04:00Z"));
    assert!(interrupted(&mut s, &p, Reason::Interrupted, t("2026-01-01T00:05:00Z")));
    assigned(&mut s, "c", t("2026-01-01T00:06:00Z"));
    assert!(!job_exited(&mut s, &p, 0, t("2026-01-01T00:07:00Z")));

    let seen: Vec<(Option<&str>, Option<i32>, &str)> =
        s.history.iter().map(|a| (a.instance.as_deref(), a.exit_code, a.reason.as_str())).collect();
    assert_eq!(
        seen,
        vec![
            (Some("r-0"), None, "NoCapacity"),
            (Some("a"), Some(2), "ContainerExitedWithError"),
            (Some("b"), None, "Interrupted"),
            (Some("c"), Some(0), "Completed"),
        ]
    );
    assert_eq!(s.history[1].started_at, Some(Time(t("2026-01-01T00:02:00Z"))));
    assert_eq!(s.history[3].finished_at, Time(t("2026-01-01T00:07:00Z")));
    assert_eq!(s.attempts, 3);
    assert_eq!(s.phase, RunPhase::Succeeded);
}

#[test]
fn the_history_is_bounded() {
    let p =
        policy(PolicySpec { retry: Some(RetrySpec { on: None, duration: Some("1d".into()) }), ..Default::default() });
    let mut s = submitted("2026-01-01T00:00:00Z");
    for i in 0..(MAX_HISTORY + 5) {
        assigned(&mut s, &format!("i{i}"), t("2026-01-01T00:00:00Z"));
        assert!(interrupted(&mut s, &p, Reason::Interrupted, t("2026-01-01T01:00:00Z")));
    }
    assert_eq!(s.history.len(), MAX_HISTORY);
    assert_eq!(s.history[0].instance.as_deref(), Some("i5"), "the oldest go first");
}

#[test]
fn a_run_waits_for_the_instance_it_provisions_until_it_claims_one_or_ends() {
    let mut s = submitted("2026-01-01T00:00:00Z");
    assert!(!waits_for(&s, "r-0"));
    provisioning(&mut s, "r-0");
    assert!(waits_for(&s, "r-0"));
    assert!(!waits_for(&s, "r-1"));
    let mut ended = s.clone();
    finish(&mut ended, RunPhase::Terminated, Reason::Stopped, None, t("2026-01-01T00:01:00Z"));
    assert!(!waits_for(&ended, "r-0"));
    assert_eq!(ended.provisioning_instance, None);
    // A run that claims another idle instance stops waiting for the one it provisions.
    assigned(&mut s, "other", t("2026-01-01T00:01:00Z"));
    assert!(!waits_for(&s, "r-0"));
}

#[test]
fn instance_names_fit_an_object_name_for_any_run_name() {
    assert_eq!(instance_name_for("train", 0), "train-0");
    let at_limit = "a".repeat(MAX_OBJECT_NAME - 2);
    assert_eq!(instance_name_for(&at_limit, 3), format!("{at_limit}-3"));
    for len in [200, 250, 251, 252, MAX_OBJECT_NAME] {
        let run: String = (0..len).map(|i| if i % 10 == 9 && i + 1 < len { '.' } else { 'x' }).collect();
        for attempt in [0, 7, 12345] {
            let name = instance_name_for(&run, attempt);
            assert!(name.len() <= MAX_OBJECT_NAME, "{len}/{attempt}: {} characters", name.len());
            assert!(name.ends_with(&format!("-{attempt}")), "{name}");
            assert!(!name.contains(".-") && !name.contains("-."), "{name}");
        }
    }
    // Two long names that share their start still get different instances.
    let a = format!("{}a", "x".repeat(MAX_OBJECT_NAME - 1));
    let b = format!("{}b", "x".repeat(MAX_OBJECT_NAME - 1));
    assert_ne!(instance_name_for(&a, 0), instance_name_for(&b, 0));
    assert_eq!(instance_name_for(&a, 0), instance_name_for(&a, 0), "stable");
}

#[test]
fn a_lost_instance_interrupts_its_run_with_the_reason_its_health_verdict_gives() {
    let now = t("2026-01-01T00:10:00Z");
    let no_retry = policy(PolicySpec::default());
    for (ready, reason, message) in [
        (Some(("Reclaimed", "spot reclaimed")), Reason::Interrupted, "instance i: spot reclaimed"),
        (Some(("MachineGone", "gone")), Reason::Interrupted, "instance i: gone"),
        (Some(("BudgetExceeded", "over $5")), Reason::Interrupted, "instance i: over $5"),
        (Some(("Unreachable", "no answer")), Reason::InstanceUnreachable, "instance i: no answer"),
        // Not a loss kpool decided (ended by hand, idled out): its message is not the run's.
        (Some(("IdleTimeout", "idle")), Reason::Interrupted, "instance i went away while the run was on it"),
        (Some(("SomethingElse", "x")), Reason::Interrupted, "instance i went away while the run was on it"),
        (None, Reason::Interrupted, "instance i went away while the run was on it"),
    ] {
        let mut s = submitted("2026-01-01T00:00:00Z");
        assigned(&mut s, "i", now);
        let lost = instance_lost(&mut s, &no_retry, "i", ready, now);
        assert_eq!(lost, Interruption { reason, message: message.to_string(), retried: false }, "{ready:?}");
        assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Terminated, Some(reason.as_str())));
        assert_eq!(
            s.history.last().map(|a| (a.instance.as_deref(), a.reason.as_str())),
            Some((Some("i"), reason.as_str()))
        );
    }
}

#[test]
fn a_lost_instance_retries_its_run_only_within_an_interruption_retry_window() {
    let on = |events: Vec<RetryEvent>| {
        policy(PolicySpec {
            retry: Some(RetrySpec { on: Some(events), duration: Some("1h".into()) }),
            ..Default::default()
        })
    };
    let reclaimed = Some(("Reclaimed", "spot reclaimed"));
    for (p, at, retried) in [
        (on(vec![RetryEvent::Interruption]), "2026-01-01T00:30:00Z", true),
        (on(vec![RetryEvent::Interruption]), "2026-01-01T01:00:00Z", false),
        (on(vec![RetryEvent::NoCapacity, RetryEvent::Error]), "2026-01-01T00:30:00Z", false),
    ] {
        let mut s = submitted("2026-01-01T00:00:00Z");
        assigned(&mut s, "i", t("2026-01-01T00:10:00Z"));
        let lost = instance_lost(&mut s, &p, "i", reclaimed, t(at));
        assert_eq!(lost.retried, retried, "{at}");
        if retried {
            assert_eq!((s.phase, s.instance.as_deref(), s.attempts), (RunPhase::Pending, None, 1));
            assert_eq!(s.termination_reason, None);
        } else {
            assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Terminated, Some("Interrupted")));
        }
        assert_eq!(s.history.last().map(|a| a.reason.as_str()), Some("Interrupted"));
    }
}

#[test]
fn max_duration_is_reached_at_its_deadline_from_the_start_of_the_attempt() {
    let p = policy(PolicySpec { max_duration: Some("2h".into()), ..Default::default() });
    let mut s = submitted("2026-01-01T00:00:00Z");
    assert!(!max_duration_reached(&s, &p, t("2026-01-01T05:00:00Z")), "not started: no deadline");
    assigned(&mut s, "i", t("2026-01-01T00:10:00Z"));
    for (at, reached) in
        [("2026-01-01T02:09:59Z", false), ("2026-01-01T02:10:00Z", true), ("2026-01-01T02:10:01Z", true)]
    {
        assert_eq!(max_duration_reached(&s, &p, t(at)), reached, "{at}");
    }
    let unbounded = policy(PolicySpec::default());
    assert!(!max_duration_reached(&s, &unbounded, t("2027-01-01T00:00:00Z")));
}

#[test]
fn an_ended_run_says_so_and_frees_the_instance_it_was_on() {
    use crate::core::transition::{Effect, Transition};
    let now = t("2026-01-01T00:10:00Z");
    let mut s = submitted("2026-01-01T00:00:00Z");
    assigned(&mut s, "i", t("2026-01-01T00:01:00Z"));
    let want = Transition::write()
        .said(Reason::Stopped, "stopped by the user")
        .event(true, Reason::Stopped, "stopped by the user")
        .effect(Effect::Release { instance: "i".into(), ended: false });
    assert_eq!(ended(&mut s, RunPhase::Terminated, Reason::Stopped, None, "stopped by the user", now), want);
    assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Terminated, Some("Stopped")));
    // Succeeded is no Warning; a run on no instance frees none.
    let mut s = submitted("2026-01-01T00:00:00Z");
    let tr = ended(&mut s, RunPhase::Succeeded, Reason::Completed, Some(0), "done", now);
    assert_eq!((tr.events.iter().map(|e| e.warning).collect::<Vec<_>>(), tr.effect), (vec![false], Effect::None));
}

#[test]
fn an_interrupted_run_warns_and_says_retrying_only_when_it_is_retried() {
    use crate::core::transition::Transition;
    let i = |retried| Interruption { reason: Reason::Interrupted, message: "instance i went away".into(), retried };
    let warn = Transition::write().event(true, Reason::Interrupted, "instance i went away");
    assert_eq!(i(true).transition(), warn.clone().said(Reason::Retrying, "instance i went away; retrying"));
    assert_eq!(i(false).transition(), warn.said(Reason::Interrupted, "instance i went away"));
}

#[test]
fn an_exited_job_says_its_code_and_frees_the_instance_without_a_fence() {
    use crate::core::transition::{Effect, Transition};
    let now = t("2026-01-01T00:10:00Z");
    let running = || {
        let mut s = submitted("2026-01-01T00:00:00Z");
        assigned(&mut s, "i", t("2026-01-01T00:01:00Z"));
        s
    };
    let retry = policy(PolicySpec {
        retry: Some(RetrySpec { on: Some(vec![RetryEvent::Error]), duration: Some("1h".into()) }),
        ..Default::default()
    });
    let none = policy(PolicySpec::default());
    let free = Effect::Release { instance: "i".into(), ended: true };
    for (p, code, said, event, phase) in [
        (&none, 0, (Reason::Completed, "the job exited with code 0"), (false, Reason::Succeeded), RunPhase::Succeeded),
        (&retry, 0, (Reason::Completed, "the job exited with code 0"), (false, Reason::Succeeded), RunPhase::Succeeded),
        (&none, 3, (Reason::Completed, "the job exited with code 3"), (true, Reason::Failed), RunPhase::Failed),
        (
            &retry,
            3,
            (Reason::Retrying, "the job exited with code 3; retrying"),
            (true, Reason::Failed),
            RunPhase::Pending,
        ),
    ] {
        let mut s = running();
        let want = Transition::write()
            .said(said.0, said.1)
            .event(event.0, event.1, format!("the job exited with code {code}"))
            .effect(free.clone());
        assert_eq!(exited(&mut s, p, "i", code, now), want, "{code}");
        assert_eq!(s.phase, phase, "{code}");
    }
}

#[test]
fn a_run_found_ended_writes_nothing_and_frees_the_instance_it_was_on() {
    use crate::core::transition::{Effect, Transition};
    let now = t("2026-01-01T00:10:00Z");
    let mut s = submitted("2026-01-01T00:00:00Z");
    assigned(&mut s, "i", t("2026-01-01T00:01:00Z"));
    assert_eq!(already_ended(&s), Transition::none(), "running: not ended");
    finish(&mut s, RunPhase::Failed, Reason::Unsupported, None, now);
    let free = Transition::none().effect(Effect::Release { instance: "i".into(), ended: false });
    assert_eq!(already_ended(&s), free);
    let mut s = submitted("2026-01-01T00:00:00Z");
    finish(&mut s, RunPhase::Terminated, Reason::Stopped, None, now);
    assert_eq!(already_ended(&s), Transition::none(), "on no instance");
}
