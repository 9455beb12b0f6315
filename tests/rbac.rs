//! Least privilege, derived from the code: the controllers, the garbage collector, the
//! leader elector and the `kubernetes` backend run through their paths against the
//! in-memory API behind a client that records every request as RBAC sees it (verb, API
//! group, resource). Every recorded request must be allowed by `deploy/rbac.yaml`, and
//! every permission there must have been used, or be listed below with the reason.
//! `scripts/check-chart` checks that the chart's default rules equal `deploy/rbac.yaml`'s.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Namespace, Node, Pod, PodStatus};
use kpool::api::backend::{Backend as BackendObject, BackendSpec, BackendType};
use kpool::api::instance::{InstanceSpec, InstanceStatus};
use kpool::api::pool::PoolSpec;
use kpool::api::profile::{Profile, ProfileSpec};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::RunSpec;
use kpool::backends::factory::DefaultFactory;
use kpool::backends::{BackendFactory, MachineSpec};
use kpool::controllers::gc::{Collector, GcConfig};
use kpool::controllers::leader::{Elector, LeaderConfig};
use kpool::exec::{Executor, PodExecutor};
use kube::api::PostParams;
use kube::ResourceExt;
use serde_json::Value;
use support::*;

/// Granted but not reachable from these tests, and why.
const GRANTED_NOT_EXERCISED: &[(&str, &str, &str, &str)] = &[
    ("watch", "kpool.dev", "instances", "kube-runtime watches in runtime.rs; the in-memory API cannot stream"),
    ("watch", "kpool.dev", "runs", "kube-runtime watches in runtime.rs"),
    ("watch", "kpool.dev", "pools", "kube-runtime watches in runtime.rs"),
    ("watch", "", "pods", "granted for the kubernetes backend's future pod informer"),
    ("watch", "kpool.dev", "backends", "kube-runtime watches in runtime.rs"),
    ("watch", "kpool.dev", "profiles", "profiles are read on demand"),
    ("delete", "kpool.dev", "instances", "a run drops its unlaunched instance when an idle one frees up first"),
    ("patch", "events.k8s.io", "events", "the event recorder folds repeated events into a series"),
    ("get", "", "configmaps", "offer catalogs from a ConfigMap (read by the backend factory)"),
    (
        "patch",
        "",
        "configmaps",
        "the finalizer on a Backend's catalog ConfigMap (tests/cluster_leaks.rs, real API server)",
    ),
];

type Grant = (String, String, String);

fn granted() -> BTreeSet<Grant> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml")).unwrap();
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !matches!(v["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            let strings = |k: &str| -> Vec<String> {
                rule[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
            };
            for g in strings("apiGroups") {
                for r in strings("resources") {
                    for verb in strings("verbs") {
                        out.insert((verb.clone(), g.clone(), r.clone()));
                    }
                }
            }
        }
    }
    out
}

fn node(name: &str) -> Node {
    ready_node(name, &[("cpu", "16"), ("memory", "64Gi"), ("pods", "110")])
}

/// Drives every path that talks to the API through the recording client.
async fn exercise(h: &Harness) {
    let cpu = |s: &str| ResourcesSpec { cpu: Some(s.into()), ..Default::default() };
    // Runs that reuse, provision (creating the default pool and an instance), finish,
    // get stopped and deleted; instances added by hand and deleted. The harness's backend
    // `aws` is of type aws, so every launch first gets or creates the instance's SSH key
    // Secret.
    h.instance("manual", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
    h.pool("team", PoolSpec { profile: Some("cheap".into()), ..Default::default() }).await;
    h.create(Profile::new("cheap", ProfileSpec::default())).await;
    h.run("team-run", RunSpec { pool: Some("team".into()), resources: cpu("2.."), ..Default::default() }).await;
    h.run("reuse", RunSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.run("new", RunSpec { resources: cpu("8.."), ..Default::default() }).await;
    h.settle(2).await;
    h.exec.exit("reuse", 0);
    h.settle(1).await;
    h.delete_run("new").await.unwrap();
    h.settle(1).await;
    // A run made when runs carried a finalizer: its deletion removes it (a patch).
    let mut legacy = kpool::api::run::Run::new("legacy", RunSpec { resources: cpu("4.."), ..Default::default() });
    legacy.metadata.finalizers = Some(vec![kpool::api::run::RUN_FINALIZER.to_string()]);
    h.create(legacy).await;
    h.delete_run("legacy").await.unwrap();
    // The first call starts deleting the machine, the second sees it gone.
    let _ = h.delete_instance("manual").await;
    h.delete_instance("manual").await.unwrap();
    h.advance(Duration::from_secs(600));
    h.settle(2).await;
    // The garbage collector.
    Collector::default().pass(&h.ctx, &GcConfig::default(), Some(NS)).await.unwrap();
    // The installation's identity, read at start: the UID of kube-system.
    let installation = kpool::controllers::installation::resolve(&kube_system_answered(h), None).await.unwrap();
    assert_eq!(installation, KUBE_SYSTEM_UID);
    // Leader election.
    let elector = Elector::new(h.ctx.client.clone(), LeaderConfig::new("kpool-system", "a"));
    assert!(elector.try_lead(t0()).await.unwrap());
    assert!(elector.try_lead(t0()).await.unwrap());
    elector.release().await.unwrap();
    // The kubernetes backend, built as the controller builds it.
    kube::Api::<Node>::all(h.client.clone()).create(&PostParams::default(), &node("n1")).await.unwrap();
    let obj = h
        .create(BackendObject::new("cluster", BackendSpec { type_: BackendType::Kubernetes, ..Default::default() }))
        .await;
    let backend = DefaultFactory::new(h.ctx.client.clone()).with_installation(installation).build(&obj).await.unwrap();
    // The Backend controller: its finalizer and its Ready condition.
    // The first pass adds the finalizer, the second builds the backend and writes `Ready`.
    let backends = kube::Api::<BackendObject>::namespaced(h.client.clone(), NS);
    for _ in 0..2 {
        let current = backends.get("cluster").await.unwrap();
        kpool::controllers::backend::reconcile(std::sync::Arc::new(current), h.ctx.clone()).await.unwrap();
    }
    let req = cpu("2..").resolve().unwrap();
    let offer = backend.offers(&req).await.unwrap().remove(0);
    let spec = MachineSpec { name: "kpool-x".into(), offer, tags: Default::default(), ssh_public_key: None };
    backend.create(&spec).await.unwrap();
    backend.get("kpool-x").await.unwrap();
    backend.list_owned().await.unwrap();
    backend.list_unattributed().await.unwrap();
    backend.delete("kpool-x").await.unwrap();
    // A run's job on a kubernetes instance: the Pod executor, as the controller builds it.
    let mut inst = kpool::api::instance::Instance::new("slice", InstanceSpec::default());
    inst.metadata.namespace = Some(NS.into());
    inst.metadata.uid = Some("3f1c3a52-0b3e-4c47-9d55-2f5d1d0c8a11".into());
    inst.status = Some(InstanceStatus {
        machine_name: Some("kpool-3f1c3a52-0b3e-4c47-9d55-2f5d1d0c8a11".into()),
        offer: Some(backend.offers(&req).await.unwrap().remove(0)),
        ..Default::default()
    });
    let spec = MachineSpec {
        name: machine(&inst),
        offer: inst.status.clone().unwrap().offer.unwrap(),
        tags: Default::default(),
        ssh_public_key: None,
    };
    backend.create(&spec).await.unwrap();
    let run = h.run("in-pod", RunSpec { commands: vec!["true".into()], ..Default::default() }).await;
    let exec = PodExecutor::new(h.ctx.client.clone());
    exec.start(&run, &inst).await.unwrap();
    exec.status(&run, &inst).await.unwrap();
    let job = PodExecutor::job_pod_name(&machine(&inst), &run.uid().unwrap(), 0);
    let pods: kube::Api<Pod> = kube::Api::namespaced(h.client.clone(), NS);
    let mut pod = pods.get(&job).await.unwrap();
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "job".into(),
            state: Some(ContainerState { running: Some(Default::default()), ..Default::default() }),
            ..Default::default()
        }]),
        ..Default::default()
    });
    pods.replace_status(&job, &PostParams::default(), &pod).await.unwrap();
    // The in-memory API does not serve pods/log: only the request matters here.
    let _ = exec.logs(&run, &inst, 0).await;
    exec.stop(&run, &inst).await.unwrap();
}

const KUBE_SYSTEM_UID: &str = "5a1f0c2e-7d4b-4e8a-9c3f-0b6d2e1a4f77";

/// The controllers' client, but `GET` of the kube-system Namespace is answered here (the
/// in-memory API cannot serve Namespaces) and recorded like every other call.
fn kube_system_answered(h: &Harness) -> kube::Client {
    let (inner, calls) = (h.ctx.client.clone(), h.api_calls.clone());
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let (inner, calls) = (inner.clone(), calls.clone());
        async move {
            if req.uri().path() != "/api/v1/namespaces/kube-system" {
                return inner.send(req).await;
            }
            calls.lock().unwrap().push(api_call(req.method(), req.uri()));
            let mut ns = Namespace::default();
            ns.metadata.name = Some("kube-system".into());
            ns.metadata.uid = Some(KUBE_SYSTEM_UID.into());
            let body = serde_json::to_vec(&ns).unwrap();
            Ok::<_, kube::Error>(http::Response::new(kube::client::Body::from(body)))
        }
    });
    kube::Client::new(service, NS)
}

fn machine(inst: &kpool::api::instance::Instance) -> String {
    inst.status.as_ref().and_then(|s| s.machine_name.clone()).unwrap_or_default()
}

#[tokio::test]
async fn every_api_call_is_granted_and_every_grant_is_used() {
    let h = Harness::new().await;
    exercise(&h).await;
    let used: BTreeSet<Grant> =
        h.api_calls.lock().unwrap().iter().map(|c| (c.verb.clone(), c.group.clone(), c.resource.clone())).collect();
    let granted = granted();
    let missing: Vec<&Grant> = used.iter().filter(|c| !granted.contains(*c)).collect();
    assert!(missing.is_empty(), "calls deploy/rbac.yaml does not allow: {missing:?}");
    let listed: BTreeSet<Grant> =
        GRANTED_NOT_EXERCISED.iter().map(|(v, g, r, _)| (v.to_string(), g.to_string(), r.to_string())).collect();
    let unused: Vec<&Grant> = granted.iter().filter(|g| !used.contains(*g) && !listed.contains(*g)).collect();
    assert!(unused.is_empty(), "granted but never used (drop them, or list them with the reason): {unused:?}");
    let stale: Vec<&Grant> = listed.iter().filter(|g| used.contains(*g) || !granted.contains(*g)).collect();
    assert!(stale.is_empty(), "GRANTED_NOT_EXERCISED entries that are used or not granted: {stale:?}");
}
