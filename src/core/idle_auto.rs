//! `idleDuration: auto`: how long to keep an idle instance, learned from the gaps the
//! pool has seen. Pure: a compact summary of past gaps in, a deadline and its reason out.
//!
//! **The trade-off.** An instance that goes idle costs its price for every second it is
//! kept; tearing it down costs one boot (the seconds billed while a new machine boots)
//! when the next fitting run arrives. With `b` the boot time and `G` the gap until that
//! run, keeping it for `T` seconds costs `min(G, T) + b·[G > T]` machine-seconds; a
//! planner that knew `G` would pay `min(G, b)`.
//!
//! **Ski-rental** keeps it for `T = b` and never pays more than twice the planner
//! (`G ≤ b`: equal; `G > b`: `2b` against `b`). No fixed `T` does better on every gap.
//!
//! **Auto** keeps a histogram of recent gaps per instance shape ([`GapSummary`]) and
//! picks the `T` (from `0` and the bucket edges, up to a week) that minimises the
//! expected cost under that histogram: a short `T` when gaps are either short or very
//! long (pay one boot instead of idling through a long gap), a long one when gaps are
//! regular and cheaper to idle through than a boot.
//!
//! **Contexts.** The same shape's gaps differ with the moment a spell starts: an
//! instance that goes idle while others of its shape already wait is taken only after
//! them, and when the pool's last run arrived long ago the next one tends to be far off
//! too (gaps that have lasted tend to go on). So every gap is also counted in a histogram
//! of its spell's context ([`SpellContext`]: the other idle instances, bucketed, and the
//! time since the pool's last arrival against one boot), at most [`MAX_CONTEXTS`] per
//! shape, and a spell whose context has [`MIN_GAPS`] gaps decides from those alone. The
//! controller reads both from its caches; the guard below stays per shape.
//!
//! **The guard.** A learned `T` can lose to ski-rental when the future does not look like
//! the past. Choosing `T` risks at most `|T − b|` machine-seconds more than twice the
//! planner's cost on that idle spell (gaps just above `T`). The summary keeps what auto
//! spent (`autoCost`: idle seconds, plus a boot for every instance that expired) and what
//! the planner would have (`boundCost`: `min(G, b)`; for an expired spell `min(T, b)`,
//! no more than the planner's, until the next run tells `G`), and allows a `T` only when
//! `2·boundCost + b − autoCost − reserved ≥ |T − b|`, where `reserved` is the risk of the
//! spells still open. By induction auto's cost stays at most `2·boundCost + b`: never
//! worse than ski-rental's factor 2, plus one boot of credit to start learning with.

pub mod spell;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Number of histogram buckets: bucket `k > 0` holds gaps in `[edge(k-1), edge(k))`,
/// bucket 0 gaps under one second; the last bucket also holds everything longer.
pub const BUCKETS: usize = 40;
/// Fewer gaps than this and auto keeps ski-rental's deadline.
pub const MIN_GAPS: u32 = 8;
/// When the histogram holds more gaps than this, every count is halved, so recent gaps
/// weigh more than old ones and counts stay small.
pub const MAX_GAPS: u32 = 400;

/// Upper edge of bucket `k` in seconds: `2^(k/2)` (1 s, 1.4 s, 2 s, … about 6 days).
pub fn edge(k: usize) -> f64 {
    2f64.powf(k as f64 / 2.0)
}

fn bucket_of(gap: f64) -> usize {
    (0..BUCKETS).find(|&k| gap < edge(k)).unwrap_or(BUCKETS - 1)
}

/// A typical gap of bucket `k`: the geometric middle of its edges (bucket 0: half a
/// second).
fn representative(k: usize) -> f64 {
    if k == 0 {
        0.5
    } else {
        (edge(k - 1) * edge(k)).sqrt()
    }
}

/// What the pool has learned about the idle gaps of one instance shape, compact enough
/// to keep in the pool's status (a few hundred bytes), so it survives a controller
/// restart. All costs are machine-seconds at the shape's price.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GapSummary {
    /// Recent gaps between an instance going idle and the next run that fitted it, per
    /// bucket of a log-scale histogram (bucket `k` ends at `2^(k/2)` seconds).
    #[serde(default)]
    pub counts: Vec<u32>,
    /// Idle seconds spent by `auto` deadlines, plus one boot per instance that expired.
    #[serde(default)]
    pub auto_cost: f64,
    /// What a planner that knew every gap would have spent on the same idle spells.
    #[serde(default)]
    pub bound_cost: f64,
    /// Risk (seconds above twice the planner's cost) of the idle spells still open.
    #[serde(default)]
    pub reserved: f64,
}

/// Why auto chose its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Too few gaps seen: ski-rental's deadline (one boot time).
    Learning,
    /// The deadline with the lowest expected cost under the learned gaps.
    Learned,
    /// The learned deadline risked more than the 2× guarantee allows: the best one
    /// within it.
    Guarded,
}

/// The deadline auto chose and why.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoDecision {
    /// Keep the instance idle this long.
    pub idle: Duration,
    pub reason: Reason,
    /// Recent gaps the decision rests on.
    pub gaps: u32,
    /// Share of those gaps no longer than `idle` (its quantile in the gap distribution).
    pub quantile: f64,
    /// Expected machine-seconds saved per idle spell against ski-rental's deadline.
    pub expected_saving: f64,
    /// Seconds of risk this spell reserves against the 2× guarantee: `|idle − boot|`.
    pub risk: f64,
    /// The context histogram the decision rests on ([`SpellContext::key`]); `None`: the
    /// shape's whole histogram.
    pub context: Option<String>,
}

impl AutoDecision {
    /// A one-line explanation for the instance's status, with money at `price` $/hour.
    pub fn explain(&self, price: f64) -> String {
        let idle = crate::api::duration::format_duration(self.idle);
        match self.reason {
            Reason::Learning => {
                format!("idle {idle} (one boot, ski-rental): {} gaps seen, {MIN_GAPS} needed to learn", self.gaps)
            }
            Reason::Learned | Reason::Guarded => format!(
                "idle {idle}: {:.0}% of the last {} gaps{} were shorter; expected saving ${:.4} per idle spell against ski-rental{}",
                self.quantile * 100.0,
                self.gaps,
                self.context.as_deref().map_or(String::new(), |k| format!(
                    " of spells starting as this one ({}: {})",
                    k,
                    SpellContext::describe(k)
                )),
                self.expected_saving * price / 3600.0,
                if self.reason == Reason::Guarded { " (limited by the 2x guarantee)" } else { "" }
            ),
        }
    }
}

/// Number of gaps in a histogram.
fn total(counts: &[u32]) -> u32 {
    counts.iter().sum()
}

/// Adds `gap` to a histogram, halving every count past [`MAX_GAPS`].
fn add(counts: &mut Vec<u32>, gap: Duration) {
    if counts.len() != BUCKETS {
        counts.resize(BUCKETS, 0);
    }
    counts[bucket_of(gap.as_secs_f64())] += 1;
    if total(counts) > MAX_GAPS {
        for c in counts.iter_mut() {
            *c /= 2;
        }
    }
}

/// Expected machine-seconds of an idle spell kept for `t` under histogram `counts`: idle
/// until the next run, or `t` then a boot.
fn expected_cost(counts: &[u32], t: f64, boot: f64) -> f64 {
    let n = total(counts).max(1) as f64;
    let sum: f64 = counts
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let g = representative(k);
            c as f64 * if g <= t { g } else { t + boot }
        })
        .sum();
    sum / n
}

/// Share of the gaps of `counts` no longer than `t`.
fn quantile(counts: &[u32], t: f64) -> f64 {
    let below: u32 = counts.iter().enumerate().filter(|(k, _)| representative(*k) <= t).map(|(_, c)| c).sum();
    below as f64 / total(counts).max(1) as f64
}

/// What is known of the moment an idle spell starts besides the instance's shape, from
/// what the controller sees in its caches: how many other instances of the shape in the
/// pool are idle (each would be taken first, or alongside), and how long ago the pool's
/// last run arrived (gaps between arrivals that are already long tend to go on).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpellContext {
    /// Other idle instances of the shape in the pool.
    pub idle_others: u32,
    /// Since the pool's last run arrival; `None`: no run seen.
    pub since_arrival: Option<Duration>,
}

/// Most context histograms kept per shape (the keys [`SpellContext::key`] can give).
pub const MAX_CONTEXTS: usize = 12;

impl SpellContext {
    /// The key of the spell's context histogram: `i` and the other idle instances (0, 1,
    /// 2 for 2-3, 4 for 4 or more), `a` and the time since the last arrival (0: under a
    /// quarter of a boot, 1: under a boot, 2: longer or none seen), e.g. `i2a0`.
    pub fn key(&self, boot: Duration) -> String {
        let i = match self.idle_others {
            0 => 0,
            1 => 1,
            2 | 3 => 2,
            _ => 4,
        };
        let b = boot.as_secs_f64();
        let a = match self.since_arrival.map(|d| d.as_secs_f64()) {
            Some(s) if s < b / 4.0 => 0,
            Some(s) if s < b => 1,
            _ => 2,
        };
        format!("i{i}a{a}")
    }

    /// The context a [`key`](Self::key) stands for, in words.
    pub fn describe(key: &str) -> String {
        let idle = match key.get(1..2) {
            Some("0") => "no other instance idle",
            Some("1") => "1 other idle",
            Some("2") => "2-3 others idle",
            Some("4") => "4 or more others idle",
            _ => "any number idle",
        };
        let arrival = match key.get(3..4) {
            Some("0") => "the last run arrived under a quarter of a boot before",
            Some("1") => "the last run arrived under one boot before",
            Some("2") => "no run arrived for a boot or more",
            _ => "any last arrival",
        };
        format!("{idle}, {arrival}")
    }
}

impl GapSummary {
    /// Number of gaps in the histogram.
    pub fn gaps(&self) -> u32 {
        total(&self.counts)
    }

    /// Records the gap between an instance going idle and the next run that fitted it.
    pub fn observe(&mut self, gap: Duration) {
        add(&mut self.counts, gap);
    }

    /// Risk the guarantee still allows a new idle spell to take.
    pub fn slack(&self, boot: Duration) -> f64 {
        (2.0 * self.bound_cost + boot.as_secs_f64() - self.auto_cost - self.reserved).max(0.0)
    }

    /// The idle duration for an instance of this shape that goes idle now.
    pub fn decide(&self, boot: Duration) -> AutoDecision {
        self.decide_within(None, boot)
    }

    /// The idle duration for an instance of this shape that goes idle now in a context
    /// (`key`, its histogram of gaps) with at least [`MIN_GAPS`] gaps, else from the
    /// shape's histogram. The guard is the shape's either way.
    pub fn decide_within(&self, context: Option<(&str, &[u32])>, boot: Duration) -> AutoDecision {
        let (context, counts) = match context.filter(|(_, c)| total(c) >= MIN_GAPS) {
            Some((key, counts)) => (Some(key.to_string()), counts),
            None => (None, &self.counts[..]),
        };
        let b = boot.as_secs_f64();
        let gaps = total(counts);
        let ski = AutoDecision {
            idle: boot,
            reason: Reason::Learning,
            gaps,
            quantile: 0.0,
            expected_saving: 0.0,
            risk: 0.0,
            context: None,
        };
        if gaps < MIN_GAPS {
            return AutoDecision { quantile: quantile(counts, b), ..ski };
        }
        let ski_cost = expected_cost(counts, b, b);
        // Whole seconds, as an idle duration is written.
        let candidates = [0.0, b].into_iter().chain((0..BUCKETS).map(edge)).map(f64::ceil);
        let cost_of = |t: f64| expected_cost(counts, t, b);
        // Cheapest expected cost; among equals the one nearest one boot (least risk).
        let better =
            |x: &f64, y: &f64| cost_of(*x).total_cmp(&cost_of(*y)).then((x - b).abs().total_cmp(&(y - b).abs()));
        let best = candidates.clone().min_by(better).unwrap_or(b);
        let slack = self.slack(boot);
        let (t, reason) = if (best - b).abs() <= slack {
            (best, Reason::Learned)
        } else {
            (candidates.filter(|t| (t - b).abs() <= slack).min_by(better).unwrap_or(b), Reason::Guarded)
        };
        AutoDecision {
            idle: Duration::from_secs_f64(t),
            reason,
            gaps,
            quantile: quantile(counts, t),
            expected_saving: ski_cost - cost_of(t),
            risk: (t - b).abs(),
            context,
        }
    }

    /// An idle spell started under `decision`: reserve its risk.
    pub fn open(&mut self, decision: &AutoDecision) {
        self.reserved += decision.risk;
    }

    /// The spell ended with a run taking the instance after `gap`.
    pub fn close_reused(&mut self, decision: &AutoDecision, gap: Duration, boot: Duration) {
        let g = gap.as_secs_f64();
        self.reserved = (self.reserved - decision.risk).max(0.0);
        self.auto_cost += g;
        self.bound_cost += g.min(boot.as_secs_f64());
        self.observe(gap);
    }

    /// The spell ended with the instance terminated at its deadline: counted as its idle
    /// time plus the boot a later run will pay, against what the planner would at least
    /// have paid (`min(idle, boot)`: the gap was longer than `idle`), until the gap is
    /// known ([`gap_after_expiry`](Self::gap_after_expiry)).
    pub fn close_expired(&mut self, decision: &AutoDecision, boot: Duration) {
        let t = decision.idle.as_secs_f64();
        let b = boot.as_secs_f64();
        self.reserved = (self.reserved - decision.risk).max(0.0);
        self.auto_cost += t + b;
        self.bound_cost += t.min(b);
    }

    /// A run arrived `gap` after an instance that expired (idle for `idle` under auto, or
    /// under any deadline for the histogram alone) had gone idle, and launched a machine:
    /// the gap is now known. It joins the histogram, and the planner's share of that
    /// spell is settled ([`settle`](Self::settle)).
    pub fn gap_after_expiry(&mut self, idle: Option<Duration>, gap: Duration, boot: Duration) {
        if let Some(idle) = idle {
            self.settle(idle, gap, boot);
        }
        self.observe(gap);
    }

    /// The planner's share of a spell that expired after `idle`, counted as
    /// `min(idle, boot)` at expiry, becomes `min(gap, boot)`: `gap` is the time from the
    /// spell's start to the next arrival of a run that launched a machine of its shape
    /// (no later than the run that would have taken it, so never more than its share).
    pub fn settle(&mut self, idle: Duration, gap: Duration, boot: Duration) {
        let b = boot.as_secs_f64();
        let known = gap.as_secs_f64().max(idle.as_secs_f64()).min(b);
        self.bound_cost += known - idle.as_secs_f64().min(b);
    }
}

#[cfg(test)]
mod tests;
