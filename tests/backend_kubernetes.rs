//! The `kubernetes` backend against the in-memory API (kube-fake-client): offers from
//! nodes and their free capacity, machine Pods, and the factory.
//!
//! The fake neither schedules Pods nor runs kubelets, so Pod phases are set by replacing
//! the Pod's status through the API, as a kubelet would.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodSpec, PodStatus, ResourceRequirements,
    Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use kube_fake_client::interceptor::{CreateContext, Funcs};
use kube_fake_client::ClientBuilder;

use kpool::api::backend::{Backend as BackendObject, BackendSpec, BackendType, KubernetesBackendConfig};
use kpool::api::offer::Offer;
use kpool::api::resources::{CpuArch, GpuVendor, Requirements, ResourcesSpec};
use kpool::backends::factory::DefaultFactory;
use kpool::backends::kubernetes::{KubernetesBackend, DEFAULT_IMAGE, LABEL_MACHINE, LABEL_RUN_UID};
use kpool::backends::{
    Backend, BackendError, BackendFactory, MachineRef, MachineSpec, MachineState, Owner, TAG_INSTALLATION,
    TAG_INSTANCE, TAG_INSTANCE_UID, TAG_MANAGED_BY, TAG_NAMESPACE, TAG_POOL,
};
use kpool::core::offers::offer_fits;
use kpool::core::policy::{EffectivePolicy, Origin};

const NS: &str = "ml";
/// The installation the backends under test belong to.
const INSTALLATION: &str = "kpool-test";

fn owner() -> Owner {
    Owner { installation: INSTALLATION.into(), namespace: NS.into() }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A Ready, schedulable node with this allocatable capacity.
fn node(name: &str, alloc: &[(&str, &str)], node_labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels(node_labels)), ..Default::default() },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(quantities(alloc)),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn cpu_node(name: &str, cpu: &str, memory: &str) -> Node {
    node(name, &[("cpu", cpu), ("memory", memory), ("pods", "110")], &[("kubernetes.io/arch", "amd64")])
}

/// A Pod of someone else, bound to `node`, requesting `cpu`.
fn workload(name: &str, ns: &str, node: &str, cpu: &str, phase: &str) -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(&[("cpu", cpu), ("memory", "1Gi")])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus { phase: Some(phase.into()), ..Default::default() }),
    }
}

fn backend_object(name: &str, config: Option<KubernetesBackendConfig>) -> BackendObject {
    let mut b = BackendObject::new(
        name,
        BackendSpec { type_: BackendType::Kubernetes, kubernetes: config, ..Default::default() },
    );
    b.metadata.namespace = Some(NS.into());
    b
}

async fn client(nodes: Vec<Node>, pods: Vec<Pod>) -> Client {
    ClientBuilder::new()
        .with_objects(nodes)
        .with_objects(pods)
        .with_status_subresource::<Pod>()
        .with_status_subresource::<Node>()
        .build()
        .await
        .expect("fake client")
}

async fn backend_with(
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    config: Option<KubernetesBackendConfig>,
) -> (Client, KubernetesBackend) {
    let client = client(nodes, pods).await;
    let backend =
        KubernetesBackend::new(client.clone(), &backend_object("k8s", config)).expect("backend").with_owner(owner());
    (client, backend)
}

fn req(cpu: &str, memory: &str, gpu: Option<&str>, disk: Option<&str>) -> Requirements {
    ResourcesSpec {
        cpu: Some(cpu.into()),
        memory: Some(memory.into()),
        gpu: gpu.map(Into::into),
        disk: disk.map(Into::into),
        ..Default::default()
    }
    .resolve()
    .expect("valid requirements")
}

fn node_names(offers: &[Offer]) -> Vec<&str> {
    offers.iter().map(|o| o.instance_type.as_str()).collect()
}

fn machine_spec(name: &str, offer: Offer) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        offer,
        tags: labels(&[
            (TAG_MANAGED_BY, "kpool"),
            (TAG_INSTANCE_UID, "0f8fad5b-d9cb-469f-a165-70867728950e"),
            (TAG_INSTANCE, "ml/a100-1"),
            (TAG_POOL, "default-pool"),
        ]),
        ssh_public_key: None,
    }
}

async fn first_offer(backend: &KubernetesBackend, r: &Requirements) -> Offer {
    backend.offers(r).await.expect("offers").into_iter().next().expect("an offer")
}

/// Replaces the Pod's status as a kubelet would.
async fn set_pod_status(client: &Client, ns: &str, name: &str, phase: &str, ready: bool, ip: Option<&str>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pod = pods.get(name).await.expect("pod");
    pod.status = Some(PodStatus {
        phase: Some(phase.into()),
        pod_ip: ip.map(Into::into),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    pods.replace_status(name, &PostParams::default(), &pod).await.expect("status");
}

#[tokio::test]
async fn offers_follow_the_free_capacity_of_each_node() {
    let nodes = vec![cpu_node("node-a", "8", "32Gi"), cpu_node("node-b", "8", "32Gi")];
    let pods = vec![
        // 6 of node-a's 8 CPUs are taken.
        workload("busy", "other", "node-a", "6", "Running"),
        // A finished Pod holds nothing.
        workload("done", "other", "node-b", "8", "Succeeded"),
    ];
    let config = KubernetesBackendConfig { price_per_hour: Some(0.25), ..Default::default() };
    let (_, backend) = backend_with(nodes, pods, Some(config)).await;

    let small = backend.offers(&req("2..", "8GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&small), ["node-a", "node-b"]);
    let big = backend.offers(&req("4..", "8GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&big), ["node-b"]);
    let o = &big[0];
    assert_eq!((o.backend.as_str(), o.region.as_str()), ("k8s", "local"));
    assert_eq!((o.cpu, o.memory, o.gpu_count, o.disk), (4, 8.0, 0, Some(100.0)));
    assert_eq!((o.gpu_name.clone(), o.gpu_vendor, o.cpu_arch), (None, None, Some(CpuArch::X86)));
    assert_eq!((o.price, o.spot), (0.25, false));
    // node-a has 2 CPUs and 31GB left: memory counts too.
    let memory = backend.offers(&req("2", "31GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&memory), ["node-a", "node-b"]);
    let memory = backend.offers(&req("2", "32GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&memory), ["node-b"]);
}

#[tokio::test]
async fn unschedulable_not_ready_and_tainted_nodes_are_skipped() {
    let mut cordoned = cpu_node("cordoned", "8", "32Gi");
    cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
    let mut not_ready = cpu_node("not-ready", "8", "32Gi");
    not_ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
    let mut unknown = cpu_node("no-conditions", "8", "32Gi");
    unknown.status.as_mut().unwrap().conditions = None;
    let mut control_plane = cpu_node("control-plane", "8", "32Gi");
    control_plane.spec.as_mut().unwrap().taints = Some(vec![Taint {
        key: "node-role.kubernetes.io/control-plane".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    }]);
    let nodes = vec![cordoned, not_ready, unknown, control_plane, cpu_node("ok", "8", "32Gi")];
    let (_, backend) = backend_with(nodes, vec![], None).await;
    let offers = backend.offers(&req("2..", "8GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&offers), ["ok"]);
}

fn a100_node() -> Node {
    let mut n = node(
        "gpu-1",
        &[("cpu", "96"), ("memory", "1000Gi"), ("nvidia.com/gpu", "8"), ("ephemeral-storage", "2000Gi")],
        &[
            ("topology.kubernetes.io/region", "us-east-1"),
            ("kubernetes.io/arch", "amd64"),
            ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-80GB"),
            ("nvidia.com/gpu.memory", "81920"),
        ],
    );
    n.spec.as_mut().unwrap().taints =
        Some(vec![Taint { key: "nvidia.com/gpu".into(), effect: "NoSchedule".into(), ..Default::default() }]);
    n
}

#[tokio::test]
async fn gpu_node_labels_describe_the_offer() {
    let nodes = vec![a100_node(), cpu_node("cpu-1", "96", "1000Gi")];
    let pods = vec![{
        let mut p = workload("trainer", "other", "gpu-1", "8", "Running");
        let res = p.spec.as_mut().unwrap().containers[0].resources.as_mut().unwrap();
        res.limits = Some(quantities(&[("nvidia.com/gpu", "6")]));
        p
    }];
    let (_, backend) = backend_with(nodes, pods, None).await;

    let r = req("8..", "64GB..", Some("A100:80GB:2"), Some("200GB.."));
    let offers = backend.offers(&r).await.unwrap();
    assert_eq!(node_names(&offers), ["gpu-1"]);
    let o = &offers[0];
    assert_eq!((o.cpu, o.memory, o.disk, o.gpu_count), (8, 64.0, Some(200.0), 2));
    assert_eq!(o.gpu_name.as_deref(), Some("A100"));
    assert_eq!(o.gpu_memory, 80.0);
    assert_eq!(o.gpu_vendor, Some(GpuVendor::Nvidia));
    assert_eq!(o.region, "us-east-1");
    // The offer is one the controller accepts for this requirement.
    assert!(offer_fits(&r, &EffectivePolicy::defaults(Origin::Manual), o));

    // 6 of the 8 GPUs are held by a limit-only request: 3 do not fit.
    assert!(backend.offers(&req("8..", "64GB..", Some("A100:3"), None)).await.unwrap().is_empty());
    // The GPU taint keeps CPU-only machines off the GPU node.
    let cpu_only = backend.offers(&req("8..", "64GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&cpu_only), ["cpu-1"]);
}

#[tokio::test]
async fn requirements_that_fit_no_node_give_no_offers() {
    let mut small_disk = cpu_node("small-disk", "16", "64Gi");
    small_disk
        .status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert("ephemeral-storage".into(), Quantity("50Gi".into()));
    let (_, backend) = backend_with(vec![small_disk, cpu_node("cpu-1", "8", "32Gi")], vec![], None).await;
    assert!(backend.offers(&req("64..", "8GB..", None, None)).await.unwrap().is_empty());
    assert!(backend.offers(&req("2..", "256GB..", None, None)).await.unwrap().is_empty());
    assert!(backend.offers(&req("2..", "8GB..", Some("1"), None)).await.unwrap().is_empty());
    assert!(backend.offers(&req("arm:2..", "8GB..", None, None)).await.unwrap().is_empty());
    // The node that reports its disk is filtered on it; the other is not.
    let disk = backend.offers(&req("2..", "8GB..", None, Some("100GB.."))).await.unwrap();
    assert_eq!(node_names(&disk), ["cpu-1"]);
    let disk = backend.offers(&req("2..", "8GB..", None, Some("10GB.."))).await.unwrap();
    assert_eq!(node_names(&disk), ["cpu-1", "small-disk"]);
}

#[tokio::test]
async fn node_selector_and_regions_limit_the_nodes() {
    let nodes = vec![
        node(
            "pool-a",
            &[("cpu", "8"), ("memory", "32Gi")],
            &[("pool", "kpool"), ("topology.kubernetes.io/region", "eu")],
        ),
        node(
            "pool-b",
            &[("cpu", "8"), ("memory", "32Gi")],
            &[("pool", "kpool"), ("topology.kubernetes.io/region", "us")],
        ),
        node("other", &[("cpu", "8"), ("memory", "32Gi")], &[("topology.kubernetes.io/region", "eu")]),
    ];
    let config = KubernetesBackendConfig { node_selector: labels(&[("pool", "kpool")]), ..Default::default() };
    let client = client(nodes, vec![]).await;
    let mut object = backend_object("k8s", Some(config));
    let backend = KubernetesBackend::new(client.clone(), &object).unwrap();
    let offers = backend.offers(&req("2..", "8GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&offers), ["pool-a", "pool-b"]);

    object.spec.regions = vec!["eu".into()];
    let backend = KubernetesBackend::new(client, &object).unwrap();
    let offers = backend.offers(&req("2..", "8GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&offers), ["pool-a"]);
    let machine = backend.create(&machine_spec("kpool-sel", offers[0].clone())).await.unwrap();
    assert_eq!(machine.provider_id, "ml/kpool-sel");
}

#[tokio::test]
async fn create_is_idempotent_and_pins_the_pod() {
    let (client, backend) = backend_with(vec![a100_node()], vec![], None).await;
    let offer = first_offer(&backend, &req("4", "16GB", Some("A100:1"), None)).await;
    let spec = machine_spec("kpool-0f8fad5b", offer);

    let first = backend.create(&spec).await.unwrap();
    let second = backend.create(&spec).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first.name, "kpool-0f8fad5b");
    assert_eq!(first.provider_id, "ml/kpool-0f8fad5b");
    assert_eq!(first.state, MachineState::Pending);
    assert_eq!(first.address, None);

    let pods: Api<Pod> = Api::namespaced(client, NS);
    let all = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 1);
    let spec = all[0].spec.clone().unwrap();
    assert_eq!(spec.node_name, None, "the scheduler binds it");
    assert_eq!(kpool::backends::kubernetes::target_node(&all[0]), Some("gpu-1"));
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    let container = &spec.containers[0];
    assert_eq!(container.image.as_deref(), Some(DEFAULT_IMAGE));
    let resources = container.resources.clone().unwrap();
    let want = quantities(&[("cpu", "4"), ("memory", "16Gi"), ("nvidia.com/gpu", "1")]);
    assert_eq!(resources.requests, Some(want.clone()));
    assert_eq!(resources.limits, Some(want));
    let tolerations = spec.tolerations.unwrap();
    assert_eq!(tolerations.len(), 1);
    assert_eq!(tolerations[0].key.as_deref(), Some("nvidia.com/gpu"));
    assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
}

#[tokio::test]
async fn pods_carry_the_tags_as_labels_and_annotations() {
    let config = KubernetesBackendConfig {
        namespace: Some("machines".into()),
        image: Some("example.com/holder:1".into()),
        ..Default::default()
    };
    let (client, backend) = backend_with(vec![cpu_node("node-a", "8", "32Gi")], vec![], Some(config)).await;
    let offer = first_offer(&backend, &req("2..", "8GB..", None, None)).await;
    let spec = machine_spec("kpool-tags", offer);
    let machine = backend.create(&spec).await.unwrap();
    assert_eq!(machine.provider_id, "machines/kpool-tags");
    let tags: BTreeMap<String, String> = spec.tags.clone().into_iter().chain(owner().tags()).collect();
    assert_eq!(machine.tags, tags, "get reads back every tag, and the owner's");

    let pod = Api::<Pod>::namespaced(client, "machines").get("kpool-tags").await.unwrap();
    let want_labels = labels(&[
        (TAG_MANAGED_BY, "kpool"),
        (TAG_INSTANCE_UID, "0f8fad5b-d9cb-469f-a165-70867728950e"),
        (TAG_POOL, "default-pool"),
        (TAG_INSTALLATION, INSTALLATION),
        (TAG_NAMESPACE, NS),
    ]);
    assert_eq!(pod.metadata.labels, Some(want_labels));
    assert_eq!(pod.metadata.annotations, Some(labels(&[(TAG_INSTANCE, "ml/a100-1")])));
    let pod_spec = pod.spec.unwrap();
    assert_eq!(pod_spec.containers[0].image.as_deref(), Some("example.com/holder:1"));
    assert_eq!(pod_spec.tolerations, None, "no GPU, no GPU toleration");
}

#[tokio::test]
async fn get_maps_pod_phases_to_machine_states() {
    let (client, backend) = backend_with(vec![cpu_node("node-a", "8", "32Gi")], vec![], None).await;
    let offer = first_offer(&backend, &req("2..", "8GB..", None, None)).await;
    backend.create(&machine_spec("kpool-p", offer)).await.unwrap();
    assert_eq!(backend.get("kpool-p").await.unwrap().state, MachineState::Pending);

    set_pod_status(&client, NS, "kpool-p", "Pending", false, None).await;
    assert_eq!(backend.get("kpool-p").await.unwrap().state, MachineState::Pending);

    set_pod_status(&client, NS, "kpool-p", "Running", false, Some("10.0.0.7")).await;
    let m = backend.get("kpool-p").await.unwrap();
    assert_eq!((m.state, m.address), (MachineState::Pending, None));

    set_pod_status(&client, NS, "kpool-p", "Running", true, Some("10.0.0.7")).await;
    let m = backend.get("kpool-p").await.unwrap();
    assert_eq!((m.state, m.address.as_deref()), (MachineState::Running, Some("10.0.0.7")));

    set_pod_status(&client, NS, "kpool-p", "Failed", false, None).await;
    assert_eq!(backend.get("kpool-p").await.unwrap().state, MachineState::Terminated);
    set_pod_status(&client, NS, "kpool-p", "Succeeded", false, None).await;
    assert_eq!(backend.get("kpool-p").await.unwrap().state, MachineState::Terminated);
}

#[tokio::test]
async fn a_pod_being_deleted_is_stopping() {
    let mut pod = workload("kpool-gone", NS, "node-a", "2", "Running");
    pod.metadata.deletion_timestamp = Some(Time("2026-11-28T10:00:00Z".parse().unwrap()));
    pod.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let (_, backend) = backend_with(vec![cpu_node("node-a", "8", "32Gi")], vec![pod], None).await;
    assert_eq!(backend.get("kpool-gone").await.unwrap().state, MachineState::Stopping);
}

#[tokio::test]
async fn delete_removes_the_pod_and_a_missing_pod_is_not_found() {
    let (_, backend) = backend_with(vec![cpu_node("node-a", "8", "32Gi")], vec![], None).await;
    let offer = first_offer(&backend, &req("2..", "8GB..", None, None)).await;
    backend.create(&machine_spec("kpool-d", offer)).await.unwrap();

    backend.delete("kpool-d").await.unwrap();
    assert!(matches!(backend.get("kpool-d").await, Err(BackendError::NotFound(_))));
    assert!(matches!(backend.delete("kpool-d").await, Err(BackendError::NotFound(_))));
    assert!(matches!(backend.delete("never-existed").await, Err(BackendError::NotFound(_))));
}

#[tokio::test]
async fn a_machine_is_found_and_deleted_in_the_namespace_it_was_launched_in() {
    let (client, backend) = backend_with(vec![cpu_node("node-a", "8", "32Gi")], vec![], None).await;
    let offer = first_offer(&backend, &req("2..", "8GB..", None, None)).await;
    let launched = backend.create(&machine_spec("kpool-m", offer)).await.unwrap();
    assert_eq!(launched.provider_id, format!("{NS}/kpool-m"));

    // The Backend now places its Pods in another namespace; the machine stays in `ml`.
    let config = KubernetesBackendConfig { namespace: Some("elsewhere".into()), ..Default::default() };
    let edited = KubernetesBackend::new(client.clone(), &backend_object("k8s", Some(config)))
        .expect("backend")
        .with_owner(owner());
    assert!(matches!(edited.get("kpool-m").await, Err(BackendError::NotFound(_))), "not in the new namespace");
    let recorded = MachineRef { name: "kpool-m".into(), region: None, provider_id: Some(launched.provider_id.clone()) };
    assert_eq!(edited.get_at(&recorded).await.unwrap().provider_id, launched.provider_id);
    edited.delete_at(&recorded).await.unwrap();
    assert!(Api::<Pod>::namespaced(client, NS).get_opt("kpool-m").await.unwrap().is_none());
    assert!(matches!(edited.get_at(&recorded).await, Err(BackendError::NotFound(_))));
    assert!(matches!(edited.delete_at(&recorded).await, Err(BackendError::NotFound(_))));
}

#[tokio::test]
async fn list_owned_ignores_pods_without_the_managed_by_label() {
    let mut foreign = workload("kpool-foreign", "elsewhere", "node-a", "1", "Running");
    foreign.metadata.labels = Some(labels(&[(TAG_MANAGED_BY, "kpool")]));
    let pods = vec![workload("app", NS, "node-a", "1", "Running"), foreign];
    let (_, backend) = backend_with(vec![cpu_node("node-a", "8", "32Gi")], pods, None).await;
    let offer = first_offer(&backend, &req("2..", "8GB..", None, None)).await;
    backend.create(&machine_spec("kpool-mine", offer)).await.unwrap();

    let owned = backend.list_owned().await.unwrap();
    let names: Vec<&str> = owned.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["kpool-mine"]);
    assert_eq!(owned[0].tags.get(TAG_INSTANCE).map(String::as_str), Some("ml/a100-1"));
}

#[tokio::test]
async fn list_owned_sees_only_the_pods_of_its_installation_and_namespace() {
    // One Pod namespace shared by the Backends of two installations, and of two namespaces
    // of one installation (two controllers that each watch one namespace).
    let shared = Some(KubernetesBackendConfig { namespace: Some("kpool-machines".into()), ..Default::default() });
    let client = client(vec![cpu_node("node-a", "32", "128Gi")], vec![]).await;
    let build = |ns: &str, installation: &str| {
        let mut object = backend_object("k8s", shared.clone());
        object.metadata.namespace = Some(ns.into());
        let owner = Owner { installation: installation.into(), namespace: ns.into() };
        KubernetesBackend::new(client.clone(), &object).unwrap().with_owner(owner)
    };
    let mine = build(NS, INSTALLATION);
    let other_cluster = build(NS, "other-cluster");
    let team_b = build("team-b", INSTALLATION);
    for (backend, name) in [(&mine, "kpool-mine"), (&other_cluster, "kpool-theirs"), (&team_b, "kpool-team-b")] {
        let offer = first_offer(backend, &req("2..", "8GB..", None, None)).await;
        backend.create(&machine_spec(name, offer)).await.unwrap();
    }
    // Slot Pods made before Pods carried an installation: kpool's marker and the instance.
    let pods = Api::<Pod>::namespaced(client.clone(), "kpool-machines");
    for (name, instance) in [("kpool-old-ml", "ml/old"), ("kpool-old-team-b", "team-b/old")] {
        let mut pod = workload(name, "kpool-machines", "node-a", "1", "Running");
        pod.metadata.labels = Some(labels(&[(TAG_MANAGED_BY, "kpool")]));
        pod.metadata.annotations = Some(labels(&[(TAG_INSTANCE, instance)]));
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }

    let names = |machines: Vec<kpool::backends::Machine>| -> Vec<String> {
        let mut n: Vec<String> = machines.into_iter().map(|m| m.name).collect();
        n.sort();
        n
    };
    let owned = mine.list_owned().await.unwrap();
    assert!(owned.iter().all(|m| owner().owns(&m.tags)), "{owned:?}");
    assert_eq!(names(owned), ["kpool-mine"]);
    assert_eq!(names(other_cluster.list_owned().await.unwrap()), ["kpool-theirs"]);
    assert_eq!(names(team_b.list_owned().await.unwrap()), ["kpool-team-b"]);
    let made = pods.get("kpool-mine").await.unwrap();
    assert_eq!(made.labels().get(TAG_INSTALLATION).map(String::as_str), Some(INSTALLATION));
    assert_eq!(made.labels().get(TAG_NAMESPACE).map(String::as_str), Some(NS));

    assert_eq!(names(mine.list_unattributed().await.unwrap()), ["kpool-old-ml"]);
    assert_eq!(names(team_b.list_unattributed().await.unwrap()), ["kpool-old-team-b"]);
    let unowned = KubernetesBackend::new(client.clone(), &backend_object("k8s", shared.clone())).unwrap();
    assert_eq!(unowned.list_owned().await.unwrap_err().category(), "InvalidConfig", "no owner, no list");
}

#[tokio::test]
async fn create_that_loses_a_race_returns_the_pod_that_won() {
    // Another replica creates the Pod between our get and our create: 409 AlreadyExists.
    let funcs = Funcs::new().create(|ctx: CreateContext| {
        let pod: Pod = serde_json::from_value(ctx.object.clone())?;
        ctx.client.create(ctx.namespace, &pod, ctx.params)?;
        Err(kube_fake_client::Error::AlreadyExists {
            kind: "pods".into(),
            name: pod.metadata.name.unwrap_or_default(),
            namespace: ctx.namespace.into(),
        })
    });
    let client = ClientBuilder::new()
        .with_object(cpu_node("node-a", "8", "32Gi"))
        .with_status_subresource::<Pod>()
        .with_interceptor_funcs(funcs)
        .build()
        .await
        .unwrap();
    let backend = KubernetesBackend::new(client.clone(), &backend_object("k8s", None)).unwrap();
    let offer = first_offer(&backend, &req("2..", "8GB..", None, None)).await;
    let machine = backend.create(&machine_spec("kpool-race", offer)).await.unwrap();
    assert_eq!((machine.name.as_str(), machine.state), ("kpool-race", MachineState::Pending));
    assert_eq!(Api::<Pod>::namespaced(client, NS).list(&ListParams::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn create_on_a_vanished_or_cordoned_node_is_insufficient_capacity() {
    let (client, backend) = backend_with(vec![cpu_node("node-a", "8", "32Gi")], vec![], None).await;
    let offer = first_offer(&backend, &req("2..", "8GB..", None, None)).await;
    let gone = Offer { instance_type: "node-gone".into(), ..offer.clone() };
    let err = backend.create(&machine_spec("kpool-x", gone)).await.unwrap_err();
    assert_eq!(err.category(), "InsufficientCapacity", "{err}");
    assert!(err.to_string().contains("node-gone"), "{err}");

    let nodes: Api<Node> = Api::all(client.clone());
    let mut node = nodes.get("node-a").await.unwrap();
    node.spec.as_mut().unwrap().unschedulable = Some(true);
    nodes.replace("node-a", &PostParams::default(), &node).await.unwrap();
    let err = backend.create(&machine_spec("kpool-x", offer)).await.unwrap_err();
    assert_eq!(err.category(), "InsufficientCapacity", "{err}");
    assert!(Api::<Pod>::namespaced(client, NS).list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn invalid_settings_are_rejected_by_field() {
    let client = client(vec![], vec![]).await;
    let config = KubernetesBackendConfig { price_per_hour: Some(-1.0), ..Default::default() };
    let err = KubernetesBackend::new(client.clone(), &backend_object("k8s", Some(config))).err().unwrap();
    assert_eq!(err.category(), "InvalidConfig");
    assert!(err.to_string().contains("spec.kubernetes.pricePerHour"), "{err}");
    let defaults = KubernetesBackend::new(client, &backend_object("k8s", None)).unwrap();
    assert_eq!(defaults.namespace(), NS);
}

#[tokio::test]
async fn the_factory_builds_kubernetes_and_rejects_other_types() {
    let client = client(vec![cpu_node("node-a", "8", "32Gi")], vec![]).await;
    let factory = DefaultFactory::new(client);

    let backend = factory.build(&backend_object("local", None)).await.unwrap();
    assert_eq!(backend.name(), "local");
    let offers = backend.offers(&req("2..", "8GB..", None, None)).await.unwrap();
    assert_eq!(node_names(&offers), ["node-a"]);
    assert_eq!(offers[0].backend, "local");

    let mut lambda = backend_object("lambda", None);
    lambda.spec.type_ = BackendType::Lambda;
    let err = factory.build(&lambda).await.err().expect("a lambda backend needs credentials");
    assert_eq!(err.category(), "InvalidConfig");
    let msg = err.to_string();
    assert!(msg.contains("spec.credentials") && msg.contains("lambda"), "{msg}");
}

/// A job Pod standing in for machine `machine` (as the Pod executor makes them).
fn job_pod(name: &str, machine: &str, run_uid: &str, phase: &str) -> Pod {
    let mut pod = workload(name, NS, "node-a", "2", phase);
    pod.metadata.labels = Some(labels(&[
        (TAG_MANAGED_BY, "kpool"),
        (TAG_POOL, "default-pool"),
        (TAG_INSTALLATION, INSTALLATION),
        (TAG_NAMESPACE, NS),
        (LABEL_MACHINE, machine),
        (LABEL_RUN_UID, run_uid),
    ]));
    pod.metadata.annotations = Some(labels(&[(TAG_INSTANCE, "ml/a100-1"), ("kpool.dev/run", "ml/train")]));
    pod
}

#[tokio::test]
async fn job_pods_stand_in_for_their_machine() {
    let pods = vec![
        job_pod("kpool-m1-run-old", "kpool-m1", "old", "Succeeded"),
        job_pod("kpool-m1-run-new", "kpool-m1", "new", "Running"),
        job_pod("kpool-m2-run-done", "kpool-m2", "done", "Failed"),
    ];
    let (client, backend) = backend_with(vec![cpu_node("node-a", "8", "32Gi")], pods, None).await;
    set_pod_status(&client, NS, "kpool-m1-run-new", "Running", true, Some("10.0.0.8")).await;

    let m = backend.get("kpool-m1").await.unwrap();
    assert_eq!((m.name.as_str(), m.state), ("kpool-m1", MachineState::Running), "the running job, not the old one");
    assert_eq!(m.provider_id, "ml/kpool-m1-run-new");
    let tags = labels(&[
        (TAG_MANAGED_BY, "kpool"),
        (TAG_POOL, "default-pool"),
        (TAG_INSTANCE, "ml/a100-1"),
        (TAG_INSTALLATION, INSTALLATION),
        (TAG_NAMESPACE, NS),
    ]);
    assert_eq!(m.tags, tags, "the job's own labels are not machine tags");
    let m2 = backend.get("kpool-m2").await.unwrap();
    assert_eq!(m2.state, MachineState::Pending, "only a finished job: the slot is due back");

    // A slot Pod with the machine name wins over job Pods.
    let offer = first_offer(&backend, &req("2..", "8GB..", None, None)).await;
    backend.create(&machine_spec("kpool-m2", offer)).await.unwrap();
    assert_eq!(backend.get("kpool-m2").await.unwrap().provider_id, "ml/kpool-m2");

    let mut owned: Vec<(String, String)> =
        backend.list_owned().await.unwrap().into_iter().map(|m| (m.name, m.provider_id)).collect();
    owned.sort();
    assert_eq!(
        owned,
        [("kpool-m1".to_string(), "ml/kpool-m1-run-new".to_string()), ("kpool-m2".into(), "ml/kpool-m2".into())],
        "one machine per machine name"
    );

    // Deleting a machine deletes its slot and every job Pod of it, and nothing else.
    backend.delete("kpool-m1").await.unwrap();
    let left: Vec<String> = Api::<Pod>::namespaced(client, NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|n| n.starts_with("kpool-m2")), "{left:?}");
    assert!(matches!(backend.get("kpool-m1").await, Err(BackendError::NotFound(_))));
    assert!(matches!(backend.delete("kpool-m1").await, Err(BackendError::NotFound(_))));
}

/// A CPU node with taint `key=value:effect`.
fn tainted_node(name: &str, key: &str, value: &str, effect: &str) -> Node {
    let mut n = cpu_node(name, "8", "32Gi");
    n.spec.as_mut().unwrap().taints =
        Some(vec![Taint { key: key.into(), value: Some(value.into()), effect: effect.into(), ..Default::default() }]);
    n
}

fn toleration(
    key: &str,
    operator: &str,
    value: Option<&str>,
    effect: Option<&str>,
) -> k8s_openapi::api::core::v1::Toleration {
    k8s_openapi::api::core::v1::Toleration {
        key: Some(key.into()),
        operator: Some(operator.into()),
        value: value.map(Into::into),
        effect: effect.map(Into::into),
        ..Default::default()
    }
}

#[tokio::test]
async fn tainted_nodes_are_offered_only_when_tolerated_and_the_pods_carry_the_tolerations() {
    let nodes = vec![
        tainted_node("real", "kpool.dev/real-node", "true", "NoSchedule"),
        tainted_node("evicting", "kpool.dev/real-node", "true", "NoExecute"),
        tainted_node("dedicated", "dedicated", "ml", "NoSchedule"),
        tainted_node("preferred", "dedicated", "web", "PreferNoSchedule"),
        cpu_node("plain", "8", "32Gi"),
    ];
    let r = req("2..", "8GB..", None, None);
    let offered = |config: KubernetesBackendConfig| {
        let nodes = nodes.clone();
        let r = r.clone();
        async move {
            let (_, backend) = backend_with(nodes, vec![], Some(config)).await;
            let offers = backend.offers(&r).await.unwrap();
            node_names(&offers).iter().map(|n| n.to_string()).collect::<Vec<_>>()
        }
    };
    let with = |tolerations| KubernetesBackendConfig { tolerations, ..Default::default() };

    // Without tolerations, NoSchedule and NoExecute taints keep the machines away.
    assert_eq!(offered(with(vec![])).await, ["plain", "preferred"]);
    // Exists with an effect: that effect of that key only.
    let exists = toleration("kpool.dev/real-node", "Exists", None, Some("NoSchedule"));
    assert_eq!(offered(with(vec![exists.clone()])).await, ["plain", "preferred", "real"]);
    // Exists without an effect: every effect of that key.
    let any_effect = toleration("kpool.dev/real-node", "Exists", None, None);
    assert_eq!(offered(with(vec![any_effect])).await, ["evicting", "plain", "preferred", "real"]);
    // Equal compares the value.
    let ml = toleration("dedicated", "Equal", Some("ml"), Some("NoSchedule"));
    assert_eq!(offered(with(vec![ml])).await, ["dedicated", "plain", "preferred"]);
    let other_value = toleration("dedicated", "Equal", Some("gpu"), Some("NoSchedule"));
    assert_eq!(offered(with(vec![other_value])).await, ["plain", "preferred"]);
    // No key with Exists tolerates every taint.
    let everything = k8s_openapi::api::core::v1::Toleration { operator: Some("Exists".into()), ..Default::default() };
    assert_eq!(offered(with(vec![everything])).await, ["dedicated", "evicting", "plain", "preferred", "real"]);

    // The machine Pod on the tainted node carries the toleration (the job Pod is its copy).
    let config = KubernetesBackendConfig {
        node_selector: labels(&[("kubernetes.io/arch", "amd64")]),
        ..with(vec![exists.clone()])
    };
    let (client, backend) = backend_with(vec![nodes[0].clone()], vec![], Some(config)).await;
    let offer = first_offer(&backend, &r).await;
    assert_eq!(offer.instance_type, "real");
    backend.create(&machine_spec("kpool-real", offer)).await.unwrap();
    let pod = Api::<Pod>::namespaced(client, NS).get("kpool-real").await.unwrap();
    assert_eq!(pod.spec.unwrap().tolerations, Some(vec![exists.clone()]));

    // A GPU machine carries the configured tolerations and the GPU resource's.
    let (client, backend) = backend_with(vec![a100_node()], vec![], Some(with(vec![exists.clone()]))).await;
    let offer = first_offer(&backend, &req("4", "16GB", Some("A100:1"), None)).await;
    backend.create(&machine_spec("kpool-gpu", offer)).await.unwrap();
    let pod = Api::<Pod>::namespaced(client, NS).get("kpool-gpu").await.unwrap();
    let keys: Vec<Option<String>> = pod.spec.unwrap().tolerations.unwrap().into_iter().map(|t| t.key).collect();
    assert_eq!(keys, [Some("kpool.dev/real-node".to_string()), Some("nvidia.com/gpu".to_string())]);
}

#[tokio::test]
async fn tolerations_the_api_server_would_refuse_are_invalid_config() {
    let client = client(vec![], vec![]).await;
    for (bad, why) in [
        (toleration("k", "Exists", Some("v"), None), "has no value"),
        (toleration("", "Equal", Some("v"), None), "must have operator Exists"),
        (toleration("k", "In", None, None), "operator must be"),
        (toleration("k", "Exists", None, Some("NoRun")), "effect must be"),
    ] {
        let config = KubernetesBackendConfig { tolerations: vec![bad], ..Default::default() };
        let err = KubernetesBackend::new(client.clone(), &backend_object("k8s", Some(config))).err().unwrap();
        assert_eq!(err.category(), "InvalidConfig");
        let msg = err.to_string();
        assert!(msg.contains("spec.kubernetes.tolerations[0]") && msg.contains(why), "{msg}");
    }
}
