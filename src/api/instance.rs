//! The `Instance` kind: one machine in a pool.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::offer::Offer;
use super::policy::PolicySpec;
use super::resources::ResourcesSpec;

/// Finalizer that guards the instance's cloud machine.
pub const INSTANCE_FINALIZER: &str = "kpool.dev/machine";
/// Label set on instances a run provisioned; its value is the run's UID (a run's name
/// may be longer than a label value can be). Instances made before carry the run's name.
pub const PROVISIONED_FOR_LABEL: &str = "kpool.dev/provisioned-for";
/// Annotation set on instances a run provisioned; its value is the run's name.
pub const PROVISIONED_FOR_ANNOTATION: &str = "kpool.dev/provisioned-for-run";
/// On an instance a run provisioned: how many times that run had been interrupted
/// before (what `spotPolicy: spot-then-on-demand` counts).
pub const INTERRUPTIONS_ANNOTATION: &str = "kpool.dev/run-interruptions";
/// Label carrying the pool name on instances kpool creates.
pub const POOL_LABEL: &str = "kpool.dev/pool";
/// On instances a pool keeps warm (`spec.warm`): the pool's name.
pub const WARM_LABEL: &str = "kpool.dev/warm";

/// Lifecycle phase of an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum InstancePhase {
    /// Accepted; waiting for an offer or for pool capacity.
    #[default]
    Pending,
    /// A machine is being launched.
    Provisioning,
    /// Ready and free for a run.
    Idle,
    /// Running a run.
    Busy,
    /// The machine is being deleted.
    Terminating,
    /// The machine is gone.
    Terminated,
    /// Provisioning failed for good; see `attempts` and conditions.
    Failed,
}

impl InstancePhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            InstancePhase::Pending => "Pending",
            InstancePhase::Provisioning => "Provisioning",
            InstancePhase::Idle => "Idle",
            InstancePhase::Busy => "Busy",
            InstancePhase::Terminating => "Terminating",
            InstancePhase::Terminated => "Terminated",
            InstancePhase::Failed => "Failed",
        }
    }
}

/// One machine in a pool: either provisioned from the cheapest fitting offer of the
/// allowed backends, or added by hand.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kpool.dev",
    version = "v1alpha1",
    kind = "Instance",
    namespaced,
    derive = "Default",
    status = "InstanceStatus",
    shortname = "kin",
    category = "kpool",
    doc = "A machine in a pool. Runs reuse idle instances; idle ones are terminated after their idle duration.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".status.pool"),
    printcolumn(name = "Backend", type_ = "string", json_path = ".status.offer.backend"),
    printcolumn(name = "Region", type_ = "string", json_path = ".status.offer.region"),
    printcolumn(name = "Resources", type_ = "string", json_path = ".status.resources"),
    printcolumn(name = "Spot", type_ = "boolean", json_path = ".status.offer.spot"),
    printcolumn(name = "Price", type_ = "number", json_path = ".status.offer.price"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Run", type_ = "string", json_path = ".status.run"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    /// The pool this instance belongs to. Defaults to the namespace's default pool.
    /// Cannot be changed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("pool is immutable: create a new Instance"))]
    pub pool: Option<String>,
    /// Name of a `Profile` (same namespace) to take unset policies from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// What the machine must have, in dstack's syntax, e.g. `{gpu: "A100:80GB", disk: "200GB.."}`.
    /// Cannot be changed after creation.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("resources are immutable: create a new Instance"))]
    pub resources: ResourcesSpec,
    /// Placement and lifetime policies; unset fields come from the profile and the pool.
    #[serde(flatten)]
    pub policy: PolicySpec,
}

impl Instance {
    /// How many times the run this instance was provisioned for had been interrupted
    /// before it (0 for an instance added by hand).
    pub fn run_interruptions(&self) -> u32 {
        let annotations = self.metadata.annotations.as_ref();
        annotations.and_then(|a| a.get(INTERRUPTIONS_ANNOTATION)).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The name of the run this instance was provisioned for, if a run provisioned it.
    pub fn provisioned_for(&self) -> Option<&str> {
        let annotations = self.metadata.annotations.as_ref();
        let labels = self.metadata.labels.as_ref();
        annotations
            .and_then(|a| a.get(PROVISIONED_FOR_ANNOTATION))
            // Instances made before the annotation carry the run's name in the label.
            .or_else(|| labels.and_then(|l| l.get(PROVISIONED_FOR_LABEL)))
            .map(String::as_str)
    }
}

/// One provisioning attempt that failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningAttempt {
    /// The offer that was tried.
    pub offer: Offer,
    /// Error category: `InsufficientCapacity`, `RateLimited`, `InvalidConfig`, `NotFound`,
    /// `Unanswered` (the launch got no answer, and its machine was then found absent), `Other`.
    pub error: String,
    /// What the backend said.
    pub message: String,
    /// When the attempt failed.
    pub at: Time,
}

/// What came of the launches kpool sent to one place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LaunchOutcome {
    /// A launch is being sent there; no answer yet.
    #[default]
    Sent,
    /// The provider started the machine there (or kpool found it there after a launch
    /// that got no answer).
    Launched,
    /// The provider refused the launch (no capacity, a quota, an offer it does not have):
    /// no machine was started.
    Refused,
    /// The launch got no answer (a timeout, a dropped connection, a server error): a
    /// machine may have been started. kpool looks it up there, with backoff, and tries no
    /// other offer until it knows.
    Unknown,
    /// Looked up after a launch that got no answer, and not there.
    Absent,
}

/// A place (backend and region) kpool sent a launch to for this instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaunchAttempt {
    /// Name of the `Backend` object the launch went to.
    pub backend: String,
    /// The region (or location) of the launch.
    pub region: String,
    /// The machine type of the last launch there.
    pub instance_type: String,
    /// What came of it.
    #[serde(default)]
    pub outcome: LaunchOutcome,
    /// When the outcome was last recorded (for `Unknown`: when the launch went unanswered).
    pub at: Time,
    /// How many times the machine was looked up there since the launch went unanswered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lookups: u32,
}

/// The idle deadline `idleDuration: auto` chose for one idle spell of an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoIdle {
    /// The idle spell this is for: the `idleSince` it was chosen at.
    pub since: Time,
    /// How long the instance is kept idle in this spell, in seconds.
    pub idle_seconds: u64,
    /// When the instance is terminated unless a run takes it: `since` plus `idleSeconds`.
    pub deadline: Time,
    /// The machine shape whose gaps the choice rests on, `BACKEND/INSTANCE_TYPE`: a key
    /// of the pool's `status.idleGaps`.
    pub shape: String,
    /// The boot time the choice weighed, in seconds.
    pub boot_seconds: u64,
    /// Seconds of risk this spell holds against the guarantee of never spending more
    /// than twice what a planner that knew the future would.
    pub risk_seconds: f64,
    /// Why this deadline: the share of past gaps it covers and the expected saving
    /// against keeping the instance for one boot time (ski-rental).
    pub reason: String,
    /// The context the spell started in, which keys the gap histogram it learns into
    /// (`i` other idle instances of the shape, `a` time since the pool's last arrival;
    /// see `reason`). Absent in records from before contexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How an instance's machine spent its billed time: from its launch until it was confirmed
/// gone, split into busy spells (a run held it), idle spells (waiting for reuse) and the
/// rest (booting, tearing down). Times are kpool's observations; the provider's bill may
/// differ by its rounding and by the seconds before kpool saw a change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// When the provider accepted the launch (billing starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_at: Option<Time>,
    /// When the machine was confirmed gone (billing ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    /// Since when a run has held the instance (the busy spell under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_since: Option<Time>,
    /// Seconds of the busy spells that ended.
    #[serde(default)]
    pub busy_seconds: u64,
    /// Seconds of the idle spells that ended.
    #[serde(default)]
    pub idle_seconds: u64,
    /// Runs that held the instance.
    #[serde(default)]
    pub runs: u32,
    /// Under `idleDuration: auto`: machine-seconds auto saved against a fixed 5-minute
    /// idle duration over the idle spells it settled (negative: auto cost more). A spell
    /// a run ended after a gap `g` would have cost `min(g, 5m)`, plus a boot when `g`
    /// passed 5 minutes, against `g`; a spell auto ended after `d` of 5 minutes or more,
    /// `5m` against `d` (both then pay the next run's boot).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub saved_vs_5m_seconds: i64,
    /// Auto spells settled into `savedVs5mSeconds`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub settled_vs_5m: u32,
    /// Auto spells ended before 5 minutes, not in `savedVs5mSeconds`: what 5 minutes
    /// would have cost depends on whether a fitting run came before they ran out, which
    /// the instance cannot know.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unsettled_vs_5m: u32,
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// Observed state of an `Instance`.
// Defaulted by the API server on every read until kpool writes it, so that an Instance
// kpool has not seen yet carries `observedGeneration: 0`, which GitOps tools read as
// InProgress (without a status they would read it as Current).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {}))]
pub struct InstanceStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: InstancePhase,
    /// The pool the instance belongs to (resolved from `spec.pool` or the default pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The name the machine carries at the provider, derived from this object's UID.
    /// Recorded before any cloud call, so a crash can never launch a second machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_name: Option<String>,
    /// The offer the machine was launched from (or is being launched from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Offer>,
    /// Resources of the machine, e.g. `24xCPU, 220GB, 1xA100 (80GB), 100GB (disk)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<String>,
    /// The provider's id of the machine, e.g. `i-0abc…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// Address where the machine can be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The run the instance is assigned to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The job a run started (or may have started) on the machine, from the moment the
    /// run claims the instance until kpool knows the job has ended (it exited, or kpool
    /// stopped it). An instance whose run let go of it while this is set (the machine did
    /// not answer) stays Busy, with `JobFenced` False, until the job is stopped there; it
    /// never goes back to Idle, nor gives up its machine (a host you own), before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRef>,
    /// Since when the instance has been idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Time>,
    /// When provisioning started (the first attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_started_at: Option<Time>,
    /// Seconds from the first provisioning attempt until the machine was ready: what a
    /// run waits when no idle instance fits (`idleDuration: auto` weighs it against the
    /// cost of keeping the instance idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_seconds: Option<u64>,
    /// How the machine's billed time was spent, for `kubectl pool cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// With `idleDuration: auto`: the deadline chosen for the current idle spell, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_auto: Option<AutoIdle>,
    /// No provisioning call before this time: the backoff after throttling, or the next
    /// look for capacity while the retry window is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
    /// Offers tried and why each failed, oldest first (at most 20 kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<ProvisioningAttempt>,
    /// Every place (backend and region) a launch was sent to for this instance, recorded
    /// before the launch, with what came of it. Deleting the instance deletes its machine
    /// at each place where one may be (every outcome but `Refused`), and the garbage
    /// collector leaves a machine alone only where the instance may hold it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub launch_attempts: Vec<LaunchAttempt>,
    /// `Ready` summarises the instance: True when Idle or Busy, Unknown while Pending or
    /// Provisioning, False otherwise. `Reconciling` is True while the instance is on its
    /// way (Pending, Provisioning, Terminating); `Stalled` is True once it cannot get
    /// further (Failed, or Terminated: kpool never re-creates its machine). Both are
    /// absent otherwise, so kstatus (Flux, kpt) reads Idle and Busy as Current.
    /// `Reachable` is False while the machine does not answer its health check.
    /// `LaunchResolved` is False (reason `Resolving`) while kpool looks for the machine of
    /// a launch that got no answer, and True once it knows (`MachineFound`: the machine
    /// is used; `NoMachine`: the next offer is tried).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes; 0 until kpool has seen the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 0))]
    pub observed_generation: Option<i64>,
}

/// One attempt of a run's job: what executors need to find it on a machine, even once the
/// run has moved on to another attempt or is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    /// The run's name.
    pub run: String,
    /// The run's UID.
    pub run_uid: String,
    /// The run's `status.attempts` when the job started (0 for the first attempt).
    #[serde(default)]
    pub attempt: u32,
}

impl JobRef {
    /// The job of the run's current attempt.
    pub fn of(run: &super::run::Run) -> JobRef {
        JobRef {
            run: run.metadata.name.clone().unwrap_or_default(),
            run_uid: run.metadata.uid.clone().unwrap_or_default(),
            attempt: run.status.as_ref().map_or(0, |s| s.attempts),
        }
    }
}

impl crate::api::conditions::ObservedStatus for InstanceStatus {
    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }

    fn observe(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
        crate::api::conditions::observe(&mut self.conditions, generation);
    }
}
