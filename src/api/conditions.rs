//! `metav1.Condition` helpers shared by every kind's status.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition messages are cut to this many characters.
pub const MAX_MESSAGE: usize = 300;

/// Builds a condition. `last_transition_time` is kept from `previous` when the status
/// did not change, so that timeouts computed from transition times stay stable.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
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
    reason: &str,
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
        reason: reason.to_string(),
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
    reason: &str,
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
    reason: &str,
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
}
