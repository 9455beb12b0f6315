//! The container image (Dockerfile, built by `scripts/image.sh` with podman) runs kpool
//! against the suite's real API server, as the Helm chart configures it: the chart's
//! Deployment arguments, its ServiceAccount's token (TokenRequest, so the chart's RBAC
//! decides every call, not the admin certificate), a read-only root filesystem, no
//! capabilities, the image's own non-root user. It must serve /healthz and /metrics, lead,
//! and place a Run on a new `kubernetes` instance (slot Pods scheduled by the real
//! scheduler onto kwok nodes), then stop cleanly on SIGTERM as PID 1, releasing its lease.
//!
//! No image (scripts/image.sh not run) fails the test with that instruction.

mod support_kube;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kpool::api::instance::Instance;
use kpool::api::run::{Run, RunPhase};
use kube::api::{Api, ListParams};
use support_kube::{cluster, describe, eventually, root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The uid and gid of the image's `USER` (distroless' `nonroot`), as the chart's
/// `runAsUser`/`runAsGroup` expect.
const NONROOT: &str = "65532";
/// Where the ServiceAccount's kubeconfig is mounted in the container.
const KUBECONFIG_IN: &str = "/etc/kpool/kubeconfig";

fn image() -> String {
    std::env::var("KPOOL_IMAGE").unwrap_or_else(|_| "kpool:test".into())
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// podman as scripts/image.sh uses it (vfs storage), with the run options that work on
/// these machines (runc, cgroupfs, no default ulimits: see ../shared/TESTING.md).
fn podman() -> Command {
    let conf = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("podman-containers.conf");
    if !conf.exists() {
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    }
    let mut cmd = Command::new(if is_root() { "env" } else { "sudo" });
    if !is_root() {
        cmd.args(["-n", "env"]);
    }
    cmd.arg(format!("CONTAINERS_CONF={}", conf.display()));
    cmd.args(["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman().args(args).output().expect("run podman");
    assert!(out.status.success(), "podman {args:?} failed: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The image must have been built: a missing one fails (never skips) with what to run.
fn require_image(image: &str) {
    let out = podman().args(["image", "exists", image]).output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the image {image} is not built: run scripts/image.sh first (podman image exists: {})",
            describe(&out)
        ),
        Err(e) => panic!("podman is not available ({e}): run scripts/image.sh first (it installs podman)"),
    }
}

/// The container; removed when the test ends, its log printed when the test failed (the
/// namespaces and the Helm release, both named after the container, are left to inspect).
struct Container {
    name: String,
    work: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = podman().args(["logs", "--tail", "60", &self.name]).output() {
                eprintln!("--- last lines of the container's log ---\n{}", describe(&out));
            }
            eprintln!("left for inspection: namespaces {} and {}, Helm release {0}", self.name, self.work);
        }
        let _ = podman().args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn helm() -> PathBuf {
    let helm = root().join(".peers/helm4/helm/helm");
    if !helm.exists() {
        let out = Command::new(root().join("scripts/peers/helm.sh")).output().expect("run scripts/peers/helm.sh");
        assert!(out.status.success(), "scripts/peers/helm.sh failed: {}", describe(&out));
    }
    helm
}

/// A `Uid:`/`Gid:` line of /proc/PID/status: real, effective, saved and filesystem ids.
fn ids<'a>(status: &'a str, key: &str) -> Vec<&'a str> {
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
    line.split_whitespace().skip(1).collect()
}

/// The value of a sample of the OpenMetrics text, e.g. `kpool_leader`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn the_image_runs_the_chart_configuration_with_a_service_account_and_places_a_run() {
    let started = Instant::now();
    let image = image();
    require_image(&image);
    let cluster = cluster();
    cluster.install_crds();
    let admin = cluster.client().await;

    // The chart, installed as a user would, in a namespace of its own, watching another.
    // Its CRDs are install_crds()' (the suite's field manager): --skip-crds.
    let system = cluster.namespace("kpool-image").await;
    let work = cluster.namespace("kpool-image-ml").await;
    let release = system.clone(); // contains "kpool": the chart's fullname is the release name
    let (repository, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    let out = Command::new(helm())
        .args(["install", &release, root().join("charts/kpool").to_str().unwrap(), "-n", &system])
        .args(["--kubeconfig", cluster.kubeconfig.to_str().unwrap(), "--skip-crds"])
        .args(["--set", &format!("image.repository={repository},image.tag={tag},image.pullPolicy=Never")])
        .args(["--set", &format!("replicas=1,watchNamespace={work},logFormat=json")])
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm install failed: {}", describe(&out));

    // The container plays the Deployment's replica: its Pod on a kwok node would run nothing.
    let deploy = format!("deployment/{release}");
    let field =
        |path: &str| cluster.kubectl_ok(&["-n", &system, "get", &deploy, "-o", &format!("jsonpath={{{path}}}")]);
    let args = field(".spec.template.spec.containers[0].args");
    assert_eq!(field(".spec.template.spec.securityContext.runAsUser"), NONROOT, "the chart's runAsUser");
    cluster.kubectl_ok(&["-n", &system, "scale", &deploy, "--replicas=0"]);
    let metrics_port = free_port();
    let args: Vec<String> = serde_json::from_str::<Vec<String>>(&args)
        .expect("the Deployment's args")
        .into_iter()
        .map(|a| if a.starts_with("--metrics-addr=") { format!("--metrics-addr=127.0.0.1:{metrics_port}") } else { a })
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("controller"), "{args:?}");
    assert!(args.contains(&format!("--watch-namespace={work}")), "{args:?}");

    // The chart's ServiceAccount's token, not the admin certificate. The server is named
    // `localhost`: the static binary resolves names itself (/etc/hosts, nsswitch.conf).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("image-{system}"));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    cluster.service_account_kubeconfig(&system, &release, &kubeconfig);
    let text = std::fs::read_to_string(&kubeconfig).unwrap().replace("https://127.0.0.1:", "https://localhost:");
    std::fs::write(&kubeconfig, text).unwrap();
    let kc = kubeconfig.to_str().unwrap();
    let whoami =
        cluster.kubectl_ok(&["--kubeconfig", kc, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(whoami, format!("system:serviceaccount:{system}:{release}"));

    let container = Container { name: release.clone(), work: work.clone() };
    let mount = format!("{}:{KUBECONFIG_IN}:ro", kubeconfig.display());
    let mut run = podman();
    run.args(["run", "-d", "--name", &container.name, "--network", "host", "--pull", "never"])
        .args(["--read-only", "--read-only-tmpfs=false", "--cap-drop", "all", "--security-opt", "no-new-privileges"])
        .args(["-v", &mount, "-e", &format!("KUBECONFIG={KUBECONFIG_IN}")])
        .args(["-e", &format!("POD_NAME={}", container.name), "-e", &format!("POD_NAMESPACE={system}")])
        .args(["-e", "KPOOL_LOG=info", &image])
        .args(&args);
    let out = run.output().expect("run podman run");
    assert!(out.status.success(), "podman run failed: {}", describe(&out));

    // The image's configuration and the process as the host's kernel sees it.
    let user = podman_ok(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user, format!("{NONROOT}:{NONROOT}"), "the image's USER");
    let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &container.name]);
    assert_ne!(pid, "0", "the container is not running: {}", podman_ok(&["logs", &container.name]));
    let proc = Path::new("/proc").join(&pid);
    let status = std::fs::read_to_string(proc.join("status")).unwrap();
    assert_eq!(ids(&status, "Uid:"), [NONROOT; 4], "real, effective, saved and fs uid of the process");
    assert_eq!(ids(&status, "Gid:"), [NONROOT; 4], "real, effective, saved and fs gid of the process");
    assert!(status.lines().any(|l| l == "CapEff:\t0000000000000000"), "capabilities left: {status}");
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    let exe = std::fs::read_link(proc.join("exe")).unwrap();
    assert!(exe.ends_with("usr/local/bin/kpool"), "the process is {}", exe.display());
    let mountinfo = std::fs::read_to_string(proc.join("mountinfo")).unwrap();
    let root_mount = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .expect("the container's root mount");
    assert!(root_mount[5].split(',').any(|o| o == "ro"), "the root filesystem is mounted {}", root_mount[5]);
    eprintln!("kpool in {image}: pid {pid} (uid/gid {NONROOT}, no capabilities), root mounted {}", root_mount[5]);

    // Operations endpoints, then leadership through the chart's leader-election Role.
    let (code, _) = eventually("/healthz", Duration::from_secs(30), || get(metrics_port, "/healthz")).await;
    assert_eq!(code, 200);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &system);
    eventually("the container to hold the leader lease", Duration::from_secs(30), || async {
        let lease = leases.get_opt("kpool-controller").await.ok()??;
        (lease.spec?.holder_identity? == container.name).then_some(())
    })
    .await;

    // Real work in the watched namespace, with the chart's namespaced Role.
    let manifests = format!(
        r#"
apiVersion: kpool.dev/v1alpha1
kind: Backend
metadata: {{name: cluster, namespace: {work}}}
spec:
  type: kubernetes
  kubernetes: {{}}
---
apiVersion: kpool.dev/v1alpha1
kind: Pool
metadata: {{name: main, namespace: {work}}}
spec:
  maxInstances: 2
---
apiVersion: kpool.dev/v1alpha1
kind: Run
metadata: {{name: hello, namespace: {work}}}
spec:
  pool: main
  resources: {{cpu: "1", memory: 1GB.., disk: 10GB..}}
  commands: ["echo hello from the image", "sleep 600"]
"#
    );
    let mut kubectl = cluster.kubectl();
    let mut apply = kubectl.args(["apply", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut apply.stdin.take().unwrap(), manifests.as_bytes()).unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply failed: {}", describe(&out));

    let runs: Api<Run> = Api::namespaced(admin.clone(), &work);
    let status = eventually("the run to get an instance and run", Duration::from_secs(120), || async {
        let s = runs.get("hello").await.ok()?.status?;
        ((s.phase == RunPhase::Running && s.instance.is_some()) || s.phase.is_finished()).then_some(s)
    })
    .await;
    // A run that ended here failed for good (e.g. NoCapacity when RBAC denied the backend).
    let why: Vec<String> = status.conditions.iter().map(|c| format!("{}: {}", c.type_, c.message)).collect();
    assert_eq!(status.phase, RunPhase::Running, "the run ended: {why:#?}");
    let (instance, phase) = (status.instance.unwrap(), status.phase);
    let instances: Api<Instance> = Api::namespaced(admin.clone(), &work);
    let inst = instances.get(&instance).await.unwrap();
    let inst_status = inst.status.unwrap_or_default();
    // kpool asks for the node by affinity; the scheduler binds the Pod a moment later.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &work);
    let placed: Vec<String> = eventually("the run's Pods bound to kwok nodes", Duration::from_secs(60), || async {
        let pods = pods.list(&ListParams::default()).await.ok()?.items;
        let placed: Vec<String> = pods
            .iter()
            .map(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                format!("{}@{node}", p.metadata.name.clone().unwrap_or_default())
            })
            .collect();
        (!placed.is_empty() && placed.iter().all(|p| p.contains("@kwok-"))).then_some(placed)
    })
    .await;
    eprintln!("run hello: {phase:?} on {instance} ({:?}); pods {placed:?}", inst_status.phase);

    let (code, metrics) = get(metrics_port, "/metrics").await.expect("/metrics");
    assert_eq!(code, 200);
    assert_eq!(sample(&metrics, "kpool_leader"), Some(1.0), "{metrics}");
    let runs_reconciled = sample(&metrics, "kpool_reconciles_total{kind=\"run\"}").unwrap_or(0.0);
    assert!(runs_reconciled >= 1.0, "this container reconciled the run: {metrics}");
    let logs = podman().args(["logs", &container.name]).output().unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    let denied: Vec<&str> = logs.lines().filter(|l| l.to_lowercase().contains("forbidden")).collect();
    assert!(denied.is_empty(), "calls the chart's RBAC denied:\n{}", denied.join("\n"));

    // Tear down through the controller (finalizers, slot Pods), then stop it as Kubernetes
    // would: SIGTERM to PID 1, which must exit 0 and release the lease well before a kill.
    cluster.kubectl_ok(&["-n", &work, "delete", "run", "hello", "--wait=false"]);
    cluster.kubectl_ok(&["-n", &work, "delete", "instances", "--all", "--wait=false"]);
    eventually("the instances to be gone", Duration::from_secs(60), || async {
        instances.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    let stopping = Instant::now();
    podman_ok(&["stop", "-t", "20", &container.name]);
    let took = stopping.elapsed();
    let exit = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &container.name]);
    let tail = podman_ok(&["logs", "--tail", "20", &container.name]);
    assert_eq!(exit, "0", "exit code after SIGTERM (took {took:?}): {tail}");
    assert!(took < Duration::from_secs(15), "SIGTERM took {took:?}: not handled by PID 1?");
    let lease = leases.get("kpool-controller").await.unwrap();
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert!(holder.is_empty(), "the lease is still held by {holder:?} after a clean stop");

    drop(container);
    let out = Command::new(helm())
        .args(["uninstall", &release, "-n", &system, "--kubeconfig", cluster.kubeconfig.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "helm uninstall failed: {}", describe(&out));
    cluster.kubectl_ok(&["delete", "namespace", &work, &system, "--wait=false"]);
    eprintln!("image test done in {:?} (stopped in {took:?})", started.elapsed());
}
