//! Lambda Cloud (lambda.ai) on-demand instances as machines.
//!
//! A `lambda` backend talks to Lambda Cloud's public REST API with its own small JSON
//! client ([`client`]): `Authorization: Bearer <api key>` (the scheme Lambda's OpenAPI
//! document recommends; the key is never logged or put in an error), over hyper and rustls
//! (ring). The HTTP contract is pinned by `tests/contracts/lambda-openapi.json` (Lambda's
//! published OpenAPI document, version 1.8.3, trimmed to the operations used here).
//!
//! - `offers` = `GET /instance-types`: one on-demand offer per instance type and region in
//!   `regions_with_capacity_available`, restricted to the configured `regions` when any are
//!   set. Price = `price_cents_per_hour` / 100; cpu/memory/disk = `specs.vcpus`,
//!   `memory_gib`, `storage_gib`; GPUs = `specs.gpus` of the model and per-GPU memory parsed
//!   from `gpu_description` (`"H100 (80 GB SXM5)"` -> `H100`, 80; best effort), vendor
//!   NVIDIA. `gh200` types are ARM, the others x86.
//! - Ownership: Lambda instances carry a name (at most 64 characters), and kpool launches
//!   each machine with its machine name (`kpool-<uid>`). Instances named `kpool-…` are
//!   kpool's. Which installation's: Lambda's instance tags (`tags` at launch, listed with
//!   each instance; keys are `^[a-z][a-z0-9-:]+$`, so `kpool.dev/…` cannot be one) carry
//!   the backend's [`Owner`] as [`TAG_INSTALLATION`] (`kpool-installation`) and
//!   [`TAG_NAMESPACE`] (`kpool-namespace`); a machine read back shows them as kpool's own
//!   `kpool.dev/installation` and `kpool.dev/namespace` tags.
//! - `create` is idempotent: it first lists the instances (`GET /instances`) and returns
//!   the live one (booting, active, unhealthy) with that name; otherwise it calls
//!   `POST /instance-operations/launch` with `region_name`, `instance_type_name`,
//!   `ssh_key_names`, `file_system_names: []`, `quantity: 1`, `name` and, when the backend
//!   has an owner ([`LambdaBackend::with_owner`]), its two `tags`.
//! - SSH keys: Lambda installs keys registered in the account, and takes exactly one per
//!   launch. When the machine spec carries the instance's own public key
//!   ([`MachineSpec::ssh_public_key`], which kpool runs jobs with), `create` registers it
//!   under the machine name (`GET /ssh-keys`, then `POST /ssh-keys` with `name` and
//!   `public_key` unless a key of that name and content is there; a key of that name with
//!   other content is deleted first) and launches with that key alone; the configured
//!   `ssh_key_names` are used only for specs without a key. A failed launch deletes the
//!   key again. `delete` deletes the key of that name (`DELETE /ssh-keys/{id}`) once the
//!   instance is terminating. Keys stay in the account (named `kpool-<uid>`, public halves
//!   only) when kpool never terminates their machine itself: a launch lost to a controller
//!   crash, a machine Lambda preempted or someone terminated outside kpool. The garbage
//!   collector does not sweep keys yet.
//! - `get` finds the instance by name in `GET /instances` (the most alive one when several
//!   carry it). States: booting -> Pending; active -> Running (address = `ip`); unhealthy ->
//!   Running (the VM is up but failing Lambda's health checks; kpool's own readiness
//!   checks decide, and a transient blip does not cause a replacement); terminating ->
//!   Stopping; terminated, preempted -> Terminated. No such instance -> NotFound (Lambda
//!   drops terminated instances from the list soon).
//! - `delete` terminates (`POST /instance-operations/terminate`) every instance of that
//!   name that is not terminating or gone; NotFound when there is none.
//! - `list_owned` = the instances named `kpool-…` tagged with the backend's owner that are
//!   not terminated (Lambda cannot filter the list: it is filtered here); without an owner
//!   it is InvalidConfig. `list_unattributed` = the instances named `kpool-…` without a
//!   `kpool-installation` tag (launched before machines carried one), not terminated.
//!
//! Errors (Lambda's `error.code`): `instance-operations/launch/insufficient-capacity`,
//! `global/quota-exceeded` -> InsufficientCapacity (the caller moves on to its next offer);
//! `global/invalid-api-key`, `global/account-inactive`, `global/invalid-address`,
//! `global/invalid-parameters`, `instance-operations/launch/file-system-in-wrong-region`,
//! any 401/403 -> InvalidConfig; `global/object-does-not-exist` / 404 -> NotFound, except on
//! launch, where it means the instance type or SSH key does not exist -> InvalidConfig;
//! 429 -> RateLimited (with `Retry-After`); 5xx and transport failures (no answer, an
//! unreadable one) -> Unanswered (a launch may have started the machine: its SSH key is
//! kept, and the controller looks the machine up by name before anything else); anything
//! else -> Other.
//!
//! Limits: Lambda accepts exactly one SSH key per launch, so a machine launched with the
//! instance's own key does not get the configured `ssh_key_names` (reach it by hand with the
//! key from the instance's Secret); the boot disk is the type's.

pub mod client;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use self::client::{CallError, LambdaClient};
use super::{Backend, BackendError, Machine, MachineSpec, MachineState, Owner, TAG_MANAGED_BY};
use crate::api::offer::Offer;
use crate::api::resources::{CpuArch, GpuVendor, Requirements};

/// The API base used unless `endpoint` is set. Lambda's document lists
/// `https://cloud.lambda.ai/` as the production server and `cloud.lambdalabs.com` as
/// deprecated (it redirects, which a POST does not survive).
pub const DEFAULT_ENDPOINT: &str = "https://cloud.lambda.ai/api/v1";
/// Prefix of the names of the instances kpool owns.
pub const OWNED_PREFIX: &str = "kpool-";
/// Lambda tag carrying the owner's installation ([`super::TAG_INSTALLATION`]).
pub const TAG_INSTALLATION: &str = "kpool-installation";
/// Lambda tag carrying the owner's namespace ([`super::TAG_NAMESPACE`]).
pub const TAG_NAMESPACE: &str = "kpool-namespace";
/// How long one call may take, answer included, unless set with [`LambdaBackend::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lambda's limit on instance names.
const MAX_NAME: usize = 64;

/// How to reach Lambda Cloud and what to launch. Built by the factory from a `Backend`
/// object of type `lambda` and its credentials `Secret`.
#[derive(Clone, Default, PartialEq)]
pub struct LambdaConfig {
    /// The API key. Never logged.
    pub api_key: String,
    /// API base URL; [`DEFAULT_ENDPOINT`] when `None`.
    pub endpoint: Option<String>,
    /// Regions (e.g. `us-east-1`) offers are restricted to; every region when empty.
    pub regions: Vec<String>,
    /// Names of SSH keys registered in the Lambda account to put on instances (Lambda
    /// currently accepts exactly one). Required to launch.
    pub ssh_key_names: Vec<String>,
}

impl fmt::Debug for LambdaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LambdaConfig")
            .field("api_key", &"<redacted>")
            .field("endpoint", &self.endpoint)
            .field("regions", &self.regions)
            .field("ssh_key_names", &self.ssh_key_names)
            .finish()
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct LambdaBackend {
    name: String,
    regions: Vec<String>,
    ssh_key_names: Vec<String>,
    owner: Option<Owner>,
    client: LambdaClient,
}

/// Which call failed, for error mapping.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    Launch,
    Other,
}

impl LambdaBackend {
    /// Builds the backend `name` (offers carry it).
    pub fn new(name: &str, config: LambdaConfig) -> Result<LambdaBackend, BackendError> {
        let api_key = config.api_key.trim().to_string();
        if api_key.is_empty() {
            return Err(invalid("api_key", "an API key is required"));
        }
        if api_key.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("api_key", "must not contain whitespace or control characters"));
        }
        let regions = super::region_names(&config.regions).map_err(|e| invalid("regions", &e))?;
        let ssh_key_names: Vec<String> =
            config.ssh_key_names.iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
        let endpoint = config.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()).unwrap_or(DEFAULT_ENDPOINT);
        let client = LambdaClient::new(endpoint, api_key, DEFAULT_TIMEOUT).map_err(BackendError::InvalidConfig)?;
        Ok(LambdaBackend { name: name.to_string(), regions, ssh_key_names, owner: None, client })
    }

    /// Sets whose machines this backend launches and lists: every machine it launches is
    /// tagged with `owner`, and `list_owned` lists only machines tagged so.
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    fn owner(&self) -> Result<&Owner, BackendError> {
        self.owner.as_ref().ok_or_else(|| {
            invalid("owner", "no installation identity: this backend cannot tell its machines from others'")
        })
    }

    /// The live kpool instances (named `kpool-…`, not terminated), as machines.
    async fn kpool_machines(&self) -> Result<Vec<Machine>, BackendError> {
        Ok(self
            .instances()
            .await?
            .iter()
            .filter(|i| i.name().starts_with(OWNED_PREFIX) && state_of(&i.status) != MachineState::Terminated)
            .map(|i| self.machine(i, i.kpool_tags()))
            .collect())
    }

    /// Sets how long one call may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.client.set_timeout(timeout);
        self
    }

    async fn instances(&self) -> Result<Vec<Instance>, BackendError> {
        self.client.get("/instances").await.map_err(|e| map_error("failed to list instances", Op::Other, e))
    }

    /// The instances named `name`, most alive first.
    async fn named(&self, name: &str) -> Result<Vec<Instance>, BackendError> {
        let mut found: Vec<Instance> = self.instances().await?.into_iter().filter(|i| i.name() == name).collect();
        found.sort_by_key(|i| std::cmp::Reverse(rank(&i.status)));
        Ok(found)
    }

    /// The SSH keys registered under `name`.
    async fn keys_named(&self, name: &str) -> Result<Vec<SshKey>, BackendError> {
        let keys: Vec<SshKey> =
            self.client.get("/ssh-keys").await.map_err(|e| map_error("failed to list SSH keys", Op::Other, e))?;
        Ok(keys.into_iter().filter(|k| k.name == name).collect())
    }

    /// Registers `public_key` under `name`, unless that very key is registered already.
    async fn register_key(&self, name: &str, public_key: &str) -> Result<(), BackendError> {
        let existing = self.keys_named(name).await?;
        if existing.iter().any(|k| same_key(&k.public_key, public_key)) {
            return Ok(());
        }
        for stale in existing {
            self.delete_key(name, &stale.id).await?;
        }
        let body = json!({ "name": name, "public_key": public_key });
        let added: SshKey = self
            .client
            .post("/ssh-keys", &body)
            .await
            .map_err(|e| map_error(&format!("failed to register the SSH key of {name}"), Op::Other, e))?;
        tracing::info!(machine = %name, key = %added.id, "registered the instance's SSH key");
        Ok(())
    }

    /// Deletes every SSH key registered under `name`.
    async fn forget_key(&self, name: &str) -> Result<(), BackendError> {
        for key in self.keys_named(name).await? {
            self.delete_key(name, &key.id).await?;
        }
        Ok(())
    }

    async fn delete_key(&self, name: &str, id: &str) -> Result<(), BackendError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(BackendError::Other(format!("SSH key {name} has an unexpected id {id:?}")));
        }
        let deleted: Result<serde_json::Value, _> = self.client.delete(&format!("/ssh-keys/{id}")).await;
        match deleted.map_err(|e| map_error(&format!("failed to delete the SSH key of {name}"), Op::Other, e)) {
            Ok(_) | Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn machine(&self, instance: &Instance, tags: BTreeMap<String, String>) -> Machine {
        let state = state_of(&instance.status);
        Machine {
            name: instance.name().to_string(),
            provider_id: instance.id.clone(),
            state,
            address: if state == MachineState::Running {
                instance.ip.clone().filter(|ip| !ip.is_empty())
            } else {
                None
            },
            tags,
        }
    }
}

#[async_trait]
impl Backend for LambdaBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn offers(&self, _req: &Requirements) -> Result<Vec<Offer>, BackendError> {
        let types: BTreeMap<String, InstanceTypesItem> = self
            .client
            .get("/instance-types")
            .await
            .map_err(|e| map_error("failed to list instance types", Op::Other, e))?;
        let mut offers = Vec::new();
        for item in types.values() {
            for region in &item.regions_with_capacity_available {
                if !self.regions.is_empty() && !self.regions.contains(&region.name) {
                    continue;
                }
                offers.push(offer_of(&self.name, &item.instance_type, &region.name));
            }
        }
        offers.sort_by(|a, b| (&a.instance_type, &a.region).cmp(&(&b.instance_type, &b.region)));
        Ok(offers)
    }

    async fn create(&self, spec: &MachineSpec) -> Result<Machine, BackendError> {
        let offer = &spec.offer;
        if spec.name.is_empty() || spec.name.chars().count() > MAX_NAME {
            return Err(BackendError::InvalidConfig(format!(
                "machine name {:?} must have 1 to {MAX_NAME} characters",
                spec.name
            )));
        }
        if !self.regions.is_empty() && !self.regions.contains(&offer.region) {
            return Err(BackendError::InvalidConfig(format!(
                "offer region {:?} is not one of the backend's regions {:?}",
                offer.region, self.regions
            )));
        }
        if offer.instance_type.is_empty() || offer.region.is_empty() {
            return Err(BackendError::InvalidConfig("the offer has no instance type or region".into()));
        }
        let own_key = spec.ssh_public_key.as_deref().map(str::trim).filter(|k| !k.is_empty());
        if own_key.is_none() && self.ssh_key_names.is_empty() {
            return Err(invalid("ssh_key_names", "an SSH key name is required to launch instances"));
        }
        if let Some(live) = self.named(&spec.name).await?.into_iter().find(|i| is_live(&i.status)) {
            return Ok(self.machine(&live, live.kpool_tags()));
        }
        let key_names = match own_key {
            Some(key) => {
                self.register_key(&spec.name, key).await?;
                vec![spec.name.clone()]
            }
            None => self.ssh_key_names.clone(),
        };
        let mut body = json!({
            "region_name": offer.region,
            "instance_type_name": offer.instance_type,
            "ssh_key_names": key_names,
            "file_system_names": [],
            "quantity": 1,
            "name": spec.name,
        });
        if let Some(owner) = &self.owner {
            body["tags"] = json!([
                { "key": TAG_INSTALLATION, "value": owner.installation },
                { "key": TAG_NAMESPACE, "value": owner.namespace },
            ]);
        }
        let launched: Result<LaunchResponse, _> = self.client.post("/instance-operations/launch", &body).await;
        let launched = match launched {
            Ok(l) => l,
            Err(e) => {
                let context = format!("failed to launch {} in {}", offer.instance_type, offer.region);
                let err = map_error(&context, Op::Launch, e);
                // A launch without an answer may have started the machine with the key:
                // the key stays until the machine is known to be absent and is deleted.
                if own_key.is_some() && !err.outcome_unknown() {
                    if let Err(forget) = self.forget_key(&spec.name).await {
                        tracing::warn!(machine = %spec.name, error = %forget, "failed to delete the SSH key of a failed launch");
                    }
                }
                return Err(err);
            }
        };
        let id = launched
            .instance_ids
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::Unanswered("launch answered without an instance id".into()))?;
        tracing::info!(machine = %spec.name, instance = %id, region = %offer.region, "launched Lambda instance");
        let mut tags = spec.tags.clone();
        tags.insert(TAG_MANAGED_BY.to_string(), "kpool".to_string());
        tags.extend(self.owner.iter().flat_map(Owner::tags));
        Ok(Machine { name: spec.name.clone(), provider_id: id, state: MachineState::Pending, address: None, tags })
    }

    async fn get(&self, name: &str) -> Result<Machine, BackendError> {
        match self.named(name).await?.first() {
            Some(i) => Ok(self.machine(i, i.kpool_tags())),
            None => Err(BackendError::NotFound(format!("no Lambda instance named {name}"))),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), BackendError> {
        let found = self.named(name).await?;
        if found.is_empty() {
            // Gone without kpool (preempted, terminated in the console): its key goes too.
            self.forget_key(name).await?;
            return Err(BackendError::NotFound(format!("no Lambda instance named {name}")));
        }
        let ids: Vec<&str> = found
            .iter()
            .filter(|i| !matches!(i.status.as_str(), "terminating" | "terminated" | "preempted"))
            .map(|i| i.id.as_str())
            .collect();
        if !ids.is_empty() {
            let _: serde_json::Value = self
                .client
                .post("/instance-operations/terminate", &json!({ "instance_ids": ids }))
                .await
                .map_err(|e| map_error(&format!("failed to terminate {name}"), Op::Other, e))?;
            tracing::info!(machine = %name, instances = ?ids, "terminating Lambda instances");
        }
        self.forget_key(name).await
    }

    async fn list_owned(&self) -> Result<Vec<Machine>, BackendError> {
        let owner = self.owner()?.clone();
        Ok(self.kpool_machines().await?.into_iter().filter(|m| owner.owns(&m.tags)).collect())
    }

    async fn list_unattributed(&self) -> Result<Vec<Machine>, BackendError> {
        let owner = self.owner()?.clone();
        let machines = self.kpool_machines().await?;
        Ok(machines.into_iter().filter(|m| super::unattributed_in(&m.tags, &owner.namespace)).collect())
    }
}

#[derive(Debug, Deserialize)]
struct InstanceTypesItem {
    instance_type: InstanceType,
    #[serde(default)]
    regions_with_capacity_available: Vec<Region>,
}

#[derive(Debug, Deserialize)]
struct InstanceType {
    name: String,
    #[serde(default)]
    gpu_description: String,
    price_cents_per_hour: u64,
    specs: Specs,
}

#[derive(Debug, Deserialize)]
struct Specs {
    vcpus: u32,
    memory_gib: u64,
    storage_gib: u64,
    #[serde(default)]
    gpus: u32,
}

#[derive(Debug, Deserialize)]
struct Region {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Instance {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    status: String,
    #[serde(default)]
    tags: Option<Vec<Tag>>,
}

#[derive(Debug, Deserialize)]
struct Tag {
    key: String,
    value: String,
}

impl Instance {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// kpool's tags of this instance: the marker, and the owner's Lambda tags under kpool's
    /// own names.
    fn kpool_tags(&self) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::from([(TAG_MANAGED_BY.to_string(), "kpool".to_string())]);
        for t in self.tags.iter().flatten() {
            match t.key.as_str() {
                TAG_INSTALLATION => tags.insert(super::TAG_INSTALLATION.to_string(), t.value.clone()),
                TAG_NAMESPACE => tags.insert(super::TAG_NAMESPACE.to_string(), t.value.clone()),
                _ => None,
            };
        }
        tags
    }
}

#[derive(Debug, Deserialize)]
struct SshKey {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    public_key: String,
}

/// Whether two `authorized_keys` lines hold the same key (type and data; comments aside).
fn same_key(a: &str, b: &str) -> bool {
    let fields = |s: &str| s.split_whitespace().take(2).map(str::to_string).collect::<Vec<_>>();
    fields(a).len() == 2 && fields(a) == fields(b)
}

#[derive(Debug, Deserialize)]
struct LaunchResponse {
    instance_ids: Vec<String>,
}

fn offer_of(backend: &str, t: &InstanceType, region: &str) -> Offer {
    let (gpu_name, gpu_memory) = if t.specs.gpus > 0 { parse_gpu(&t.gpu_description) } else { (None, 0.0) };
    Offer {
        backend: backend.to_string(),
        region: region.to_string(),
        instance_type: t.name.clone(),
        cpu: t.specs.vcpus,
        cpu_arch: Some(if t.name.contains("gh200") { CpuArch::Arm } else { CpuArch::X86 }),
        memory: t.specs.memory_gib as f64,
        disk: Some(t.specs.storage_gib as f64),
        gpu_count: t.specs.gpus,
        gpu_vendor: gpu_name.as_ref().map(|_| GpuVendor::Nvidia),
        gpu_name,
        gpu_memory,
        compute_capability: None,
        spot: false,
        price: t.price_cents_per_hour as f64 / 100.0,
    }
}

/// GPU model and memory per GPU (GB) from a `gpu_description` such as `"H100 (80 GB SXM5)"`,
/// `"RTX A6000 (48 GB)"` or `"Tesla V100 (16 GB)"`; best effort.
pub fn parse_gpu(description: &str) -> (Option<String>, f64) {
    let (model, rest) = match description.split_once('(') {
        Some((m, r)) => (m.trim(), r),
        None => (description.trim(), ""),
    };
    let model = model.strip_prefix("NVIDIA ").unwrap_or(model);
    let model = model.strip_prefix("Tesla ").unwrap_or(model);
    let model = model.strip_prefix("RTX ").filter(|m| m.starts_with('A')).unwrap_or(model);
    let name = model.split_whitespace().collect::<Vec<_>>().join("");
    let memory = rest
        .split_whitespace()
        .zip(rest.split_whitespace().skip(1))
        .find(|(_, unit)| unit.trim_end_matches(')').eq_ignore_ascii_case("GB"))
        .and_then(|(n, _)| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    ((!name.is_empty()).then_some(name), memory)
}

fn state_of(status: &str) -> MachineState {
    match status {
        "booting" => MachineState::Pending,
        "active" | "unhealthy" => MachineState::Running,
        "terminating" => MachineState::Stopping,
        "terminated" | "preempted" => MachineState::Terminated,
        _ => MachineState::Pending,
    }
}

fn is_live(status: &str) -> bool {
    matches!(status, "booting" | "active" | "unhealthy")
}

fn rank(status: &str) -> u8 {
    match status {
        "active" => 5,
        "unhealthy" => 4,
        "booting" => 3,
        "terminating" => 2,
        "terminated" | "preempted" => 0,
        _ => 1,
    }
}

fn map_error(context: &str, op: Op, err: CallError) -> BackendError {
    let (status, code, retry_after) = match &err {
        CallError::Api { status, code, retry_after, .. } => (*status, code.as_str(), *retry_after),
        CallError::Transport(_) => return BackendError::Unanswered(format!("{context}: {err}")),
    };
    let message = format!("{context}: {err}");
    match code {
        "instance-operations/launch/insufficient-capacity" | "global/quota-exceeded" => {
            return BackendError::InsufficientCapacity(message)
        }
        "global/invalid-api-key"
        | "global/account-inactive"
        | "global/invalid-address"
        | "global/invalid-parameters"
        | "instance-operations/launch/file-system-in-wrong-region" => return BackendError::InvalidConfig(message),
        "global/object-does-not-exist" if op == Op::Launch => return BackendError::InvalidConfig(message),
        "global/object-does-not-exist" => return BackendError::NotFound(message),
        _ => {}
    }
    match status {
        401 | 403 => BackendError::InvalidConfig(message),
        404 if op == Op::Launch => BackendError::InvalidConfig(message),
        404 => BackendError::NotFound(message),
        429 => BackendError::RateLimited { message, retry_after },
        s if s >= 500 => BackendError::Unanswered(message),
        _ => BackendError::Other(message),
    }
}

fn invalid(field: &str, why: &str) -> BackendError {
    BackendError::InvalidConfig(format!("{field}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> CallError {
        CallError::Api { status, code: code.into(), message: "m".into(), retry_after: None }
    }

    #[test]
    fn parses_gpu_descriptions() {
        assert_eq!(parse_gpu("H100 (80 GB SXM5)"), (Some("H100".into()), 80.0));
        assert_eq!(parse_gpu("A10 (24 GB PCIe)"), (Some("A10".into()), 24.0));
        assert_eq!(parse_gpu("RTX A6000 (48 GB)"), (Some("A6000".into()), 48.0));
        assert_eq!(parse_gpu("Tesla V100 (16 GB)"), (Some("V100".into()), 16.0));
        assert_eq!(parse_gpu("GH200 (96 GB)"), (Some("GH200".into()), 96.0));
        assert_eq!(parse_gpu("B200"), (Some("B200".into()), 0.0));
        assert_eq!(parse_gpu(""), (None, 0.0));
    }

    #[test]
    fn compares_keys_without_comments() {
        assert!(same_key("ssh-ed25519 AAAA kpool-1", "ssh-ed25519 AAAA"));
        assert!(!same_key("ssh-ed25519 AAAA", "ssh-ed25519 BBBB"));
        assert!(!same_key("", ""));
    }

    #[test]
    fn maps_states() {
        assert_eq!(state_of("booting"), MachineState::Pending);
        assert_eq!(state_of("active"), MachineState::Running);
        assert_eq!(state_of("unhealthy"), MachineState::Running);
        assert_eq!(state_of("terminating"), MachineState::Stopping);
        assert_eq!(state_of("terminated"), MachineState::Terminated);
        assert_eq!(state_of("preempted"), MachineState::Terminated);
        assert!(rank("active") > rank("booting") && rank("booting") > rank("terminating"));
    }

    #[test]
    fn maps_errors() {
        let cat = |status, code, op| map_error("x", op, api(status, code)).category();
        assert_eq!(cat(400, "instance-operations/launch/insufficient-capacity", Op::Launch), "InsufficientCapacity");
        assert_eq!(cat(400, "global/quota-exceeded", Op::Launch), "InsufficientCapacity");
        assert_eq!(cat(401, "global/invalid-api-key", Op::Other), "InvalidConfig");
        assert_eq!(cat(403, "", Op::Other), "InvalidConfig");
        assert_eq!(cat(400, "global/invalid-parameters", Op::Launch), "InvalidConfig");
        assert_eq!(cat(404, "global/object-does-not-exist", Op::Other), "NotFound");
        assert_eq!(cat(404, "global/object-does-not-exist", Op::Launch), "InvalidConfig");
        assert_eq!(cat(429, "", Op::Other), "RateLimited");
        assert_eq!(cat(500, "global/internal-error", Op::Launch), "Unanswered");
        assert_eq!(cat(502, "", Op::Other), "Unanswered");
        assert_eq!(cat(409, "", Op::Launch), "Other");
        assert_eq!(map_error("x", Op::Launch, CallError::Transport("t".into())).category(), "Unanswered");
        let limited = map_error(
            "x",
            Op::Other,
            CallError::Api {
                status: 429,
                code: String::new(),
                message: String::new(),
                retry_after: Some(Duration::from_secs(7)),
            },
        );
        assert!(
            matches!(limited, BackendError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(7))
        );
    }

    #[test]
    fn parses_error_bodies() {
        let body =
            r#"{"error":{"code":"global/quota-exceeded","message":"Quota exceeded.","suggestion":"Contact Support."}}"#;
        assert_eq!(
            client::parse_error(body),
            Some(("global/quota-exceeded".into(), "Quota exceeded. (Contact Support.)".into()))
        );
        assert_eq!(client::parse_error("<html>502</html>"), None);
    }

    #[test]
    fn config_is_validated_and_redacted() {
        let config = LambdaConfig {
            api_key: "secret-key-123".into(),
            endpoint: Some("http://127.0.0.1:1/api/v1".into()),
            ..Default::default()
        };
        let backend = LambdaBackend::new("l", config.clone()).unwrap();
        assert!(!format!("{config:?}").contains("secret-key-123"));
        assert!(!format!("{backend:?}").contains("secret-key-123"));
        assert!(LambdaBackend::new("l", LambdaConfig { api_key: " ".into(), ..config.clone() }).is_err());
        let bad_region = LambdaConfig { regions: vec!["US East".into()], ..config.clone() };
        assert!(LambdaBackend::new("l", bad_region).is_err());
        let bad_endpoint = LambdaConfig { endpoint: Some("ftp://x".into()), ..config };
        assert!(LambdaBackend::new("l", bad_endpoint).is_err());
    }
}
