//! The instance state machine: Pending → Provisioning → Idle ⇄ Busy → Terminating →
//! Terminated, plus Failed. Each transition is a function of (status, facts, now).
//! Where launches went, and launches that got no answer: [`launch`].

pub mod fence;
pub mod health;
pub mod idle;
pub mod launch;
pub mod let_go;
pub mod provisioning;
pub mod teardown;

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::add;
use super::idle_auto;
use super::offers::next_offer;
use super::policy::EffectivePolicy;
use crate::api::instance::{InstancePhase, InstanceStatus, JobRef, ProvisioningAttempt};
use crate::api::offer::Offer;
use crate::api::policy::RetryEvent;
use crate::api::reasons::Reason;
use crate::core::machine::{BackendError, Machine, MachineState};
use crate::core::transition::{Effect, Transition};

/// At most this many failed attempts are kept in status.
pub const MAX_ATTEMPTS_KEPT: usize = 20;
/// How often a provisioning machine is polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How long to wait before looking for offers again while a retry window is open.
pub const RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// What the controller should do next for an instance that is not being deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Write the UID-derived machine name and the pool into status; nothing else yet.
    RecordIdentity,
    /// Rank offers and choose one (the instance is admitted to its pool).
    ChooseOffer,
    /// Launch the machine for `status.offer` (or adopt the one that already exists).
    Launch,
    /// The launch of `status.offer` got no answer: look its machine up there before
    /// anything else is launched (see [`launch`]).
    Resolve,
    /// Backing off: no provisioning call before this time.
    WaitUntil(Timestamp),
    /// Ask the backend how the machine is doing.
    Poll,
    /// Idle under `idleDuration: auto` with no deadline chosen for this idle spell yet:
    /// choose it from the pool's learned gaps ([`idle_auto::spell::choose`]).
    DecideIdle,
    /// Idle: nothing to do until the deadline (`None`: kept forever).
    IdleUntil(Option<Timestamp>),
    /// The idle duration ran out: terminate.
    Expire,
    /// Busy with a run; check that the run still holds the instance.
    CheckRun(String),
    /// Held: its run let go of it while this job may still run on the machine; stop the
    /// job there before the instance is idle again.
    Fence(JobRef),
    /// Delete the machine and confirm it is gone.
    Teardown,
    /// Terminated or Failed: nothing left to do.
    Done,
}

/// Decides the next step from status, policy and `now`.
pub fn next_step(status: &InstanceStatus, policy: &EffectivePolicy, now: Timestamp) -> Step {
    if status.machine_name.is_none() || status.pool.is_none() {
        return Step::RecordIdentity;
    }
    let backoff = status.next_attempt_at.as_ref().map(|t| t.0).filter(|t| *t > now);
    match status.phase {
        InstancePhase::Pending | InstancePhase::Provisioning if backoff.is_some() && status.provider_id.is_none() => {
            Step::WaitUntil(backoff.unwrap_or(now))
        }
        InstancePhase::Pending => Step::ChooseOffer,
        InstancePhase::Provisioning if launch::unresolved(status) => Step::Resolve,
        InstancePhase::Provisioning if status.provider_id.is_none() => Step::Launch,
        InstancePhase::Provisioning => Step::Poll,
        InstancePhase::Idle if policy.auto_idle() && idle_auto::spell::current(status).is_none() => Step::DecideIdle,
        InstancePhase::Idle => match idle_deadline(status, policy) {
            Some(deadline) if now >= deadline => Step::Expire,
            deadline => Step::IdleUntil(deadline),
        },
        InstancePhase::Busy => match (&status.run, &status.job) {
            (Some(run), _) => Step::CheckRun(run.clone()),
            (None, Some(job)) => Step::Fence(job.clone()),
            (None, None) => Step::IdleUntil(None),
        },
        InstancePhase::Terminating => Step::Teardown,
        InstancePhase::Terminated | InstancePhase::Failed => Step::Done,
    }
}

/// How long an instance provisioned for a run is kept for that run at least, once idle,
/// however short its idle duration, while the run still waits to claim it: long enough for
/// the run to be reconciled after the instance became idle (a waiting run is woken when its
/// instance changes, and looks again every minute anyway), short enough that an instance
/// its run never takes does not linger.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(120);

/// As [`next_step`], for an idle instance that the run it was provisioned for still waits
/// to claim ([`waits_for`](super::run::waits_for)): its idle duration does not end it
/// before [`CLAIM_WINDOW`] after it became idle. Otherwise `idleDuration: 0` would
/// terminate every instance a run launches before the run could take it.
pub fn next_step_awaited(status: &InstanceStatus, policy: &EffectivePolicy, now: Timestamp) -> Step {
    match next_step(status, policy, now) {
        Step::Expire => {
            let since = status.idle_since.as_ref().map(|t| t.0).unwrap_or(now);
            let kept = add(since, CLAIM_WINDOW);
            if now < kept {
                Step::IdleUntil(Some(kept))
            } else {
                Step::Expire
            }
        }
        step => step,
    }
}

/// When an idle instance is due for termination; `None` when it is kept (or, under
/// `idleDuration: auto`, before its deadline is chosen).
pub fn idle_deadline(status: &InstanceStatus, policy: &EffectivePolicy) -> Option<Timestamp> {
    if policy.auto_idle() {
        return idle_auto::spell::current(status).map(|a| a.deadline.0);
    }
    let since = status.idle_since.as_ref()?.0;
    let limit = policy.idle_limit()?;
    since.checked_add(jiff::SignedDuration::try_from(limit).ok()?).ok()
}

/// Pending → Provisioning with the chosen offer, before any cloud call.
pub fn start_provisioning(status: &mut InstanceStatus, offer: Offer, now: Timestamp) {
    status.resources = Some(offer.resources_summary());
    status.offer = Some(offer);
    launch::record_sent(status, now);
    status.phase = InstancePhase::Provisioning;
    if status.provisioning_started_at.is_none() {
        status.provisioning_started_at = Some(Time(now));
    }
}

/// The outcome of looking for an offer when none is left to try.
#[derive(Clone, Debug, PartialEq)]
pub enum NoOffer {
    /// Look again at this time (the retry window is still open).
    RetryAt(Timestamp),
    /// Give up: Failed with this reason.
    Fail(Reason),
}

/// Chooses the next offer to try from the ranked list, skipping offers already tried
/// in this provisioning round. `None` plus what to do when nothing is left.
pub fn choose_offer(
    status: &InstanceStatus,
    ranked: &[Offer],
    policy: &EffectivePolicy,
    now: Timestamp,
) -> Result<Offer, NoOffer> {
    if let Some(o) = next_offer(ranked, &status.attempts) {
        return Ok(o.clone());
    }
    // Every offer failed (or none fits): retry within the window, or fail.
    let started = status.provisioning_started_at.as_ref().map(|t| t.0).unwrap_or(now);
    match &policy.retry {
        Some(r) if r.retries_on(RetryEvent::NoCapacity) => {
            let end = add(started, r.duration);
            if now < end {
                Err(NoOffer::RetryAt(std::cmp::min(end, add(now, RETRY_BACKOFF))))
            } else {
                Err(NoOffer::Fail(Reason::NoCapacity))
            }
        }
        _ if ranked.is_empty() => Err(NoOffer::Fail(Reason::NoOffers)),
        _ => Err(NoOffer::Fail(Reason::NoCapacity)),
    }
}

/// The launch succeeded (or the machine already existed): record it and move on.
pub fn launched(status: &mut InstanceStatus, machine: &Machine, now: Timestamp) {
    status.provider_id = Some(machine.provider_id.clone());
    status.next_attempt_at = None;
    status.usage.get_or_insert_with(Default::default).launched_at.get_or_insert(Time(now));
    launch::record_launched(status, now);
    observe_machine(status, machine, now);
}

/// Applies the provider's view of a provisioning machine.
pub fn observe_machine(status: &mut InstanceStatus, machine: &Machine, now: Timestamp) {
    if machine.address.is_some() {
        status.address = machine.address.clone();
    }
    if status.phase == InstancePhase::Provisioning && machine.state == MachineState::Running {
        status.phase = InstancePhase::Idle;
        status.idle_since = Some(Time(now));
        if let Some(started) = &status.provisioning_started_at {
            status.boot_seconds = Some(now.duration_since(started.0).as_secs().max(0) as u64);
        }
        // A fresh round of attempts starts the next time the instance provisions.
        status.provisioning_started_at = None;
    }
}

/// What to do after a launch attempt failed.
#[derive(Clone, Debug, PartialEq)]
pub enum LaunchFailure {
    /// Try this offer next (already written into `status.offer`).
    NextOffer,
    /// Try again later (rate limit, transient error, or retry window still open).
    RetryAt(Timestamp),
    /// Failed for good with this reason.
    Fail(Reason),
}

/// Records a failed launch and decides what comes next: the next offer for capacity
/// and per-offer errors, a later retry for throttling, or failure. Never for a launch
/// that got no answer before its machine is known to be absent (see [`launch`]): that
/// launch may have started it.
pub fn launch_failed(
    status: &mut InstanceStatus,
    err: &BackendError,
    ranked: &[Offer],
    policy: &EffectivePolicy,
    now: Timestamp,
) -> LaunchFailure {
    if let BackendError::RateLimited { retry_after, .. } = err {
        let at = add(now, retry_after.unwrap_or(RETRY_BACKOFF));
        status.next_attempt_at = Some(Time(at));
        return LaunchFailure::RetryAt(at);
    }
    launch::record_refused(status, now);
    if let Some(offer) = status.offer.clone() {
        status.attempts.push(ProvisioningAttempt {
            offer,
            error: err.category().to_string(),
            message: err.to_string(),
            at: Time(now),
        });
        let excess = status.attempts.len().saturating_sub(MAX_ATTEMPTS_KEPT);
        status.attempts.drain(..excess);
    }
    match choose_offer(status, ranked, policy, now) {
        Ok(offer) => {
            status.resources = Some(offer.resources_summary());
            status.offer = Some(offer);
            launch::record_sent(status, now);
            LaunchFailure::NextOffer
        }
        Err(NoOffer::RetryAt(t)) => {
            // Back to Pending: the next round ranks offers afresh.
            status.phase = InstancePhase::Pending;
            status.offer = None;
            status.resources = None;
            status.attempts.clear();
            status.next_attempt_at = Some(Time(t));
            LaunchFailure::RetryAt(t)
        }
        Err(NoOffer::Fail(reason)) => {
            status.phase = InstancePhase::Failed;
            LaunchFailure::Fail(reason)
        }
    }
}

/// Whether the instance holds run `run`: Busy with it (its claim is written).
pub fn holds(status: Option<&InstanceStatus>, run: &str) -> bool {
    status.is_some_and(|s| s.phase == InstancePhase::Busy && s.run.as_deref() == Some(run))
}

/// The run `run` no longer holds the busy instance (deleted, ended, or placed elsewhere,
/// see [`super::run::holds`]). While the instance records the run's job, which may still
/// run on the machine, it is held (Busy without a run, `Fencing`) until the job is stopped
/// there; else it is released: Idle now, with a `Released` Event.
pub fn run_let_go(status: &mut InstanceStatus, run: &str, now: Timestamp) -> Transition {
    if status.job.is_some() {
        status.run = None;
        return Transition::write()
            .said(Reason::Fencing, format!("run {run} no longer holds the instance; stopping its job"));
    }
    release(status, now);
    Transition::write().said(Reason::Idle, format!("run {run} no longer holds the instance")).event(
        false,
        Reason::Released,
        format!("run {run} is gone or finished"),
    )
}

/// Idle → Busy for `run`.
pub fn claim(status: &mut InstanceStatus, job: JobRef, now: Timestamp) {
    close_spells(status, now);
    let usage = status.usage.get_or_insert_with(Default::default);
    usage.busy_since = Some(Time(now));
    usage.runs += 1;
    status.phase = InstancePhase::Busy;
    status.run = Some(job.run.clone());
    status.job = Some(job);
    status.idle_since = None;
}

/// Busy → Idle; the idle clock starts now. The job there has ended.
pub fn release(status: &mut InstanceStatus, now: Timestamp) {
    close_spells(status, now);
    status.phase = InstancePhase::Idle;
    status.run = None;
    status.job = None;
    status.idle_since = Some(Time(now));
}

/// Adds the busy or idle spell under way, up to `now`, to the usage's totals.
fn close_spells(status: &mut InstanceStatus, now: Timestamp) {
    let idle_since = status.idle_since.as_ref().map(|t| t.0);
    let Some(usage) = status.usage.as_mut() else { return };
    if let Some(since) = usage.busy_since.take() {
        usage.busy_seconds += seconds_between(since.0, now);
    }
    if let Some(since) = idle_since {
        usage.idle_seconds += seconds_between(since, now);
    }
}

fn seconds_between(from: Timestamp, to: Timestamp) -> u64 {
    u64::try_from(to.as_second() - from.as_second()).unwrap_or(0)
}

/// Billed seconds of an instance up to `now` (or its end): in all, busy and idle, the
/// spell under way included; zero before a launch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accrued {
    pub total: u64,
    pub busy: u64,
    pub idle: u64,
}

/// Seconds of `status`'s billed life inside `[since, now]` (all of it without `since`):
/// in all, busy and idle, these two in proportion when the window cuts the life.
pub fn accrued_within(status: &InstanceStatus, since: Option<Timestamp>, now: Timestamp) -> (f64, f64, f64) {
    let a = accrued(status, now);
    let (total, busy, idle) = (a.total as f64, a.busy as f64, a.idle as f64);
    let (Some(since), Some(usage)) = (since, status.usage.as_ref()) else { return (total, busy, idle) };
    let Some(launched) = usage.launched_at.as_ref().map(|t| t.0) else { return (0.0, 0.0, 0.0) };
    let end = usage.ended_at.as_ref().map_or(now, |t| t.0);
    let inside = (end.as_second() - launched.as_second().max(since.as_second())).max(0) as f64;
    if total <= 0.0 {
        return (0.0, 0.0, 0.0);
    }
    let share = (inside / total).min(1.0);
    (inside.min(total), busy * share, idle * share)
}

pub fn accrued(status: &InstanceStatus, now: Timestamp) -> Accrued {
    let Some(u) = status.usage.as_ref() else { return Accrued::default() };
    let Some(launched) = u.launched_at.as_ref().map(|t| t.0) else { return Accrued::default() };
    let end = u.ended_at.as_ref().map_or(now, |t| t.0);
    let open = u.ended_at.is_none();
    let busy = u.busy_seconds + u.busy_since.as_ref().filter(|_| open).map_or(0, |t| seconds_between(t.0, end));
    let idle_open = status.idle_since.as_ref().filter(|_| open).map_or(0, |t| seconds_between(t.0, end));
    let total = seconds_between(launched, end);
    Accrued { total, busy: busy.min(total), idle: (u.idle_seconds + idle_open).min(total) }
}

/// Any live phase → Terminating.
pub fn terminate(status: &mut InstanceStatus) {
    status.phase = InstancePhase::Terminating;
}

/// A live instance that cannot be used any more (lost at the provider, not answering, its
/// held job not stoppable): Terminating with `reason`, said in `Ready` and a Warning, so
/// that the teardown deletes (or confirms the loss of) its machine.
pub fn give_up(status: &mut InstanceStatus, reason: Reason, message: impl Into<String>) -> Transition {
    let message = message.into();
    terminate(status);
    Transition::write().said(reason, message.clone()).event(true, reason, message).effect(Effect::Teardown { reason })
}

/// A live instance its pool no longer wants (`reason`: over its pool's budget, a warm
/// surplus), on a decision made on a copy that must still be current when written:
/// Terminating, `Ready` says `why`, and so does an Event, a Warning when the instance is
/// over its budget (money was spent against a limit), else Normal.
pub fn retire(status: &mut InstanceStatus, reason: Reason, why: impl Into<String>) -> Transition {
    let message = why.into();
    terminate(status);
    Transition::write().said(reason, message.clone()).event(reason == Reason::BudgetExceeded, reason, message)
}

/// What ending an instance provisioned for a run that no longer needs it (the run found
/// another, or was deleted) comes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Unneeded {
    /// It has started launching: kept (it joins the pool once up, and idles out if no run
    /// takes it).
    Kept,
    /// Delete the `Instance` once this is written: Terminated with `NotNeeded`, which a
    /// launch in flight cannot overtake (nothing to write when it had already ended
    /// without a machine).
    Delete(Transition),
}

/// Ends an instance no run needs any more ([`Unneeded`]) unless it may hold a machine:
/// only one that never launched, or whose launches were refused or found absent
/// ([`unlaunched`]), is ended, Terminated with `why`.
pub fn not_needed(status: &mut InstanceStatus, why: &str) -> Unneeded {
    let ended =
        matches!(status.phase, InstancePhase::Terminated | InstancePhase::Failed) && status.provider_id.is_none();
    if ended {
        return Unneeded::Delete(Transition::none());
    }
    if !unlaunched(status) {
        return Unneeded::Kept;
    }
    status.phase = InstancePhase::Terminated;
    Unneeded::Delete(Transition::write().said(Reason::NotNeeded, why))
}

/// Whether an instance is Pending and holds no machine: never launched, or only launches
/// that were refused or found absent. Ending it needs no teardown.
pub fn unlaunched(status: &InstanceStatus) -> bool {
    use crate::api::instance::LaunchOutcome;
    status.phase == InstancePhase::Pending
        && status.launch_attempts.iter().all(|a| matches!(a.outcome, LaunchOutcome::Refused | LaunchOutcome::Absent))
}

/// The backend says the machine is gone.
pub fn gone(status: &mut InstanceStatus, now: Timestamp) {
    if status.phase != InstancePhase::Terminated {
        close_spells(status, now);
        if let Some(u) = status.usage.as_mut().filter(|u| u.launched_at.is_some()) {
            u.ended_at.get_or_insert(Time(now));
        }
    }
    status.phase = InstancePhase::Terminated;
    status.address = None;
}

#[cfg(test)]
mod tests;
