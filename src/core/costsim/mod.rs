//! A trace-driven cost simulator: replays a workload through kpool's own decisions in
//! virtual time and says what each idle policy costs.
//!
//! **What is real.** Every decision is kpool's: waiting runs are matched to idle
//! instances by [`matching::assign`](crate::core::matching::assign) (highest priority,
//! then oldest first), a run that nothing fits asks
//! [`run::no_fit`](crate::core::run::no_fit) and provisions the cheapest offer that
//! [`rank_offers`](crate::core::offers::rank_offers) gives it, instances move through
//! [`instance`](crate::core::instance)'s transitions (`start_provisioning`, `launched`,
//! `claim`, `release`, `terminate`), and an idle instance ends when
//! [`next_step`](crate::core::instance::next_step) says `Expire` for its effective
//! policy. `auto` deadlines come from [`idle_auto`](crate::core::idle_auto).
//!
//! **What is simulated.** A machine boots for [`Config::boot`] after its launch, then
//! takes the run it was provisioned for; it is billed per second at its offer's price
//! from launch to termination. A run either takes an idle instance when it arrives or
//! waits one boot for a new machine, so its wait (arrival → running) is 0 or one boot.
//! Pools have no instance limit. Keep-forever machines are billed until the last run
//! ends (there is no other end).
//!
//! **Trace format.** One run per line, either CSV with a header or JSON lines (a file
//! whose first non-blank character is `{`). Times are seconds (decimals allowed) from
//! the start of the trace; resources use kpool's resource syntax.
//!
//! ```text
//! arrival,duration,cpu,memory,disk,gpu,pool,priority
//! 0,600,,,,A100:1,train,0
//! 900,1200,8..,32GB..,,,default,10
//! ```
//! Every column but `arrival` and `duration` may be left out or empty (`pool` defaults
//! to `default`, `priority` to 0, resources to kpool's defaults). The same as JSON lines:
//! ```text
//! {"arrival": 0, "duration": 600, "resources": {"gpu": "A100:1"}, "pool": "train"}
//! {"arrival": 900, "duration": 1200, "resources": {"cpu": "8..", "memory": "32GB.."}, "priority": 10}
//! ```
//!
//! **The offline lower bound** ([`offline_bound`]): the cheapest schedule of this world for
//! a planner that knows the future; `bound.rs` says how it is computed and why it is one.

mod bound;
mod engine;
pub mod families;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Deserialize;

pub use bound::offline_bound;
pub use engine::simulate;

use crate::api::offer::Offer;
use crate::api::resources::{Requirements, ResourcesSpec};

/// One run of a workload trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRun {
    /// Seconds from the start of the trace.
    pub arrival: f64,
    /// How long the run runs once started, in seconds (more than 0).
    pub duration: f64,
    pub requirements: Requirements,
    pub pool: String,
    /// Higher is served first among runs waiting at the same moment.
    pub priority: i32,
}

/// A line of a trace that could not be read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("trace line {line}: invalid {field} {value:?}: {reason}")]
pub struct TraceError {
    pub line: usize,
    pub field: String,
    pub value: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRun {
    arrival: f64,
    duration: f64,
    #[serde(default)]
    resources: ResourcesSpec,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    priority: i32,
}

fn make_run(
    line: usize,
    arrival: f64,
    duration: f64,
    spec: &ResourcesSpec,
    pool: Option<String>,
    priority: i32,
) -> Result<TraceRun, TraceError> {
    let err = |field: &str, value: String, reason: &str| TraceError {
        line,
        field: field.into(),
        value,
        reason: reason.into(),
    };
    if !(arrival.is_finite() && arrival >= 0.0) {
        return Err(err("arrival", arrival.to_string(), "must be a number of seconds, 0 or more"));
    }
    if !(duration.is_finite() && duration > 0.0) {
        return Err(err("duration", duration.to_string(), "must be a number of seconds, more than 0"));
    }
    let requirements = spec.resolve().map_err(|e| err(&e.field, e.token, &e.reason))?;
    let pool = pool.filter(|p| !p.trim().is_empty()).unwrap_or_else(|| "default".into());
    Ok(TraceRun { arrival, duration, requirements, pool, priority })
}

/// Reads a trace (CSV with a header, or JSON lines), sorted by arrival.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRun>, TraceError> {
    let mut runs = if text.trim_start().starts_with('{') { parse_json_lines(text)? } else { parse_csv(text)? };
    runs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    Ok(runs)
}

fn parse_json_lines(text: &str) -> Result<Vec<TraceRun>, TraceError> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let r: JsonRun = serde_json::from_str(l).map_err(|e| TraceError {
            line: i + 1,
            field: "line".into(),
            value: l.chars().take(80).collect(),
            reason: e.to_string(),
        })?;
        out.push(make_run(i + 1, r.arrival, r.duration, &r.resources, r.pool, r.priority)?);
    }
    Ok(out)
}

fn parse_csv(text: &str) -> Result<Vec<TraceRun>, TraceError> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let header_err = |reason: String| TraceError { line: 1, field: "header".into(), value: String::new(), reason };
    let headers = reader.headers().map_err(|e| header_err(e.to_string()))?.clone();
    const KNOWN: [&str; 10] = [
        "arrival",
        "duration",
        "cpu",
        "memory",
        "disk",
        "gpu",
        "gpuTotalMemory",
        "computeCapability",
        "pool",
        "priority",
    ];
    if let Some(h) = headers.iter().find(|h| !KNOWN.contains(h)) {
        return Err(TraceError {
            line: 1,
            field: "header".into(),
            value: h.into(),
            reason: format!("unknown column; known: {}", KNOWN.join(", ")),
        });
    }
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| TraceError {
            line,
            field: "line".into(),
            value: String::new(),
            reason: e.to_string(),
        })?;
        let get =
            |name: &str| headers.iter().position(|h| h == name).and_then(|p| record.get(p)).filter(|v| !v.is_empty());
        let num = |name: &str| -> Result<Option<f64>, TraceError> {
            get(name)
                .map(|v| {
                    v.parse::<f64>().map_err(|_| TraceError {
                        line,
                        field: name.into(),
                        value: v.into(),
                        reason: "not a number".into(),
                    })
                })
                .transpose()
        };
        let required = |name: &str| -> Result<f64, TraceError> {
            num(name)?.ok_or_else(|| TraceError {
                line,
                field: name.into(),
                value: String::new(),
                reason: "missing".into(),
            })
        };
        let spec = ResourcesSpec {
            cpu: get("cpu").map(Into::into),
            memory: get("memory").map(Into::into),
            disk: get("disk").map(Into::into),
            gpu: get("gpu").map(Into::into),
            gpu_total_memory: get("gpuTotalMemory").map(Into::into),
            compute_capability: get("computeCapability").map(Into::into),
        };
        let priority = match get("priority") {
            Some(v) => v.parse::<i32>().map_err(|_| TraceError {
                line,
                field: "priority".into(),
                value: v.into(),
                reason: "not an integer".into(),
            })?,
            None => 0,
        };
        out.push(make_run(
            line,
            required("arrival")?,
            required("duration")?,
            &spec,
            get("pool").map(Into::into),
            priority,
        )?);
    }
    Ok(out)
}

/// An idle policy to compare.
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// Terminate as soon as the run ends (`idleDuration: 0s`).
    NoReuse,
    /// A fixed idle duration.
    Fixed(Duration),
    /// Never terminate for idleness (`idleDuration: off`).
    KeepForever,
    /// Keep idle while the idle cost stays below one boot's cost: one boot time.
    SkiRental,
    /// `idleDuration: auto` ([`idle_auto`](crate::core::idle_auto)).
    Auto,
    /// Not a policy kpool could run: it knows the future. An instance that goes idle is
    /// kept until the next arrival of a run of its pool and shape that no other idle
    /// instance already waits for, when that comes within one boot time; otherwise it is
    /// torn down at once. A feasible schedule, so its cost is at least the best possible
    /// one: the best policy lies between [`offline_bound`] and this.
    Clairvoyant,
}

impl Policy {
    /// Every policy the simulator compares by default.
    pub fn all() -> Vec<Policy> {
        let m = |n: u64| Policy::Fixed(Duration::from_secs(n * 60));
        vec![
            Policy::NoReuse,
            m(1),
            m(5),
            m(30),
            m(72 * 60),
            Policy::KeepForever,
            Policy::SkiRental,
            Policy::Auto,
            Policy::Clairvoyant,
        ]
    }

    pub fn name(&self) -> String {
        match self {
            Policy::NoReuse => "no-reuse".into(),
            Policy::Fixed(d) => format!("fixed-{}", crate::api::duration::format_duration(*d)),
            Policy::KeepForever => "keep-forever".into(),
            Policy::SkiRental => "ski-rental".into(),
            Policy::Auto => "auto".into(),
            Policy::Clairvoyant => "clairvoyant".into(),
        }
    }
}

/// What the simulated world is made of.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a machine takes from launch until it can run (billed).
    pub boot: Duration,
    /// The offers machines are launched from (one backend's catalog).
    pub catalog: Vec<Offer>,
}

impl Default for Config {
    fn default() -> Self {
        Config { boot: Duration::from_secs(180), catalog: default_catalog() }
    }
}

/// A small on-demand catalog: two CPU machines and three GPU machines.
pub fn default_catalog() -> Vec<Offer> {
    let offer = |instance_type: &str, cpu, memory, gpu: Option<(&str, u32, f64)>, price| Offer {
        backend: "sim".into(),
        region: "sim-1".into(),
        instance_type: instance_type.into(),
        cpu,
        memory,
        disk: None,
        gpu_count: gpu.map(|g| g.1).unwrap_or(0),
        gpu_name: gpu.map(|g| g.0.to_string()),
        gpu_memory: gpu.map(|g| g.2).unwrap_or(0.0),
        price,
        ..Offer::default()
    };
    vec![
        offer("cpu.small", 4, 16.0, None, 0.17),
        offer("cpu.large", 32, 128.0, None, 1.36),
        offer("gpu.a10g", 8, 32.0, Some(("A10G", 1, 24.0)), 1.21),
        offer("gpu.a100", 24, 220.0, Some(("A100", 1, 80.0)), 4.10),
        offer("gpu.h100x8", 192, 2048.0, Some(("H100", 8, 80.0)), 55.0),
    ]
}

/// The machines at one moment and what has been spent so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds from the start of the trace.
    pub t: f64,
    /// Machines launched and not terminated (booting, idle or busy).
    pub live: u32,
    pub idle: u32,
    pub busy: u32,
    /// Dollars billed up to `t`.
    pub cost: f64,
}

/// What one policy costs on one trace. Money in dollars, times in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyReport {
    pub policy: String,
    pub total_cost: f64,
    /// Billed while idle (not booting, not running a run).
    pub idle_cost: f64,
    /// Billed while booting.
    pub boot_cost: f64,
    pub launched: usize,
    pub runs: usize,
    /// Runs that took an instance that was already there.
    pub reused: usize,
    /// Runs that no offer fits (never run, not counted elsewhere).
    pub unplaceable: usize,
    pub wait_p50: f64,
    pub wait_p99: f64,
    /// Wait (arrival → running) of each run that ran, in trace order.
    pub waits: Vec<f64>,
    /// The machines over time, one sample per moment something changed.
    pub timeline: Vec<Sample>,
    /// Under `auto`: what the instances' statuses say auto saved against 5 minutes on the
    /// spells they settled (`status.usage.savedVs5mSeconds` at their price, and the pool's
    /// `cost.settledLaterVs5m`), and how many spells they left out; what `kubectl pool
    /// cost` would print.
    pub saved_vs_5m: f64,
    pub unsettled_vs_5m: u64,
    /// Of the spells ended before 5 minutes, those settled later, once a launch of their
    /// shape told what 5 minutes would have met (the pool's `cost.settledLaterVs5m`; in
    /// `saved_vs_5m`, not in `unsettled_vs_5m`).
    pub settled_later_vs_5m: u64,
}

impl PolicyReport {
    /// Share of runs that reused an instance.
    pub fn reuse_rate(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.reused as f64 / self.runs as f64
        }
    }
}

/// The `q`-quantile (0..=1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
