//! What the simulated controller talks through, and how it fails: every API request,
//! backend call and executor call of the controller passes [`Faults::call`], which
//! - kills the process after a seeded number of calls (a crash between any two calls:
//!   every later call of that process fails until the driver starts a fresh controller);
//! - makes API requests time out, half of them after the API server applied them.
//!
//! The backend's own faults (capacity errors, lost responses) are the fake backend's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kube::Client;

use kpool::api::backend::Backend as BackendObject;
use kpool::api::instance::{Instance, JobRef};
use kpool::api::offer::Offer;
use kpool::api::resources::Requirements;
use kpool::api::run::Run;
use kpool::backends::fake::{FakeBackend, FakeFactory};
use kpool::backends::{Backend, BackendError, BackendFactory, Machine, MachineRef, MachineSpec, MachineState};
use kpool::exec::{ExecError, Executor, JobState};

/// The fault switches shared by the controller's client, backends and executor.
#[derive(Default)]
pub struct Faults {
    /// Calls left before the process dies (0: no crash armed).
    countdown: AtomicUsize,
    /// The process is dead: every call fails until [`Faults::restart`].
    crashed: AtomicBool,
    /// How many of the next API requests time out.
    timeouts: AtomicUsize,
    /// Alternates timeouts before and after the request is applied.
    applied: AtomicBool,
    /// Timeouts injected so far.
    pub timed_out: AtomicUsize,
}

impl Faults {
    /// The process dies after `calls` more calls.
    pub fn arm_crash(&self, calls: usize) {
        self.countdown.store(calls.max(1), Ordering::SeqCst);
    }
    /// The next `n` API requests time out.
    pub fn time_out(&self, n: usize) {
        self.timeouts.fetch_add(n, Ordering::SeqCst);
    }
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }
    /// A fresh process starts: nothing armed, nothing dead.
    pub fn restart(&self) {
        self.crashed.store(false, Ordering::SeqCst);
        self.countdown.store(0, Ordering::SeqCst);
    }
    /// One call of the controller: `Err` when the process is (now) dead.
    fn call(&self) -> Result<(), String> {
        if self.crashed() {
            return Err("the controller process is dead".into());
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left > 0 && self.countdown.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.crashed.store(true, Ordering::SeqCst);
            return Err("the controller process died".into());
        }
        Ok(())
    }
    /// Whether this API request times out, and if so whether it was applied first.
    fn timeout(&self) -> Option<bool> {
        let take = self.timeouts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        take.then(|| {
            self.timed_out.fetch_add(1, Ordering::SeqCst);
            !self.applied.fetch_xor(true, Ordering::SeqCst)
        })
    }
}

fn service_error(msg: String) -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, msg)))
}

/// The controller's API client: `inner` behind [`Faults`].
pub fn client(inner: Client, faults: Arc<Faults>) -> Client {
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        let faults = faults.clone();
        async move {
            faults.call().map_err(service_error)?;
            match faults.timeout() {
                Some(applied) => {
                    let what = format!("{} {}", req.method(), req.uri().path());
                    if applied {
                        let _ = inner.send(req).await;
                    }
                    Err(service_error(format!("{what}: request timed out")))
                }
                None => inner.send(req).await,
            }
        }
    });
    Client::new(service, crate::support::NS)
}

/// A backend behind [`Faults`].
struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    fn call(&self) -> Result<(), BackendError> {
        self.faults.call().map_err(BackendError::Other)
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn offers(&self, req: &Requirements) -> Result<Vec<Offer>, BackendError> {
        self.call()?;
        self.inner.offers(req).await
    }
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, BackendError> {
        self.call()?;
        self.inner.create(spec).await
    }
    async fn get(&self, name: &str) -> Result<Machine, BackendError> {
        self.call()?;
        self.inner.get(name).await
    }
    async fn delete(&self, name: &str) -> Result<(), BackendError> {
        self.call()?;
        self.inner.delete(name).await
    }
    async fn get_at(&self, machine: &MachineRef) -> Result<Machine, BackendError> {
        self.call()?;
        self.inner.get_at(machine).await
    }
    async fn delete_at(&self, machine: &MachineRef) -> Result<(), BackendError> {
        self.call()?;
        self.inner.delete_at(machine).await
    }
    async fn list_owned(&self) -> Result<Vec<Machine>, BackendError> {
        self.call()?;
        self.inner.list_owned().await
    }
    async fn list_unattributed(&self) -> Result<Vec<Machine>, BackendError> {
        self.call()?;
        self.inner.list_unattributed().await
    }
}

/// The fake backend's factory, its backends behind [`Faults`].
pub struct Factory {
    pub inner: FakeFactory,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl BackendFactory for Factory {
    async fn build(&self, object: &BackendObject) -> Result<Arc<dyn Backend>, BackendError> {
        let inner = self.inner.build(object).await?;
        Ok(Arc::new(FaultyBackend { inner, faults: self.faults.clone() }))
    }
}

/// One job: where it runs and how it is doing.
#[derive(Clone, Debug)]
struct Job {
    instance: String,
    machine: String,
    state: JobState,
    stopped: bool,
}

#[derive(Default)]
struct Hosts {
    jobs: BTreeMap<String, Job>,
    violations: Vec<String>,
    starts: usize,
}

/// The hosts' side of jobs (it outlives controller crashes), which sees every start: a
/// run started while its job still runs on another machine, an instance running two
/// runs' jobs, or a run started again after it succeeded where its success could still
/// be read are violations.
#[derive(Clone)]
pub struct SimExecutor {
    hosts: Arc<Mutex<Hosts>>,
    backend: FakeBackend,
    faults: Arc<Faults>,
}

impl SimExecutor {
    pub fn new(backend: FakeBackend, faults: Arc<Faults>) -> Self {
        SimExecutor { hosts: Arc::default(), backend, faults }
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.lock().expect("hosts")
    }

    /// Whether the machine named `name` is up (a job dies with its machine).
    fn up(&self, name: &str) -> bool {
        self.backend.live_machines().iter().any(|m| m.name == name && m.state != MachineState::Stopping)
    }

    fn live(&self, job: &Job) -> bool {
        job.state == JobState::Running && !job.stopped && self.up(&job.machine)
    }

    /// The job of `run` exits with `code`, if it is running.
    pub fn exit(&self, run: &str, code: i32) {
        if let Some(j) = self.hosts().jobs.get_mut(run).filter(|j| j.state == JobState::Running && !j.stopped) {
            j.state = JobState::Exited(code);
        }
    }

    /// Runs whose jobs run now.
    pub fn running(&self) -> Vec<String> {
        let jobs = self.hosts().jobs.clone();
        jobs.into_iter().filter(|(_, j)| self.live(j)).map(|(r, _)| r).collect()
    }

    pub fn starts(&self) -> usize {
        self.hosts().starts
    }

    /// Runs that `runs` says are Running on an instance where no job of theirs was ever
    /// started: an executor that pretended to start them (as one did for instances whose
    /// Backend is missing) leaves a run Running that runs nothing.
    pub fn running_without_a_job<'a>(&self, runs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
        let hosts = self.hosts();
        runs.filter(|(run, inst)| hosts.jobs.get(*run).is_none_or(|j| j.instance != *inst))
            .map(|(run, inst)| format!("run {run} is Running on {inst}, where no job of it was started"))
            .collect()
    }

    /// The violations seen so far (taken).
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.hosts().violations)
    }

    fn call(&self) -> Result<(), ExecError> {
        self.faults.call().map_err(ExecError::Other)
    }

    /// The job of `run` on `instance`, if any, is stopped (its processes are gone).
    fn stop_on(&self, run: &str, instance: &Instance) {
        let inst = instance.metadata.name.clone().unwrap_or_default();
        if let Some(j) = self.hosts().jobs.get_mut(run).filter(|j| j.instance == inst) {
            j.stopped = true;
        }
    }
}

fn name_of(run: &Run) -> String {
    run.metadata.name.clone().unwrap_or_default()
}

#[async_trait]
impl kpool::exec::JobLogs for SimExecutor {
    async fn logs(&self, _run: &Run, _instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError> {
        self.call()?;
        Ok((String::new(), from_byte))
    }
}

#[async_trait]
impl Executor for SimExecutor {
    async fn start(&self, run: &Run, instance: &Instance) -> Result<(), ExecError> {
        self.call()?;
        let name = name_of(run);
        let inst = instance.metadata.name.clone().unwrap_or_default();
        let machine = instance.status.as_ref().and_then(|s| s.machine_name.clone()).unwrap_or_default();
        let jobs = self.hosts().jobs.clone();
        let mut found = Vec::new();
        if let Some(j) = jobs.get(&name) {
            if j.instance == inst && j.state == JobState::Running && !j.stopped {
                return Ok(()); // already started: a no-op
            }
            if self.live(j) {
                found.push(format!("run {name} started on {inst} while its job still runs on {}", j.instance));
            }
            // A job that exited 0 on a machine that is gone since, before kpool read its
            // exit status, is an interruption: nobody can read that status any more, and
            // the run's retry policy decides (at least once). While the machine is up its
            // success is readable there, and starting the run again is a violation.
            if j.state == JobState::Exited(0) && self.up(&j.machine) {
                found.push(format!("run {name} started on {inst} again after it succeeded"));
            }
        }
        for (other, j) in &jobs {
            if *other != name && j.instance == inst && self.live(j) {
                found.push(format!("instance {inst} starts run {name} while run {other} runs on it"));
            }
        }
        let mut hosts = self.hosts();
        hosts.violations.extend(found);
        hosts.starts += 1;
        hosts.jobs.insert(name, Job { instance: inst, machine, state: JobState::Running, stopped: false });
        Ok(())
    }

    async fn status(&self, run: &Run, instance: &Instance) -> Result<JobState, ExecError> {
        self.call()?;
        let name = name_of(run);
        let inst = instance.metadata.name.clone().unwrap_or_default();
        let job = self.hosts().jobs.get(&name).cloned();
        match job {
            Some(j) if j.instance == inst && !self.up(&j.machine) => {
                Err(ExecError::Unreachable(format!("machine {} is down", j.machine)))
            }
            Some(j) if j.instance == inst => Ok(j.state),
            _ => Err(ExecError::Other(format!("no job of run {name} on instance {inst}"))),
        }
    }

    async fn stop(&self, run: &Run, instance: &Instance) -> Result<(), ExecError> {
        self.call()?;
        self.stop_on(&name_of(run), instance);
        Ok(())
    }

    async fn fence(&self, job: &JobRef, instance: &Instance) -> Result<(), ExecError> {
        self.call()?;
        self.stop_on(&job.run, instance);
        Ok(())
    }
}
