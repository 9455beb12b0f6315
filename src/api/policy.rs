//! Policy fields shared by `Profile`, `Pool` (as defaults), `Instance` and `Run`:
//! the equivalent of dstack's `profiles.yml`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether to use spot (interruptible, cheaper) or on-demand machines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SpotPolicy {
    /// Only spot machines.
    Spot,
    /// Only on-demand machines (the default).
    #[default]
    OnDemand,
    /// Spot or on-demand, whichever is cheaper.
    Auto,
    /// Spot first; on-demand once the run has been interrupted `spotFallback.afterInterruptions`
    /// times, or no spot machine could be launched within `spotFallback.afterWaiting`.
    SpotThenOnDemand,
}

/// When `spotPolicy: spot-then-on-demand` gives up on spot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpotFallbackSpec {
    /// Provision on-demand once the run has lost this many spot machines. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub after_interruptions: Option<u32>,
    /// Provision on-demand when no spot machine could be launched for this long, e.g.
    /// `10m` (the default), `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+([smhdw]|[0-9smhdw]*)$"))]
    pub after_waiting: Option<String>,
}

/// What happens to an instance once it has been idle for its idle duration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TerminationPolicy {
    /// Terminate the machine after it has been idle for `idleDuration` (the default).
    #[default]
    DestroyAfterIdle,
    /// Keep the machine until it is removed by hand.
    DontDestroy,
}

/// Whether a run may provision a new instance when no idle one fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CreationPolicy {
    /// Only reuse idle instances of the pool; never provision (dstack's `--reuse`).
    Reuse,
    /// Reuse an idle instance if one fits, otherwise provision the cheapest offer (the default).
    #[default]
    ReuseOrCreate,
}

/// An event that a retry policy reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryEvent {
    /// No offer had capacity (or every provisioning attempt failed).
    NoCapacity,
    /// A spot machine was reclaimed by the provider, or the instance became unreachable.
    Interruption,
    /// The run's commands exited with an error, or its job could not be started or
    /// followed for the unreachable grace.
    Error,
}

/// When and for how long to retry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Events that trigger a retry. Defaults to all of `no-capacity`, `interruption` and `error`.
    // Not `on`: kubectl reads YAML as YAML 1.1, where an unquoted `on` key is the boolean
    // `true`, so `kubectl apply` would send (and a CRD applied with kubectl would declare)
    // a field named "true".
    #[serde(rename = "onEvents", default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<RetryEvent>>,
    /// How long to keep retrying, counted from the first attempt, e.g. `30m`, `1h`, `1d`.
    /// Defaults to `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+([smhdw]|[0-9smhdw]*)$"))]
    pub duration: Option<String>,
}

/// Policies for placing, keeping and retrying work. Every field is optional: an unset
/// field is taken from the referenced `Profile`, then from the `Pool`'s defaults, then
/// from the built-in defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// `spot`, `on-demand` (default), `auto` (whichever is cheaper) or
    /// `spot-then-on-demand` (spot first, on-demand as `spotFallback` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_policy: Option<SpotPolicy>,
    /// With `spotPolicy: spot-then-on-demand`: when to provision on-demand instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_fallback: Option<SpotFallbackSpec>,
    /// The highest price to pay for a machine, in US dollars per hour, e.g. `2.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_price: Option<f64>,
    /// Retry when no capacity is available, when a spot machine is interrupted, or when
    /// the run fails, for a bounded duration. Without it, nothing is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// How long an instance may stay idle before it is terminated, e.g. `5m`, `72h`,
    /// `off` to keep it, or `auto` to let kpool choose for each idle spell from the idle
    /// gaps the pool has seen for the instance's machine type, its price and its boot
    /// time (never more than twice what a planner that knew the future would spend; the
    /// instance's `Ready` condition says the deadline chosen and why). Defaults to `5m`
    /// for instances that a run provisioned and `72h` for instances added by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(off|-1|auto|[0-9]+([smhdw][0-9smhdw]*)?)$"))]
    pub idle_duration: Option<String>,
    /// `DestroyAfterIdle` (default) or `DontDestroy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_policy: Option<TerminationPolicy>,
    /// Runs only: `ReuseOrCreate` (default) provisions when no idle instance fits;
    /// `Reuse` only ever reuses idle instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_policy: Option<CreationPolicy>,
    /// Runs only: the longest a run may execute before it is stopped, e.g. `2h`, or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(off|-1|[0-9]+([smhdw][0-9smhdw]*)?)$"))]
    pub max_duration: Option<String>,
    /// Names of the `Backend` objects (in the same namespace) that may be used. Empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<String>>,
    /// Regions that may be used. Empty: all regions of the backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Provider instance types that may be used, e.g. `p4d.24xlarge`. Empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_types: Option<Vec<String>>,
}
