//! `Pool.status.cost`: what a pool's machines cost. The pool controller sums the
//! instances that exist; each Instance, as its object goes (its finalizer, once the
//! machine is gone), folds its own figures into `cost.deleted`, so that deleting ended
//! Instances does not make the pool's spend go down.
//!
//! The fold is a write of the pool's status conditional on the resourceVersion it was
//! computed from (a 409 reads the pool again and folds into the new figures), and it
//! records the instance's UID in `cost.recentlyDeleted`: a fold retried after a crash
//! between it and the finalizer's removal finds its UID there and is not counted twice.

use kube::ResourceExt;

use super::pool::{update_status, FirstRead, GiveUp};
use super::{Context, Error};
use crate::api::instance::{Instance, InstanceStatus};
use crate::api::pool::PoolCost;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How many folded UIDs a pool remembers.
const RECENT: usize = 32;

/// Folds what `inst` (with status `st`, its last) spent into its pool's `cost.deleted`.
pub async fn fold(ctx: &Context, inst: &Instance, st: &InstanceStatus) -> Result<(), Error> {
    let (Some(pool), Some(uid)) = (st.pool.as_deref(), inst.uid()) else { return Ok(()) };
    let ns = inst.namespace().unwrap_or_default();
    let mut last = inst.clone();
    last.status = Some(st.clone());
    let now = ctx.now();
    let spend = crate::core::pool::spend_of(&last, now);
    if spend.instances == 0 {
        return Ok(());
    }
    // Still conflicting after the tries: the error goes back and the finalizer's pass is
    // retried.
    update_status(ctx, &ns, pool, FirstRead::Api, GiveUp::Fail, |status| {
        let cost = status.cost.get_or_insert_with(|| PoolCost { as_of: Some(Time(now)), ..Default::default() });
        if cost.recently_deleted.contains(&uid) {
            return false;
        }
        cost.deleted.add(&spend);
        cost.deleted = std::mem::take(&mut cost.deleted).rounded();
        cost.total.add(&spend);
        cost.total = std::mem::take(&mut cost.total).rounded();
        cost.recently_deleted.push(uid.clone());
        let excess = cost.recently_deleted.len().saturating_sub(RECENT);
        cost.recently_deleted.drain(..excess);
        true
    })
    .await
}

/// How old the figures may get while the pool's machines run.
const REFRESH: jiff::SignedDuration = jiff::SignedDuration::from_secs(3600);

/// The pool's figures at `now`: what its existing instances (of `all`) spent, those
/// already folded excepted, plus what the deleted ones had.
pub fn current(
    pool: &str,
    previous: Option<&PoolCost>,
    all: &[std::sync::Arc<Instance>],
    now: jiff::Timestamp,
) -> PoolCost {
    let mut out = previous.cloned().unwrap_or_default();
    let mut total = out.deleted.clone();
    for i in all.iter().filter(|i| super::observe::instance_pool(i) == Some(pool)) {
        if i.uid().is_some_and(|u| out.recently_deleted.contains(&u)) {
            continue;
        }
        total.add(&crate::core::pool::spend_of(i, now));
    }
    out.total = total.rounded();
    out.as_of = Some(Time(now));
    out
}

/// Whether `fresh` should replace the figures in status: none there yet, or counts that
/// changed, or dollars that kept growing for longer than [`REFRESH`].
pub fn is_stale(previous: Option<&PoolCost>, fresh: &PoolCost, price_per_hour: f64, now: jiff::Timestamp) -> bool {
    let Some(prev) = previous else { return fresh.total.instances > 0 };
    let counts = |c: &PoolCost| (c.total.instances, c.total.runs, c.total.reused_runs);
    if counts(prev) != counts(fresh) {
        return true;
    }
    let age = prev.as_of.as_ref().map_or(REFRESH, |t| now.duration_since(t.0));
    age >= REFRESH && (price_per_hour > 0.0 || prev.total != fresh.total)
}
