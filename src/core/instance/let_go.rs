//! What becomes of a busy instance when the run on it lets go of it, as the run's side
//! decides it (the run ended, was stopped, or gave the instance up): freed (Idle) once the
//! job there is known to have ended, or was fenced; else held (Busy without a run, the
//! job recorded) for the instance controller to fence (see `controllers::fence`).

use jiff::Timestamp;

use crate::api::instance::{InstanceStatus, JobRef};
use crate::api::reasons::Reason;
use crate::core::transition::Transition;

/// A job that could not be stopped on the instance's machine: which one, and the whole
/// error chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Unfenced {
    pub job: JobRef,
    pub error: String,
}

/// The run `run` that holds the instance ended, and its job there has ended or was just
/// fenced (`Ok`), or could not be stopped (`Err`): freed ([`freed`]) or held until it is
/// ([`held`]).
pub fn run_ended(status: &mut InstanceStatus, run: &str, fenced: Result<(), Unfenced>, now: Timestamp) -> Transition {
    match fenced {
        Ok(()) => freed(status, run, now),
        Err(Unfenced { job, error }) => {
            held(status, run, job, &format!("the job could not be stopped ({error}); held until it is"))
        }
    }
}

/// Busy → Idle, the idle clock starts now: `Ready` says the run ended, a Normal `Released`
/// Event says the instance is idle.
pub fn freed(status: &mut InstanceStatus, run: &str, now: Timestamp) -> Transition {
    super::release(status, now);
    Transition::write().said(Reason::Idle, format!("run {run} ended; idle")).event(
        false,
        Reason::Released,
        format!("run {run} ended; the instance is idle"),
    )
}

/// The run `run` lets go of the instance while `job` may still run there (`why`): it stays
/// Busy without a run, with the job recorded, so that it takes no other run before the job
/// is stopped; `Ready` says `Fencing`, and so does a Warning each time (each hold is news:
/// a run lets go of an instance once).
pub fn held(status: &mut InstanceStatus, run: &str, job: JobRef, why: &str) -> Transition {
    status.run = None;
    status.job = Some(job);
    let message = format!("run {run} let go of the instance: {why}");
    Transition::write().said(Reason::Fencing, message.clone()).event(true, Reason::Fencing, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::instance::InstancePhase;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn busy(job: &JobRef) -> InstanceStatus {
        InstanceStatus {
            phase: InstancePhase::Busy,
            run: Some(job.run.clone()),
            job: Some(job.clone()),
            ..InstanceStatus::default()
        }
    }

    #[test]
    fn a_run_that_ended_frees_its_instance_once_its_job_is_stopped_else_holds_it() {
        let job = JobRef { run: "r".into(), run_uid: "u".into(), attempt: 2 };
        let other = JobRef { attempt: 1, ..job.clone() };
        let now = t("2026-01-01T00:00:00Z");
        let idle = Transition::write().said(Reason::Idle, "run r ended; idle").event(
            false,
            Reason::Released,
            "run r ended; the instance is idle",
        );
        let why = "run r let go of the instance: the job could not be stopped (timeout); held until it is";
        let hold = Transition::write().said(Reason::Fencing, why).event(true, Reason::Fencing, why);
        let unfenced = Err(Unfenced { job: other.clone(), error: "timeout".into() });
        // (fence outcome, transition, phase, run, job, idle since)
        for (fenced, want, phase, run, held_job, since) in [
            (Ok(()), idle, InstancePhase::Idle, None, None, Some(now)),
            (unfenced, hold, InstancePhase::Busy, None, Some(&other), None),
        ] {
            let mut st = busy(&job);
            let out = run_ended(&mut st, "r", fenced.clone(), now);
            assert_eq!(out, want, "{fenced:?}");
            let seen = (st.phase, st.run.as_deref(), st.job.as_ref(), st.idle_since.map(|t| t.0));
            assert_eq!(seen, (phase, run, held_job, since), "{fenced:?}");
        }
    }
}
