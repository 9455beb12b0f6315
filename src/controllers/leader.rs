//! Leader election with a `coordination.k8s.io/v1` Lease, so that with several replicas
//! exactly one provisions and deletes machines. It follows client-go's `leaderelection`:
//!
//! - **Time-boxed calls.** Every Lease call gives up after [`LeaderConfig::call_timeout`],
//!   so a hung API server cannot keep a replica waiting on one call.
//! - **The leader stops first.** [`Elector::keep`] returns (leadership lost) once the
//!   leader has not renewed within [`LeaderConfig::renew_deadline`], counted on its own
//!   monotonic clock from the *start* of its last successful renewal. The renew deadline
//!   is shorter than the lease duration, so the leader has stopped a safe margin
//!   (lease duration − renew deadline) before any standby may take over.
//! - **Expiry without trusting clocks.** A standby never compares the holder's
//!   `renewTime` with its own wall clock. It remembers the Lease record it saw (holder,
//!   `renewTime`, `resourceVersion`) and the instant, on its own monotonic clock, at which
//!   it first saw that record; the lease has expired only when the record has not changed
//!   for a whole lease duration since ([`decide`] gets that span as `unchanged_for`).
//!   Because the `resourceVersion` moves with every write, an unchanged record seen at `T`
//!   and again at `T + lease duration` means the holder's last renewal started before `T`,
//!   so the holder stopped acting by `T + renew deadline`: before the takeover. Only the
//!   clocks' rates need to agree, not their readings.
//!
//! The decision is pure ([`decide`]): the Lease as read, who we are, `now` (written into
//! `renewTime`, for people reading the Lease) and how long the record has been seen
//! unchanged in, what to write out. Every write carries the Lease's `resourceVersion`, so
//! when two replicas decide at once only one write lands and the other sees a conflict
//! and stays standby.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::time::Instant;

use super::{chain, is_conflict, Error};
use crate::clock::{Clock, SystemClock};

/// How a replica elects itself. Keep `call_timeout < renew_deadline < lease_duration`.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace and name of the Lease.
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the Pod name).
    pub identity: String,
    /// How long a standby waits, seeing the Lease unchanged, before it takes over.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the holder renews (and a standby retries).
    pub retry_period: Duration,
    /// How long one Lease API call may take.
    pub call_timeout: Duration,
}

impl LeaderConfig {
    /// The defaults: lease 15 s, renew deadline 10 s, retry every 2 s (client-go's
    /// defaults), each Lease call time-boxed to 4 s.
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.to_string(),
            name: "kpool-controller".to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            call_timeout: Duration::from_secs(4),
        }
    }
}

/// What to do with the Lease.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Create it, holding it.
    Create(LeaseSpec),
    /// Write this spec over the one read (renew, take over or release).
    Update(LeaseSpec),
    /// Someone else holds it and it has not expired.
    Standby { holder: String },
}

/// Decides how to acquire or renew the lease for `me`. `unchanged_for`: how long this
/// replica has seen the Lease's current record unchanged, on its own monotonic clock.
/// Another holder's lease expires when that reaches the longer of the Lease's
/// `leaseDurationSeconds` and our own `duration`; its timestamps are never compared with
/// `now`.
pub fn decide(
    lease: Option<&Lease>,
    me: &str,
    now: Timestamp,
    duration: Duration,
    unchanged_for: Duration,
) -> Decision {
    let mine = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_string()),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(spec) = lease.and_then(|l| l.spec.clone()) else {
        return match lease {
            None => Decision::Create(mine(None, 0)),
            Some(_) => Decision::Update(mine(None, 0)),
        };
    };
    let transitions = spec.lease_transitions.unwrap_or(0);
    let held_for = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(duration, |s| duration.max(Duration::from_secs(s)));
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        Some(h) if h == me => Decision::Update(mine(spec.acquire_time.clone(), transitions)),
        Some(h) if unchanged_for < held_for => Decision::Standby { holder: h.to_string() },
        // Released, or unchanged for a whole lease duration: take it over.
        _ => Decision::Update(mine(None, transitions + 1)),
    }
}

/// The part of a Lease whose change shows that its holder is alive.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
}

impl Record {
    fn of(lease: Option<&Lease>) -> Option<Record> {
        let lease = lease?;
        let spec = lease.spec.as_ref();
        Some(Record {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.clone()),
            resource_version: lease.metadata.resource_version.clone(),
        })
    }
}

#[derive(Default)]
struct State {
    /// The record last seen and when (monotonic) it was first seen.
    observed: Option<(Record, Instant)>,
    /// When the last attempt that left us holding the lease started.
    renewed: Option<Instant>,
}

/// One attempt's result.
enum Outcome {
    Leading,
    Standby {
        holder: String,
    },
    /// Our write lost a race; the next read tells who holds it.
    Conflict,
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl Elector {
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            clock: Arc::new(SystemClock),
            state: Mutex::default(),
        }
    }

    /// The wall clock whose readings go into `renewTime`/`acquireTime` (informational:
    /// expiry never reads them).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one Lease call, giving up after `call_timeout`.
    async fn timed<T>(
        &self,
        verb: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        let limit = self.config.call_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => {
                Err(kube::Error::Service(format!("the Lease {verb} call did not answer within {limit:?}").into()))
            }
        }
    }

    /// Tries once to acquire or renew. `Ok(true)`: we hold the lease, and act for at most
    /// `renew_deadline` from the start of this call unless renewed again.
    pub async fn try_lead(&self, now: Timestamp) -> Result<bool, Error> {
        Ok(matches!(self.attempt(now).await?, Outcome::Leading))
    }

    async fn attempt(&self, now: Timestamp) -> Result<Outcome, Error> {
        let started = Instant::now();
        let lease = self.timed("get", self.api.get_opt(&self.config.name)).await?;
        let unchanged_for = {
            let mut state = self.state();
            let record = Record::of(lease.as_ref());
            let seen = Instant::now();
            match (&state.observed, record) {
                (Some((old, since)), Some(record)) if *old == record => seen.saturating_duration_since(*since),
                (_, record) => {
                    state.observed = record.map(|r| (r, seen));
                    Duration::ZERO
                }
            }
        };
        let decision = decide(lease.as_ref(), &self.config.identity, now, self.config.lease_duration, unchanged_for);
        let result = match decision {
            Decision::Standby { holder } => return Ok(Outcome::Standby { holder }),
            Decision::Create(spec) => {
                let mut new = Lease { spec: Some(spec), ..Lease::default() };
                new.metadata.name = Some(self.config.name.clone());
                new.metadata.namespace = Some(self.config.namespace.clone());
                self.timed("create", self.api.create(&PostParams::default(), &new)).await.map(|_| ())
            }
            Decision::Update(spec) => {
                let Some(mut updated) = lease else { return Ok(Outcome::Conflict) };
                updated.spec = Some(spec);
                // The resourceVersion read above makes this a compare-and-swap.
                self.timed("update", self.api.replace(&self.config.name, &PostParams::default(), &updated))
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                self.state().renewed = Some(started);
                Ok(Outcome::Leading)
            }
            Err(e) if is_conflict(&e) => Ok(Outcome::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up if we hold it, so a standby takes over at once.
    pub async fn release(&self) -> Result<(), Error> {
        self.state().renewed = None;
        let Some(mut lease) = self.timed("get", self.api.get_opt(&self.config.name)).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        self.timed("update", self.api.replace(&self.config.name, &PostParams::default(), &lease)).await?;
        Ok(())
    }

    /// Waits until this replica leads, retrying every `retry_period`.
    pub async fn acquire(&self) {
        loop {
            match self.attempt(self.clock.now()).await {
                Ok(Outcome::Leading) => return,
                Ok(Outcome::Standby { holder }) => {
                    tracing::debug!(lease = %self.config.name, %holder, "standing by: another replica leads");
                }
                Ok(Outcome::Conflict) => tracing::debug!(lease = %self.config.name, "lost a race for the lease"),
                Err(e) => tracing::warn!(error = %chain(&e), "leader election failed; retrying"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews every `retry_period` and returns once leadership is lost: another replica
    /// holds the lease, or no renewal has succeeded within `renew_deadline` of the start
    /// of the last successful one (a hung call is cut off at that deadline). The caller
    /// must then stop acting at once. Returns at once if we never led.
    pub async fn keep(&self) {
        let Some(mut last_start) = self.state().renewed else {
            tracing::error!("not holding the leader lease");
            return;
        };
        loop {
            let Some(renewed) = self.state().renewed else { return };
            let deadline = renewed + self.config.renew_deadline;
            tokio::time::sleep_until((last_start + self.config.retry_period).min(deadline)).await;
            last_start = Instant::now();
            if last_start >= deadline {
                break;
            }
            match tokio::time::timeout_at(deadline, self.attempt(self.clock.now())).await {
                Err(_) => break,
                Ok(Ok(Outcome::Leading)) => {}
                Ok(Ok(Outcome::Standby { holder })) => {
                    self.state().renewed = None;
                    tracing::error!(%holder, "lost the leader lease to another replica");
                    return;
                }
                Ok(Ok(Outcome::Conflict)) => tracing::warn!("the leader lease changed while renewing; retrying"),
                Ok(Err(e)) => tracing::warn!(error = %chain(&e), "failed to renew the leader lease; retrying"),
            }
        }
        self.state().renewed = None;
        tracing::error!(renew_deadline = ?self.config.renew_deadline, "could not renew the leader lease within the renew deadline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: &str) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: Some(MicroTime(t(renewed))),
                acquire_time: Some(MicroTime(t(renewed))),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const D: Duration = Duration::from_secs(15);
    const NOW: &str = "2026-01-01T00:00:00Z";

    #[test]
    fn the_defaults_leave_a_margin_between_the_leader_stopping_and_a_takeover() {
        let c = LeaderConfig::new("ns", "a");
        assert!(c.call_timeout < c.renew_deadline && c.retry_period < c.renew_deadline);
        assert!(c.renew_deadline + Duration::from_secs(5) <= c.lease_duration);
    }

    #[test]
    fn a_missing_lease_is_created_and_held() {
        let Decision::Create(spec) = decide(None, "a", t(NOW), D, Duration::ZERO) else { panic!() };
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    #[test]
    fn a_live_lease_of_another_replica_means_standby_until_seen_unchanged_for_a_lease_duration() {
        let l = lease(Some("a"), NOW);
        let standby = Decision::Standby { holder: "a".into() };
        assert_eq!(decide(Some(&l), "b", t(NOW), D, Duration::from_secs(14)), standby);
        let Decision::Update(spec) = decide(Some(&l), "b", t(NOW), D, D) else { panic!() };
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(3), "a takeover is a transition");
    }

    #[test]
    fn the_holders_timestamps_are_never_compared_with_our_clock() {
        // Renewed an hour "ago" by our clock, yet only just seen: still live.
        let l = lease(Some("a"), NOW);
        let later = t("2026-01-01T01:00:00Z");
        assert_eq!(decide(Some(&l), "b", later, D, Duration::ZERO), Decision::Standby { holder: "a".into() });
        // Renewed an hour "from now" by our clock, but unchanged for 15 s: expired.
        let earlier = t("2025-12-31T23:00:00Z");
        assert!(matches!(decide(Some(&l), "b", earlier, D, D), Decision::Update(_)));
    }

    #[test]
    fn the_longer_of_the_leases_duration_and_ours_counts() {
        let mut l = lease(Some("a"), NOW);
        l.spec.as_mut().unwrap().lease_duration_seconds = Some(60);
        let standby = Decision::Standby { holder: "a".into() };
        assert_eq!(decide(Some(&l), "b", t(NOW), D, Duration::from_secs(30)), standby);
        assert!(matches!(decide(Some(&l), "b", t(NOW), D, Duration::from_secs(60)), Decision::Update(_)));
    }

    #[test]
    fn the_holder_renews_keeping_its_acquire_time() {
        let l = lease(Some("a"), NOW);
        let Decision::Update(spec) = decide(Some(&l), "a", t("2026-01-01T00:00:05Z"), D, Duration::ZERO) else {
            panic!()
        };
        assert_eq!(spec.renew_time, Some(MicroTime(t("2026-01-01T00:00:05Z"))));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(NOW))));
        assert_eq!(spec.lease_transitions, Some(2));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let l = lease(None, NOW);
        assert!(matches!(decide(Some(&l), "b", t("2026-01-01T00:00:01Z"), D, Duration::ZERO), Decision::Update(_)));
    }
}
