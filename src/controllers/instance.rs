//! The `Instance` controller: provisions the machine behind an instance, keeps it while
//! runs reuse it, and deletes it after its idle duration or when the object is deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::ResourceExt;

use super::fence::{self, Fence};
use super::idle_gaps;
use super::metrics::InstanceSample;
use super::observe::{instances, policy_of, pool_of};
use super::{Context, Error};
use crate::api::backend::BackendType;
use crate::api::conditions::{self, condition_tri, set_progress, upsert, Progress, READY};
use crate::api::instance::{
    Instance, InstancePhase, InstanceStatus, INSTANCE_FINALIZER, PROVISIONED_FOR_ANNOTATION, PROVISIONED_FOR_LABEL,
};
use crate::api::reasons::Reason;
use crate::api::run::Run;
use crate::backends::{machine_name, machine_tags, BackendError, MachineRef, MachineSpec, MachineState};
use crate::core::idle_auto::spell;
use crate::core::instance::health::{self, Verdict};
use crate::core::instance::idle;
use crate::core::instance::launch as outcome;
use crate::core::instance::provisioning::{self, Resolved};
use crate::core::instance::teardown::{self, Deleting};
use crate::core::instance::{self as sm, LaunchFailure, NoOffer, Step, POLL_INTERVAL};
use crate::core::policy::{EffectivePolicy, Origin};
use crate::core::transition::{Effect, Transition};
use crate::exec::ssh::instance_key;

/// Steps taken in one reconcile before handing back to the controller.
const MAX_STEPS: usize = 8;
/// How often an idle or busy instance is looked at even when nothing changes.
pub const RECHECK: Duration = Duration::from_secs(300);
/// How long a pending instance waits before asking its pool for room again.
const CAPACITY_RECHECK: Duration = Duration::from_secs(30);

/// Reconciles one `Instance`.
pub async fn reconcile(inst: Arc<Instance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, INSTANCE_FINALIZER, inst, |event| async {
        match event {
            Finalizer::Apply(i) => apply(i, ctx.clone()).await,
            Finalizer::Cleanup(i) => cleanup(i, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Who created the instance decides its built-in idle duration.
pub fn origin(inst: &Instance) -> Origin {
    if inst.labels().contains_key(PROVISIONED_FOR_LABEL) {
        Origin::Run
    } else {
        Origin::Manual
    }
}

// A transient return value, moved once per step: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    Continue(Instance),
    Stop(Action),
}

async fn apply(inst: Arc<Instance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let generation = inst.metadata.generation;
    let unobserved = inst.status.as_ref().is_some_and(|s| s.observed_generation != generation);
    let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &inst.namespace().unwrap_or_default());
    let name = inst.name_any();
    let mut inst = (*inst).clone();
    let mut recorded = false;
    for _ in 0..MAX_STEPS {
        // Boxed: the step's future holds every backend and executor call it may make.
        match Box::pin(step(inst, &ctx)).await? {
            Next::Continue(i) => {
                recorded = i.status.as_ref().is_some_and(|s| s.observed_generation == generation);
                inst = i;
            }
            Next::Stop(a) => {
                // As for runs: skipped when a status this pass wrote already records it.
                if unobserved && !recorded {
                    ctx.observe_generation(&api, &name, generation, |i: &Instance| i.status.as_ref()).await?;
                }
                return Ok(a);
            }
        }
    }
    Ok(Action::requeue(Duration::ZERO))
}

/// What the instance contributes to the instance and cost gauges.
fn sample(st: &InstanceStatus) -> InstanceSample {
    let holds = matches!(st.phase, InstancePhase::Idle | InstancePhase::Busy | InstancePhase::Terminating);
    InstanceSample {
        phase: st.phase.as_str(),
        backend: st.offer.as_ref().map(|o| o.backend.clone()).unwrap_or_default(),
        price: st.offer.as_ref().filter(|_| holds).map(|o| o.price),
    }
}

async fn step(inst: Instance, ctx: &Context) -> Result<Next, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let now = ctx.now();
    let status = inst.status.clone().unwrap_or_default();
    ctx.metrics.observe_instance(&inst.uid().unwrap_or_default(), Some(sample(&status)));
    let (pool_name, pool) = pool_of(ctx, &ns, status.pool.as_deref().or(inst.spec.pool.as_deref())).await?;
    let policy =
        policy_of(ctx, &ns, &inst.spec.policy, inst.spec.profile.as_deref(), pool.as_ref(), origin(&inst)).await;
    let policy = match policy {
        Ok(p) => p,
        Err(Error::Invalid(e)) if status.phase == InstancePhase::Pending => {
            let mut st = status;
            let name = machine_name(&inst.uid().unwrap_or_default());
            let t = provisioning::invalid_policy(&mut st, name, pool_name, &e.to_string());
            apply_transition(&inst, &mut st, t, ctx).await?;
            return Ok(Next::Stop(Action::await_change()));
        }
        // Once a machine may exist, a broken profile must not strand it: keep going
        // with the built-in policy for the instance's origin.
        Err(Error::Invalid(_)) => EffectivePolicy::defaults(origin(&inst)),
        Err(e) => return Err(e),
    };
    let mut st = status.clone();
    let mut next = sm::next_step(&status, &policy, now);
    if next == Step::Expire && awaited_by_its_run(&inst, ctx).await? {
        next = sm::next_step_awaited(&status, &policy, now);
    }
    // Runs carry no finalizer (see `run::reconcile`): an instance made for a run that is
    // gone is dropped here, before anything is launched for it.
    if matches!(next, Step::ChooseOffer | Step::Launch) {
        if let Some(run) = inst.provisioned_for().filter(|_| status.phase == InstancePhase::Pending) {
            if run_gone(&inst, run, ctx).await? {
                let why = format!("run {run} was deleted before a launch");
                if super::run::delete_if_unlaunched(ctx, &ns, &inst.name_any(), &why).await? {
                    return Ok(Next::Stop(Action::await_change()));
                }
            }
        }
    }
    match next {
        Step::RecordIdentity => {
            let t = provisioning::identity(&mut st, machine_name(&inst.uid().unwrap_or_default()), pool_name);
            apply_and_go_on(&inst, &mut st, t, ctx).await
        }
        Step::ChooseOffer => {
            let max = pool.and_then(|p| p.spec.max_instances);
            choose_offer(inst, st, &policy, max, ctx).await
        }
        Step::Launch => launch(inst, st, &policy, ctx).await,
        Step::Resolve => resolve(inst, st, &policy, ctx).await,
        Step::WaitUntil(at) => Ok(Next::Stop(Action::requeue(until(now, at)))),
        Step::Poll => poll(inst, st, &policy, ctx).await,
        Step::DecideIdle => {
            let shape = spell::shape(&st);
            let mut gaps =
                pool.as_ref().and_then(|p| p.status.as_ref()?.idle_gaps.get(&shape).cloned()).unwrap_or_default();
            // The first idle spell of a machine a run had to launch: the run arrived about
            // when provisioning started, one boot before the machine went idle, which
            // tells the gaps of the shape's expired spells.
            let first_launched = st.idle_auto.is_none() && inst.provisioned_for().is_some();
            let arrival = match (&st.idle_since, st.boot_seconds) {
                (Some(since), Some(boot)) if first_launched => {
                    since.0.checked_sub(jiff::SignedDuration::from_secs(boot as i64)).ok()
                }
                _ => None,
            };
            if let Some(t) = arrival {
                spell::launched(&mut gaps, t);
            }
            let context = idle_gaps::spell_context(ctx, &ns, &inst, &st, &pool_name).await?;
            let Some((record, decision)) = spell::choose(&st, Some(&gaps), &context) else {
                return Ok(Next::Stop(Action::requeue(RECHECK)));
            };
            let t = idle::spell_chosen(&mut st, record);
            let Some(written) = apply_transition(&inst, &mut st, t, ctx).await? else {
                return Ok(Next::Stop(Action::requeue(RECHECK)));
            };
            idle_gaps::record(ctx, &ns, &pool_name, &shape, |g| {
                if let Some(t) = arrival {
                    spell::launched(g, t);
                }
                g.summary.open(&decision);
            })
            .await?;
            Ok(Next::Continue(written))
        }
        Step::IdleUntil(deadline) => {
            if let Some(next) = check_health(&inst, &mut st, ctx).await? {
                return Ok(next);
            }
            let t = idle::waiting(&st, deadline, policy.auto_idle());
            apply_transition(&inst, &mut st, t, ctx).await?;
            let wait = deadline.map(|d| until(now, d)).unwrap_or(RECHECK).min(RECHECK);
            Ok(Next::Stop(Action::requeue(wait.min(health_wait(&inst, ctx)))))
        }
        Step::Expire => {
            let (t, spell_ended) = idle::expired(&mut st);
            let Some(written) = apply_transition(&inst, &mut st, t, ctx).await? else {
                return Ok(Next::Stop(Action::requeue(RECHECK)));
            };
            if let Some(record) = spell_ended {
                let price = status.offer.as_ref().map_or(0.0, |o| o.price);
                idle_gaps::record(ctx, &ns, &pool_name, &record.shape, |g| spell::close_expired(g, &record, price))
                    .await?;
            }
            Ok(Next::Continue(written))
        }
        Step::CheckRun(run) => check_run(inst, st, &run, ctx).await,
        Step::Fence(job) => match fence::held(&inst, &mut st, &job, ctx).await {
            Fence::Done(stopped) => {
                let t = stopped.then(sm::fence::released(&mut st, &job, now));
                apply_and_go_on(&inst, &mut st, t, ctx).await
            }
            Fence::Pending { pending, changed, retry } => {
                apply_transition(&inst, &mut st, pending.then(sm::fence::still_held(&job, changed)), ctx).await?;
                Ok(Next::Stop(Action::requeue(retry)))
            }
            Fence::GiveUp { pending, message } => {
                let t = pending.then(sm::give_up(&mut st, Reason::Unreachable, message));
                apply_and_go_on(&inst, &mut st, t, ctx).await
            }
        },
        Step::Teardown => teardown(inst, st, ctx).await,
        Step::Done => {
            ctx.forget_health(&inst.uid().unwrap_or_default());
            ctx.forget_admission(&ns, st.pool.as_deref().unwrap_or_default(), &inst.name_any());
            Ok(Next::Stop(Action::await_change()))
        }
    }
}

/// The policy to rank offers with for this launch (`spot-then-on-demand` resolved, see
/// [`EffectivePolicy::for_launch`]) and why it fell back to on-demand, if it did.
fn launch_policy(
    inst: &Instance,
    st: &InstanceStatus,
    policy: &EffectivePolicy,
    now: Timestamp,
) -> (EffectivePolicy, Option<String>) {
    let since = st.provisioning_started_at.as_ref().map(|t| t.0);
    policy.for_launch(inst.run_interruptions(), since, now)
}

async fn choose_offer(
    inst: Instance,
    mut st: InstanceStatus,
    policy: &EffectivePolicy,
    max_instances: Option<u32>,
    ctx: &Context,
) -> Result<Next, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let now = ctx.now();
    let pool = st.pool.clone().unwrap_or_default();
    let req = match inst.spec.resources.resolve() {
        Ok(r) => r,
        Err(e) => {
            let t = provisioning::invalid_resources(&mut st, &e.to_string());
            apply_transition(&inst, &mut st, t, ctx).await?;
            return Ok(Next::Stop(Action::await_change()));
        }
    };
    let all = instances(ctx, &ns).await?;
    // Admission's count (see `core::pool`): machines held or launching, not waiters.
    let holding = crate::core::pool::holding(all.iter().map(|i| &**i), &pool, &inst.name_any());
    if !ctx.admit(&ns, &pool, &inst.name_any(), max_instances, &holding) {
        apply_transition(&inst, &mut st, provisioning::no_room(&pool, max_instances), ctx).await?;
        return Ok(Next::Stop(Action::requeue(CAPACITY_RECHECK)));
    }
    let (policy, fallback) = launch_policy(&inst, &st, policy, now);
    let policy = &policy;
    let (ranked, failed) = ctx.ranked_offers(&ns, &req, policy).await?;
    match sm::choose_offer(&st, &ranked, policy, now) {
        Ok(offer) => {
            if let Some(why) = super::budget::check_launch(ctx, &inst, &pool, &all, offer.price, now).await? {
                apply_transition(&inst, &mut st, provisioning::over_budget(&why), ctx).await?;
                // Holds no slot of maxInstances while it waits.
                ctx.forget_admission(&ns, &pool, &inst.name_any());
                return Ok(Next::Stop(Action::requeue(CAPACITY_RECHECK)));
            }
            let t = provisioning::offer_chosen(&mut st, offer, fallback, now);
            apply_and_go_on(&inst, &mut st, t, ctx).await
        }
        Err(no) => {
            let mut msg = format!("no offer fits {}", req_summary(&inst));
            if !failed.is_empty() {
                msg.push_str(&format!("; backends not reachable: {}", join(&failed)));
            }
            let t = provisioning::no_offer(&mut st, &no, &msg, now);
            apply_transition(&inst, &mut st, t, ctx).await?;
            match no {
                NoOffer::RetryAt(at) => Ok(Next::Stop(Action::requeue(until(now, at)))),
                NoOffer::Fail(_) => {
                    ctx.forget_admission(&ns, &pool, &inst.name_any());
                    Ok(Next::Stop(Action::await_change()))
                }
            }
        }
    }
}

async fn launch(
    inst: Instance,
    mut st: InstanceStatus,
    policy: &EffectivePolicy,
    ctx: &Context,
) -> Result<Next, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let now = ctx.now();
    let Some(offer) = st.offer.clone() else {
        let t = provisioning::no_offer_to_launch(&mut st);
        return apply_and_go_on(&inst, &mut st, t, ctx).await;
    };
    let (backend, object) = ctx.backend_and_object(&ns, &offer.backend).await?;
    // Instances of cloud VM backends get a key of their own before their machine exists,
    // so the machine is launched with it and jobs run over SSH with it. An existing key is
    // reused: a launch that timed out may have started the machine with it.
    let ssh_public_key = match object.spec.is_cloud_vm() {
        true => Some(instance_key::ensure(&ctx.client, &inst).await?.public_key),
        false => None,
    };
    let name = st.machine_name.clone().unwrap_or_default();
    // From `st`, which may be newer than `inst.status`.
    let mut tagged = inst.clone();
    tagged.status = Some(st.clone());
    let tags = machine_tags(&tagged);
    let spec = MachineSpec { name, offer: offer.clone(), tags, ssh_public_key };
    ctx.metrics.launch_attempted(&offer.backend);
    match backend.create(&spec).await {
        Ok(machine) => {
            let t = provisioning::machine_launched(&mut st, &machine, now);
            apply_and_go_on(&inst, &mut st, t, ctx).await
        }
        Err(err) if err.outcome_unknown() => launch_unanswered(inst, st, err, ctx).await,
        Err(err) => launch_failed(inst, st, policy, err, ctx).await,
    }
}

pub use crate::core::instance::provisioning::LAUNCH_RESOLVED;

/// A launch that got no answer may have started the machine: no other offer is tried
/// until it is looked up where it was launched ([`resolve`]).
async fn launch_unanswered(
    inst: Instance,
    mut st: InstanceStatus,
    err: BackendError,
    ctx: &Context,
) -> Result<Next, Error> {
    let now = ctx.now();
    let backend = st.offer.as_ref().map(|o| o.backend.clone()).unwrap_or_default();
    ctx.metrics.launch_failed(&backend, err.category());
    let (t, at) = provisioning::unanswered(&mut st, &err, inst.metadata.generation, now);
    apply_transition(&inst, &mut st, t, ctx).await?;
    Ok(Next::Stop(Action::requeue(until(now, at))))
}

/// Looks up the machine of a launch that got no answer, at the backend and region it was
/// sent to: found -> it is the instance's machine; absent (see [`outcome::ABSENT_AFTER`])
/// -> the launch failed, the next offer is tried; no answer -> look again later
/// ([`provisioning::resolved`]).
async fn resolve(
    inst: Instance,
    mut st: InstanceStatus,
    policy: &EffectivePolicy,
    ctx: &Context,
) -> Result<Next, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let now = ctx.now();
    let offer = st.offer.clone().unwrap_or_default();
    let machine = MachineRef::of(&st).unwrap_or_default();
    let looked = match ctx.backend(&ns, &offer.backend).await {
        Ok(backend) => backend.get_at(&machine).await,
        // The Backend object is missing or cannot be built: nothing is known yet.
        Err(e) => Err(BackendError::Other(super::chain(&e))),
    };
    match provisioning::resolved(&mut st, looked.as_ref(), inst.metadata.generation, now) {
        Resolved::Adopted(t) => apply_and_go_on(&inst, &mut st, t, ctx).await,
        Resolved::Absent(err) => launch_failed(inst, st, policy, err, ctx).await,
        Resolved::LookAgainAt(t, at) => {
            apply_transition(&inst, &mut st, t, ctx).await?;
            Ok(Next::Stop(Action::requeue(until(now, at))))
        }
    }
}

async fn launch_failed(
    inst: Instance,
    mut st: InstanceStatus,
    policy: &EffectivePolicy,
    err: BackendError,
    ctx: &Context,
) -> Result<Next, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let now = ctx.now();
    let req = inst.spec.resources.resolve()?;
    let (policy, _) = launch_policy(&inst, &st, policy, now);
    let policy = &policy;
    let (ranked, _) = ctx.ranked_offers(&ns, &req, policy).await?;
    ctx.metrics.launch_failed(st.offer.as_ref().map(|o| o.backend.as_str()).unwrap_or_default(), err.category());
    let (t, next) = provisioning::failed_launch(&mut st, &err, &ranked, policy, now);
    match next {
        LaunchFailure::NextOffer => apply_and_go_on(&inst, &mut st, t, ctx).await,
        LaunchFailure::RetryAt(at) => {
            apply_transition(&inst, &mut st, t, ctx).await?;
            Ok(Next::Stop(Action::requeue(until(now, at))))
        }
        LaunchFailure::Fail(_) => {
            apply_transition(&inst, &mut st, t, ctx).await?;
            ctx.forget_admission(&ns, st.pool.as_deref().unwrap_or_default(), &inst.name_any());
            Ok(Next::Stop(Action::await_change()))
        }
    }
}

async fn poll(inst: Instance, mut st: InstanceStatus, policy: &EffectivePolicy, ctx: &Context) -> Result<Next, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let now = ctx.now();
    let offer = st.offer.clone().unwrap_or_default();
    let backend = ctx.backend(&ns, &offer.backend).await?;
    let machine = MachineRef::of(&st).unwrap_or_default();
    match backend.get_at(&machine).await {
        Ok(m) if m.state == MachineState::Running => {
            let t = provisioning::machine_up(&mut st, &m, now);
            apply_and_go_on(&inst, &mut st, t, ctx).await
        }
        Ok(m) if m.state == MachineState::Pending => {
            let t = provisioning::machine_starting(&mut st, &m, now);
            apply_transition(&inst, &mut st, t, ctx).await?;
            Ok(Next::Stop(Action::requeue(POLL_INTERVAL)))
        }
        // Gone or going while provisioning: this offer failed.
        Ok(_) | Err(BackendError::NotFound(_)) => {
            let err = provisioning::machine_went_away(&mut st);
            launch_failed(inst, st, policy, err, ctx).await
        }
        Err(e) => Err(Error::Backend { backend: offer.backend, source: e }),
    }
}

/// Whether `run`, the run this instance was provisioned for, is gone: deleted, being
/// deleted, or replaced by another run of the same name. A cached copy that is there is
/// taken; its absence is read again from the API (the watch may not have seen the run's
/// creation yet).
async fn run_gone(inst: &Instance, run: &str, ctx: &Context) -> Result<bool, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let alive = |r: &Run| provisioned_for_this(inst, r) && r.metadata.deletion_timestamp.is_none();
    Ok(!ctx.get_in(&ns, run, |c| &c.runs, alive).await?.as_ref().is_some_and(alive))
}

/// Whether `run`, named as the run this instance was provisioned for, is that run: the
/// label holds the UID of the run (where the annotation holds its name), so a run made
/// later under the same name is another run.
fn provisioned_for_this(inst: &Instance, run: &Run) -> bool {
    !inst.annotations().contains_key(PROVISIONED_FOR_ANNOTATION)
        || inst.labels().get(PROVISIONED_FOR_LABEL) == run.metadata.uid.as_ref()
}

/// Whether the run this instance was provisioned for still waits to claim it.
async fn awaited_by_its_run(inst: &Instance, ctx: &Context) -> Result<bool, Error> {
    let Some(name) = inst.provisioned_for() else { return Ok(false) };
    let api: Api<Run> = Api::namespaced(ctx.client.clone(), &inst.namespace().unwrap_or_default());
    let Some(run) = api.get_opt(name).await? else { return Ok(false) };
    Ok(provisioned_for_this(inst, &run)
        && run.metadata.deletion_timestamp.is_none()
        && run.status.as_ref().is_some_and(|s| crate::core::run::waits_for(s, &inst.name_any())))
}

/// A busy instance whose run no longer holds it ([`crate::core::run::holds`]: deleted,
/// finished, or placed elsewhere) goes back to idle, or is held until its job is fenced
/// ([`sm::run_let_go`]).
async fn check_run(inst: Instance, mut st: InstanceStatus, run: &str, ctx: &Context) -> Result<Next, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let name = inst.name_any();
    let held_by = |r: &Run| crate::core::run::holds(Some(r), &name);
    let holds = crate::core::run::holds(ctx.get_in(&ns, run, |c| &c.runs, held_by).await?.as_ref(), &name);
    if holds {
        if let Some(next) = check_health(&inst, &mut st, ctx).await? {
            return Ok(next);
        }
        return Ok(Next::Stop(Action::requeue(RECHECK.min(health_wait(&inst, ctx)))));
    }
    let t = sm::run_let_go(&mut st, run, ctx.now());
    apply_and_go_on(&inst, &mut st, t, ctx).await
}

pub use crate::core::instance::teardown::TEARDOWN;

/// Time until the instance's next health check (a floor of a second, so a requeue
/// never spins).
fn health_wait(inst: &Instance, ctx: &Context) -> Duration {
    ctx.next_health_check(&inst.uid().unwrap_or_default(), ctx.now()).max(Duration::from_secs(1))
}

/// The health check of an Idle or Busy instance, at most once per
/// [`HealthConfig::interval`](super::context::HealthConfig): asks the backend how the
/// machine is and applies the verdict of [`health::verdict`] (reachable again, not
/// answering within the grace, or lost: Terminating with `Unreachable`, `Reclaimed` or
/// `MachineGone`). A run on a lost instance is then interrupted by the run controller.
/// Busy instances of `kubernetes` backends are left to the job runner, which follows the
/// job Pod that stands in for the slot.
///
/// `Some(next)` when the instance changed phase and the caller must go on from there.
async fn check_health(inst: &Instance, st: &mut InstanceStatus, ctx: &Context) -> Result<Option<Next>, Error> {
    let now = ctx.now();
    let (Some(offer), Some(name)) = (st.offer.clone(), st.machine_name.clone()) else { return Ok(None) };
    if !ctx.health_due(&inst.uid().unwrap_or_default(), now) {
        return Ok(None);
    }
    let backend = match ctx.backend_and_object(&inst.namespace().unwrap_or_default(), &offer.backend).await {
        // A busy instance of a kubernetes backend has its slot Pod swapped for the run's job
        // Pod (deleted, pulling an image, finished): the job runner follows that Pod, and
        // the run's job status is the machine's health until the slot comes back.
        Ok((_, object)) if st.phase == InstancePhase::Busy && object.spec.type_ == BackendType::Kubernetes => {
            return Ok(None)
        }
        Ok((b, _)) => b,
        Err(e) => {
            tracing::warn!(instance = %inst.name_any(), error = %e, "health check skipped: backend unavailable");
            return Ok(None);
        }
    };
    // Looked for where it was launched, not only where the Backend would launch today: a
    // Backend edit (regions, namespace) must never read as the machine being gone.
    let machine = MachineRef { name, ..MachineRef::of(st).unwrap_or_default() };
    let answer = backend.get_at(&machine).await;
    let (grace, interval) = (ctx.health.unreachable_grace, ctx.health.interval);
    let verdict = health::verdict(answer.as_ref(), st, offer.spot, grace, interval, now);
    if let (Verdict::Unknown, Err(e)) = (&verdict, &answer) {
        tracing::warn!(instance = %inst.name_any(), error = %e, "health check failed: provider did not answer");
    }
    if verdict == Verdict::Unknown {
        ctx.metrics.health_check_failed(&offer.backend);
    }
    let t = health::transition(verdict, st, inst.metadata.generation, now);
    Ok(apply_transition(inst, st, t, ctx).await?.map(Next::Continue))
}

/// Applies a transition the core decided (see [`crate::core::transition`]): `Ready` as it
/// says, one status write when anything changed, then the Event and what the effect
/// needs. The instance as written, if it was.
pub(super) async fn apply_transition(
    inst: &Instance,
    st: &mut InstanceStatus,
    t: Transition,
    ctx: &Context,
) -> Result<Option<Instance>, Error> {
    let now = ctx.now();
    let mut events = t.events;
    let mut said = false;
    if let Some(s) = t.said {
        said = ready(st, inst, now, s.reason, &s.message);
        if let Some(warning) = s.announce.filter(|_| said) {
            events.insert(0, crate::core::transition::Event { warning, reason: s.reason, message: s.message });
        }
    }
    let written = match t.write || said {
        true => Some(ctx.write_status(inst, st).await?),
        false => None,
    };
    for e in events {
        ctx.event(inst, e.warning, e.reason, e.message).await;
    }
    if let Effect::Teardown { reason } = t.effect {
        ctx.metrics.instance_lost(st.offer.as_ref().map(|o| o.backend.as_str()).unwrap_or_default(), reason.as_str());
    }
    Ok(written)
}

/// [`apply_transition`], and the pass goes on from the instance as written (every caller's
/// transition changes the status; were nothing written, the instance is looked at again
/// at the next recheck).
async fn apply_and_go_on(
    inst: &Instance,
    st: &mut InstanceStatus,
    t: Transition,
    ctx: &Context,
) -> Result<Next, Error> {
    let written = apply_transition(inst, st, t, ctx).await?;
    Ok(written.map_or(Next::Stop(Action::requeue(RECHECK)), Next::Continue))
}

async fn teardown(inst: Instance, mut st: InstanceStatus, ctx: &Context) -> Result<Next, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let now = ctx.now();
    if let Some(t) = fence::before_teardown(&inst, &mut st, ctx).await? {
        // Recorded before the machine is deleted: the next step deletes it.
        return apply_and_go_on(&inst, &mut st, t, ctx).await;
    }
    let deleted = match delete_machine(&inst, &st, ctx).await {
        Ok(deleted) => deleted,
        Err(e) => {
            let t = teardown::failed(&mut st, &super::chain(&e), inst.metadata.generation, now);
            record(&inst, &mut st, t, ctx).await;
            return Err(e);
        }
    };
    if deleted {
        let t = teardown::machine_deleted(&mut st, inst.metadata.generation, now);
        ctx.forget_admission(&ns, st.pool.as_deref().unwrap_or_default(), &inst.name_any());
        return apply_and_go_on(&inst, &mut st, t, ctx).await;
    }
    Ok(Next::Stop(Action::requeue(POLL_INTERVAL)))
}

/// Applies what a teardown pass that does not end (it failed, or waits for the machine to
/// go) says, best effort: the pass's error is handed back (and logged) whether or not this
/// lands, and the next pass decides again.
async fn record(inst: &Instance, st: &mut InstanceStatus, t: Transition, ctx: &Context) {
    if let Err(e) = apply_transition(inst, st, t, ctx).await {
        tracing::debug!(error = %e, "failed to record the teardown's progress");
    }
}

/// Deletes the instance's machine wherever it may be: at the current offer's place and at
/// every place a launch went to that did not refuse it ([`outcome::machine_locations`]).
/// `true` once each backend says it is gone.
async fn delete_machine(inst: &Instance, st: &InstanceStatus, ctx: &Context) -> Result<bool, Error> {
    let Some(name) = st.machine_name.as_deref() else { return Ok(true) };
    let mut gone = true;
    // No place at all: no offer was ever chosen, so no machine was ever launched.
    for (backend, region) in outcome::machine_locations(st) {
        let current = st.offer.as_ref().is_some_and(|o| o.backend == backend && o.region == region);
        let machine = MachineRef {
            name: name.to_string(),
            region: Some(region).filter(|r| !r.is_empty()),
            provider_id: st.provider_id.clone().filter(|p| current && !p.is_empty()),
        };
        gone &= delete_at(inst, &backend, &machine, ctx).await?;
    }
    Ok(gone)
}

/// Deletes `machine` at `backend`. `true` once the backend says it is gone.
async fn delete_at(inst: &Instance, backend_name: &str, machine: &MachineRef, ctx: &Context) -> Result<bool, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let backend = ctx.backend(&ns, backend_name).await?;
    let wrap = |source| Error::Backend { backend: backend_name.to_string(), source };
    let gone = match backend.get_at(machine).await {
        Err(BackendError::NotFound(_)) => true,
        Ok(m) => m.state == MachineState::Terminated,
        Err(e) => return Err(wrap(e)),
    };
    if gone {
        // Still asked to delete: what the machine leaves behind at the provider (a
        // registered SSH key) goes with it even when the machine went without kpool.
        return match backend.delete_at(machine).await {
            Ok(()) | Err(BackendError::NotFound(_)) => Ok(true),
            Err(e) => Err(wrap(e)),
        };
    }
    match backend.delete_at(machine).await {
        Err(BackendError::NotFound(_)) => Ok(true),
        Ok(()) => Ok(false),
        Err(e) => Err(wrap(e)),
    }
}

/// Deletion: the machine is deleted and confirmed gone before the finalizer is removed.
/// Never validates the spec, so a bad spec cannot block deletion.
async fn cleanup(inst: Arc<Instance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let mut st = inst.status.clone().unwrap_or_default();
    // What the fence changed is written with the rest of the pass (once), unless the
    // machine is gone and the Instance with it: nothing needs to land before the machine
    // is deleted, since a pass that dies before its write fences again (a no-op) and
    // decides the same.
    let fenced = match fence::before_teardown(&inst, &mut st, &ctx).await? {
        // Said at once: the object may be gone before anything else is written.
        Some(t) => {
            for e in t.events {
                ctx.event(&*inst, e.warning, e.reason, e.message).await;
            }
            true
        }
        None => false,
    };
    // Terminated: the teardown already saw the machine gone (and what it left at the
    // provider deleted), so the Backend is not needed again — it may be gone too.
    let deleted = if st.phase == InstancePhase::Terminated { Ok(true) } else { delete_machine(&inst, &st, &ctx).await };
    let machine = match &deleted {
        Ok(true) => Deleting::Gone,
        Ok(false) => Deleting::Pending,
        Err(e) => Deleting::Failed(super::chain(e)),
    };
    let t = teardown::instance_deleted(&mut st, machine, inst.metadata.generation, ctx.now());
    match deleted {
        Ok(true) => {
            // What it spent stays in its pool's figures once the object is gone.
            super::pool_cost::fold(&ctx, &inst, &st).await?;
            ctx.metrics.observe_instance(&inst.uid().unwrap_or_default(), None);
            ctx.forget_admission(&ns, st.pool.as_deref().unwrap_or_default(), &inst.name_any());
            ctx.forget_object(&inst.uid().unwrap_or_default());
            apply_transition(&inst, &mut st, t, &ctx).await?;
            Ok(Action::await_change())
        }
        deleted => {
            // The object is going away: a write that fails is retried by the next pass.
            record(&inst, &mut st, Transition { write: fenced, ..Transition::none() }.then(t), &ctx).await;
            Err(deleted.err().unwrap_or_else(|| Error::StillDeleting(st.machine_name.unwrap_or_default())))
        }
    }
}

/// Ends a live instance for `reason` (Terminating; the teardown deletes its machine) with
/// a status write conditional on the copy `inst` the caller decided on: if anything
/// changed it meanwhile (a run claimed it), the write fails and the instance is left
/// alone. Whether it was ended.
pub(super) async fn end_if_unchanged(
    inst: &Instance,
    reason: Reason,
    why: String,
    ctx: &Context,
) -> Result<bool, Error> {
    let mut st = inst.status.clone().unwrap_or_default();
    let t = sm::retire(&mut st, reason, why);
    match apply_transition(inst, &mut st, t, ctx).await {
        Ok(_) => Ok(true),
        Err(Error::Kube(e)) if super::is_conflict(&e) || super::is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets the `Ready` condition from the phase, `Reconciling` or `Stalled` with it (see
/// [`progress`]), and the generation the status describes. Returns true when any of it
/// changed.
pub(super) fn ready(st: &mut InstanceStatus, inst: &Instance, now: Timestamp, reason: Reason, message: &str) -> bool {
    let status = match st.phase {
        InstancePhase::Idle | InstancePhase::Busy => "True",
        InstancePhase::Pending | InstancePhase::Provisioning => "Unknown",
        _ => "False",
    };
    let generation = inst.metadata.generation;
    let c = condition_tri(&st.conditions, READY, status, reason, message, generation, now);
    let changed = conditions::find(&st.conditions, READY)
        .is_none_or(|old| old.status != c.status || old.reason != c.reason || old.message != c.message)
        || st.observed_generation != generation;
    upsert(&mut st.conditions, c);
    set_progress(&mut st.conditions, progress(st.phase), reason, message, generation, now);
    st.observed_generation = generation;
    changed
}

/// How GitOps tools should read an instance in `phase`: on its way, stuck, or there.
/// Terminated is stuck: kpool never launches the machine of that Instance again.
pub fn progress(phase: InstancePhase) -> Progress {
    match phase {
        InstancePhase::Pending | InstancePhase::Provisioning | InstancePhase::Terminating => Progress::Reconciling,
        InstancePhase::Idle | InstancePhase::Busy => Progress::Settled,
        InstancePhase::Failed | InstancePhase::Terminated => Progress::Stalled,
    }
}

fn req_summary(inst: &Instance) -> String {
    inst.spec.resources.resolve().map(|r| r.render()).unwrap_or_default()
}

fn join(m: &BTreeMap<String, String>) -> String {
    m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; ")
}

/// Time from `now` until `t`, zero if past.
pub fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
}
