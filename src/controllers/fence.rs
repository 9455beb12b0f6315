//! Fencing: a job that may still run on an instance's machine is stopped there before the
//! instance takes another run, goes back to Idle or gives its machine back.
//!
//! An instance records the job of the run that claims it (`status.job`) until kpool knows
//! the job has ended. When the run lets go of the instance without that knowledge (its
//! host did not answer; the job could not be stopped; the run was deleted), the instance
//! stays Busy without a run, *held*, and the instance controller fences it
//! ([`Executor::fence`](crate::exec::Executor::fence): the job's whole process group on a
//! host, the job Pod on a node):
//! - fenced -> the instance is Idle again, `JobFenced` True;
//! - not yet -> held, `JobFenced` False (reason `FencePending`, the error), tried again every
//!   [`FENCE_RETRY`]; after the unreachable grace (`--unreachable-grace`) the instance is
//!   given up (Terminating, reason `Unreachable`).
//!
//! The teardown of an instance (and the deletion of an `Instance`) fences first too. A cloud
//! VM whose job cannot be reached is deleted anyway: terminating the machine stops the job.
//! Any other machine (a host you own, a node's slot) is not given back while the job may run
//! there: the teardown waits, with `JobFenced` False, so the host is never offered again
//! before its old job is gone. Only when the `Instance` is deleted and the job could not be
//! stopped for the whole unreachable grace does the teardown go on without it: the machine
//! is forgotten, `JobFenced` goes Unknown (reason `Abandoned`), and a Warning event
//! `FenceAbandoned` names the run whose job may be left there.

use std::time::Duration;

use kube::api::Api;
use kube::ResourceExt;

use super::{chain, Context, Error};
use crate::api::backend::Backend as BackendObject;
use crate::api::instance::{Instance, InstanceStatus, JobRef};
use crate::api::reasons::Reason;
use crate::core::instance::fence::{self as verdict, Failed, Held, Site, Teardown};
pub use crate::core::instance::fence::{FENCE_RETRY, JOB_FENCED};

/// What became of a held instance's fence.
pub enum Fence {
    /// The job is stopped (or had ended): the instance can be Idle.
    Done,
    /// Not yet; `changed` when the status must be written; try again after `retry`.
    Pending { changed: bool, retry: Duration },
    /// It failed for the whole grace: give the instance up, with this message.
    GiveUp(String),
}

/// Tries to stop `job` on the machine of `inst`, which holds it (see the module docs);
/// the verdict is [`verdict::held_failed`]'s.
pub async fn held(inst: &Instance, st: &mut InstanceStatus, job: &JobRef, ctx: &Context) -> Fence {
    let now = ctx.now();
    let err = match ctx.executor.fence(job, inst).await {
        Ok(()) => {
            fenced(inst, st, job, ctx).await;
            return Fence::Done;
        }
        Err(e) => e,
    };
    let grace = ctx.health.unreachable_grace;
    let out = verdict::held_failed(st, job, &chain(&err), grace, inst.metadata.generation, now);
    match say_pending(inst, out, ctx).await {
        Held::Pending { changed, retry_at } => Fence::Pending { changed, retry: super::instance::until(now, retry_at) },
        Held::GiveUp { message } => Fence::GiveUp(message),
    }
}

/// Before the machine of `inst` is deleted or given back: stops the job it may still run.
/// `true` when `st` changed (the job is stopped, or let go of: the caller writes it, with
/// whatever else its pass decides); an error (the instance's status says why, written
/// here: it is the pass's only write) when the job cannot be stopped and deleting the
/// machine would not stop it either (see the module docs).
pub async fn before_teardown(inst: &Instance, st: &mut InstanceStatus, ctx: &Context) -> Result<bool, Error> {
    let Some(job) = st.job.clone() else { return Ok(false) };
    let err = match ctx.executor.fence(&job, inst).await {
        Ok(()) => {
            fenced(inst, st, &job, ctx).await;
            return Ok(true);
        }
        Err(e) => e,
    };
    let ns = inst.namespace().unwrap_or_default();
    let cloud_vm = match st.offer.as_ref() {
        // No offer: no machine was ever launched, so no job either.
        None => true,
        Some(o) => Api::<BackendObject>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&o.backend)
            .await?
            .is_some_and(|b| b.spec.is_cloud_vm()),
    };
    let site = Site { cloud_vm, deleting: inst.metadata.deletion_timestamp.is_some() };
    let (grace, generation) = (ctx.health.unreachable_grace, inst.metadata.generation);
    let out = verdict::teardown_failed(st, &job, &chain(&err), site, grace, generation, ctx.now());
    let (reason, message) = match say_pending(inst, out, ctx).await {
        Teardown::ByDeletion { message } => (Reason::FenceByDeletion, message),
        Teardown::Abandon { message } => (Reason::FenceAbandoned, message),
        Teardown::Wait { changed } => {
            if changed {
                ctx.write_status(inst, st).await?;
            }
            return Err(err.into());
        }
    };
    ctx.event(inst, true, reason, message).await;
    Ok(true)
}

/// Sends the `FencePending` Warning the verdict carries, if any; the verdict.
async fn say_pending<V>(inst: &Instance, out: Failed<V>, ctx: &Context) -> V {
    if let Some(msg) = out.pending_event {
        ctx.event(inst, true, Reason::FencePending, msg).await;
    }
    out.verdict
}

/// The job is stopped: nothing of it holds the instance any more.
async fn fenced(inst: &Instance, st: &mut InstanceStatus, job: &JobRef, ctx: &Context) {
    if let Some(msg) = crate::core::instance::fence::fenced(st, job, inst.metadata.generation, ctx.now()) {
        ctx.event(inst, false, Reason::Fenced, msg).await;
    }
}
