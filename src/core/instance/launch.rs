//! Where an instance's launches went, and what to do with one that got no answer.
//!
//! Every place (backend and region) a launch is sent to is recorded in
//! `status.launchAttempts` before the launch ([`record_sent`]). A launch that gets no
//! answer (a timeout, a dropped connection, a 5xx: [`BackendError::outcome_unknown`]) may
//! have started the machine, and idempotency does not reach beyond the place it was sent
//! to (a client token holds in one region; some providers have none). So no other offer is
//! tried until the machine is looked up there ([`Step::Resolve`](super::Step::Resolve)):
//! found -> it is the instance's machine; not there, at a look made at least
//! [`ABSENT_AFTER`] after the launch (providers' lists lag behind their launches) -> the
//! next offer; the provider does not answer the look-up either -> look again, backing off
//! from [`LOOKUP_BACKOFF`] to [`MAX_LOOKUP_BACKOFF`], for as long as it takes.
//!
//! Teardown deletes the machine at every place where one may be ([`machine_locations`]),
//! and the garbage collector leaves a machine alone only at the backends where the
//! instance may hold it ([`claimed_backends`]): none once it is Failed or Terminated.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::add;
use crate::api::instance::{InstancePhase, InstanceStatus, LaunchAttempt, LaunchOutcome};
use crate::api::offer::Offer;
use crate::core::machine::{BackendError, Machine, MachineState};

/// The first look-up of a launch that got no answer comes this long after it.
pub const LOOKUP_BACKOFF: Duration = Duration::from_secs(5);
/// Look-ups back off (doubling) up to this.
pub const MAX_LOOKUP_BACKOFF: Duration = Duration::from_secs(300);
/// A machine that is not there is believed absent only when looked for at least this
/// long after its launch went unanswered.
pub const ABSENT_AFTER: Duration = Duration::from_secs(60);

fn same_place(a: &LaunchAttempt, backend: &str, region: &str) -> bool {
    a.backend == backend && a.region == region
}

/// The record of the place `offer` launches at, created when missing (instances whose
/// launch was sent before places were recorded).
fn place<'a>(status: &'a mut InstanceStatus, offer: &Offer, now: Timestamp) -> &'a mut LaunchAttempt {
    let i = match status.launch_attempts.iter().position(|a| same_place(a, &offer.backend, &offer.region)) {
        Some(i) => i,
        None => {
            status.launch_attempts.push(LaunchAttempt {
                backend: offer.backend.clone(),
                region: offer.region.clone(),
                instance_type: offer.instance_type.clone(),
                outcome: LaunchOutcome::Sent,
                at: Time(now),
                lookups: 0,
            });
            status.launch_attempts.len() - 1
        }
    };
    &mut status.launch_attempts[i]
}

/// The record of the place the current offer launches at.
pub fn current(status: &InstanceStatus) -> Option<&LaunchAttempt> {
    let offer = status.offer.as_ref()?;
    status.launch_attempts.iter().find(|a| same_place(a, &offer.backend, &offer.region))
}

fn set_current(status: &mut InstanceStatus, outcome: LaunchOutcome, now: Timestamp) {
    let Some(offer) = status.offer.clone() else { return };
    let a = place(status, &offer, now);
    a.instance_type = offer.instance_type.clone();
    a.outcome = outcome;
    a.at = Time(now);
    a.lookups = 0;
}

/// The launch of `status.offer` is about to be sent: its place is recorded first.
pub fn record_sent(status: &mut InstanceStatus, now: Timestamp) {
    set_current(status, LaunchOutcome::Sent, now);
}

/// The launch of `status.offer` started the machine (or it was there already).
pub fn record_launched(status: &mut InstanceStatus, now: Timestamp) {
    set_current(status, LaunchOutcome::Launched, now);
}

/// The provider refused the launch of `status.offer`: no machine there.
pub fn record_refused(status: &mut InstanceStatus, now: Timestamp) {
    if current(status).is_none_or(|a| a.outcome == LaunchOutcome::Sent) {
        set_current(status, LaunchOutcome::Refused, now);
    }
}

/// Whether the launch of `status.offer` got no answer and is being resolved.
pub fn unresolved(status: &InstanceStatus) -> bool {
    status.provider_id.is_none() && current(status).is_some_and(|a| a.outcome == LaunchOutcome::Unknown)
}

/// The launch of `status.offer` got no answer: its machine may exist. Returns the time of
/// the first look-up (also written as `nextAttemptAt`).
pub fn record_unknown(status: &mut InstanceStatus, now: Timestamp) -> Timestamp {
    set_current(status, LaunchOutcome::Unknown, now);
    let at = add(now, LOOKUP_BACKOFF);
    status.next_attempt_at = Some(Time(at));
    at
}

/// What a look-up of the machine at the place of an unanswered launch found.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The provider has a machine of that name there.
    Found(&'a Machine),
    /// It has none (or one that is going or gone).
    NotThere,
    /// It did not say.
    Failed(&'a BackendError),
}

/// What to do after a look-up.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// The machine is there: it is the instance's (recorded as launched).
    Adopt,
    /// No machine: the launch failed; go on with the next offer.
    Absent,
    /// Not known yet: look again at this time (written as `nextAttemptAt`).
    LookAgainAt(Timestamp),
}

/// Decides from a look-up (see the module docs) and records the outcome.
pub fn resolve(status: &mut InstanceStatus, lookup: Lookup<'_>, now: Timestamp) -> Resolution {
    let Some(offer) = status.offer.clone() else { return Resolution::Absent };
    match lookup {
        Lookup::Found(m) if matches!(m.state, MachineState::Pending | MachineState::Running) => {
            record_launched(status, now);
            Resolution::Adopt
        }
        Lookup::Found(_) | Lookup::NotThere => {
            let since = current(status).map(|a| a.at.0).unwrap_or(now);
            if now >= add(since, ABSENT_AFTER) {
                let a = place(status, &offer, now);
                a.outcome = LaunchOutcome::Absent;
                a.at = Time(now);
                a.lookups = 0;
                status.next_attempt_at = None;
                return Resolution::Absent;
            }
            look_again(status, &offer, now, since)
        }
        Lookup::Failed(_) => {
            let since = current(status).map(|a| a.at.0).unwrap_or(now);
            look_again(status, &offer, now, since)
        }
    }
}

fn look_again(status: &mut InstanceStatus, offer: &Offer, now: Timestamp, since: Timestamp) -> Resolution {
    let a = place(status, offer, now);
    a.lookups = a.lookups.saturating_add(1);
    let mut at = add(now, lookup_backoff(a.lookups));
    // A machine not there yet is looked for once more when it can be believed absent.
    let settle = add(since, ABSENT_AFTER);
    if now < settle && settle < at {
        at = settle;
    }
    status.next_attempt_at = Some(Time(at));
    Resolution::LookAgainAt(at)
}

/// The wait after the `n`th look-up: [`LOOKUP_BACKOFF`] doubled `n` times, at most
/// [`MAX_LOOKUP_BACKOFF`].
pub fn lookup_backoff(n: u32) -> Duration {
    LOOKUP_BACKOFF.saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX)).min(MAX_LOOKUP_BACKOFF)
}

/// Where the instance's machine may be, as (backend, region): the current offer's place
/// first, then every recorded place but those that refused the launch.
pub fn machine_locations(status: &InstanceStatus) -> Vec<(String, String)> {
    let mut places: Vec<(String, String)> = Vec::new();
    let current = status.offer.iter().map(|o| (o.backend.clone(), o.region.clone()));
    let others = status
        .launch_attempts
        .iter()
        .filter(|a| a.outcome != LaunchOutcome::Refused)
        .map(|a| (a.backend.clone(), a.region.clone()));
    for p in current.chain(others) {
        if !places.contains(&p) {
            places.push(p);
        }
    }
    places
}

/// The backends at which the garbage collector leaves the instance's machine alone: none
/// once it is Failed or Terminated (a machine there is a leak); while it is torn down,
/// every place its teardown deletes at; otherwise the current offer's backend and those
/// with a launch in flight or unresolved.
pub fn claimed_backends(status: &InstanceStatus) -> Vec<String> {
    let mut backends: Vec<String> = match status.phase {
        InstancePhase::Failed | InstancePhase::Terminated => return Vec::new(),
        InstancePhase::Terminating => machine_locations(status).into_iter().map(|(b, _)| b).collect(),
        _ => status
            .offer
            .iter()
            .map(|o| o.backend.clone())
            .chain(
                status
                    .launch_attempts
                    .iter()
                    .filter(|a| matches!(a.outcome, LaunchOutcome::Sent | LaunchOutcome::Unknown))
                    .map(|a| a.backend.clone()),
            )
            .collect(),
    };
    backends.sort();
    backends.dedup();
    backends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn offer(backend: &str, region: &str) -> Offer {
        Offer { backend: backend.into(), region: region.into(), instance_type: "m".into(), ..Offer::default() }
    }

    fn provisioning(o: Offer, now: Timestamp) -> InstanceStatus {
        let mut s = InstanceStatus {
            machine_name: Some("kpool-u".into()),
            phase: InstancePhase::Provisioning,
            offer: Some(o),
            ..InstanceStatus::default()
        };
        record_sent(&mut s, now);
        s
    }

    fn machine(state: MachineState) -> Machine {
        Machine { name: "kpool-u".into(), provider_id: "i-1".into(), state, address: None, tags: Default::default() }
    }

    #[test]
    fn a_place_is_recorded_once_and_keeps_its_last_outcome() {
        let now = t("2026-01-01T00:00:00Z");
        let mut s = provisioning(offer("a", "r1"), now);
        record_refused(&mut s, now);
        s.offer = Some(offer("a", "r2"));
        record_sent(&mut s, now);
        s.offer = Some(offer("a", "r1"));
        record_sent(&mut s, now);
        let places: Vec<_> = s.launch_attempts.iter().map(|a| (a.region.as_str(), a.outcome)).collect();
        assert_eq!(places, vec![("r1", LaunchOutcome::Sent), ("r2", LaunchOutcome::Sent)]);
    }

    #[test]
    fn an_unanswered_launch_is_looked_up_with_backoff_until_it_can_be_believed_absent() {
        let t0 = t("2026-01-01T00:00:00Z");
        let mut s = provisioning(offer("a", "r1"), t0);
        assert_eq!(record_unknown(&mut s, t0), add(t0, LOOKUP_BACKOFF));
        assert!(unresolved(&s));
        // Not there 5s after: too early to believe.
        let t1 = add(t0, Duration::from_secs(5));
        assert_eq!(resolve(&mut s, Lookup::NotThere, t1), Resolution::LookAgainAt(add(t1, Duration::from_secs(10))));
        // The provider does not answer: keep looking, backing off.
        let t2 = add(t1, Duration::from_secs(10));
        let down = BackendError::Unanswered("x".into());
        assert_eq!(
            resolve(&mut s, Lookup::Failed(&down), t2),
            Resolution::LookAgainAt(add(t2, Duration::from_secs(20)))
        );
        let t3 = add(t2, Duration::from_secs(20));
        // The next look comes when absence can be believed, not later.
        assert_eq!(resolve(&mut s, Lookup::NotThere, t3), Resolution::LookAgainAt(add(t0, ABSENT_AFTER)));
        assert!(unresolved(&s));
        assert_eq!(resolve(&mut s, Lookup::NotThere, add(t0, ABSENT_AFTER)), Resolution::Absent);
        assert!(!unresolved(&s));
        assert_eq!(current(&s).unwrap().outcome, LaunchOutcome::Absent);
    }

    #[test]
    fn a_machine_found_is_adopted_and_one_going_away_is_not() {
        let t0 = t("2026-01-01T00:00:00Z");
        let mut s = provisioning(offer("a", "r1"), t0);
        record_unknown(&mut s, t0);
        let later = add(t0, Duration::from_secs(5));
        assert_eq!(resolve(&mut s, Lookup::Found(&machine(MachineState::Pending)), later), Resolution::Adopt);
        assert_eq!(current(&s).unwrap().outcome, LaunchOutcome::Launched);

        let mut s = provisioning(offer("a", "r1"), t0);
        record_unknown(&mut s, t0);
        let going = machine(MachineState::Stopping);
        assert!(matches!(resolve(&mut s, Lookup::Found(&going), later), Resolution::LookAgainAt(_)));
        assert_eq!(resolve(&mut s, Lookup::Found(&going), add(t0, ABSENT_AFTER)), Resolution::Absent);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(lookup_backoff(0), LOOKUP_BACKOFF);
        assert_eq!(lookup_backoff(3), Duration::from_secs(40));
        assert_eq!(lookup_backoff(10), MAX_LOOKUP_BACKOFF);
        assert_eq!(lookup_backoff(u32::MAX), MAX_LOOKUP_BACKOFF);
    }

    #[test]
    fn teardown_and_gc_see_every_place_a_machine_may_be() {
        let t0 = t("2026-01-01T00:00:00Z");
        let mut s = provisioning(offer("a", "r1"), t0);
        record_unknown(&mut s, t0);
        resolve(&mut s, Lookup::NotThere, add(t0, ABSENT_AFTER));
        s.offer = Some(offer("b", "r2"));
        record_sent(&mut s, t0);
        record_refused(&mut s, t0);
        s.offer = Some(offer("c", "r3"));
        record_sent(&mut s, t0);
        let places =
            |s: &InstanceStatus| machine_locations(s).into_iter().map(|(b, r)| format!("{b}/{r}")).collect::<Vec<_>>();
        assert_eq!(places(&s), vec!["c/r3", "a/r1"], "the refused place holds no machine");
        assert_eq!(claimed_backends(&s), vec!["c".to_string()], "a live instance holds its machine at its offer");
        s.phase = InstancePhase::Terminating;
        assert_eq!(claimed_backends(&s), vec!["a".to_string(), "c".to_string()]);
        for phase in [InstancePhase::Failed, InstancePhase::Terminated] {
            s.phase = phase;
            assert!(claimed_backends(&s).is_empty(), "{phase:?}");
        }
    }
}
