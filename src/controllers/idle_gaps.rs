//! Writes what `idleDuration: auto` learns into the pool's `status.idleGaps`.
//!
//! Each observation of an idle spell (its deadline chosen, a run taking the instance, the
//! deadline passing, a run's new machine of the shape telling expired spells' gaps) is
//! written by the controller that made it true, right after the
//! instance's own status write that did so succeeded: the run controller for a
//! claim, the instance controller for the others. So an observation is counted once
//! per successful instance write, and a retried reconcile never counts it again (the
//! instance no longer shows it). The pool write is a Server-Side Apply of its whole
//! status, conditional on the resourceVersion it was computed from: a 409 (the pool
//! reconciler or another instance wrote meanwhile) reads the pool afresh and applies the
//! observation again to the new summary. Weakness: a crash, or an API error that outlasts
//! the retries, between the instance write and the pool write loses that observation
//! (a gap unseen, or a spell's reserved risk left open: both only make auto more careful;
//! or a spell's 5-minute counterfactual, which then stays unsettled).

use kube::ResourceExt;

use super::pool::{update_status, FirstRead, GiveUp};
use super::{observe, Context, Error};
use crate::api::instance::{Instance, InstanceStatus};
use crate::core::idle_auto::spell::{self, ShapeGaps};
use crate::core::idle_auto::SpellContext;

/// Applies `observe` to the summary of `shape` in pool `pool` of namespace `ns`.
pub async fn record(
    ctx: &Context,
    ns: &str,
    pool: &str,
    shape: &str,
    observe: impl Fn(&mut ShapeGaps),
) -> Result<(), Error> {
    update_status(ctx, ns, pool, FirstRead::Cache, GiveUp::Warn("idle gap"), |st| {
        let gaps = st.idle_gaps.entry(shape.to_string()).or_default();
        observe(gaps);
        // Spells the observation settled against 5 minutes: into the pool's cost.
        let settled = std::mem::take(&mut gaps.settled_vs_5m);
        if !settled.is_empty() {
            st.cost.get_or_insert_with(Default::default).settled_later_vs_5m.add(&settled);
        }
        true
    })
    .await
}

/// The context of the idle spell `inst` (status `st`, just gone idle in pool `pool`)
/// starts, from the watch caches: the pool's other idle instances of its shape, and its
/// last run arrival (`submittedAt`) up to the spell's start.
pub async fn spell_context(
    ctx: &Context,
    ns: &str,
    inst: &Instance,
    st: &InstanceStatus,
    pool: &str,
) -> Result<SpellContext, Error> {
    let all = observe::instances(ctx, ns).await?;
    let since = st.idle_since.as_ref().map(|t| t.0);
    let last_arrival = observe::runs_shared(ctx, ns)
        .await?
        .iter()
        .filter_map(|r| r.status.as_ref())
        .filter(|r| r.pool.as_deref() == Some(pool))
        .filter_map(|r| r.submitted_at.as_ref().map(|t| t.0))
        .filter(|t| since.is_none_or(|s| *t <= s))
        .max();
    let name = inst.name_any();
    let live = all.iter().filter_map(|i| Some((i.metadata.name.as_deref()?, i.status.as_ref()?)));
    Ok(spell::context(&name, st, live, last_arrival))
}
