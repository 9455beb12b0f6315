//! The `Run` controller: places a run on an idle instance of its pool, or provisions a
//! new instance for it; follows its job; frees the instance when it ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::ResourceExt;

use super::instance::until;
use super::observe::{policy_of, pool_of};
use super::placement::Pick;
use super::{is_conflict, Context, Error};
use crate::api::conditions::{
    condition_tri, find, set_progress, upsert, Progress, QUEUED, READY, SCHEDULED, SUCCEEDED,
};
use crate::api::instance::{
    Instance, InstanceSpec, JobRef, INSTANCE_FINALIZER, INTERRUPTIONS_ANNOTATION, POOL_LABEL,
    PROVISIONED_FOR_ANNOTATION, PROVISIONED_FOR_LABEL,
};
use crate::api::pool::{Pool, PoolSpec, DEFAULT_POOL_NAME};
use crate::api::reasons::Reason;
use crate::api::run::{Run, RunPhase, RunStatus, RUN_FINALIZER};
use crate::core::instance::let_go::{self, Unfenced};
use crate::core::instance::Unneeded;
use crate::core::matching::PendingRun;
use crate::core::policy::{EffectivePolicy, Origin};
use crate::core::pool::occupying;
use crate::core::run::attempt::{self, Exec};
use crate::core::run::stop::{self, Cause, Stop};
use crate::core::run::unplaced::{unplaced, Room, Unplaced};
use crate::core::run::{self as sm, provision, JobState};
use crate::core::transition::{Effect, Transition};
use crate::exec::ExecError;

const MAX_STEPS: usize = 8;
/// How often a running job is polled.
pub const JOB_POLL: Duration = Duration::from_secs(15);
pub use crate::core::run::job::JOB_CONTROL;
use crate::core::run::job::{self, Call, Failure, Fault, Unreachable};
/// How often a waiting run looks again when nothing else wakes it.
pub const WAIT_RECHECK: Duration = Duration::from_secs(60);

/// Reconciles one `Run`.
///
/// A run carries no finalizer: what its deletion must undo is recorded on the instances
/// (the claim names the run and its job; an instance provisioned for it names it too),
/// and the instance controller undoes it when the run is gone, woken by the run watch's
/// delete ([`super::runtime`]): a busy instance fences the job and goes idle
/// ([`crate::core::instance::run_let_go`]), an instance not launched yet is dropped.
/// That saves every run the write that added the finalizer and the one that removed it,
/// and holds across a crash: a restarted controller looks at every instance. Runs made
/// by earlier versions still carry [`RUN_FINALIZER`]: their deletion is cleaned up here
/// and the finalizer removed.
pub async fn reconcile(run: Arc<Run>, ctx: Arc<Context>) -> Result<Action, Error> {
    if run.metadata.deletion_timestamp.is_none() {
        return apply(run, ctx).await;
    }
    if !run.finalizers().iter().any(|f| f == RUN_FINALIZER) {
        return Ok(Action::await_change());
    }
    let api: Api<Run> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    finalizer(&api, RUN_FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(r) => apply(r, ctx.clone()).await,
            Finalizer::Cleanup(r) => cleanup(r, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

// A transient return value, moved once per step: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    Continue(Run),
    Stop(Action),
    /// The pass decided nothing and looks again soon (another pass is placing the run's
    /// pool, the cache is behind this process's writes): the pass that decides records
    /// the generation, with its decision.
    Later(Action),
}

async fn apply(run: Arc<Run>, ctx: Arc<Context>) -> Result<Action, Error> {
    let generation = run.metadata.generation;
    // A copy older than this process's own write of the run needs nothing recorded: that
    // write recorded the generation.
    let unobserved =
        run.status.as_ref().is_some_and(|s| s.observed_generation != generation) && !ctx.known_stale(run.as_ref());
    let api: Api<Run> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let name = run.name_any();
    let mut run = (*run).clone();
    let mut recorded = false;
    for _ in 0..MAX_STEPS {
        // Boxed: the step's future holds every executor call it may make (SSH, Pods).
        match Box::pin(step(run, &ctx)).await? {
            Next::Continue(r) => {
                recorded = r.status.as_ref().is_some_and(|s| s.observed_generation == generation);
                run = r;
            }
            Next::Stop(a) => {
                // Unless a status this pass wrote (the last object it went on from) already
                // says so, the generation seen is recorded.
                if unobserved && !recorded {
                    ctx.observe_generation(&api, &name, generation, |r: &Run| r.status.as_ref()).await?;
                }
                return Ok(a);
            }
            Next::Later(a) => return Ok(a),
        }
    }
    Ok(Action::requeue(Duration::ZERO))
}

async fn step(run: Run, ctx: &Context) -> Result<Next, Error> {
    let ns = run.namespace().unwrap_or_default();
    let now = ctx.now();
    let mut st = run.status.clone().unwrap_or_default();

    if st.pool.is_none() {
        let (pool_name, pool) = pool_of(ctx, &ns, run.spec.pool.as_deref()).await?;
        if pool.is_none() && pool_name == DEFAULT_POOL_NAME {
            create_default_pool(ctx, &ns).await?;
        }
        st.pool = Some(pool_name);
        st.submitted_at = Some(Time(now));
        st.phase = RunPhase::Pending;
        scheduled(&mut st, &run, now, false, Reason::Pending, "looking for an idle instance");
        // Not written on its own: every way on from here writes the status (a claim, a
        // wait, a provisioning, a failure), with these fields in it. A run placed at once
        // costs one status write less.
    }
    if st.phase.is_finished() {
        let t = sm::already_ended(&st);
        carry_out(ctx, run, st, t, None).await?;
        return Ok(Next::Stop(Action::await_change()));
    }
    let pool_name = st.pool.clone().unwrap_or_default();
    let (_, pool) = pool_of(ctx, &ns, Some(&pool_name)).await?;
    let resolved =
        match policy_of(ctx, &ns, &run.spec.policy, run.spec.profile.as_deref(), pool.as_ref(), Origin::Run).await {
            Ok(p) => run.spec.resources.resolve().map(|r| (r, p)).map_err(Error::from),
            Err(e) => Err(e),
        };
    let (req, policy) = match resolved {
        Ok(v) => v,
        Err(Error::Invalid(e)) => {
            let msg = format!("{e}; fix the spec or the profile and create the run again");
            return finish(ctx, run, st, RunPhase::Failed, Reason::InvalidSpec, None, &msg).await;
        }
        Err(e) => return Err(e),
    };

    if run.spec.stop {
        return stop_and_end(ctx, run, st, Cause::User).await;
    }

    match st.phase {
        RunPhase::Running => follow(run, st, &policy, ctx).await,
        _ => place(run, st, req, policy, pool, ctx).await,
    }
}

/// Pending or Provisioning: take a fitting idle instance, or provision one.
async fn place(
    run: Run,
    mut st: RunStatus,
    req: crate::api::resources::Requirements,
    policy: EffectivePolicy,
    pool: Option<Pool>,
    ctx: &Context,
) -> Result<Next, Error> {
    let ns = run.namespace().unwrap_or_default();
    let now = ctx.now();
    let pool_name = st.pool.clone().unwrap_or_default();
    // After a pass of this process that went as far as claiming, the claim may be written
    // but not yet in the watch cache: that instance is read from the API, so that a claim
    // that is there is found and not made twice. (A new process lists everything written
    // before it started.)
    let uid = run.uid().unwrap_or_default();
    // A batch of this pool's placement wrote this run's claim: start there, without
    // looking at the namespace again.
    if let Some(claimed) = ctx.plans.take_written(&uid) {
        return start_claimed(run, st, claimed, &policy, ctx, false).await;
    }
    // Another pass is making the pool's plan or writing its batch: it wakes this run.
    if ctx.plans.defers(&ns, &pool_name, &run) {
        return Ok(Next::Later(Action::requeue(WAIT_RECHECK)));
    }
    let claim_in_flight = ctx.claim_in_flight(&uid);
    // The namespace's instances and runs, shared with the watch caches: a wave of runs
    // looks at all of them on every pass.
    let mut all = super::observe::instances(ctx, &ns).await?;
    if let Some(name) = claim_in_flight {
        let fresh = Api::<Instance>::namespaced(ctx.client.clone(), &ns).get_opt(&name).await?;
        if !fresh.as_ref().is_some_and(|i| crate::core::instance::holds(i.status.as_ref(), &run.name_any())) {
            // It did not land: the run claims nothing so far.
            ctx.set_claim_in_flight(&uid, None);
        }
        all.retain(|i| i.name_any() != name);
        all.extend(fresh.map(Arc::new));
    }

    // An instance that already names this run (a claim whose run status write was lost).
    if let Some(held) = all.iter().find(|i| crate::core::instance::holds(i.status.as_ref(), &run.name_any())) {
        return start_claimed(run, st, (**held).clone(), &policy, ctx, true).await;
    }

    let runs = super::observe::runs_shared(ctx, &ns).await?;
    // Where the run stands in its pool's queue; a change alone is worth a status write
    // while it waits (nothing is written while the queue stands still).
    let position = queue_position(&run, &runs, &pool_name);
    let moved = st.queue_position != Some(position);
    st.queue_position = Some(position);
    let pending = PendingRun {
        name: run.name_any(),
        namespace: ns.clone(),
        pool: pool_name.clone(),
        requirements: req,
        policy: policy.clone(),
        pinned_instance: run.spec.instance.clone(),
    };
    // What the pool's queue-order assignment gives this run (see `placement`).
    let claimed = match super::placement::pick(ctx, &run, pending, pool.as_ref(), &all, &runs).await? {
        Pick::Claimed { instance, announce } => Some((*instance, announce)),
        Pick::Deferred => return Ok(Next::Later(Action::requeue(WAIT_RECHECK))),
        Pick::Again => return Ok(Next::Later(Action::requeue(Duration::ZERO))),
        Pick::Stale => return Ok(Next::Later(Action::requeue(CACHE_CATCH_UP))),
        Pick::Nothing => None,
    };
    if let Some((claimed, announce)) = claimed {
        // A pending instance provisioned for this run is no longer needed.
        if let Some(p) = st.provisioning_instance.clone().filter(|p| *p != claimed.name_any()) {
            let why = format!("run {} found instance {} first", run.name_any(), claimed.name_any());
            delete_if_unlaunched(ctx, &ns, &p, &why).await?;
        }
        return start_claimed(run, st, claimed, &policy, ctx, announce).await;
    }

    // Nothing idle fits. Follow an instance being provisioned for us, if any
    // ([`provision::follow`]). One recorded but not there is created now: a failure is an
    // API error, retried, never a provisioning failure; a 409 means it exists after all.
    if let Some(name) = st.provisioning_instance.clone() {
        let inst = all.iter().find(|i| i.name_any() == name);
        let ready = inst.and_then(|i| i.status.as_ref()).and_then(|s| find(&s.conditions, READY));
        let seen = inst.map(|i| provision::Seen {
            phase: i.status.as_ref().map(|s| s.phase),
            ready: ready.map(|c| (c.reason.as_str(), c.message.as_str())),
        });
        let t = provision::follow(&mut st, &policy, &run.name_any(), &name, seen, moved, now);
        return apply_transition(ctx, run, st, t, WAIT_RECHECK).await;
    }

    let max = pool.as_ref().and_then(|p| p.spec.max_instances);
    let occupied = occupying(all.iter().map(|i| &**i), &pool_name);
    // Free slots go to the runs ahead in the queue that wait for room first.
    let ahead = if max.is_some() { ahead_waiting_for_room(&run, &runs, &pool_name) } else { 0 };
    let room = Room { max, occupied, ahead };
    match unplaced(&mut st, &policy, &run.name_any(), &pool_name, room, run.spec.instance.as_deref(), moved, now) {
        Unplaced::Go(t) => apply_transition(ctx, run, st, t, WAIT_RECHECK).await,
        Unplaced::Wait(t, retry_at) => {
            let wait = retry_at.map(|t| until(now, t)).unwrap_or(WAIT_RECHECK).min(WAIT_RECHECK);
            apply_and_wait(ctx, run, st, t, wait).await
        }
    }
}

/// Whether the run `other` waits in `pool`, the pool of `run`. A run not reconciled yet
/// (its first status write is its claim or its wait) waits in the pool its spec names,
/// which resolves as `run`'s does when both name the same pool (or none).
fn waits_in(other: &Run, run: &Run, pool: &str) -> bool {
    match other.status.as_ref().filter(|s| s.pool.is_some()) {
        Some(s) => s.pool.as_deref() == Some(pool),
        None => other.spec.pool == run.spec.pool,
    }
}

/// The place of `run` in the queue of `pool`: 1 + the waiting runs of the pool served
/// before it ([`sm::queue_key`]: priority, then age).
fn queue_position(run: &Run, runs: &[Arc<Run>], pool: &str) -> u32 {
    let me = sm::queue_key(run);
    let ahead = runs
        .iter()
        .filter(|r| r.metadata.name != run.metadata.name && sm::is_waiting(r))
        .filter(|r| waits_in(r, run, pool))
        .filter(|r| sm::queue_key(r) < me)
        .count();
    u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1)
}

/// How many runs ahead of `run` in the queue of pool `pool` wait for room in it (their
/// `Scheduled` condition says `PoolAtCapacity` and nothing is provisioned for them yet):
/// the pool's free slots are theirs first, so that small newcomers cannot keep taking the
/// slot an older or more urgent run waits for.
fn ahead_waiting_for_room(run: &Run, runs: &[Arc<Run>], pool: &str) -> usize {
    let me = sm::queue_key(run);
    runs.iter()
        .filter(|r| r.metadata.name != run.metadata.name && sm::is_waiting(r))
        .filter(|r| {
            r.status.as_ref().is_some_and(|s| {
                s.pool.as_deref() == Some(pool)
                    && s.provisioning_instance.is_none()
                    && find(&s.conditions, SCHEDULED).is_some_and(|c| c.reason == Reason::PoolAtCapacity)
            })
        })
        .filter(|r| sm::queue_key(r) < me)
        .count()
}

/// How long a pass that found the run's cached copy behind this process's own writes
/// waits for the cache to catch up.
const CACHE_CATCH_UP: Duration = Duration::from_millis(200);

/// Starts the job of `run` on `inst`, whose claim is written, once the run's copy is as
/// current as this process's writes of it.
async fn start_claimed(
    run: Run,
    st: RunStatus,
    inst: Instance,
    policy: &EffectivePolicy,
    ctx: &Context,
    announce: bool,
) -> Result<Next, Error> {
    if !ctx.is_current(&run).await? {
        // The claim stays: the next pass finds it again (in flight, or naming the run).
        return Ok(Next::Later(Action::requeue(CACHE_CATCH_UP)));
    }
    start(run, st, inst, policy, ctx, announce).await
}

/// Starts the job of `run`, whose claim on `inst` is written. A start
/// that keeps failing ends the attempt after the grace of [`exec_failed`]. `announce`:
/// publish an `Assigned` Event (a run placed by a batch has none: the batch publishes
/// one on the pool, and the run's `Scheduled` condition says where it runs).
async fn start(
    run: Run,
    mut st: RunStatus,
    inst: Instance,
    policy: &EffectivePolicy,
    ctx: &Context,
    announce: bool,
) -> Result<Next, Error> {
    let now = ctx.now();
    let name = inst.name_any();
    let generation = run.metadata.generation;
    if let Err(e) = ctx.executor.start(&run, &inst).await {
        let limit = job::exec_limit(Call::Start, policy, ctx.health.unreachable_grace);
        let t = match exec_verdict(&run, &mut st, policy, &name, Call::Start, &e, limit, now) {
            // Executors refuse before anything runs on the machine.
            Exec::Unsupported(msg) => attempt::start_refused(&mut st, &name, &msg, now),
            Exec::Again(t) => {
                carry_out(ctx, run, st, t, None).await?;
                return Err(e.into());
            }
            // What a failed start may have left on the machine is stopped before it is reused.
            Exec::Ended(t) => t,
        };
        return apply_transition(ctx, run, st, t, WAIT_RECHECK).await;
    }
    let t = attempt::started(&mut st, &name, announce, generation, now);
    let next = apply_transition(ctx, run, st, t, WAIT_RECHECK).await?;
    if let Next::Continue(run) = &next {
        ctx.set_claim_in_flight(&run.uid().unwrap_or_default(), None);
    }
    Ok(next)
}

/// Running: the instance must still hold the run; the job's exit ends the run.
async fn follow(run: Run, mut st: RunStatus, policy: &EffectivePolicy, ctx: &Context) -> Result<Next, Error> {
    let ns = run.namespace().unwrap_or_default();
    let now = ctx.now();
    let name = st.instance.clone().unwrap_or_default();
    let holds_run = |i: &Instance| crate::core::instance::holds(i.status.as_ref(), &run.name_any());
    let inst = ctx.get_in(&ns, &name, |c| &c.instances, holds_run).await?;
    let holds = inst.as_ref().is_some_and(holds_run);
    let Some(inst) = inst.clone().filter(|_| holds) else {
        // Why it went, as the instance says (the health check's reason), if it still exists.
        let ready = inst.as_ref().and_then(|i| i.status.as_ref()).and_then(|s| find(&s.conditions, READY));
        let lost =
            sm::instance_lost(&mut st, policy, &name, ready.map(|c| (c.reason.as_str(), c.message.as_str())), now);
        return apply_transition(ctx, run, st, lost.transition(), WAIT_RECHECK).await;
    };
    if sm::max_duration_reached(&st, policy, now) {
        return stop_and_end(ctx, run, st, Cause::MaxDuration).await;
    }
    let generation = run.metadata.generation;
    let state = match ctx.executor.status(&run, &inst).await {
        Err(ExecError::Unreachable(why)) => return unreachable(run, st, policy, &inst, &why, ctx).await,
        Err(e) => {
            let grace = ctx.health.unreachable_grace;
            let t = match exec_verdict(&run, &mut st, policy, &name, Call::Follow, &e, grace, now) {
                // The job cannot go on (e.g. its image cannot be pulled): stop what is left of it.
                Exec::Unsupported(e) => return stop_and_end(ctx, run, st, Cause::Unsupported(e)).await,
                Exec::Again(t) => {
                    carry_out(ctx, run, st, t, None).await?;
                    return Err(e.into());
                }
                Exec::Ended(t) => t,
            };
            return apply_transition(ctx, run, st, t, WAIT_RECHECK).await;
        }
        Ok(state) => state,
    };
    let t = attempt::answered(&mut st, policy, &name, &state, generation, now);
    match state {
        JobState::Running => {
            let poll = sm::max_duration_deadline(&st, policy).map(|d| until(now, d)).unwrap_or(JOB_POLL).min(JOB_POLL);
            apply_and_wait(ctx, run, st, t, poll).await
        }
        JobState::Exited(_) => apply_transition(ctx, run, st, t, JOB_POLL).await,
    }
}

/// A call to the executor failed, not because the running job's instance does not answer
/// (that is [`unreachable`]); [`job::exec_failed`] decides and [`attempt::exec`] says what
/// it comes to. While the failures have lasted less than `limit` (from the first) the
/// run's status says why (`JobControl` False, reason `MissingBackend` when the instance's
/// Backend is gone) and the error goes back to the controller, which tries again.
/// Otherwise `Unsupported` fails the run, any other reason ends the attempt
/// ([`attempt::attempt_ended`]).
#[allow(clippy::too_many_arguments)]
fn exec_verdict(
    run: &Run,
    st: &mut RunStatus,
    policy: &EffectivePolicy,
    instance: &str,
    call: Call,
    err: &ExecError,
    limit: Duration,
    now: Timestamp,
) -> Exec {
    let fault = match err {
        ExecError::Unsupported(_) => Fault::Unsupported,
        ExecError::MissingBackend { .. } => Fault::MissingBackend,
        ExecError::Unreachable(_) => Fault::Unreachable,
        ExecError::Other(_) => Fault::Other,
    };
    let detail = super::chain(err);
    let failure = Failure { call, fault, detail: &detail };
    let generation = run.metadata.generation;
    let verdict = job::exec_failed(st, failure, instance, limit, generation, now);
    attempt::exec(verdict, st, policy, instance, generation, now)
}

/// The run's instance does not answer; [`job::unreachable`] decides. Marked at once in
/// the `InstanceReachable` condition; after the unreachable grace (`--unreachable-grace`)
/// the run is interrupted (retried when the policy retries on interruption, else
/// Terminated with `InstanceUnreachable`) and lets go of the instance, which stays held
/// until the job is stopped on its machine (see [`super::fence`]): the host takes no
/// other run before.
async fn unreachable(
    run: Run,
    mut st: RunStatus,
    policy: &EffectivePolicy,
    inst: &Instance,
    why: &str,
    ctx: &Context,
) -> Result<Next, Error> {
    let now = ctx.now();
    let grace = ctx.health.unreachable_grace;
    let name = inst.name_any();
    let verdict = job::unreachable(&mut st, policy, &name, why, grace, run.metadata.generation, now);
    let wait = match &verdict {
        Unreachable::Waiting { deadline, .. } => Some(until(now, *deadline).min(JOB_POLL)),
        Unreachable::GaveUp { .. } => None,
    };
    // The job that may still run there: the one the instance records, else this attempt's.
    let held = inst.status.as_ref().and_then(|s| s.job.clone()).unwrap_or_else(|| JobRef::of(&run));
    let t = attempt::unreachable(verdict, &name, held);
    match wait {
        Some(wait) => apply_and_wait(ctx, run, st, t, wait).await,
        None => apply_seen(ctx, run, st, t, Some(inst), WAIT_RECHECK).await,
    }
}

/// Stops the run's job for `cause` and ends the run as [`stop::stopped`] decides from what
/// that came to (the instance held, on the copy the stop was tried on, when the job could
/// not be stopped).
async fn stop_and_end(ctx: &Context, run: Run, mut st: RunStatus, cause: Cause) -> Result<Next, Error> {
    let (stop, seen) = stop_job(ctx, &run, st.instance.as_deref()).await?;
    let t = stop::stopped(&mut st, &cause, stop, ctx.now());
    apply_seen(ctx, run, st, t, seen.as_ref(), WAIT_RECHECK).await
}

async fn finish(
    ctx: &Context,
    run: Run,
    mut st: RunStatus,
    phase: RunPhase,
    reason: Reason,
    exit: Option<i32>,
    message: &str,
) -> Result<Next, Error> {
    // Recorded before the instance is freed, as when a job exits (see `follow`). Fenced
    // first unless the job is known to have ended: a path that stopped it pays a second,
    // no-op stop rather than freeing the instance before the outcome is recorded.
    let t = sm::ended(&mut st, phase, reason, exit, message, ctx.now());
    apply_transition(ctx, run, st, t, WAIT_RECHECK).await
}

/// What applying a transition came to.
// A transient return value, as `Next`.
#[allow(clippy::large_enum_variant)]
enum Applied {
    /// An effect that comes first refused: the unlaunched instance started launching
    /// meanwhile, and the run waits for it. Nothing else was done.
    Dropped,
    /// Applied: the run as written, if it was.
    Done(Option<Run>),
}

/// Applies a transition the core decided ([`carry_out`]); the pass goes on from the run
/// as written, or looks again after `recheck` when nothing was written (at once when the
/// transition was dropped).
async fn apply_transition(
    ctx: &Context,
    run: Run,
    st: RunStatus,
    t: Transition,
    recheck: Duration,
) -> Result<Next, Error> {
    apply_seen(ctx, run, st, t, None, recheck).await
}

/// [`apply_transition`] of a transition decided on the copy `seen` of the run's instance
/// (an instance it holds is held on that copy, see [`carry_out`]).
async fn apply_seen(
    ctx: &Context,
    run: Run,
    st: RunStatus,
    t: Transition,
    seen: Option<&Instance>,
    recheck: Duration,
) -> Result<Next, Error> {
    Ok(match carry_out(ctx, run, st, t, seen).await? {
        Applied::Dropped => Next::Stop(Action::requeue(Duration::ZERO)),
        Applied::Done(Some(run)) => Next::Continue(run),
        Applied::Done(None) => Next::Stop(Action::requeue(recheck)),
    })
}

/// [`apply_transition`] for a run that waits: the pass ends and the run looks again after
/// `wait` whether or not anything was written (a write that says why it waits, or that
/// its job still runs, does not end the wait).
async fn apply_and_wait(ctx: &Context, run: Run, st: RunStatus, t: Transition, wait: Duration) -> Result<Next, Error> {
    Ok(match carry_out(ctx, run, st, t, None).await? {
        Applied::Dropped => Next::Stop(Action::requeue(Duration::ZERO)),
        Applied::Done(_) => Next::Stop(Action::requeue(wait)),
    })
}

/// Carries out a transition the core decided (see [`crate::core::transition`]), in this
/// order: an effect that must come first (an unlaunched instance deleted: when it has
/// started launching the transition is dropped; an unstarted instance freed; the instance
/// held, on the copy `seen` the decision was made on when it is that one); the condition
/// it says (`Scheduled` while the run waits or runs, announced when it changed and the
/// transition asks; its summary once it ended); one status write when anything changed;
/// the effect that comes after (an instance created, the instance freed); the Events.
async fn carry_out(
    ctx: &Context,
    run: Run,
    mut st: RunStatus,
    t: Transition,
    seen: Option<&Instance>,
) -> Result<Applied, Error> {
    let now = ctx.now();
    let ns = run.namespace().unwrap_or_default();
    if let Effect::DeleteUnlaunched { name, why } = &t.effect {
        if !delete_if_unlaunched(ctx, &ns, name, why).await? {
            return Ok(Applied::Dropped);
        }
    }
    match &t.effect {
        Effect::FreeUnstarted { instance } => release_instance(ctx, &run, Some(instance), true).await?,
        Effect::Hold { instance, job, why } => {
            // The hold is written conditional on the copy the decision saw: a change since
            // (another controller moved the instance on) fails it, and the pass is retried.
            let read;
            let inst = match seen.filter(|i| i.name_any() == *instance) {
                Some(i) => i,
                None => {
                    read = Api::<Instance>::namespaced(ctx.client.clone(), &ns).get(instance).await?;
                    &read
                }
            };
            hold_instance(ctx, &run, inst, job.clone(), why).await?;
        }
        _ => {}
    }
    let mut events = t.events;
    let mut write = t.write;
    if let Some(said) = &t.said {
        let (finished, running) = (st.phase.is_finished(), st.phase == RunPhase::Running);
        match finished {
            true => summary(&mut st, &run, now, &said.message),
            false => {
                let changed = scheduled(&mut st, &run, now, running, said.reason, &said.message);
                write |= changed;
                if let Some(warning) = said.announce.filter(|_| changed) {
                    let message = said.message.clone();
                    events.insert(0, crate::core::transition::Event { warning, reason: said.reason, message });
                }
            }
        }
    }
    let written = match write {
        true => Some(ctx.write_status(&run, &st).await?),
        false => None,
    };
    let on = written.as_ref().unwrap_or(&run);
    match &t.effect {
        Effect::CreateInstance { name } => {
            create_instance(ctx, on, name, st.pool.as_deref().unwrap_or_default()).await?
        }
        Effect::Release { instance, ended } => release_instance(ctx, on, Some(instance), *ended).await?,
        Effect::ReleaseAttempt { instance, attempt } => {
            release_attempt(ctx, on, instance, JobRef { attempt: *attempt, ..JobRef::of(on) }).await?
        }
        Effect::None
        | Effect::DeleteUnlaunched { .. }
        | Effect::FreeUnstarted { .. }
        | Effect::Hold { .. }
        | Effect::Teardown { .. } => {}
    }
    for e in events {
        ctx.event(on, e.warning, e.reason, e.message).await;
    }
    Ok(Applied::Done(written))
}

/// Stops the run's job on `instance`: what that came to ([`Stop`], for the core to decide
/// on), and the copy of the instance it was tried on.
async fn stop_job(ctx: &Context, run: &Run, instance: Option<&str>) -> Result<(Stop, Option<Instance>), Error> {
    let Some(name) = instance else { return Ok((Stop::Done, None)) };
    let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let Some(inst) = api.get_opt(name).await? else { return Ok((Stop::Done, None)) };
    let stop = match ctx.executor.stop(run, &inst).await {
        Ok(()) => Stop::Done,
        Err(e) => {
            let ist = inst.status.as_ref();
            Stop::Failed {
                instance: name.to_string(),
                holds: crate::core::instance::holds(ist, &run.name_any()),
                job: ist.and_then(|s| s.job.clone()).unwrap_or_else(|| JobRef::of(run)),
                error: super::chain(&e),
            }
        }
    };
    Ok((stop, Some(inst)))
}

/// Frees the instance if this run holds it: Busy → Idle, the idle clock starts now.
/// `ended`: the job is known to have ended (it exited, kpool stopped it, or it never
/// started); otherwise it is fenced first ([`Executor::fence`](crate::exec::Executor::fence))
/// and, when that fails, the instance is held for the instance controller to fence: never
/// Idle while the job may still run there.
async fn release_instance(ctx: &Context, run: &Run, instance: Option<&str>, ended: bool) -> Result<(), Error> {
    release(ctx, run, instance, (!ended).then(|| JobRef::of(run))).await
}

/// [`release_instance`] of the attempt `job` (which the run's status may have left).
async fn release_attempt(ctx: &Context, run: &Run, instance: &str, job: JobRef) -> Result<(), Error> {
    release(ctx, run, Some(instance), Some(job)).await
}

/// Frees the instance if this run holds it; `fence`: the job to fence first, unless the
/// instance records its own. What that comes to is [`let_go::run_ended`]'s.
async fn release(ctx: &Context, run: &Run, instance: Option<&str>, fence: Option<JobRef>) -> Result<(), Error> {
    let Some(name) = instance else { return Ok(()) };
    let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let Some(inst) = api.get_opt(name).await? else { return Ok(()) };
    let Some(mut ist) = inst.status.clone() else { return Ok(()) };
    if !crate::core::instance::holds(Some(&ist), &run.name_any()) {
        return Ok(());
    }
    let fenced = match fence {
        Some(fallback) => {
            let job = ist.job.clone().unwrap_or(fallback);
            ctx.executor.fence(&job, &inst).await.map_err(|e| Unfenced { job, error: super::chain(&e) })
        }
        None => Ok(()),
    };
    let t = let_go::run_ended(&mut ist, &run.name_any(), fenced, ctx.now());
    super::instance::apply_transition(&inst, &mut ist, t, ctx).await?;
    Ok(())
}

/// The run lets go of `inst` while `job` may still run there: the instance stays Busy
/// without a run, held for the instance controller to fence (see [`super::fence`] and
/// [`let_go::held`]).
async fn hold_instance(ctx: &Context, run: &Run, inst: &Instance, job: JobRef, why: &str) -> Result<(), Error> {
    let mut ist = inst.status.clone().unwrap_or_default();
    let t = let_go::held(&mut ist, &run.name_any(), job, why);
    super::instance::apply_transition(inst, &mut ist, t, ctx).await?;
    Ok(())
}

/// Creates instance `name` for the run (or finds it created) and says so in an Event.
async fn create_instance(ctx: &Context, run: &Run, name: &str, pool: &str) -> Result<(), Error> {
    let ns = run.namespace().unwrap_or_default();
    let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &ns);
    let mut inst = Instance::new(
        name,
        InstanceSpec {
            pool: Some(pool.to_string()),
            profile: run.spec.profile.clone(),
            resources: run.spec.resources.clone(),
            policy: run.spec.policy.clone(),
        },
    );
    inst.metadata.namespace = Some(ns);
    // Born with its finalizer: no window in which its machine could outlive it.
    inst.metadata.finalizers = Some(vec![INSTANCE_FINALIZER.to_string()]);
    // A run's name may be longer than a label value can be: the label holds its UID.
    inst.metadata.labels = Some(BTreeMap::from([
        (PROVISIONED_FOR_LABEL.to_string(), run.uid().unwrap_or_default()),
        (POOL_LABEL.to_string(), pool.to_string()),
    ]));
    let interrupted =
        run.status.as_ref().map_or(0, |s| s.history.iter().filter(|a| a.reason == Reason::Interrupted).count());
    inst.metadata.annotations = Some(BTreeMap::from([
        (PROVISIONED_FOR_ANNOTATION.to_string(), run.name_any()),
        (INTERRUPTIONS_ANNOTATION.to_string(), interrupted.to_string()),
    ]));
    match api.create(&PostParams::default(), &inst).await {
        // A 409: created by an earlier pass that crashed before recording progress.
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let note = format!("no idle instance fits; provisioning instance {name}");
    ctx.event(run, false, Reason::Provisioning, note).await;
    Ok(())
}

/// Ends and deletes instance `name` unless it has started launching; `false` when it has
/// (it is kept: it joins the pool once up, and idles out if no run takes it).
///
/// The instance is first marked Terminated by a status write conditional on the copy
/// read (its resourceVersion): the instance controller writes Provisioning the same way
/// before any launch, so exactly one of the two writes wins, and a Terminated instance is
/// never launched. Only then is it deleted. A delete alone raced a launch in flight: the
/// machine started after the check was paid for and torn down again, or, where a delete
/// takes effect at once, kept running with no Instance left (found by the simulation).
pub(super) async fn delete_if_unlaunched(ctx: &Context, ns: &str, name: &str, why: &str) -> Result<bool, Error> {
    let api: Api<Instance> = Api::namespaced(ctx.client.clone(), ns);
    let Some(inst) = api.get_opt(name).await? else { return Ok(true) };
    let mut st = inst.status.clone().unwrap_or_default();
    let t = match crate::core::instance::not_needed(&mut st, why) {
        Unneeded::Kept => return Ok(false),
        Unneeded::Delete(t) => t,
    };
    match super::instance::apply_transition(&inst, &mut st, t, ctx).await {
        Ok(_) => {}
        // It moved on (Provisioning) since it was read: look again next pass.
        Err(Error::Kube(e)) if is_conflict(&e) => return Ok(false),
        Err(Error::Kube(e)) if super::is_not_found(&e) => return Ok(true),
        Err(e) => return Err(e),
    }
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(true),
        Err(e) if super::is_not_found(&e) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

async fn create_default_pool(ctx: &Context, ns: &str) -> Result<(), Error> {
    let api: Api<Pool> = Api::namespaced(ctx.client.clone(), ns);
    let mut pool = Pool::new(DEFAULT_POOL_NAME, PoolSpec::default());
    pool.metadata.namespace = Some(ns.to_string());
    match api.create(&PostParams::default(), &pool).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletion of a run that carries [`RUN_FINALIZER`] (made by an earlier version): stop the
/// job, free the instance (held until its job is stopped when that fails), drop an
/// unlaunched instance made for it.
async fn cleanup(run: Arc<Run>, ctx: Arc<Context>) -> Result<Action, Error> {
    let st = run.status.clone().unwrap_or_default();
    let (stop, seen) = match st.phase.is_finished() {
        false => stop_job(&ctx, &run, st.instance.as_deref()).await?,
        true => (Stop::Done, None),
    };
    let t = stop::let_go(st.instance.as_deref(), stop);
    carry_out(&ctx, (*run).clone(), st.clone(), t, seen.as_ref()).await?;
    if let Some(p) = &st.provisioning_instance {
        let why = format!("run {} was deleted before a launch", run.name_any());
        delete_if_unlaunched(&ctx, &run.namespace().unwrap_or_default(), p, &why).await?;
    }
    ctx.forget_object(&run.uid().unwrap_or_default());
    Ok(Action::await_change())
}

/// Sets `Scheduled`; returns true when it changed.
fn scheduled(st: &mut RunStatus, run: &Run, now: Timestamp, assigned: bool, reason: Reason, message: &str) -> bool {
    let c = condition_tri(
        &st.conditions,
        SCHEDULED,
        if assigned { "True" } else { "False" },
        reason,
        message,
        run.metadata.generation,
        now,
    );
    let changed = find(&st.conditions, SCHEDULED)
        .is_none_or(|old| old.status != c.status || old.reason != c.reason || old.message != c.message);
    upsert(&mut st.conditions, c);
    summary(st, run, now, message);
    changed
}

/// Sets the root `Succeeded` condition from the phase, `Reconciling` or `Stalled` with it
/// (see [`progress`]), and the generation the status describes.
fn summary(st: &mut RunStatus, run: &Run, now: Timestamp, message: &str) {
    let (status, reason) = match st.phase {
        RunPhase::Succeeded => ("True", Reason::Succeeded.to_string()),
        RunPhase::Failed | RunPhase::Terminated => ("False", st.termination_reason.clone().unwrap_or_default()),
        p => ("Unknown", p.as_str().to_string()),
    };
    let generation = run.metadata.generation;
    let c = condition_tri(&st.conditions, SUCCEEDED, status, &reason, message, generation, now);
    upsert(&mut st.conditions, c);
    // While waiting, the `Scheduled` reason says what for (PoolAtCapacity, Retrying, …).
    let reason = match find(&st.conditions, SCHEDULED) {
        Some(c) if c.status == "False" && !st.phase.is_finished() => c.reason.clone(),
        _ => reason,
    };
    let progress = progress(st);
    set_progress(&mut st.conditions, progress, &reason, message, generation, now);
    queued(st, generation, now);
    st.observed_generation = generation;
}

/// Sets the `Queued` condition and `queuePosition`: True while the run waits for an
/// instance (its reason is the `Scheduled` one: what it waits for), with its place in the
/// pool's queue; False once it is on an instance or ended, and the position is cleared.
fn queued(st: &mut RunStatus, generation: Option<i64>, now: Timestamp) {
    let waiting = st.instance.is_none() && !st.phase.is_finished();
    let scheduled = find(&st.conditions, SCHEDULED).filter(|c| c.status == "False");
    let (status, reason, message) = match scheduled {
        Some(c) if waiting => {
            let pool = st.pool.as_deref().unwrap_or_default();
            let place = match st.queue_position {
                Some(p) => format!("position {p} in the queue of pool {pool}"),
                None => format!("waiting in the queue of pool {pool}"),
            };
            ("True", c.reason.clone(), format!("{place}: {}", c.message))
        }
        _ => {
            st.queue_position = None;
            let reason = match st.instance.as_deref() {
                Some(_) if !st.phase.is_finished() => Reason::Assigned.to_string(),
                _ => st.phase.as_str().to_string(),
            };
            let message = match st.instance.as_deref() {
                Some(i) => format!("left the queue for instance {i}"),
                None => "left the queue".to_string(),
            };
            ("False", reason, message)
        }
    };
    let c = condition_tri(&st.conditions, QUEUED, status, &reason, &message, generation, now);
    upsert(&mut st.conditions, c);
}

/// How GitOps tools should read a run: waiting for an instance, ended without doing its
/// work, or running or ended as asked. A running run is Current, as kstatus reads a
/// started Job: a GitOps sync does not wait for a training to end.
pub fn progress(st: &RunStatus) -> Progress {
    match st.phase {
        RunPhase::Pending | RunPhase::Provisioning => Progress::Reconciling,
        RunPhase::Running | RunPhase::Succeeded => Progress::Settled,
        RunPhase::Terminated if st.termination_reason.as_deref() == Some(Reason::Stopped.as_str()) => Progress::Settled,
        RunPhase::Failed | RunPhase::Terminated => Progress::Stalled,
    }
}
