//! An in-process backend test double: it records every call, keeps machines in memory,
//! and fails on command. Tests and the simulation use it; it is not selectable from a
//! `Backend` object.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Backend, BackendError, BackendFactory, Machine, MachineRef, MachineSpec, MachineState};
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
    /// How many of the next `create` calls do their work and then lose the answer.
    lost_creates: usize,
    /// How many of the next `delete` calls do their work and then lose the answer.
    lost_deletes: usize,
    /// Regional mode (see [`FakeBackend::regional`]): the region of each machine, by key.
    regional: bool,
    regions: HashMap<String, String>,
}

/// The error of a call whose answer never came back (the work may be done).
pub fn lost_response(verb: &str, name: &str) -> BackendError {
    BackendError::Unanswered(format!("{verb} {name}: connection reset before the response arrived"))
}

/// See the module docs. Cloning shares the state.
#[derive(Clone)]
pub struct FakeBackend {
    name: String,
    state: Arc<Mutex<State>>,
    /// In regional mode, the regions this handle is configured for (a `Backend` object's
    /// `spec.regions`, as [`FakeFactory`] builds it); `None`: every region.
    configured: Option<Vec<String>>,
}

impl FakeBackend {
    pub fn new(name: &str, offers: Vec<Offer>) -> Self {
        let offers = offers.into_iter().map(|o| Offer { backend: name.to_string(), ..o }).collect();
        FakeBackend {
            name: name.to_string(),
            state: Arc::new(Mutex::new(State { offers, ..State::default() })),
            configured: None,
        }
    }

    /// Regional mode, as a cloud with regions behaves: a machine lives in the region of
    /// the offer it was launched from, and a name is unique only within a region (a
    /// second `create` of the same name in another region launches a second machine). A
    /// handle built by [`FakeFactory`] from a `Backend` object sees the object's
    /// `spec.regions` (all regions when empty): offers, `create`, `get`, `delete` and
    /// `list_owned` only there; `get_at` and `delete_at` also in the region the
    /// [`MachineRef`] recorded.
    pub fn regional(self) -> Self {
        self.state().regional = true;
        self
    }

    /// The next `n` `create` calls launch (or find) the machine, then answer with
    /// [`lost_response`], as a call whose response was lost on the way back.
    pub fn lose_next_creates(&self, n: usize) {
        self.state().lost_creates += n;
    }

    /// The next `n` `delete` calls start deleting the machine, then answer with
    /// [`lost_response`].
    pub fn lose_next_deletes(&self, n: usize) {
        self.state().lost_deletes += n;
    }

    /// Live machines with their regions (regional mode; `None` otherwise).
    pub fn live_machines_at(&self) -> Vec<(Option<String>, Machine)> {
        let s = self.state();
        s.machines
            .iter()
            .filter(|(_, m)| m.state != MachineState::Terminated)
            .map(|(k, m)| (s.regions.get(k).cloned(), m.clone()))
            .collect()
    }

    /// This handle restricted to `regions` (regional mode; empty: every region).
    fn configured_for(&self, regions: &[String]) -> Self {
        let configured = (self.state().regional && !regions.is_empty()).then(|| regions.to_vec());
        FakeBackend { configured, ..self.clone() }
    }

    /// Whether this handle may look in `region`.
    fn sees(&self, region: &str) -> bool {
        self.configured.as_ref().is_none_or(|r| r.iter().any(|c| c == region))
    }

    /// Keys of the machines named `name` this handle finds, also looking in `extra`.
    fn keys_of(&self, s: &State, name: &str, extra: Option<&str>) -> Vec<String> {
        if !s.regional {
            return s.machines.contains_key(name).then(|| name.to_string()).into_iter().collect();
        }
        s.machines
            .iter()
            .filter(|(k, m)| {
                m.name == name && s.regions.get(*k).is_some_and(|r| self.sees(r) || Some(r.as_str()) == extra)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn lookup(&self, name: &str, extra: Option<&str>) -> Result<Machine, BackendError> {
        let mut s = self.state();
        s.calls.push(Call::Get { name: name.to_string() });
        let pending_polls = s.pending_polls;
        let polls = {
            let p = s.polls.entry(name.to_string()).or_default();
            *p += 1;
            *p
        };
        let key = self.keys_of(&s, name, extra).into_iter().next();
        let Some(key) = key else { return Err(BackendError::NotFound(name.to_string())) };
        let m = s.machines.get_mut(&key).ok_or_else(|| BackendError::NotFound(name.to_string()))?;
        if m.state == MachineState::Pending && polls > pending_polls {
            m.state = MachineState::Running;
        }
        if m.state == MachineState::Stopping {
            m.state = MachineState::Terminated;
        }
        if m.state == MachineState::Terminated {
            s.machines.remove(&key);
            s.regions.remove(&key);
            return Err(BackendError::NotFound(name.to_string()));
        }
        let mut m = m.clone();
        if s.unreachable.contains(name) && m.state == MachineState::Running {
            m.state = MachineState::Pending;
        }
        Ok(m)
    }

    fn remove(&self, name: &str, extra: Option<&str>) -> Result<(), BackendError> {
        let mut s = self.state();
        s.calls.push(Call::Delete { name: name.to_string() });
        if let Some(e) = s.delete_errors.pop_front() {
            return Err(e);
        }
        let keys = self.keys_of(&s, name, extra);
        if keys.is_empty() {
            return Err(BackendError::NotFound(name.to_string()));
        }
        for k in keys {
            if let Some(m) = s.machines.get_mut(&k) {
                m.state = MachineState::Stopping;
            }
        }
        if s.lost_deletes > 0 {
            s.lost_deletes -= 1;
            return Err(lost_response("delete", name));
        }
        Ok(())
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

    /// Capacity is back for every instance type.
    pub fn clear_no_capacity(&self) {
        self.state().no_capacity.clear();
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
        let mut s = self.state();
        let keys: Vec<String> = s.machines.iter().filter(|(_, m)| m.name == name).map(|(k, _)| k.clone()).collect();
        for k in keys {
            s.machines.remove(&k);
            s.regions.remove(&k);
        }
    }

    /// Adds a machine that no `Instance` knows about (for garbage collection tests).
    pub fn insert_machine(&self, machine: Machine) {
        self.state().machines.insert(machine.name.clone(), machine);
    }

    /// The provider takes the machine back (a spot reclaim, a termination outside kpool):
    /// it reads as shutting down, then gone.
    pub fn reclaim(&self, name: &str) {
        for m in self.state().machines.values_mut().filter(|m| m.name == name) {
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
        Ok(s.offers.iter().filter(|o| self.sees(&o.region)).cloned().collect())
    }

    async fn create(&self, spec: &MachineSpec) -> Result<Machine, BackendError> {
        let mut s = self.state();
        s.calls.push(Call::Create { name: spec.name.clone(), instance_type: spec.offer.instance_type.clone() });
        let region = spec.offer.region.clone();
        if !self.sees(&region) {
            return Err(BackendError::InvalidConfig(format!(
                "offer region {region:?} is not one of the backend's regions {:?}",
                self.configured
            )));
        }
        let key = if s.regional { format!("{}@{region}", spec.name) } else { spec.name.clone() };
        if let Some(m) = s.machines.get(&key).filter(|m| m.state != MachineState::Terminated) {
            let m = m.clone();
            if s.lost_creates > 0 {
                s.lost_creates -= 1;
                return Err(lost_response("create", &spec.name));
            }
            return Ok(m);
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
        s.machines.insert(key.clone(), m.clone());
        if s.regional {
            s.regions.insert(key, region);
        }
        if let Some(e) = s.lost_answers.pop_front() {
            return Err(e);
        }
        if s.lost_creates > 0 {
            s.lost_creates -= 1;
            return Err(lost_response("create", &spec.name));
        }
        Ok(m)
    }

    async fn get(&self, name: &str) -> Result<Machine, BackendError> {
        self.lookup(name, None)
    }

    async fn delete(&self, name: &str) -> Result<(), BackendError> {
        self.remove(name, None)
    }

    async fn get_at(&self, machine: &MachineRef) -> Result<Machine, BackendError> {
        self.lookup(&machine.name, machine.region.as_deref())
    }

    async fn delete_at(&self, machine: &MachineRef) -> Result<(), BackendError> {
        self.remove(&machine.name, machine.region.as_deref())
    }

    async fn list_owned(&self) -> Result<Vec<Machine>, BackendError> {
        let mut s = self.state();
        s.calls.push(Call::ListOwned);
        let regions = &s.regions;
        let seen = |k: &String| !s.regional || regions.get(k).is_some_and(|r| self.sees(r));
        Ok(s.machines.iter().filter(|(k, _)| seen(k)).map(|(_, m)| m.clone()).collect())
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
        b.map(|b| Arc::new(b.configured_for(&object.spec.regions)) as Arc<dyn Backend>)
            .ok_or_else(|| BackendError::InvalidConfig(format!("no backend registered for {name}")))
    }
}
