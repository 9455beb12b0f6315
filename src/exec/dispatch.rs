//! The production executor: picks how to run a job from the instance's backend type.
//! Instances of `ssh`, `aws` and `lambda` backends run jobs over SSH (hosts you own with
//! the backend's key; cloud machines at their address with the instance's own key);
//! instances of `kubernetes` backends in a job Pod in place of their slot Pod
//! ([`PodExecutor`]). Any other backend type would hold the instance (as
//! [`HoldExecutor`](super::HoldExecutor) does) until stopped, deleted or `maxDuration`.

use std::sync::Arc;

use async_trait::async_trait;
use kube::api::Api;
use kube::ResourceExt;

use super::{ExecError, Executor, HoldExecutor, JobLogs, JobState, PodExecutor, SshExecutor};
use crate::api::backend::{Backend as BackendObject, BackendType};
use crate::api::instance::Instance;
use crate::api::run::Run;
use crate::backends::factory::DefaultFactory;

pub struct DispatchExecutor {
    client: kube::Client,
    ssh: SshExecutor,
    pod: PodExecutor,
    hold: HoldExecutor,
}

impl DispatchExecutor {
    /// `factory` should be the controller's, so SSH host keys are shared with the backend
    /// and job Pods go only where its [`Allowances`](crate::backends::allow::Allowances) let them.
    pub fn new(client: kube::Client, factory: Arc<DefaultFactory>) -> Self {
        let installation = factory.installation().map(str::to_string);
        let allowances = factory.allowances().clone();
        DispatchExecutor {
            ssh: SshExecutor::from_api(client.clone(), factory),
            pod: PodExecutor::new(client.clone()).with_installation(installation).with_allowances(allowances),
            client,
            hold: HoldExecutor,
        }
    }

    async fn backend_type(&self, instance: &Instance) -> Result<Option<BackendType>, ExecError> {
        let Some(name) = instance.status.as_ref().and_then(|s| s.offer.as_ref()).map(|o| o.backend.clone()) else {
            return Ok(None);
        };
        let api: Api<BackendObject> = Api::namespaced(self.client.clone(), &instance.namespace().unwrap_or_default());
        let obj = api.get_opt(&name).await.map_err(|e| ExecError::Other(format!("reading Backend {name}: {e}")))?;
        Ok(obj.map(|b| b.spec.type_))
    }

    async fn pick(&self, instance: &Instance) -> Result<&dyn Executor, ExecError> {
        Ok(match self.backend_type(instance).await? {
            Some(t) if runs_over_ssh(t) => &self.ssh,
            Some(BackendType::Kubernetes) => &self.pod,
            _ => &self.hold,
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
}

#[async_trait]
impl JobLogs for DispatchExecutor {
    async fn logs(&self, run: &Run, instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError> {
        match self.backend_type(instance).await? {
            Some(t) if runs_over_ssh(t) => self.ssh.logs(run, instance, from_byte).await,
            Some(BackendType::Kubernetes) => self.pod.logs(run, instance, from_byte).await,
            other => Err(ExecError::Unsupported(format!(
                "runs on {} backends execute nothing yet, so they have no logs",
                other.map(|t| t.as_str()).unwrap_or("unknown")
            ))),
        }
    }
}

/// Whether jobs on instances of backends of type `t` run over SSH.
fn runs_over_ssh(t: BackendType) -> bool {
    matches!(t, BackendType::Ssh | BackendType::Aws | BackendType::Lambda)
}
