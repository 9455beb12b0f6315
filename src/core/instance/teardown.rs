//! The end of a teardown: what the instance says once its machine is deleted, and while
//! deleting it fails.

use jiff::Timestamp;

use crate::api::conditions::{clear_false, find, set_false_since};
use crate::api::instance::{InstancePhase, InstanceStatus};
use crate::api::reasons::Reason;
use crate::core::transition::Transition;

/// The condition that says why deleting the instance's machine fails: `False` (reason
/// `DeleteFailed`, the provider's error) while the backend cannot delete it or confirm it
/// gone, `True` once it is deleted after such a failure; absent otherwise.
pub const TEARDOWN: &str = "Teardown";

/// The message of a deleted machine.
pub const DELETED: &str = "the machine is deleted";

/// The machine is gone: Terminated, [`TEARDOWN`] True if it was False, written with a
/// `Terminated` Event. The instance's last `Ready` says the reason it was ended for (a
/// loss the health check found keeps its message, which says what happened; any other
/// reason keeps its name, and says the machine is deleted), or `Terminated` when nothing
/// said why (it was only `Terminating`).
pub fn machine_deleted(status: &mut InstanceStatus, generation: Option<i64>, now: Timestamp) -> Transition {
    super::gone(status, now);
    clear_false(&mut status.conditions, TEARDOWN, Reason::Deleted, DELETED, generation, now);
    let was = find(&status.conditions, crate::api::conditions::READY);
    let (reason, message) = match was.and_then(|c| Reason::parse(&c.reason).map(|r| (r, c))) {
        Some((r, c)) if r.instance_lost() => (r, c.message.clone()),
        Some((r, _)) if r != Reason::Terminating => (r, DELETED.to_string()),
        _ => (Reason::Terminated, DELETED.to_string()),
    };
    Transition::write().said(reason, message).event(false, Reason::Terminated, DELETED)
}

/// Deleting the machine failed with `error` (the whole chain): [`TEARDOWN`] False with
/// it. The message, for the status write and the Warning, when that is news; `None` when
/// the same failure is already recorded (nothing to write or say).
pub fn delete_failed(
    status: &mut InstanceStatus,
    error: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<String> {
    let message = format!("deleting the machine failed (retrying): {error}");
    if find(&status.conditions, TEARDOWN).is_some_and(|c| c.status == "False" && c.message == message) {
        return None;
    }
    set_false_since(&mut status.conditions, TEARDOWN, Reason::DeleteFailed, &message, generation, now);
    Some(message)
}

/// A teardown that failed (new credentials that cannot see the machine, an endpoint that
/// does not answer, a missing Backend) says so ([`delete_failed`]): written with a
/// `DeleteFailed` Warning once per distinct error, nothing otherwise. The pass is retried
/// (the controller hands the error back): the instance is never marked gone while its
/// machine may still run.
pub fn failed(status: &mut InstanceStatus, error: &str, generation: Option<i64>, now: Timestamp) -> Transition {
    match delete_failed(status, error, generation, now) {
        Some(message) => Transition::write().event(true, Reason::DeleteFailed, message),
        None => Transition::none(),
    }
}

/// Where deleting the machine of a deleted `Instance` stands after a pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Deleting {
    /// The backend says it is gone: the finalizer goes, and the object with it.
    Gone,
    /// Asked to delete it; not gone yet.
    Pending,
    /// Deleting it failed with this error (the whole chain).
    Failed(String),
}

/// The message of an instance whose `Instance` is deleted while its machine is not gone.
pub const DELETING: &str = "instance deleted; deleting the machine";
/// The message of an instance whose machine is gone, its `Instance` deleted.
pub const REMOVED: &str = "the machine is gone; removing the instance";

/// The `Instance` is deleted, and deleting its machine stands at `machine`. Gone: a Normal
/// `Deleted` Event, nothing written (the object goes). Otherwise the instance is
/// Terminating, said in `Ready` the first time (a Warning names the run that was on it when
/// deleting it is under way), and a failure is said as [`failed`] says it.
pub fn instance_deleted(
    status: &mut InstanceStatus,
    machine: Deleting,
    generation: Option<i64>,
    now: Timestamp,
) -> Transition {
    if machine == Deleting::Gone {
        return Transition::none().event(false, Reason::Deleted, REMOVED);
    }
    let mut t = Transition::none();
    if status.phase != InstancePhase::Terminating {
        if let (Some(run), Deleting::Pending) = (&status.run, &machine) {
            let message = format!("instance deleted while run {run} was using it");
            t = t.event(true, Reason::Terminating, message);
        }
        super::terminate(status);
        t = Transition::write().said(Reason::Terminating, DELETING).then(t);
    }
    match machine {
        Deleting::Failed(error) => t.then(failed(status, &error, generation, now)),
        Deleting::Gone | Deleting::Pending => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{condition, READY};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn terminating(ready: Option<(&str, &str)>) -> InstanceStatus {
        let conditions = ready
            .map(|(reason, message)| {
                vec![condition(&[], READY, false, reason, message, None, t("2026-01-01T00:00:00Z"))]
            })
            .unwrap_or_default();
        InstanceStatus {
            phase: InstancePhase::Terminating,
            address: Some("10.0.0.1".into()),
            conditions,
            ..Default::default()
        }
    }

    #[test]
    fn a_deleted_machine_keeps_the_reason_it_was_ended_for() {
        for (ready, reason, message) in [
            (Some(("Reclaimed", "spot reclaimed")), Reason::Reclaimed, "spot reclaimed"),
            (Some(("Unreachable", "no answer for 300s")), Reason::Unreachable, "no answer for 300s"),
            (Some(("BudgetExceeded", "over $5")), Reason::BudgetExceeded, "over $5"),
            (Some(("IdleTimeout", "idle duration elapsed")), Reason::IdleTimeout, DELETED),
            (Some(("NotNeeded", "run r found another")), Reason::NotNeeded, DELETED),
            (Some(("Terminating", "instance deleted")), Reason::Terminated, DELETED),
            (Some(("NoSuchReason", "x")), Reason::Terminated, DELETED),
            (None, Reason::Terminated, DELETED),
        ] {
            let mut st = terminating(ready);
            let want = Transition::write().said(reason, message).event(false, Reason::Terminated, DELETED);
            assert_eq!(machine_deleted(&mut st, None, t("2026-01-01T00:01:00Z")), want, "{ready:?}");
            assert_eq!((st.phase, st.address.as_deref()), (InstancePhase::Terminated, None));
        }
    }

    #[test]
    fn a_failed_delete_is_recorded_once_per_distinct_error_and_cleared_when_deleted() {
        let mut st = terminating(None);
        let now = t("2026-01-01T00:00:00Z");
        let said = delete_failed(&mut st, "denied", Some(3), now);
        assert_eq!(said.as_deref(), Some("deleting the machine failed (retrying): denied"));
        assert_eq!(delete_failed(&mut st, "denied", Some(3), t("2026-01-01T00:01:00Z")), None, "already recorded");
        assert!(delete_failed(&mut st, "timeout", Some(3), t("2026-01-01T00:02:00Z")).is_some(), "another error");
        let c = find(&st.conditions, TEARDOWN).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str(), c.last_transition_time.0), ("False", "DeleteFailed", now));
        machine_deleted(&mut st, Some(3), t("2026-01-01T00:03:00Z"));
        let c = find(&st.conditions, TEARDOWN).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Deleted"));
        // No failure before: no Teardown condition at all.
        let mut st = terminating(None);
        machine_deleted(&mut st, None, now);
        assert_eq!(find(&st.conditions, TEARDOWN), None);
    }

    #[test]
    fn a_failed_teardown_is_written_and_said_once_per_distinct_error() {
        let mut st = terminating(None);
        let said = "deleting the machine failed (retrying): denied";
        let warned = Transition::write().event(true, Reason::DeleteFailed, said);
        assert_eq!(failed(&mut st, "denied", None, t("2026-01-01T00:00:00Z")), warned);
        assert_eq!(failed(&mut st, "denied", None, t("2026-01-01T00:01:00Z")), Transition::none());
        assert_eq!(failed(&mut st, "timeout", None, t("2026-01-01T00:02:00Z")).events.len(), 1);
    }

    #[test]
    fn a_deleted_instance_says_terminating_once_and_removed_when_its_machine_is_gone() {
        let now = t("2026-01-01T00:00:00Z");
        let busy = || InstanceStatus { phase: InstancePhase::Busy, run: Some("r".into()), ..Default::default() };
        let term = Transition::write().said(Reason::Terminating, DELETING);
        let denied = "deleting the machine failed (retrying): denied";
        let warned = |t: Transition| t.event(true, Reason::DeleteFailed, denied);
        let failed = || Deleting::Failed("denied".into());
        // (status, where the machine stands, transition, phase after)
        for (mut st, machine, want, phase) in [
            (busy(), Deleting::Gone, Transition::none().event(false, Reason::Deleted, REMOVED), InstancePhase::Busy),
            (
                busy(),
                Deleting::Pending,
                term.clone().event(true, Reason::Terminating, "instance deleted while run r was using it"),
                InstancePhase::Terminating,
            ),
            (busy(), failed(), warned(term.clone()), InstancePhase::Terminating),
            (terminating(None), Deleting::Pending, Transition::none(), InstancePhase::Terminating),
            (terminating(None), failed(), warned(Transition::write()), InstancePhase::Terminating),
        ] {
            let out = instance_deleted(&mut st, machine.clone(), None, now);
            assert_eq!(out, want, "{machine:?}");
            assert_eq!(st.phase, phase, "{machine:?}");
        }
        // Failing again the same way says nothing and writes nothing.
        let mut st = terminating(None);
        instance_deleted(&mut st, failed(), None, now);
        assert_eq!(instance_deleted(&mut st, failed(), None, now), Transition::none());
    }
}
