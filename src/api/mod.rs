//! Custom resource types of `kpool.dev/v1alpha1` and the resource-spec grammar.

// kube's `#[kube(printcolumn(..))]` repeats `type_ =` once per column by design.
#![allow(clippy::duplicated_attributes)]

pub mod backend;
pub mod conditions;
pub mod duration;
pub mod instance;
pub mod offer;
pub mod policy;
pub mod pool;
pub mod profile;
pub mod reasons;
pub mod resources;
pub mod run;

pub use backend::{Backend, BackendSpec, BackendStatus, BackendType};
pub use instance::{Instance, InstancePhase, InstanceSpec, InstanceStatus};
pub use offer::Offer;
pub use policy::{CreationPolicy, PolicySpec, RetryEvent, SpotPolicy, TerminationPolicy};
pub use pool::{Pool, PoolSpec, PoolStatus};
pub use profile::{Profile, ProfileSpec};
pub use reasons::Reason;
pub use run::{Run, RunPhase, RunSpec, RunStatus};

use kube::CustomResourceExt;

/// Every CRD of the API group, in a stable order.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![Backend::crd(), Profile::crd(), Pool::crd(), Instance::crd(), Run::crd()]
}
