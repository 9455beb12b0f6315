//! Builds the backend for each `Backend` object: reads its credentials from a `Secret`
//! and its offer catalog from a `ConfigMap` of the object's own namespace (never logged),
//! and keeps what must outlive a rebuild (SSH host keys) per object. The controller's
//! factory knows its installation's identity ([`DefaultFactory::with_installation`]) and
//! gives every cloud backend it builds its [`Owner`]: that installation and the object's
//! namespace. (`ssh` backends need none: their claims live in this process, and releasing
//! one never touches a host.) It builds only what the operator's [`Allowances`] permit: a
//! `kubernetes` backend placing Pods outside its namespace, or a cloud backend sending its
//! credentials to an endpoint that is neither the provider's nor allowed, is refused before
//! any Secret is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::ResourceExt;

use super::allow::Allowances;
use super::aws::{AwsBackend, AwsConfig};
use super::catalog::Catalog;
use super::kubernetes::KubernetesBackend;
use super::lambda::{LambdaBackend, LambdaConfig};
use super::ssh::{HostClaims, KnownHosts, SshBackend};
use super::{Backend, BackendError, BackendFactory, Owner};
use crate::api::backend::{Backend as BackendObject, BackendType, SshBackendConfig};
use crate::api::instance::{Instance, InstancePhase};

/// The production factory.
pub struct DefaultFactory {
    client: kube::Client,
    known_hosts: Mutex<HashMap<(String, String), KnownHosts>>,
    installation: Option<String>,
    allowances: Allowances,
}

impl DefaultFactory {
    /// A factory whose backends have no owner: they find offers and machines by name, but
    /// cannot list their machines for the garbage collector (the `kubectl pool` plugin's).
    pub fn new(client: kube::Client) -> Self {
        DefaultFactory { client, known_hosts: Mutex::default(), installation: None, allowances: Allowances::default() }
    }

    /// Sets what the operator allows backends beyond their own namespace and their
    /// provider's official endpoints (see [`Allowances`]); by default, nothing.
    pub fn with_allowances(mut self, allowances: Allowances) -> Self {
        self.allowances = allowances;
        self
    }

    /// What the operator allows backends.
    pub fn allowances(&self) -> &Allowances {
        &self.allowances
    }

    /// Sets this installation's identity (see [`super::installation_id`]): every backend
    /// built from now on launches and lists the machines of that installation and of its
    /// `Backend` object's namespace.
    pub fn with_installation(mut self, installation: impl Into<String>) -> Self {
        self.installation = Some(installation.into());
        self
    }

    /// This installation's identity, when set.
    pub fn installation(&self) -> Option<&str> {
        self.installation.as_deref()
    }

    /// The owner of the backends built from `object`.
    fn owner(&self, object: &BackendObject) -> Option<Owner> {
        let installation = self.installation.clone()?;
        Some(Owner { installation, namespace: object.namespace().unwrap_or_default() })
    }

    /// The data of the credentials `Secret` named by `spec.credentials.secretRef`.
    async fn secret(&self, object: &BackendObject) -> Result<BTreeMap<String, Vec<u8>>, BackendError> {
        let ns = object.namespace().unwrap_or_default();
        let Some(creds) = &object.spec.credentials else {
            return Err(BackendError::InvalidConfig(format!(
                "spec.credentials: a {} backend needs a Secret with its credentials",
                object.spec.type_.as_str()
            )));
        };
        let name = &creds.secret_ref.name;
        let secret = Api::<Secret>::namespaced(self.client.clone(), &ns)
            .get_opt(name)
            .await
            .map_err(|e| BackendError::Other(format!("reading Secret {name} of spec.credentials.secretRef: {e}")))?;
        let secret = secret.ok_or_else(|| {
            BackendError::InvalidConfig(format!(
                "spec.credentials.secretRef: Secret {name} not found in namespace {ns}"
            ))
        })?;
        Ok(secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
    }

    /// The catalog files (`aws.csv`, …) of the `ConfigMap` named by `spec.catalog`.
    pub async fn catalog_files(&self, object: &BackendObject) -> Result<Vec<(String, String)>, BackendError> {
        let ns = object.namespace().unwrap_or_default();
        let Some(name) = object.spec.catalog.as_ref().and_then(|c| c.config_map_ref.as_ref()).map(|r| r.name.clone())
        else {
            return Err(BackendError::InvalidConfig(format!(
                "spec.catalog.configMapRef: a {} backend needs an offer catalog (gpuhunt v2 CSV files in a ConfigMap)",
                object.spec.type_.as_str()
            )));
        };
        let cm = Api::<ConfigMap>::namespaced(self.client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(|e| BackendError::Other(format!("reading ConfigMap {name} of spec.catalog.configMapRef: {e}")))?;
        let cm = cm.ok_or_else(|| {
            BackendError::InvalidConfig(format!(
                "spec.catalog.configMapRef: ConfigMap {name} not found in namespace {ns}"
            ))
        })?;
        Ok(cm.data.unwrap_or_default().into_iter().filter(|(k, _)| k.ends_with(".csv")).collect())
    }

    /// What logging in to the hosts of an ssh `Backend` takes: its config, the private
    /// key from its Secret, and the host keys seen so far (shared across rebuilds).
    pub async fn ssh_login(
        &self,
        object: &BackendObject,
    ) -> Result<(SshBackendConfig, String, KnownHosts), BackendError> {
        let ns = object.namespace().unwrap_or_default();
        let config = object.spec.ssh.clone().ok_or_else(|| {
            BackendError::InvalidConfig("spec.ssh: an ssh backend needs its hosts in spec.ssh".into())
        })?;
        let data = self.secret(object).await?;
        let key = data.get("ssh-privatekey").ok_or_else(|| {
            BackendError::InvalidConfig(
                "spec.credentials.secretRef: the Secret needs the private key under `ssh-privatekey` (type kubernetes.io/ssh-auth)"
                    .into(),
            )
        })?;
        let key = String::from_utf8(key.clone()).map_err(|_| {
            BackendError::InvalidConfig("spec.credentials.secretRef: ssh-privatekey is not a text key".into())
        })?;
        let known = self.known_hosts.lock().expect("known hosts").entry((ns, object.name_any())).or_default().clone();
        // Declared host keys are the only ones accepted, for the backend and the job runner.
        for (i, h) in config.hosts.iter().enumerate() {
            if let Some(line) = &h.host_key {
                known
                    .pin(&h.host, h.port.unwrap_or(super::ssh::DEFAULT_PORT), line)
                    .map_err(|e| BackendError::InvalidConfig(format!("spec.ssh.hosts[{i}].hostKey: {e}")))?;
            }
        }
        Ok((config, key, known))
    }

    async fn aws(&self, object: &BackendObject) -> Result<Arc<dyn Backend>, BackendError> {
        let settings = object
            .spec
            .aws
            .clone()
            .ok_or_else(|| BackendError::InvalidConfig("spec.aws: an aws backend needs spec.aws.imageId".into()))?;
        let data = self.secret(object).await?;
        let text = |keys: &[&str]| -> Option<String> {
            keys.iter()
                .find_map(|k| data.get(*k))
                .and_then(|v| String::from_utf8(v.clone()).ok())
                .map(|s| s.trim().to_string())
        };
        let missing =
            |k: &str| BackendError::InvalidConfig(format!("spec.credentials.secretRef: the Secret has no `{k}`"));
        let config = AwsConfig {
            regions: object.spec.regions.clone(),
            endpoint: object.spec.endpoint.clone(),
            access_key_id: text(&["aws_access_key_id", "AWS_ACCESS_KEY_ID"])
                .ok_or_else(|| missing("aws_access_key_id"))?,
            secret_access_key: text(&["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"])
                .ok_or_else(|| missing("aws_secret_access_key"))?,
            session_token: text(&["aws_session_token", "AWS_SESSION_TOKEN"]),
            image_id: Some(settings.image_id),
            ssh_public_key: settings.ssh_public_key,
            subnet_id: settings.subnet_id,
            security_group_ids: settings.security_group_ids,
            spot_price_ttl: settings.spot_price_refresh_seconds.map(|s| std::time::Duration::from_secs(s.into())),
        };
        let files = self.catalog_files(object).await?;
        let catalog = Catalog::from_files(files, &object.name_any())
            .map_err(|e| BackendError::InvalidConfig(format!("spec.catalog.configMapRef: {e}")))?;
        let backend = AwsBackend::new(&object.name_any(), config, catalog.offers().to_vec())?;
        Ok(Arc::new(match self.owner(object) {
            Some(owner) => backend.with_owner(owner),
            None => backend,
        }))
    }

    async fn lambda(&self, object: &BackendObject) -> Result<Arc<dyn Backend>, BackendError> {
        let data = self.secret(object).await?;
        let api_key = ["api_key", "LAMBDA_API_KEY"]
            .iter()
            .find_map(|k| data.get(*k))
            .and_then(|v| String::from_utf8(v.clone()).ok())
            .map(|s| s.trim().to_string())
            .ok_or_else(|| {
                BackendError::InvalidConfig("spec.credentials.secretRef: the Secret has no `api_key`".into())
            })?;
        let config = LambdaConfig {
            api_key,
            endpoint: object.spec.endpoint.clone(),
            regions: object.spec.regions.clone(),
            ssh_key_names: object.spec.lambda.as_ref().map(|l| l.ssh_key_names.clone()).unwrap_or_default(),
        };
        let backend = LambdaBackend::new(&object.name_any(), config)?;
        Ok(Arc::new(match self.owner(object) {
            Some(owner) => backend.with_owner(owner),
            None => backend,
        }))
    }

    async fn ssh(&self, object: &BackendObject) -> Result<Arc<dyn Backend>, BackendError> {
        let ns = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let (config, key, known) = self.ssh_login(object).await?;
        let claims = Arc::new(InstanceClaims { client: self.client.clone(), namespace: ns, backend: name.clone() });
        Ok(Arc::new(SshBackend::new(&name, config, &key, claims)?.with_known_hosts(known)))
    }
}

/// Which hosts of an ssh backend are held, from the Instances of its namespace: a live
/// instance whose offer came from this backend holds the host its offer names.
struct InstanceClaims {
    client: kube::Client,
    namespace: String,
    backend: String,
}

#[async_trait]
impl HostClaims for InstanceClaims {
    async fn held(&self) -> Result<HashMap<String, String>, BackendError> {
        let list = Api::<Instance>::namespaced(self.client.clone(), &self.namespace)
            .list(&Default::default())
            .await
            .map_err(|e| BackendError::Other(format!("listing instances: {e}")))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|i| i.status)
            .filter(|s| !matches!(s.phase, InstancePhase::Terminated | InstancePhase::Failed))
            .filter_map(|s| {
                let offer = s.offer.filter(|o| o.backend == self.backend)?;
                Some((offer.instance_type, s.machine_name?))
            })
            .collect())
    }
}

#[async_trait]
impl BackendFactory for DefaultFactory {
    async fn build(&self, object: &BackendObject) -> Result<Arc<dyn Backend>, BackendError> {
        self.allowances.check(object)?;
        match object.spec.type_ {
            BackendType::Kubernetes => {
                let backend = KubernetesBackend::new(self.client.clone(), object)?;
                Ok(Arc::new(match self.owner(object) {
                    Some(owner) => backend.with_owner(owner),
                    None => backend,
                }))
            }
            BackendType::Ssh => self.ssh(object).await,
            BackendType::Aws => self.aws(object).await,
            BackendType::Lambda => self.lambda(object).await,
        }
    }
}
