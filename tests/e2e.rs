//! End to end on a real cluster (kind, k3d, minikube): the controllers run in this process
//! against the current kube context with the `kubernetes` backend, and a run is placed,
//! its instance reused by a second run, and the pool drained after the idle duration.
//!
//! Run with: `cargo test --test e2e -- --ignored` (KUBECONFIG pointing at a disposable
//! cluster with one schedulable node that has 1 CPU and 1 GiB free). With
//! `KPOOL_E2E_INSTALLED=1` the test uses the controller installed in the cluster (by the
//! Helm chart: `scripts/e2e-kind.sh` does it all on kind) instead of running one in-process.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kpool::api::backend::{Backend, BackendSpec, BackendType};
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::policy::PolicySpec;
use kpool::api::pool::{Pool, PoolSpec, DEFAULT_POOL_ANNOTATION};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{Run, RunPhase, RunSpec};
use kpool::backends::factory::DefaultFactory;
use kpool::controllers::gc::GcConfig;
use kpool::controllers::{runtime, Context, SystemClock};
use kpool::exec::HoldExecutor;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

const NS: &str = "kpool-e2e";

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in kpool::api::crds() {
        let pp = PatchParams::apply("kpool-e2e").force();
        api.patch(&crd.name_any(), &pp, &Patch::Apply(&crd)).await.expect("apply CRD");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
}

async fn wait_for<K, F>(api: &Api<K>, name: &str, what: &str, ok: F) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> bool,
{
    for _ in 0..180 {
        if let Some(obj) = api.get_opt(name).await.expect("get") {
            if ok(&obj) {
                return obj;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{name}: timed out waiting for {what}: {:?}", api.get_opt(name).await);
}

/// A run that keeps its instance busy until stopped. With the installed controller it
/// executes in a job Pod in place of the instance's slot Pod.
fn sleeper() -> RunSpec {
    RunSpec {
        resources: small(),
        image: Some("busybox:1.36".into()),
        commands: vec!["sleep 600".into()],
        ..Default::default()
    }
}

fn small() -> ResourcesSpec {
    ResourcesSpec {
        cpu: Some("1..".into()),
        memory: Some("1GB..".into()),
        disk: Some("1GB..".into()),
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn runs_reuse_an_instance_and_the_pool_drains_after_the_idle_duration() {
    let client = Client::try_default().await.expect("a kube context (KUBECONFIG)");
    if std::env::var("KPOOL_E2E_INSTALLED").is_err() {
        install_crds(&client).await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta { name: Some(NS.into()), ..Default::default() },
        ..Default::default()
    };
    let _ = namespaces.create(&PostParams::default(), &ns).await;

    let installed = std::env::var("KPOOL_E2E_INSTALLED").is_ok_and(|v| v == "1");
    let controllers = (!installed).then(|| {
        let ctx = Arc::new(Context::new(
            client.clone(),
            Arc::new(DefaultFactory::new(client.clone())),
            Arc::new(HoldExecutor),
            Arc::new(SystemClock),
        ));
        tokio::spawn(runtime::run_all(ctx, GcConfig::default(), Some(NS.to_string())))
    });

    let pp = PostParams::default();
    let backends: Api<Backend> = Api::namespaced(client.clone(), NS);
    backends
        .create(&pp, &Backend::new("cluster", BackendSpec { type_: BackendType::Kubernetes, ..Default::default() }))
        .await
        .expect("backend");
    let pools: Api<Pool> = Api::namespaced(client.clone(), NS);
    let mut pool = Pool::new(
        "e2e",
        PoolSpec {
            defaults: Some(PolicySpec { idle_duration: Some("20s".into()), ..Default::default() }),
            ..Default::default()
        },
    );
    pool.annotations_mut().insert(DEFAULT_POOL_ANNOTATION.into(), "true".into());
    pools.create(&pp, &pool).await.expect("pool");

    let runs: Api<Run> = Api::namespaced(client.clone(), NS);
    let instances: Api<Instance> = Api::namespaced(client.clone(), NS);
    let running = |r: &Run| r.status.as_ref().is_some_and(|s| s.phase == RunPhase::Running);

    runs.create(&pp, &Run::new("first", sleeper())).await.unwrap();
    let first = wait_for(&runs, "first", "Running", running).await;
    let instance = first.status.unwrap().instance.unwrap();

    let stop = serde_json::json!({"spec": {"stop": true}});
    runs.patch("first", &PatchParams::default(), &Patch::Merge(&stop)).await.unwrap();
    wait_for(&instances, &instance, "Idle", |i: &Instance| {
        i.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Idle)
    })
    .await;

    runs.create(&pp, &Run::new("second", sleeper())).await.unwrap();
    let second = wait_for(&runs, "second", "Running", running).await;
    assert_eq!(second.status.unwrap().instance.as_deref(), Some(instance.as_str()), "the idle instance is reused");

    runs.patch("second", &PatchParams::default(), &Patch::Merge(&stop)).await.unwrap();
    wait_for(&instances, &instance, "Terminated", |i: &Instance| {
        i.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Terminated)
    })
    .await;

    if let Some(c) = controllers {
        c.abort();
    }
    namespaces.delete(NS, &DeleteParams::default()).await.expect("cleanup");
}
