//! The `Run` kind: a workload that needs a machine.

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::PolicySpec;
use super::resources::ResourcesSpec;

/// The finalizer runs carried at first: runs that still carry it are
/// cleaned up by the run controller when deleted, which then removes it. New runs carry
/// none (see `controllers::run::reconcile`).
pub const RUN_FINALIZER: &str = "kpool.dev/run";

/// Lifecycle phase of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RunPhase {
    /// Waiting for an idle instance or for pool capacity.
    #[default]
    Pending,
    /// A new instance is being provisioned for the run.
    Provisioning,
    /// The run's commands execute on its instance.
    Running,
    /// The commands exited with code 0.
    Succeeded,
    /// The commands failed, or no machine could be had within the retry window.
    Failed,
    /// Stopped by the user, by `maxDuration`, or because the instance went away.
    Terminated,
}

impl RunPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunPhase::Pending => "Pending",
            RunPhase::Provisioning => "Provisioning",
            RunPhase::Running => "Running",
            RunPhase::Succeeded => "Succeeded",
            RunPhase::Failed => "Failed",
            RunPhase::Terminated => "Terminated",
        }
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        matches!(self, RunPhase::Succeeded | RunPhase::Failed | RunPhase::Terminated)
    }
}

/// A workload: commands to run on a machine of the pool that meets its requirements.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kpool.dev",
    version = "v1alpha1",
    kind = "Run",
    namespaced,
    derive = "Default",
    status = "RunStatus",
    shortname = "krun",
    category = "kpool",
    doc = "A workload. It reuses an idle instance of its pool that fits, or provisions the cheapest offer.",
    printcolumn(name = "Instance", type_ = "string", json_path = ".status.instance"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Queue", type_ = "integer", json_path = ".status.queuePosition", priority = 1),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.terminationReason", priority = 1),
    printcolumn(name = "Exit", type_ = "integer", json_path = ".status.exitCode", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    /// The pool to take an instance from. Defaults to the namespace's default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("pool is immutable"))]
    pub pool: Option<String>,
    /// Name of a `Profile` (same namespace) to take unset policies from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Run on this instance of the pool and no other (it must fit and be idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// What the machine must have, in dstack's syntax, e.g. `{gpu: "A100:80GB:1", memory: "64GB.."}`.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("resources are immutable: create a new Run"))]
    pub resources: ResourcesSpec,
    /// Container image to run the commands in. Without it they run on the host (`ssh`
    /// instances), or in the backend's `runImage` (`kubernetes` instances, where a run
    /// always executes in a Pod). An image reference such as `ubuntu:24.04`: it must not
    /// start with `-` nor contain whitespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^\s-]\S*$"))]
    pub image: Option<String>,
    /// Shell commands, run in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// Environment variables: values, or `secretKeyRef`s to `Secret`s in the same namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "env_schema")]
    pub env: Vec<EnvVar>,
    /// Working directory for the commands: relative to the login user's home on `ssh`
    /// instances; an absolute path in the container on `kubernetes` instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Set to `true` to stop the run; its instance goes back to idle.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
    /// Place in its pool's queue: runs waiting for an idle instance or for room in the
    /// pool are served by priority (higher first), then by age (older first). A run never
    /// takes an idle instance or a free slot that a run ahead of it in the queue can use.
    /// From -1000 to 1000; 0 when unset.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// Placement and lifetime policies; unset fields come from the profile and the pool.
    #[serde(flatten)]
    pub policy: PolicySpec,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn env_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    <Vec<EnvVar> as JsonSchema>::json_schema(generator)
}

/// Observed state of a `Run`.
// Defaulted by the API server on every read until kpool writes it, so that a Run kpool
// has not seen yet carries `observedGeneration: 0`, which GitOps tools read as
// InProgress (without a status they would read it as Current).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {}))]
pub struct RunStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: RunPhase,
    /// The pool the run takes instances from (resolved from `spec.pool` or the default pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The instance the run is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The instance being provisioned for this run, when none could be reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_instance: Option<String>,
    /// While the run waits for an instance: its place in its pool's queue, 1 for the run
    /// served next (higher `spec.priority` first, then older). Refreshed whenever the run
    /// is reconciled while it waits (at the latest every 30 s, and at once when capacity
    /// frees); `kubectl pool queue` computes it live. Absent once the run is on an
    /// instance or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// When the run was first submitted for placement (start of the retry window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<Time>,
    /// When the commands started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Exit code of the commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the run ended, e.g. `ContainerExitedWithError`, `NoCapacity`, `Stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<String>,
    /// Number of placement attempts so far (retries included).
    #[serde(default)]
    pub attempts: u32,
    /// Attempts that ended, oldest first (at most 20 kept): where each ran and why it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunAttempt>,
    /// `Scheduled` (an instance is assigned), `Queued` (True while the run waits in its
    /// pool's queue; its reason says why it waits — `PoolAtCapacity`, `BudgetExceeded`,
    /// `NoIdleInstance`, `Provisioning`, `Retrying`… — and its message gives the position) and
    /// `Succeeded` (the summary: True once the commands exited 0, False once the run ended
    /// otherwise, Unknown before).
    /// `Reconciling` is True while the run waits for an instance (Pending, Provisioning);
    /// `Stalled` is True once it ended without doing its work (Failed, or Terminated by
    /// anything but `stop`). Both are absent otherwise, so kstatus (Flux, kpt) reads a
    /// Running run as Current, as it does a started Job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes; 0 until kpool has seen the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 0))]
    pub observed_generation: Option<i64>,
}

/// One attempt of a run that ended (retried or final).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunAttempt {
    /// The instance it ran on (or was being provisioned), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// When its commands started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it ended.
    pub finished_at: Time,
    /// Exit code of its commands, when they exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended, e.g. `ContainerExitedWithError`, `Interrupted`, `NoCapacity`, `Completed`.
    pub reason: String,
}

impl crate::api::conditions::ObservedStatus for RunStatus {
    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }

    fn observe(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
        crate::api::conditions::observe(&mut self.conditions, generation);
    }
}
