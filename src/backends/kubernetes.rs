//! Pods in a Kubernetes cluster as machines.
//!
//! A `kubernetes` backend turns nodes of the cluster kpool runs in into offers, and an
//! instance into one Pod pinned to a node, whose requests hold the instance's CPU, memory
//! and GPUs (the container is `pause` by default: it only keeps the slot).
//!
//! Offers (`offers`):
//! - Nodes are listed once, and every Pod of the cluster once (grouped by `spec.nodeName`).
//!   Skipped: unschedulable nodes, nodes whose `Ready` condition is not `True`, nodes with
//!   a `NoSchedule`/`NoExecute` taint the machine Pod would not tolerate (it tolerates
//!   what `spec.kubernetes.tolerations` tolerate, by the scheduler's matching rules, and
//!   the GPU resource's taint when it asks for GPUs), nodes that miss a
//!   label of `spec.kubernetes.nodeSelector`, and nodes outside `spec.regions` when set.
//! - Free capacity is the node's allocatable minus the requests of its non-terminated
//!   Pods (a Pod's request is the larger of its containers' sum and its largest init
//!   container, plus its overhead; requests default to limits, as the API server does).
//!   A node with no free Pod slot is skipped.
//! - A node fits when the requirement's minimums fit its free capacity: CPU (at least 2
//!   when the requirement has no minimum), memory, GPU count (the configured GPU
//!   resource), and disk against `ephemeral-storage` when the node reports it (a node
//!   that reports none is not filtered on disk).
//! - Each fitting node gives one offer: the smallest slice that fits, shaped as the
//!   requirement's minimum (cpu, memory, GPU count, disk), `instanceType` = the node name,
//!   `region` = the node's `topology.kubernetes.io/region` label or `local`, the price
//!   `spec.kubernetes.pricePerHour`, never spot. GPU details come from the labels of
//!   NVIDIA GPU feature discovery: `nvidia.com/gpu.product` (normalised best-effort,
//!   `NVIDIA-A100-SXM4-80GB` -> `A100`) and `nvidia.com/gpu.memory` (MiB, rounded to
//!   whole GB); a slice without GPUs carries no GPU details.
//!
//! Machines (`create`, `get`, `delete`, `list_owned`) — the slot Pod and the job Pod:
//! - An instance's machine is its *slot* Pod, named with the machine name
//!   (`kpool-<instance UID>`). While a run executes on the instance, the Pod executor
//!   ([`crate::exec::pod`]) replaces the slot with the run's *job* Pod: same node, same
//!   requests and limits, tolerations and node selector, named
//!   `<machine name>-run-<run UID>-<attempt>` and labelled `kpool.dev/machine=<machine name>` and
//!   `kpool.dev/run-uid=<run UID>`. When the job ends the slot is created again; the
//!   finished job Pod stays (its log is read from it) until the next job on the machine
//!   starts or the machine is deleted. The backend sees both as one machine.
//! - `create` is idempotent: an existing Pod with the machine name is returned as is.
//!   Otherwise the offer's node is looked up again; a node that is gone, cordoned, not
//!   ready or newly tainted gives InsufficientCapacity, so the caller moves on to its next
//!   offer. Then a Pod is created in the backend's namespace, bound to the offer's node
//!   by a required node affinity on the node's name (as DaemonSets do: the scheduler
//!   places it and checks that it fits, so a node that filled up meanwhile leaves it
//!   Pending instead of a kubelet rejecting it; free capacity counts such Pods on their
//!   node already, see [`target_node`]), requests = limits from the offer,
//!   `restartPolicy: Always`, the configured image, node selector and tolerations, and a
//!   `NoSchedule` toleration of the GPU resource when it asks for GPUs. Tags whose key and value are valid label values become labels, the others
//!   (e.g. `kpool.dev/instance` = `ns/name`) annotations; `kpool.dev/managed-by=kpool`
//!   is always a label, and so are the backend's [`Owner`] labels
//!   (`kpool.dev/installation`, `kpool.dev/namespace` = the `Backend`'s namespace, set by
//!   [`KubernetesBackend::with_owner`]), which win over the spec's tags. Several
//!   `Backend`s (of several namespaces or installations) may put Pods in one namespace;
//!   those labels tell whose each Pod is.
//! - `get` reads the slot Pod by name; when there is none, the Pods labelled
//!   `kpool.dev/machine=<name>` stand for it (a job Pod not finished first), so an instance
//!   stays up while a job runs. `delete` deletes the slot Pod and every Pod with that
//!   label; NotFound when there was none. `list_owned` gives one machine per machine name
//!   (the slot's, or the job Pods' label), so the garbage collector never takes a job
//!   Pod for an orphan of its own; it lists the Pods labelled with the backend's owner
//!   only (a label selector; InvalidConfig without an owner). `list_unattributed` does the
//!   same for Pods with kpool's marker but no `kpool.dev/installation` label whose
//!   `kpool.dev/instance` annotation names the owner's namespace. The tags of a machine
//!   leave out the job's labels. A machine that has only finished job Pods is Pending (its
//!   slot is due to come back), so that deleting it, or collecting it as an orphan, still
//!   deletes those Pods.
//! - Pod -> machine state: `deletionTimestamp` set -> Stopping; `Pending` -> Pending;
//!   `Running` with a `Ready` condition `True` -> Running (address = the Pod IP), else
//!   Pending; `Succeeded`/`Failed` -> Terminated. The provider id is `namespace/name`.
//! - API errors: 404 -> NotFound; 403 "exceeded quota" -> InsufficientCapacity; 429 ->
//!   RateLimited (with the server's `retryAfterSeconds`); 400/422 -> InvalidConfig; 5xx
//!   and no answer -> Unanswered; anything else -> Other.
//!
//! Permissions: `list` on nodes (a node is looked up by a `metadata.name` field selector,
//! not read), `list` on pods in every namespace, `get`, `create` and `delete` on pods in
//! the backend's namespace. (Running jobs needs more; see [`crate::exec::pod`].)
//!
//! Limits: free capacity is read at offer time, so two instances can race for the same
//! slice; the kubelet then rejects the later Pod (`OutOfcpu`, …), which reads as
//! Terminated. Memory and disk sizes are binary GB (`16Gi` = 16GB), like the rest of kpool.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    Affinity, Container, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec,
    ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use super::{
    Backend, BackendError, Machine, MachineRef, MachineSpec, MachineState, Owner, TAG_INSTALLATION, TAG_MANAGED_BY,
    TAG_NAMESPACE,
};
use crate::api::backend::Backend as BackendObject;
use crate::api::offer::Offer;
use crate::api::resources::{CpuArch, GpuVendor, Requirements};

/// Image of the machine Pod when the backend does not set one.
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// Extended resource of GPUs when the backend does not set one.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";
/// CPUs of an offer when the requirement has no minimum.
pub const DEFAULT_CPU: u32 = 2;
/// Value of the `kpool.dev/managed-by` label on machine Pods.
pub const MANAGED_BY: &str = "kpool";
/// Image of a run's job Pod when neither the run nor the backend sets one.
pub const DEFAULT_RUN_IMAGE: &str = "ubuntu:24.04";
/// Label of a job Pod: the machine name of the slot it stands in for.
pub const LABEL_MACHINE: &str = "kpool.dev/machine";
/// Label of a job Pod: the UID of its run.
pub const LABEL_RUN_UID: &str = "kpool.dev/run-uid";
/// Annotation of a job Pod: `namespace/name` of its run.
pub const ANNOTATION_RUN: &str = "kpool.dev/run";

const LABEL_REGION: &str = "topology.kubernetes.io/region";
const LABEL_ARCH: &str = "kubernetes.io/arch";
const LABEL_GPU_PRODUCT: &str = "nvidia.com/gpu.product";
const LABEL_GPU_MEMORY: &str = "nvidia.com/gpu.memory";
const CONTAINER: &str = "machine";
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// See the module docs.
pub struct KubernetesBackend {
    name: String,
    namespace: String,
    image: String,
    run_image: String,
    gpu_resource: String,
    price: f64,
    node_selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
    regions: Vec<String>,
    owner: Option<Owner>,
    nodes: Api<Node>,
    all_pods: Api<Pod>,
    pods: Api<Pod>,
    client: Client,
}

impl KubernetesBackend {
    /// Builds the backend of a `Backend` object of type `kubernetes`.
    pub fn new(client: Client, object: &BackendObject) -> Result<Self, BackendError> {
        let name = object.metadata.name.clone().ok_or_else(|| invalid("metadata.name", "is missing"))?;
        let cfg = object.spec.kubernetes.clone().unwrap_or_default();
        let namespace = cfg.namespace.or_else(|| object.metadata.namespace.clone()).unwrap_or_else(|| "default".into());
        let image = cfg.image.unwrap_or_else(|| DEFAULT_IMAGE.into());
        let run_image = cfg.run_image.unwrap_or_else(|| DEFAULT_RUN_IMAGE.into());
        let gpu_resource = cfg.gpu_resource.unwrap_or_else(|| DEFAULT_GPU_RESOURCE.into());
        let price = cfg.price_per_hour.unwrap_or(0.0);
        if image.is_empty() {
            return Err(invalid("spec.kubernetes.image", "must not be empty"));
        }
        if run_image.is_empty() {
            return Err(invalid("spec.kubernetes.runImage", "must not be empty"));
        }
        if gpu_resource.is_empty() {
            return Err(invalid("spec.kubernetes.gpuResource", "must not be empty"));
        }
        if !price.is_finite() || price < 0.0 {
            return Err(invalid("spec.kubernetes.pricePerHour", &format!("must be a number >= 0, got {price}")));
        }
        for (i, t) in cfg.tolerations.iter().enumerate() {
            check_toleration(t).map_err(|why| invalid(&format!("spec.kubernetes.tolerations[{i}]"), why))?;
        }
        Ok(KubernetesBackend {
            name,
            image,
            run_image,
            gpu_resource,
            price,
            node_selector: cfg.node_selector,
            tolerations: cfg.tolerations,
            regions: object.spec.regions.clone(),
            owner: None,
            nodes: Api::all(client.clone()),
            all_pods: Api::all(client.clone()),
            pods: Api::namespaced(client.clone(), &namespace),
            client,
            namespace,
        })
    }

    /// Sets whose machines this backend launches and lists: every Pod it makes is
    /// labelled with `owner`, and `list_owned` lists only Pods labelled so.
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Namespace of the machine Pods.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Image of the job Pod of a run that sets no image.
    pub fn run_image(&self) -> &str {
        &self.run_image
    }

    /// Whether machine Pods may land on `node` at all (see the module docs).
    fn node_usable(&self, node: &Node, wants_gpu: bool) -> bool {
        let spec = node.spec.clone().unwrap_or_default();
        if spec.unschedulable == Some(true) || !node_ready(node) {
            return false;
        }
        if !spec.taints.unwrap_or_default().iter().all(|t| self.tolerated(t, wants_gpu)) {
            return false;
        }
        let labels = node.labels();
        if !self.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
        self.regions.is_empty() || self.regions.contains(&region_of(node))
    }

    fn tolerated(&self, taint: &Taint, wants_gpu: bool) -> bool {
        if self.tolerations.iter().any(|t| tolerates(t, taint)) {
            return true;
        }
        match taint.effect.as_str() {
            "NoSchedule" => wants_gpu && taint.key == self.gpu_resource,
            "NoExecute" => false,
            _ => true,
        }
    }

    /// The offer of `node` for `req`, when its free capacity fits the minimums.
    fn offer_for(&self, node: &Node, free: &Capacity, req: &Requirements) -> Option<Offer> {
        let cpu = req.cpu.count.min.unwrap_or_else(|| req.cpu.count.max.map_or(DEFAULT_CPU, |m| m.min(DEFAULT_CPU)));
        let memory = req.memory.min.unwrap_or(0.0);
        let gpu_count = req.gpu.as_ref().and_then(|g| g.count.min).unwrap_or(0);
        let disk = req.disk.and_then(|d| d.min);
        let fits = f64::from(cpu) <= free.cpu + 1e-9
            && memory * GIB <= free.memory
            && f64::from(gpu_count) <= free.gpus
            && free.pods >= 1.0
            && match (disk, free.disk) {
                (Some(want), Some(have)) => want * GIB <= have,
                _ => true,
            };
        if !fits {
            return None;
        }
        let labels = node.labels();
        let has_gpu = gpu_count > 0;
        let cpu_arch = labels.get(LABEL_ARCH).and_then(|a| match a.as_str() {
            "amd64" | "386" => Some(CpuArch::X86),
            "arm64" | "arm" => Some(CpuArch::Arm),
            _ => None,
        });
        if req.cpu.arch.is_some_and(|want| cpu_arch.unwrap_or(CpuArch::X86) != want) {
            return None;
        }
        Some(Offer {
            backend: self.name.clone(),
            region: region_of(node),
            instance_type: node.name_any(),
            cpu,
            cpu_arch,
            memory,
            disk,
            gpu_count,
            gpu_name: labels.get(LABEL_GPU_PRODUCT).filter(|_| has_gpu).map(|p| gpu_name_from_product(p)),
            gpu_memory: labels
                .get(LABEL_GPU_MEMORY)
                .filter(|_| has_gpu)
                .and_then(|m| m.trim().parse::<f64>().ok())
                .map_or(0.0, |mib| (mib / 1024.0).round()),
            gpu_vendor: has_gpu.then(|| gpu_vendor_of(&self.gpu_resource)).flatten(),
            compute_capability: None,
            spot: false,
            price: self.price,
        })
    }

    /// The slot Pod that holds the machine of `spec` (not created).
    pub fn pod_for(&self, spec: &MachineSpec) -> Pod {
        let offer = &spec.offer;
        let mut resources = BTreeMap::new();
        if offer.cpu > 0 {
            resources.insert("cpu".to_string(), Quantity(offer.cpu.to_string()));
        }
        if offer.memory > 0.0 {
            resources.insert("memory".to_string(), memory_quantity(offer.memory));
        }
        if offer.gpu_count > 0 {
            resources.insert(self.gpu_resource.clone(), Quantity(offer.gpu_count.to_string()));
        }
        let mut labels = BTreeMap::from([(TAG_MANAGED_BY.to_string(), MANAGED_BY.to_string())]);
        let mut annotations = BTreeMap::new();
        for (k, v) in &spec.tags {
            if k == TAG_MANAGED_BY || !is_qualified_name(k) {
                continue;
            }
            if is_label_value(v) {
                labels.insert(k.clone(), v.clone());
            } else {
                annotations.insert(k.clone(), v.clone());
            }
        }
        // Both are label values: an installation id is checked as one, a namespace is one.
        labels.extend(self.owner.iter().flat_map(Owner::tags));
        let mut tolerations = self.tolerations.clone();
        if offer.gpu_count > 0 {
            tolerations.push(Toleration {
                key: Some(self.gpu_resource.clone()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            });
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(spec.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                affinity: Some(on_node(&offer.instance_type)),
                node_selector: (!self.node_selector.is_empty()).then(|| self.node_selector.clone()),
                restart_policy: Some("Always".into()),
                automount_service_account_token: Some(false),
                tolerations: (!tolerations.is_empty()).then_some(tolerations),
                containers: vec![Container {
                    name: CONTAINER.into(),
                    image: Some(self.image.clone()),
                    resources: Some(ResourceRequirements {
                        requests: Some(resources.clone()),
                        limits: Some(resources),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    /// The machine a Pod stands for: the slot Pod's, or the one a job Pod stands in for.
    fn machine_of(&self, pod: &Pod) -> Machine {
        let status = pod.status.clone().unwrap_or_default();
        let ready = status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
        let state = if pod.metadata.deletion_timestamp.is_some() {
            MachineState::Stopping
        } else {
            let job = pod.labels().contains_key(LABEL_MACHINE);
            match status.phase.as_deref() {
                Some("Running") if ready => MachineState::Running,
                // A finished job: its slot is due to come back.
                Some("Succeeded") | Some("Failed") if job => MachineState::Pending,
                Some("Succeeded") | Some("Failed") => MachineState::Terminated,
                _ => MachineState::Pending,
            }
        };
        let tags = pod
            .labels()
            .iter()
            .chain(pod.annotations().iter())
            .filter(|(k, _)| {
                k.starts_with("kpool.dev/") && ![LABEL_MACHINE, LABEL_RUN_UID, ANNOTATION_RUN].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Machine {
            name: machine_name_of(pod),
            provider_id: format!("{}/{}", pod.namespace().unwrap_or_else(|| self.namespace.clone()), pod.name_any()),
            address: (state == MachineState::Running).then_some(status.pod_ip).flatten(),
            state,
            tags,
        }
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn offers(&self, req: &Requirements) -> Result<Vec<Offer>, BackendError> {
        let nodes = self.nodes.list(&ListParams::default()).await.map_err(|e| api_error("list nodes", e))?;
        let pods = self.all_pods.list(&ListParams::default()).await.map_err(|e| api_error("list pods", e))?;
        let mut used: HashMap<String, Capacity> = HashMap::new();
        for pod in &pods.items {
            let Some(node) = target_node(pod) else { continue };
            if matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded") | Some("Failed")) {
                continue;
            }
            used.entry(node.to_string()).or_default().add(&pod_requests(pod, &self.gpu_resource));
        }
        let wants_gpu = req.gpu.as_ref().and_then(|g| g.count.min).unwrap_or(0) > 0;
        let mut offers: Vec<Offer> = nodes
            .items
            .iter()
            .filter(|node| self.node_usable(node, wants_gpu))
            .filter_map(|node| {
                let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
                let mut free = Capacity::of(alloc, &self.gpu_resource);
                free.subtract(&used.get(&node.name_any()).copied().unwrap_or_default());
                self.offer_for(node, &free, req)
            })
            .collect();
        offers.sort_by(|a, b| a.instance_type.cmp(&b.instance_type));
        Ok(offers)
    }

    async fn create(&self, spec: &MachineSpec) -> Result<Machine, BackendError> {
        if let Some(pod) = self.pods.get_opt(&spec.name).await.map_err(|e| api_error("get pod", e))? {
            return Ok(self.machine_of(&pod));
        }
        if spec.offer.instance_type.is_empty() {
            return Err(BackendError::InvalidConfig("offer has no node name (instanceType)".into()));
        }
        // Listed by name rather than read: offers need `list` on nodes, and nothing more.
        let params = ListParams::default().fields(&format!("metadata.name={}", spec.offer.instance_type));
        let node = self.nodes.list(&params).await.map_err(|e| api_error("list nodes", e))?.items.into_iter().next();
        if !node.is_some_and(|n| self.node_usable(&n, spec.offer.gpu_count > 0)) {
            return Err(BackendError::InsufficientCapacity(format!(
                "node {:?} is gone or no longer takes machines",
                spec.offer.instance_type
            )));
        }
        match self.pods.create(&PostParams::default(), &self.pod_for(spec)).await {
            Ok(pod) => Ok(self.machine_of(&pod)),
            Err(kube::Error::Api(s)) if s.is_already_exists() => self.get(&spec.name).await,
            Err(e) => Err(api_error("create pod", e)),
        }
    }

    async fn get(&self, name: &str) -> Result<Machine, BackendError> {
        self.get_in(&self.pods, name).await
    }

    async fn delete(&self, name: &str) -> Result<(), BackendError> {
        self.delete_in(&self.pods, name).await
    }

    async fn get_at(&self, machine: &MachineRef) -> Result<Machine, BackendError> {
        let name = machine.name.as_str();
        let places = self.namespaces_of(machine);
        for pods in &places {
            match self.get_in(pods, name).await {
                Err(BackendError::NotFound(_)) => continue,
                other => return other,
            }
        }
        Err(BackendError::NotFound(format!("no pod of machine {name} in namespace {}", self.names_of(machine))))
    }

    async fn delete_at(&self, machine: &MachineRef) -> Result<(), BackendError> {
        let name = machine.name.as_str();
        let mut found = false;
        for pods in &self.namespaces_of(machine) {
            match self.delete_in(pods, name).await {
                Ok(()) => found = true,
                Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if !found {
            return Err(BackendError::NotFound(format!(
                "no pod of machine {name} in namespace {}",
                self.names_of(machine)
            )));
        }
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<Machine>, BackendError> {
        let owner = self.owner()?;
        let selector = format!(
            "{TAG_MANAGED_BY}={MANAGED_BY},{TAG_INSTALLATION}={},{TAG_NAMESPACE}={}",
            owner.installation, owner.namespace
        );
        let pods =
            self.pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| api_error("list pods", e))?;
        // The API server selected already; a Pod that is not the owner's never leaves here.
        let owned = pods.items.iter().filter(|p| owner.owns(p.labels()));
        Ok(self.machines_of(owned))
    }

    async fn list_unattributed(&self) -> Result<Vec<Machine>, BackendError> {
        let owner = self.owner()?;
        let selector = format!("{TAG_MANAGED_BY}={MANAGED_BY},!{TAG_INSTALLATION}");
        let pods =
            self.pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| api_error("list pods", e))?;
        let machines = self.machines_of(pods.items.iter());
        Ok(machines.into_iter().filter(|m| super::unattributed_in(&m.tags, &owner.namespace)).collect())
    }
}

impl KubernetesBackend {
    fn owner(&self) -> Result<&Owner, BackendError> {
        self.owner
            .as_ref()
            .ok_or_else(|| invalid("owner", "no installation identity: this backend cannot tell its Pods from others'"))
    }

    /// One machine per machine name of `pods`: the slot Pod's, else the job Pod standing in.
    fn machines_of<'a>(&self, pods: impl Iterator<Item = &'a Pod>) -> Vec<Machine> {
        let mut by_machine: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for pod in pods {
            by_machine.entry(machine_name_of(pod)).or_default().push(pod);
        }
        by_machine
            .into_iter()
            .filter_map(|(name, pods)| {
                let slot = pods.iter().copied().find(|p| p.name_any() == name);
                slot.or_else(|| stand_in(pods.into_iter())).map(|p| self.machine_of(p))
            })
            .collect()
    }

    /// The job Pods standing in for machine `name` (finished ones included).
    async fn job_pods(&self, pods: &Api<Pod>, name: &str) -> Result<Vec<Pod>, BackendError> {
        let params = ListParams::default().labels(&format!("{LABEL_MACHINE}={name}"));
        Ok(pods.list(&params).await.map_err(|e| api_error("list pods", e))?.items)
    }

    /// Machine `name`'s slot Pod in `pods`' namespace, else the job Pod standing in.
    async fn get_in(&self, pods: &Api<Pod>, name: &str) -> Result<Machine, BackendError> {
        if let Some(slot) = pods.get_opt(name).await.map_err(|e| api_error("get pod", e))? {
            return Ok(self.machine_of(&slot));
        }
        let jobs = self.job_pods(pods, name).await?;
        let job = stand_in(jobs.iter()).ok_or_else(|| BackendError::NotFound(format!("no pod of machine {name}")))?;
        Ok(self.machine_of(job))
    }

    /// Deletes machine `name`'s slot and job Pods in `pods`' namespace.
    async fn delete_in(&self, pods: &Api<Pod>, name: &str) -> Result<(), BackendError> {
        let mut found = match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(api_error("delete pod", e)),
        };
        for job in self.job_pods(pods, name).await? {
            found = true;
            if job.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match pods.delete(&job.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_error("delete pod", e)),
            }
        }
        if !found {
            return Err(BackendError::NotFound(format!("no pod of machine {name}")));
        }
        Ok(())
    }

    /// The namespace `machine` was launched in, from its recorded provider id
    /// (`namespace/name`), when that is not the backend's current namespace.
    fn recorded_namespace<'a>(&self, machine: &'a MachineRef) -> Option<&'a str> {
        let (ns, _) = machine.provider_id.as_deref()?.split_once('/')?;
        Some(ns).filter(|ns| !ns.is_empty() && *ns != self.namespace)
    }

    /// Where `machine`'s Pods are looked for: the namespace it was launched in (even when
    /// `spec.kubernetes.namespace` names another now), then the current one.
    fn namespaces_of(&self, machine: &MachineRef) -> Vec<Api<Pod>> {
        let recorded = self.recorded_namespace(machine).map(|ns| Api::namespaced(self.client.clone(), ns));
        recorded.into_iter().chain([self.pods.clone()]).collect()
    }

    fn names_of(&self, machine: &MachineRef) -> String {
        match self.recorded_namespace(machine) {
            Some(ns) => format!("{ns} or {}", self.namespace),
            None => self.namespace.clone(),
        }
    }
}

/// A required node affinity that only node `node` satisfies (by `metadata.name`).
fn on_node(node: &str) -> Affinity {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
        ..NodeSelectorTerm::default()
    };
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector { node_selector_terms: vec![term] }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The node a Pod is on (`nodeName`) or, not scheduled yet, the one node its required
/// affinity allows by name (kpool's machine Pods): either way its requests are taken there.
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_deref() {
        return Some(node);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    match terms.as_slice() {
        [term] => match term.match_fields.as_deref()? {
            [r] if r.key == "metadata.name" && r.operator == "In" => match r.values.as_deref()? {
                [node] => Some(node.as_str()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Whether `t` tolerates `taint`, by the scheduler's rules: the effect matches (or `t` has
/// none), the key matches (or `t` has none, with `Exists`), and the value matches (`Equal`,
/// the default) or does not matter (`Exists`).
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = t.key.as_deref().is_none_or(|k| k.is_empty() || k == taint.key);
    let value_ok = match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    };
    effect_ok && key_ok && value_ok
}

/// Why the API server would refuse toleration `t` in a Pod, if it would.
fn check_toleration(t: &Toleration) -> Result<(), &'static str> {
    let operator = t.operator.as_deref().unwrap_or("");
    if !["", "Equal", "Exists"].contains(&operator) {
        return Err("operator must be Equal or Exists");
    }
    if t.key.as_deref().unwrap_or("").is_empty() && operator != "Exists" {
        return Err("a toleration without a key must have operator Exists (it tolerates every taint)");
    }
    if operator == "Exists" && !t.value.as_deref().unwrap_or("").is_empty() {
        return Err("a toleration with operator Exists has no value");
    }
    if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_deref().unwrap_or("")) {
        return Err("effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    if t.toleration_seconds.is_some() && !["", "NoExecute"].contains(&t.effect.as_deref().unwrap_or("")) {
        return Err("tolerationSeconds needs effect NoExecute");
    }
    Ok(())
}

/// The machine name of a slot Pod (its name) or of a job Pod (its `kpool.dev/machine` label).
fn machine_name_of(pod: &Pod) -> String {
    pod.labels().get(LABEL_MACHINE).cloned().unwrap_or_else(|| pod.name_any())
}

/// Which of a machine's job Pods stands for it: one not finished, else any.
fn stand_in<'a>(mut pods: impl Iterator<Item = &'a Pod> + Clone) -> Option<&'a Pod> {
    let finished = |p: &Pod| matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    pods.clone().find(|p| !finished(p)).or_else(|| pods.next())
}

/// Amounts of the resources offers are made of: cores, bytes, GPUs, bytes, Pods.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Capacity {
    cpu: f64,
    memory: f64,
    gpus: f64,
    /// `ephemeral-storage`; `None` when not reported.
    disk: Option<f64>,
    /// Pod slots; infinite when the node does not report `pods`.
    pods: f64,
}

impl Capacity {
    fn of(list: Option<&BTreeMap<String, Quantity>>, gpu_resource: &str) -> Capacity {
        let get = |k: &str| list.and_then(|l| l.get(k)).and_then(|q| parse_quantity(&q.0));
        Capacity {
            cpu: get("cpu").unwrap_or(0.0),
            memory: get("memory").unwrap_or(0.0),
            gpus: get(gpu_resource).unwrap_or(0.0),
            disk: get("ephemeral-storage"),
            pods: get("pods").unwrap_or(f64::INFINITY),
        }
    }

    fn add(&mut self, o: &Capacity) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.gpus += o.gpus;
        self.disk = Some(self.disk.unwrap_or(0.0) + o.disk.unwrap_or(0.0));
        self.pods += o.pods;
    }

    fn subtract(&mut self, o: &Capacity) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.gpus -= o.gpus;
        self.disk = self.disk.map(|d| d - o.disk.unwrap_or(0.0));
        self.pods -= o.pods;
    }

    fn max(self, o: Capacity) -> Capacity {
        Capacity {
            cpu: self.cpu.max(o.cpu),
            memory: self.memory.max(o.memory),
            gpus: self.gpus.max(o.gpus),
            disk: Some(self.disk.unwrap_or(0.0).max(o.disk.unwrap_or(0.0))),
            pods: self.pods.max(o.pods),
        }
    }
}

/// What a Pod holds on its node: max(sum of containers, largest init container) plus
/// overhead, one Pod slot.
fn pod_requests(pod: &Pod, gpu_resource: &str) -> Capacity {
    let Some(spec) = pod.spec.as_ref() else { return Capacity::default() };
    let of = |c: &Container| {
        let r = c.resources.as_ref();
        let mut merged = r.and_then(|r| r.limits.clone()).unwrap_or_default();
        merged.extend(r.and_then(|r| r.requests.clone()).unwrap_or_default());
        let mut cap = Capacity::of(Some(&merged), gpu_resource);
        cap.pods = 0.0;
        cap
    };
    let mut total = Capacity::default();
    for c in &spec.containers {
        total.add(&of(c));
    }
    for c in spec.init_containers.iter().flatten() {
        total = total.max(of(c));
    }
    let mut overhead = Capacity::of(spec.overhead.as_ref(), gpu_resource);
    overhead.pods = 1.0;
    total.add(&overhead);
    total
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn region_of(node: &Node) -> String {
    node.labels().get(LABEL_REGION).cloned().unwrap_or_else(|| "local".into())
}

fn gpu_vendor_of(resource: &str) -> Option<GpuVendor> {
    match resource.split('/').next() {
        Some("nvidia.com") => Some(GpuVendor::Nvidia),
        Some("amd.com") => Some(GpuVendor::Amd),
        Some("gpu.intel.com") => Some(GpuVendor::Intel),
        Some("google.com") => Some(GpuVendor::Tpu),
        _ => None,
    }
}

/// The GPU model in a GPU feature discovery product label, best-effort:
/// `NVIDIA-A100-SXM4-80GB` -> `A100`, `NVIDIA-GeForce-RTX-4090` -> `RTX4090`,
/// `Tesla-T4` -> `T4`, `NVIDIA-H100-NVL` -> `H100NVL`, `NVIDIA-RTX-A6000` -> `A6000`.
pub fn gpu_name_from_product(product: &str) -> String {
    let tokens: Vec<&str> = product
        .split(['-', ' ', '_'])
        .filter(|t| !t.is_empty())
        .filter(|t| !["nvidia", "tesla", "geforce", "quadro"].contains(&t.to_ascii_lowercase().as_str()))
        .collect();
    let Some(first) = tokens.first() else { return product.to_string() };
    let mut name = first.to_string();
    let mut rest = &tokens[1..];
    if first.eq_ignore_ascii_case("RTX") {
        match rest.first() {
            Some(t) if t.starts_with(|c: char| c.is_ascii_digit()) => name = format!("RTX{t}"),
            Some(t) => name = t.to_string(),
            None => return name,
        }
        rest = &rest[1..];
    }
    for suffix in ["Ti", "SUPER", "NVL"] {
        if rest.first().is_some_and(|t| t.eq_ignore_ascii_case(suffix)) {
            name.push_str(suffix);
            rest = &rest[1..];
        }
    }
    name
}

/// A memory size in (binary) GB as a quantity: `16Gi`, or whole MiB rounded up.
fn memory_quantity(gb: f64) -> Quantity {
    if gb.fract() == 0.0 {
        Quantity(format!("{}Gi", gb as u64))
    } else {
        Quantity(format!("{}Mi", (gb * 1024.0).ceil() as u64))
    }
}

/// A Kubernetes quantity (`500m`, `2`, `16Gi`, `8000Mi`, `1G`, `1e3`) as a plain number
/// (cores for CPU, bytes for memory and storage). `None` when it does not parse.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-'))).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.len() > 1 && (e.starts_with('e') || e.starts_with('E')) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(value * factor)
}

/// CPU cores of a quantity (`500m` -> 0.5).
pub fn cpu_cores(q: &str) -> Option<f64> {
    parse_quantity(q)
}

/// Binary GB of a memory quantity (`16Gi` -> 16, `1G` -> 0.93).
pub fn memory_gb(q: &str) -> Option<f64> {
    parse_quantity(q).map(|bytes| bytes / GIB)
}

/// Whether `s` is a valid label value (empty, or up to 63 alphanumerics, `-`, `_`, `.`,
/// starting and ending alphanumeric).
fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `s` is a valid label or annotation key: `[prefix/]name`, the prefix a DNS
/// subdomain.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    prefix_ok && is_label_name(name)
}

fn invalid(field: &str, why: &str) -> BackendError {
    BackendError::InvalidConfig(format!("{field}: {why}"))
}

/// Maps an API error of operation `op` ("create pod") to the backend error taxonomy.
pub fn api_error(op: &str, err: kube::Error) -> BackendError {
    let kube::Error::Api(status) = err else {
        // No answer (or none that could be read): the API server may have acted.
        return BackendError::Unanswered(format!("failed to {op}: {err}"));
    };
    let message = format!("failed to {op}: {}", status.message);
    match status.code {
        404 => BackendError::NotFound(message),
        403 if status.message.contains("exceeded quota") => BackendError::InsufficientCapacity(message),
        429 => BackendError::RateLimited {
            message,
            retry_after: status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s))),
        },
        400 | 422 => BackendError::InvalidConfig(message),
        code if code >= 500 => BackendError::Unanswered(message),
        _ => BackendError::Other(message),
    }
}

#[cfg(test)]
mod tests;
