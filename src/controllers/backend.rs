//! The `Backend` controller: a Backend (and what it reads: its credentials Secret and its
//! catalog ConfigMap) stays until no Instance uses it any more, so that deleting a Backend
//! or its whole namespace never leaves machines that nothing can delete.
//!
//! - Apply: the finalizer [`BACKEND_FINALIZER`] is on the Backend; [`REFERENCE_FINALIZER`]
//!   is put on the Secret of `spec.credentials.secretRef` and the ConfigMap of
//!   `spec.catalog.configMapRef` (like Kubernetes' own `pvc-protection`: deleting them
//!   marks them, they go once no Backend uses them). `Ready` says whether the backend can
//!   be built from them.
//! - Cleanup: while Instances of the namespace have a machine of this backend (their
//!   `status.offer.backend`, or any offer they attempted), the Backend stays, with the
//!   condition `InUse` naming them; a teardown can still read the Backend, its Secret and
//!   its ConfigMap. Then the references are released (unless another Backend that is not
//!   being deleted uses them) and the finalizer is removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::context::FIELD_MANAGER;
use super::{Context, Error};
use crate::api::backend::{Backend, BackendStatus};
use crate::api::conditions::{condition, upsert, READY};
use crate::api::instance::Instance;
use crate::api::reasons::Reason;

/// Finalizer of a Backend: removed once no Instance has a machine of it.
pub const BACKEND_FINALIZER: &str = "kpool.dev/backend-in-use";
/// Finalizer kpool puts on the Secret and ConfigMap a Backend reads.
pub const REFERENCE_FINALIZER: &str = "kpool.dev/used-by-backend";
/// Condition of a Backend being deleted while instances still use it.
pub const IN_USE: &str = "InUse";
/// How often a Backend that is not being deleted is checked again (its Secret may change).
const RECHECK: Duration = Duration::from_secs(600);

/// Reconciles one `Backend`.
pub async fn reconcile(backend: Arc<Backend>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = backend.namespace().unwrap_or_default();
    let api: Api<Backend> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, BACKEND_FINALIZER, backend, |event| async {
        match event {
            Finalizer::Apply(b) => apply(b, &ctx).await,
            Finalizer::Cleanup(b) => cleanup(b, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The Secret and ConfigMap names a Backend reads.
fn references(b: &Backend) -> (Option<String>, Option<String>) {
    let secret = b.spec.credentials.as_ref().map(|c| c.secret_ref.name.clone());
    let config_map = b.spec.catalog.as_ref().and_then(|c| c.config_map_ref.as_ref()).map(|r| r.name.clone());
    (secret, config_map)
}

async fn apply(b: Arc<Backend>, ctx: &Context) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let (secret, config_map) = references(&b);
    if let Some(name) = &secret {
        mark::<Secret>(ctx, &ns, name, true).await?;
    }
    if let Some(name) = &config_map {
        mark::<ConfigMap>(ctx, &ns, name, true).await?;
    }
    let (ready, reason, message) = match ctx.build_backend(&b).await {
        Ok(_) => (
            true,
            Reason::Configured.as_str(),
            "the backend's configuration, credentials and catalog could be read".to_string(),
        ),
        Err(e) => (false, e.category(), super::chain(&e)),
    };
    let mut st = b.status.clone().unwrap_or_default();
    st.conditions.retain(|c| c.type_ != IN_USE);
    let now = ctx.now();
    let c = condition(&st.conditions, READY, ready, reason, message, b.metadata.generation, now);
    upsert(&mut st.conditions, c);
    // Nothing changed (the transition time is kept while the status stays): no request.
    if b.status.as_ref() != Some(&st) {
        write_status(ctx, &b, &st).await?;
    }
    Ok(Action::requeue(if ready { RECHECK } else { Duration::from_secs(60) }))
}

async fn cleanup(b: Arc<Backend>, ctx: &Context) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let instances: Api<Instance> = Api::namespaced(ctx.client.clone(), &ns);
    let users: Vec<String> = instances
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|i| uses(i, &name))
        .map(|i| i.name_any())
        .collect();
    if !users.is_empty() {
        let mut st = b.status.clone().unwrap_or_default();
        let message = format!("deletion waits for the machines of instances {}", users.join(", "));
        let c =
            condition(&st.conditions, IN_USE, true, Reason::InstancesLeft, message, b.metadata.generation, ctx.now());
        if !st.conditions.contains(&c) {
            upsert(&mut st.conditions, c);
            write_status(ctx, &b, &st).await?;
        }
        return Err(Error::BackendInUse(name, users.len()));
    }
    let others: Vec<Backend> = Api::<Backend>::namespaced(ctx.client.clone(), &ns)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|o| o.name_any() != name && o.metadata.deletion_timestamp.is_none())
        .collect();
    let (secret, config_map) = references(&b);
    if let Some(s) = secret.filter(|s| !others.iter().any(|o| references(o).0.as_ref() == Some(s))) {
        mark::<Secret>(ctx, &ns, &s, false).await?;
    }
    if let Some(m) = config_map.filter(|m| !others.iter().any(|o| references(o).1.as_ref() == Some(m))) {
        mark::<ConfigMap>(ctx, &ns, &m, false).await?;
    }
    Ok(Action::await_change())
}

/// Whether `inst` still has (or may have) a machine of backend `name`.
fn uses(inst: &Instance, name: &str) -> bool {
    let Some(st) = inst.status.as_ref() else { return false };
    let launched = st.offer.as_ref().is_some_and(|o| o.backend == name) && st.machine_name.is_some();
    let attempted = st.attempts.iter().any(|a| a.offer.backend == name);
    let finished = matches!(st.phase, crate::api::instance::InstancePhase::Terminated);
    !finished && (launched || attempted)
}

/// Puts [`REFERENCE_FINALIZER`] on the object `name` (`on`), or takes it off; nothing when
/// the object is missing, already as wanted, or (to put it on) being deleted.
async fn mark<K>(ctx: &Context, ns: &str, name: &str, on: bool) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let Some(obj) = api.get_opt(name).await? else { return Ok(()) };
    let has = obj.finalizers().iter().any(|f| f == REFERENCE_FINALIZER);
    if has == on || (on && obj.meta().deletion_timestamp.is_some()) {
        return Ok(());
    }
    let mut finalizers: Vec<String> = obj.finalizers().iter().filter(|f| *f != REFERENCE_FINALIZER).cloned().collect();
    if on {
        finalizers.push(REFERENCE_FINALIZER.to_string());
    }
    // The resourceVersion makes it a precondition: a concurrent change is a 409, retried.
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn write_status(ctx: &Context, b: &Backend, st: &BackendStatus) -> Result<(), Error> {
    let api: Api<Backend> = Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": Backend::api_version(&()),
        "kind": Backend::kind(&()),
        "metadata": {"name": b.name_any()},
        "status": st,
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&b.name_any(), &pp, &Patch::Apply(&body)).await?;
    Ok(())
}
