//! Budgets: whether a launch fits a pool's, a profile's or a namespace's money limits, and
//! which instances `enforce: terminate` ends when a budget no longer holds.
//!
//! Spend comes from the instances' `status.usage` (billed seconds × the offer's $/h), so
//! it is right for spot and for machines ended outside kpool; an instance counts for as
//! long as its object exists (ended ones included).

use jiff::Timestamp;

use crate::api::instance::{Instance, InstancePhase};
use crate::api::pool::{BudgetEnforce, BudgetSpec};
use crate::api::resources::SpecError;

/// Which instances a budget covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Covers {
    /// The instances of a pool (`Pool.spec.budget`).
    Pool(String),
    /// The instances launched under a profile: their own `spec.profile`, else their
    /// pool's (`Profile.spec.budget`).
    Profile(String),
    /// Every instance of the namespace (`Profile.spec.budget.scope: Namespace`; the name
    /// is the profile's, for messages).
    Namespace(String),
}

impl Covers {
    /// Whether an instance of `pool` launched under `profile` counts against the budget.
    pub fn includes(&self, pool: &str, profile: Option<&str>) -> bool {
        match self {
            Covers::Pool(p) => p == pool,
            Covers::Profile(p) => profile == Some(p.as_str()),
            Covers::Namespace(_) => true,
        }
    }

    /// Whose budget it is, for messages: `pool P's`, `profile P's`, `the namespace's (profile P)`.
    pub fn owner(&self) -> String {
        match self {
            Covers::Pool(p) => format!("pool {p}'s"),
            Covers::Profile(p) => format!("profile {p}'s"),
            Covers::Namespace(p) => format!("the namespace's (profile {p})"),
        }
    }
}

/// What an instance's machine costs per hour while it holds capacity; 0 otherwise.
pub fn held_price(st: &crate::api::instance::InstanceStatus) -> f64 {
    if crate::core::pool::holds_capacity(st.phase) {
        st.offer.as_ref().map_or(0.0, |o| o.price)
    } else {
        0.0
    }
}

/// Dollars `members` spent inside `[since, now]`.
fn spent_within(members: &[&Instance], since: Option<Timestamp>, now: Timestamp) -> f64 {
    members
        .iter()
        .filter_map(|i| i.status.as_ref())
        .map(|s| {
            let (seconds, _, _) = crate::core::instance::accrued_within(s, since, now);
            seconds * s.offer.as_ref().map_or(0.0, |o| o.price) / 3600.0
        })
        .sum()
}

/// The start of the spend window of `budget.maxSpend` at `now`.
fn window_start(per: &str, now: Timestamp) -> Result<Option<Timestamp>, SpecError> {
    let per = crate::api::duration::parse_duration("budget.maxSpend.per", per)?;
    Ok(now.checked_sub(jiff::SignedDuration::try_from(per).unwrap_or(jiff::SignedDuration::MAX)).ok())
}

/// Why launching an offer at `price` $/hour would go beyond `budget`, given the other
/// instances it covers (`members`, ended ones included for what they spent) and launches
/// approved but not visible in them yet (`pending` $/hour); `None` when it stays within.
pub fn over_budget(
    budget: &BudgetSpec,
    members: &[&Instance],
    pending: f64,
    price: f64,
    now: Timestamp,
) -> Result<Option<String>, SpecError> {
    if let Some(max) = budget.max_hourly_price {
        let live: f64 = members.iter().filter_map(|i| i.status.as_ref()).map(held_price).sum();
        if live + pending + price > max + 1e-9 {
            let under_way = if pending > 0.0 { format!(", launches under way ${pending:.4}/h") } else { String::new() };
            return Ok(Some(format!(
                "budget.maxHourlyPrice ${max}/h: the live instances cost ${live:.4}/h{under_way} and this launch ${price}/h"
            )));
        }
    }
    if let Some(limit) = &budget.max_spend {
        let spent = spent_within(members, window_start(&limit.per, now)?, now);
        if spent >= limit.dollars {
            return Ok(Some(format!(
                "budget.maxSpend ${} per {}: ${spent:.4} spent in that window",
                limit.dollars, limit.per
            )));
        }
    }
    Ok(None)
}

/// Under `enforce: terminate`, the live instances of `members` to end so that `budget`
/// holds again, and why; empty when it holds (or it only waits). Only idle and busy
/// instances are ended (one still launching is, once it is up). Over `maxHourlyPrice`:
/// the fewest needed, idle ones first, then busy ones, newest first within each. Over
/// `maxSpend`: every live one (any of them adds to the spend).
pub fn to_end<'a>(
    budget: &BudgetSpec,
    members: &[&'a Instance],
    now: Timestamp,
) -> Result<(Vec<&'a Instance>, String), SpecError> {
    if budget.enforce != Some(BudgetEnforce::Terminate) {
        return Ok((Vec::new(), String::new()));
    }
    let live: Vec<&Instance> = members
        .iter()
        .copied()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter(|i| i.status.as_ref().is_some_and(|s| matches!(s.phase, InstancePhase::Idle | InstancePhase::Busy)))
        .collect();
    if let Some(limit) = &budget.max_spend {
        let spent = spent_within(members, window_start(&limit.per, now)?, now);
        if spent >= limit.dollars && !live.is_empty() {
            let why = format!("budget.maxSpend ${} per {}: ${spent:.4} spent in that window", limit.dollars, limit.per);
            return Ok((live, why));
        }
    }
    let Some(max) = budget.max_hourly_price else { return Ok((Vec::new(), String::new())) };
    // What stays: instances already ending (Terminating) are on their way out.
    let staying = |s: &&crate::api::instance::InstanceStatus| s.phase != InstancePhase::Terminating;
    let mut total: f64 = members.iter().filter_map(|i| i.status.as_ref()).filter(staying).map(held_price).sum();
    if total <= max + 1e-9 {
        return Ok((Vec::new(), String::new()));
    }
    let why = format!("budget.maxHourlyPrice ${max}/h: the live instances cost ${total:.4}/h");
    let rank = |i: &Instance| {
        let phase = i.status.as_ref().map(|s| s.phase);
        let order = if phase == Some(InstancePhase::Idle) { 0 } else { 1 };
        let created = i.metadata.creation_timestamp.as_ref().map(|t| std::cmp::Reverse(t.0));
        (order, created, i.metadata.name.clone())
    };
    let mut order = live;
    order.sort_by_key(|i| rank(i));
    let mut end = Vec::new();
    for i in order {
        if total <= max + 1e-9 {
            break;
        }
        total -= i.status.as_ref().map_or(0.0, held_price);
        end.push(i);
    }
    Ok((end, why))
}

/// When the spend of `members` reaches `budget.maxSpend` at their current $/hour, if it
/// will: the moment `enforce: terminate` has to look again. (The window also slides, which
/// only ever lowers the spend, so this is never late.)
pub fn spend_reached_at(budget: &BudgetSpec, members: &[&Instance], now: Timestamp) -> Option<Timestamp> {
    let limit = budget.max_spend.as_ref()?;
    let spent = spent_within(members, window_start(&limit.per, now).ok()?, now);
    let rate: f64 = members.iter().filter_map(|i| i.status.as_ref()).map(held_price).sum();
    if spent >= limit.dollars || rate <= 0.0 {
        return None;
    }
    let seconds = ((limit.dollars - spent) / rate * 3600.0).ceil() as i64;
    now.checked_add(jiff::SignedDuration::from_secs(seconds.max(1))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::instance::{InstanceStatus, Usage};
    use crate::api::offer::Offer;
    use crate::api::pool::SpendLimit;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn inst(name: &str, phase: InstancePhase, price: f64, created: &str, launched: &str) -> Instance {
        let mut i = Instance::new(name, Default::default());
        i.metadata.creation_timestamp = Some(Time(at(created)));
        i.status = Some(InstanceStatus {
            phase,
            offer: Some(Offer { price, ..Offer::default() }),
            usage: Some(Usage { launched_at: Some(Time(at(launched))), ..Default::default() }),
            ..InstanceStatus::default()
        });
        i
    }

    #[test]
    fn pending_launches_count_against_the_hourly_cap() {
        let a = inst("a", InstancePhase::Busy, 1.0, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        let budget = BudgetSpec { max_hourly_price: Some(2.5), ..Default::default() };
        let now = at("2026-01-01T01:00:00Z");
        assert_eq!(over_budget(&budget, &[&a], 0.0, 1.0, now).unwrap(), None);
        let why = over_budget(&budget, &[&a], 1.0, 1.0, now).unwrap().expect("1 + 1 under way + 1 > 2.5");
        assert!(why.contains("launches under way $1.0000/h"), "{why}");
    }

    #[test]
    fn terminate_ends_the_fewest_idle_first_then_newest() {
        let t0 = "2026-01-01T00:00:00Z";
        let old_busy = inst("old-busy", InstancePhase::Busy, 1.0, t0, t0);
        let new_busy = inst("new-busy", InstancePhase::Busy, 1.0, "2026-01-01T00:10:00Z", t0);
        let idle = inst("idle", InstancePhase::Idle, 0.5, t0, t0);
        let ending = inst("ending", InstancePhase::Terminating, 5.0, t0, t0);
        let members = [&old_busy, &new_busy, &idle, &ending];
        let now = at("2026-01-01T01:00:00Z");
        let mut budget = BudgetSpec { max_hourly_price: Some(1.2), ..Default::default() };
        assert!(to_end(&budget, &members, now).unwrap().0.is_empty(), "enforce: wait ends nothing");
        budget.enforce = Some(BudgetEnforce::Terminate);
        let (end, why) = to_end(&budget, &members, now).unwrap();
        let names: Vec<_> = end.iter().map(|i| i.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["idle", "new-busy"], "2.5 → 2.0 → 1.0 ≤ 1.2");
        assert!(why.contains("$2.5000/h"), "{why}");
        budget.max_hourly_price = Some(2.5);
        assert!(to_end(&budget, &members, now).unwrap().0.is_empty(), "within the cap");
    }

    #[test]
    fn a_spent_window_ends_every_live_instance_and_the_crossing_is_predicted() {
        let t0 = "2026-01-01T00:00:00Z";
        let a = inst("a", InstancePhase::Busy, 2.0, t0, t0);
        let gone = inst("gone", InstancePhase::Terminated, 9.0, t0, t0);
        let budget = BudgetSpec {
            max_spend: Some(SpendLimit { dollars: 3.0, per: "1d".into() }),
            enforce: Some(BudgetEnforce::Terminate),
            ..Default::default()
        };
        let members = [&a];
        // $2/h: $1 after 30 min, $3 at 1h30.
        let now = at("2026-01-01T00:30:00Z");
        assert!(to_end(&budget, &members, now).unwrap().0.is_empty());
        assert_eq!(spend_reached_at(&budget, &members, now), Some(at("2026-01-01T01:30:00Z")));
        let (end, why) = to_end(&budget, &[&a, &gone], at("2026-01-01T01:30:00Z")).unwrap();
        assert_eq!(end.len(), 1, "only the live one: {why}");
        assert!(why.contains("budget.maxSpend $3 per 1d"), "{why}");
    }

    #[test]
    fn covers_pool_profile_and_namespace() {
        assert!(Covers::Pool("p".into()).includes("p", None));
        assert!(!Covers::Pool("p".into()).includes("q", Some("p")));
        assert!(Covers::Profile("gpu".into()).includes("q", Some("gpu")));
        assert!(!Covers::Profile("gpu".into()).includes("q", None));
        assert!(Covers::Namespace("team".into()).includes("any", None));
        assert_eq!(Covers::Namespace("team".into()).owner(), "the namespace's (profile team)");
    }
}
