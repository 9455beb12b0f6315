//! The end of a teardown: what the instance says once its machine is deleted, and while
//! deleting it fails.

use jiff::Timestamp;

use crate::api::conditions::{clear_false, find, set_false_since};
use crate::api::instance::InstanceStatus;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{condition, READY};
    use crate::api::instance::InstancePhase;

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
}
