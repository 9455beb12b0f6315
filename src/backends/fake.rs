//! An in-process backend test double: it records every call, keeps machines in memory,
//! and fails on command. Tests and the simulation use it; it is not selectable from a
//! `Backend` object.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Backend, BackendError, BackendFactory, Machine, MachineSpec, MachineState};
use crate::api::backend::Backend as BackendObject;
use crate::api::offer::Offer;
use crate::api::resources::Requirements;

/// One recorded call.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Offers,
    Create { name: String, instance_type: String },
    Get { name: String },
    Delete { name: String },
    ListOwned,
}

#[derive(Default)]
struct State {
    offers: Vec<Offer>,
    machines: BTreeMap<String, Machine>,
    calls: Vec<Call>,
    /// Errors returned by the next `create` calls, in order.
    create_errors: VecDeque<BackendError>,
    /// Errors returned by the next `create` calls that do launch their machine (the
    /// answer is lost on its way back), in order.
    lost_answers: VecDeque<BackendError>,
    /// Instance types whose `create` always fails with insufficient capacity.
    no_capacity: Vec<String>,
    /// Errors returned by the next `delete` calls, in order.
    delete_errors: VecDeque<BackendError>,
    /// How many `get` calls a new machine stays `Pending` for.
    pending_polls: u32,
    polls: HashMap<String, u32>,
    /// Machines whose `get` says `Pending` (the provider cannot reach them).
    unreachable: std::collections::HashSet<String>,
    next_id: u64,
}

/// See the module docs. Cloning shares the state.
#[derive(Clone)]
pub struct FakeBackend {
    name: String,
    state: Arc<Mutex<State>>,
}

impl FakeBackend {
    pub fn new(name: &str, offers: Vec<Offer>) -> Self {
        let offers = offers.into_iter().map(|o| Offer { backend: name.to_string(), ..o }).collect();
        FakeBackend { name: name.to_string(), state: Arc::new(Mutex::new(State { offers, ..State::default() })) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake backend state")
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The `create` calls so far.
    pub fn creates(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| matches!(c, Call::Create { .. })).collect()
    }

    /// The next `create` call fails with `err`.
    pub fn fail_next_create(&self, err: BackendError) {
        self.state().create_errors.push_back(err);
    }

    /// The next `create` call that launches a machine does launch it, and then fails
    /// with `err`, as a launch does whose answer is lost (a timeout, a dropped
    /// connection, a 5xx after the provider acted).
    pub fn lose_next_create_answer(&self, err: BackendError) {
        self.state().lost_answers.push_back(err);
    }

    /// Every `create` of this instance type fails with insufficient capacity.
    pub fn no_capacity_for(&self, instance_type: &str) {
        self.state().no_capacity.push(instance_type.to_string());
    }

    /// The next `delete` call fails with `err`.
    pub fn fail_next_delete(&self, err: BackendError) {
        self.state().delete_errors.push_back(err);
    }

    /// New machines report `Pending` for this many `get` calls before `Running`.
    pub fn set_pending_polls(&self, n: u32) {
        self.state().pending_polls = n;
    }

    /// Machines currently known and not terminated.
    pub fn live_machines(&self) -> Vec<Machine> {
        self.state().machines.values().filter(|m| m.state != MachineState::Terminated).cloned().collect()
    }

    /// Removes a machine as if the provider had reclaimed it.
    pub fn vanish(&self, name: &str) {
        self.state().machines.remove(name);
    }

    /// Adds a machine that no `Instance` knows about (for garbage collection tests).
    pub fn insert_machine(&self, machine: Machine) {
        self.state().machines.insert(machine.name.clone(), machine);
    }

    /// The provider takes the machine back (a spot reclaim, a termination outside kpool):
    /// it reads as shutting down, then gone.
    pub fn reclaim(&self, name: &str) {
        if let Some(m) = self.state().machines.get_mut(name) {
            m.state = MachineState::Stopping;
        }
    }

    /// While set, `get` of the machine reports it `Pending` (up at the provider, but not
    /// answering), as the ssh backend does for a host it cannot log in to.
    pub fn set_unreachable(&self, name: &str, unreachable: bool) {
        let mut s = self.state();
        if unreachable {
            s.unreachable.insert(name.to_string());
        } else {
            s.unreachable.remove(name);
        }
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn offers(&self, _req: &Requirements) -> Result<Vec<Offer>, BackendError> {
        let mut s = self.state();
        s.calls.push(Call::Offers);
        Ok(s.offers.clone())
    }

    async fn create(&self, spec: &MachineSpec) -> Result<Machine, BackendError> {
        let mut s = self.state();
        s.calls.push(Call::Create { name: spec.name.clone(), instance_type: spec.offer.instance_type.clone() });
        if let Some(m) = s.machines.get(&spec.name) {
            return Ok(m.clone());
        }
        if let Some(e) = s.create_errors.pop_front() {
            return Err(e);
        }
        if s.no_capacity.contains(&spec.offer.instance_type) {
            return Err(BackendError::InsufficientCapacity(format!(
                "no capacity for {} in {}",
                spec.offer.instance_type, spec.offer.region
            )));
        }
        s.next_id += 1;
        let state = if s.pending_polls == 0 { MachineState::Running } else { MachineState::Pending };
        let m = Machine {
            name: spec.name.clone(),
            provider_id: format!("fake-{}", s.next_id),
            state,
            address: Some(format!("10.0.0.{}", s.next_id % 250 + 1)),
            tags: spec.tags.clone(),
        };
        s.machines.insert(spec.name.clone(), m.clone());
        match s.lost_answers.pop_front() {
            Some(e) => Err(e),
            None => Ok(m),
        }
    }

    async fn get(&self, name: &str) -> Result<Machine, BackendError> {
        let mut s = self.state();
        s.calls.push(Call::Get { name: name.to_string() });
        let pending_polls = s.pending_polls;
        let polls = {
            let p = s.polls.entry(name.to_string()).or_default();
            *p += 1;
            *p
        };
        let m = s.machines.get_mut(name).ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        if m.state == MachineState::Pending && polls > pending_polls {
            m.state = MachineState::Running;
        }
        if m.state == MachineState::Stopping {
            m.state = MachineState::Terminated;
        }
        if m.state == MachineState::Terminated {
            let name = m.name.clone();
            s.machines.remove(&name);
            return Err(BackendError::NotFound(name));
        }
        let mut m = m.clone();
        if s.unreachable.contains(name) && m.state == MachineState::Running {
            m.state = MachineState::Pending;
        }
        Ok(m)
    }

    async fn delete(&self, name: &str) -> Result<(), BackendError> {
        let mut s = self.state();
        s.calls.push(Call::Delete { name: name.to_string() });
        if let Some(e) = s.delete_errors.pop_front() {
            return Err(e);
        }
        match s.machines.get_mut(name) {
            None => Err(BackendError::NotFound(name.to_string())),
            Some(m) => {
                m.state = MachineState::Stopping;
                Ok(())
            }
        }
    }

    async fn list_owned(&self) -> Result<Vec<Machine>, BackendError> {
        let mut s = self.state();
        s.calls.push(Call::ListOwned);
        Ok(s.machines.values().cloned().collect())
    }
}

/// A factory that hands out registered fakes by `Backend` object name.
#[derive(Clone, Default)]
pub struct FakeFactory {
    backends: Arc<Mutex<HashMap<String, FakeBackend>>>,
}

impl FakeFactory {
    pub fn with(backends: impl IntoIterator<Item = FakeBackend>) -> Self {
        let f = FakeFactory::default();
        for b in backends {
            f.backends.lock().expect("fake factory").insert(b.name.clone(), b);
        }
        f
    }
}

#[async_trait]
impl BackendFactory for FakeFactory {
    async fn build(&self, object: &BackendObject) -> Result<Arc<dyn Backend>, BackendError> {
        let name = object.metadata.name.clone().unwrap_or_default();
        let b = self.backends.lock().expect("fake factory").get(&name).cloned();
        b.map(|b| Arc::new(b) as Arc<dyn Backend>)
            .ok_or_else(|| BackendError::InvalidConfig(format!("no backend registered for {name}")))
    }
}
