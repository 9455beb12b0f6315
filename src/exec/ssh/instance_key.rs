//! The SSH key of one instance of a cloud VM backend (`aws`, `lambda`): an ed25519 key pair
//! that kpool generates before the machine is launched, installs on the machine at launch
//! ([`MachineSpec::ssh_public_key`](crate::backends::MachineSpec::ssh_public_key)) and
//! runs the instance's jobs with.
//!
//! It lives in a Secret of the instance's namespace, [`secret_name`] (`<instance>-ssh`), of
//! type `kubernetes.io/ssh-auth`: the private key under `ssh-privatekey` (unencrypted
//! OpenSSH), the public key under `ssh-publickey` (one `authorized_keys` line). The Secret
//! is labelled `kpool.dev/managed-by=kpool` and owned by the instance (an ownerReference,
//! without `blockOwnerDeletion`), so Kubernetes deletes it with the instance.
//!
//! The machine's host key is trusted on first contact and its fingerprint recorded on the
//! Secret ([`HOST_KEY_ANNOTATION`], [`remember_host_key`]); from then on any other host key
//! is refused, also by a restarted controller.
//!
//! [`ensure`] is idempotent and never replaces a key: an existing Secret of this instance is
//! used as it is (its machine may already be running with that key); a Secret of that name
//! that belongs to something else is an error, never overwritten.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use crate::api::instance::Instance;
use crate::backends::TAG_MANAGED_BY;

/// Secret type of the key (the private key under [`PRIVATE_KEY`]).
pub const SECRET_TYPE: &str = "kubernetes.io/ssh-auth";
/// Data key of the private key (OpenSSH format).
pub const PRIVATE_KEY: &str = "ssh-privatekey";
/// Data key of the public key (`ssh-ed25519 AAAA… comment`).
pub const PUBLIC_KEY: &str = "ssh-publickey";
/// Annotation of the key Secret: the SHA-256 fingerprint of the machine's host key, pinned
/// on first contact.
pub const HOST_KEY_ANNOTATION: &str = "kpool.dev/ssh-host-key";
/// Longest object name Kubernetes accepts.
const MAX_NAME: usize = 253;

/// An instance's key pair. `Debug` never shows the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceKey {
    /// Unencrypted OpenSSH private key. Never logged.
    pub private_key: String,
    /// One `authorized_keys` line.
    pub public_key: String,
    /// SHA-256 fingerprint of the machine's host key, recorded on first contact
    /// ([`HOST_KEY_ANNOTATION`]); `None` before.
    pub host_key: Option<String>,
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceKey").field("private_key", &"<redacted>").field("public_key", &self.public_key).finish()
    }
}

/// Why the key of an instance cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The Secret does not exist (yet).
    #[error("Secret {secret} with the SSH key of instance {instance} not found in namespace {namespace}")]
    Missing { secret: String, instance: String, namespace: String },
    /// The Secret exists but cannot be used (another owner, missing or unreadable data).
    #[error("Secret {secret} cannot hold the SSH key of instance {instance}: {why}")]
    Unusable { secret: String, instance: String, why: String },
    #[error("failed to generate an SSH key: {0}")]
    Generate(String),
    #[error("failed to read or create Secret {0}")]
    Kube(String, #[source] Box<kube::Error>),
}

/// The name of the Secret holding the key of `inst`: `<instance>-ssh`, or
/// `kpool-<uid>-ssh` when the instance's name is too long for the suffix.
pub fn secret_name(inst: &Instance) -> String {
    let name = inst.name_any();
    if name.len() + 4 <= MAX_NAME {
        format!("{name}-ssh")
    } else {
        format!("kpool-{}-ssh", inst.uid().unwrap_or_default())
    }
}

/// A fresh ed25519 key pair whose public key carries `comment`.
pub fn generate(comment: &str) -> Result<InstanceKey, KeyError> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| KeyError::Generate("the system's random number generator failed".into()))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment(comment);
    let private_key = key.to_openssh(LineEnding::LF).map_err(|e| KeyError::Generate(e.to_string()))?.to_string();
    let public_key = key.public_key().to_openssh().map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(InstanceKey { private_key, public_key, host_key: None })
}

/// The Secret that holds `key` for `inst`, owned by it.
pub fn secret_for(inst: &Instance, key: &InstanceKey) -> Secret {
    let owner = OwnerReference {
        api_version: Instance::api_version(&()).to_string(),
        kind: Instance::kind(&()).to_string(),
        name: inst.name_any(),
        uid: inst.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(inst)),
            namespace: inst.namespace(),
            labels: Some(BTreeMap::from([(TAG_MANAGED_BY.to_string(), "kpool".to_string())])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.to_string()),
        data: Some(BTreeMap::from([
            (PRIVATE_KEY.to_string(), ByteString(key.private_key.clone().into_bytes())),
            (PUBLIC_KEY.to_string(), ByteString(key.public_key.clone().into_bytes())),
        ])),
        ..Default::default()
    }
}

/// The key `secret` holds for `inst`. The Secret must be owned by this instance (by UID),
/// so a key left by a deleted instance of the same name is never used.
pub fn key_of(secret: &Secret, inst: &Instance) -> Result<InstanceKey, KeyError> {
    let unusable =
        |why: &str| KeyError::Unusable { secret: secret.name_any(), instance: inst.name_any(), why: why.to_string() };
    let uid = inst.uid().unwrap_or_default();
    let owned =
        secret.owner_references().iter().any(|o| o.kind == Instance::kind(&()) && !uid.is_empty() && o.uid == uid);
    if !owned {
        return Err(unusable("it is not owned by this instance (kpool never overwrites it; delete or rename it)"));
    }
    let data = secret.data.as_ref();
    let text = |k: &str| data.and_then(|d| d.get(k)).and_then(|v| String::from_utf8(v.0.clone()).ok());
    let private_key =
        text(PRIVATE_KEY).filter(|k| !k.trim().is_empty()).ok_or_else(|| unusable("no ssh-privatekey"))?;
    let public_key = match text(PUBLIC_KEY).map(|k| k.trim().to_string()).filter(|k| !k.is_empty()) {
        Some(k) => k,
        None => russh::keys::decode_secret_key(&private_key, None)
            .ok()
            .and_then(|k| k.public_key().to_openssh().ok())
            .ok_or_else(|| unusable("no ssh-publickey, and ssh-privatekey is not an unencrypted key"))?,
    };
    let host_key = secret.annotations().get(HOST_KEY_ANNOTATION).cloned().filter(|f| !f.is_empty());
    Ok(InstanceKey { private_key, public_key, host_key })
}

/// Records the fingerprint of the machine's host key on the key Secret, so that every
/// later login, by this controller or the next one, refuses any other key.
pub async fn remember_host_key(client: &kube::Client, inst: &Instance, fingerprint: &str) -> Result<(), KeyError> {
    let name = secret_name(inst);
    let api: Api<Secret> = Api::namespaced(client.clone(), &inst.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"annotations": {HOST_KEY_ANNOTATION: fingerprint}}});
    api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .map_err(|e| KeyError::Kube(name.clone(), Box::new(e)))?;
    tracing::info!(instance = %inst.name_any(), %fingerprint, "pinned the machine's SSH host key");
    Ok(())
}

/// The key of `inst`, from its Secret; [`KeyError::Missing`] when there is none.
pub async fn read(client: &kube::Client, inst: &Instance) -> Result<InstanceKey, KeyError> {
    let ns = inst.namespace().unwrap_or_default();
    let name = secret_name(inst);
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    match api.get_opt(&name).await.map_err(|e| KeyError::Kube(name.clone(), Box::new(e)))? {
        Some(secret) => key_of(&secret, inst),
        None => Err(KeyError::Missing { secret: name, instance: inst.name_any(), namespace: ns }),
    }
}

/// The key of `inst`: the one in its Secret, or a new one in a new Secret (see the module
/// docs). Two concurrent calls agree on one key: the loser of the create reads the winner's.
pub async fn ensure(client: &kube::Client, inst: &Instance) -> Result<InstanceKey, KeyError> {
    match read(client, inst).await {
        Err(KeyError::Missing { .. }) => {}
        other => return other,
    }
    let ns = inst.namespace().unwrap_or_default();
    let comment = format!("kpool:{ns}/{}", inst.name_any());
    let key = generate(&comment)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), &secret_for(inst, &key)).await {
        Ok(_) => {
            tracing::info!(instance = %inst.name_any(), secret = %secret_name(inst), "created the instance's SSH key");
            Ok(key)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => read(client, inst).await,
        Err(e) => Err(KeyError::Kube(secret_name(inst), Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::instance::InstanceSpec;

    fn instance(name: &str, uid: &str) -> Instance {
        let mut i = Instance::new(name, InstanceSpec::default());
        i.metadata.namespace = Some("ml".into());
        i.metadata.uid = Some(uid.into());
        i
    }

    #[test]
    fn generated_keys_are_fresh_ed25519_pairs() {
        let a = generate("kpool:ml/a").unwrap();
        let b = generate("kpool:ml/a").unwrap();
        assert_ne!(a.private_key, b.private_key);
        assert!(a.public_key.starts_with("ssh-ed25519 ") && a.public_key.ends_with(" kpool:ml/a"), "{}", a.public_key);
        let parsed = russh::keys::decode_secret_key(&a.private_key, None).unwrap();
        assert_eq!(parsed.public_key().to_openssh().unwrap(), a.public_key);
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn the_secret_is_owned_labelled_and_read_back() {
        let inst = instance("gpu-1", "u-1");
        let key = generate("c").unwrap();
        let secret = secret_for(&inst, &key);
        assert_eq!(secret.metadata.name.as_deref(), Some("gpu-1-ssh"));
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(secret.labels().get(TAG_MANAGED_BY).map(String::as_str), Some("kpool"));
        let owner = &secret.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Instance", "u-1", Some(true)));
        assert_eq!(owner.block_owner_deletion, None);
        assert_eq!(key_of(&secret, &inst).unwrap(), key);
    }

    #[test]
    fn a_secret_of_another_instance_or_without_a_key_is_refused() {
        let key = generate("c").unwrap();
        let secret = secret_for(&instance("gpu-1", "u-old"), &key);
        let err = key_of(&secret, &instance("gpu-1", "u-new")).unwrap_err().to_string();
        assert!(err.contains("gpu-1-ssh") && err.contains("not owned"), "{err}");
        let mut empty = secret_for(&instance("gpu-1", "u-1"), &key);
        empty.data = None;
        assert!(key_of(&empty, &instance("gpu-1", "u-1")).unwrap_err().to_string().contains("ssh-privatekey"));
        // The public key may be left out: it is derived from the private one.
        let mut private_only = secret_for(&instance("gpu-1", "u-1"), &key);
        private_only.data.as_mut().unwrap().remove(PUBLIC_KEY);
        assert_eq!(key_of(&private_only, &instance("gpu-1", "u-1")).unwrap().public_key, key.public_key);
    }

    #[test]
    fn long_instance_names_fall_back_to_the_uid() {
        assert_eq!(secret_name(&instance(&"a".repeat(249), "u")), format!("{}-ssh", "a".repeat(249)));
        assert_eq!(secret_name(&instance(&"a".repeat(250), "u")), "kpool-u-ssh");
    }
}
