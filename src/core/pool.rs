//! Pools: which pool an object belongs to, whether the pool has room, and what the
//! pool's status says.
//!
//! # The capacity rules
//! A pool's `maxInstances` is counted for two questions, each with its own rule, and
//! nowhere else:
//! - **Admission** — may this Pending instance launch now? [`holding`]: the instances
//!   that hold a machine or are launching one ([`holds_capacity`]); Pending ones, which
//!   wait for admission themselves, do not count.
//! - **Creation** — may one more instance be created (for a run, or to keep the pool
//!   warm), and is the pool at capacity? [`occupying`]: every instance that has not
//!   ended, admitted or not ([`occupies_slot`]).
//!
//! They differ on purpose, and must: counted for admission, Pending instances that wait
//! for the last slot would each count the other and none would ever launch; counted only
//! once launched for creation, waiting runs would each create an instance past
//! `maxInstances` that could only wait for admission. Both reach [`fits`]/[`room`].

use std::collections::HashSet;

use crate::api::instance::{Instance, InstancePhase, InstanceStatus};
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
/// counts against `maxInstances` when a launch is admitted ([`holding`]).
pub fn holds_capacity(phase: InstancePhase) -> bool {
    matches!(
        phase,
        InstancePhase::Provisioning | InstancePhase::Idle | InstancePhase::Busy | InstancePhase::Terminating
    )
}

/// Whether an instance of some pool takes one of its `maxInstances` slots when a new
/// instance is to be created: every instance that has not ended, launched or not (one
/// that has not launched yet will, once admitted). Placement counts so, so that runs do
/// not create instances that could only wait for room.
pub fn occupies_slot(status: Option<&InstanceStatus>) -> bool {
    status.is_none_or(|s| !matches!(s.phase, InstancePhase::Terminated | InstancePhase::Failed))
}

/// Admission's count (see the module docs): the names of the instances of `pool` that
/// hold capacity ([`holds_capacity`]), `except` the one whose launch is being admitted.
/// Launches admitted but not shown yet are reserved on top by the caller.
pub fn holding<'a>(instances: impl IntoIterator<Item = &'a Instance>, pool: &str, except: &str) -> HashSet<String> {
    instances
        .into_iter()
        .filter(|i| i.metadata.name.as_deref() != Some(except))
        .filter(|i| i.status.as_ref().is_some_and(|s| s.pool.as_deref() == Some(pool) && holds_capacity(s.phase)))
        .filter_map(|i| i.metadata.name.clone())
        .collect()
}

/// Creation's count (see the module docs): the instances of `pool` that occupy a slot
/// ([`occupies_slot`]); instances not yet resolved to a pool count too, as they may turn
/// out to be this pool's.
pub fn occupying<'a>(instances: impl IntoIterator<Item = &'a Instance>, pool: &str) -> usize {
    instances
        .into_iter()
        .filter(|i| i.status.as_ref().and_then(|s| s.pool.as_deref()).is_none_or(|p| p == pool))
        .filter(|i| occupies_slot(i.status.as_ref()))
        .count()
}

/// The capacity rule: how many more instances fit under `maxInstances` in a pool that
/// holds `held` instances and has promised `reserved` more slots (launches admitted but
/// not yet visible, runs ahead in the queue that wait for room). `None`: no limit.
///
/// Every decision about `maxInstances` goes through here: admitting a launch (`held`:
/// instances that [`hold_capacity`](holds_capacity), `reserved`: admissions the API does
/// not show yet), creating an instance for a run (`held`: [`occupying`], `reserved`:
/// runs ahead), the pool's `AtCapacity` condition and how many warm instances it may
/// start.
pub fn room(max_instances: Option<u32>, held: usize, reserved: usize) -> Option<usize> {
    max_instances.map(|max| (max as usize).saturating_sub(held.saturating_add(reserved)))
}

/// Whether one more instance fits ([`room`]).
pub fn fits(max_instances: Option<u32>, held: usize, reserved: usize) -> bool {
    room(max_instances, held, reserved) != Some(0)
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
    let per_second = price_per_second(st);
    let (total, busy, idle) = crate::core::instance::accrued_within(st, Some(since), now);
    crate::api::pool::Spend {
        dollars: total * per_second,
        busy_dollars: busy * per_second,
        idle_dollars: idle * per_second,
        instances: u64::from(total > 0.0),
        ..Default::default()
    }
}

/// The instance's offer price per second (0 without an offer or a finite price).
fn price_per_second(st: &crate::api::instance::InstanceStatus) -> f64 {
    st.offer.as_ref().map_or(0.0, |o| if o.price.is_finite() { o.price / 3600.0 } else { 0.0 })
}

fn spend_whole(inst: &Instance, now: jiff::Timestamp) -> crate::api::pool::Spend {
    let Some(st) = inst.status.as_ref() else { return Default::default() };
    let Some(usage) = st.usage.as_ref().filter(|u| u.launched_at.is_some()) else { return Default::default() };
    let per_second = price_per_second(st);
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
        assert!(fits(None, 1_000, 1_000));
        assert!(fits(Some(2), 1, 0));
        assert!(!fits(Some(2), 2, 0));
        assert!(!fits(Some(0), 0, 0));
        assert_eq!(room(None, 5, 5), None);
        assert_eq!(room(Some(4), 1, 0), Some(3));
        assert_eq!(room(Some(4), 5, 0), Some(0), "over the limit (maxInstances lowered) is no room");
        assert_eq!(room(Some(4), usize::MAX, 1), Some(0));
    }

    #[test]
    fn reservations_take_room_like_held_instances() {
        // Two held, one admitted launch the API does not show yet: the fourth fits, the
        // fifth does not.
        assert!(fits(Some(4), 2, 1));
        assert!(!fits(Some(4), 2, 2));
        assert!(!fits(Some(4), 0, 4), "runs ahead in the queue hold the free slots");
        assert_eq!(room(Some(4), 2, 1), Some(1));
    }

    #[test]
    fn every_instance_that_has_not_ended_occupies_a_slot_of_its_pool() {
        let inst = |name: &str, pool: Option<&str>, phase: Option<InstancePhase>| {
            let mut i = Instance::new(name, Default::default());
            i.status = phase.map(|phase| InstanceStatus { phase, pool: pool.map(String::from), ..Default::default() });
            i
        };
        let all = [
            inst("new", None, None),
            inst("unresolved", None, Some(InstancePhase::Pending)),
            inst("pending", Some("p"), Some(InstancePhase::Pending)),
            inst("up", Some("p"), Some(InstancePhase::Idle)),
            inst("ending", Some("p"), Some(InstancePhase::Terminating)),
            inst("ended", Some("p"), Some(InstancePhase::Terminated)),
            inst("failed", Some("p"), Some(InstancePhase::Failed)),
            inst("other", Some("q"), Some(InstancePhase::Busy)),
        ];
        assert_eq!(occupying(&all, "p"), 5);
        assert_eq!(occupying(&all, "q"), 3);
    }

    fn member(name: &str, phase: InstancePhase) -> Instance {
        let mut i = Instance::new(name, Default::default());
        i.status = Some(InstanceStatus { phase, pool: Some("p".into()), ..Default::default() });
        i
    }

    #[test]
    fn admission_counts_only_machines_so_instances_waiting_for_the_last_slot_cannot_block_each_other() {
        // maxInstances 2: one machine up, two instances waiting for the last slot.
        let all = [
            member("up", InstancePhase::Idle),
            member("a", InstancePhase::Pending),
            member("b", InstancePhase::Pending),
        ];
        let held = holding(&all, "p", "a");
        assert_eq!(held, HashSet::from(["up".to_string()]));
        assert!(fits(Some(2), held.len(), 0), "a is admitted");
        // Had admission counted every instance not ended, a and b would each count the
        // other and neither would ever launch.
        assert!(!fits(Some(2), occupying(all.iter().filter(|i| i.metadata.name.as_deref() != Some("a")), "p"), 0));
        // Every phase that holds or is about to hold a machine counts; ended ones and
        // other pools' do not.
        let all = [
            member("launching", InstancePhase::Provisioning),
            member("busy", InstancePhase::Busy),
            member("ending", InstancePhase::Terminating),
            member("ended", InstancePhase::Terminated),
            member("failed", InstancePhase::Failed),
            Instance {
                status: Some(InstanceStatus {
                    phase: InstancePhase::Idle,
                    pool: Some("q".into()),
                    ..Default::default()
                }),
                ..Instance::new("other", Default::default())
            },
        ];
        assert_eq!(holding(&all, "p", "me").len(), 3);
    }

    #[test]
    fn creation_counts_every_instance_not_ended_so_runs_create_none_that_could_only_wait() {
        // maxInstances 2: one busy machine, one instance created for a waiting run and not
        // admitted yet. Another run must wait rather than create a third.
        let all = [member("busy", InstancePhase::Busy), member("for-r1", InstancePhase::Pending)];
        assert!(!fits(Some(2), occupying(&all, "p"), 0));
        // Had creation counted only machines, it would create an instance that could only
        // wait for admission.
        assert!(fits(Some(2), holding(&all, "p", "").len(), 0));
        // The pool's status says the same as creation: its instances in use are the ones
        // occupying a slot.
        let s = pool_counts(all.iter());
        assert_eq!((s.provisioning + s.idle + s.busy + s.terminating) as usize, occupying(&all, "p"));
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
