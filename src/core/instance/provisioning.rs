//! An instance on its way to a machine, as one transition per outcome: its identity
//! recorded, an invalid spec, no room or budget in its pool, an offer chosen or none
//! left, a launch answered, refused or unanswered ([`launch`]) and the machine coming up.
//! Each changes the status in place and says what to write and send; the controller
//! applies it and decides only when to look again.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::launch::{self, Lookup, Resolution};
use super::{launch_failed, launched, observe_machine, start_provisioning, LaunchFailure, NoOffer};
use crate::api::conditions::{clear_false, set_false_since};
use crate::api::instance::{InstancePhase, InstanceStatus};
use crate::api::offer::Offer;
use crate::api::reasons::Reason;
use crate::core::machine::{BackendError, Machine};
use crate::core::policy::EffectivePolicy;
use crate::core::transition::Transition;

/// The condition that says whether kpool knows what came of a launch that got no answer
/// (see [`launch`]): `False` (reason `Resolving`) while it looks the machine up, `True`
/// once it knows (`MachineFound`, `NoMachine`); absent when every launch was answered.
pub const LAUNCH_RESOLVED: &str = "LaunchResolved";

/// The instance's identity, its UID-derived `machine_name`, and its `pool` are recorded
/// before anything else.
pub fn identity(status: &mut InstanceStatus, machine_name: String, pool: String) -> Transition {
    status.machine_name = Some(machine_name);
    status.pool = Some(pool);
    Transition::write().said(Reason::Pending, "waiting for an offer")
}

/// The spec (or its profile) is invalid and nothing was launched: Failed for good, with
/// `message` in `Ready` and a Warning.
pub fn invalid(status: &mut InstanceStatus, message: String) -> Transition {
    status.phase = InstancePhase::Failed;
    Transition::write().said(Reason::InvalidSpec, message.clone()).event(true, Reason::InvalidSpec, message)
}

/// The policy of a Pending instance does not resolve (`error`): [`invalid`], its identity
/// recorded all the same (the machine name kept if it has one) so that teardown and GC
/// know it.
pub fn invalid_policy(status: &mut InstanceStatus, machine_name: String, pool: String, error: &str) -> Transition {
    status.pool = Some(pool);
    status.machine_name.get_or_insert(machine_name);
    invalid(status, format!("{error}; fix the spec or the profile"))
}

/// Its resources do not resolve (`error`): [`invalid`].
pub fn invalid_resources(status: &mut InstanceStatus, error: &str) -> Transition {
    invalid(status, format!("{error}; create a new Instance with valid resources"))
}

/// Its pool has no room under `maxInstances` (`max`): it waits, `PoolAtCapacity` said
/// (and announced by a Normal Event) when that is news; nothing is written otherwise.
pub fn no_room(pool: &str, max: Option<u32>) -> Transition {
    let message = format!("pool {pool} has reached maxInstances ({}); waiting for room", max.unwrap_or(0));
    Transition::none().said(Reason::PoolAtCapacity, message).announce(false)
}

/// The chosen offer would take its pool over budget (`why`): it waits, `BudgetExceeded`
/// said (and announced by a Warning) when that is news.
pub fn over_budget(why: &str) -> Transition {
    Transition::none().said(Reason::BudgetExceeded, format!("{why}; waiting")).announce(true)
}

/// `offer` is chosen: Provisioning with it, recorded before any cloud call; `fallback`:
/// why a spot policy fell back to on-demand, said in a `SpotFallback` Event first.
pub fn offer_chosen(status: &mut InstanceStatus, offer: Offer, fallback: Option<String>, now: Timestamp) -> Transition {
    let mut message =
        format!("launching {} in {} on {} at ${}/h", offer.instance_type, offer.region, offer.backend, offer.price);
    let mut t = Transition::write();
    if let Some(why) = fallback {
        message.push_str(&format!(" ({why})"));
        t = t.event(false, Reason::SpotFallback, why);
    }
    start_provisioning(status, offer, now);
    t.said(Reason::Provisioning, message.clone()).event(false, Reason::Provisioning, message)
}

/// No offer is left to try ([`NoOffer`]); `message` says what was looked for and which
/// backends did not answer. Within the retry window: the next look is at `at`, written as
/// `nextAttemptAt` (the round counted from its first look), `WaitingForCapacity`.
/// Otherwise Failed for `reason`, with a Warning.
pub fn no_offer(status: &mut InstanceStatus, no: &NoOffer, message: &str, now: Timestamp) -> Transition {
    match no {
        NoOffer::RetryAt(at) => {
            status.provisioning_started_at.get_or_insert(Time(now));
            status.next_attempt_at = Some(Time(*at));
            Transition::write().said(Reason::WaitingForCapacity, format!("{message}; retrying"))
        }
        NoOffer::Fail(reason) => {
            status.phase = InstancePhase::Failed;
            Transition::write().said(*reason, message).event(true, *reason, message)
        }
    }
}

/// Asked to launch with no offer recorded: back to Pending, to choose one.
pub fn no_offer_to_launch(status: &mut InstanceStatus) -> Transition {
    status.phase = InstancePhase::Pending;
    Transition::write()
}

/// The reason `Ready` says once a machine is there: Idle once it is up, else Provisioning.
fn up_or_provisioning(status: &InstanceStatus) -> Reason {
    match status.phase {
        InstancePhase::Idle => Reason::Idle,
        _ => Reason::Provisioning,
    }
}

/// The launch was answered with `machine` (of the offer's `instance_type`): recorded
/// ([`launched`]), with a `Launched` Event.
pub fn machine_launched(status: &mut InstanceStatus, machine: &Machine, now: Timestamp) -> Transition {
    launched(status, machine, now);
    let instance_type = status.offer.as_ref().map(|o| o.instance_type.clone()).unwrap_or_default();
    let message = format!("machine {} launched ({instance_type})", machine.provider_id);
    Transition::write().said(up_or_provisioning(status), message.clone()).event(false, Reason::Launched, message)
}

/// Says that the launch's outcome is being resolved (`LaunchResolved` False since the
/// first time, `ResolvingLaunch`): written, the controller looks again at the next look-up.
pub fn resolving(status: &mut InstanceStatus, message: &str, generation: Option<i64>, now: Timestamp) -> Transition {
    set_false_since(&mut status.conditions, LAUNCH_RESOLVED, Reason::Resolving, message, generation, now);
    Transition::write().said(Reason::ResolvingLaunch, message)
}

/// The launch got no answer (`error`): it may have started the machine, so no other offer
/// is tried until it is looked up where it was launched ([`launch::record_unknown`]).
/// [`resolving`], with a Warning first; the first look-up is at the time returned.
pub fn unanswered(
    status: &mut InstanceStatus,
    error: &BackendError,
    generation: Option<i64>,
    now: Timestamp,
) -> (Transition, Timestamp) {
    let offer = status.offer.clone().unwrap_or_default();
    let at = launch::record_unknown(status, now);
    let name = status.machine_name.clone().unwrap_or_default();
    let message = format!(
        "launch of {} in {} on {} got no answer ({error}); looking for machine {name} there before trying any other offer",
        offer.instance_type, offer.region, offer.backend
    );
    let t = resolving(status, &message, generation, now);
    (t.event(true, Reason::LaunchUnanswered, message), at)
}

/// What came of looking up the machine of a launch that got no answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved {
    /// The machine is there and is the instance's ([`launched`], `LaunchResolved` True
    /// with `MachineFound`, a `Launched` Event): apply it and go on.
    Adopted(Transition),
    /// No machine there (`LaunchResolved` True with `NoMachine`): the launch failed with
    /// this error; go on with [`failed_launch`].
    Absent(BackendError),
    /// Not known yet ([`resolving`]): apply it and look again at this time.
    LookAgainAt(Transition, Timestamp),
}

/// The look-up of the machine of the launch that got no answer, where it was launched,
/// answered `looked`; [`launch::resolve`] decides.
pub fn resolved(
    status: &mut InstanceStatus,
    looked: Result<&Machine, &BackendError>,
    generation: Option<i64>,
    now: Timestamp,
) -> Resolved {
    let offer = status.offer.clone().unwrap_or_default();
    let name = status.machine_name.clone().unwrap_or_default();
    let lookup = match looked {
        Ok(m) => Lookup::Found(m),
        Err(BackendError::NotFound(_)) => Lookup::NotThere,
        Err(e) => Lookup::Failed(e),
    };
    match (launch::resolve(status, lookup, now), looked) {
        (Resolution::Adopt, Ok(m)) => {
            launched(status, m, now);
            let message = format!(
                "machine {} ({name}) found where the unanswered launch went; it is this instance's",
                m.provider_id
            );
            clear_false(&mut status.conditions, LAUNCH_RESOLVED, Reason::MachineFound, &message, generation, now);
            let t = Transition::write().said(up_or_provisioning(status), message.clone());
            Resolved::Adopted(t.event(false, Reason::Launched, message))
        }
        (Resolution::Adopt, Err(_)) => unreachable!("a machine is adopted only when the look-up found it"),
        (Resolution::Absent, _) => {
            let message = format!(
                "no machine {name} in {} on {}: the unanswered launch started none",
                offer.region, offer.backend
            );
            clear_false(&mut status.conditions, LAUNCH_RESOLVED, Reason::NoMachine, &message, generation, now);
            let err = format!("the launch got no answer and started no machine ({message})");
            Resolved::Absent(BackendError::Unanswered(err))
        }
        (Resolution::LookAgainAt(at), looked) => {
            let why = match looked {
                Err(BackendError::NotFound(_)) | Ok(_) => "not there yet".to_string(),
                Err(e) => format!("the look-up failed: {e}"),
            };
            let message = format!(
                "launch of {} in {} on {} got no answer; machine {name}: {why}; looking again at {at} before trying any other offer",
                offer.instance_type, offer.region, offer.backend
            );
            Resolved::LookAgainAt(resolving(status, &message, generation, now), at)
        }
    }
}

/// A launch failed (`err`): recorded and decided by [`launch_failed`] (`ranked`: the
/// offers as ranked now), said with a Warning of the error's category. The next offer:
/// Provisioning with it; a later retry: `WaitingForCapacity`; none left: Failed, with a
/// second Warning.
pub fn failed_launch(
    status: &mut InstanceStatus,
    err: &BackendError,
    ranked: &[Offer],
    policy: &EffectivePolicy,
    now: Timestamp,
) -> (Transition, LaunchFailure) {
    let tried = status.offer.as_ref().map(|o| format!("{} in {}", o.instance_type, o.region)).unwrap_or_default();
    let t = Transition::write().event(true, err.reason(), format!("failed to launch {tried}: {err}"));
    let next = launch_failed(status, err, ranked, policy, now);
    let t = match &next {
        LaunchFailure::NextOffer => {
            let o = status.offer.clone().unwrap_or_default();
            let message = format!("{tried} failed ({}); trying {} in {}", err.category(), o.instance_type, o.region);
            t.said(Reason::Provisioning, message)
        }
        LaunchFailure::RetryAt(_) => t.said(Reason::WaitingForCapacity, format!("{tried} failed: {err}; retrying")),
        LaunchFailure::Fail(reason) => {
            let message = format!("every offer failed, the last with: {err}");
            t.said(*reason, message.clone()).event(true, *reason, message)
        }
    };
    (t, next)
}

/// The provisioning machine is up (`machine`): Idle, ready for runs, with a `Ready` Event.
pub fn machine_up(status: &mut InstanceStatus, machine: &Machine, now: Timestamp) -> Transition {
    observe_machine(status, machine, now);
    let message = format!("machine {} is up", machine.provider_id);
    Transition::write().said(Reason::Idle, "machine is up; ready for runs").event(false, Reason::Ready, message)
}

/// The provisioning machine is still starting: its address is written when it has a new
/// one; nothing otherwise.
pub fn machine_starting(status: &mut InstanceStatus, machine: &Machine, now: Timestamp) -> Transition {
    if machine.address.is_none() || machine.address == status.address {
        return Transition::none();
    }
    observe_machine(status, machine, now);
    Transition::write()
}

/// The provisioning machine went away (gone or going at the provider): this offer failed,
/// as for want of capacity; the error to go on with ([`failed_launch`]).
pub fn machine_went_away(status: &mut InstanceStatus) -> BackendError {
    status.provider_id = None;
    BackendError::InsufficientCapacity("the machine went away while starting".into())
}

#[cfg(test)]
mod tests;
