//! End to end on the real control plane (scripts/peers/kube.sh), as users run kpool:
//! the plain manifests of `deploy/` and the Helm chart install for real and their
//! controller Pods land on kwok nodes; then the `kpool` binary runs as a separate process
//! authenticated with a token of the chart's ServiceAccount, so the real RBAC authorizer
//! decides every call, and runs applied with `kubectl apply` are placed on Pods the real
//! scheduler puts on kwok nodes, reused, and drained after the idle duration.
//!
//! kwok is not a kubelet: it makes scheduled Pods Running and Ready, and deletes Pods
//! being deleted; a job Pod's container exit is written here, as a kubelet would.

mod support_kube;

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::run::{Run, RunPhase};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use support_kube::{
    apply, cluster, eventually, exit_job, helm, instance_in_phase, job_pod, root, run_in_phase, tail, Cluster, Kpool,
    WAIT,
};
use tokio::sync::OnceCell;

const RELEASE_NS: &str = "kpool-system";
const SA: &str = "kpool";

/// What installing the plain manifests and then the chart showed.
#[derive(Debug)]
struct Installed {
    /// Nodes the Pods of `deploy/deployment.yaml` were scheduled on.
    manifest_nodes: Vec<String>,
    /// Nodes the Pods of the chart's Deployment were scheduled on.
    chart_nodes: Vec<String>,
}

static INSTALLED: OnceCell<Installed> = OnceCell::const_new();

/// Nodes of the ready Pods labelled `selector` in kpool-system, once `want` are ready.
async fn controller_pod_nodes(client: &Client, selector: &str, want: usize) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    eventually(&format!("{want} ready Pods {selector}"), WAIT, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await.ok()?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        (ready.len() == want).then_some(ready)
    })
    .await
}

/// `kubectl apply -f deploy/`, its Deployment rolled out on kwok nodes, removed again; then
/// `helm install` of the chart, rolled out too. Once per test binary.
async fn install(c: &Cluster) -> &'static Installed {
    INSTALLED
        .get_or_init(|| async {
            c.install_crds();
            let client = c.client().await;
            // A cluster reused from an earlier run (scripts/dev-cluster) may have the chart.
            let out = Command::new(helm())
                .args(["uninstall", "kpool", "-n", RELEASE_NS, "--ignore-not-found", "--wait"])
                .env("KUBECONFIG", &c.kubeconfig)
                .output()
                .expect("run helm");
            assert!(out.status.success(), "helm uninstall failed: {}", support_kube::describe(&out));
            let deploy = root().join("deploy");
            // As users do it, on a cluster without the namespace: `kubectl apply -f DIR`
            // takes the files in name order, so the namespace's file sorts first.
            c.kubectl_ok(&["apply", "-f", deploy.to_str().unwrap()]);
            let manifest_nodes = controller_pod_nodes(&client, "app.kubernetes.io/name=kpool", 2).await;
            c.kubectl_ok(&["rollout", "status", "-n", RELEASE_NS, "deployment/kpool-controller", "--timeout=60s"]);
            for f in ["deployment.yaml", "rbac.yaml"] {
                c.kubectl_ok(&["delete", "--wait", "-f", deploy.join(f).to_str().unwrap()]);
            }
            let out = Command::new(helm())
                .args(["upgrade", "--install", "kpool", root().join("charts/kpool").to_str().unwrap()])
                .args(["-n", RELEASE_NS, "--wait", "--timeout", "2m", "--set", "image.tag=test"])
                .env("KUBECONFIG", &c.kubeconfig)
                .output()
                .expect("run helm");
            assert!(out.status.success(), "helm install failed: {}", support_kube::describe(&out));
            let chart_nodes = controller_pod_nodes(&client, "app.kubernetes.io/instance=kpool", 2).await;
            Installed { manifest_nodes, chart_nodes }
        })
        .await
}

/// A kubeconfig for the chart's ServiceAccount (TokenRequest), in the target dir.
fn chart_sa_kubeconfig(c: &Cluster, name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.kubeconfig"));
    c.service_account_kubeconfig(RELEASE_NS, SA, &path);
    path
}

fn run_yaml(name: &str, resources: &str) -> String {
    format!(
        "apiVersion: kpool.dev/v1alpha1\nkind: Run\nmetadata: {{name: {name}}}\nspec:\n  image: busybox:1.36\n  \
         commands: [\"sleep 600\"]\n  env: [{{name: GREETING, value: hello}}]\n  resources: {resources}\n"
    )
}

#[tokio::test]
async fn plain_manifests_and_the_chart_install_and_their_pods_land_on_kwok_nodes() {
    let c = cluster();
    let installed = install(c).await;
    for node in installed.manifest_nodes.iter().chain(&installed.chart_nodes) {
        assert!(node.starts_with("kwok-"), "a controller Pod on {node}: {installed:?}");
    }
    // The controller needs no GPU: the scheduler keeps it off the tainted GPU nodes.
    assert!(installed.chart_nodes.iter().all(|n| n == "kwok-cpu-0"), "{installed:?}");
    let sa = c.kubectl_ok(&["-n", RELEASE_NS, "get", "serviceaccount", SA, "-o", "name"]);
    assert_eq!(sa.trim(), "serviceaccount/kpool");
}

#[tokio::test]
async fn runs_applied_with_kubectl_are_placed_reused_and_drained_with_the_chart_s_permissions() {
    let c = cluster();
    install(c).await;
    let admin = c.client().await;
    let ns = c.namespace("e2e").await;
    let kubeconfig = chart_sa_kubeconfig(c, &ns);
    let kpool = Kpool::start(&kubeconfig, &ns, Some(RELEASE_NS));

    apply(
        c,
        &ns,
        "apiVersion: kpool.dev/v1alpha1\nkind: Backend\nmetadata: {name: cluster}\nspec: {type: kubernetes}\n---\n\
         apiVersion: kpool.dev/v1alpha1\nkind: Pool\nmetadata:\n  name: e2e\n  annotations: {kpool.dev/default: \"true\"}\n\
         spec:\n  defaults: {idleDuration: 15s}\n",
    );
    let runs: Api<Run> = Api::namespaced(admin.clone(), &ns);
    let instances: Api<Instance> = Api::namespaced(admin.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);

    // A GPU run: the slot Pod is placed by the real scheduler on the node with A100s.
    apply(c, &ns, &run_yaml("first", "{gpu: \"A100:1\", cpu: \"1..\", memory: \"1GB..\", disk: \"1GB..\"}"));
    let first = run_in_phase(&runs, "first", RunPhase::Running).await;
    let instance = first.status.as_ref().unwrap().instance.clone().expect("an instance");
    let job = job_pod(&pods, &first).await;
    // Bound by the real scheduler: kpool only asks for the node by affinity.
    assert!(job.spec.as_ref().unwrap().affinity.is_some(), "{:?}", job.spec);
    assert_eq!(job.spec.as_ref().unwrap().node_name.as_deref(), Some("kwok-a100-0"), "{:?}", job.spec);
    let gpus = job.spec.as_ref().unwrap().containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(gpus["nvidia.com/gpu"].0, "1");
    // The job's environment is in a Secret owned by the job Pod.
    let env = secrets.get(&job.name_any()).await.expect("the job's env Secret");
    let owner = &env.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", job.uid().unwrap().as_str()));

    exit_job(&pods, &job, 0).await;
    let done = run_in_phase(&runs, "first", RunPhase::Succeeded).await;
    assert_eq!(done.status.as_ref().unwrap().exit_code, Some(0));
    instance_in_phase(&instances, &instance, InstancePhase::Idle).await;

    // A second run reuses the idle instance; starting it clears the first job Pod, and the
    // real garbage collector deletes that Pod's Secret through its ownerReference.
    apply(c, &ns, &run_yaml("second", "{cpu: \"1..\", memory: \"1GB..\", disk: \"1GB..\", gpu: \"A100:1\"}"));
    let second = run_in_phase(&runs, "second", RunPhase::Running).await;
    assert_eq!(
        second.status.as_ref().unwrap().instance.as_deref(),
        Some(instance.as_str()),
        "the idle instance is reused"
    );
    eventually("the first job's Secret garbage-collected", WAIT, || async {
        secrets.get_opt(&job.name_any()).await.ok()?.is_none().then_some(())
    })
    .await;
    let job2 = job_pod(&pods, &second).await;
    exit_job(&pods, &job2, 3).await;
    let failed = run_in_phase(&runs, "second", RunPhase::Failed).await;
    assert_eq!(failed.status.as_ref().unwrap().exit_code, Some(3));

    // Idle for 15 s: the instance is terminated, its Pods are gone, the pool drains.
    instance_in_phase(&instances, &instance, InstancePhase::Idle).await;
    eventually("the idle instance terminated", WAIT, || async {
        let i = instances.get_opt(&instance).await.ok()?;
        i.is_none_or(|i| i.status.is_some_and(|s| s.phase == InstancePhase::Terminated)).then_some(())
    })
    .await;
    eventually("the machine's Pods gone", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("kpool.dev/managed-by=kpool")).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;

    // Events, as documented, by kpool's reporter.
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    for want in ["Launched", "Assigned", "IdleTimeout"] {
        assert!(reasons.iter().any(|r| r == want), "no {want} Event in {reasons:?}");
    }
    assert!(!kpool.log().contains("Forbidden"), "a call was denied: {}", tail(&kpool.log(), 40));
}

#[tokio::test]
async fn a_busy_instance_deleted_with_kubectl_waits_until_its_machine_is_gone() {
    let c = cluster();
    install(c).await;
    let admin = c.client().await;
    let ns = c.namespace("e2e-delete").await;
    let kubeconfig = chart_sa_kubeconfig(c, &ns);
    let _kpool = Kpool::start(&kubeconfig, &ns, None);
    apply(
        c,
        &ns,
        "apiVersion: kpool.dev/v1alpha1\nkind: Backend\nmetadata: {name: cluster}\nspec: {type: kubernetes}\n---\n\
         apiVersion: kpool.dev/v1alpha1\nkind: Pool\nmetadata:\n  name: p\n  annotations: {kpool.dev/default: \"true\"}\nspec: {}\n",
    );
    apply(c, &ns, &run_yaml("busy", "{cpu: \"1..\", memory: \"1GB..\", disk: \"1GB..\"}"));
    let runs: Api<Run> = Api::namespaced(admin.clone(), &ns);
    let instances: Api<Instance> = Api::namespaced(admin.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let run = run_in_phase(&runs, "busy", RunPhase::Running).await;
    let instance = run.status.as_ref().unwrap().instance.clone().unwrap();
    let job = job_pod(&pods, &run).await;
    instance_in_phase(&instances, &instance, InstancePhase::Busy).await;

    // `kubectl delete` returns once the finalizer is removed: by then the machine is gone.
    let out = c.kubectl().args(["delete", "-n", &ns, "instance", &instance, "--timeout=90s"]).output().unwrap();
    assert!(out.status.success(), "kubectl delete: {}", support_kube::describe(&out));
    assert!(instances.get_opt(&instance).await.unwrap().is_none());
    let left = pods.list(&ListParams::default().labels("kpool.dev/managed-by=kpool")).await.unwrap();
    assert!(
        left.items.is_empty(),
        "machine Pods left: {:?}",
        left.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    assert!(pods.get_opt(&job.name_any()).await.unwrap().is_none(), "the job Pod is deleted with the machine");
    let run = eventually("the run ends", WAIT, || async {
        runs.get("busy").await.ok().filter(|r| r.status.as_ref().is_some_and(|s| s.phase != RunPhase::Running))
    })
    .await;
    assert_ne!(run.status.unwrap().phase, RunPhase::Succeeded, "a run whose instance was deleted did not succeed");
}

#[tokio::test]
async fn a_controller_watching_one_namespace_is_denied_everything_else() {
    let c = cluster();
    c.install_crds();
    let watched = c.namespace("scoped").await;
    let other = c.namespace("scoped-other").await;
    // The release is named like its namespace: the chart's cluster-wide objects are unique.
    let release_ns = c.namespace("kpool-scoped").await;
    let out = Command::new(helm())
        .args(["install", &release_ns, root().join("charts/kpool").to_str().unwrap(), "-n", &release_ns])
        .args(["--skip-crds", "--set", &format!("watchNamespace={watched}"), "--set", "replicas=1"])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm install failed: {}", support_kube::describe(&out));
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{release_ns}.kubeconfig"));
    c.service_account_kubeconfig(&release_ns, &release_ns, &path);
    let sa = support_kube::client_from(&path).await;

    // Allowed in the watched namespace (the Secret does not exist: 404, not 403) ...
    let watched_secrets: Api<Secret> = Api::namespaced(sa.clone(), &watched);
    match watched_secrets.get("aws-creds").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404, "{e:?}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // ... denied by the real RBAC authorizer anywhere else, and cluster-wide.
    let other_secrets: Api<Secret> = Api::namespaced(sa.clone(), &other);
    for result in
        [other_secrets.get("aws-creds").await.map(|_| ()), other_secrets.list(&ListParams::default()).await.map(|_| ())]
    {
        match result {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 403, "{e:?}");
                assert!(e.message.contains("cannot"), "{e:?}");
            }
            other => panic!("expected Forbidden, got {other:?}"),
        }
    }
    let all_runs: Api<Run> = Api::all(sa.clone());
    let denied = all_runs.list(&ListParams::default()).await.expect_err("listing runs cluster-wide is denied");
    assert!(matches!(denied, kube::Error::Api(ref e) if e.code == 403), "{denied:?}");
    // The scoped controller still works in its namespace with exactly those permissions.
    let _kpool = Kpool::start(&path, &watched, Some(&release_ns));
    apply(
        c,
        &watched,
        "apiVersion: kpool.dev/v1alpha1\nkind: Backend\nmetadata: {name: cluster}\nspec: {type: kubernetes}\n---\n\
         apiVersion: kpool.dev/v1alpha1\nkind: Pool\nmetadata:\n  name: p\n  annotations: {kpool.dev/default: \"true\"}\nspec: {}\n",
    );
    apply(c, &watched, &run_yaml("scoped", "{cpu: \"1..\", memory: \"1GB..\", disk: \"1GB..\"}"));
    let runs: Api<Run> = Api::namespaced(c.client().await, &watched);
    run_in_phase(&runs, "scoped", RunPhase::Running).await;
}
