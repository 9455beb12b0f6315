//! The `Profile` kind: a named, reusable set of policies.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::policy::PolicySpec;

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
