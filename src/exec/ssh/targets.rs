//! [`SshTargets`] from the API, by the type of the `Backend` an instance's offer came from
//! (`status.offer.backend`):
//! - `ssh`: the host is the `spec.ssh.hosts` entry named by the offer's `instanceType`; the
//!   key and the known host keys come from the factory, as for the backend.
//! - `aws`, `lambda`: the host is the instance's `status.address` (the machine's public
//!   address, else its private one), the port and user the backend's `sshPort` (default
//!   22) and `sshUser` (default `ubuntu`); the private key is the instance's own, from its
//!   Secret `<instance>-ssh` (see [`instance_key`](super::instance_key)). The machine's host
//!   key is trusted on first use and then pinned for that instance (by its UID).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::api::Api;
use kube::ResourceExt;

use super::{instance_key, KnownHosts, SshLogin, SshTargets, Target};
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
    /// On the instance's key Secret (cloud instances), see [`instance_key::remember_host_key`].
    async fn remember_host_key(&self, instance: &Instance, fingerprint: &str) -> Result<(), ExecError> {
        instance_key::remember_host_key(&self.client, instance, fingerprint)
            .await
            .map_err(|e| ExecError::Other(e.to_string()))
    }

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
        if object.spec.is_cloud_vm() {
            return cloud_login(&self.client, instance, &object).await;
        }
        if object.spec.type_ != BackendType::Ssh {
            return Err(ExecError::Unsupported(format!(
                "instance {name} comes from backend {backend} of type {}; kpool runs commands over SSH only on instances of ssh, aws and lambda backends",
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
            pin_as: None,
            host_key: None,
        })
    }
}

/// How to log in to the machine of an instance of an `aws` or `lambda` backend. Errors
/// ([`ExecError::Other`]): no address yet, no key Secret (named), an unusable Secret.
pub async fn cloud_login(
    client: &kube::Client,
    instance: &Instance,
    object: &BackendObject,
) -> Result<SshLogin, ExecError> {
    let name = instance.name_any();
    let address = instance.status.as_ref().and_then(|s| s.address.clone()).filter(|a| !a.trim().is_empty());
    let Some(host) = address else {
        return Err(ExecError::Other(format!(
            "instance {name} has no address yet (status.address); its machine of backend {} has not reported one",
            object.name_any()
        )));
    };
    let key = instance_key::read(client, instance).await.map_err(|e| ExecError::Other(e.to_string()))?;
    let (user, port) = object.spec.cloud_ssh();
    Ok(SshLogin {
        target: Target { host, port, user },
        private_key: key.private_key,
        known_hosts: KnownHosts::default(),
        connect_timeout: None,
        pin_as: Some(instance.uid().unwrap_or_else(|| format!("{}/{name}", instance.namespace().unwrap_or_default()))),
        host_key: key.host_key,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::PostParams;

    use super::*;
    use crate::api::backend::{AwsBackendConfig, BackendSpec};
    use crate::api::instance::{InstanceSpec, InstanceStatus};
    use crate::api::offer::Offer;

    async fn client() -> kube::Client {
        kube_fake_client::ClientBuilder::new()
            .with_resource::<BackendObject>()
            .with_resource::<Secret>()
            .build()
            .await
            .expect("fake client")
    }

    async fn create<K>(client: &kube::Client, obj: K)
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::<K>::namespaced(client.clone(), "ml").create(&PostParams::default(), &obj).await.expect("create");
    }

    fn aws_backend(port: Option<u16>) -> BackendObject {
        let mut b = BackendObject::new(
            "cloud",
            BackendSpec {
                type_: BackendType::Aws,
                aws: Some(AwsBackendConfig { image_id: "ami-12345678".into(), ssh_port: port, ..Default::default() }),
                ..Default::default()
            },
        );
        b.metadata.namespace = Some("ml".into());
        b
    }

    fn instance(address: Option<&str>) -> Instance {
        let mut i = Instance::new("gpu-1", InstanceSpec::default());
        i.metadata.namespace = Some("ml".into());
        i.metadata.uid = Some("0b5e1c2d-uid".into());
        i.status = Some(InstanceStatus {
            offer: Some(Offer { backend: "cloud".into(), instance_type: "g5.xlarge".into(), ..Default::default() }),
            address: address.map(str::to_string),
            ..Default::default()
        });
        i
    }

    fn targets(client: &kube::Client) -> ApiTargets {
        ApiTargets::new(client.clone(), Arc::new(DefaultFactory::new(client.clone())))
    }

    #[tokio::test]
    async fn an_instance_without_an_address_is_a_clear_error() {
        let client = client().await;
        create(&client, aws_backend(None)).await;
        let err = targets(&client).login(&instance(None)).await.err().expect("an error");
        let text = err.to_string();
        assert!(matches!(err, ExecError::Other(_)) && text.contains("gpu-1 has no address yet"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_key_secret_is_named() {
        let client = client().await;
        create(&client, aws_backend(None)).await;
        let err = targets(&client).login(&instance(Some("203.0.113.7"))).await.err().expect("an error");
        let text = err.to_string();
        assert!(text.contains("Secret gpu-1-ssh") && text.contains("not found in namespace ml"), "{text}");
    }

    #[tokio::test]
    async fn a_cloud_instance_is_reached_at_its_address_with_its_own_key() {
        let client = client().await;
        create(&client, aws_backend(Some(2222))).await;
        let inst = instance(Some("203.0.113.7"));
        let key = instance_key::generate("test").unwrap();
        create(&client, instance_key::secret_for(&inst, &key)).await;
        let login = targets(&client).login(&inst).await.unwrap();
        assert_eq!(login.target, Target { host: "203.0.113.7".into(), port: 2222, user: "ubuntu".into() });
        assert_eq!(login.private_key, key.private_key);
        assert_eq!(login.pin_as.as_deref(), Some("0b5e1c2d-uid"));
    }
}
