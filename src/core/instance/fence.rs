//! The fencing verdict: what becomes of an instance whose last run's job may still run on
//! its machine, once kpool tried to stop it there (see `controllers::fence` for the whole
//! story).
//!
//! - Stopped -> [`fenced`]: nothing of the job holds the instance; `JobFenced` True.
//! - Not stopped, on a held instance -> `JobFenced` False (`FencePending`) since the first
//!   failure; tried again every [`FENCE_RETRY`]; after the unreachable grace the instance
//!   is given up (Terminating, `Unreachable`).
//! - Not stopped, before the machine is deleted -> a cloud VM is deleted anyway (deleting
//!   it stops the job: `MachineDeleted`); any other machine waits, `FencePending`, unless
//!   the `Instance` is being deleted and the grace is over: the job is abandoned
//!   (`JobFenced` Unknown, `Abandoned`).

use std::time::Duration;

use jiff::Timestamp;

use crate::api::conditions::{clear_false, condition_tri, set_false_since, upsert};
use crate::api::instance::{InstanceStatus, JobRef};
use crate::api::reasons::Reason;
use crate::core::add;
use crate::core::transition::Transition;

/// The instance condition that says whether the job of its last run is known to be
/// stopped: False (reason `FencePending`) while kpool cannot stop it on the machine, True
/// (reason `Fenced`) once it did.
pub const JOB_FENCED: &str = "JobFenced";
/// How often a held instance tries to fence its machine again.
pub const FENCE_RETRY: Duration = Duration::from_secs(15);

/// What a failed fence makes of a held instance (Busy without a run).
#[derive(Clone, Debug, PartialEq)]
pub enum Held {
    /// Not yet: `JobFenced` False; try again at `retry_at`. `changed`: the condition went
    /// False now (the status is written).
    Pending { changed: bool, retry_at: Timestamp },
    /// Held for the whole grace: the instance is given up (Terminating, `Unreachable`).
    GiveUp { message: String },
}

/// What a failed fence makes of an instance whose machine is to be deleted or given back.
#[derive(Clone, Debug, PartialEq)]
pub enum Teardown {
    /// The machine is not given back yet: `JobFenced` False, the teardown is tried again
    /// (an error). `changed`: the condition went False now (the status is written).
    Wait { changed: bool },
    /// Deleting the machine stops the job: the job is forgotten (`JobFenced` True,
    /// `MachineDeleted`); the Warning `FenceByDeletion` says so.
    ByDeletion { message: String },
    /// The `Instance` is deleted and the job could not be stopped for the whole grace: the
    /// machine is forgotten (`JobFenced` Unknown, `Abandoned`); the Warning
    /// `FenceAbandoned` names the run whose job may be left there.
    Abandon { message: String },
}

/// The outcome of a failed fence: the verdict, and the `FencePending` Warning to send
/// when the condition went False now.
#[derive(Clone, Debug, PartialEq)]
pub struct Failed<V> {
    pub verdict: V,
    pub pending_event: Option<String>,
}

/// Stopping `job` on the machine of a held instance failed with `error` (the whole
/// chain): `JobFenced` False since the first failure; retried every [`FENCE_RETRY`] until
/// the `grace` is over, then given up. `status` carries the transition.
pub fn held_failed(
    status: &mut InstanceStatus,
    job: &JobRef,
    error: &str,
    grace: Duration,
    generation: Option<i64>,
    now: Timestamp,
) -> Failed<Held> {
    let (pending_event, since) = pending(status, job, error, generation, now);
    let deadline = add(since, grace);
    let verdict = if now >= deadline {
        Held::GiveUp { message: format!("could not stop the job of run {} for {}s: {error}", job.run, grace.as_secs()) }
    } else {
        Held::Pending { changed: pending_event.is_some(), retry_at: deadline.min(add(now, FENCE_RETRY)) }
    };
    Failed { verdict, pending_event }
}

/// The machine a teardown fences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// Deleting the machine stops the job (a cloud VM, or no machine was ever launched).
    pub cloud_vm: bool,
    /// The `Instance` itself is being deleted.
    pub deleting: bool,
}

/// Stopping `job` failed with `error` before the machine at `site` is deleted or given
/// back. `status` carries the transition.
pub fn teardown_failed(
    status: &mut InstanceStatus,
    job: &JobRef,
    error: &str,
    site: Site,
    grace: Duration,
    generation: Option<i64>,
    now: Timestamp,
) -> Failed<Teardown> {
    if site.cloud_vm {
        status.job = None;
        let message = format!("could not stop the job of run {} ({error}); deleting the machine stops it", job.run);
        clear_false(&mut status.conditions, JOB_FENCED, Reason::MachineDeleted, &message, generation, now);
        return Failed { verdict: Teardown::ByDeletion { message }, pending_event: None };
    }
    let (pending_event, since) = pending(status, job, error, generation, now);
    if !site.deleting || now < add(since, grace) {
        return Failed { verdict: Teardown::Wait { changed: pending_event.is_some() }, pending_event };
    }
    // Deleted by its owner, and the host has not answered for the whole grace: kpool lets
    // go of the host as asked, and says plainly what may be left on it.
    status.job = None;
    let message = format!(
        "the job of run {} (attempt {}) may still run on the machine: it could not be stopped for {}s ({error}); \
         the Instance is deleted, so kpool forgets the machine",
        job.run,
        job.attempt,
        grace.as_secs()
    );
    let c = condition_tri(&status.conditions, JOB_FENCED, "Unknown", Reason::Abandoned, &message, generation, now);
    upsert(&mut status.conditions, c);
    Failed { verdict: Teardown::Abandon { message }, pending_event }
}

/// `JobFenced` False with `error`: the `FencePending` message when it went False now, and
/// since when it is False.
fn pending(
    status: &mut InstanceStatus,
    job: &JobRef,
    error: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> (Option<String>, Timestamp) {
    let message = format!(
        "the job of run {} (attempt {}) may still run on the machine; the instance takes no other run and keeps \
         its machine until it is stopped there: {error}",
        job.run, job.attempt
    );
    let (first, since) =
        set_false_since(&mut status.conditions, JOB_FENCED, Reason::FencePending, &message, generation, now);
    (first.then_some(message), since)
}

/// The job is stopped on the machine: nothing of it holds the instance any more.
/// `JobFenced` goes True; the message for the `Fenced` Event when that changed it.
pub fn fenced(status: &mut InstanceStatus, job: &JobRef, generation: Option<i64>, now: Timestamp) -> Option<String> {
    status.job = None;
    let message = format!("the job of run {} is stopped on the machine", job.run);
    clear_false(&mut status.conditions, JOB_FENCED, Reason::Fenced, &message, generation, now).then_some(message)
}

/// [`fenced`] as a transition: the status is written, with a Normal `Fenced` Event when
/// `JobFenced` changed.
pub fn stopped(status: &mut InstanceStatus, job: &JobRef, generation: Option<i64>, now: Timestamp) -> Transition {
    match fenced(status, job, generation, now) {
        Some(message) => Transition::write().event(false, Reason::Fenced, message),
        None => Transition::write(),
    }
}

/// The `FencePending` Warning a failed fence carries, if any: a transition that says only
/// that (its status change goes with the transition applied with it).
pub fn pending_said<V>(out: &Failed<V>) -> Transition {
    match &out.pending_event {
        Some(message) => Transition::none().event(true, Reason::FencePending, message.clone()),
        None => Transition::none(),
    }
}

/// A failed fence before the machine is deleted ([`teardown_failed`]) as a transition,
/// and whether the teardown goes on. It goes on after a `FenceByDeletion` or
/// `FenceAbandoned` Warning, the status written with the teardown's next write; it waits
/// otherwise, the status written only when `JobFenced` went False now (and the pass
/// retried: the caller hands the error back).
pub fn teardown_transition(out: Failed<Teardown>) -> (Transition, bool) {
    let said = pending_said(&out);
    match out.verdict {
        Teardown::Wait { changed } => (Transition { write: changed, ..said }, false),
        Teardown::ByDeletion { message } => {
            (said.then(Transition::write().event(true, Reason::FenceByDeletion, message)), true)
        }
        Teardown::Abandon { message } => {
            (said.then(Transition::write().event(true, Reason::FenceAbandoned, message)), true)
        }
    }
}

/// A held instance whose job is stopped ([`fenced`]): Idle again, and its `Ready` says so.
pub fn released(status: &mut InstanceStatus, job: &JobRef, now: Timestamp) -> Transition {
    super::release(status, now);
    Transition::write().said(Reason::Idle, format!("the job of run {} is stopped; idle", job.run))
}

/// A held instance whose job is not stopped yet ([`held_failed`]): its `Ready` says it is
/// `Fencing`; written when that or `JobFenced` (`changed`) changed.
pub fn still_held(job: &JobRef, changed: bool) -> Transition {
    let message = format!("run {} let go of the instance; stopping its job on the machine", job.run);
    Transition { write: changed, ..Transition::none() }.said(Reason::Fencing, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::find;
    use crate::api::instance::InstancePhase;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const GRACE: Duration = Duration::from_secs(300);

    fn held() -> (InstanceStatus, JobRef) {
        let job = JobRef { run: "r".into(), run_uid: "u".into(), attempt: 2 };
        (InstanceStatus { phase: InstancePhase::Busy, job: Some(job.clone()), ..Default::default() }, job)
    }

    fn state(st: &InstanceStatus) -> (String, String) {
        let c = find(&st.conditions, JOB_FENCED).expect("JobFenced");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_held_instance_retries_then_is_given_up_exactly_at_the_grace() {
        let (mut st, job) = held();
        let first = t("2026-01-01T00:00:00Z");
        let out = held_failed(&mut st, &job, "no route", GRACE, Some(1), first);
        assert_eq!(out.verdict, Held::Pending { changed: true, retry_at: t("2026-01-01T00:00:15Z") });
        assert!(out
            .pending_event
            .as_deref()
            .is_some_and(|m| m.contains("run r (attempt 2)") && m.ends_with("no route")));
        assert_eq!(state(&st), ("False".into(), "FencePending".into()));
        for (at, want) in [
            // Again: nothing new to write or say; the retry never passes the deadline.
            ("2026-01-01T00:01:00Z", Held::Pending { changed: false, retry_at: t("2026-01-01T00:01:15Z") }),
            ("2026-01-01T00:04:50Z", Held::Pending { changed: false, retry_at: t("2026-01-01T00:05:00Z") }),
            (
                "2026-01-01T00:05:00Z",
                Held::GiveUp { message: "could not stop the job of run r for 300s: no route".into() },
            ),
        ] {
            let out = held_failed(&mut st, &job, "no route", GRACE, Some(1), t(at));
            assert_eq!((out.verdict, out.pending_event), (want, None), "{at}");
            assert_eq!(st.job.as_ref(), Some(&job), "a held instance keeps its job until it is fenced");
        }
    }

    #[test]
    fn before_a_teardown_a_cloud_vm_is_fenced_by_deleting_it() {
        for deleting in [false, true] {
            let (mut st, job) = held();
            let out = teardown_failed(
                &mut st,
                &job,
                "timeout",
                Site { cloud_vm: true, deleting },
                GRACE,
                None,
                t("2026-01-01T00:00:00Z"),
            );
            let message = "could not stop the job of run r (timeout); deleting the machine stops it".to_string();
            assert_eq!(out, Failed { verdict: Teardown::ByDeletion { message }, pending_event: None });
            assert_eq!(st.job, None);
        }
    }

    #[test]
    fn another_machine_waits_and_is_abandoned_only_when_deleted_after_the_grace() {
        let first = t("2026-01-01T00:00:00Z");
        for (deleting, at, abandoned) in [
            (false, "2026-01-01T00:04:59Z", false),
            (false, "2026-01-01T01:00:00Z", false),
            (true, "2026-01-01T00:04:59Z", false),
            (true, "2026-01-01T00:05:00Z", true),
        ] {
            let (mut st, job) = held();
            teardown_failed(&mut st, &job, "e", Site { cloud_vm: false, deleting }, GRACE, None, first);
            let out = teardown_failed(&mut st, &job, "e", Site { cloud_vm: false, deleting }, GRACE, None, t(at));
            assert_eq!(out.pending_event, None, "{deleting} {at}");
            if abandoned {
                assert!(
                    matches!(&out.verdict, Teardown::Abandon { message } if message.contains("forgets the machine"))
                );
                assert_eq!(state(&st), ("Unknown".into(), "Abandoned".into()));
                assert_eq!(st.job, None);
            } else {
                assert_eq!(out.verdict, Teardown::Wait { changed: false }, "{deleting} {at}");
                assert_eq!(state(&st), ("False".into(), "FencePending".into()));
                assert_eq!(st.job.as_ref(), Some(&job));
            }
        }
    }

    #[test]
    fn a_fenced_job_lets_go_and_says_so_once() {
        let (mut st, job) = held();
        assert_eq!(fenced(&mut st, &job, None, t("2026-01-01T00:00:00Z")), None, "never pending: nothing to say");
        assert_eq!(st.job, None);
        let (mut st, job) = held();
        held_failed(&mut st, &job, "e", GRACE, None, t("2026-01-01T00:00:00Z"));
        let said = fenced(&mut st, &job, None, t("2026-01-01T00:01:00Z"));
        assert_eq!(said.as_deref(), Some("the job of run r is stopped on the machine"));
        assert_eq!(state(&st), ("True".into(), "Fenced".into()));
    }

    #[test]
    fn a_fenced_instance_is_idle_and_one_still_held_says_fencing() {
        let (mut st, job) = held();
        let now = t("2026-01-01T00:00:00Z");
        let idle = Transition::write().said(Reason::Idle, "the job of run r is stopped; idle");
        assert_eq!(released(&mut st, &job, now), idle);
        assert_eq!((st.phase, st.job.as_ref(), st.idle_since.map(|t| t.0)), (InstancePhase::Idle, None, Some(now)));
        for changed in [false, true] {
            let tr = still_held(&job, changed);
            let said = "run r let go of the instance; stopping its job on the machine";
            assert_eq!(tr, Transition { write: changed, ..Transition::none() }.said(Reason::Fencing, said));
        }
    }

    #[test]
    fn a_stopped_job_is_written_and_said_once() {
        let (mut st, job) = held();
        let (at, later) = (t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:15Z"));
        held_failed(&mut st, &job, "timeout", GRACE, Some(1), at);
        let said = "the job of run r is stopped on the machine";
        assert_eq!(stopped(&mut st, &job, Some(1), later), Transition::write().event(false, Reason::Fenced, said));
        assert_eq!(st.job, None);
        // Nothing was pending: still written (the job is let go of), nothing said.
        let (mut st, job) = held();
        assert_eq!(stopped(&mut st, &job, Some(1), later), Transition::write());
    }

    #[test]
    fn a_failed_fence_says_pending_once_and_a_teardown_goes_on_only_when_deleting_stops_the_job() {
        let (at, later) = (t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:15Z"));
        let host = Site { cloud_vm: false, deleting: false };
        // Another machine waits: written and said the first time, then neither.
        let (mut st, job) = held();
        let (first, go_on) = teardown_transition(teardown_failed(&mut st, &job, "timeout", host, GRACE, Some(1), at));
        assert!(!go_on);
        assert!(first.write);
        assert_eq!(
            first.events.iter().map(|e| (e.warning, e.reason)).collect::<Vec<_>>(),
            [(true, Reason::FencePending)]
        );
        let (again, go_on) =
            teardown_transition(teardown_failed(&mut st, &job, "timeout", host, GRACE, Some(1), later));
        assert_eq!((again, go_on), (Transition::none(), false));
        // A cloud VM goes on, said by FenceByDeletion; an abandoned job by FenceAbandoned
        // after the pending Warning it had.
        let (mut st, job) = held();
        let vm = Site { cloud_vm: true, deleting: false };
        let (t1, go_on) = teardown_transition(teardown_failed(&mut st, &job, "timeout", vm, GRACE, Some(1), at));
        assert!(go_on && t1.write);
        assert_eq!(t1.events.iter().map(|e| e.reason).collect::<Vec<_>>(), [Reason::FenceByDeletion]);
        let (mut st, job) = held();
        let deleted = Site { cloud_vm: false, deleting: true };
        let (t2, go_on) =
            teardown_transition(teardown_failed(&mut st, &job, "timeout", deleted, Duration::ZERO, Some(1), at));
        assert!(go_on && t2.write);
        assert_eq!(
            t2.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            [Reason::FencePending, Reason::FenceAbandoned]
        );
    }

    #[test]
    fn one_transition_then_another_writes_once_with_both_events_and_the_later_condition() {
        let first = Transition::none().event(true, Reason::FencePending, "a").said(Reason::Fencing, "x");
        let next = Transition::write().said(Reason::Idle, "y").event(false, Reason::Released, "b");
        let both = first.then(next);
        let want = Transition::write().said(Reason::Idle, "y").event(true, Reason::FencePending, "a").event(
            false,
            Reason::Released,
            "b",
        );
        assert_eq!(both, want);
        assert_eq!(Transition::write().then(Transition::none()), Transition::write());
    }
}
