//! One instance's idle spells under `idleDuration: auto`: the deadline recorded in its
//! status ([`AutoIdle`]) and what each spell feeds back into its pool's [`ShapeGaps`]
//! for the instance's shape: `open` when the deadline is chosen, [`close_reused`] when a
//! run takes the instance, [`close_expired`] when the deadline passes. The gap of an
//! expired spell is known once a run of that shape has to launch a machine
//! ([`launched`]), as in the cost simulator: every expired spell is settled, the latest
//! one's gap joins the histogram.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AutoDecision, GapSummary, Reason};
use crate::api::instance::{AutoIdle, InstanceStatus};

/// The boot time assumed for an instance that has no `status.bootSeconds` (it was
/// never seen provisioning, e.g. a host added by hand or an instance from before kpool
/// recorded it).
pub const DEFAULT_BOOT: Duration = Duration::from_secs(60);
/// Expired spells kept per shape until a launch tells their gap (the oldest go first).
pub const MAX_EXPIRED_KEPT: usize = 16;

/// What a pool has learned about one machine shape's idle gaps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShapeGaps {
    /// The gap histogram and the costs that keep auto within twice the planner's.
    #[serde(default)]
    pub summary: GapSummary,
    /// Idle spells that ran out and whose gap (until a run of this shape had to launch a
    /// machine) is not known yet, latest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<ExpiredSpell>,
}

/// An idle spell that ran out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpiredSpell {
    /// When the instance had gone idle.
    pub since: Time,
    /// How long auto kept it, in seconds; absent once the costs have been settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<u64>,
    /// The boot time its deadline weighed, in seconds.
    pub boot_seconds: u64,
}

/// The key of an instance's shape in the pool's `status.idleGaps`: `BACKEND/INSTANCE_TYPE`.
pub fn shape(status: &InstanceStatus) -> String {
    match &status.offer {
        Some(o) => format!("{}/{}", o.backend, o.instance_type),
        None => "unknown/unknown".to_string(),
    }
}

/// What a new machine of this shape takes to boot: the instance's own launch-to-ready
/// time, else [`DEFAULT_BOOT`].
pub fn boot(status: &InstanceStatus) -> Duration {
    status.boot_seconds.map(Duration::from_secs).unwrap_or(DEFAULT_BOOT)
}

/// The deadline chosen for the instance's current idle spell, if one was.
pub fn current(status: &InstanceStatus) -> Option<&AutoIdle> {
    let since = status.idle_since.as_ref()?;
    status.idle_auto.as_ref().filter(|a| a.since == *since)
}

/// Chooses the deadline of the current idle spell from the shape's learned gaps
/// (`None`: nothing learned yet). `None` when the instance is not idle.
pub fn choose(status: &InstanceStatus, gaps: Option<&GapSummary>) -> Option<(AutoIdle, AutoDecision)> {
    let since = status.idle_since.as_ref()?.0;
    let boot = boot(status);
    let decision = gaps.cloned().unwrap_or_default().decide(boot);
    let idle_seconds = decision.idle.as_secs();
    let deadline = since.checked_add(jiff::SignedDuration::from_secs(idle_seconds as i64)).unwrap_or(Timestamp::MAX);
    let price = status.offer.as_ref().map_or(0.0, |o| o.price);
    let record = AutoIdle {
        since: Time(since),
        idle_seconds,
        deadline: Time(deadline),
        shape: shape(status),
        boot_seconds: boot.as_secs(),
        risk_seconds: decision.risk,
        reason: decision.explain(price),
    };
    Some((record, decision))
}

/// The decision a record was made from, as far as closing its spell needs it (its
/// deadline and the risk it reserved).
pub fn decision_of(record: &AutoIdle) -> AutoDecision {
    AutoDecision {
        idle: Duration::from_secs(record.idle_seconds),
        reason: Reason::Learned,
        gaps: 0,
        quantile: 0.0,
        expected_saving: 0.0,
        risk: record.risk_seconds,
    }
}

fn between(since: Timestamp, until: Timestamp) -> Duration {
    until.duration_since(since).try_into().unwrap_or(Duration::ZERO)
}

/// A run took the instance at `now`, in the spell `record` was chosen for.
pub fn close_reused(gaps: &mut ShapeGaps, record: &AutoIdle, now: Timestamp) {
    let gap = between(record.since.0, now);
    gaps.summary.close_reused(&decision_of(record), gap, Duration::from_secs(record.boot_seconds));
}

/// The run the instance was launched for took it: no idle gap of the pool's work, only
/// the spell's reserved risk is given back.
pub fn close_launched_for(gaps: &mut ShapeGaps, record: &AutoIdle) {
    gaps.summary.reserved = (gaps.summary.reserved - record.risk_seconds).max(0.0);
}

/// The spell `record` was chosen for ran out: the instance is terminated. Its gap stays
/// open until the next launch of the shape.
pub fn close_expired(gaps: &mut ShapeGaps, record: &AutoIdle) {
    gaps.summary.close_expired(&decision_of(record), Duration::from_secs(record.boot_seconds));
    gaps.expired.push(ExpiredSpell {
        since: record.since.clone(),
        idle_seconds: Some(record.idle_seconds),
        boot_seconds: record.boot_seconds,
    });
    let excess = gaps.expired.len().saturating_sub(MAX_EXPIRED_KEPT);
    // The oldest are dropped as if no run ever came: their costs stay as counted.
    gaps.expired.drain(..excess);
}

/// A run that arrived at `arrival` had to launch a machine of this shape: every expired
/// spell's gap was at least this long (the guard settles them all), and the latest
/// one's gap is this long (it joins the histogram).
/// Spells that went idle after `arrival` (recorded before this launch was seen) are
/// left for a later one.
pub fn launched(gaps: &mut ShapeGaps, arrival: Timestamp) {
    for e in gaps.expired.iter_mut().filter(|e| e.since.0 <= arrival) {
        if let Some(idle) = e.idle_seconds.take() {
            let boot = Duration::from_secs(e.boot_seconds);
            gaps.summary.settle(Duration::from_secs(idle), between(e.since.0, arrival), boot);
        }
    }
    if let Some(latest) = gaps.expired.iter().rposition(|e| e.since.0 <= arrival) {
        let latest = gaps.expired.remove(latest);
        gaps.summary.observe(between(latest.since.0, arrival));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::instance::InstancePhase;
    use crate::core::instance::{idle_deadline, next_step, Step};
    use crate::core::policy::{effective_policy, Origin};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn idle_status(since: i64, boot: Option<u64>) -> InstanceStatus {
        InstanceStatus {
            phase: InstancePhase::Idle,
            pool: Some("p".into()),
            machine_name: Some("m".into()),
            idle_since: Some(Time(at(since))),
            boot_seconds: boot,
            ..Default::default()
        }
    }

    #[test]
    fn an_auto_instance_decides_once_per_spell_then_waits_for_that_deadline() {
        let spec = crate::api::policy::PolicySpec { idle_duration: Some("auto".into()), ..Default::default() };
        let policy = effective_policy(&[&spec], Origin::Run).unwrap();
        let mut st = idle_status(0, Some(90));
        assert_eq!(next_step(&st, &policy, at(1)), Step::DecideIdle);
        let (record, decision) = choose(&st, None).unwrap();
        assert_eq!((record.idle_seconds, record.boot_seconds, decision.reason), (90, 90, Reason::Learning));
        assert!(record.reason.contains("one boot, ski-rental"), "{}", record.reason);
        st.idle_auto = Some(record);
        assert_eq!(idle_deadline(&st, &policy), Some(at(90)));
        assert_eq!(next_step(&st, &policy, at(1)), Step::IdleUntil(Some(at(90))));
        assert_eq!(next_step(&st, &policy, at(90)), Step::Expire);
        // A new spell (the instance was taken and let go): the old record is not its own.
        st.idle_since = Some(Time(at(500)));
        assert_eq!(next_step(&st, &policy, at(501)), Step::DecideIdle);
        // Without its own boot time, the default one.
        assert_eq!(choose(&idle_status(0, None), None).unwrap().0.idle_seconds, DEFAULT_BOOT.as_secs());
    }

    #[test]
    fn expired_spells_wait_for_a_launch_to_tell_their_gap() {
        let st = idle_status(0, Some(100));
        let (record, _) = choose(&st, None).unwrap();
        let mut gaps = ShapeGaps::default();
        close_expired(&mut gaps, &record);
        assert_eq!((gaps.summary.auto_cost, gaps.summary.bound_cost), (200.0, 100.0));
        assert_eq!(gaps.summary.gaps(), 0);
        // A launch for a run that arrived before this spell began tells nothing of it.
        launched(&mut gaps, at(-10));
        assert_eq!((gaps.expired.len(), gaps.summary.gaps()), (1, 0));
        // One at 1000 s: the gap was 1000 s; the planner would have paid one boot.
        launched(&mut gaps, at(1000));
        assert!(gaps.expired.is_empty());
        assert_eq!((gaps.summary.gaps(), gaps.summary.bound_cost), (1, 100.0));
        // Only so many expired spells are kept.
        for _ in 0..MAX_EXPIRED_KEPT + 3 {
            close_expired(&mut gaps, &record);
        }
        assert_eq!(gaps.expired.len(), MAX_EXPIRED_KEPT);
    }

    #[test]
    fn the_boot_time_is_first_attempt_to_ready() {
        let mut st = InstanceStatus {
            phase: InstancePhase::Provisioning,
            provisioning_started_at: Some(Time(at(0))),
            ..Default::default()
        };
        let machine = crate::core::machine::Machine {
            name: "m".into(),
            provider_id: "p".into(),
            state: crate::core::machine::MachineState::Running,
            address: None,
            tags: Default::default(),
        };
        crate::core::instance::observe_machine(&mut st, &machine, at(95));
        assert_eq!((st.phase, st.boot_seconds), (InstancePhase::Idle, Some(95)));
        assert_eq!(boot(&st), Duration::from_secs(95));
    }

    #[test]
    fn a_reused_spell_closes_with_its_gap_and_frees_its_risk() {
        let st = idle_status(0, Some(100));
        let mut gaps = ShapeGaps::default();
        let mut record = choose(&st, None).unwrap().0;
        record.risk_seconds = 30.0;
        gaps.summary.reserved = 30.0;
        close_reused(&mut gaps, &record, at(40));
        assert_eq!((gaps.summary.reserved, gaps.summary.auto_cost, gaps.summary.bound_cost), (0.0, 40.0, 40.0));
        assert_eq!(gaps.summary.gaps(), 1);
    }
}
