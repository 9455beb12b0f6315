//! The offline lower bound: what any idle policy must at least pay on a trace.
//!
//! **The model** is the simulator's world seen by a planner that knows the future. Every
//! machine serves a chain of runs of one pool: the first run of the chain waits for the
//! machine's boot `b` (so it runs from `aᵢ + b` and ends at `eᵢ + b`, with `eᵢ = aᵢ + dᵢ`),
//! every later one takes the machine when it arrives (runs from `aᵢ`, ends at `eᵢ`), after
//! an idle gap since the previous run of the chain ended; each machine end serves at most
//! one later run. Its cost, with `pⱼ` the price of the cheapest offer that fits run `j`
//! and `p` the lowest of them in the pool:
//!
//! ```text
//! Σⱼ pⱼ·dⱼ  +  Σ_{j first of a chain} pⱼ·b  +  Σ_{i then j on a machine} p·(aⱼ − end of i)
//! ```
//!
//! **Why no policy pays less** (in the simulator a run takes an idle machine when it
//! arrives or waits exactly one boot for a new one; machines are billed from launch to
//! termination and stay in their pool): what each policy's machines do is such a set of
//! chains, and it is billed at least this. Each run runs for `dⱼ` on a machine that fits
//! it, so at a price `≥ pⱼ`; a run on a new machine is preceded by that machine's boot,
//! billed `≥ pⱼ·b`, and starts one boot after it arrived; a run that reuses a machine
//! follows the machine's previous run, which ended at its own end (or one boot later if it
//! had waited), no later than the arrival, and the machine idled in between, billed
//! `≥ p` per second; boots and idle spells are disjoint stretches of machine time, and idle
//! time after a machine's last run is not counted. Letting a machine serve runs of any
//! shape of its pool and billing idle time at the pool's lowest price only lower it.
//!
//! A bound with machines launched ahead of arrivals (no run waits, every run ends at
//! `eᵢ`) would not be one here: a run that waited for a boot ends one boot later, so a
//! later run can find its machine idle for less than `aⱼ − eᵢ` (two A100 runs of 600 s at
//! 0 and 800 cost 1,400 machine-seconds under fixed-5m, 1,560 under that bound).
//!
//! **How it is computed.** Without the tie between a run's end and how it started, the
//! model is an assignment: each start takes one earlier end (`eᵢ` or `eᵢ + b`, paying the
//! idle time) or pays a boot, each end is taken once. That is a min-cost flow on the time
//! line ([`assign`]): one unit from each start, to the sink by a boot or back along the
//! time line (billed per millisecond) to an end that enters it at `eᵢ` and at `eᵢ + b`.
//! Starts are added in arrival order, each augmenting along a shortest path of the
//! residual graph (successive shortest paths, Dijkstra on reduced costs with node
//! potentials): after each the flow is a min-cost flow for the starts added so far, so
//! after the last it is the optimum assignment. A search stops when it settles the sink;
//! the potentials of the nodes it settled are lowered by how much closer than the sink
//! they were, which keeps every reduced cost non-negative. The tie is then priced in
//! ([`pool_bound`], a Lagrangian relaxation): any prices give a lower bound, and the
//! highest found is kept. Costs are integers (micro-dollars per hour × milliseconds): no
//! rounding in the search. 10,000 runs take about a second.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::{Config, PolicyReport, TraceRun};
use crate::core::offers::rank_offers;
use crate::core::policy::{EffectivePolicy, Origin};

/// A run as the bound sees it: times in milliseconds, price in micro-dollars per hour.
#[derive(Clone, Copy, Debug)]
struct Job {
    arrival: i64,
    end: i64,
    price: i64,
}

fn ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

/// A residual graph for one min-cost flow.
#[derive(Default)]
struct Graph {
    to: Vec<usize>,
    cap: Vec<i64>,
    cost: Vec<i64>,
    out: Vec<Vec<usize>>,
}

impl Graph {
    fn new(nodes: usize) -> Self {
        Graph { out: vec![Vec::new(); nodes], ..Graph::default() }
    }

    /// An arc `u → v` (and its reverse, the next index); returns the arc's index.
    fn arc(&mut self, u: usize, v: usize, cap: i64, cost: i64) -> usize {
        let k = self.to.len();
        self.to.extend([v, u]);
        self.cap.extend([cap, 0]);
        self.cost.extend([cost, -cost]);
        self.out[u].push(k);
        self.out[v].push(k + 1);
        k
    }

    /// Flow on arc `k`.
    fn flow(&self, k: usize) -> i64 {
        self.cap[k + 1]
    }
}

/// The cheapest assignment of one pool's runs under the prices `late` and `early` (see
/// [`pool_bound`]): which runs boot, whose late and early ends are taken, and the idle
/// cost (micro-dollars per hour × ms).
struct Assignment {
    boots: Vec<bool>,
    late_used: Vec<bool>,
    early_used: Vec<bool>,
    idle: i64,
}

/// Solves the assignment as a min-cost flow: one unit from each start, to the sink by a
/// boot, or back along the time line (billed per millisecond idle) to an end, each end
/// entering the time line at `eᵢ` and at `eᵢ + b` and taking one unit.
fn assign(jobs: &[Job], b: i64, late: &[i64], early: &[i64]) -> Assignment {
    let m = jobs.len();
    let mut times: Vec<i64> = jobs.iter().flat_map(|j| [j.arrival, j.end, j.end + b]).collect();
    times.sort_unstable();
    times.dedup();
    let at = |t: i64| 2 * m + times.partition_point(|&x| x < t);
    let sink = 2 * m + times.len();
    let mut g = Graph::new(sink + 1);
    // Idle time is billed at the pool's lowest price: no more than any run's.
    let rate = jobs.iter().map(|j| j.price).min().unwrap_or(0);
    let mut timeline = Vec::with_capacity(times.len());
    for k in 1..times.len() {
        timeline.push(g.arc(2 * m + k, 2 * m + k - 1, m as i64, rate * (times[k] - times[k - 1])));
    }
    let boot_arc: Vec<usize> = (0..m).map(|j| g.arc(j, sink, 1, jobs[j].price * b + early[j] - late[j])).collect();
    for (j, job) in jobs.iter().enumerate() {
        g.arc(j, at(job.arrival), 1, 0);
    }
    let early_arc: Vec<usize> = (0..m).map(|i| g.arc(at(jobs[i].end), m + i, 1, early[i])).collect();
    let late_arc: Vec<usize> = (0..m).map(|i| g.arc(at(jobs[i].end + b), m + i, 1, late[i])).collect();
    for i in 0..m {
        g.arc(m + i, sink, 1, 0);
    }
    let n = sink + 1;
    let mut pot = vec![0i64; n];
    let mut dist = vec![i64::MAX; n];
    let mut via = vec![usize::MAX; n];
    let mut done = vec![false; n];
    let mut touched = Vec::new();
    let mut heap = BinaryHeap::new();
    for j in 0..m {
        // A potential that makes the new start's arcs non-negative.
        pot[j] = g.out[j].iter().filter(|&&k| g.cap[k] > 0).map(|&k| pot[g.to[k]] - g.cost[k]).max().unwrap_or(0);
        dist[j] = 0;
        touched.push(j);
        heap.clear();
        heap.push(Reverse((0i64, j)));
        while let Some(Reverse((d, u))) = heap.pop() {
            if done[u] || d > dist[u] {
                continue;
            }
            done[u] = true;
            if u == sink {
                break;
            }
            for &k in &g.out[u] {
                if g.cap[k] == 0 {
                    continue;
                }
                let v = g.to[k];
                let reduced = g.cost[k] + pot[u] - pot[v];
                debug_assert!(reduced >= 0, "negative reduced cost {u} -> {v}: {reduced}");
                let nd = d + reduced;
                if nd < dist[v] {
                    if dist[v] == i64::MAX {
                        touched.push(v);
                    }
                    dist[v] = nd;
                    via[v] = k;
                    heap.push(Reverse((nd, v)));
                }
            }
        }
        let mut v = sink;
        while v != j {
            let k = via[v];
            g.cap[k] -= 1;
            g.cap[k ^ 1] += 1;
            v = g.to[k ^ 1];
        }
        // Settled nodes closer than the sink: lower their potentials by the difference
        // (every reduced cost stays non-negative, those on the path become 0).
        let ds = dist[sink];
        for &v in &touched {
            if done[v] {
                pot[v] -= ds - dist[v];
            }
            dist[v] = i64::MAX;
            done[v] = false;
        }
        touched.clear();
    }
    Assignment {
        boots: boot_arc.iter().map(|&k| g.flow(k) == 1).collect(),
        late_used: late_arc.iter().map(|&k| g.flow(k) == 1).collect(),
        early_used: early_arc.iter().map(|&k| g.flow(k) == 1).collect(),
        idle: timeline.iter().map(|&k| g.flow(k) * g.cost[k]).sum(),
    }
}

/// Rounds of multiplier updates ([`pool_bound`]).
pub(super) const ROUNDS: usize = 60;

/// The bound for the runs of one pool, sorted by arrival, in micro-dollars per hour ×
/// milliseconds (busy time left out), and the assignment it was found at.
///
/// The assignment ([`assign`]) lets every run end at `eᵢ` or `eᵢ + b`, whichever suits the
/// run after it. A run ends at `eᵢ + b` only if it waited for a boot, and at `eᵢ` only if
/// it did not; those two conditions are priced in (a Lagrangian relaxation): a reuse of
/// the late end of run `i` costs `late[i]` more, of its early end `early[i]` more, and a
/// boot of run `i` costs `early[i] − late[i]` more, minus `Σ early` once. For every
/// choice of non-negative prices, every schedule of the model costs no more under them
/// than it really does (its late ends follow boots, its early ends follow reuses, so the
/// extra terms add up to 0 or less), so the cheapest assignment under them is still a
/// lower bound;
/// the prices are raised where an assignment breaks a condition and lowered where it
/// keeps one with room (subgradient steps), and the highest bound found is kept. With all
/// prices 0 it is the plain assignment.
fn pool_bound(jobs: &[Job], b: i64, rounds: usize) -> (i64, Assignment) {
    let m = jobs.len();
    let (mut late, mut early) = (vec![0i64; m], vec![0i64; m]);
    let mut best: Option<(i64, Assignment)> = None;
    let mut step = 0.5;
    for _ in 0..rounds.max(1) {
        let a = assign(jobs, b, &late, &early);
        let mut value = a.idle - early.iter().sum::<i64>();
        for i in 0..m {
            if a.boots[i] {
                value += jobs[i].price * b + early[i] - late[i];
            }
            value += i64::from(a.late_used[i]) * late[i] + i64::from(a.early_used[i]) * early[i];
        }
        // Subgradient: how far each condition is from holding (1 broken, −1 slack).
        let mut exact = true;
        for i in 0..m {
            let g_late = i64::from(a.late_used[i]) - i64::from(a.boots[i]);
            let g_early = i64::from(a.early_used[i]) - i64::from(!a.boots[i]);
            exact &= g_late <= 0 && g_early <= 0 && (g_late == 0 || late[i] == 0) && (g_early == 0 || early[i] == 0);
            let unit = step * (jobs[i].price * b) as f64;
            late[i] = (late[i] + (unit * g_late as f64) as i64).max(0);
            early[i] = (early[i] + (unit * g_early as f64) as i64).max(0);
        }
        if best.as_ref().is_none_or(|(v, _)| value > *v) {
            best = Some((value, a));
        }
        // A schedule of the model that meets its prices exactly: the optimum itself.
        if exact {
            break;
        }
        step *= 0.93;
    }
    best.unwrap_or((0, Assignment { boots: Vec::new(), late_used: Vec::new(), early_used: Vec::new(), idle: 0 }))
}

/// The cheapest cost of `trace` in the model above: the lower bound of every idle
/// policy. `idle_cost`, `boot_cost`, `launched` and `reused` describe the assignment the
/// bound was found at (they need not add up to the bound); waits are not modelled
/// (reported as 0).
pub fn offline_bound(trace: &[TraceRun], config: &Config) -> PolicyReport {
    let policy = EffectivePolicy::defaults(Origin::Run);
    let b = config.boot.as_millis() as i64;
    let mut pools: BTreeMap<&str, Vec<Job>> = BTreeMap::new();
    let mut unplaceable = 0;
    for r in trace {
        let Some(offer) = rank_offers(config.catalog.iter(), &r.requirements, &policy, 1).into_iter().next() else {
            unplaceable += 1;
            continue;
        };
        let arrival = ms(r.arrival);
        pools.entry(r.pool.as_str()).or_default().push(Job {
            arrival,
            end: arrival + ms(r.duration),
            price: (offer.price * 1e6).round() as i64,
        });
    }
    // Dollars for `ms` milliseconds at `price` micro-dollars per hour.
    let dollars = |units: i64| units as f64 / 3.6e12;
    let (mut total, mut idle_cost, mut boot_cost) = (0.0, 0.0, 0.0);
    let (mut runs, mut reused) = (0, 0);
    for jobs in pools.values_mut() {
        jobs.sort_by_key(|j| j.arrival);
        let (value, a) = pool_bound(jobs, b, ROUNDS);
        total += dollars(value);
        idle_cost += dollars(a.idle);
        for (job, boot) in jobs.iter().zip(a.boots) {
            runs += 1;
            total += dollars(job.price * (job.end - job.arrival));
            if boot {
                boot_cost += dollars(job.price * b);
            } else {
                reused += 1;
            }
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
        saved_vs_5m: 0.0,
        unsettled_vs_5m: 0,
        settled_later_vs_5m: 0,
    }
}

/// The bound in the integer units of the search (micro-dollars per hour × ms, busy time
/// left out) after `rounds` rounds (1: the plain assignment) and the number of boots, for
/// the tests: runs given as (arrival s, duration s, price $/h), one pool.
#[cfg(test)]
pub(super) fn assignment_cost(runs: &[(f64, f64, f64)], boot_s: f64, rounds: usize) -> (i64, usize) {
    let mut jobs: Vec<Job> = runs
        .iter()
        .map(|&(a, d, p)| Job { arrival: ms(a), end: ms(a) + ms(d), price: (p * 1e6).round() as i64 })
        .collect();
    jobs.sort_by_key(|j| j.arrival);
    let (value, a) = pool_bound(&jobs, ms(boot_s), rounds);
    (value, a.boots.iter().filter(|b| **b).count())
}
