//! `metav1.Condition` helpers shared by every kind's status.
//!
//! GitOps tools (Flux, kpt, anything built on cli-utils) read an object's readiness the
//! way kstatus (`sigs.k8s.io/cli-utils/pkg/kstatus`) computes it from generic fields only:
//! `status.observedGeneration` behind `metadata.generation` -> InProgress; a condition
//! `Reconciling` True -> InProgress; `Stalled` True -> Failed; else a `Ready` condition
//! False or Unknown -> InProgress; else Current. So every kind's status records the
//! generation it describes, and [`set_progress`] keeps the two abnormal-true conditions,
//! present only while they hold (kstatus reads an absent one as False).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition messages are cut to this many characters.
pub const MAX_MESSAGE: usize = 300;

/// Root condition of an `Instance` (and of `Pool` and `Backend`).
pub const READY: &str = "Ready";
/// Whether an instance's machine answers (`False` with reason `Unreachable` while it does
/// not).
pub const REACHABLE: &str = "Reachable";
/// Root condition of a `Run`: `True` once it succeeded, `False` once it ended otherwise.
pub const SUCCEEDED: &str = "Succeeded";
/// A run's placement: `True` once it is on an instance, `False` with why it waits.
pub const SCHEDULED: &str = "Scheduled";
/// A run's place in its pool's queue.
pub const QUEUED: &str = "Queued";
/// A pool holds `maxInstances` instances.
pub const AT_CAPACITY: &str = "AtCapacity";
/// A pool keeps its warm minimum of idle instances.
pub const WARM: &str = "Warm";
/// Abnormal-true: the controller is still working towards the spec.
pub const RECONCILING: &str = "Reconciling";
/// Abnormal-true: the object cannot get further without a change from outside.
pub const STALLED: &str = "Stalled";

/// Where an object stands, in kstatus' terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Working towards the spec: `Reconciling` True (kstatus: InProgress).
    Reconciling,
    /// Stuck or failed for good: `Stalled` True (kstatus: Failed).
    Stalled,
    /// The spec is realised, or the object ended as asked: neither condition (Current).
    Settled,
}

/// Sets `Reconciling` or `Stalled` True with `reason` and `message` as `progress` says, and
/// removes the other (both for [`Progress::Settled`]).
pub fn set_progress(
    conditions: &mut Vec<Condition>,
    progress: Progress,
    reason: impl AsRef<str>,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (holds, gone) = match progress {
        Progress::Reconciling => (Some(RECONCILING), STALLED),
        Progress::Stalled => (Some(STALLED), RECONCILING),
        Progress::Settled => (None, RECONCILING),
    };
    conditions.retain(|c| c.type_ != gone && (holds.is_some() || c.type_ != STALLED));
    if let Some(type_) = holds {
        let c = condition_tri(conditions, type_, "True", reason, message, generation, now);
        upsert(conditions, c);
    }
}

/// The controller looked at `generation` and found nothing to change: every condition
/// now says it describes that generation.
pub fn observe(conditions: &mut [Condition], generation: Option<i64>) {
    for c in conditions {
        c.observed_generation = generation;
    }
}

/// A status that says which generation of the spec it describes (`observedGeneration`),
/// in its own field and in each of its conditions.
pub trait ObservedStatus {
    fn observed_generation(&self) -> Option<i64>;
    /// The controller looked at `generation` and found nothing to change: the status and
    /// every condition now say they describe it.
    fn observe(&mut self, generation: Option<i64>);
}

/// Builds a condition. `last_transition_time` is kept from `previous` when the status
/// did not change, so that timeouts computed from transition times stay stable.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: impl AsRef<str>,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    condition_tri(previous, type_, if status { "True" } else { "False" }, reason, message, generation, now)
}

/// Like [`condition`], with the status given as `True`, `False` or `Unknown`.
pub fn condition_tri(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: impl AsRef<str>,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let mut message: String = message.into();
    if message.chars().count() > MAX_MESSAGE {
        message = message.chars().take(MAX_MESSAGE - 1).collect::<String>() + "…";
    }
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.as_ref().to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of this type has status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Replaces or inserts `new` (matched by type) in `conditions`.
pub fn upsert(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// Sets the condition `type_` to `False` with `reason` and `message`. Returns whether it
/// just went `False`, and since when it has been `False` (for grace periods).
pub fn set_false_since(
    conditions: &mut Vec<Condition>,
    type_: &str,
    reason: impl AsRef<str>,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> (bool, Timestamp) {
    let first = find(conditions, type_).is_none_or(|c| c.status != "False");
    let c = condition_tri(conditions, type_, "False", reason, message, generation, now);
    let since = c.last_transition_time.0;
    upsert(conditions, c);
    (first, since)
}

/// Sets a condition that is `False` back to `True` with `reason` and `message`. Returns
/// whether it was `False` (nothing changes otherwise).
pub fn clear_false(
    conditions: &mut Vec<Condition>,
    type_: &str,
    reason: impl AsRef<str>,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    if find(conditions, type_).is_none_or(|c| c.status != "False") {
        return false;
    }
    let c = condition_tri(conditions, type_, "True", reason, message, generation, now);
    upsert(conditions, c);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_time_when_status_unchanged() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let a = condition(&[], "Ready", true, "Idle", "ok", Some(1), t0);
        let b = condition(std::slice::from_ref(&a), "Ready", true, "Busy", "ok", Some(2), t1);
        assert_eq!(b.last_transition_time.0, t0);
        let c = condition(std::slice::from_ref(&b), "Ready", false, "Gone", "x", Some(2), t1);
        assert_eq!(c.last_transition_time.0, t1);
    }

    #[test]
    fn truncates_long_messages() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let c = condition(&[], "Ready", false, "X", "a".repeat(1000), None, t0);
        assert_eq!(c.message.chars().count(), MAX_MESSAGE);
    }

    #[test]
    fn false_since_is_the_first_transition_and_clearing_needs_false() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let mut cs = Vec::new();
        assert!(!clear_false(&mut cs, "Reachable", "Reachable", "ok", None, t0), "nothing to clear");
        assert!(cs.is_empty());
        assert_eq!(set_false_since(&mut cs, "Reachable", "Down", "a", None, t0), (true, t0));
        assert_eq!(set_false_since(&mut cs, "Reachable", "Down", "b", None, t1), (false, t0));
        assert_eq!(cs[0].message, "b");
        assert!(clear_false(&mut cs, "Reachable", "Up", "back", None, t1));
        assert_eq!((cs[0].status.as_str(), cs[0].reason.as_str()), ("True", "Up"));
        assert_eq!(set_false_since(&mut cs, "Reachable", "Down", "c", None, t1), (true, t1));
    }

    #[test]
    fn progress_keeps_at_most_one_abnormal_condition_and_its_transition_time() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let mut cs = vec![condition(&[], READY, true, "Idle", "ok", Some(1), t0)];
        set_progress(&mut cs, Progress::Reconciling, "Provisioning", "launching", Some(1), t0);
        set_progress(&mut cs, Progress::Reconciling, "Provisioning", "polling", Some(2), t1);
        let r = find(&cs, RECONCILING).unwrap();
        assert_eq!((r.status.as_str(), r.last_transition_time.0, r.observed_generation), ("True", t0, Some(2)));
        set_progress(&mut cs, Progress::Stalled, "NoCapacity", "no offer fits", Some(2), t1);
        assert!(find(&cs, RECONCILING).is_none());
        assert_eq!(find(&cs, STALLED).map(|c| c.reason.as_str()), Some("NoCapacity"));
        set_progress(&mut cs, Progress::Settled, "Idle", "ok", Some(2), t1);
        assert_eq!(cs.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), [READY]);
        observe(&mut cs, Some(3));
        assert_eq!(cs[0].observed_generation, Some(3));
    }
}
