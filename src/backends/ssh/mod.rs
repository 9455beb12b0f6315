//! Hosts you bring yourself, reached over SSH (dstack's `pool add-ssh`).
//!
//! The hosts are listed on the `Backend` object (`spec.ssh.hosts`), so they live in Git
//! like everything else; the private key comes from the `Secret` in
//! `spec.credentials.secretRef`. A user adds a host to a pool by creating an `Instance`
//! whose policy pins it: `backends: [<backend>]`, `instanceTypes: [<host name>]`.
//!
//! Offers (`offers`): every host that no machine holds (neither a live `Instance`, as
//! [`HostClaims`] reports, nor a claim of this process) is logged into, at most
//! [`MAX_PARALLEL_PROBES`] at a time, each within `connectTimeoutSeconds`, and probed by
//! one read-only command (see [`probe`]). Results, failures included, are cached for
//! [`DEFAULT_PROBE_TTL`]. Each reachable host gives one offer of the whole host:
//! `instanceType` = the host's name, `region` = `ssh`, its CPU count and architecture,
//! memory, root filesystem size, NVIDIA GPUs (model normalised, `NVIDIA A100-SXM4-80GB`
//! -> `A100`; memory in whole GB), the price `pricePerHour`, never spot. Offers that do
//! not meet the requirements are left out. An unreachable host gives no offer and a
//! warning in the log (no key material in it); the other hosts are unaffected.
//!
//! Machines: a machine is a claim of a host by a machine name; nothing runs on the host
//! to add or remove it.
//! - `create` claims the offer's host: InsufficientCapacity when another machine holds
//!   it (here or per [`HostClaims`]) or it no longer has what the offer promised. The host
//!   is reserved in-process before it is contacted, so two concurrent `create`s for one
//!   host cannot both succeed. It then logs in and probes again; the machine is Running,
//!   provider id `ssh://user@host:port`, address the host. The same machine name gets the
//!   same machine back (Pending while its first `create` is still checking the host).
//! - `get`: the claimed host reachable (login succeeds) -> Running, else Pending. After a
//!   restart the claims of live instances are taken over from [`HostClaims`].
//! - `delete` releases the claim at once and runs nothing on the host; the name is
//!   remembered so that it stays NotFound while its `Instance` is still being deleted.
//! - `list_owned` lists this process's claims. Since deleting never touches a host, the
//!   garbage collector deleting an "orphan" only frees a claim no `Instance` uses.
//!
//! Host keys are trusted on first use: the first key a host shows (per `host:port`) is
//! recorded in memory ([`KnownHosts`]) and a different key later is refused (no offer;
//! InvalidConfig from `create`). The record lives as long as the backend value, or longer
//! when the factory keeps a [`KnownHosts`] per `Backend` object and passes it in with
//! [`SshBackend::with_known_hosts`].
//!
//! Errors of `create`: a refused key or a changed host key -> InvalidConfig; a host that
//! cannot be reached, or a failed probe -> Other.

mod claims;
mod client;
pub use self::client::parse_host_key;
pub mod probe;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{stream, StreamExt};
use russh::keys::PrivateKey;
use tokio::time::Instant;

use self::claims::ClaimTable;
pub use self::claims::{HostClaims, MemoryClaims};
pub use self::client::KnownHosts;
use self::client::{SshError, Target};
use self::probe::{parse_probe, HostProbe, PROBE_COMMAND};
use super::{Backend, BackendError, Machine, MachineSpec, MachineState, TAG_MANAGED_BY};
use crate::api::backend::SshBackendConfig;
use crate::api::offer::Offer;
use crate::api::resources::Requirements;
use crate::core::offers::OfferQuery;
use crate::core::policy::{EffectivePolicy, Origin};

/// Region of every offer of an `ssh` backend.
pub const REGION: &str = "ssh";
/// Port when a host does not set one.
pub const DEFAULT_PORT: u16 = 22;
/// User when a host does not set one.
pub const DEFAULT_USER: &str = "root";
/// Connect and login timeout when the backend does not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a probe result (or failure) is reused by `offers`.
pub const DEFAULT_PROBE_TTL: Duration = Duration::from_secs(30);
/// Most hosts probed at once.
pub const MAX_PARALLEL_PROBES: usize = 8;
/// Longest the probe command may run (`nvidia-smi` can take seconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One configured host.
#[derive(Clone, Debug)]
struct Host {
    name: String,
    target: Target,
}

impl Host {
    fn provider_id(&self) -> String {
        let t = &self.target;
        let host = if t.host.contains(':') { format!("[{}]", t.host) } else { t.host.clone() };
        format!("ssh://{}@{host}:{}", t.user, t.port)
    }
}

/// Host name -> when it was probed and what came out (the error as text).
type ProbeCache = HashMap<String, (Instant, Result<HostProbe, String>)>;

/// A host claimed by a machine, as `get` sees it.
struct Held {
    host: Host,
    ready: bool,
    tags: BTreeMap<String, String>,
}

/// See the module docs.
pub struct SshBackend {
    name: String,
    hosts: Vec<Host>,
    key: Arc<PrivateKey>,
    timeout: Duration,
    price: f64,
    claims: Arc<dyn HostClaims>,
    known: KnownHosts,
    probe_ttl: Duration,
    probes: Mutex<ProbeCache>,
    table: Mutex<ClaimTable>,
}

impl SshBackend {
    /// Builds the backend named `name` from `spec.ssh` and the private key (OpenSSH or
    /// PEM, unencrypted) read from `spec.credentials.secretRef`. InvalidConfig names the
    /// offending field.
    pub fn new(
        name: &str,
        config: SshBackendConfig,
        private_key_pem: &str,
        claims: Arc<dyn HostClaims>,
    ) -> Result<SshBackend, BackendError> {
        if config.hosts.is_empty() {
            return Err(invalid("spec.ssh.hosts", "must list at least one host"));
        }
        let mut hosts: Vec<Host> = Vec::with_capacity(config.hosts.len());
        for (i, h) in config.hosts.into_iter().enumerate() {
            let field = |f: &str| format!("spec.ssh.hosts[{i}].{f}");
            if h.host.trim().is_empty() || h.host.chars().any(char::is_whitespace) {
                return Err(invalid(&field("host"), "must be a host name or IP address"));
            }
            let name = h.name.unwrap_or_else(|| h.host.clone());
            if name.is_empty() {
                return Err(invalid(&field("name"), "must not be empty"));
            }
            if hosts.iter().any(|o| o.name == name) {
                return Err(invalid(&field("name"), &format!("duplicate host name {name:?}")));
            }
            let port = h.port.unwrap_or(DEFAULT_PORT);
            if port == 0 {
                return Err(invalid(&field("port"), "must be between 1 and 65535"));
            }
            let user = h.user.unwrap_or_else(|| DEFAULT_USER.into());
            if user.is_empty() {
                return Err(invalid(&field("user"), "must not be empty"));
            }
            if let Some(line) = &h.host_key {
                client::parse_host_key(line).map_err(|e| invalid(&field("hostKey"), &e))?;
            }
            hosts.push(Host { name, target: Target { host: h.host, port, user } });
        }
        let timeout = match config.connect_timeout_seconds {
            Some(0) => return Err(invalid("spec.ssh.connectTimeoutSeconds", "must be at least 1")),
            Some(s) => Duration::from_secs(u64::from(s)),
            None => DEFAULT_CONNECT_TIMEOUT,
        };
        let price = config.price_per_hour.unwrap_or(0.0);
        if !price.is_finite() || price < 0.0 {
            return Err(invalid("spec.ssh.pricePerHour", &format!("must be a number >= 0, got {price}")));
        }
        // The decoder's error says nothing about the key's content; keep it that way.
        let key = russh::keys::decode_secret_key(private_key_pem, None).map_err(|e| {
            invalid(
                "spec.credentials.secretRef",
                &format!("the private key could not be read ({e}); an unencrypted OpenSSH or PEM key is needed"),
            )
        })?;
        Ok(SshBackend {
            name: name.to_string(),
            hosts,
            key: Arc::new(key),
            timeout,
            price,
            claims,
            known: KnownHosts::default(),
            probe_ttl: DEFAULT_PROBE_TTL,
            probes: Mutex::new(HashMap::new()),
            table: Mutex::new(ClaimTable::default()),
        })
    }

    /// Uses (and shares) this record of host keys instead of a fresh one.
    pub fn with_known_hosts(mut self, known: KnownHosts) -> Self {
        self.known = known;
        self
    }

    /// Reuses probe results for this long in `offers` (zero: probe every time).
    pub fn with_probe_ttl(mut self, ttl: Duration) -> Self {
        self.probe_ttl = ttl;
        self
    }

    /// The record of host keys (trust on first use).
    pub fn known_hosts(&self) -> KnownHosts {
        self.known.clone()
    }

    fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ClaimTable> {
        self.table.lock().expect("ssh claims")
    }

    /// Logs into `host` and probes it; the result goes into the cache.
    async fn probe(&self, host: &Host) -> Result<HostProbe, SshError> {
        let result = async {
            let session = client::connect(&host.target, &self.key, &self.known, self.timeout).await?;
            let output = session.exec(PROBE_COMMAND, COMMAND_TIMEOUT).await;
            session.close().await;
            parse_probe(&output?).map_err(|e| SshError::Protocol(format!("failed to read the probe output: {e}")))
        }
        .await;
        if let Err(e) = &result {
            tracing::warn!(backend = %self.name, host = %host.name, error = %e, "ssh host cannot be used");
        }
        let cached = result.as_ref().map(Clone::clone).map_err(ToString::to_string);
        self.probes.lock().expect("probe cache").insert(host.name.clone(), (Instant::now(), cached));
        result
    }

    /// A probe of `host` no older than the TTL, else a fresh one.
    async fn cached_probe(&self, host: &Host) -> Option<HostProbe> {
        let cached = self.probes.lock().expect("probe cache").get(&host.name).cloned();
        match cached {
            Some((at, result)) if at.elapsed() < self.probe_ttl => result.ok(),
            _ => self.probe(host).await.ok(),
        }
    }

    /// The offer of the `i`th host, when it can be probed.
    async fn offer_of(&self, i: usize) -> Option<Offer> {
        let host = &self.hosts[i];
        self.cached_probe(host).await.map(|p| p.offer(&self.name, &host.name, self.price))
    }

    fn machine(&self, host: &Host, name: &str, state: MachineState, tags: BTreeMap<String, String>) -> Machine {
        Machine {
            name: name.to_string(),
            provider_id: host.provider_id(),
            state,
            address: Some(host.target.host.clone()),
            tags,
        }
    }

    /// The host `machine` holds and whether its claim is ready, taking over a claim the
    /// API knows about when this process has none.
    async fn claimed(&self, machine: &str) -> Result<Option<Held>, BackendError> {
        let local = self.table().host_of(machine).map(|(h, c)| (h.to_string(), c.ready, c.tags.clone()));
        let (host, ready, tags) = match local {
            Some(found) => found,
            None => {
                if self.table().was_released(machine) {
                    return Ok(None);
                }
                let held = self.claims.held().await?;
                let Some(host) = held.into_iter().find(|(_, m)| m == machine).map(|(h, _)| h) else {
                    return Ok(None);
                };
                let tags = BTreeMap::from([(TAG_MANAGED_BY.to_string(), "kpool".to_string())]);
                if self.host(&host).is_none() || !self.table().adopt(&host, machine, tags.clone()) {
                    return Ok(None);
                }
                (host, true, tags)
            }
        };
        Ok(self.host(&host).map(|h| Held { host: h.clone(), ready, tags }))
    }
}

/// Removes a `create`'s reservation unless it was committed, also when the `create` is
/// cancelled midway.
struct Reservation<'a> {
    backend: &'a SshBackend,
    host: String,
    machine: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.backend.table().cancel(&self.host, &self.machine);
    }
}

#[async_trait]
impl Backend for SshBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn offers(&self, req: &Requirements) -> Result<Vec<Offer>, BackendError> {
        let held = self.claims.held().await?;
        let mut taken: HashSet<String> = held.into_keys().collect();
        taken.extend(self.table().iter().map(|(h, _)| h.to_string()));
        // Indices, not references, into the stream: a closure over `&Host` returning a
        // future is not general enough for `async_trait`'s `Send` bound.
        let free: Vec<usize> = (0..self.hosts.len()).filter(|i| !taken.contains(&self.hosts[*i].name)).collect();
        let offers: Vec<Option<Offer>> =
            stream::iter(free).map(|i| self.offer_of(i)).buffered(MAX_PARALLEL_PROBES).collect().await;
        let policy = EffectivePolicy::defaults(Origin::Manual);
        let query = OfferQuery::new(req, &policy);
        Ok(offers.into_iter().flatten().filter(|o| query.fits(o)).collect())
    }

    async fn create(&self, spec: &MachineSpec) -> Result<Machine, BackendError> {
        let host_name = &spec.offer.instance_type;
        let host = self.host(host_name).ok_or_else(|| {
            BackendError::InsufficientCapacity(format!("host {host_name:?} is not in spec.ssh.hosts of {}", self.name))
        })?;
        let held_by =
            |other: &str| BackendError::InsufficientCapacity(format!("host {host_name:?} is held by machine {other}"));
        if let Some((h, claim)) = self.table().host_of(&spec.name) {
            let h = self.host(h).unwrap_or(host);
            let state = if claim.ready { MachineState::Running } else { MachineState::Pending };
            return Ok(self.machine(h, &spec.name, state, claim.tags.clone()));
        }
        if let Some(claim) = self.table().holder(host_name) {
            return Err(held_by(&claim.machine));
        }
        if let Some(other) = self.claims.held().await?.get(host_name).filter(|m| **m != spec.name) {
            return Err(held_by(other));
        }
        {
            let mut table = self.table();
            if let Some((_, claim)) = table.host_of(&spec.name) {
                let state = if claim.ready { MachineState::Running } else { MachineState::Pending };
                return Ok(self.machine(host, &spec.name, state, claim.tags.clone()));
            }
            table.reserve(host_name, &spec.name, spec.tags.clone()).map_err(|other| held_by(&other))?;
        }
        let _reservation = Reservation { backend: self, host: host_name.clone(), machine: spec.name.clone() };
        let probe = self.probe(host).await.map_err(|e| create_error(host, e))?;
        if !probe.still_meets(&spec.offer) {
            let now = probe.offer(&self.name, host_name, self.price).resources_summary();
            return Err(BackendError::InsufficientCapacity(format!(
                "host {host_name:?} no longer has what the offer promised ({}); it has {now}",
                spec.offer.resources_summary()
            )));
        }
        if !self.table().commit(host_name, &spec.name) {
            return Err(BackendError::InsufficientCapacity(format!(
                "the claim of host {host_name:?} was released while it was being checked"
            )));
        }
        Ok(self.machine(host, &spec.name, MachineState::Running, spec.tags.clone()))
    }

    async fn get(&self, name: &str) -> Result<Machine, BackendError> {
        let Some(Held { host, ready, tags }) = self.claimed(name).await? else {
            return Err(BackendError::NotFound(format!("machine {name} holds no host of {}", self.name)));
        };
        if !ready {
            return Ok(self.machine(&host, name, MachineState::Pending, tags));
        }
        let state = match client::connect(&host.target, &self.key, &self.known, self.timeout).await {
            Ok(session) => {
                session.close().await;
                MachineState::Running
            }
            Err(e) => {
                tracing::warn!(backend = %self.name, host = %host.name, error = %e, "ssh host unreachable");
                MachineState::Pending
            }
        };
        Ok(self.machine(&host, name, state, tags))
    }

    async fn delete(&self, name: &str) -> Result<(), BackendError> {
        let not_found = || BackendError::NotFound(format!("machine {name} holds no host of {}", self.name));
        {
            let mut table = self.table();
            if table.was_released(name) {
                return Err(not_found());
            }
            if table.release(name).is_some() {
                return Ok(());
            }
        }
        if self.claims.held().await?.values().any(|m| m == name) {
            // Held per the API only (e.g. after a restart): remembered as released, so
            // `get` does not take it over again while its `Instance` is being deleted.
            self.table().remember_released(name);
            return Ok(());
        }
        Err(not_found())
    }

    async fn list_owned(&self) -> Result<Vec<Machine>, BackendError> {
        let table = self.table();
        let mut machines: Vec<Machine> = table
            .iter()
            .filter_map(|(h, c)| {
                let state = if c.ready { MachineState::Running } else { MachineState::Pending };
                self.host(h).map(|host| self.machine(host, &c.machine, state, c.tags.clone()))
            })
            .collect();
        machines.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(machines)
    }
}

fn create_error(host: &Host, err: SshError) -> BackendError {
    let t = &host.target;
    let message = format!("host {:?} ({}@{}:{}): {err}", host.name, t.user, t.host, t.port);
    match err {
        SshError::HostKeyChanged(_) | SshError::AuthRejected(_) => BackendError::InvalidConfig(message),
        _ => BackendError::Other(message),
    }
}

fn invalid(field: &str, why: &str) -> BackendError {
    BackendError::InvalidConfig(format!("{field}: {why}"))
}
