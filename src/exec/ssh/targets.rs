//! [`SshTargets`] from the API: an instance's host is the `spec.ssh.hosts` entry of the
//! `Backend` its offer came from (`status.offer.backend`) named by the offer's
//! `instanceType`; the key and the known host keys come from the factory, as for the backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::api::Api;
use kube::ResourceExt;

use super::{SshLogin, SshTargets, Target};
use crate::api::backend::{Backend as BackendObject, BackendType};
use crate::api::instance::Instance;
use crate::backends::factory::DefaultFactory;
use crate::backends::ssh::{DEFAULT_PORT, DEFAULT_USER};
use crate::exec::ExecError;

/// See the module docs.
pub struct ApiTargets {
    pub client: kube::Client,
    pub factory: Arc<DefaultFactory>,
}

impl ApiTargets {
    pub fn new(client: kube::Client, factory: Arc<DefaultFactory>) -> Self {
        ApiTargets { client, factory }
    }
}

#[async_trait]
impl SshTargets for ApiTargets {
    /// Errors: an instance without an offer, a missing `Backend`, or a host no longer listed
    /// is [`ExecError::Other`]; an instance of a backend that is not `ssh` is
    /// [`ExecError::Unsupported`].
    async fn login(&self, instance: &Instance) -> Result<SshLogin, ExecError> {
        let name = instance.name_any();
        let ns = instance.namespace().unwrap_or_default();
        let offer = instance
            .status
            .as_ref()
            .and_then(|s| s.offer.as_ref())
            .ok_or_else(|| ExecError::Other(format!("instance {name} has no offer yet (status.offer)")))?;
        let backend = &offer.backend;
        let object = Api::<BackendObject>::namespaced(self.client.clone(), &ns)
            .get_opt(backend)
            .await
            .map_err(|e| ExecError::Other(format!("failed to read Backend {backend} of instance {name}: {e}")))?
            .ok_or_else(|| {
                ExecError::Other(format!("Backend {backend} of instance {name} not found in namespace {ns}"))
            })?;
        if object.spec.type_ != BackendType::Ssh {
            return Err(ExecError::Unsupported(format!(
                "instance {name} comes from backend {backend} of type {}; kpool runs commands only on instances of ssh backends so far",
                object.spec.type_.as_str()
            )));
        }
        let (config, private_key, known_hosts) =
            self.factory.ssh_login(&object).await.map_err(|e| ExecError::Other(format!("backend {backend}: {e}")))?;
        let host =
            config.hosts.iter().find(|h| h.name.as_deref().unwrap_or(&h.host) == offer.instance_type).ok_or_else(
                || {
                    ExecError::Other(format!(
                        "host {:?} of instance {name} is no longer in spec.ssh.hosts of backend {backend}",
                        offer.instance_type
                    ))
                },
            )?;
        Ok(SshLogin {
            target: Target {
                host: host.host.clone(),
                port: host.port.unwrap_or(DEFAULT_PORT),
                user: host.user.clone().unwrap_or_else(|| DEFAULT_USER.to_string()),
            },
            private_key,
            known_hosts,
            connect_timeout: config.connect_timeout_seconds.map(|s| Duration::from_secs(u64::from(s))),
        })
    }
}
