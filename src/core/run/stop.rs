//! A run whose job kpool stops: the user's `stop`, its `maxDuration`, a job that cannot go
//! on. What stopping the job on the instance came to decides what the run says and what
//! becomes of the instance: freed after the run's status write (its job fenced first, a
//! no-op after a stop that worked), or, when the job could not be stopped, held for the
//! instance controller to fence before the run lets go of it.

use jiff::Timestamp;

use super::ended;
use crate::api::instance::JobRef;
use crate::api::reasons::Reason;
use crate::api::run::{RunPhase, RunStatus};
use crate::core::transition::{Effect, Event, Transition};

/// Why kpool stops the run's job.
#[derive(Clone, Debug, PartialEq)]
pub enum Cause {
    /// The user set `spec.stop`: Terminated, `Stopped`.
    User,
    /// The run reached its `maxDuration`: Terminated, `MaxDurationExceeded`.
    MaxDuration,
    /// The job cannot go on there (this message, e.g. its image cannot be pulled): Failed,
    /// `Unsupported`.
    Unsupported(String),
}

impl Cause {
    fn end(&self) -> (RunPhase, Reason) {
        match self {
            Cause::User => (RunPhase::Terminated, Reason::Stopped),
            Cause::MaxDuration => (RunPhase::Terminated, Reason::MaxDurationExceeded),
            Cause::Unsupported(_) => (RunPhase::Failed, Reason::Unsupported),
        }
    }

    /// What the run says, with `failed`: why the job could not be stopped, if it could not.
    fn message(&self, failed: Option<&str>) -> String {
        match (self, failed) {
            (Cause::User, None) => "stopped by the user".to_string(),
            (Cause::User, Some(why)) => format!("stopped by the user; {why}"),
            (Cause::MaxDuration, None) => "maxDuration reached; stopped".to_string(),
            (Cause::MaxDuration, Some(why)) => format!("maxDuration reached; {why}"),
            (Cause::Unsupported(e), None) => e.clone(),
            (Cause::Unsupported(e), Some(why)) => format!("{e}; {why}"),
        }
    }
}

/// What stopping the run's job on its instance came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// Stopped, or nothing to stop (the run is on no instance, or it is gone).
    Done,
    /// The job on `instance` could not be stopped (`error`, the whole chain). `holds`: the
    /// instance still holds the run; `job` is the job it records (else the run's).
    Failed { instance: String, holds: bool, job: JobRef, error: String },
}

impl Stop {
    /// Why the job could not be stopped, for the run's status and Events.
    fn why(&self) -> Option<String> {
        match self {
            Stop::Done => None,
            Stop::Failed { instance, error, .. } => Some(unstoppable(instance, error)),
        }
    }

    /// `t`, and what a failed stop adds to it: a `StopFailed` Warning first and, while the
    /// instance holds the run, the instance held before the run's status write
    /// ([`Effect::Hold`]) instead of freed after it.
    fn onto(self, mut t: Transition) -> Transition {
        let Stop::Failed { instance, holds, job, error } = self else { return t };
        let why = unstoppable(&instance, &error);
        t.events.insert(0, Event { warning: true, reason: Reason::StopFailed, message: why.clone() });
        match holds {
            true => t.effect(Effect::Hold { instance, job, why }),
            false => t,
        }
    }
}

fn unstoppable(instance: &str, error: &str) -> String {
    format!("the job could not be stopped ({error}); instance {instance} is held until it is")
}

/// The run ends because kpool stopped its job (`cause`), as [`ended`] says it: its
/// instance is freed after the status write, its job fenced first. When the job could not
/// be stopped the run says why and the instance is held instead ([`Stop::Failed`]).
pub fn stopped(status: &mut RunStatus, cause: &Cause, stop: Stop, now: Timestamp) -> Transition {
    let (phase, reason) = cause.end();
    let message = cause.message(stop.why().as_deref());
    stop.onto(ended(status, phase, reason, None, &message, now))
}

/// A run that is deleted lets go of `instance` (the one it is on, if any) once kpool tried
/// to stop its job there: nothing is written on the run (it is going away); the instance
/// is freed, its job fenced first, or held as [`stopped`] holds it.
pub fn let_go(instance: Option<&str>, stop: Stop) -> Transition {
    let free = match instance {
        Some(instance) => Transition::none().effect(Effect::Release { instance: instance.to_string(), ended: false }),
        None => Transition::none(),
    };
    stop.onto(free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::run::assigned;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn failed(holds: bool) -> Stop {
        let job = JobRef { run: "r".into(), run_uid: "u".into(), attempt: 1 };
        Stop::Failed { instance: "i".into(), holds, job, error: "timeout".into() }
    }

    const WHY: &str = "the job could not be stopped (timeout); instance i is held until it is";

    #[test]
    fn a_stopped_run_ends_as_its_cause_says_and_frees_or_holds_its_instance() {
        let now = t("2026-01-01T00:10:00Z");
        let job = JobRef { run: "r".into(), run_uid: "u".into(), attempt: 1 };
        let release = Effect::Release { instance: "i".into(), ended: false };
        let hold = Effect::Hold { instance: "i".into(), job, why: WHY.into() };
        let bad = || Cause::Unsupported("image cannot be pulled".into());
        let (term, fail) = (RunPhase::Terminated, RunPhase::Failed);
        // (cause, stop, phase, reason, message, effect)
        for (cause, stop, phase, reason, message, effect) in [
            (Cause::User, Stop::Done, term, Reason::Stopped, "stopped by the user".to_string(), &release),
            (Cause::User, failed(true), term, Reason::Stopped, format!("stopped by the user; {WHY}"), &hold),
            (Cause::User, failed(false), term, Reason::Stopped, format!("stopped by the user; {WHY}"), &release),
            (
                Cause::MaxDuration,
                Stop::Done,
                term,
                Reason::MaxDurationExceeded,
                "maxDuration reached; stopped".into(),
                &release,
            ),
            (
                Cause::MaxDuration,
                failed(true),
                term,
                Reason::MaxDurationExceeded,
                format!("maxDuration reached; {WHY}"),
                &hold,
            ),
            (bad(), Stop::Done, fail, Reason::Unsupported, "image cannot be pulled".into(), &release),
            (bad(), failed(true), fail, Reason::Unsupported, format!("image cannot be pulled; {WHY}"), &hold),
        ] {
            let mut s = RunStatus::default();
            assigned(&mut s, "i", t("2026-01-01T00:01:00Z"));
            let did_fail = stop != Stop::Done;
            let out = stopped(&mut s, &cause, stop, now);
            let mut want = Transition::write().said(reason, message.clone());
            if did_fail {
                want = want.event(true, Reason::StopFailed, WHY);
            }
            let want = want.event(true, reason, message.clone()).effect(effect.clone());
            assert_eq!(out, want, "{cause:?} {message}");
            assert_eq!((s.phase, s.termination_reason.as_deref()), (phase, Some(reason.as_str())), "{message}");
        }
    }

    #[test]
    fn a_deleted_run_writes_nothing_and_frees_or_holds_its_instance() {
        let release = Transition::none().effect(Effect::Release { instance: "i".into(), ended: false });
        assert_eq!(let_go(Some("i"), Stop::Done), release);
        assert_eq!(let_go(None, Stop::Done), Transition::none());
        let warned = Transition::none().event(true, Reason::StopFailed, WHY);
        let job = JobRef { run: "r".into(), run_uid: "u".into(), attempt: 1 };
        let hold = Effect::Hold { instance: "i".into(), job, why: WHY.into() };
        assert_eq!(let_go(Some("i"), failed(true)), warned.clone().effect(hold));
        assert_eq!(
            let_go(Some("i"), failed(false)),
            warned.effect(Effect::Release { instance: "i".into(), ended: false })
        );
    }
}
