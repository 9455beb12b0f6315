//! Which machine holds which host: the API's view ([`HostClaims`], from live `Instance`s)
//! and the backend's own in-process table ([`ClaimTable`]), which makes concurrent
//! `create`s for one host safe and remembers released machines.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::backends::BackendError;

/// How many released machine names are remembered (see [`ClaimTable::release`]).
const RELEASED_KEPT: usize = 4096;

/// The hosts of one `ssh` backend that live `Instance`s hold, read from the API: host
/// name -> machine name. It survives restarts of the controller, so a host an instance
/// holds is never offered to, or claimed by, another machine.
#[async_trait]
pub trait HostClaims: Send + Sync {
    /// Host name -> the machine name of the instance that holds it.
    async fn held(&self) -> Result<HashMap<String, String>, BackendError>;
}

/// In-memory [`HostClaims`] for tests. Cloning shares the state.
#[derive(Clone, Default)]
pub struct MemoryClaims {
    held: Arc<Mutex<HashMap<String, String>>>,
    error: Arc<Mutex<Option<BackendError>>>,
}

impl MemoryClaims {
    pub fn new() -> Self {
        MemoryClaims::default()
    }

    /// Records that `machine` holds `host`.
    pub fn hold(&self, host: &str, machine: &str) {
        self.held.lock().expect("claims").insert(host.to_string(), machine.to_string());
    }

    /// Forgets whoever holds `host`.
    pub fn release(&self, host: &str) {
        self.held.lock().expect("claims").remove(host);
    }

    /// Every later `held` call fails with `err` (`None`: succeeds again).
    pub fn fail_with(&self, err: Option<BackendError>) {
        *self.error.lock().expect("claims") = err;
    }
}

#[async_trait]
impl HostClaims for MemoryClaims {
    async fn held(&self) -> Result<HashMap<String, String>, BackendError> {
        if let Some(e) = self.error.lock().expect("claims").clone() {
            return Err(e);
        }
        Ok(self.held.lock().expect("claims").clone())
    }
}

/// One host's holder in the in-process table.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub machine: String,
    pub tags: BTreeMap<String, String>,
    /// `false` while the `create` that reserved the host is still checking it.
    pub ready: bool,
}

/// The in-process claims: host name -> holder, plus the names of machines released
/// lately, so that a host the API still shows as held (its `Instance` is being deleted)
/// is not adopted again after `delete`.
#[derive(Debug, Default)]
pub struct ClaimTable {
    claims: HashMap<String, Claim>,
    released: VecDeque<String>,
}

impl ClaimTable {
    /// The host `machine` holds, and its claim.
    pub fn host_of(&self, machine: &str) -> Option<(&str, &Claim)> {
        self.claims.iter().find(|(_, c)| c.machine == machine).map(|(h, c)| (h.as_str(), c))
    }

    /// The claim on `host`.
    pub fn holder(&self, host: &str) -> Option<&Claim> {
        self.claims.get(host)
    }

    /// Reserves `host` for `machine` (not ready yet). Fails with the holder's machine name
    /// when another machine holds it.
    pub fn reserve(&mut self, host: &str, machine: &str, tags: BTreeMap<String, String>) -> Result<(), String> {
        if let Some(c) = self.claims.get(host) {
            if c.machine != machine {
                return Err(c.machine.clone());
            }
        }
        self.released.retain(|m| m != machine);
        self.claims.insert(host.to_string(), Claim { machine: machine.to_string(), tags, ready: false });
        Ok(())
    }

    /// Marks `machine`'s reservation of `host` ready; `false` when it is gone (deleted
    /// meanwhile).
    pub fn commit(&mut self, host: &str, machine: &str) -> bool {
        match self.claims.get_mut(host) {
            Some(c) if c.machine == machine => {
                c.ready = true;
                true
            }
            _ => false,
        }
    }

    /// Drops `machine`'s reservation of `host` when it is not ready yet.
    pub fn cancel(&mut self, host: &str, machine: &str) {
        if self.claims.get(host).is_some_and(|c| c.machine == machine && !c.ready) {
            self.claims.remove(host);
        }
    }

    /// Takes over a claim the API knows about (after a restart); `false` when the host is
    /// held by another machine here or `machine` was released lately.
    pub fn adopt(&mut self, host: &str, machine: &str, tags: BTreeMap<String, String>) -> bool {
        if self.was_released(machine) || self.claims.get(host).is_some_and(|c| c.machine != machine) {
            return false;
        }
        self.claims.insert(host.to_string(), Claim { machine: machine.to_string(), tags, ready: true });
        true
    }

    /// Releases what `machine` holds and remembers the name; the host it held, if any
    /// (nothing is remembered when it held nothing).
    pub fn release(&mut self, machine: &str) -> Option<String> {
        let host = self.host_of(machine).map(|(h, _)| h.to_string())?;
        self.claims.remove(&host);
        self.remember_released(machine);
        Some(host)
    }

    /// Remembers that `machine` was released, without holding anything here.
    pub fn remember_released(&mut self, machine: &str) {
        if !self.was_released(machine) {
            if self.released.len() == RELEASED_KEPT {
                self.released.pop_front();
            }
            self.released.push_back(machine.to_string());
        }
    }

    /// Whether `machine` was released lately.
    pub fn was_released(&self, machine: &str) -> bool {
        self.released.iter().any(|m| m == machine)
    }

    /// Every claim: host name -> claim.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Claim)> {
        self.claims.iter().map(|(h, c)| (h.as_str(), c))
    }
}
