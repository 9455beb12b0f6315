//! The seam between the run controller and whatever executes a run's commands on its
//! instance. Jobs are detached from the controller: `status` can be asked by a
//! controller that did not `start` the job.
//!
//! Executors:
//! - [`ssh::SshExecutor`] runs the commands on hosts reached over SSH (instances of
//!   `ssh` backends with the backend's key; instances of `aws` and `lambda` backends at
//!   their address with their own key, see [`ssh::instance_key`]), detached from the
//!   connection, in a job directory on the host (see the [`ssh`] module for the layout,
//!   and [`JobLogs`] for reading the output);
//! - [`pod::PodExecutor`] runs them in a Pod that takes the place of the instance's slot
//!   Pod on its node (instances of `kubernetes` backends; see the [`pod`] module);
//! - [`HoldExecutor`] holds the instance without running anything;
//! - [`ScriptedExecutor`] is the test double.
//!
//! The environment of a job comes from `spec.env`, resolved by [`env::resolve_env`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::api::instance::{Instance, JobRef};
use crate::api::run::Run;
pub use crate::core::run::JobState;

pub mod dispatch;
pub mod env;
pub mod pod;
pub mod ssh;

pub use self::dispatch::{DispatchExecutor, JobRunner};
pub use self::pod::PodExecutor;
pub use self::ssh::SshExecutor;

/// A failure to start, query or stop a job.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// The instance could not be reached.
    #[error("instance unreachable: {0}")]
    Unreachable(String),
    /// The job cannot run there (e.g. an image was given but the host has no container
    /// runtime, or the image cannot be pulled). Fails the run.
    #[error("cannot run the job: {0}")]
    Unsupported(String),
    /// The instance's `Backend` is not there (deleted, or never was): kpool cannot tell
    /// how to reach the instance to run, follow or stop a job.
    #[error("backend {backend} is not defined in namespace {namespace}")]
    MissingBackend { backend: String, namespace: String },
    #[error("{0}")]
    Other(String),
}

impl ExecError {
    pub fn category(&self) -> &'static str {
        match self {
            ExecError::Unreachable(_) => "Unreachable",
            ExecError::Unsupported(_) => "Unsupported",
            ExecError::MissingBackend { .. } => "MissingBackend",
            ExecError::Other(_) => "Other",
        }
    }
}

/// Starts, follows and stops runs' jobs on instances.
#[async_trait]
pub trait Executor: Send + Sync {
    /// Starts the run's job on the instance; starting an already started job is a no-op.
    async fn start(&self, run: &Run, instance: &Instance) -> Result<(), ExecError>;
    /// How the job is doing.
    async fn status(&self, run: &Run, instance: &Instance) -> Result<JobState, ExecError>;
    /// Stops the job; stopping a job that is not running is a no-op.
    async fn stop(&self, run: &Run, instance: &Instance) -> Result<(), ExecError>;
    /// Fences the machine off from `job`, one attempt of a run that may have moved on to
    /// another attempt or be gone: stops that job and makes sure nothing of it is left
    /// running there (on a host, its whole process group). `Ok` only once it is gone, or
    /// when it had ended or never started. The instance is not used again before.
    async fn fence(&self, job: &JobRef, instance: &Instance) -> Result<(), ExecError>;
}

/// Reads what a run's job printed (standard output and standard error, interleaved as
/// written), from a byte offset on, so that a client can follow it (`-f`).
#[async_trait]
pub trait JobLogs: Send + Sync {
    /// The output from byte `from_byte` on (at most a chunk of it), and the offset to ask
    /// from next time. An offset past the end gives no text and the same offset back.
    async fn logs(&self, run: &Run, instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError>;
}

/// Holds the instance for the run without executing anything: the run stays Running
/// until it is stopped (`spec.stop`, deletion) or reaches `maxDuration`. This is what
/// the controller uses for backends without a job runner (the clouds, for now).
pub struct HoldExecutor;

#[async_trait]
impl Executor for HoldExecutor {
    async fn start(&self, _run: &Run, _instance: &Instance) -> Result<(), ExecError> {
        Ok(())
    }
    async fn status(&self, _run: &Run, _instance: &Instance) -> Result<JobState, ExecError> {
        Ok(JobState::Running)
    }
    async fn stop(&self, _run: &Run, _instance: &Instance) -> Result<(), ExecError> {
        Ok(())
    }
    async fn fence(&self, _job: &JobRef, _instance: &Instance) -> Result<(), ExecError> {
        Ok(())
    }
}

/// A test double: jobs run until a test finishes them with [`ScriptedExecutor::exit`].
#[derive(Clone, Default)]
pub struct ScriptedExecutor {
    jobs: Arc<Mutex<HashMap<String, JobState>>>,
    started: Arc<Mutex<Vec<String>>>,
    stopped: Arc<Mutex<Vec<String>>>,
    fenced: Arc<Mutex<Vec<JobRef>>>,
    unreachable: Arc<Mutex<bool>>,
    failures: Arc<Mutex<HashMap<&'static str, ExecError>>>,
}

impl ScriptedExecutor {
    /// The job of run `name` exits with `code`.
    pub fn exit(&self, run: &str, code: i32) {
        self.jobs.lock().expect("jobs").insert(run.to_string(), JobState::Exited(code));
    }
    /// Runs whose jobs were started, with their state.
    pub fn jobs(&self) -> HashMap<String, JobState> {
        self.jobs.lock().expect("jobs").clone()
    }
    /// Runs whose jobs were started, in order, once per call to `start`.
    pub fn started(&self) -> Vec<String> {
        self.started.lock().expect("started").clone()
    }
    /// Runs whose jobs were stopped, in order.
    pub fn stopped(&self) -> Vec<String> {
        self.stopped.lock().expect("stopped").clone()
    }
    /// While set, every call fails with `Unreachable` (the host is gone from the network).
    pub fn set_unreachable(&self, unreachable: bool) {
        *self.unreachable.lock().expect("unreachable") = unreachable;
    }
    /// Jobs fenced off their instances, in order, once per successful `fence`.
    pub fn fenced(&self) -> Vec<JobRef> {
        self.fenced.lock().expect("fenced").clone()
    }
    /// While set, every call of `verb` (`start`, `status`, `stop` or `fence`) fails with
    /// `err`; `None` lets it succeed again.
    pub fn fail(&self, verb: &'static str, err: Option<ExecError>) {
        let mut failures = self.failures.lock().expect("failures");
        match err {
            Some(e) => failures.insert(verb, e),
            None => failures.remove(verb),
        };
    }
    fn reach(&self, verb: &'static str) -> Result<(), ExecError> {
        if *self.unreachable.lock().expect("unreachable") {
            return Err(ExecError::Unreachable("scripted: host down".into()));
        }
        match self.failures.lock().expect("failures").get(verb) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

fn run_name(run: &Run) -> String {
    run.metadata.name.clone().unwrap_or_default()
}

#[async_trait]
impl Executor for ScriptedExecutor {
    async fn start(&self, run: &Run, _instance: &Instance) -> Result<(), ExecError> {
        self.reach("start")?;
        self.started.lock().expect("started").push(run_name(run));
        self.jobs.lock().expect("jobs").entry(run_name(run)).or_insert(JobState::Running);
        Ok(())
    }
    async fn status(&self, run: &Run, _instance: &Instance) -> Result<JobState, ExecError> {
        self.reach("status")?;
        self.jobs
            .lock()
            .expect("jobs")
            .get(&run_name(run))
            .cloned()
            .ok_or_else(|| ExecError::Other(format!("no job for run {}", run_name(run))))
    }
    async fn stop(&self, run: &Run, _instance: &Instance) -> Result<(), ExecError> {
        self.reach("stop")?;
        self.stopped.lock().expect("stopped").push(run_name(run));
        Ok(())
    }
    async fn fence(&self, job: &JobRef, _instance: &Instance) -> Result<(), ExecError> {
        self.reach("fence")?;
        self.fenced.lock().expect("fenced").push(job.clone());
        Ok(())
    }
}
