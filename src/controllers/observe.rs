//! Reading what a reconcile needs: the object's pool, profiles and instances.

use std::borrow::Borrow;
use std::sync::Arc;

use kube::ResourceExt;

use super::{Context, Error};
use crate::api::instance::{Instance, InstancePhase};
use crate::api::policy::PolicySpec;
use crate::api::pool::Pool;
use crate::api::resources::SpecError;
use crate::api::run::Run;
use crate::core::matching::IdleInstance;
use crate::core::policy::{effective_policy, EffectivePolicy, Origin};
use crate::core::pool::resolve_pool_name;

/// The pool an object belongs to, and the `Pool` object if it exists.
pub async fn pool_of(ctx: &Context, ns: &str, spec_pool: Option<&str>) -> Result<(String, Option<Pool>), Error> {
    let pools = ctx.list_in(ns, |c| &c.pools).await?;
    let refs: Vec<&Pool> = pools.iter().collect();
    let name = resolve_pool_name(spec_pool, &refs);
    let pool = pools.into_iter().find(|p| p.name_any() == name);
    Ok((name, pool))
}

/// The effective policy: own spec > own profile > the pool's profile > the pool's defaults.
pub async fn policy_of(
    ctx: &Context,
    ns: &str,
    own: &PolicySpec,
    own_profile: Option<&str>,
    pool: Option<&Pool>,
    origin: Origin,
) -> Result<EffectivePolicy, Error> {
    let mut profiles = Vec::new();
    for (field, name) in [("profile", own_profile), ("pool.profile", pool.and_then(|p| p.spec.profile.as_deref()))] {
        if let Some(name) = name {
            let p = ctx.get_in(ns, name, |c| &c.profiles, |_| true).await?.ok_or_else(|| SpecError {
                field: field.to_string(),
                token: name.to_string(),
                reason: format!("no Profile named {name} in namespace {ns}"),
            })?;
            profiles.push(p.spec.policy);
        }
    }
    let mut layers: Vec<&PolicySpec> = vec![own];
    layers.extend(profiles.iter());
    if let Some(d) = pool.and_then(|p| p.spec.defaults.as_ref()) {
        layers.push(d);
    }
    layers.push(ctx.site_defaults.for_origin(origin));
    Ok(effective_policy(&layers, origin)?)
}

/// Every instance of the namespace, shared with the watch cache (not copied), in no
/// particular order.
pub async fn instances(ctx: &Context, ns: &str) -> Result<Vec<Arc<Instance>>, Error> {
    ctx.list_shared(ns, |c| &c.instances).await
}

/// Every run of the namespace, shared with the watch cache (not copied).
pub async fn runs_shared(ctx: &Context, ns: &str) -> Result<Vec<Arc<Run>>, Error> {
    ctx.list_shared(ns, |c| &c.runs).await
}

/// The idle instances of namespace `ns` as matching sees them ([`IdleInstance`]): Idle,
/// holding no run, not being deleted, each reserved for the run that waits for it (a
/// run not finished whose `provisioningInstance` names it). `runs` are the namespace's.
pub fn idle_for_matching<I: Borrow<Instance>, R: Borrow<Run>>(all: &[I], runs: &[R], ns: &str) -> Vec<IdleInstance> {
    let reservations: std::collections::HashMap<&str, String> = runs
        .iter()
        .map(Borrow::borrow)
        .filter_map(|r| {
            let s = r.status.as_ref()?;
            let p = s.provisioning_instance.as_deref().filter(|_| !s.phase.is_finished())?;
            Some((p, r.name_any()))
        })
        .collect();
    all.iter()
        .map(Borrow::borrow)
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter_map(|i| {
            let s = i.status.as_ref().filter(|s| s.phase == InstancePhase::Idle && s.run.is_none())?;
            Some(IdleInstance {
                name: i.name_any(),
                namespace: ns.to_string(),
                pool: s.pool.clone()?,
                offer: s.offer.clone()?,
                reserved_for: reservations.get(i.name_any().as_str()).cloned(),
            })
        })
        .collect()
}

/// The pool an instance was resolved to, if it was.
pub fn instance_pool(i: &Instance) -> Option<&str> {
    i.status.as_ref().and_then(|s| s.pool.as_deref())
}
