//! A run's attempt on its instance, as one transition per outcome: the job started, the
//! executor answered (the job runs, or exited), an executor call failed
//! ([`exec_failed`](super::job::exec_failed)), the attempt ended on such failures, and
//! the instance that does not answer ([`unreachable`](super::job::unreachable)).

use jiff::Timestamp;

use super::job::{ExecVerdict, Unreachable, JOB_CONTROL, REACHABLE};
use super::{assigned, attempt_failed, ended, exited, EffectivePolicy, Interruption, JobState};
use crate::api::conditions::clear_false;
use crate::api::instance::JobRef;
use crate::api::reasons::Reason;
use crate::api::run::{RunPhase, RunStatus};
use crate::core::transition::{Effect, Event, Transition};

/// The job of the run started on `instance`, whose claim is written: the run is Running
/// there (`JobControl` back to True if a start failed before), `Scheduled` says where;
/// `announce`: with an `Assigned` Event (a run placed by a batch has none: the batch
/// publishes one on the pool).
pub fn started(
    status: &mut RunStatus,
    instance: &str,
    announce: bool,
    generation: Option<i64>,
    now: Timestamp,
) -> Transition {
    clear_false(&mut status.conditions, JOB_CONTROL, Reason::Controlled, "the job started", generation, now);
    assigned(status, instance, now);
    let message = format!("running on instance {instance}");
    let t = Transition::write().said(Reason::Assigned, message.clone());
    match announce {
        true => t.event(false, Reason::Assigned, message),
        false => t,
    }
}

/// The executor answered for the job on `instance` (`state`): `InstanceReachable` and
/// `JobControl` go back to True if they were False, a Normal Event saying the instance
/// answers again. A job still running is written only when they changed; one that exited
/// is [`exited`], written with them.
pub fn answered(
    status: &mut RunStatus,
    policy: &EffectivePolicy,
    instance: &str,
    state: &JobState,
    generation: Option<i64>,
    now: Timestamp,
) -> Transition {
    let back = "the instance answers again";
    let reachable_again = clear_false(&mut status.conditions, REACHABLE, Reason::Reachable, back, generation, now);
    let controlled_again =
        clear_false(&mut status.conditions, JOB_CONTROL, Reason::Controlled, "the job answers", generation, now);
    let mut t = match state {
        JobState::Running => Transition { write: reachable_again || controlled_again, ..Transition::none() },
        JobState::Exited(code) => exited(status, policy, instance, *code, now),
    };
    if reachable_again {
        let message = format!("instance {instance} answers again");
        t.events.insert(0, Event { warning: false, reason: Reason::Reachable, message });
    }
    t
}

/// The attempt on `instance` ends for `reason` (`message` says why): retried when the
/// policy retries on errors and the window is open (`JobControl` True again, `Retrying`),
/// else Failed ([`attempt_failed`]); a Warning says why. The outcome is written first,
/// then the instance is freed once the job of the attempt that ended is fenced (held
/// until it is): [`Effect::ReleaseAttempt`].
pub fn attempt_ended(
    status: &mut RunStatus,
    policy: &EffectivePolicy,
    instance: &str,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Transition {
    let release = Effect::ReleaseAttempt { instance: instance.to_string(), attempt: status.attempts };
    let t = Transition::write().event(true, reason, message).effect(release);
    match attempt_failed(status, policy, reason, now) {
        true => {
            clear_false(&mut status.conditions, JOB_CONTROL, Reason::Retrying, "a new attempt starts", generation, now);
            t.said(Reason::Retrying, format!("{message}; retrying"))
        }
        false => t.said(reason, message),
    }
}

/// What a failed executor call comes to ([`ExecVerdict`]), as the controller applies it.
#[derive(Clone, Debug, PartialEq)]
pub enum Exec {
    /// The job cannot run there: the run fails with `Unsupported` and this message, once
    /// what is left of the job is stopped (after a start nothing ran: [`start_refused`]).
    Unsupported(String),
    /// Apply the transition (written, with a Warning, only when `JobControl` changed) and
    /// hand the error back: the call is tried again.
    Again(Transition),
    /// Apply the transition: the attempt ended ([`attempt_ended`]).
    Ended(Transition),
}

/// The verdict on a failed executor call for the job on `instance`, as an [`Exec`].
pub fn exec(
    verdict: ExecVerdict,
    status: &mut RunStatus,
    policy: &EffectivePolicy,
    instance: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Exec {
    match verdict {
        ExecVerdict::Fail { message, .. } => Exec::Unsupported(message),
        ExecVerdict::Retry { reason, message, changed } => {
            let t = Transition { write: changed, ..Transition::none() };
            Exec::Again(if changed { t.event(true, reason, message) } else { t })
        }
        ExecVerdict::EndAttempt { reason, message } => {
            Exec::Ended(attempt_ended(status, policy, instance, reason, &message, generation, now))
        }
    }
}

/// The executor refused to start the job on `instance` (`Unsupported`: it refuses before
/// anything runs there): the run fails, and the instance is freed without a fence before
/// that is written ([`Effect::FreeUnstarted`]).
pub fn start_refused(status: &mut RunStatus, instance: &str, message: &str, now: Timestamp) -> Transition {
    ended(status, RunPhase::Failed, Reason::Unsupported, None, message, now)
        .effect(Effect::FreeUnstarted { instance: instance.to_string() })
}

/// What the run makes of its instance `instance` not answering ([`Unreachable`]). Within
/// the grace: `InstanceReachable` False, written with a Warning the first time only.
/// Past it: the run is interrupted ([`Interruption::transition`]) and lets go of the
/// instance, which is held first for `held`, the job that may still run there
/// ([`Effect::Hold`]).
pub fn unreachable(verdict: Unreachable, instance: &str, held: JobRef) -> Transition {
    match verdict {
        Unreachable::Waiting { event: None, .. } => Transition::none(),
        Unreachable::Waiting { event: Some(note), .. } => {
            Transition::write().event(true, Reason::InstanceUnreachable, note)
        }
        Unreachable::GaveUp { message, retried } => {
            let why = message.clone();
            let interruption = Interruption { reason: Reason::InstanceUnreachable, message, retried };
            interruption.transition().effect(Effect::Hold { instance: instance.to_string(), job: held, why })
        }
    }
}

#[cfg(test)]
mod tests;
