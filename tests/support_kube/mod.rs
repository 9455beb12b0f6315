//! The real control plane of the cluster suite (tests/cluster_*.rs): etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok nodes, built from Go modules and started
//! on loopback by `scripts/peers/kube.sh`.
//!
//! `scripts/test` starts one cluster for the whole suite and passes its kubeconfig in
//! `KPOOL_TEST_KUBECONFIG`. Without it (a single `cargo test --test cluster_…`), the first
//! test of the binary starts a cluster of its own (`kube.sh up`), which stops when the test
//! process exits. Either way, a cluster that cannot start fails the tests with the reason;
//! nothing is skipped. Tests share the cluster: each works in a namespace of its own.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::run::{Run, RunPhase};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};

/// How long the cluster tests wait for an object to reach a state.
pub const WAIT: Duration = Duration::from_secs(90);

pub struct Cluster {
    pub kubeconfig: PathBuf,
    /// Directory of the built binaries (kubectl, kstatus, …).
    pub bin: PathBuf,
    _keepalive: Option<Mutex<(Child, ChildStdin)>>,
}

/// The plural names of kpool's kinds.
pub const KINDS: [&str; 5] = ["backends", "instances", "pools", "profiles", "runs"];

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static CRDS: OnceLock<()> = OnceLock::new();

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cluster of this test run, started on first use when the suite did not start one.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let script = root().join("scripts/peers/kube.sh");
        let out = Command::new(&script).arg("bin").output().expect("run scripts/peers/kube.sh bin");
        let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        if let Ok(path) = std::env::var("KPOOL_TEST_KUBECONFIG") {
            return Cluster { kubeconfig: PathBuf::from(path), bin, _keepalive: None };
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kube-{}", std::process::id()));
        eprintln!("starting a control plane in {} (scripts/peers/kube.sh up)", dir.display());
        let mut child = Command::new(&script)
            .arg("up")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start scripts/peers/kube.sh up");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read kube.sh's answer");
        let kubeconfig = line.strip_prefix("ready ").map(|p| PathBuf::from(p.trim())).unwrap_or_else(|| {
            panic!(
                "the control plane did not start (see the lines above and the logs in {})",
                dir.join("logs").display()
            )
        });
        let stdin = child.stdin.take().unwrap();
        Cluster { kubeconfig, bin, _keepalive: Some(Mutex::new((child, stdin))) }
    })
}

impl Cluster {
    /// A client authenticated with the admin certificate.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// `kubectl` of the built Kubernetes version, pointed at this cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Runs kubectl with `args`, panicking with its output when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl().args(args).output().expect("run kubectl");
        assert!(out.status.success(), "kubectl {args:?} failed: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Applies the CRDs of `crds/` once per test binary and waits until they are served.
    pub fn install_crds(&self) {
        CRDS.get_or_init(|| {
            let crds = root().join("crds");
            // --force-conflicts: a chart installed on this cluster by an earlier checkout (helm's
            // field manager) must not stop the CRDs of this one from being applied.
            self.kubectl_ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=kpool-tests",
                "-f",
                crds.to_str().unwrap(),
            ]);
            let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
            let names: Vec<String> = KINDS.iter().map(|k| format!("crd/{k}.kpool.dev")).collect();
            wait.extend(names.iter().map(String::as_str));
            self.kubectl_ok(&wait);
        });
    }

    /// A new namespace named `prefix-<random>`, for one test.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns =
            Namespace { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
        api.create(&PostParams::default(), &ns).await.expect("create the test namespace");
        name
    }

    /// A kubeconfig that authenticates with a token of ServiceAccount `sa` in `namespace`
    /// (TokenRequest API), so the real RBAC authorizer decides every call made with it.
    pub fn service_account_kubeconfig(&self, namespace: &str, sa: &str, path: &Path) {
        let token = self.kubectl_ok(&["-n", namespace, "create", "token", sa, "--duration=2h"]);
        let admin: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&self.kubeconfig).unwrap()).unwrap();
        let cluster = &admin["clusters"][0]["cluster"];
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kpool-test", "cluster": {
                "server": cluster["server"].as_str().unwrap(),
                "certificate-authority-data": cluster["certificate-authority-data"].as_str().unwrap(),
            }}],
            "users": [{"name": sa, "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "kpool-test", "user": sa, "namespace": namespace}}],
            "current-context": "sa",
        });
        std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
    }
}

/// A client for the kubeconfig at `path` (its current context).
pub async fn client_from(path: &Path) -> Client {
    kpool::install_crypto_provider();
    let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish() as u32
}

/// Helm 4 (scripts/peers/helm.sh installs it under .peers/).
pub fn helm() -> PathBuf {
    let out = Command::new(root().join("scripts/peers/helm.sh")).output().expect("run scripts/peers/helm.sh");
    assert!(out.status.success(), "scripts/peers/helm.sh failed: {}", describe(&out));
    root().join(".peers/helm4/helm/helm")
}

/// `kubectl apply -f -` of `yaml` in namespace `ns`.
pub fn apply(c: &Cluster, ns: &str, yaml: &str) {
    let mut child = c
        .kubectl()
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply failed: {}\n{yaml}", describe(&out));
}

/// The `kpool` controller binary as a separate process, killed on drop.
pub struct Kpool {
    child: Child,
    log: PathBuf,
}

impl Kpool {
    /// Starts `kpool controller` with `kubeconfig`, watching `namespace` only, leader of
    /// the Lease in `leader_ns` (without: no leader election).
    pub fn start(kubeconfig: &std::path::Path, namespace: &str, leader_ns: Option<&str>) -> Kpool {
        Self::start_with(kubeconfig, namespace, leader_ns, &[])
    }

    /// As [`Kpool::start`], with more flags, e.g. `--allow-endpoint` of a loopback moto.
    pub fn start_with(kubeconfig: &std::path::Path, namespace: &str, leader_ns: Option<&str>, flags: &[&str]) -> Kpool {
        Self::start_as(&format!("kpool-e2e-{namespace}"), kubeconfig, namespace, leader_ns, flags)
    }

    /// As [`Kpool::start_with`], as replica `identity` (its `POD_NAME`: the Lease holder and
    /// the User-Agent's comment), logging to `<identity>.log`, appended to across restarts.
    pub fn start_as(
        identity: &str,
        kubeconfig: &std::path::Path,
        namespace: &str,
        leader_ns: Option<&str>,
        flags: &[&str],
    ) -> Kpool {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{identity}.log"));
        let out = std::fs::File::options().create(true).append(true).open(&log).unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_kpool"))
            .args(["controller", "--watch-namespace", namespace, "--metrics-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .args(match leader_ns {
                Some(ns) => ["--leader-election-namespace", ns],
                None => ["--leader-elect", "false"],
            })
            .args(flags)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("KPOOL_LOG", "info,kpool=debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start kpool");
        Kpool { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a node failure or the OOM killer ends it: nothing is released.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL kpool");
        self.child.wait().expect("reap kpool");
    }
}

impl Drop for Kpool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- kpool's log ({}) ---\n{}", self.log.display(), tail(&self.log(), 60));
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn run_in_phase(runs: &Api<Run>, name: &str, phase: RunPhase) -> Run {
    eventually(&format!("run {name} {phase:?}"), WAIT, || async {
        runs.get_opt(name).await.ok()?.filter(|r| r.status.as_ref().is_some_and(|s| s.phase == phase))
    })
    .await
}

pub async fn instance_in_phase(instances: &Api<Instance>, name: &str, phase: InstancePhase) -> Instance {
    eventually(&format!("instance {name} {phase:?}"), WAIT, || async {
        instances.get_opt(name).await.ok()?.filter(|i| i.status.as_ref().is_some_and(|s| s.phase == phase))
    })
    .await
}

/// The running job Pod of `run` (label `kpool.dev/run-uid`).
pub async fn job_pod(pods: &Api<Pod>, run: &Run) -> Pod {
    let selector = format!("kpool.dev/run-uid={}", run.uid().unwrap());
    eventually(&format!("the job Pod of run {}", run.name_any()), WAIT, || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await.ok()?;
        list.items.into_iter().find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await
}

/// Plays kubelet: the job Pod's container exits with `code`.
pub async fn exit_job(pods: &Api<Pod>, pod: &Pod, code: i32) {
    try_exit_job(pods, pod, code).await.expect("patch the job Pod's status");
}

/// As [`exit_job`], the API's answer returned (the Pod may be gone meanwhile).
pub async fn try_exit_job(pods: &Api<Pod>, pod: &Pod, code: i32) -> kube::Result<Pod> {
    let now = jiff::Timestamp::now().to_string();
    let name = &pod.spec.as_ref().unwrap().containers[0].name;
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let status = serde_json::json!({"status": {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [{"name": name, "image": "busybox:1.36", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": now, "finishedAt": now}}}],
    }});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await
}
