//! Jobs executing for real: one real Node (`scripts/peers/kube-node.sh`: a kubelet on
//! containerd and runc) joins the suite's control plane, and kpool's slot and job Pods run
//! there with images built on this machine (the pause image kube-node.sh builds, and its
//! busybox image), so exit codes, logs and the environment are the kubelet's, not written
//! by the test as on kwok.
//!
//! The node is tainted `kpool.dev/real-node=true:NoSchedule`: the Backend reaches it with
//! `spec.kubernetes.tolerations` and a `nodeSelector` on its hostname label, and no other
//! test's Pods land there. It needs root (cgroups, mounts, network namespaces), and one real
//! node runs per machine (a fixed bridge and subnet): a lock file in the temporary directory
//! makes concurrent runs of this test wait for each other. The node is stopped when the test
//! ends, passing or failing, before the control plane stops.

mod support_kube;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::run::{Run, RunPhase};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use support_kube::{apply, cluster, describe, eventually, instance_in_phase, root, run_in_phase, Cluster, Kpool, WAIT};

/// Name of the real node (kube-node.sh's default), also its `kubernetes.io/hostname` label.
const NODE: &str = "kpool-real-node";
/// The sandbox image `kube-node.sh start` builds and imports: also the slot Pod's image.
const PAUSE_IMAGE: &str = "localhost/kpool/pause:3.10";
const TAINT: &str = "kpool.dev/real-node";

fn node_script(args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/peers/kube-node.sh")).args(args).output().expect("run kube-node.sh");
    assert!(out.status.success(), "scripts/peers/kube-node.sh {args:?} failed: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The real node of this test, stopped when dropped (also when the test fails).
struct RealNode {
    cluster_dir: PathBuf,
    _lock: File,
}

impl RealNode {
    /// Starts the node in the cluster whose kubeconfig is `DIR/kubeconfig` (kube.sh's layout)
    /// and imports `images` (names in podman's storage) into its containerd.
    fn start(c: &Cluster, images: &[&str]) -> RealNode {
        let lock = File::create(std::env::temp_dir().join("kpool-real-node.lock")).unwrap();
        lock.lock().expect("lock the real node of this machine");
        let cluster_dir = c.kubeconfig.parent().expect("the kubeconfig's directory").to_path_buf();
        let dir = cluster_dir.to_str().unwrap().to_string();
        let started = Instant::now();
        node_script(&["start", &dir, NODE]);
        let node = RealNode { cluster_dir, _lock: lock };
        eprintln!("real node {NODE} ready in {:.1} s", started.elapsed().as_secs_f64());
        for image in images {
            node_script(&["import", &dir, image, NODE]);
        }
        node
    }

    fn logs(&self) -> PathBuf {
        self.cluster_dir.join(format!("node-{NODE}/logs"))
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the real node's logs (kubelet, containerd) stay in {}", self.logs().display());
        }
        let out = Command::new(root().join("scripts/peers/kube-node.sh"))
            .args(["stop", self.cluster_dir.to_str().unwrap(), NODE])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("stopping the real node failed: {}", describe(&out)),
            Err(e) => eprintln!("stopping the real node failed: {e}"),
        }
    }
}

/// `kubectl pool logs RUN -n NS`: what the user reads.
fn pool_logs(kubeconfig: &Path, ns: &str, run: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-pool"))
        .args(["logs", run, "-n", ns])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run kubectl-pool");
    assert!(out.status.success(), "kubectl pool logs {run}: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn run_yaml(name: &str, greeting: &str, commands: &[&str]) -> String {
    let commands: Vec<String> = commands.iter().map(|c| format!("'{}'", c.replace('\'', "''"))).collect();
    format!(
        "apiVersion: kpool.dev/v1alpha1\nkind: Run\nmetadata: {{name: {name}}}\nspec:\n  commands: [{}]\n  \
         env: [{{name: GREETING, value: {greeting}}}]\n  resources: {{cpu: \"1..\", memory: \"1GB..\", disk: \"1GB..\"}}\n",
        commands.join(", ")
    )
}

/// The job Pod of `run`, finished.
async fn finished_job_pod(pods: &Api<Pod>, run: &Run) -> Pod {
    let selector = format!("kpool.dev/run-uid={}", run.uid().unwrap());
    let list = pods.list(&ListParams::default().labels(&selector)).await.unwrap();
    let [pod] = <[Pod; 1]>::try_from(list.items).unwrap_or_else(|p| panic!("not one job Pod: {p:?}"));
    pod
}

/// The exit code the kubelet recorded for the job container, and its image ID.
fn terminated(pod: &Pod) -> (i32, String) {
    let status = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).expect("container statuses");
    let job = status.iter().find(|c| c.name == "job").expect("the job container's status");
    let t = job.state.as_ref().and_then(|s| s.terminated.as_ref()).expect("terminated");
    (t.exit_code, job.image_id.clone())
}

/// The hostname the kubelet gives a Pod: its name, cut to 63 characters.
fn hostname_of(pod: &Pod) -> String {
    let name = pod.name_any();
    name[..name.len().min(63)].trim_end_matches(['-', '.']).to_string()
}

#[tokio::test]
async fn runs_execute_for_real_on_a_real_node_and_reuse_its_instance() {
    let started = Instant::now();
    let c = cluster();
    c.install_crds();
    let busybox = node_script(&["busybox"]).trim().to_string();
    let _node = RealNode::start(c, &[&busybox]);
    let admin = c.client().await;
    let ns = c.namespace("real-node").await;
    let kpool = Kpool::start(&c.kubeconfig, &ns, None);

    apply(
        c,
        &ns,
        &format!(
            "apiVersion: kpool.dev/v1alpha1\nkind: Backend\nmetadata: {{name: real}}\nspec:\n  type: kubernetes\n  \
             kubernetes:\n    image: {PAUSE_IMAGE}\n    runImage: {busybox}\n    \
             nodeSelector: {{kubernetes.io/hostname: {NODE}}}\n    \
             tolerations: [{{key: {TAINT}, operator: Exists, effect: NoSchedule}}]\n---\n\
             apiVersion: kpool.dev/v1alpha1\nkind: Pool\nmetadata:\n  name: real\n  \
             annotations: {{kpool.dev/default: \"true\"}}\nspec:\n  defaults: {{idleDuration: 10m}}\n"
        ),
    );
    let runs: Api<Run> = Api::namespaced(admin.clone(), &ns);
    let instances: Api<Instance> = Api::namespaced(admin.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);

    // The job's commands run in the busybox image on the real node; the kubelet reports exit 3.
    apply(c, &ns, &run_yaml("first", "hello", &["echo \"$GREETING from $HOSTNAME\"", "exit 3"]));
    let first = run_in_phase(&runs, "first", RunPhase::Failed).await;
    let st = first.status.clone().unwrap();
    assert_eq!(st.exit_code, Some(3), "{st:?}");
    let instance = st.instance.clone().expect("the run's instance");
    let job = finished_job_pod(&pods, &first).await;
    assert_eq!(job.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE), "bound to the real node");
    let (code, image_id) = terminated(&job);
    assert_eq!(code, 3);
    assert!(!image_id.is_empty(), "the kubelet reports the image it ran");
    // The echoed line comes back through kubectl pool logs; $GREETING came from the env Secret.
    assert_eq!(pool_logs(&c.kubeconfig, &ns, "first"), format!("hello from {}\n", hostname_of(&job)));

    // The slot comes back, for real: pause runs on the node again and the instance is idle.
    let slot = instance_in_phase(&instances, &instance, InstancePhase::Idle).await;
    let machine = slot.status.unwrap().machine_name.expect("the instance's machine");
    eventually("the slot Pod running on the real node", WAIT, || async {
        let pod = pods.get_opt(&machine).await.ok()??;
        let running = pod.status.as_ref()?.phase.as_deref() == Some("Running");
        (running && pod.spec.as_ref()?.node_name.as_deref() == Some(NODE)).then_some(())
    })
    .await;

    // A second run reuses the idle instance, and succeeds.
    apply(
        c,
        &ns,
        &run_yaml("second", "bonjour", &["echo \"$GREETING from $HOSTNAME\"", "test \"$GREETING\" = bonjour"]),
    );
    let second = run_in_phase(&runs, "second", RunPhase::Succeeded).await;
    let st = second.status.clone().unwrap();
    assert_eq!(st.exit_code, Some(0), "{st:?}");
    assert_eq!(st.instance.as_deref(), Some(instance.as_str()), "the idle instance is reused");
    let job2 = finished_job_pod(&pods, &second).await;
    assert_eq!(terminated(&job2).0, 0);
    assert_eq!(pool_logs(&c.kubeconfig, &ns, "second"), format!("bonjour from {}\n", hostname_of(&job2)));
    assert!(pods.get_opt(&job.name_any()).await.unwrap().is_none(), "the first job Pod is cleared");

    // Deleting the instance deletes its Pods while the node is there to confirm it.
    let out = c.kubectl().args(["delete", "-n", &ns, "instance", &instance, "--timeout=90s"]).output().unwrap();
    assert!(out.status.success(), "kubectl delete instance: {}", describe(&out));
    let left = pods.list(&ListParams::default().labels("kpool.dev/managed-by=kpool")).await.unwrap();
    assert!(left.items.is_empty(), "Pods left: {:?}", left.items.iter().map(|p| p.name_any()).collect::<Vec<_>>());
    drop(kpool);
    let _ = c.kubectl().args(["delete", "namespace", &ns, "--wait=false"]).output();
    eprintln!("real-node test done in {:.1} s", started.elapsed().as_secs_f64());
}
