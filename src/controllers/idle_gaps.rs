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
//! (a gap unseen, or a spell's reserved risk left open: both only make auto more careful).

use kube::api::Api;
use kube::ResourceExt;

use super::{is_conflict, Context, Error};
use crate::api::pool::Pool;
use crate::core::idle_auto::spell::ShapeGaps;

/// How many times a pool write that met a conflict is made again.
const MAX_TRIES: usize = 5;

/// Applies `observe` to the summary of `shape` in pool `pool` of namespace `ns`.
pub async fn record(
    ctx: &Context,
    ns: &str,
    pool: &str,
    shape: &str,
    observe: impl Fn(&mut ShapeGaps),
) -> Result<(), Error> {
    let api: Api<Pool> = Api::namespaced(ctx.client.clone(), ns);
    // The watch cache's copy first; after a conflict, the API's.
    let mut latest = ctx.get_in(ns, pool, |c| &c.pools, |_| true).await?;
    for _ in 0..MAX_TRIES {
        let Some(p) = latest else { return Ok(()) };
        let mut st = p.status.clone().unwrap_or_default();
        observe(st.idle_gaps.entry(shape.to_string()).or_default());
        match ctx.write_status(&p, &st).await {
            Ok(_) => return Ok(()),
            Err(Error::Kube(e)) if is_conflict(&e) => latest = api.get_opt(&p.name_any()).await?,
            Err(e) => return Err(e),
        }
    }
    tracing::warn!(namespace = ns, pool, shape, "idle gap not recorded: the pool kept changing");
    Ok(())
}
