//! Resource and policy flags, mirroring dstack's, turned into the same spec types the
//! manifests use (so one parser serves both) and checked with errors that name the flag.

use clap::Args;

use crate::api::duration::parse_duration;
use crate::api::policy::{PolicySpec, RetryEvent, RetrySpec, SpotPolicy, TerminationPolicy};
use crate::api::resources::{Requirements, ResourcesSpec, SpecError};
use crate::core::policy::{effective_policy, EffectivePolicy, Origin};

/// Resource requirement flags; the grammar is the one of manifests (`kubectl explain
/// instance.spec.resources`).
#[derive(Args, Clone, Debug, Default)]
pub struct ResourceFlags {
    /// GPUs, e.g. `A100:2`, `24GB..`, `A100,H100:80GB:1..2`, `nvidia:24GB..`.
    #[arg(long, value_name = "SPEC")]
    pub gpu: Option<String>,
    /// CPU cores, e.g. `8`, `4..16`, `arm:8..` (default `2..`).
    #[arg(long, value_name = "SPEC")]
    pub cpu: Option<String>,
    /// Memory, e.g. `64GB..` (default `8GB..`).
    #[arg(long, value_name = "SPEC")]
    pub memory: Option<String>,
    /// Disk, e.g. `200GB..` (default `100GB..`).
    #[arg(long, value_name = "SPEC")]
    pub disk: Option<String>,
}

/// Where an instance or a run goes: its pool, and a profile whose policies apply.
#[derive(Args, Clone, Debug, Default)]
pub struct PoolFlags {
    /// The pool (default: the namespace's default pool).
    #[arg(long)]
    pub pool: Option<String>,
    /// A `Profile` of the namespace whose policies apply.
    #[arg(long)]
    pub profile: Option<String>,
}

/// The plan of `add` and `run`: how many offers it shows, and whether to ask.
#[derive(Args, Clone, Debug)]
pub struct PlanFlags {
    /// Offers to show (when a machine would be provisioned).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_offers: usize,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// Policy flags.
#[derive(Args, Clone, Debug, Default)]
pub struct PolicyFlags {
    /// Only spot machines.
    #[arg(long, conflicts_with_all = ["on_demand", "spot_auto", "spot_policy"])]
    pub spot: bool,
    /// Only on-demand machines (the default).
    #[arg(long, conflicts_with_all = ["spot_auto", "spot_policy"])]
    pub on_demand: bool,
    /// Spot or on-demand, whichever is cheaper.
    #[arg(long, conflicts_with = "spot_policy")]
    pub spot_auto: bool,
    /// `spot`, `on-demand` or `auto`.
    #[arg(long, value_name = "POLICY", value_parser = parse_spot_policy)]
    pub spot_policy: Option<SpotPolicy>,
    /// The most to pay, in US dollars per hour.
    #[arg(long, value_name = "USD", value_parser = parse_price, allow_negative_numbers = true)]
    pub max_price: Option<f64>,
    /// Only these backends (repeatable).
    #[arg(short = 'b', long = "backend", value_name = "NAME")]
    pub backends: Vec<String>,
    /// Only these regions (repeatable).
    #[arg(short = 'r', long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// Only these instance types (repeatable).
    #[arg(long = "instance-type", value_name = "TYPE")]
    pub instance_types: Vec<String>,
    /// How long the instance may stay idle, e.g. `30m`, `off`, or `auto` (learned from
    /// the pool's idle gaps).
    #[arg(long, value_name = "DURATION", value_parser = check_idle_duration)]
    pub idle_duration: Option<String>,
    /// Keep the instance until it is removed, whatever the idle duration.
    #[arg(long)]
    pub dont_destroy: bool,
    /// Retry on no capacity, interruption and error for 1h.
    #[arg(long, conflicts_with = "no_retry")]
    pub retry: bool,
    /// Never retry.
    #[arg(long, conflicts_with = "retry_duration")]
    pub no_retry: bool,
    /// Retry on every event for this long, e.g. `2h`.
    #[arg(long, value_name = "DURATION", value_parser = |s: &str| check_duration("--retry-duration", s))]
    pub retry_duration: Option<String>,
}

fn parse_spot_policy(s: &str) -> Result<SpotPolicy, String> {
    match s {
        "spot" => Ok(SpotPolicy::Spot),
        "on-demand" => Ok(SpotPolicy::OnDemand),
        "auto" => Ok(SpotPolicy::Auto),
        "spot-then-on-demand" => Ok(SpotPolicy::SpotThenOnDemand),
        _ => Err(format!("invalid --spot-policy {s:?}: use spot, on-demand, auto or spot-then-on-demand")),
    }
}

fn parse_price(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("invalid --max-price {s:?}: give US dollars per hour, e.g. 2.5")),
    }
}

fn check_duration(flag: &str, s: &str) -> Result<String, String> {
    if s == "off" {
        return Ok(s.to_string());
    }
    parse_duration(flag, s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

fn check_idle_duration(s: &str) -> Result<String, String> {
    match s {
        "auto" => Ok(s.to_string()),
        _ => check_duration("--idle-duration", s),
    }
}

impl ResourceFlags {
    pub fn spec(&self) -> ResourcesSpec {
        ResourcesSpec {
            gpu: self.gpu.clone(),
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            disk: self.disk.clone(),
            ..Default::default()
        }
    }

    /// These flags over `base` (a manifest's resources): each flag given replaces the
    /// manifest's field, the others are kept.
    pub fn over(&self, base: &ResourcesSpec) -> ResourcesSpec {
        let b = base.clone();
        ResourcesSpec {
            gpu: self.gpu.clone().or(b.gpu),
            cpu: self.cpu.clone().or(b.cpu),
            memory: self.memory.clone().or(b.memory),
            disk: self.disk.clone().or(b.disk),
            ..b
        }
    }

    /// The resolved requirements; an error names the flag (`--gpu`), not the manifest field.
    pub fn resolve(&self) -> Result<Requirements, SpecError> {
        self.spec().resolve().map_err(|mut e| {
            e.field = match e.field.as_str() {
                "resources.gpuTotalMemory" => "--gpu".to_string(),
                f => format!("--{}", f.trim_start_matches("resources.")),
            };
            e
        })
    }
}

impl PolicyFlags {
    pub fn spec(&self) -> PolicySpec {
        let spot_policy = if self.spot {
            Some(SpotPolicy::Spot)
        } else if self.on_demand {
            Some(SpotPolicy::OnDemand)
        } else if self.spot_auto {
            Some(SpotPolicy::Auto)
        } else {
            self.spot_policy
        };
        let retry = if self.no_retry {
            Some(RetrySpec { on: Some(Vec::new()), duration: None })
        } else if self.retry || self.retry_duration.is_some() {
            Some(RetrySpec {
                on: Some(vec![RetryEvent::NoCapacity, RetryEvent::Interruption, RetryEvent::Error]),
                duration: self.retry_duration.clone(),
            })
        } else {
            None
        };
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        PolicySpec {
            spot_policy,
            max_price: self.max_price,
            retry,
            idle_duration: self.idle_duration.clone(),
            termination_policy: self.dont_destroy.then_some(TerminationPolicy::DontDestroy),
            backends: list(&self.backends),
            regions: list(&self.regions),
            instance_types: list(&self.instance_types),
            ..Default::default()
        }
    }

    /// The policy these flags give an instance added by hand, over `layers` (profile, pool).
    pub fn effective(&self, layers: &[&PolicySpec]) -> Result<EffectivePolicy, SpecError> {
        let own = self.spec();
        let mut all = vec![&own];
        all.extend_from_slice(layers);
        effective_policy(&all, Origin::Manual)
    }

    /// These flags over `base` (a manifest's policies): each flag given replaces the
    /// manifest's field, the others are kept.
    pub fn over(&self, base: &PolicySpec) -> PolicySpec {
        let own = self.spec();
        let b = base.clone();
        PolicySpec {
            spot_policy: own.spot_policy.or(b.spot_policy),
            spot_fallback: own.spot_fallback.or(b.spot_fallback),
            max_price: own.max_price.or(b.max_price),
            retry: own.retry.or(b.retry),
            idle_duration: own.idle_duration.or(b.idle_duration),
            termination_policy: own.termination_policy.or(b.termination_policy),
            creation_policy: own.creation_policy.or(b.creation_policy),
            max_duration: own.max_duration.or(b.max_duration),
            backends: own.backends.or(b.backends),
            regions: own.regions.or(b.regions),
            instance_types: own.instance_types.or(b.instance_types),
        }
    }
}
