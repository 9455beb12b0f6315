//! The production executor: picks how to run a job from the instance's backend type.
//! Instances of `ssh`, `aws` and `lambda` backends run jobs over SSH (hosts you own with
//! the backend's key; cloud machines at their address with the instance's own key);
//! instances of `kubernetes` backends in a job Pod in place of their slot Pod
//! ([`PodExecutor`]). On an instance whose `Backend` is missing every call fails with
//! [`ExecError::MissingBackend`], which the run's status shows: nothing runs, and nothing
//! pretends to.

use std::sync::Arc;

use async_trait::async_trait;
use kube::api::Api;
use kube::ResourceExt;

use super::{ExecError, Executor, JobLogs, JobState, PodExecutor, SshExecutor};
use crate::api::backend::{Backend as BackendObject, BackendType};
use crate::api::instance::{Instance, JobRef};
use crate::api::run::Run;
use crate::backends::factory::DefaultFactory;

pub struct DispatchExecutor {
    client: kube::Client,
    ssh: Arc<dyn JobRunner>,
    pod: Arc<dyn JobRunner>,
}

/// What [`DispatchExecutor`] hands a job to: an executor that can also read its logs.
pub trait JobRunner: Executor + JobLogs {}
impl<T: Executor + JobLogs> JobRunner for T {}

impl DispatchExecutor {
    /// `factory` should be the controller's, so SSH host keys are shared with the backend
    /// and job Pods go only where its [`Allowances`](crate::backends::allow::Allowances) let them.
    pub fn new(client: kube::Client, factory: Arc<DefaultFactory>) -> Self {
        let installation = factory.installation().map(str::to_string);
        let allowances = factory.allowances().clone();
        let ssh = SshExecutor::from_api(client.clone(), factory);
        let pod = PodExecutor::new(client.clone()).with_installation(installation).with_allowances(allowances);
        DispatchExecutor::with_executors(client, Arc::new(ssh), Arc::new(pod))
    }

    /// Dispatches to `ssh` (instances of `ssh`, `aws` and `lambda` backends) and `pod`
    /// (`kubernetes` backends), reading Backends with `client`: the simulation runs its
    /// hosts behind the same choice, missing Backend included.
    pub fn with_executors(client: kube::Client, ssh: Arc<dyn JobRunner>, pod: Arc<dyn JobRunner>) -> Self {
        DispatchExecutor { client, ssh, pod }
    }

    /// The type of the instance's `Backend`; an error when it has none or it is missing.
    async fn backend_type(&self, instance: &Instance) -> Result<BackendType, ExecError> {
        let namespace = instance.namespace().unwrap_or_default();
        let backend = instance.status.as_ref().and_then(|s| s.offer.as_ref()).map(|o| o.backend.clone());
        let Some(name) = backend.filter(|b| !b.is_empty()) else {
            let instance = instance.name_any();
            return Err(ExecError::Other(format!("instance {instance} has no offer, so no backend to run a job with")));
        };
        let api: Api<BackendObject> = Api::namespaced(self.client.clone(), &namespace);
        let obj = api.get_opt(&name).await.map_err(|e| ExecError::Other(format!("reading Backend {name}: {e}")))?;
        obj.map(|b| b.spec.type_).ok_or(ExecError::MissingBackend { backend: name, namespace })
    }

    async fn pick(&self, instance: &Instance) -> Result<&dyn JobRunner, ExecError> {
        Ok(match self.backend_type(instance).await? {
            BackendType::Ssh | BackendType::Aws | BackendType::Lambda => self.ssh.as_ref(),
            BackendType::Kubernetes => self.pod.as_ref(),
        })
    }
}

#[async_trait]
impl Executor for DispatchExecutor {
    async fn start(&self, run: &Run, instance: &Instance) -> Result<(), ExecError> {
        self.pick(instance).await?.start(run, instance).await
    }
    async fn status(&self, run: &Run, instance: &Instance) -> Result<JobState, ExecError> {
        self.pick(instance).await?.status(run, instance).await
    }
    async fn stop(&self, run: &Run, instance: &Instance) -> Result<(), ExecError> {
        self.pick(instance).await?.stop(run, instance).await
    }
    async fn fence(&self, job: &JobRef, instance: &Instance) -> Result<(), ExecError> {
        self.pick(instance).await?.fence(job, instance).await
    }
}

#[async_trait]
impl JobLogs for DispatchExecutor {
    async fn logs(&self, run: &Run, instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError> {
        self.pick(instance).await?.logs(run, instance, from_byte).await
    }
}
