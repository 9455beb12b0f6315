//! The `Backend` trait — offers, create, get, delete, list-owned — and its typed errors.
//!
//! A backend is built from a `Backend` object by a [`BackendFactory`]. Every machine a
//! backend launches carries the instance's UID-derived machine name and the tags in
//! [`MachineSpec::tags`], so the garbage collector can find machines no `Instance` owns.
//!
//! Ownership: machines of many kpool installations (clusters, or controllers that each
//! watch one namespace) may share one cloud account. A backend built by the controller's
//! factory carries its [`Owner`] — this installation's identity and the `Backend` object's
//! namespace — stamps both on every machine it launches ([`TAG_INSTALLATION`],
//! [`TAG_NAMESPACE`]) and lists only machines that carry both ([`Backend::list_owned`]),
//! so the garbage collector can never see, let alone delete, another installation's or
//! another namespace's machines. Machines launched before installations were told apart
//! carry neither tag: [`Backend::list_unattributed`] lists them, and the garbage collector
//! only reports them.

pub mod allow;
pub mod aws;
pub mod catalog;
pub mod factory;
pub mod fake;
pub mod http;
pub mod kubernetes;
pub mod lambda;
pub mod ssh;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::api::backend::Backend as BackendObject;
use crate::api::offer::Offer;
use crate::api::resources::Requirements;
pub use crate::core::machine::{BackendError, Machine, MachineState};

/// Tag carrying the owning `Instance`'s UID on every cloud resource.
pub const TAG_INSTANCE_UID: &str = "kpool.dev/instance-uid";
/// Tag carrying the owning `Instance`'s namespace/name.
pub const TAG_INSTANCE: &str = "kpool.dev/instance";
/// Tag carrying the pool name.
pub const TAG_POOL: &str = "kpool.dev/pool";
/// Tag that marks a machine as managed by kpool.
pub const TAG_MANAGED_BY: &str = "kpool.dev/managed-by";
/// Tag carrying the identity of the kpool installation that launched the machine.
pub const TAG_INSTALLATION: &str = "kpool.dev/installation";
/// Tag carrying the namespace of the `Backend` (and `Instance`) the machine was launched for.
pub const TAG_NAMESPACE: &str = "kpool.dev/namespace";

/// Whose machines a backend launches and lists: one installation's, for one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The installation's identity (see [`installation_id`]).
    pub installation: String,
    /// The namespace of the `Backend` object (its instances live there too).
    pub namespace: String,
}

impl Owner {
    /// The tags that mark a machine as this owner's.
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TAG_INSTALLATION.to_string(), self.installation.clone()),
            (TAG_NAMESPACE.to_string(), self.namespace.clone()),
        ])
    }

    /// Whether a machine with these tags is this owner's.
    pub fn owns(&self, tags: &BTreeMap<String, String>) -> bool {
        tags.get(TAG_INSTALLATION) == Some(&self.installation) && tags.get(TAG_NAMESPACE) == Some(&self.namespace)
    }
}

/// Whether a machine with these tags was launched before machines carried an installation
/// identity (kpool's marker, no installation tag), and, when it says which namespace it
/// was launched for (the `kpool.dev/instance` tag, `namespace/name`), whether that is `ns`.
pub fn unattributed_in(tags: &BTreeMap<String, String>, ns: &str) -> bool {
    tags.contains_key(TAG_MANAGED_BY)
        && !tags.contains_key(TAG_INSTALLATION)
        && tags.get(TAG_INSTANCE).is_none_or(|i| i.split_once('/').is_some_and(|(n, _)| n == ns))
}

/// Checks an installation identity (`--cluster-name`, or the `kube-system` Namespace's
/// UID): it is a tag value on every cloud and a label value on Pods, so 1 to 63
/// characters, letters, digits, `-`, `_` and `.`, starting and ending with a letter or
/// digit.
pub fn installation_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an installation name: 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// The machine name kpool gives the machine of the instance with this UID.
pub fn machine_name(uid: &str) -> String {
    format!("kpool-{uid}")
}

/// Checks provider region names (`us-east-1`: lowercase letters, digits and dashes) and
/// drops repeats, keeping the order.
pub fn region_names(regions: &[String]) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for r in regions {
        let valid = !r.is_empty()
            && !r.starts_with('-')
            && r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(format!("{r:?} is not a region name (e.g. \"us-east-1\")"));
        }
        if !names.contains(r) {
            names.push(r.clone());
        }
    }
    Ok(names)
}

/// The tags every cloud resource of `instance`'s machine carries: managed-by, the
/// instance's UID and `namespace/name`, and its pool.
pub fn machine_tags(instance: &crate::api::instance::Instance) -> BTreeMap<String, String> {
    use kube::ResourceExt;
    let pool = instance.status.as_ref().and_then(|s| s.pool.clone()).unwrap_or_default();
    BTreeMap::from([
        (TAG_MANAGED_BY.to_string(), "kpool".to_string()),
        (TAG_INSTANCE_UID.to_string(), instance.uid().unwrap_or_default()),
        (TAG_INSTANCE.to_string(), format!("{}/{}", instance.namespace().unwrap_or_default(), instance.name_any())),
        (TAG_POOL.to_string(), pool),
    ])
}

/// What to launch.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineSpec {
    /// UID-derived name; launching twice with the same name yields the same machine.
    pub name: String,
    /// The offer to launch.
    pub offer: Offer,
    /// Tags to put on every cloud resource of the machine.
    pub tags: BTreeMap<String, String>,
    /// The instance's own SSH public key (`ssh-ed25519 AAAA… comment`), which backends of
    /// VM-like machines (aws, lambda) install for the login user at launch, so that runs can
    /// be executed over SSH with the private half kept in the instance's Secret.
    pub ssh_public_key: Option<String>,
}

/// Where an instance's machine is, as the instance recorded it when the machine was
/// launched: its name, the region of its offer and the provider's id (for `kubernetes`,
/// `namespace/name`). A `Backend`'s configuration may change while its machines live
/// (regions removed, another namespace): finding and deleting a machine asks where it
/// was launched, not only where the backend would launch today, so an edit can never
/// turn a live machine into one kpool reads as gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineRef {
    /// The kpool machine name.
    pub name: String,
    /// The region of the offer the machine was launched from, when recorded.
    pub region: Option<String>,
    /// The provider's id of the machine, when recorded.
    pub provider_id: Option<String>,
}

impl MachineRef {
    /// A machine known only by its name: it is looked for where the backend is
    /// configured to look today.
    pub fn named(name: &str) -> Self {
        MachineRef { name: name.to_string(), ..MachineRef::default() }
    }

    /// The machine an instance's status records (`None` before it has a machine name).
    pub fn of(st: &crate::api::instance::InstanceStatus) -> Option<Self> {
        Some(MachineRef {
            name: st.machine_name.clone()?,
            region: st.offer.as_ref().map(|o| o.region.clone()).filter(|r| !r.is_empty()),
            provider_id: st.provider_id.clone().filter(|p| !p.is_empty()),
        })
    }
}

/// One source of machines. Implementations must be idempotent: `create` with a name
/// that already exists returns that machine; `delete` of a missing machine returns
/// `NotFound`.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The `Backend` object's name; offers carry it.
    fn name(&self) -> &str;
    /// The offers that may fit `req` (a backend may pre-filter; callers rank and filter again).
    async fn offers(&self, req: &Requirements) -> Result<Vec<Offer>, BackendError>;
    /// Launches a machine, or returns the existing one with that name.
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, BackendError>;
    /// Looks a machine up by its kpool machine name.
    async fn get(&self, name: &str) -> Result<Machine, BackendError>;
    /// Starts deleting a machine. `NotFound` once it is gone.
    async fn delete(&self, name: &str) -> Result<(), BackendError>;
    /// Looks a machine up where it was launched (see [`MachineRef`]) as well as where the
    /// backend's current configuration says; `NotFound` only when neither has it.
    /// Backends whose machines do not depend on their configuration's location answer as
    /// [`Backend::get`].
    async fn get_at(&self, machine: &MachineRef) -> Result<Machine, BackendError> {
        self.get(&machine.name).await
    }
    /// Starts deleting a machine where it was launched (see [`MachineRef`]) as well as
    /// where the current configuration says; `NotFound` once neither has it.
    async fn delete_at(&self, machine: &MachineRef) -> Result<(), BackendError> {
        self.delete(&machine.name).await
    }
    /// Every machine of this backend's [`Owner`] (this installation, the `Backend`'s
    /// namespace) that is not gone, for the garbage collector. A backend without an owner
    /// cannot tell its machines from others' and answers InvalidConfig.
    async fn list_owned(&self) -> Result<Vec<Machine>, BackendError>;
    /// Machines that carry kpool's marker but no installation identity (launched before
    /// machines carried one) and, where they say so, were launched for this backend's
    /// namespace. The garbage collector reports them and never deletes them: nothing tells
    /// whose they are. Backends that never launched such machines list none.
    async fn list_unattributed(&self) -> Result<Vec<Machine>, BackendError> {
        Ok(Vec::new())
    }
}

/// Builds backends from `Backend` objects (credentials are read by the factory from
/// `Secret`s of the object's own namespace, never logged).
#[async_trait]
pub trait BackendFactory: Send + Sync {
    async fn build(&self, object: &BackendObject) -> Result<Arc<dyn Backend>, BackendError>;
}
