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
use crate::core::instance::fence::{self as verdict, Held, Site};
pub use crate::core::instance::fence::{FENCE_RETRY, JOB_FENCED};
use crate::core::transition::Transition;

/// What became of a held instance's fence. Each carries what it says, for the caller to
/// apply with its own transition (one status write).
pub enum Fence {
    /// The job is stopped (or had ended): the instance can be Idle; `stopped` records it
    /// ([`verdict::stopped`]).
    Done(Transition),
    /// Not yet: `pending` says so when it is news ([`verdict::pending_said`]); `changed`
    /// when the status must be written; try again after `retry`.
    Pending { pending: Transition, changed: bool, retry: Duration },
    /// It failed for the whole grace: give the instance up, with this message.
    GiveUp { pending: Transition, message: String },
}

/// Tries to stop `job` on the machine of `inst`, which holds it (see the module docs);
/// the verdict is [`verdict::held_failed`]'s.
pub async fn held(inst: &Instance, st: &mut InstanceStatus, job: &JobRef, ctx: &Context) -> Fence {
    let now = ctx.now();
    let err = match ctx.executor.fence(job, inst).await {
        Ok(()) => return Fence::Done(verdict::stopped(st, job, inst.metadata.generation, now)),
        Err(e) => e,
    };
    let grace = ctx.health.unreachable_grace;
    let out = verdict::held_failed(st, job, &chain(&err), grace, inst.metadata.generation, now);
    let pending = verdict::pending_said(&out);
    match out.verdict {
        Held::Pending { changed, retry_at } => {
            Fence::Pending { pending, changed, retry: super::instance::until(now, retry_at) }
        }
        Held::GiveUp { message } => Fence::GiveUp { pending, message },
    }
}

/// Before the machine of `inst` is deleted or given back: stops the job it may still run.
/// `Some(transition)` when `st` changed (the job is stopped, or let go of): the caller
/// applies it with whatever else its pass decides. An error (the instance's status says
/// why, written here: it is the pass's only write) when the job cannot be stopped and
/// deleting the machine would not stop it either (see the module docs).
pub async fn before_teardown(
    inst: &Instance,
    st: &mut InstanceStatus,
    ctx: &Context,
) -> Result<Option<Transition>, Error> {
    let Some(job) = st.job.clone() else { return Ok(None) };
    let err = match ctx.executor.fence(&job, inst).await {
        Ok(()) => return Ok(Some(verdict::stopped(st, &job, inst.metadata.generation, ctx.now()))),
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
    match verdict::teardown_transition(out) {
        (t, true) => Ok(Some(t)),
        (t, false) => {
            super::instance::apply_transition(inst, st, t, ctx).await?;
            Err(err.into())
        }
    }
}
