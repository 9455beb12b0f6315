//! Leader election with a `coordination.k8s.io/v1` Lease, so that with several replicas
//! exactly one provisions and deletes machines.
//!
//! The decision is pure ([`decide`]): the Lease as read, who we are, and `now` in, what to
//! write out. Every write carries the Lease's `resourceVersion`, so when two replicas
//! decide at once only one write lands and the other sees a conflict and stays standby.
//! A leader that cannot renew for a whole lease duration must stop acting (the binary
//! exits, and Kubernetes restarts it as a standby): by then a standby may have taken over.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;

use super::{is_conflict, Error};
use crate::core::add;

/// How a replica elects itself.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace and name of the Lease.
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the Pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a standby retries).
    pub renew_every: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.to_string(),
            name: "kpool-controller".to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
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

fn held_until(spec: &LeaseSpec) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let secs = u64::try_from(spec.lease_duration_seconds?).ok()?;
    Some(add(renewed, Duration::from_secs(secs)))
}

/// Decides how to acquire or renew the lease for `me`.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp, duration: Duration) -> Decision {
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
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        Some(h) if h == me => Decision::Update(mine(spec.acquire_time.clone(), transitions)),
        Some(h) if held_until(&spec).is_some_and(|until| now < until) => Decision::Standby { holder: h.to_string() },
        // Released, expired, or never renewed: take it over.
        _ => Decision::Update(mine(None, transitions + 1)),
    }
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
}

impl Elector {
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Elector { api: Api::namespaced(client, &config.namespace), config }
    }

    /// Tries once to acquire or renew. `Ok(true)`: we lead until at least
    /// `now + lease_duration`.
    pub async fn try_lead(&self, now: Timestamp) -> Result<bool, Error> {
        let lease = self.api.get_opt(&self.config.name).await?;
        let result = match decide(lease.as_ref(), &self.config.identity, now, self.config.lease_duration) {
            Decision::Standby { .. } => return Ok(false),
            Decision::Create(spec) => {
                let mut new = Lease { spec: Some(spec), ..Lease::default() };
                new.metadata.name = Some(self.config.name.clone());
                new.metadata.namespace = Some(self.config.namespace.clone());
                self.api.create(&PostParams::default(), &new).await.map(|_| ())
            }
            Decision::Update(spec) => {
                let mut updated = lease.expect("an update follows a read");
                updated.spec = Some(spec);
                // The resourceVersion read above makes this a compare-and-swap.
                self.api.replace(&self.config.name, &PostParams::default(), &updated).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up if we hold it, so a standby takes over at once.
    pub async fn release(&self) -> Result<(), Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        self.api.replace(&self.config.name, &PostParams::default(), &lease).await?;
        Ok(())
    }

    /// Waits until this replica leads, retrying every `renew_every`.
    pub async fn acquire(&self) {
        loop {
            match self.try_lead(Timestamp::now()).await {
                Ok(true) => return,
                Ok(false) => tracing::debug!(lease = %self.config.name, "standing by: another replica leads"),
                Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    /// Renews until a renewal has failed for a whole lease duration, then returns: the
    /// caller must stop acting as leader.
    pub async fn keep(&self) {
        let mut last_ok = Timestamp::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            let now = Timestamp::now();
            match self.try_lead(now).await {
                Ok(true) => last_ok = now,
                Ok(false) => {
                    tracing::error!("lost the leader lease to another replica");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "failed to renew the leader lease"),
            }
            if now >= add(last_ok, self.config.lease_duration) {
                tracing::error!("could not renew the leader lease for a whole lease duration");
                return;
            }
        }
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

    #[test]
    fn a_missing_lease_is_created_and_held() {
        let Decision::Create(spec) = decide(None, "a", t("2026-01-01T00:00:00Z"), D) else { panic!() };
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    #[test]
    fn a_live_lease_of_another_replica_means_standby_until_it_expires() {
        let l = lease(Some("a"), "2026-01-01T00:00:00Z");
        assert_eq!(decide(Some(&l), "b", t("2026-01-01T00:00:14Z"), D), Decision::Standby { holder: "a".into() });
        let Decision::Update(spec) = decide(Some(&l), "b", t("2026-01-01T00:00:15Z"), D) else { panic!() };
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(3), "a takeover is a transition");
    }

    #[test]
    fn the_holder_renews_keeping_its_acquire_time() {
        let l = lease(Some("a"), "2026-01-01T00:00:00Z");
        let Decision::Update(spec) = decide(Some(&l), "a", t("2026-01-01T00:00:05Z"), D) else { panic!() };
        assert_eq!(spec.renew_time, Some(MicroTime(t("2026-01-01T00:00:05Z"))));
        assert_eq!(spec.acquire_time, Some(MicroTime(t("2026-01-01T00:00:00Z"))));
        assert_eq!(spec.lease_transitions, Some(2));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let l = lease(None, "2026-01-01T00:00:00Z");
        assert!(matches!(decide(Some(&l), "b", t("2026-01-01T00:00:01Z"), D), Decision::Update(_)));
    }
}
