//! A run that no idle instance fits ([`no_fit`]), as one transition: an instance is
//! provisioned for it, it waits (saying why), or it fails.

use jiff::Timestamp;

use super::{ended, instance_name_for, no_fit, provisioning, EffectivePolicy, NoFit};
use crate::api::reasons::Reason;
use crate::api::run::{RunPhase, RunStatus};
use crate::core::pool::fits;
use crate::core::transition::{Effect, Transition};

/// The room in the run's pool, as placement counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// The pool's `maxInstances` (`None`: no limit).
    pub max: Option<u32>,
    /// Its instances that occupy a slot ([`occupying`](crate::core::pool::occupying)).
    pub occupied: usize,
    /// The runs ahead of this one in the pool's queue that wait for room: the free slots
    /// are theirs first.
    pub ahead: usize,
}

/// What becomes of the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Unplaced {
    /// Apply the transition and go on from the run as written.
    Go(Transition),
    /// Apply the transition and wait: look again at `retry_at` at the latest (the end of
    /// the run's retry window), whether or not anything was written.
    Wait(Transition, Option<Timestamp>),
}

/// No idle instance of pool `pool` fits the run `run` (pinned to `pinned`, if any);
/// `moved`: its queue position changed. `status` carries the change.
/// - provision ([`no_fit`]): the run is Provisioning the instance named after its
///   attempt ([`instance_name_for`]), recorded by the status write before the instance
///   is created ([`Effect::CreateInstance`]): a crash in between cannot create a second.
/// - wait: `Scheduled` says why, announced by a Normal Event when that changed; written
///   then, or when the queue position moved. A pool with a free slot that the runs ahead
///   wait for says so rather than that it is full.
/// - fail: the run fails (its retry window ended).
#[allow(clippy::too_many_arguments)]
pub fn unplaced(
    status: &mut RunStatus,
    policy: &EffectivePolicy,
    run: &str,
    pool: &str,
    room: Room,
    pinned: Option<&str>,
    moved: bool,
    now: Timestamp,
) -> Unplaced {
    match no_fit(status, policy, pool, fits(room.max, room.occupied, room.ahead), pinned, now) {
        NoFit::Provision => {
            let name = instance_name_for(run, status.attempts);
            provisioning(status, &name);
            let message = format!("no idle instance fits; provisioning {name}");
            Unplaced::Go(
                Transition::write().said(Reason::Provisioning, message).effect(Effect::CreateInstance { name }),
            )
        }
        NoFit::Wait { reason, mut message, retry_at } => {
            if reason == Reason::PoolAtCapacity && fits(room.max, room.occupied, 0) {
                message = format!(
                    "pool {pool} has a free slot, held for the {} run(s) ahead of this one in its queue \
                     (priority, then age)",
                    room.ahead
                );
            }
            let t = Transition { write: moved, ..Transition::none() }.said(reason, message).announce(false);
            Unplaced::Wait(t, retry_at)
        }
        NoFit::Fail { reason, message } => Unplaced::Go(ended(status, RunPhase::Failed, reason, None, &message, now)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::policy::{CreationPolicy, PolicySpec, RetryEvent, RetrySpec};
    use crate::core::policy::{effective_policy, Origin};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const SUBMITTED: &str = "2026-01-01T00:00:00Z";
    const WITHIN: &str = "2026-01-01T00:30:00Z";
    const END: &str = "2026-01-01T01:00:00Z";

    /// Pending since midnight on its attempt `attempts`; `window`: an hour's no-capacity
    /// retry window.
    fn case(attempts: u32, window: bool, reuse: bool) -> (RunStatus, EffectivePolicy) {
        let s = RunStatus { submitted_at: Some(Time(t(SUBMITTED))), attempts, ..Default::default() };
        let retry = window.then(|| RetrySpec { on: Some(vec![RetryEvent::NoCapacity]), duration: Some("1h".into()) });
        let creation_policy = reuse.then_some(CreationPolicy::Reuse);
        (s, effective_policy(&[&PolicySpec { retry, creation_policy, ..Default::default() }], Origin::Run).unwrap())
    }

    fn room(max: Option<u32>, occupied: usize, ahead: usize) -> Room {
        Room { max, occupied, ahead }
    }

    #[test]
    fn with_room_the_instance_is_named_after_the_attempt_and_recorded_before_it_is_created() {
        for (max, occupied) in [(None, 100), (Some(3), 2)] {
            let (mut s, p) = case(2, false, false);
            let got = unplaced(&mut s, &p, "r", "gpu", room(max, occupied, 0), None, false, t(WITHIN));
            let want = Transition::write()
                .said(Reason::Provisioning, "no idle instance fits; provisioning r-2")
                .effect(Effect::CreateInstance { name: "r-2".into() });
            assert_eq!(got, Unplaced::Go(want), "{max:?} {occupied}");
            assert_eq!((s.phase, s.provisioning_instance.as_deref()), (RunPhase::Provisioning, Some("r-2")));
        }
    }

    #[test]
    fn a_full_pool_waits_announced_once_and_written_only_when_the_queue_moved() {
        for moved in [false, true] {
            let (mut s, p) = case(0, true, false);
            let before = s.clone();
            let got = unplaced(&mut s, &p, "r", "gpu", room(Some(2), 2, 0), None, moved, t(WITHIN));
            let message = "pool gpu has reached maxInstances; waiting for an instance to free up";
            let want =
                Transition { write: moved, ..Transition::none() }.said(Reason::PoolAtCapacity, message).announce(false);
            assert_eq!(got, Unplaced::Wait(want, Some(t(END))), "{moved}");
            assert_eq!(s, before, "waiting changes nothing but the condition");
        }
    }

    #[test]
    fn a_free_slot_held_for_the_runs_ahead_is_said_so() {
        let (mut s, p) = case(0, false, false);
        let Unplaced::Wait(got, None) = unplaced(&mut s, &p, "r", "gpu", room(Some(3), 2, 1), None, false, t(WITHIN))
        else {
            panic!("the run waits");
        };
        let said = got.said.expect("it says why");
        assert_eq!(said.reason, Reason::PoolAtCapacity);
        assert_eq!(
            said.message,
            "pool gpu has a free slot, held for the 1 run(s) ahead of this one in its queue (priority, then age)"
        );
        // Full even without the runs ahead: it says the pool is full.
        let Unplaced::Wait(got, None) = unplaced(&mut s, &p, "r", "gpu", room(Some(3), 3, 1), None, false, t(WITHIN))
        else {
            panic!("the run waits");
        };
        assert!(got.said.unwrap().message.contains("reached maxInstances"));
    }

    #[test]
    fn reuse_and_a_pinned_instance_wait_and_never_provision() {
        let (mut s, p) = case(0, false, true);
        let Unplaced::Wait(got, None) = unplaced(&mut s, &p, "r", "gpu", room(None, 0, 0), None, false, t(WITHIN))
        else {
            panic!("Reuse waits");
        };
        assert_eq!(got.said.map(|s| s.reason), Some(Reason::NoIdleInstance));
        let (mut s, p) = case(0, false, false);
        let Unplaced::Wait(got, None) = unplaced(&mut s, &p, "r", "gpu", room(None, 0, 0), Some("i"), false, t(WITHIN))
        else {
            panic!("a pinned run waits");
        };
        assert_eq!(got.said.map(|s| s.reason), Some(Reason::InstanceNotAvailable));
        assert_eq!(s.provisioning_instance, None);
    }

    #[test]
    fn waiting_fails_the_run_when_its_retry_window_ends() {
        let (mut s, p) = case(0, true, true);
        let got = unplaced(&mut s, &p, "r", "gpu", room(None, 0, 0), None, false, t(END));
        let message = "retry window ended: no idle instance in pool gpu fits; creationPolicy Reuse never provisions";
        let want = Transition::write().said(Reason::NoCapacity, message).event(true, Reason::NoCapacity, message);
        assert_eq!(got, Unplaced::Go(want));
        assert_eq!((s.phase, s.termination_reason.as_deref()), (RunPhase::Failed, Some("NoCapacity")));
    }
}
