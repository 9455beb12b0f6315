//! The `Profile` kind: a named, reusable set of policies.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::policy::PolicySpec;
use super::pool::BudgetSpec;

/// A named set of policies (dstack's `profiles.yml` entry) that pools, instances and runs
/// refer to by name.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kpool.dev",
    version = "v1alpha1",
    kind = "Profile",
    namespaced,
    derive = "Default",
    status = "ProfileStatus",
    shortname = "kprof",
    category = "kpool",
    doc = "A named set of policies: spot policy, max price, retry, idle duration, backends, regions.",
    printcolumn(name = "Spot", type_ = "string", json_path = ".spec.spotPolicy"),
    printcolumn(name = "Max Price", type_ = "number", json_path = ".spec.maxPrice"),
    printcolumn(name = "Idle", type_ = "string", json_path = ".spec.idleDuration"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSpec {
    #[serde(flatten)]
    pub policy: PolicySpec,
    /// Money limits over the instances launched under this profile (an instance's own
    /// `spec.profile`, else its pool's `spec.profile`), or, with `scope: Namespace`, over
    /// every instance of the namespace. A launch that would go beyond waits
    /// (`BudgetExceeded`), as with a pool's budget; nothing running is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<ProfileBudget>,
}

/// `Profile.spec.budget`: a pool budget's limits and what they cover.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.enforce) || self.enforce == 'wait'")
    .message("budget.enforce: terminate is supported on Pool budgets only; a Profile's budget holds launches"))]
pub struct ProfileBudget {
    #[serde(flatten)]
    pub limits: BudgetSpec,
    /// `Profile` (the default): the instances launched under this profile; `Namespace`:
    /// every instance of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<BudgetScope>,
}

/// What a profile's budget covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum BudgetScope {
    /// The instances launched under the profile.
    #[default]
    Profile,
    /// Every instance of the namespace.
    Namespace,
}

/// Observed state of a `Profile`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileStatus {
    /// Conditions of the profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
