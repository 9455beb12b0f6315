//! Runs on instances of `kubernetes` backends: the Pod executor swaps an instance's slot
//! Pod for the run's job Pod and back, against the in-memory API (kube-fake-client).
//!
//! Nothing runs a kubelet here: the tests write Pod statuses as a kubelet would (phase,
//! the `job` container's waiting or terminated state). The in-memory API deletes at once
//! (no graceful termination) and does not serve `pods/log`, so the log tests put a small
//! service in front of it that answers `pods/log` requests with a fixed text.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, EnvVar,
    EnvVarSource, Node, Pod, PodCondition, PodStatus, Secret, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::ByteString;
use kpool::api::backend::{Backend as BackendObject, BackendSpec, BackendType, KubernetesBackendConfig};
use kpool::api::instance::{Instance, InstancePhase, InstanceSpec, InstanceStatus};
use kpool::api::policy::PolicySpec;
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{Run, RunPhase, RunSpec};
use kpool::backends::allow::Allowances;
use kpool::backends::kubernetes::{KubernetesBackend, LABEL_MACHINE, LABEL_RUN_UID};
use kpool::backends::{machine_tags, Backend, MachineSpec, MachineState, Owner, TAG_MANAGED_BY};
use kpool::controllers::gc::{Collector, GcConfig};
use kpool::exec::pod::{PodExecutor, DEFAULT_RUN_IMAGE};
use kpool::exec::{ExecError, Executor, JobState};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use support::*;

/// Namespace of the machine Pods (the backend's `spec.kubernetes.namespace`).
const PODS_NS: &str = "machines";
const BACKEND: &str = "cluster";
const NODE: &str = "node-a";

fn node(name: &str) -> Node {
    ready_node(name, &[("cpu", "16"), ("memory", "64Gi"), ("nvidia.com/gpu", "4"), ("pods", "110")])
}

fn backend_object(run_image: Option<&str>) -> BackendObject {
    BackendObject::new(
        BACKEND,
        BackendSpec {
            type_: BackendType::Kubernetes,
            kubernetes: Some(KubernetesBackendConfig {
                namespace: Some(PODS_NS.into()),
                run_image: run_image.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// What the operator allows here: machine Pods in [`PODS_NS`], not the Backend's namespace.
fn allow_pods_ns() -> Allowances {
    Allowances::default().with_kubernetes_namespaces([PODS_NS])
}

/// The Pod executor, allowed to place Pods in [`PODS_NS`].
fn executor(h: &Harness) -> PodExecutor {
    PodExecutor::new(h.client.clone()).with_allowances(allow_pods_ns())
}

/// The in-memory API with a node and a kubernetes `Backend`; the test's client.
async fn cluster(run_image: Option<&str>) -> (Harness, KubernetesBackend) {
    let h = Harness::with_real_backends_allowing(INSTALLATION, allow_pods_ns()).await;
    Api::<Node>::all(h.client.clone()).create(&PostParams::default(), &node(NODE)).await.unwrap();
    let obj = h.create(backend_object(run_image)).await;
    let owner = Owner { installation: INSTALLATION.into(), namespace: NS.into() };
    let backend = KubernetesBackend::new(h.client.clone(), &obj).unwrap().with_owner(owner);
    (h, backend)
}

/// An instance (not stored: the executor reads only what is passed) whose slot Pod exists:
/// 4 CPUs, 16GB, one GPU on the node.
async fn instance(backend: &KubernetesBackend, name: &str, uid: &str) -> Instance {
    let req = ResourcesSpec {
        cpu: Some("4..".into()),
        memory: Some("16GB..".into()),
        gpu: Some("1".into()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let offer = backend.offers(&req).await.unwrap().remove(0);
    let mut inst = Instance::new(name, InstanceSpec::default());
    inst.metadata.namespace = Some(NS.into());
    inst.metadata.uid = Some(uid.into());
    inst.status = Some(InstanceStatus {
        phase: InstancePhase::Busy,
        pool: Some("default-pool".into()),
        machine_name: Some(format!("kpool-{uid}")),
        offer: Some(offer.clone()),
        ..Default::default()
    });
    let spec = MachineSpec { name: format!("kpool-{uid}"), offer, tags: machine_tags(&inst), ssh_public_key: None };
    backend.create(&spec).await.unwrap();
    inst
}

fn pods(h: &Harness) -> Api<Pod> {
    Api::namespaced(h.client.clone(), PODS_NS)
}

fn machine(inst: &Instance) -> String {
    inst.status.as_ref().unwrap().machine_name.clone().unwrap()
}

fn job_name(inst: &Instance, run: &Run) -> String {
    let attempt = run.status.as_ref().map_or(0, |s| s.attempts);
    PodExecutor::job_pod_name(&machine(inst), &run.uid().unwrap(), attempt)
}

async fn job_pods(h: &Harness, inst: &Instance) -> Vec<Pod> {
    let params = ListParams::default().labels(&format!("{LABEL_MACHINE}={}", machine(inst)));
    pods(h).list(&params).await.unwrap().items
}

/// Writes the job container's state and the Pod's phase, as the kubelet would.
async fn kubelet(h: &Harness, name: &str, phase: &str, state: ContainerState) {
    let mut pod = pods(h).get(name).await.unwrap();
    pod.status = Some(PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if phase == "Running" { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        container_statuses: Some(vec![ContainerStatus {
            name: "job".into(),
            image: pod.spec.as_ref().unwrap().containers[0].image.clone().unwrap_or_default(),
            state: Some(state),
            ..Default::default()
        }]),
        ..Default::default()
    });
    pods(h).replace_status(name, &PostParams::default(), &pod).await.unwrap();
}

fn running() -> ContainerState {
    ContainerState { running: Some(ContainerStateRunning::default()), ..Default::default() }
}

fn exited(code: i32) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated { exit_code: code, ..Default::default() }),
        ..Default::default()
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: Some(message.into()) }),
        ..Default::default()
    }
}

/// The slot Pod's scheduling and resources: what a job Pod must keep.
fn slice(pod: &Pod) -> serde_json::Value {
    let spec = pod.spec.as_ref().unwrap();
    serde_json::json!({
        "node": kpool::backends::kubernetes::target_node(pod),
        "affinity": spec.affinity,
        "nodeSelector": spec.node_selector,
        "tolerations": spec.tolerations,
        "resources": spec.containers[0].resources,
    })
}

fn tricky_commands() -> Vec<String> {
    vec![
        "echo \"it's $HOME\"; echo 'single $x' ; printf '%s\\n' a\\ b".into(),
        "cat <<'EOF'\nline one\n  $(not expanded)\nEOF".into(),
        "exit 3".into(),
    ]
}

#[tokio::test]
async fn the_slot_pod_is_swapped_for_the_job_pod() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "a100-1", "0f8fad5b-d9cb-469f-a165-70867728950e").await;
    let slot = pods(&h).get(&machine(&inst)).await.unwrap();
    h.create(Secret {
        metadata: ObjectMeta { name: Some("wandb".into()), ..Default::default() },
        data: Some(BTreeMap::from([("key".to_string(), ByteString(b"s3cr3t-value".to_vec()))])),
        ..Default::default()
    })
    .await;
    let run = h
        .run(
            "train",
            RunSpec {
                image: Some("pytorch/pytorch:2.5".into()),
                commands: tricky_commands(),
                working_dir: Some("/workspace".into()),
                env: vec![
                    EnvVar { name: "MODE".into(), value: Some("fast; $x".into()), value_from: None },
                    EnvVar {
                        name: "WANDB_KEY".into(),
                        value: None,
                        value_from: Some(EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: "wandb".into(),
                                key: "key".into(),
                                optional: None,
                            }),
                            ..Default::default()
                        }),
                    },
                ],
                ..Default::default()
            },
        )
        .await;
    let exec = executor(&h);
    exec.start(&run, &inst).await.unwrap();

    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_none(), "the slot Pod gave way");
    let job = pods(&h).get(&job_name(&inst, &run)).await.unwrap();
    assert_eq!(slice(&job), slice(&slot), "same node, node selector, tolerations, requests and limits");
    let limits = job.spec.as_ref().unwrap().containers[0].resources.as_ref().unwrap().limits.clone().unwrap();
    assert_eq!(limits.get("nvidia.com/gpu"), Some(&Quantity("1".into())));
    assert_eq!(kpool::backends::kubernetes::target_node(&job), Some(NODE));
    let spec = job.spec.clone().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let c = &spec.containers[0];
    assert_eq!(c.name, "job");
    assert_eq!(c.image.as_deref(), Some("pytorch/pytorch:2.5"));
    let script = format!("set -e\n{}\n", tricky_commands().join("\n"));
    assert_eq!(c.command, Some(vec!["sh".to_string(), "-c".to_string(), script]), "argv unchanged, byte for byte");
    assert_eq!(c.args, None);
    assert_eq!(c.working_dir.as_deref(), Some("/workspace"));
    let labels = job.labels();
    assert_eq!(labels.get(LABEL_MACHINE), Some(&machine(&inst)));
    assert_eq!(labels.get(LABEL_RUN_UID), run.uid().as_ref());
    assert_eq!(labels.get(TAG_MANAGED_BY).map(String::as_str), Some("kpool"));
    assert_eq!(job.annotations().get("kpool.dev/run").map(String::as_str), Some("ml/train"));

    // The environment comes from a Secret owned by the job Pod; no value is in the Pod.
    let pod_json = serde_json::to_string(&job).unwrap();
    assert!(!pod_json.contains("s3cr3t-value") && !pod_json.contains("fast; $x"), "{pod_json}");
    assert_eq!(c.env, None);
    let from = c.env_from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    let secret_name = from[0].secret_ref.as_ref().unwrap().name.clone();
    let secret = Api::<Secret>::namespaced(h.client.clone(), PODS_NS).get(&secret_name).await.unwrap();
    let data = secret.data.clone().unwrap();
    assert_eq!(data.get("WANDB_KEY"), Some(&ByteString(b"s3cr3t-value".to_vec())));
    assert_eq!(data.get("MODE"), Some(&ByteString(b"fast; $x".to_vec())));
    let owners = secret.owner_references();
    assert_eq!((owners.len(), owners[0].kind.as_str()), (1, "Pod"));
    assert_eq!(Some(&owners[0].uid), job.uid().as_ref(), "deleted with the job Pod");
}

#[tokio::test]
async fn a_run_without_image_uses_the_backends_run_image_or_the_default() {
    let (h, backend) = cluster(Some("example.com/tools:1")).await;
    let inst = instance(&backend, "box", "11111111-1111-4111-8111-111111111111").await;
    let run = h.run("plain", RunSpec { commands: vec!["true".into()], ..Default::default() }).await;
    executor(&h).start(&run, &inst).await.unwrap();
    let job = pods(&h).get(&job_name(&inst, &run)).await.unwrap();
    assert_eq!(job.spec.unwrap().containers[0].image.as_deref(), Some("example.com/tools:1"));

    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "11111111-1111-4111-8111-111111111111").await;
    let run = h.run("plain", RunSpec { commands: vec![], ..Default::default() }).await;
    executor(&h).start(&run, &inst).await.unwrap();
    let c = pods(&h).get(&job_name(&inst, &run)).await.unwrap().spec.unwrap().containers.remove(0);
    assert_eq!(c.image.as_deref(), Some(DEFAULT_RUN_IMAGE));
    assert_eq!(c.command, None, "no commands: the image's own");
}

/// Job Pods carry the run's image and a Secret with its resolved environment: never in a
/// namespace the operator has not allowed the Backend, whatever the Backend says.
#[tokio::test]
async fn no_job_pod_goes_to_a_namespace_the_operator_has_not_allowed() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "12121212-1212-4121-8121-121212121212").await;
    let run = h.run("nosy", RunSpec { commands: vec!["true".into()], ..Default::default() }).await;
    let err = PodExecutor::new(h.client.clone()).start(&run, &inst).await.unwrap_err();
    let ExecError::Unsupported(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("spec.kubernetes.namespace: \"machines\" is not allowed"), "{message}");
    assert!(pods(&h).get_opt(&job_name(&inst, &run)).await.unwrap().is_none(), "no job Pod");
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some(), "the slot Pod stays");
    let secrets = Api::<Secret>::namespaced(h.client.clone(), PODS_NS).list(&Default::default()).await.unwrap();
    assert!(secrets.items.is_empty(), "no Secret with the run's environment");
    // The controller's factory refuses to build the Backend alike.
    let obj = h.api::<BackendObject>().get(BACKEND).await.unwrap();
    let factory = kpool::backends::factory::DefaultFactory::new(h.client.clone());
    use kpool::backends::BackendFactory;
    let err = factory.build(&obj).await.err().expect("refused");
    assert!(err.to_string().contains("spec.kubernetes.namespace: \"machines\""), "{err}");
}

#[tokio::test]
async fn start_is_idempotent() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "22222222-2222-4222-8222-222222222222").await;
    let run = h.run("once", RunSpec { commands: vec!["sleep 1".into()], ..Default::default() }).await;
    let exec = executor(&h);
    exec.start(&run, &inst).await.unwrap();
    let first = pods(&h).get(&job_name(&inst, &run)).await.unwrap();
    kubelet(&h, &job_name(&inst, &run), "Running", running()).await;
    exec.start(&run, &inst).await.unwrap();
    exec.start(&run, &inst).await.unwrap();
    let jobs = job_pods(&h, &inst).await;
    assert_eq!(jobs.len(), 1, "one job Pod");
    assert_eq!(jobs[0].uid(), first.uid(), "the same Pod, not made again");
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_none(), "no slot Pod next to it");
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Running);
}

#[tokio::test]
async fn status_follows_the_job_and_the_slot_comes_back_when_it_ends() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "33333333-3333-4333-8333-333333333333").await;
    let slot = pods(&h).get(&machine(&inst)).await.unwrap();
    let exec = executor(&h);
    for (run_name, code) in [("ok", 0), ("three", 3)] {
        let run = h.run(run_name, RunSpec { commands: vec![format!("exit {code}")], ..Default::default() }).await;
        exec.start(&run, &inst).await.unwrap();
        let name = job_name(&inst, &run);
        assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Running, "no status yet: pending");
        kubelet(&h, &name, "Pending", waiting("ContainerCreating", "")).await;
        assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Running);
        kubelet(&h, &name, "Running", running()).await;
        assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Running);
        assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_none(), "no slot while the job runs");

        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        kubelet(&h, &name, phase, exited(code)).await;
        assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(code));
        let back = pods(&h).get(&machine(&inst)).await.expect("the slot is back");
        assert_eq!(slice(&back), slice(&slot));
        assert_eq!(back.spec.as_ref().unwrap().containers[0].image, slot.spec.as_ref().unwrap().containers[0].image);
        assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(code), "asked again: the same");
        assert!(pods(&h).get_opt(&name).await.unwrap().is_some(), "the finished Pod is kept for its log");
    }
    // Starting the second job cleared the first's finished Pod.
    assert_eq!(job_pods(&h, &inst).await.len(), 1);
}

#[tokio::test]
async fn a_retried_run_gets_a_new_job_pod_on_the_same_slot() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "34343434-3434-4343-8343-343434343434").await;
    let exec = executor(&h);
    let mut run = h.run("flaky", RunSpec { commands: vec!["exit 1".into()], ..Default::default() }).await;
    exec.start(&run, &inst).await.unwrap();
    let first = job_name(&inst, &run);
    kubelet(&h, &first, "Failed", exited(1)).await;
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(1));

    // The run controller resubmits it (status.attempts + 1) and it lands here again.
    run.status.get_or_insert_with(Default::default).attempts = 1;
    exec.start(&run, &inst).await.unwrap();
    let second = job_name(&inst, &run);
    assert_ne!(first, second);
    assert!(pods(&h).get_opt(&first).await.unwrap().is_none(), "the first attempt's Pod is cleared");
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_none(), "the slot gave way again");
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Running, "a new job, not the old exit code");
    kubelet(&h, &second, "Succeeded", exited(0)).await;
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(0));
}

#[tokio::test]
async fn stop_deletes_the_job_pod_and_restores_the_slot() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "44444444-4444-4444-8444-444444444444").await;
    let run = h.run("long", RunSpec { commands: vec!["sleep infinity".into()], ..Default::default() }).await;
    let exec = executor(&h);
    exec.start(&run, &inst).await.unwrap();
    kubelet(&h, &job_name(&inst, &run), "Running", running()).await;
    exec.stop(&run, &inst).await.unwrap();
    assert!(job_pods(&h, &inst).await.is_empty(), "job Pod deleted");
    assert!(Api::<Secret>::namespaced(h.client.clone(), PODS_NS)
        .get_opt(&job_name(&inst, &run))
        .await
        .unwrap()
        .is_none());
    let slot = pods(&h).get(&machine(&inst)).await.expect("slot restored");
    assert_eq!(slot.spec.unwrap().restart_policy.as_deref(), Some("Always"));
    exec.stop(&run, &inst).await.unwrap();
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(137), "a stopped job does not come back");
    assert!(job_pods(&h, &inst).await.is_empty());
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_a_clear_error() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "55555555-5555-4555-8555-555555555555").await;
    let exec = executor(&h);
    for (i, reason) in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"].into_iter().enumerate() {
        let run = h
            .run(
                &format!("bad-{i}"),
                RunSpec {
                    image: Some("example.com/nope:404".into()),
                    commands: vec!["true".into()],
                    ..Default::default()
                },
            )
            .await;
        exec.start(&run, &inst).await.unwrap();
        kubelet(&h, &job_name(&inst, &run), "Pending", waiting(reason, "manifest unknown")).await;
        match exec.status(&run, &inst).await {
            Err(ExecError::Unsupported(msg)) => {
                assert!(msg.contains("example.com/nope:404") && msg.contains(reason), "{msg}");
                assert!(msg.contains("manifest unknown"), "{msg}");
            }
            other => panic!("{reason}: {other:?}"),
        }
        exec.stop(&run, &inst).await.unwrap();
    }
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some());
}

#[tokio::test]
async fn a_run_with_another_image_reuses_the_same_slot() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "66666666-6666-4666-8666-666666666666").await;
    let exec = executor(&h);
    let mut seen = Vec::new();
    for (name, image) in [("torch", "pytorch/pytorch:2.5"), ("jax", "ghcr.io/nvidia/jax:latest")] {
        let run = h
            .run(name, RunSpec { image: Some(image.into()), commands: vec!["true".into()], ..Default::default() })
            .await;
        exec.start(&run, &inst).await.unwrap();
        let job = pods(&h).get(&job_name(&inst, &run)).await.unwrap();
        assert_eq!(job.spec.as_ref().unwrap().containers[0].image.as_deref(), Some(image));
        seen.push(slice(&job));
        kubelet(&h, &job_name(&inst, &run), "Succeeded", exited(0)).await;
        assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(0));
    }
    assert_eq!(seen[0], seen[1], "same node, same requests and limits");
    assert_eq!(seen[0]["node"], NODE);
}

#[tokio::test]
async fn a_job_pod_deleted_by_someone_else_ends_with_137() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "77777777-7777-4777-8777-777777777777").await;
    let run = h.run("victim", RunSpec { commands: vec!["sleep 100".into()], ..Default::default() }).await;
    let exec = executor(&h);
    exec.start(&run, &inst).await.unwrap();
    kubelet(&h, &job_name(&inst, &run), "Running", running()).await;
    pods(&h).delete(&job_name(&inst, &run), &Default::default()).await.unwrap();
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(137));
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some(), "slot restored");
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(137), "and not started again");
    assert!(job_pods(&h, &inst).await.is_empty());
}

#[tokio::test]
async fn an_evicted_job_pod_without_exit_code_ends_with_137() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "78787878-7878-4787-8787-787878787878").await;
    let run = h.run("evicted", RunSpec { commands: vec!["sleep 100".into()], ..Default::default() }).await;
    let exec = executor(&h);
    exec.start(&run, &inst).await.unwrap();
    let name = job_name(&inst, &run);
    let mut pod = pods(&h).get(&name).await.unwrap();
    pod.status = Some(PodStatus { phase: Some("Failed".into()), reason: Some("Evicted".into()), ..Default::default() });
    pods(&h).replace_status(&name, &PostParams::default(), &pod).await.unwrap();
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(137));
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some(), "slot restored");
}

#[tokio::test]
async fn status_finishes_a_swap_that_start_left_half_done() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "88888888-8888-4888-8888-888888888888").await;
    let run = h.run("resumed", RunSpec { commands: vec!["true".into()], ..Default::default() }).await;
    let exec = executor(&h);
    // As if start made the Secret and deleted the slot, then the controller restarted
    // before the job Pod was created (on a real cluster: the slot took time to go).
    let name = job_name(&inst, &run);
    let marker = Secret {
        metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(PODS_NS.into()), ..Default::default() },
        data: Some(BTreeMap::new()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(h.client.clone(), PODS_NS).create(&PostParams::default(), &marker).await.unwrap();
    pods(&h).delete(&machine(&inst), &Default::default()).await.unwrap();

    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Running);
    let job = pods(&h).get(&name).await.expect("the job Pod is created");
    assert_eq!(kpool::backends::kubernetes::target_node(&job), Some(NODE));
    let secret = Api::<Secret>::namespaced(h.client.clone(), PODS_NS).get(&name).await.unwrap();
    assert_eq!(secret.owner_references().len(), 1, "the Secret now belongs to the job Pod");
}

#[tokio::test]
async fn an_invalid_environment_or_working_dir_fails_start_with_the_slot_untouched() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "99999999-9999-4999-8999-999999999999").await;
    let env = vec![EnvVar { name: "NOT-A-NAME".into(), value: Some("x".into()), value_from: None }];
    let run = h.run("bad-env", RunSpec { commands: vec!["true".into()], env, ..Default::default() }).await;
    let err = executor(&h).start(&run, &inst).await.unwrap_err();
    assert!(matches!(&err, ExecError::Unsupported(m) if m.contains("NOT-A-NAME")), "{err:?}");
    let spec = RunSpec { commands: vec!["true".into()], working_dir: Some("src".into()), ..Default::default() };
    let run = h.run("relative-dir", spec).await;
    let err = executor(&h).start(&run, &inst).await.unwrap_err();
    assert!(matches!(&err, ExecError::Unsupported(m) if m.contains("workingDir") && m.contains("\"src\"")), "{err:?}");
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some(), "slot kept");
    assert!(job_pods(&h, &inst).await.is_empty());
}

#[tokio::test]
async fn the_backend_sees_the_job_pod_as_the_machine() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").await;
    let run = h.run("seen", RunSpec { commands: vec!["sleep 100".into()], ..Default::default() }).await;
    let exec = executor(&h).with_installation(Some(INSTALLATION.into()));
    exec.start(&run, &inst).await.unwrap();
    kubelet(&h, &job_name(&inst, &run), "Running", running()).await;

    let m = backend.get(&machine(&inst)).await.expect("the machine is still there");
    assert_eq!((m.name.as_str(), m.state), (machine(&inst).as_str(), MachineState::Running));
    let owner = Owner { installation: INSTALLATION.into(), namespace: NS.into() };
    let tags: BTreeMap<String, String> = machine_tags(&inst).into_iter().chain(owner.tags()).collect();
    assert_eq!(m.tags, tags, "the job's own labels are not machine tags; the owner's are");
    let owned = backend.list_owned().await.unwrap();
    let names: Vec<&str> = owned.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, [machine(&inst).as_str()], "one machine, named as the instance knows it");

    // Deleting the machine (instance teardown) takes the job Pod too.
    backend.delete(&machine(&inst)).await.unwrap();
    assert!(job_pods(&h, &inst).await.is_empty());
    assert!(matches!(backend.get(&machine(&inst)).await, Err(kpool::backends::BackendError::NotFound(_))));
}

/// A client whose `pods/log` requests get `log` (honouring `limitBytes`), the rest the
/// in-memory API; also counts the log requests.
fn with_log(inner: Client, log: &'static [u8]) -> (Client, Arc<std::sync::atomic::AtomicUsize>) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        let seen = seen.clone();
        async move {
            if req.uri().path().ends_with("/log") {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let query = req.uri().query().unwrap_or_default().to_string();
                assert!(query.contains("container=job"), "{query}");
                let limit = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("limitBytes="))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                let body = log[..log.len().min(limit)].to_vec();
                return Ok::<_, kube::Error>(http::Response::new(kube::client::Body::from(body)));
            }
            inner.send(req).await
        }
    });
    (Client::new(service, NS), count)
}

#[tokio::test]
async fn logs_come_from_the_job_pods_log_from_an_offset() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb").await;
    let run = h.run("talky", RunSpec { commands: vec!["echo hi".into()], ..Default::default() }).await;
    let text: &'static [u8] = "hello\nwörld\n".as_bytes();
    let (client, log_calls) = with_log(h.client.clone(), text);
    let exec = PodExecutor::new(client).with_allowances(allow_pods_ns());
    exec.start(&run, &inst).await.unwrap();
    let name = job_name(&inst, &run);
    assert_eq!(exec.logs(&run, &inst, 0).await.unwrap(), (String::new(), 0), "not started: no log yet");
    assert_eq!(log_calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    kubelet(&h, &name, "Running", running()).await;
    assert_eq!(exec.logs(&run, &inst, 0).await.unwrap(), ("hello\nwörld\n".to_string(), 13));
    assert_eq!(exec.logs(&run, &inst, 6).await.unwrap(), ("wörld\n".to_string(), 13));
    // An offset inside `ö` (bytes 7..9): the rest of that character is invalid on its own.
    let (tail, next) = exec.logs(&run, &inst, 8).await.unwrap();
    assert_eq!((tail.ends_with("rld\n"), next), (true, 13));
    assert_eq!(exec.logs(&run, &inst, 13).await.unwrap(), (String::new(), 13), "at the end");
    assert_eq!(exec.logs(&run, &inst, 99).await.unwrap(), (String::new(), 99), "past the end");

    kubelet(&h, &name, "Succeeded", exited(0)).await;
    assert_eq!(exec.status(&run, &inst).await.unwrap(), JobState::Exited(0));
    assert_eq!(exec.logs(&run, &inst, 0).await.unwrap().0, "hello\nwörld\n", "still there after the job ended");
    assert!(log_calls.load(std::sync::atomic::Ordering::SeqCst) >= 5);
}

/// Reconciles, playing the kubelet between rounds: slot Pods become Running and Ready.
async fn settle_with_kubelet(h: &Harness) {
    for _ in 0..3 {
        h.settle(1).await;
        for pod in pods(h).list(&Default::default()).await.unwrap().items {
            let slot = !pod.labels().contains_key(LABEL_MACHINE);
            if slot && pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                let mut pod = pod.clone();
                pod.status = Some(PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some("10.0.0.9".into()),
                    conditions: Some(vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                });
                pods(h).replace_status(&pod.name_any(), &PostParams::default(), &pod).await.unwrap();
            }
        }
    }
    h.settle(1).await;
}

#[tokio::test]
async fn runs_execute_in_job_pods_through_the_controllers_and_reuse_the_slot() {
    let (h, _) = cluster(None).await;
    let small = ResourcesSpec {
        cpu: Some("2..".into()),
        memory: Some("4GB..".into()),
        disk: Some("1GB..".into()),
        ..Default::default()
    };
    let pin =
        PolicySpec { backends: Some(vec![BACKEND.into()]), idle_duration: Some("off".into()), ..Default::default() };
    h.instance("slice", InstanceSpec { resources: small.clone(), policy: pin.clone(), ..Default::default() }).await;
    settle_with_kubelet(&h).await;
    let inst = h.get_instance("slice").await;
    assert_eq!(inst.status.as_ref().unwrap().phase, InstancePhase::Idle, "{:?}", inst.status);
    let slot = pods(&h).get(&machine(&inst)).await.unwrap();

    let spec = |image: &str, commands: Vec<String>| RunSpec {
        resources: small.clone(),
        policy: pin.clone(),
        image: Some(image.into()),
        commands,
        ..Default::default()
    };
    h.run("first", spec("python:3.12", tricky_commands())).await;
    settle_with_kubelet(&h).await;
    let run = h.get_run("first").await;
    let st = run.status.clone().unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("slice")), "{:?}", st.conditions);
    let name = job_name(&inst, &run);
    let job = pods(&h).get(&name).await.expect("the job Pod runs the run");
    assert_eq!(slice(&job), slice(&slot));
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_none());
    assert_eq!(h.get_instance("slice").await.status.unwrap().phase, InstancePhase::Busy);

    kubelet(&h, &name, "Failed", exited(3)).await;
    settle_with_kubelet(&h).await;
    let st = h.get_run("first").await.status.unwrap();
    assert_eq!((st.phase, st.exit_code), (RunPhase::Failed, Some(3)));
    assert_eq!(h.get_instance("slice").await.status.unwrap().phase, InstancePhase::Idle);
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some(), "the slot holds the node again");

    // Another image, the same instance and slice.
    h.run("second", spec("alpine:3", vec!["true".into()])).await;
    settle_with_kubelet(&h).await;
    let run = h.get_run("second").await;
    assert_eq!(run.status.as_ref().unwrap().instance.as_deref(), Some("slice"));
    let name = job_name(&inst, &run);
    let job = pods(&h).get(&name).await.unwrap();
    assert_eq!(job.spec.as_ref().unwrap().containers[0].image.as_deref(), Some("alpine:3"));
    assert_eq!(slice(&job), slice(&slot));
    kubelet(&h, &name, "Succeeded", exited(0)).await;
    settle_with_kubelet(&h).await;
    let st = h.get_run("second").await.status.unwrap();
    assert_eq!((st.phase, st.exit_code), (RunPhase::Succeeded, Some(0)));

    // An image that cannot be pulled fails the run; the slot comes back.
    h.run("third", spec("example.com/missing:1", vec!["true".into()])).await;
    settle_with_kubelet(&h).await;
    let run = h.get_run("third").await;
    let name = job_name(&inst, &run);
    kubelet(&h, &name, "Pending", waiting("ImagePullBackOff", "pull access denied")).await;
    settle_with_kubelet(&h).await;
    let st = h.get_run("third").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Failed);
    let msg = &st.conditions.iter().find(|c| c.type_ == "Succeeded").unwrap().message;
    assert!(msg.contains("example.com/missing:1") && msg.contains("pull access denied"), "{msg}");
    assert!(pods(&h).get_opt(&name).await.unwrap().is_none(), "the failed job Pod is deleted");
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some());
    assert_eq!(h.get_instance("slice").await.status.unwrap().phase, InstancePhase::Idle);

    // Stopping a running job through the run.
    h.run("fourth", spec("alpine:3", vec!["sleep infinity".into()])).await;
    settle_with_kubelet(&h).await;
    let run = h.get_run("fourth").await;
    assert!(pods(&h).get_opt(&job_name(&inst, &run)).await.unwrap().is_some());
    // The garbage collector takes the job Pod for the instance's machine, not an orphan.
    let gc = GcConfig { grace: std::time::Duration::ZERO, ..GcConfig::default() };
    let report = Collector::default().pass(&h.ctx, &gc, Some(NS)).await.unwrap();
    assert!(report.deleted.is_empty() && report.reported.is_empty(), "{report:?}");
    assert!(pods(&h).get_opt(&job_name(&inst, &run)).await.unwrap().is_some());
    // Health checks while the job Pod stands in for the slot, still creating its container
    // for longer than the unreachable grace, leave the instance and the run alone.
    kubelet(&h, &job_name(&inst, &run), "Pending", waiting("ContainerCreating", "pulling a large image")).await;
    for _ in 0..7 {
        h.advance(std::time::Duration::from_secs(61));
        h.settle(1).await;
    }
    assert_eq!(h.get_instance("slice").await.status.unwrap().phase, InstancePhase::Busy);
    assert_eq!(h.get_run("fourth").await.status.unwrap().phase, RunPhase::Running);
    h.delete_run("fourth").await.unwrap();
    assert!(pods(&h).get_opt(&job_name(&inst, &run)).await.unwrap().is_none(), "deleting the run stops its job");
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some());
}

#[tokio::test]
async fn a_job_pod_refused_by_admission_fails_start_and_gives_the_slot_back() {
    let (h, backend) = cluster(None).await;
    let inst = instance(&backend, "box", "abababab-abab-4bab-8bab-abababababab").await;
    let refusal = "admission webhook \"policy.example.com\" denied the request: images must come from the mirror";
    *h.refuse_job_pods.lock().unwrap() = Some(refusal.into());
    let run = h.run("refused", RunSpec { commands: vec!["true".into()], ..Default::default() }).await;
    let err = executor(&h).start(&run, &inst).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Unsupported(m) if m.contains(refusal) && m.contains("refused job Pod")),
        "{err:?}"
    );
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some(), "the slot is back");
    assert!(job_pods(&h, &inst).await.is_empty());
    let secret = Api::<Secret>::namespaced(h.client.clone(), PODS_NS).get_opt(&job_name(&inst, &run)).await.unwrap();
    assert!(secret.is_none(), "the job's Secret is gone");
}

#[tokio::test]
async fn runs_whose_job_cannot_be_made_end_through_the_controllers_and_the_slot_stays() {
    let (h, _) = cluster(None).await;
    let small = ResourcesSpec { cpu: Some("2..".into()), memory: Some("4GB..".into()), ..Default::default() };
    let pin =
        PolicySpec { backends: Some(vec![BACKEND.into()]), idle_duration: Some("off".into()), ..Default::default() };
    h.instance("slice", InstanceSpec { resources: small.clone(), policy: pin.clone(), ..Default::default() }).await;
    settle_with_kubelet(&h).await;
    let inst = h.get_instance("slice").await;
    assert_eq!(inst.status.as_ref().unwrap().phase, InstancePhase::Idle, "{:?}", inst.status);
    let spec = |env: Vec<EnvVar>| RunSpec {
        resources: small.clone(),
        policy: pin.clone(),
        commands: vec!["true".into()],
        env,
        ..Default::default()
    };

    // A secretKeyRef to a Secret that does not exist: retried, then Failed after the grace.
    let from = EnvVarSource {
        secret_key_ref: Some(SecretKeySelector { name: "wandb".into(), key: "key".into(), optional: None }),
        ..Default::default()
    };
    let env = vec![EnvVar { name: "WANDB_KEY".into(), value: None, value_from: Some(from) }];
    h.run("no-secret", spec(env)).await;
    settle_with_kubelet(&h).await;
    assert!(!h.get_run("no-secret").await.status.unwrap().phase.is_finished());
    h.advance(std::time::Duration::from_secs(301));
    settle_with_kubelet(&h).await;
    let st = h.get_run("no-secret").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Failed, Some("StartFailed")), "{st:?}");
    let msg = &st.conditions.iter().find(|c| c.type_ == "Succeeded").unwrap().message;
    assert!(msg.contains("Secret wandb not found in namespace ml"), "{msg}");
    assert_eq!(h.get_instance("slice").await.status.unwrap().phase, InstancePhase::Idle);
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some(), "the slot was never touched");

    // A job Pod the API server refuses after the slot was deleted: Failed at once, slot back.
    *h.refuse_job_pods.lock().unwrap() = Some("pods \"x\" is forbidden: violates PodSecurity".into());
    h.run("refused", spec(vec![])).await;
    settle_with_kubelet(&h).await;
    let st = h.get_run("refused").await.status.unwrap();
    assert_eq!(st.phase, RunPhase::Failed, "{st:?}");
    let msg = &st.conditions.iter().find(|c| c.type_ == "Succeeded").unwrap().message;
    assert!(msg.contains("violates PodSecurity"), "{msg}");
    assert_eq!(h.get_instance("slice").await.status.unwrap().phase, InstancePhase::Idle);
    assert!(pods(&h).get_opt(&machine(&inst)).await.unwrap().is_some(), "the slot holds the node again");
}
