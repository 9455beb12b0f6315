//! One instance's idle spells under `idleDuration: auto`: the deadline recorded in its
//! status ([`AutoIdle`]) and what each spell feeds back into its pool's [`ShapeGaps`]
//! for the instance's shape: `open` when the deadline is chosen, [`close_reused`] when a
//! run takes the instance, [`close_expired`] when the deadline passes. The gap of an
//! expired spell is known once a run of that shape has to launch a machine
//! ([`launched`]), as in the cost simulator: every expired spell is settled, the latest
//! one's gap joins the histogram.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{add, AutoDecision, GapSummary, Reason, SpellContext, MAX_CONTEXTS};
use crate::api::instance::{AutoIdle, InstancePhase, InstanceStatus};
use crate::api::pool::SettledLater;

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
    /// The same gaps again, split by the context their spell started in
    /// ([`SpellContext::key`]): histograms without trailing empty buckets, at most
    /// [`MAX_CONTEXTS`]. A status from before contexts reads as none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contexts: BTreeMap<String, Vec<u32>>,
    /// Auto spells that ended before 5 minutes, waiting for a launch of the shape to tell
    /// what 5 minutes would have cost ([`settle_vs_5m`]), oldest first, at most
    /// [`MAX_PENDING_VS_5M`] (past it the oldest stays unsettled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_vs_5m: Vec<PendingVs5m>,
    /// What the last observation settled against 5 minutes, for the caller to add to the
    /// pool's `status.cost.settledLaterVs5m` in the same write (not kept here).
    #[serde(skip)]
    pub settled_vs_5m: SettledLater,
}

/// An auto spell that ended at `idleSeconds`, before 5 minutes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingVs5m {
    /// When the instance had gone idle.
    pub since: Time,
    pub idle_seconds: u64,
    pub boot_seconds: u64,
    /// The instance's price, US dollars per hour.
    pub price: f64,
    /// How many spells this stands for: past [`MAX_PENDING_VS_5M`], the oldest spell
    /// that has a later one alike (same idle and boot seconds, same price) is merged into
    /// it, keeping the later `since` (a launch within its 5 minutes is then counted for
    /// one of them; the others wait).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
}

/// Auto spells kept per shape until their 5-minute counterfactual is known.
pub const MAX_PENDING_VS_5M: usize = 32;

impl ShapeGaps {
    /// A gap of a spell that started in context `key` (if known) joins the shape's
    /// histogram and the context's.
    pub fn observe(&mut self, gap: Duration, key: Option<&str>) {
        self.summary.observe(gap);
        if let Some(key) = key {
            self.observe_context(key, gap);
        }
    }

    /// A gap of a spell that started in context `key` joins the context's histogram.
    pub fn observe_context(&mut self, key: &str, gap: Duration) {
        if !self.contexts.contains_key(key) && self.contexts.len() >= MAX_CONTEXTS {
            return;
        }
        let counts = self.contexts.entry(key.to_string()).or_default();
        add(counts, gap);
        while counts.last() == Some(&0) {
            counts.pop();
        }
    }

    /// The deadline for a spell starting in `context`: from the context's gaps once
    /// there are enough of them, else the shape's.
    pub fn decide(&self, context: &SpellContext, boot: Duration) -> AutoDecision {
        let key = context.key(boot);
        let local = self.contexts.get(&key).map(|c| (key.as_str(), &c[..]));
        self.summary.decide_within(local, boot)
    }
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
    /// The context the spell started in ([`SpellContext::key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// How many spells this stands for: past [`MAX_EXPIRED_KEPT`], the oldest spell that
    /// has a later one alike (same idle and boot seconds) is merged into it, which keeps the later
    /// `since` (its gap, shorter, never overstates theirs; the guard settles each), and
    /// its context only when theirs was the same.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// The key of an instance's shape in the pool's `status.idleGaps`: `BACKEND/INSTANCE_TYPE`.
pub fn shape(status: &InstanceStatus) -> String {
    match &status.offer {
        Some(o) => format!("{}/{}", o.backend, o.instance_type),
        None => "unknown/unknown".to_string(),
    }
}

/// The context of the idle spell an instance (`name`, `status`) starts: the other
/// instances of its pool and shape idle among `instances` (name, status), and the time
/// from the pool's last run arrival up to the spell's start.
pub fn context<'a>(
    name: &str,
    status: &InstanceStatus,
    instances: impl IntoIterator<Item = (&'a str, &'a InstanceStatus)>,
    last_arrival: Option<Timestamp>,
) -> SpellContext {
    let me = shape(status);
    let idle_others = instances
        .into_iter()
        .filter(|(n, s)| *n != name && s.phase == InstancePhase::Idle && s.pool == status.pool && shape(s) == me)
        .count() as u32;
    let since_arrival = match (&status.idle_since, last_arrival) {
        (Some(since), Some(at)) => Some(between(at, since.0)),
        _ => None,
    };
    SpellContext { idle_others, since_arrival }
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

/// Chooses the deadline of the current idle spell, started in `context`, from the
/// shape's learned gaps (`None`: nothing learned yet). `None` when the instance is not
/// idle.
pub fn choose(
    status: &InstanceStatus,
    gaps: Option<&ShapeGaps>,
    context: &SpellContext,
) -> Option<(AutoIdle, AutoDecision)> {
    let since = status.idle_since.as_ref()?.0;
    let boot = boot(status);
    let decision = gaps.cloned().unwrap_or_default().decide(context, boot);
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
        context: Some(context.key(boot)),
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
        context: record.context.clone(),
    }
}

fn between(since: Timestamp, until: Timestamp) -> Duration {
    until.duration_since(since).try_into().unwrap_or(Duration::ZERO)
}

/// A run took the instance at `now`, in the spell `record` was chosen for.
pub fn close_reused(gaps: &mut ShapeGaps, record: &AutoIdle, now: Timestamp) {
    let gap = between(record.since.0, now);
    gaps.summary.close_reused(&decision_of(record), gap, Duration::from_secs(record.boot_seconds));
    if let Some(key) = &record.context {
        gaps.observe_context(key, gap);
    }
}

/// The run the instance was launched for took it: no idle gap of the pool's work, only
/// the spell's reserved risk is given back.
pub fn close_launched_for(gaps: &mut ShapeGaps, record: &AutoIdle) {
    gaps.summary.reserved = (gaps.summary.reserved - record.risk_seconds).max(0.0);
}

/// The spell `record` was chosen for ran out: the instance (at `price` $/hour) is
/// terminated. Its gap stays open until the next launch of the shape, and so does its
/// 5-minute counterfactual when it ended before 5 minutes.
pub fn close_expired(gaps: &mut ShapeGaps, record: &AutoIdle, price: f64) {
    if record.idle_seconds < FIVE_MINUTES {
        gaps.pending_vs_5m.push(PendingVs5m {
            since: record.since.clone(),
            idle_seconds: record.idle_seconds,
            boot_seconds: record.boot_seconds,
            price,
            count: 1,
        });
        while gaps.pending_vs_5m.len() > MAX_PENDING_VS_5M {
            let p = &gaps.pending_vs_5m;
            let alike = |a: &PendingVs5m, b: &PendingVs5m| {
                (a.idle_seconds, a.boot_seconds, a.price) == (b.idle_seconds, b.boot_seconds, b.price)
            };
            let pair = (0..p.len()).find_map(|i| (i + 1..p.len()).find(|&j| alike(&p[i], &p[j])).map(|j| (i, j)));
            let Some((older, later)) = pair else {
                // All unlike: the oldest stays unsettled.
                gaps.pending_vs_5m.remove(0);
                continue;
            };
            let older = gaps.pending_vs_5m.remove(older);
            gaps.pending_vs_5m[later - 1].count += older.count;
        }
    }
    gaps.summary.close_expired(&decision_of(record), Duration::from_secs(record.boot_seconds));
    gaps.expired.push(ExpiredSpell {
        since: record.since.clone(),
        idle_seconds: Some(record.idle_seconds),
        boot_seconds: record.boot_seconds,
        context: record.context.clone(),
        count: 1,
    });
    while gaps.expired.len() > MAX_EXPIRED_KEPT {
        let class = |e: &ExpiredSpell| (e.idle_seconds, e.boot_seconds);
        let e = &gaps.expired;
        let pair = (0..e.len()).find_map(|i| (i + 1..e.len()).find(|&j| class(&e[j]) == class(&e[i])).map(|j| (i, j)));
        let Some((older, later)) = pair else {
            // All unlike: the oldest is dropped as if no run ever came (its costs stay as
            // counted).
            gaps.expired.remove(0);
            continue;
        };
        let older = gaps.expired.remove(older);
        let e = &mut gaps.expired[later - 1];
        e.count += older.count;
        e.since = e.since.clone().max(older.since);
        if e.context != older.context {
            e.context = None;
        }
    }
}

/// A run that arrived at `arrival` launched a machine of the shape (launches are seen in
/// arrival order): the 5-minute counterfactual of pending spells (auto ended them at
/// `d` before 5 minutes) is known for those whose 5 minutes ended before it, no launch
/// having come in time (5 minutes would have idled 300 s; both then pay the boot of the
/// launch to come: saved `300 − d`), and for the oldest one whose 5 minutes cover it, `g`
/// after its start (5 minutes would have idled `g` and kept the instance for this run;
/// auto idled `d` and this run paid a boot: saved `g − d − boot`). The rest wait for a
/// later launch. Each sum goes into `gaps.settled_vs_5m`.
///
/// Not known to the controller, so not counted: a run that arrived within those 5
/// minutes and was taken by another idle instance (5 minutes would have had one more
/// instance idle for it, which changes no run's boot).
pub fn settle_vs_5m(gaps: &mut ShapeGaps, arrival: Timestamp) {
    let mut settle = |p: &PendingVs5m, seconds: f64, spells: u32| {
        gaps.settled_vs_5m.dollars += seconds * p.price / 3600.0 * f64::from(spells);
        gaps.settled_vs_5m.spells += u64::from(spells);
    };
    let five = FIVE_MINUTES as f64;
    let mut kept = Vec::new();
    let mut reused = false;
    for mut p in std::mem::take(&mut gaps.pending_vs_5m) {
        let d = p.idle_seconds as f64;
        match p.since.0 <= arrival {
            false => kept.push(p),
            true => {
                let g = between(p.since.0, arrival).as_secs_f64();
                if g < d {
                    // A run that launched while the instance was still idle: not one it
                    // would have served.
                    kept.push(p);
                } else if g > five {
                    settle(&p, five - d, p.count);
                } else if !reused {
                    reused = true;
                    settle(&p, g - d - p.boot_seconds as f64, 1);
                    p.count -= 1;
                    if p.count > 0 {
                        kept.push(p);
                    }
                } else {
                    kept.push(p);
                }
            }
        }
    }
    gaps.pending_vs_5m = kept;
}

/// The fixed idle duration auto's savings are measured against.
pub const FIVE_MINUTES: u64 = 300;

/// A run took the instance at `now`, ending the spell `record` was chosen for: what a
/// fixed 5 minutes would have spent on that spell (`min(g, 5m)`, plus a boot when the
/// gap `g` passed 5 minutes) against auto's `g`, into the instance's usage.
pub fn saving_reused(status: &mut InstanceStatus, record: &AutoIdle, now: Timestamp) {
    let g = between(record.since.0, now).as_secs();
    let five = g.min(FIVE_MINUTES) + if g > FIVE_MINUTES { record.boot_seconds } else { 0 };
    settle_saving(status, five as i64 - g as i64);
}

/// Auto ended the spell `record` was chosen for at its deadline. At or past 5 minutes a
/// fixed 5 minutes would have ended it too, at 5 minutes (the next run pays a boot
/// either way); before, whether a run would have come in time is not known yet: counted
/// apart on the instance, and settled by the pool at the next launch of the shape
/// ([`close_expired`] keeps it pending, [`settle_vs_5m`] settles it).
pub fn saving_expired(status: &mut InstanceStatus, record: &AutoIdle) {
    if record.idle_seconds >= FIVE_MINUTES {
        settle_saving(status, FIVE_MINUTES as i64 - record.idle_seconds as i64);
    } else {
        status.usage.get_or_insert_with(Default::default).unsettled_vs_5m += 1;
    }
}

fn settle_saving(status: &mut InstanceStatus, seconds: i64) {
    let usage = status.usage.get_or_insert_with(Default::default);
    usage.saved_vs_5m_seconds += seconds;
    usage.settled_vs_5m += 1;
}

/// A run that arrived at `arrival` had to launch a machine of this shape: every expired
/// spell's gap was at least this long (the guard settles them all), and the latest
/// one's gap is this long (it joins the histogram).
/// Spells that went idle after `arrival` (recorded before this launch was seen) are
/// left for a later one.
pub fn launched(gaps: &mut ShapeGaps, arrival: Timestamp) {
    settle_vs_5m(gaps, arrival);
    for e in gaps.expired.iter_mut().filter(|e| e.since.0 <= arrival) {
        if let Some(idle) = e.idle_seconds.take() {
            let boot = Duration::from_secs(e.boot_seconds);
            for _ in 0..e.count {
                gaps.summary.settle(Duration::from_secs(idle), between(e.since.0, arrival), boot);
            }
        }
    }
    if let Some(latest) = gaps.expired.iter().rposition(|e| e.since.0 <= arrival) {
        let e = &mut gaps.expired[latest];
        let (gap, context) = (between(e.since.0, arrival), e.context.clone());
        e.count -= 1;
        if e.count == 0 {
            gaps.expired.remove(latest);
        }
        gaps.observe(gap, context.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let (record, decision) = choose(&st, None, &Default::default()).unwrap();
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
        assert_eq!(
            choose(&idle_status(0, None), None, &Default::default()).unwrap().0.idle_seconds,
            DEFAULT_BOOT.as_secs()
        );
    }

    #[test]
    fn expired_spells_wait_for_a_launch_to_tell_their_gap() {
        let st = idle_status(0, Some(100));
        let (record, _) = choose(&st, None, &Default::default()).unwrap();
        let mut gaps = ShapeGaps::default();
        close_expired(&mut gaps, &record, 1.0);
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
            close_expired(&mut gaps, &record, 1.0);
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
        let mut record = choose(&st, None, &Default::default()).unwrap().0;
        record.risk_seconds = 30.0;
        gaps.summary.reserved = 30.0;
        close_reused(&mut gaps, &record, at(40));
        assert_eq!((gaps.summary.reserved, gaps.summary.auto_cost, gaps.summary.bound_cost), (0.0, 40.0, 40.0));
        assert_eq!(gaps.summary.gaps(), 1);
    }

    fn on(shape: &str, pool: &str, phase: InstancePhase) -> InstanceStatus {
        let (backend, instance_type) = shape.split_once('/').unwrap();
        InstanceStatus {
            phase,
            pool: Some(pool.into()),
            offer: Some(crate::api::offer::Offer {
                backend: backend.into(),
                instance_type: instance_type.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_spells_context_counts_the_pools_other_idle_instances_of_its_shape_and_the_last_arrival() {
        let mut me = on("aws/m5", "p", InstancePhase::Idle);
        me.idle_since = Some(Time(at(100)));
        let others = [
            ("me", me.clone()),
            ("a", on("aws/m5", "p", InstancePhase::Idle)),
            ("b", on("aws/m5", "p", InstancePhase::Idle)),
            ("busy", on("aws/m5", "p", InstancePhase::Busy)),
            ("other-pool", on("aws/m5", "q", InstancePhase::Idle)),
            ("other-shape", on("aws/c5", "p", InstancePhase::Idle)),
        ];
        let c = context("me", &me, others.iter().map(|(n, s)| (*n, s)), Some(at(40)));
        assert_eq!(c, SpellContext { idle_others: 2, since_arrival: Some(Duration::from_secs(60)) });
        assert_eq!(context("me", &me, [], None), SpellContext { idle_others: 0, since_arrival: None });
        // The context is recorded with the deadline, and keys what the spell teaches.
        let mut st = idle_status(100, Some(180));
        st.offer = me.offer.clone();
        let (record, _) = choose(&st, None, &c).unwrap();
        assert_eq!(record.context.as_deref(), Some("i2a1"));
        let mut gaps = ShapeGaps::default();
        close_reused(&mut gaps, &record, at(130));
        assert_eq!((gaps.summary.gaps(), gaps.contexts["i2a1"].iter().sum::<u32>()), (1, 1));
        close_expired(&mut gaps, &record, 1.0);
        launched(&mut gaps, at(1000));
        assert_eq!((gaps.summary.gaps(), gaps.contexts["i2a1"].iter().sum::<u32>()), (2, 2));
    }

    /// Against 5 minutes, by hand (boot 100 s): reused after 200 s: 5m idles 200 s too,
    /// saved 0; after 350 s: 5m idles 300 s then boots 100 s, saved 50; after 1000 s: 5m
    /// pays 400, auto 1000, saved -600; ended by auto at 600 s: 5m would have ended it at
    /// 300 s, saved -300; at 60 s: not known, counted apart.
    #[test]
    fn auto_spells_are_weighed_against_five_minutes() {
        let mut st = idle_status(0, Some(100));
        let (mut record, _) = choose(&st, None, &Default::default()).unwrap();
        for gap in [200, 350, 1000] {
            saving_reused(&mut st, &record, at(gap));
        }
        let u = st.usage.clone().unwrap();
        assert_eq!((u.saved_vs_5m_seconds, u.settled_vs_5m, u.unsettled_vs_5m), (-550, 3, 0));
        record.idle_seconds = 600;
        saving_expired(&mut st, &record);
        record.idle_seconds = 60;
        saving_expired(&mut st, &record);
        let u = st.usage.clone().unwrap();
        assert_eq!((u.saved_vs_5m_seconds, u.settled_vs_5m, u.unsettled_vs_5m), (-850, 4, 1));
    }

    /// Past the cap, spells alike merge, and a spell unlike the others (the one a short
    /// deadline ended) is kept: the guard settles it at the next launch. Dropping the
    /// oldest instead lost that settlement on every batch sweep (auto fell to ski-rental).
    #[test]
    fn past_the_cap_alike_expired_spells_merge_and_a_unique_one_is_kept_for_the_guard() {
        let mut gaps = ShapeGaps::default();
        let (mut quick, _) = choose(&idle_status(0, Some(100)), None, &Default::default()).unwrap();
        quick.idle_seconds = 0;
        close_expired(&mut gaps, &quick, 1.0);
        let (ski, _) = choose(&idle_status(10, Some(100)), None, &Default::default()).unwrap();
        for _ in 0..MAX_EXPIRED_KEPT + 4 {
            close_expired(&mut gaps, &ski, 1.0);
        }
        assert_eq!(gaps.expired.len(), MAX_EXPIRED_KEPT);
        assert_eq!(gaps.expired.iter().map(|e| e.count).sum::<u32>(), MAX_EXPIRED_KEPT as u32 + 5);
        assert_eq!((gaps.expired[0].idle_seconds, gaps.expired[0].count), (Some(0), 1));
        // A launch an hour later: the planner would have paid a boot on each spell, which
        // only the quick one had not been counted at (min(0, 100) at expiry).
        let before = gaps.summary.bound_cost;
        launched(&mut gaps, at(3600));
        assert_eq!(gaps.summary.bound_cost - before, 100.0);
        assert_eq!(gaps.summary.gaps(), 1);
    }

    fn expired_at(since: i64, idle_seconds: u64) -> AutoIdle {
        let (mut record, _) = choose(&idle_status(since, Some(100)), None, &Default::default()).unwrap();
        record.idle_seconds = idle_seconds;
        record
    }

    /// By hand, boot 100 s at $3.60/h ($0.001 a second). Spells ended by auto at 60 s,
    /// started at 0, 10 and 500 s; one ended at 300 s (5 minutes would have ended it too:
    /// not pending). A launch for a run that arrived at 200: the oldest spell (gap 200 s)
    /// would have been kept for it by 5 minutes (200 s idle, no boot) against auto's 60 s
    /// and a boot (160 s): +$0.040; the one from 10 s waits. A launch at 400: the spell from 10 s
    /// saw none within its 5 minutes (5 minutes: 300 s idle, auto 60 s): +$0.240. A launch
    /// at 520 came while the spell from 500 s was still idle: not its run. One at 700
    /// (gap 200 s): +$0.040. In all +$0.320 over 3 spells.
    #[test]
    fn spells_auto_ended_before_five_minutes_are_settled_by_the_next_launches() {
        let mut gaps = ShapeGaps::default();
        for (since, idle) in [(0, 60), (10, 60), (500, 60), (1000, 300)] {
            close_expired(&mut gaps, &expired_at(since, idle), 3.6);
        }
        assert_eq!(gaps.pending_vs_5m.len(), 3);
        let mut seen = Vec::new();
        for arrival in [200, 400, 520, 700] {
            settle_vs_5m(&mut gaps, at(arrival));
            let s = std::mem::take(&mut gaps.settled_vs_5m);
            seen.push(((s.dollars * 1000.0).round() as i64, s.spells));
        }
        assert_eq!(seen, [(40, 1), (240, 1), (0, 0), (40, 1)]);
        assert!(gaps.pending_vs_5m.is_empty());
        // `launched` settles them too (a shape's launch is the one event that tells them).
        close_expired(&mut gaps, &expired_at(2000, 60), 3.6);
        launched(&mut gaps, at(2400));
        assert_eq!(gaps.settled_vs_5m, SettledLater { dollars: 0.24, spells: 1 });
    }

    /// Past the cap, alike pending spells merge (a batch of instances ending together) and
    /// are settled together: 40 spells of 60 s, then a launch an hour later: 40 × 240 s.
    #[test]
    fn past_the_cap_alike_pending_spells_merge_and_all_settle() {
        let mut gaps = ShapeGaps::default();
        for i in 0..40 {
            close_expired(&mut gaps, &expired_at(i, 60), 3.6);
        }
        assert_eq!(gaps.pending_vs_5m.len(), MAX_PENDING_VS_5M);
        assert_eq!(gaps.pending_vs_5m.iter().map(|p| p.count).sum::<u32>(), 40);
        settle_vs_5m(&mut gaps, at(3600));
        assert_eq!(gaps.settled_vs_5m.spells, 40);
        assert!((gaps.settled_vs_5m.dollars - 40.0 * 0.24).abs() < 1e-9);
    }

    /// Pending spells are kept in the pool's status (a new controller settles them); what
    /// one observation settled is not (the write that made it moves it into the pool's
    /// cost).
    #[test]
    fn pending_spells_survive_in_the_pools_status_and_the_settled_figure_moves_out() {
        let mut gaps = ShapeGaps::default();
        close_expired(&mut gaps, &expired_at(0, 60), 3.6);
        gaps.settled_vs_5m = SettledLater { dollars: 1.0, spells: 1 };
        let json = serde_json::to_value(&gaps).unwrap();
        assert_eq!(json["pendingVs5m"][0]["idleSeconds"], 60, "{json}");
        assert!(json.get("settledVs5m").is_none(), "{json}");
        let back: ShapeGaps = serde_json::from_value(json).unwrap();
        assert_eq!((back.pending_vs_5m, back.settled_vs_5m), (gaps.pending_vs_5m, SettledLater::default()));
    }
}
