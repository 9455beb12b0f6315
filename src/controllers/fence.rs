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
use crate::api::conditions::{clear_false, condition_tri, set_false_since, upsert};
use crate::api::instance::{Instance, InstanceStatus, JobRef};
use crate::api::reasons::Reason;

/// The instance condition that says whether the job of its last run is known to be
/// stopped: False (reason `FencePending`) while kpool cannot stop it on the machine, True
/// (reason `Fenced`) once it did.
pub const JOB_FENCED: &str = "JobFenced";
/// How often a held instance tries to fence its machine again.
pub const FENCE_RETRY: Duration = Duration::from_secs(15);

/// What became of a held instance's fence.
pub enum Fence {
    /// The job is stopped (or had ended): the instance can be Idle.
    Done,
    /// Not yet; `changed` when the status must be written; try again after `retry`.
    Pending { changed: bool, retry: Duration },
    /// It failed for the whole grace: give the instance up, with this message.
    GiveUp(String),
}

/// Tries to stop `job` on the machine of `inst`, which holds it (see the module docs).
pub async fn held(inst: &Instance, st: &mut InstanceStatus, job: &JobRef, ctx: &Context) -> Fence {
    let now = ctx.now();
    let err = match ctx.executor.fence(job, inst).await {
        Ok(()) => {
            fenced(inst, st, job, ctx).await;
            return Fence::Done;
        }
        Err(e) => e,
    };
    let (first, since) = pending(inst, st, job, &err, ctx).await;
    let grace = ctx.health.unreachable_grace;
    let deadline = crate::core::add(since, grace);
    if now >= deadline {
        let msg = format!("could not stop the job of run {} for {}s: {}", job.run, grace.as_secs(), chain(&err));
        return Fence::GiveUp(msg);
    }
    Fence::Pending { changed: first, retry: super::instance::until(now, deadline).min(FENCE_RETRY) }
}

/// Before the machine of `inst` is deleted or given back: stops the job it may still run.
/// `Some(instance)` when that was recorded (go on from the object written); an error (the
/// instance's status says why) when the job cannot be stopped and deleting the machine
/// would not stop it either (see the module docs).
pub async fn before_teardown(
    inst: &Instance,
    st: &mut InstanceStatus,
    ctx: &Context,
) -> Result<Option<Instance>, Error> {
    let Some(job) = st.job.clone() else { return Ok(None) };
    let err = match ctx.executor.fence(&job, inst).await {
        Ok(()) => {
            fenced(inst, st, &job, ctx).await;
            return ctx.write_status(inst, st).await.map(Some);
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
    if cloud_vm {
        st.job = None;
        let msg = format!("could not stop the job of run {} ({}); deleting the machine stops it", job.run, chain(&err));
        clear_false(&mut st.conditions, JOB_FENCED, Reason::MachineDeleted, &msg, inst.metadata.generation, ctx.now());
        ctx.event(inst, true, Reason::FenceByDeletion, msg).await;
        return ctx.write_status(inst, st).await.map(Some);
    }
    let (first, since) = pending(inst, st, &job, &err, ctx).await;
    let grace = ctx.health.unreachable_grace;
    if inst.metadata.deletion_timestamp.is_some() && ctx.now() >= crate::core::add(since, grace) {
        // Deleted by its owner, and the host has not answered for the whole grace: kpool
        // lets go of the host as asked, and says plainly what may be left on it.
        st.job = None;
        let msg = format!(
            "the job of run {} (attempt {}) may still run on the machine: it could not be stopped for {}s ({}); \
             the Instance is deleted, so kpool forgets the machine",
            job.run,
            job.attempt,
            grace.as_secs(),
            chain(&err)
        );
        let c = condition_tri(
            &st.conditions,
            JOB_FENCED,
            "Unknown",
            Reason::Abandoned,
            &msg,
            inst.metadata.generation,
            ctx.now(),
        );
        upsert(&mut st.conditions, c);
        ctx.event(inst, true, Reason::FenceAbandoned, msg).await;
        return ctx.write_status(inst, st).await.map(Some);
    }
    if first {
        ctx.write_status(inst, st).await?;
    }
    Err(err.into())
}

/// `JobFenced` False with `err`; an Event the first time. The condition's `since`.
async fn pending(
    inst: &Instance,
    st: &mut InstanceStatus,
    job: &JobRef,
    err: &crate::exec::ExecError,
    ctx: &Context,
) -> (bool, jiff::Timestamp) {
    let msg = format!(
        "the job of run {} (attempt {}) may still run on the machine; the instance takes no other run and keeps \
         its machine until it is stopped there: {}",
        job.run,
        job.attempt,
        chain(err)
    );
    let (first, since) = set_false_since(
        &mut st.conditions,
        JOB_FENCED,
        Reason::FencePending,
        &msg,
        inst.metadata.generation,
        ctx.now(),
    );
    if first {
        ctx.event(inst, true, Reason::FencePending, msg).await;
    }
    (first, since)
}

/// The job is stopped: nothing of it holds the instance any more.
async fn fenced(inst: &Instance, st: &mut InstanceStatus, job: &JobRef, ctx: &Context) {
    st.job = None;
    let msg = format!("the job of run {} is stopped on the machine", job.run);
    if clear_false(&mut st.conditions, JOB_FENCED, Reason::Fenced, &msg, inst.metadata.generation, ctx.now()) {
        ctx.event(inst, false, Reason::Fenced, msg).await;
    }
}
