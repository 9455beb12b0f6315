//! The offline lower bound: what any idle policy must at least pay on a trace.

use super::{Config, PolicyReport, TraceRun};
use crate::core::offers::rank_offers;
use crate::core::policy::{EffectivePolicy, Origin};

/// A lower bound on the cost of every idle policy on `trace`, by a planner that knows
/// the future: run `j` (arrival `a`, duration `d`, `p` the price of the cheapest offer
/// that fits it, `b` the boot time) pays `p·(d + min(b, G))`, where `G` is the shortest
/// gap from the end of an earlier run of its pool to `a`. The planner reuses a machine
/// across a gap only when idling through it costs less than a new boot.
///
/// Why no policy pays less, in the simulator's world (a run takes an idle machine when it
/// arrives or waits exactly one boot for a new one; machines are billed from launch to
/// termination and stay in their pool):
/// - each run runs for `d` on a machine whose offer fits it, so at a price `≥ p`;
/// - a run on a new machine is preceded by that machine's boot, billed `≥ p·b`;
/// - a run that reuses a machine is preceded on it by an idle spell from the end of the
///   machine's previous run `i` (same pool) to `a`; run `i` started at its arrival or
///   one boot later, so it ended at `aᵢ + dᵢ` or `aᵢ + dᵢ + b`, no later than `a`: the spell
///   is at least `G`, computed over both candidates, and billed `≥ p·G`;
/// - boots and idle spells are disjoint stretches of machine time, each before exactly
///   one run.
///
/// The bound lets every run take the nearest earlier end, even one that another run
/// also takes (the one-to-one assignment of ends to starts is relaxed), and bills no idle
/// time after the last run of a machine: both only lower it. `launched` is the number of
/// runs with `G ≥ b`; waits are not modelled (reported as 0).
pub fn offline_bound(trace: &[TraceRun], config: &Config) -> PolicyReport {
    let policy = EffectivePolicy::defaults(Origin::Run);
    let b = config.boot.as_secs_f64();
    // Candidate ends per pool, sorted.
    let mut ends: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    for r in trace {
        let e = ends.entry(r.pool.as_str()).or_default();
        e.push(r.arrival + r.duration);
        e.push(r.arrival + r.duration + b);
    }
    for e in ends.values_mut() {
        e.sort_by(f64::total_cmp);
    }
    let (mut total, mut idle_cost, mut boot_cost) = (0.0, 0.0, 0.0);
    let (mut runs, mut reused, mut unplaceable) = (0, 0, 0);
    for r in trace {
        let Some(offer) = rank_offers(config.catalog.iter(), &r.requirements, &policy, 1).into_iter().next() else {
            unplaceable += 1;
            continue;
        };
        runs += 1;
        let rate = offer.price / 3600.0;
        let e = &ends[r.pool.as_str()];
        // Ends at or before the arrival: a run's own ends are after it (d > 0).
        let n = e.partition_point(|&x| x <= r.arrival);
        let gap = if n == 0 { f64::INFINITY } else { r.arrival - e[n - 1] };
        total += rate * r.duration;
        if gap < b {
            reused += 1;
            idle_cost += rate * gap;
            total += rate * gap;
        } else {
            boot_cost += rate * b;
            total += rate * b;
        }
    }
    PolicyReport {
        policy: "offline-bound".into(),
        total_cost: total,
        idle_cost,
        boot_cost,
        launched: runs - reused,
        runs,
        reused,
        unplaceable,
        wait_p50: 0.0,
        wait_p99: 0.0,
        waits: Vec::new(),
        timeline: Vec::new(),
    }
}
