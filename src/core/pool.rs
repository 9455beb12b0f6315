//! Pools: which pool an object belongs to, whether the pool has room, and what the
//! pool's status says.

use crate::api::instance::{Instance, InstancePhase};
use crate::api::pool::{Pool, PoolStatus, DEFAULT_POOL_ANNOTATION, DEFAULT_POOL_NAME};

/// The pool an object belongs to: its own `spec.pool`, else the namespace's pool
/// annotated `kpool.dev/default: "true"` (the oldest, then by name, if several), else
/// `default-pool`.
pub fn resolve_pool_name(spec_pool: Option<&str>, pools_in_namespace: &[&Pool]) -> String {
    if let Some(p) = spec_pool.filter(|p| !p.is_empty()) {
        return p.to_string();
    }
    let mut marked: Vec<&&Pool> = pools_in_namespace
        .iter()
        .filter(|p| {
            p.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_POOL_ANNOTATION)).is_some_and(|v| v == "true")
        })
        .collect();
    marked.sort_by(|a, b| {
        let ka = (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.metadata.name.as_deref());
        let kb = (b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.metadata.name.as_deref());
        ka.cmp(&kb)
    });
    marked.first().and_then(|p| p.metadata.name.clone()).unwrap_or_else(|| DEFAULT_POOL_NAME.to_string())
}

/// Whether an instance in this phase holds (or is about to hold) a machine and so
/// counts against `maxInstances`.
pub fn holds_capacity(phase: InstancePhase) -> bool {
    matches!(
        phase,
        InstancePhase::Provisioning | InstancePhase::Idle | InstancePhase::Busy | InstancePhase::Terminating
    )
}

/// Whether one more instance may be admitted, given how many already hold capacity.
pub fn has_room(max_instances: Option<u32>, holding: usize) -> bool {
    max_instances.is_none_or(|max| holding < max as usize)
}

/// Counts a pool's instances by phase and sums the price of those holding machines.
pub fn pool_counts<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> PoolStatus {
    let mut s = PoolStatus::default();
    for i in instances {
        let Some(st) = i.status.as_ref() else {
            s.provisioning += 1;
            s.total += 1;
            continue;
        };
        match st.phase {
            InstancePhase::Pending | InstancePhase::Provisioning => s.provisioning += 1,
            InstancePhase::Idle => s.idle += 1,
            InstancePhase::Busy => s.busy += 1,
            InstancePhase::Terminating => s.terminating += 1,
            InstancePhase::Failed => s.failed += 1,
            InstancePhase::Terminated => continue,
        }
        if st.phase != InstancePhase::Failed {
            s.total += 1;
        }
        s.price_per_hour += crate::core::budget::held_price(st);
    }
    s.price_per_hour = (s.price_per_hour * 10_000.0).round() / 10_000.0;
    s
}

/// What one instance has spent by `now` (nothing before its launch), and the runs it
/// served ([`Spend`] says which count as reused).
pub fn spend_of(inst: &Instance, now: jiff::Timestamp) -> crate::api::pool::Spend {
    spend_within(inst, None, now)
}

/// [`spend_of`] for the part of the instance's life after `since`: dollars in proportion
/// (busy and idle alike). Its runs and its spells against 5 minutes carry no times, so
/// they count only for an instance launched after `since`.
pub fn spend_within(inst: &Instance, since: Option<jiff::Timestamp>, now: jiff::Timestamp) -> crate::api::pool::Spend {
    let whole = spend_whole(inst, now);
    let Some(since) = since else { return whole };
    let Some(st) = inst.status.as_ref() else { return whole };
    let launched = st.usage.as_ref().and_then(|u| u.launched_at.as_ref()).map(|t| t.0);
    if launched.is_some_and(|l| l >= since) {
        return whole;
    }
    let per_second = st.offer.as_ref().map_or(0.0, |o| if o.price.is_finite() { o.price / 3600.0 } else { 0.0 });
    let (total, busy, idle) = crate::core::instance::accrued_within(st, Some(since), now);
    crate::api::pool::Spend {
        dollars: total * per_second,
        busy_dollars: busy * per_second,
        idle_dollars: idle * per_second,
        instances: u64::from(total > 0.0),
        ..Default::default()
    }
}

fn spend_whole(inst: &Instance, now: jiff::Timestamp) -> crate::api::pool::Spend {
    let Some(st) = inst.status.as_ref() else { return Default::default() };
    let Some(usage) = st.usage.as_ref().filter(|u| u.launched_at.is_some()) else { return Default::default() };
    let per_second = st.offer.as_ref().map_or(0.0, |o| if o.price.is_finite() { o.price / 3600.0 } else { 0.0 });
    let a = crate::core::instance::accrued(st, now);
    let runs = u64::from(usage.runs);
    let first_was_its_own = inst.provisioned_for().is_some() && runs > 0;
    crate::api::pool::Spend {
        dollars: a.total as f64 * per_second,
        busy_dollars: a.busy as f64 * per_second,
        idle_dollars: a.idle as f64 * per_second,
        runs,
        reused_runs: runs - u64::from(first_was_its_own),
        instances: 1,
        saved_vs_5m_dollars: usage.saved_vs_5m_seconds as f64 * per_second,
        settled_vs_5m: u64::from(usage.settled_vs_5m),
        unsettled_vs_5m: u64::from(usage.unsettled_vs_5m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::instance::InstanceStatus;
    use crate::api::offer::Offer;
    use crate::api::pool::PoolSpec;
    use std::collections::BTreeMap;

    fn pool(name: &str, default: bool, created: &str) -> Pool {
        let mut p = Pool::new(name, PoolSpec::default());
        if default {
            p.metadata.annotations = Some(BTreeMap::from([(DEFAULT_POOL_ANNOTATION.to_string(), "true".to_string())]));
        }
        p.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().unwrap()));
        p
    }

    #[test]
    fn spec_pool_wins_then_marked_default_then_default_pool() {
        let a = pool("a", false, "2026-01-01T00:00:00Z");
        let b = pool("b", true, "2026-01-02T00:00:00Z");
        let c = pool("c", true, "2026-01-01T00:00:00Z");
        assert_eq!(resolve_pool_name(Some("x"), &[&a, &b]), "x");
        assert_eq!(resolve_pool_name(None, &[&a, &b]), "b");
        assert_eq!(resolve_pool_name(None, &[&a, &b, &c]), "c", "the oldest marked pool wins");
        assert_eq!(resolve_pool_name(None, &[&a]), DEFAULT_POOL_NAME);
        assert_eq!(resolve_pool_name(Some(""), &[]), DEFAULT_POOL_NAME);
    }

    #[test]
    fn room_is_bounded_by_max_instances() {
        assert!(has_room(None, 1_000));
        assert!(has_room(Some(2), 1));
        assert!(!has_room(Some(2), 2));
        assert!(!has_room(Some(0), 0));
    }

    #[test]
    fn counts_by_phase_and_price() {
        let mk = |phase, price| {
            let mut i = Instance::new("i", Default::default());
            i.status = Some(InstanceStatus {
                phase,
                offer: Some(Offer { price, ..Offer::default() }),
                ..InstanceStatus::default()
            });
            i
        };
        let all = [
            mk(InstancePhase::Idle, 1.5),
            mk(InstancePhase::Busy, 2.25),
            mk(InstancePhase::Provisioning, 1.0),
            mk(InstancePhase::Pending, 9.0),
            mk(InstancePhase::Terminated, 9.0),
            mk(InstancePhase::Failed, 9.0),
        ];
        let s = pool_counts(all.iter());
        assert_eq!((s.idle, s.busy, s.provisioning, s.failed, s.total), (1, 1, 2, 1, 4));
        assert_eq!(s.price_per_hour, 4.75);
    }
}
