//! This installation's identity, which every machine it launches carries and by which the
//! garbage collector tells its machines from other installations' in a shared account.
//!
//! Configured (`--cluster-name`, chart value `clusterName`), or else the UID of the
//! cluster's `kube-system` Namespace, read once at start: every cluster has that
//! namespace, nobody deletes it, and its UID is unique per cluster and stable for the
//! cluster's life, so two clusters sharing an account never get the same identity and a
//! restarted or upgraded controller keeps its own. (A cluster rebuilt from a backup gets a
//! new UID: set `--cluster-name` where machines must outlive the cluster's objects.)
//! Controllers of one cluster that each watch one namespace share the identity; the
//! namespace tag keeps them apart.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

use crate::backends::installation_id;

/// The namespace whose UID identifies a cluster.
pub const IDENTITY_NAMESPACE: &str = "kube-system";

/// Why the identity could not be found.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid --cluster-name: {0}")]
    Invalid(String),
    #[error(
        "failed to read the {IDENTITY_NAMESPACE} Namespace, whose UID identifies this installation's machines \
         (grant get on it, or set --cluster-name)"
    )]
    Read(#[source] kube::Error),
    #[error("the {IDENTITY_NAMESPACE} Namespace has no UID; set --cluster-name")]
    NoUid,
}

/// The identity of this installation: `configured` when given, else the UID of the
/// `kube-system` Namespace.
pub async fn resolve(client: &kube::Client, configured: Option<&str>) -> Result<String, IdentityError> {
    if let Some(name) = configured {
        return installation_id(name).map_err(IdentityError::Invalid);
    }
    let ns = Api::<Namespace>::all(client.clone()).get(IDENTITY_NAMESPACE).await.map_err(IdentityError::Read)?;
    let uid = ns.metadata.uid.filter(|u| !u.is_empty()).ok_or(IdentityError::NoUid)?;
    installation_id(&uid).map_err(IdentityError::Invalid)
}
