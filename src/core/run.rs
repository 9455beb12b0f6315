//! The run state machine: Pending → Provisioning → Running → Succeeded / Failed /
//! Terminated. Each transition is a function of (status, facts, now).

pub mod attempt;
pub mod job;
pub mod provision;
pub mod stop;
pub mod unplaced;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::add;
use super::policy::EffectivePolicy;
use crate::api::policy::{CreationPolicy, RetryEvent};
use crate::api::reasons::Reason;
use crate::api::run::{RunAttempt, RunPhase, RunStatus};
use crate::core::transition::{Effect, Transition};

/// At most this many ended attempts are kept in `status.history`.
pub const MAX_HISTORY: usize = 20;

/// How the job on the instance is doing, as the executor reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Running,
    Exited(i32),
}

/// What placement should do when no idle instance fits.
#[derive(Clone, Debug, PartialEq)]
pub enum NoFit {
    /// Create a new instance for the run.
    Provision,
    /// Wait (Pending) and say why; look again at `retry_at` at the latest.
    Wait { reason: Reason, message: String, retry_at: Option<Timestamp> },
    /// Give up: the run fails with this reason.
    Fail { reason: Reason, message: String },
}

/// The end of the run's retry window (no-capacity), if it retries.
pub fn retry_deadline(status: &RunStatus, policy: &EffectivePolicy, event: RetryEvent) -> Option<Timestamp> {
    let r = policy.retry.as_ref().filter(|r| r.retries_on(event))?;
    let from = status.submitted_at.as_ref()?.0;
    Some(add(from, r.duration))
}

/// A run's place in its pool's queue (smaller first): priority (higher first), then age,
/// then name. (Borrowed: a queue of thousands is ordered without copying a name.)
pub fn queue_key(r: &crate::api::run::Run) -> (std::cmp::Reverse<i32>, Option<Timestamp>, &str) {
    let name = r.metadata.name.as_deref().unwrap_or_default();
    (std::cmp::Reverse(r.spec.priority), r.metadata.creation_timestamp.as_ref().map(|t| t.0), name)
}

/// Whether `r` waits in its pool's queue: not on an instance (it may be provisioning
/// one), not ended, not stopped, not being deleted.
pub fn is_waiting(r: &crate::api::run::Run) -> bool {
    r.metadata.deletion_timestamp.is_none()
        && !r.spec.stop
        && r.status.as_ref().is_none_or(|s| s.instance.is_none() && !s.phase.is_finished())
}

/// Decides what to do when no idle instance in the pool fits the run.
pub fn no_fit(
    status: &RunStatus,
    policy: &EffectivePolicy,
    pool: &str,
    pool_has_room: bool,
    pinned: Option<&str>,
    now: Timestamp,
) -> NoFit {
    let deadline = retry_deadline(status, policy, RetryEvent::NoCapacity);
    if let Some(name) = pinned {
        return wait_or_fail(
            deadline,
            now,
            Reason::InstanceNotAvailable,
            format!("instance {name} is not idle in pool {pool} or does not fit the run"),
        );
    }
    if policy.creation_policy == CreationPolicy::Reuse {
        return wait_or_fail(
            deadline,
            now,
            Reason::NoIdleInstance,
            format!("no idle instance in pool {pool} fits; creationPolicy Reuse never provisions"),
        );
    }
    if !pool_has_room {
        return wait_or_fail(
            deadline,
            now,
            Reason::PoolAtCapacity,
            format!("pool {pool} has reached maxInstances; waiting for an instance to free up"),
        );
    }
    NoFit::Provision
}

fn wait_or_fail(deadline: Option<Timestamp>, now: Timestamp, reason: Reason, message: String) -> NoFit {
    match deadline {
        Some(d) if now >= d => {
            NoFit::Fail { reason: Reason::NoCapacity, message: format!("retry window ended: {message}") }
        }
        d => NoFit::Wait { reason, message, retry_at: d },
    }
}

/// Whether the run still waits for `instance`, the instance being provisioned for it: it
/// has neither claimed it (nor another one) nor ended. Such an instance is reserved for
/// the run, and its idle duration does not end it before the run had its chance to claim
/// it ([`next_step_awaited`](super::instance::next_step_awaited)).
pub fn waits_for(status: &RunStatus, instance: &str) -> bool {
    !status.phase.is_finished() && status.provisioning_instance.as_deref() == Some(instance)
}

/// Whether `run` still holds the instance `instance`, as the instance's own check sees
/// it: on it and not ended; or not ended, not being deleted and on no instance yet (it
/// claimed `instance` and its own status write has not landed, or was lost: its next pass
/// finds the instance that names it and goes on there). A run that is gone holds nothing.
pub fn holds(run: Option<&crate::api::run::Run>, instance: &str) -> bool {
    let Some(run) = run else { return false };
    let status = run.status.as_ref();
    status.is_some_and(|s| !s.phase.is_finished() && s.instance.as_deref() == Some(instance))
        || run.metadata.deletion_timestamp.is_none()
            && status.is_none_or(|s| !s.phase.is_finished() && s.instance.is_none())
}

/// The longest name an object may have (a DNS subdomain, as `Instance` names are).
pub const MAX_OBJECT_NAME: usize = 253;

/// The name of the instance a run named `run` provisions on its attempt `attempt`:
/// `<run>-<attempt>`; when that would be longer than an object name may be, the run's
/// name is cut short and a hash of the whole name keeps it apart from other runs':
/// `<start of the run's name>-<hash>-<attempt>`.
pub fn instance_name_for(run: &str, attempt: u32) -> String {
    let plain = format!("{run}-{attempt}");
    if plain.len() <= MAX_OBJECT_NAME {
        return plain;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, run.as_bytes());
    let hash: String = digest.as_ref()[..5].iter().map(|b| format!("{b:02x}")).collect();
    let suffix = format!("-{hash}-{attempt}");
    let mut end = MAX_OBJECT_NAME - suffix.len();
    while !run.is_char_boundary(end) {
        end -= 1;
    }
    // A part of a DNS subdomain ends with a letter or digit.
    let prefix = run[..end].trim_end_matches(['-', '.']);
    format!("{prefix}{suffix}")
}

/// The run was placed on `instance` and starts now.
pub fn assigned(status: &mut RunStatus, instance: &str, now: Timestamp) {
    status.phase = RunPhase::Running;
    status.instance = Some(instance.to_string());
    status.provisioning_instance = None;
    status.started_at = Some(Time(now));
}

/// A new instance is being provisioned for the run.
pub fn provisioning(status: &mut RunStatus, instance: &str) {
    status.phase = RunPhase::Provisioning;
    status.provisioning_instance = Some(instance.to_string());
}

/// When a running run must be stopped for exceeding `maxDuration`.
pub fn max_duration_deadline(status: &RunStatus, policy: &EffectivePolicy) -> Option<Timestamp> {
    let started = status.started_at.as_ref()?.0;
    Some(add(started, policy.max_duration?))
}

/// Whether a running run has reached its `maxDuration` (at the deadline exactly, it has):
/// its job is stopped and the run is Terminated with `MaxDurationExceeded`.
pub fn max_duration_reached(status: &RunStatus, policy: &EffectivePolicy, now: Timestamp) -> bool {
    max_duration_deadline(status, policy).is_some_and(|deadline| now >= deadline)
}

/// Ends the run.
pub fn finish(status: &mut RunStatus, phase: RunPhase, reason: Reason, exit_code: Option<i32>, now: Timestamp) {
    debug_assert!(phase.is_finished());
    record(status, reason, exit_code, now);
    status.phase = phase;
    status.termination_reason = Some(reason.as_str().to_string());
    if exit_code.is_some() {
        status.exit_code = exit_code;
    }
    status.finished_at = Some(Time(now));
    status.provisioning_instance = None;
}

/// Ends the run ([`finish`]) and says so with `message`: its summary condition and an
/// Event (a Warning unless it succeeded). The instance it was on is freed after the status
/// write, its job fenced first ([`Effect::Release`]).
pub fn ended(
    status: &mut RunStatus,
    phase: RunPhase,
    reason: Reason,
    exit_code: Option<i32>,
    message: &str,
    now: Timestamp,
) -> Transition {
    let instance = status.instance.clone();
    finish(status, phase, reason, exit_code, now);
    let t = Transition::write().said(reason, message).event(phase != RunPhase::Succeeded, reason, message);
    match instance {
        Some(instance) => t.effect(Effect::Release { instance, ended: false }),
        None => t,
    }
}

/// A run found ended: nothing to write; the instance it was on is freed if the run still
/// holds it, its job fenced first ([`Effect::Release`], a no-op once freed). A pass that
/// ended the run and stopped before freeing the instance left it so.
pub fn already_ended(status: &RunStatus) -> Transition {
    match status.instance.clone().filter(|_| status.phase.is_finished()) {
        Some(instance) => Transition::none().effect(Effect::Release { instance, ended: false }),
        None => Transition::none(),
    }
}

/// The job exited: Succeeded on 0; on an error, retried when the policy says so.
/// Returns true when the run goes back to Pending for another attempt.
pub fn job_exited(status: &mut RunStatus, policy: &EffectivePolicy, code: i32, now: Timestamp) -> bool {
    if code == 0 {
        finish(status, RunPhase::Succeeded, Reason::Completed, Some(0), now);
        return false;
    }
    if retry_open(status, policy, RetryEvent::Error, now) {
        record(status, Reason::ContainerExitedWithError, Some(code), now);
        resubmit(status, Some(code));
        return true;
    }
    finish(status, RunPhase::Failed, Reason::ContainerExitedWithError, Some(code), now);
    false
}

/// The job on `instance` exited with `code` ([`job_exited`]) and says so: `Retrying` when
/// the run goes back to Pending, else its summary; an Event (a Warning unless the code is
/// 0). The instance is freed after the status write (the outcome first: a crash in between
/// leaves the instance held by a run that has ended, which either controller frees again;
/// freed first, the next pass would take the run for interrupted and lose its exit),
/// without a fence: the job has ended.
pub fn exited(
    status: &mut RunStatus,
    policy: &EffectivePolicy,
    instance: &str,
    code: i32,
    now: Timestamp,
) -> Transition {
    let retried = job_exited(status, policy, code, now);
    let message = format!("the job exited with code {code}");
    let said = match retried {
        true => (Reason::Retrying, format!("{message}; retrying")),
        false => (Reason::Completed, message.clone()),
    };
    let event = if code == 0 { Reason::Succeeded } else { Reason::Failed };
    Transition::write()
        .said(said.0, said.1)
        .event(code != 0, event, message)
        .effect(Effect::Release { instance: instance.to_string(), ended: true })
}

/// The run's instance went away (terminated, reclaimed, unreachable). Returns true
/// when the run is resubmitted.
pub fn interrupted(status: &mut RunStatus, policy: &EffectivePolicy, reason: Reason, now: Timestamp) -> bool {
    if retry_open(status, policy, RetryEvent::Interruption, now) {
        record(status, reason, None, now);
        resubmit(status, None);
        return true;
    }
    finish(status, RunPhase::Terminated, reason, None, now);
    false
}

/// What became of a running run whose instance no longer holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Interruption {
    /// `InstanceUnreachable` when kpool gave the instance up for not answering, else
    /// `Interrupted`.
    pub reason: Reason,
    /// What happened to the instance, for the run's status and its Event.
    pub message: String,
    /// Whether the run goes back to Pending for another attempt; else it is Terminated.
    pub retried: bool,
}

impl Interruption {
    /// What the run says: a Warning with the message, and `Retrying` when it goes back to
    /// Pending (else its summary: it is Terminated).
    pub fn transition(&self) -> Transition {
        let t = Transition::write().event(true, self.reason, self.message.clone());
        match self.retried {
            true => t.said(Reason::Retrying, format!("{}; retrying", self.message)),
            false => t.said(self.reason, self.message.clone()),
        }
    }
}

/// The run's instance `instance` no longer holds the run. `ready` is the instance's
/// `Ready` condition (reason, message) when the instance still exists: when kpool gave
/// it up while it was live ([`Reason::instance_lost`]: reclaimed, gone at the provider,
/// unreachable, over its pool's budget), its message says what happened. The run is
/// [`interrupted`]: retried when its policy retries on interruption and the window is
/// open, else Terminated with the reason.
pub fn instance_lost(
    status: &mut RunStatus,
    policy: &EffectivePolicy,
    instance: &str,
    ready: Option<(&str, &str)>,
    now: Timestamp,
) -> Interruption {
    let lost = ready.and_then(|(r, m)| Some((Reason::parse(r).filter(|r| r.instance_lost())?, m)));
    let (reason, message) = match lost {
        Some((Reason::Unreachable, m)) => (Reason::InstanceUnreachable, format!("instance {instance}: {m}")),
        Some((_, m)) => (Reason::Interrupted, format!("instance {instance}: {m}")),
        None => (Reason::Interrupted, format!("instance {instance} went away while the run was on it")),
    };
    let retried = interrupted(status, policy, reason, now);
    Interruption { reason, message, retried }
}

/// The attempt could not be started or followed (`reason`, e.g. `StartFailed`): retried
/// when the policy retries on errors and the window is open (returns true), else Failed.
pub fn attempt_failed(status: &mut RunStatus, policy: &EffectivePolicy, reason: Reason, now: Timestamp) -> bool {
    if retry_open(status, policy, RetryEvent::Error, now) {
        record(status, reason, None, now);
        resubmit(status, None);
        return true;
    }
    finish(status, RunPhase::Failed, reason, None, now);
    false
}

/// Provisioning an instance for the run failed and the retry window is open: back to
/// Pending for another attempt.
pub fn provisioning_failed(status: &mut RunStatus, now: Timestamp) {
    record(status, Reason::NoCapacity, None, now);
    status.provisioning_instance = None;
    status.attempts += 1;
    status.phase = RunPhase::Pending;
}

/// Appends the attempt that ends now to the history (bounded).
fn record(status: &mut RunStatus, reason: Reason, exit_code: Option<i32>, now: Timestamp) {
    status.history.push(RunAttempt {
        instance: status.instance.clone().or_else(|| status.provisioning_instance.clone()),
        started_at: status.started_at.clone(),
        finished_at: Time(now),
        exit_code,
        reason: reason.as_str().to_string(),
    });
    let excess = status.history.len().saturating_sub(MAX_HISTORY);
    status.history.drain(..excess);
}

fn retry_open(status: &RunStatus, policy: &EffectivePolicy, event: RetryEvent, now: Timestamp) -> bool {
    retry_deadline(status, policy, event).is_some_and(|d| now < d)
}

fn resubmit(status: &mut RunStatus, exit_code: Option<i32>) {
    status.phase = RunPhase::Pending;
    status.instance = None;
    status.provisioning_instance = None;
    status.started_at = None;
    status.exit_code = exit_code;
    status.attempts += 1;
}

#[cfg(test)]
mod tests;
