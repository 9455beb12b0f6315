//! Seeded workload generators: the same family, seed and length always give the same
//! trace.
//!
//! - `steady`: Poisson arrivals (one every 8 minutes on average) of A100 runs of about a
//!   quarter of an hour: gaps mostly longer than a boot, with no pattern beyond chance.
//! - `diurnal`: work-day peaks (a run every 2 minutes from 9:00 to 18:00 on weekdays)
//!   and quiet nights and weekends (one every 90 minutes), A10G runs of about 25 minutes.
//! - `heavy-tail`: gaps drawn from a Pareto law (many of tens of seconds, some of hours
//!   or days), CPU runs of about 5 minutes.
//! - `batch`: sweeps of 20 to 60 A100 runs submitted within a minute, every 8 hours give
//!   or take 2, then nothing.
//!
//! One run in ten has priority 10, the others 0.

use std::fmt;
use std::str::FromStr;

use super::{make_run, TraceError, TraceRun};
use crate::api::resources::ResourcesSpec;

/// A family of generated workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Steady,
    Diurnal,
    HeavyTail,
    Batch,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Steady, Family::Diurnal, Family::HeavyTail, Family::Batch];

    pub fn name(self) -> &'static str {
        match self {
            Family::Steady => "steady",
            Family::Diurnal => "diurnal",
            Family::HeavyTail => "heavy-tail",
            Family::Batch => "batch",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown family {s:?}: expected steady, diurnal, heavy-tail or batch"))
    }
}

/// A small deterministic random source (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with this mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (1.0 - self.unit())
    }
}

const HOUR: f64 = 3600.0;
const DAY: f64 = 24.0 * HOUR;

/// `days` of the family's workload.
pub fn generate(family: Family, seed: u64, days: f64) -> Result<Vec<TraceRun>, TraceError> {
    let mut rng = Rng::new(seed);
    let end = days * DAY;
    let mut runs = Vec::new();
    let gpu = |g: &str| ResourcesSpec { gpu: Some(g.into()), ..ResourcesSpec::default() };
    let mut push = |rng: &mut Rng, arrival: f64, duration: f64, spec: &ResourcesSpec, pool: &str| {
        let priority = if rng.unit() <= 0.1 { 10 } else { 0 };
        let line = runs.len() + 1;
        make_run(line, arrival.round(), duration.round().max(1.0), spec, Some(pool.into()), priority)
            .map(|r| runs.push(r))
    };
    match family {
        Family::Steady => {
            let spec = gpu("A100:1");
            let mut t = rng.exp(480.0);
            while t < end {
                let d = 60.0 + rng.exp(840.0);
                push(&mut rng, t, d, &spec, "train")?;
                t += rng.exp(480.0);
            }
        }
        Family::Diurnal => {
            let spec = gpu("A10G");
            let mut t = 0.0;
            while t < end {
                let hour = t % DAY / HOUR;
                let weekday = (t / DAY) as u64 % 7 < 5;
                let busy = weekday && (9.0..18.0).contains(&hour);
                let d = 120.0 + rng.exp(1380.0);
                t += rng.exp(if busy { 120.0 } else { 5400.0 });
                if t < end {
                    push(&mut rng, t, d, &spec, "dev")?;
                }
            }
        }
        Family::HeavyTail => {
            let spec = ResourcesSpec { cpu: Some("16..".into()), ..ResourcesSpec::default() };
            let mut t = 0.0;
            while t < end {
                // Pareto, shape 1.1, scale 20 s, capped at two days.
                let gap = (20.0 / rng.unit().powf(1.0 / 1.1)).min(2.0 * DAY);
                t += gap;
                if t < end {
                    let d = 30.0 + rng.exp(270.0);
                    push(&mut rng, t, d, &spec, "ci")?;
                }
            }
        }
        Family::Batch => {
            let spec = gpu("A100:1");
            let mut t = rng.range(0.0, 2.0 * HOUR);
            while t < end {
                let n = rng.range(20.0, 61.0) as usize;
                for _ in 0..n {
                    let at = t + rng.range(0.0, 60.0);
                    let d = rng.range(1200.0, 3600.0);
                    push(&mut rng, at, d, &spec, "sweep")?;
                }
                t += rng.range(6.0 * HOUR, 10.0 * HOUR);
            }
        }
    }
    runs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    Ok(runs)
}
