//! The `Pool` kind: a named group of instances with defaults and limits.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::policy::PolicySpec;
use super::resources::ResourcesSpec;
use crate::core::idle_auto::spell::ShapeGaps;

/// Annotation that marks a pool as the namespace's default pool.
pub const DEFAULT_POOL_ANNOTATION: &str = "kpool.dev/default";
/// Name of the default pool created on first use when no pool is marked default.
pub const DEFAULT_POOL_NAME: &str = "default-pool";

/// A pool of instances that runs reuse. Objects without `spec.pool` belong to the
/// namespace's default pool: the one annotated `kpool.dev/default: "true"`, else
/// `default-pool`, which is created on first use.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kpool.dev",
    version = "v1alpha1",
    kind = "Pool",
    namespaced,
    derive = "Default",
    status = "PoolStatus",
    shortname = "kpl",
    category = "kpool",
    doc = "A pool of machines that runs reuse, with default policies and limits.",
    printcolumn(name = "Profile", type_ = "string", json_path = ".spec.profile"),
    printcolumn(name = "Max", type_ = "integer", json_path = ".spec.maxInstances"),
    printcolumn(name = "Idle", type_ = "integer", json_path = ".status.idle"),
    printcolumn(name = "Busy", type_ = "integer", json_path = ".status.busy"),
    printcolumn(name = "Provisioning", type_ = "integer", json_path = ".status.provisioning"),
    printcolumn(name = "$/Hour", type_ = "number", json_path = ".status.pricePerHour"),
    printcolumn(name = "Spent $", type_ = "number", json_path = ".status.cost.total.dollars", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Name of a `Profile` (same namespace) whose policies apply to everything in the pool,
    /// unless the instance or run sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The most instances (not terminated) the pool may hold. A run that would need one
    /// more waits, with a condition that says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_instances: Option<u32>,
    /// Default policies for the pool's instances and runs; below `profile` in precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<PolicySpec>,
    /// Idle instances kept ready so that runs start at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmSpec>,
    /// Money limits: a launch that would go beyond one waits (`BudgetExceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

/// What a pool (or a profile, or a namespace: see `Profile.spec.budget`) may spend.
/// Checked before each launch (runs' and warm instances'); what runs already is stopped
/// for it only with `enforce: terminate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSpec {
    /// The most the live instances may cost together, in US dollars per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_hourly_price: Option<f64>,
    /// The most that may be spent over a sliding window, from the instances' billed time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spend: Option<SpendLimit>,
    /// What happens when the budget is exceeded while instances run (its limits were
    /// lowered, or the spend window filled up): `wait` (the default) only holds new
    /// launches; `terminate` also ends instances until the budget holds — idle ones
    /// first, then busy ones, newest first (their runs are interrupted, and retried as
    /// their policy says). Pool budgets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce: Option<BudgetEnforce>,
}

/// `budget.enforce`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetEnforce {
    /// Hold new launches; never stop what runs.
    #[default]
    Wait,
    /// Hold new launches and end instances until the budget holds.
    Terminate,
}

/// A spend limit over a sliding window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendLimit {
    /// US dollars.
    #[schemars(range(min = 0.0))]
    pub dollars: f64,
    /// The window, e.g. `1d`, `7d`, `30d`.
    #[schemars(regex(pattern = r"^[0-9]+([smhdw]|[0-9smhdw]*)$"))]
    pub per: String,
}

/// Warm headroom: the pool keeps at least `minIdle` idle instances of these resources
/// (more while a window is open). It launches one whenever a run takes one, never beyond
/// `maxInstances` or the budget; warm instances do not idle out, and the pool ends the
/// idle ones beyond what it wants (when a run gives one back, a window closes, or
/// `minIdle` is lowered).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmSpec {
    /// How many idle instances to keep ready outside the windows (default 0).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_idle: u32,
    /// What each warm instance has, in the manifest grammar (e.g. `gpu: 24GB..`).
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Policies of the warm instances (spot, price, backends, regions…), below the
    /// pool's profile and defaults as for any instance; `idleDuration` does not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    /// Times with more headroom, e.g. the working day: while windows are open the pool
    /// keeps the largest of their `minIdle` and the `minIdle` above; when the last closes,
    /// the idle warm instances beyond that are ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub windows: Vec<WarmWindow>,
}

/// Five cron fields, each a comma-separated list of `*`, `N`, `N-M`, optionally with a
/// step `/S`; numbers in range (minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7).
pub const CRON_PATTERN: &str = concat!(
    r"^(\*|[1-5]?[0-9](-[1-5]?[0-9])?)(/[1-9][0-9]?)?(,(\*|[1-5]?[0-9](-[1-5]?[0-9])?)(/[1-9][0-9]?)?)*",
    r" +(\*|(1?[0-9]|2[0-3])(-(1?[0-9]|2[0-3]))?)(/[1-9][0-9]?)?(,(\*|(1?[0-9]|2[0-3])(-(1?[0-9]|2[0-3]))?)(/[1-9][0-9]?)?)*",
    r" +(\*|([1-9]|[12][0-9]|3[01])(-([1-9]|[12][0-9]|3[01]))?)(/[1-9][0-9]?)?(,(\*|([1-9]|[12][0-9]|3[01])(-([1-9]|[12][0-9]|3[01]))?)(/[1-9][0-9]?)?)*",
    r" +(\*|([1-9]|1[0-2])(-([1-9]|1[0-2]))?)(/[1-9][0-9]?)?(,(\*|([1-9]|1[0-2])(-([1-9]|1[0-2]))?)(/[1-9][0-9]?)?)*",
    r" +(\*|[0-7](-[0-7])?)(/[1-9][0-9]?)?(,(\*|[0-7](-[0-7])?)(/[1-9][0-9]?)?)*$",
);

/// A time window of warm headroom: it opens at each firing of `schedule` and stays open
/// for `duration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmWindow {
    /// When the window opens, as five cron fields: minute hour day-of-month month
    /// day-of-week, each `*`, a number, a range `1-5`, a list `1,15`, or a step `*/15`;
    /// numbers only (Sunday is 0 or 7). `0 8 * * 1-5`: weekdays at 08:00.
    #[schemars(regex(pattern = CRON_PATTERN))]
    pub schedule: String,
    /// How long it stays open: `10h`, `1h30m`, `1d`.
    #[schemars(regex(pattern = r"^[0-9]+([smhdw]|[0-9smhdw]*)$"))]
    pub duration: String,
    /// Idle warm instances to keep while it is open.
    #[schemars(range(min = 0, max = 1000))]
    pub min_idle: u32,
    /// The IANA time zone the schedule is read in (`Europe/Berlin`); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// How the pool's warm headroom stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmStatus {
    /// Idle warm instances wanted now: `spec.warm.minIdle`, or more while a window is open.
    pub wanted: u32,
    /// Idle warm instances ready now.
    pub ready: u32,
    /// Warm instances on their way (pending or provisioning).
    pub starting: u32,
    /// The schedules of the windows open now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_windows: Vec<String>,
    /// When a window next opens or closes (the wanted count may change then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_change: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Spend of a group of instances: billed time × price, from their `status.usage`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Spend {
    /// US dollars, from launch to termination (or now).
    #[serde(default)]
    pub dollars: f64,
    /// Of those, while a run held the machine.
    #[serde(default)]
    pub busy_dollars: f64,
    /// Of those, while the machine waited idle for reuse.
    #[serde(default)]
    pub idle_dollars: f64,
    /// Runs the instances served.
    #[serde(default)]
    pub runs: u64,
    /// Of those, runs that found the instance already up: all runs of an instance added
    /// by hand or kept warm, and all but the first of one a run provisioned.
    #[serde(default)]
    pub reused_runs: u64,
    /// Instances counted.
    #[serde(default)]
    pub instances: u64,
    /// What `idleDuration: auto` saved against a fixed 5-minute idle duration on the idle
    /// spells it settled, in US dollars (negative: auto cost more); see an Instance's
    /// `status.usage.savedVs5mSeconds`.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub saved_vs_5m_dollars: f64,
    /// Auto idle spells settled into `savedVs5mDollars`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub settled_vs_5m: u64,
    /// Auto idle spells ended before 5 minutes, left out of `savedVs5mDollars`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub unsettled_vs_5m: u64,
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Spend {
    /// Adds `o` to these figures.
    pub fn add(&mut self, o: &Spend) {
        self.dollars += o.dollars;
        self.busy_dollars += o.busy_dollars;
        self.idle_dollars += o.idle_dollars;
        self.runs += o.runs;
        self.reused_runs += o.reused_runs;
        self.instances += o.instances;
        self.saved_vs_5m_dollars += o.saved_vs_5m_dollars;
        self.settled_vs_5m += o.settled_vs_5m;
        self.unsettled_vs_5m += o.unsettled_vs_5m;
    }

    /// The figures with dollars rounded to 1/10,000 (what status shows).
    pub fn rounded(mut self) -> Spend {
        let r = |d: f64| (d * 10_000.0).round() / 10_000.0;
        (self.dollars, self.busy_dollars, self.idle_dollars, self.saved_vs_5m_dollars) =
            (r(self.dollars), r(self.busy_dollars), r(self.idle_dollars), r(self.saved_vs_5m_dollars));
        self
    }
}

/// `Pool.status.cost`: the pool's spend, as of `asOf`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCost {
    /// When the figures were computed: they grow with every second a machine runs, and
    /// are refreshed whenever the pool's status is written, and at least hourly while its
    /// machines run (between two refreshes, `pricePerHour` says how fast they grow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// All the pool's instances: those that exist, and those deleted (`deleted`).
    pub total: Spend,
    /// Instances whose objects were deleted, folded in as each one went.
    #[serde(default)]
    pub deleted: Spend,
    /// UIDs of the last instances folded into `deleted` (at most 32), so that a fold
    /// retried after a crash is not counted twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recently_deleted: Vec<String>,
    /// Auto idle spells that ended before 5 minutes (an instance's `unsettledVs5m`),
    /// weighed against 5 minutes once the pool saw what 5 minutes would have met: a run of
    /// the shape launching a machine within 5 minutes of the spell's start (5 minutes
    /// would have kept the instance for it), or none (5 minutes would have idled that
    /// long).
    #[serde(default, skip_serializing_if = "SettledLater::is_empty")]
    pub settled_later_vs_5m: SettledLater,
}

/// What auto saved against 5 minutes on spells settled after their instance was gone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettledLater {
    /// US dollars saved (negative: auto cost more).
    #[serde(default)]
    pub dollars: f64,
    /// Spells settled.
    #[serde(default)]
    pub spells: u64,
}

impl SettledLater {
    pub fn is_empty(&self) -> bool {
        self.spells == 0
    }

    /// Adds `o` to these figures, dollars rounded to 1/10,000 (what status shows).
    pub fn add(&mut self, o: &SettledLater) {
        self.dollars = ((self.dollars + o.dollars) * 10_000.0).round() / 10_000.0;
        self.spells += o.spells;
    }
}

/// Observed state of a `Pool`.
// Defaulted by the API server on every read until kpool writes it, so that a Pool kpool
// has not seen yet carries `observedGeneration: 0`, which GitOps tools read as
// InProgress (without a status they would read it as Current).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {}))]
pub struct PoolStatus {
    /// `Ready` (True once kpool has counted the pool's instances); `AtCapacity` when
    /// `maxInstances` is reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Instances that are not terminated.
    #[serde(default)]
    pub total: u32,
    /// Instances waiting for or in provisioning.
    #[serde(default)]
    pub provisioning: u32,
    /// Instances ready for a run.
    #[serde(default)]
    pub idle: u32,
    /// Instances running a run.
    #[serde(default)]
    pub busy: u32,
    /// Instances being terminated.
    #[serde(default)]
    pub terminating: u32,
    /// Instances that failed to provision.
    #[serde(default)]
    pub failed: u32,
    /// What the pool's running machines cost, in US dollars per hour.
    #[serde(default)]
    pub price_per_hour: f64,
    /// What `idleDuration: auto` has learned, per machine shape (`BACKEND/INSTANCE_TYPE`):
    /// a histogram of the gaps between an instance going idle and the next run that
    /// took it (or had to launch a machine of that shape), and the costs that keep its
    /// choices within twice the planner's. Kept here so that it survives a restart of
    /// kpool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub idle_gaps: BTreeMap<String, ShapeGaps>,
    /// With `spec.warm`: idle warm instances wanted, ready and starting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmStatus>,
    /// What the pool's machines have cost since the pool exists, deleted Instances
    /// included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<PoolCost>,
    /// The generation of the spec this status describes; 0 until kpool has seen the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 0))]
    pub observed_generation: Option<i64>,
}
