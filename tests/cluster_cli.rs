//! The two binaries as users run them, against the suite's real API server: the `kpool`
//! controller as a separate process (admin kubeconfig, `--watch-namespace` of the test,
//! no leader election, metrics on a free loopback port), and the plugin as `kubectl pool …`
//! (kubectl finds `kubectl-pool` on the PATH and hands it the terminal) with a kubeconfig
//! whose context names the test's namespace, as `kubectl config set-context --namespace`
//! leaves it.
//!
//! `add` is answered at a real terminal (tmux): the offers table of the namespace's
//! `kubernetes` Backend (the kwok A100 node), `n` creates nothing, `y` creates an Instance
//! whose slot Pod runs on kwok-a100-0 and is followed until idle. Then `ps` (busy and idle
//! as printed), `logs` (kwok has no kubelet: the API server cannot reach one for a job
//! Pod's log, and the command says so), `remove`, and the pool commands `create`, `list`
//! and `set-default`, each checked by what it prints and what it changed in the cluster.

mod support_kube;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kpool::api::backend::{Backend, BackendSpec, BackendType, KubernetesBackendConfig};
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::pool::{Pool, DEFAULT_POOL_ANNOTATION};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{Run, RunPhase, RunSpec};
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use support_kube::{cluster, describe, eventually, exit_job, job_pod, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);
const GPU_NODE: &str = "kwok-a100-0";
/// What the `kubernetes` Backend of the test charges for a slice, to see it in the tables.
const PRICE: f64 = 1.25;

/// The `kpool` controller process; stopped with SIGTERM (then killed) when dropped, its
/// log printed when the test failed.
struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn start(cluster: &Cluster, namespace: &str, port: u16, log: PathBuf) -> Controller {
        let file = std::fs::File::create(&log).expect("create the controller's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kpool"))
            .args(["--watch-namespace", namespace, "--leader-elect", "false"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start kpool");
        Controller { child, log }
    }

    /// Panics with the log when the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for kpool") {
            panic!("kpool exited ({status}):\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of the controller's log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes what the test left in its namespace while the controller still runs (so the
/// finalizers are honoured), then the namespace. Declared after the [`Controller`], so
/// dropped before it.
struct Cleanup<'a> {
    cluster: &'a Cluster,
    namespace: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let ns = self.namespace.as_str();
        let _ = self.cluster.kubectl().args(["-n", ns, "delete", "runs,instances", "--all", "--timeout=30s"]).output();
        let _ = self.cluster.kubectl().args(["delete", "namespace", ns, "--wait=false"]).output();
    }
}

/// How users run the plugin: `kubectl pool …` with `kubectl-pool` on the PATH and a
/// kubeconfig whose current context names the namespace.
struct User {
    kubeconfig: PathBuf,
    path: String,
    kubectl: PathBuf,
}

impl User {
    fn new(cluster: &Cluster, namespace: &str, dir: &Path) -> User {
        let plugins = dir.join("bin");
        std::fs::create_dir_all(&plugins).unwrap();
        let link = plugins.join("kubectl-pool");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kubectl-pool"), &link).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::copy(&cluster.kubeconfig, &kubeconfig).unwrap();
        let kc = kubeconfig.to_str().unwrap();
        cluster.kubectl_ok(&["--kubeconfig", kc, "config", "set-context", "--current", "--namespace", namespace]);
        let path =
            format!("{}:{}:{}", plugins.display(), cluster.bin.display(), std::env::var("PATH").unwrap_or_default());
        User { kubeconfig, path, kubectl: cluster.bin.join("kubectl") }
    }

    /// `kubectl pool ARGS` without a terminal (stdin and stdout are not a tty).
    fn pool(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("pool")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl pool")
    }

    /// `kubectl pool ARGS`, which must succeed and print nothing on stderr; its stdout.
    fn pool_ok(&self, args: &[&str]) -> String {
        let out = self.pool(args);
        assert!(out.status.success(), "kubectl pool {args:?} failed: {}", describe(&out));
        assert!(out.stderr.is_empty(), "kubectl pool {args:?} wrote to stderr: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kubectl pool ARGS`, which must fail with `code` and print nothing on stdout; its
    /// stderr.
    fn pool_err(&self, args: &[&str], code: i32) -> String {
        let out = self.pool(args);
        assert_eq!(out.status.code(), Some(code), "kubectl pool {args:?}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "kubectl pool {args:?} wrote to stdout: {}", describe(&out));
        String::from_utf8(out.stderr).unwrap()
    }
}

/// A tmux server of the test's own (its socket in the test's directory), killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    /// Starts `line` in a new 200x50 session `name` as `user`, in a shell that prints
    /// `[exit N]` when it ends and keeps the pane open.
    fn start(&self, name: &str, user: &User, line: &str) {
        let script = format!(
            "env KUBECONFIG='{}' PATH='{}' {line}; echo \"[exit $?]\"; sleep 3600",
            user.kubeconfig.display(),
            user.path
        );
        let out = self.cmd().args(["new-session", "-d", "-x", "200", "-y", "50", "-s", name, &script]).output();
        let out = out.expect("run tmux");
        assert!(out.status.success(), "tmux new-session failed: {}", describe(&out));
    }

    /// What the pane shows, wrapped lines joined, trailing blank lines dropped.
    fn screen(&self, name: &str) -> String {
        let out = self.cmd().args(["capture-pane", "-p", "-J", "-S", "-", "-t", name]).output().expect("run tmux");
        assert!(out.status.success(), "tmux capture-pane failed: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    fn type_line(&self, name: &str, text: &str) {
        let out = self.cmd().args(["send-keys", "-t", name, text, "Enter"]).output().expect("run tmux");
        assert!(out.status.success(), "tmux send-keys failed: {}", describe(&out));
    }

    /// Presses `key` (tmux's names: `C-c` is Ctrl-C).
    fn press(&self, name: &str, key: &str) {
        let out = self.cmd().args(["send-keys", "-t", name, key]).output().expect("run tmux");
        assert!(out.status.success(), "tmux send-keys failed: {}", describe(&out));
    }

    /// The screen, once it shows `text`.
    async fn wait_for(&self, name: &str, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen(name);
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {text:?}; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The rows of the table whose header line starts with `first` (`INSTANCE`, `#`, `POOL`):
/// each row as column name -> cell, cut at the header's column starts (columns are padded
/// and separated by at least three spaces). Rows end at the first blank line or the first
/// line `row` rejects.
fn table(text: &str, first: &str, row: impl Fn(&str) -> bool) -> Vec<BTreeMap<String, String>> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.starts_with(first)).unwrap_or_else(|| panic!("no {first} table in:\n{text}"));
    let header: Vec<char> = lines[at].chars().collect();
    let mut starts = vec![0];
    for i in 3..header.len() {
        if header[i] != ' ' && header[i - 3..i].iter().all(|c| *c == ' ') {
            starts.push(i);
        }
    }
    let cell = |chars: &[char], k: usize| -> String {
        let end = starts.get(k + 1).copied().unwrap_or(usize::MAX).min(chars.len());
        chars.get(starts[k]..end).map(|c| c.iter().collect::<String>()).unwrap_or_default().trim().to_string()
    };
    let names: Vec<String> = (0..starts.len()).map(|k| cell(&header, k)).collect();
    lines[at + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty() && row(l))
        .map(|l| {
            let chars: Vec<char> = l.chars().collect();
            names.iter().enumerate().map(|(k, n)| (n.clone(), cell(&chars, k))).collect()
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

fn phase(i: &Instance) -> InstancePhase {
    i.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// One test of this file at a time: with two controllers and the control plane on two
/// cores, the pool controller's count of `gpu` was seen stale for over 60 s (likely a pool
/// reconcile that read the instance cache before it had the change, and no later event).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's namespace on the suite's cluster, with a `kpool` controller watching it, a
/// `kubernetes` Backend `cluster` of the kwok nodes (at [`PRICE`]), and a user whose
/// kubeconfig names the namespace. Fields drop in order: the terminals, then the cleanup
/// while the controller still runs, then the controller, then the turn.
struct Setup {
    tmux: Tmux,
    user: User,
    _cleanup: Cleanup<'static>,
    controller: Controller,
    client: kube::Client,
    ns: String,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Setup {
    async fn new(prefix: &str) -> Setup {
        let turn = TURN.lock().await;
        let cluster = cluster();
        cluster.install_crds();
        let client = cluster.client().await;
        let ns = cluster.namespace(prefix).await;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&ns);
        std::fs::create_dir_all(&dir).unwrap();

        // The controller, in the background for the whole test.
        let port = free_port();
        let mut controller = Controller::start(cluster, &ns, port, dir.join("kpool.log"));
        let cleanup = Cleanup { cluster, namespace: ns.clone() };
        let user = User::new(cluster, &ns, &dir);
        let tmux = Tmux { socket: dir.join("tmux.sock") };

        // Machines come from the cluster's own (kwok) nodes.
        let backends: Api<Backend> = Api::namespaced(client.clone(), &ns);
        let kubernetes = KubernetesBackendConfig { price_per_hour: Some(PRICE), ..Default::default() };
        let spec = BackendSpec { type_: BackendType::Kubernetes, kubernetes: Some(kubernetes), ..Default::default() };
        backends.create(&PostParams::default(), &Backend::new("cluster", spec)).await.expect("create the Backend");

        eventually("kpool's /readyz", WAIT, || {
            controller.assert_running();
            async move { (http_status(port, "/readyz").await == Some(200)).then_some(()) }
        })
        .await;
        Setup { tmux, user, _cleanup: cleanup, controller, client, ns, _turn: turn }
    }
}

#[tokio::test]
async fn kubectl_pool_drives_a_kpool_controller_on_a_real_api_server() {
    let started = Instant::now();
    let mut setup = Setup::new("kpool-cli").await;
    let (client, ns, user, tmux) = (setup.client.clone(), setup.ns.clone(), &setup.user, &setup.tmux);
    let controller = &mut setup.controller;

    // --- Pools: create, list, set-default. ---
    let pools: Api<Pool> = Api::namespaced(client.clone(), &ns);
    let out = user.pool_ok(&["create", "training", "--max-instances", "2", "--default"]);
    assert_eq!(out, format!("pool training created\npool training is the default of namespace {ns}\n"));
    let training = pools.get("training").await.expect("pool training");
    assert_eq!(training.spec.max_instances, Some(2));
    assert_eq!(training.annotations().get(DEFAULT_POOL_ANNOTATION).map(String::as_str), Some("true"));
    assert_eq!(user.pool_ok(&["create", "gpu"]), "pool gpu created\n");
    let err = user.pool_err(&["create", "gpu"], 1);
    assert_eq!(err, format!("error: pool gpu already exists in namespace {ns}\n"));

    let out = user.pool_ok(&["list"]);
    let rows = table(&out, "POOL", |_| true);
    let by_name: BTreeMap<&str, &BTreeMap<String, String>> = rows.iter().map(|r| (r["POOL"].as_str(), r)).collect();
    assert_eq!(by_name.keys().copied().collect::<Vec<_>>(), ["gpu", "training"], "{out}");
    assert_eq!(by_name["training"]["DEFAULT"], "yes", "{out}");
    assert_eq!(by_name["training"]["MAX"], "2", "{out}");
    assert_eq!(by_name["gpu"]["DEFAULT"], "", "{out}");
    assert_eq!(by_name["gpu"]["MAX"], "-", "{out}");

    let out = user.pool_ok(&["set-default", "gpu"]);
    assert_eq!(out, format!("pool gpu is the default of namespace {ns}\n"));
    let marked = |p: &Pool| p.annotations().get(DEFAULT_POOL_ANNOTATION).cloned();
    assert_eq!(marked(&pools.get("gpu").await.unwrap()).as_deref(), Some("true"));
    assert_eq!(marked(&pools.get("training").await.unwrap()), None, "the old default keeps no annotation");
    let out = user.pool_ok(&["list"]);
    let defaults: Vec<String> =
        table(&out, "POOL", |_| true).iter().filter(|r| r["DEFAULT"] == "yes").map(|r| r["POOL"].clone()).collect();
    assert_eq!(defaults, ["gpu"], "{out}");
    let err = user.pool_err(&["set-default", "nosuch"], 1);
    assert_eq!(err, format!("error: pool nosuch not found in namespace {ns}\n"));

    // --- add at a terminal: the offers, then `n`: nothing is created. ---
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns);
    tmux.start("no", user, "kubectl pool add --gpu 80GB");
    let screen = tmux.wait_for("no", "Continue? [y/n]:", WAIT).await;
    assert!(screen.contains("Pool:         gpu\n"), "{screen}");
    assert!(screen.contains("Requirements: cpu=2.. mem=8GB.. disk=100GB.. gpu=80GB:1..\n"), "{screen}");
    let offers = table(&screen, "#", |l| l.starts_with(|c: char| c.is_ascii_digit()));
    // The A100 node only: the L4 has 23GB GPUs, the CPU node none.
    assert_eq!(offers.len(), 1, "{screen}");
    let offer = &offers[0];
    assert_eq!(offer["#"], "1");
    assert_eq!(offer["BACKEND"], "cluster");
    assert_eq!(offer["REGION"], "us-east-1");
    assert_eq!(offer["INSTANCE TYPE"], GPU_NODE);
    assert_eq!(offer["RESOURCES"], "2xCPU, 8GB, 1xA100 (80GB), 100GB (disk)");
    assert_eq!(offer["SPOT"], "on-demand");
    assert_eq!(offer["PRICE"], "$1.25");
    tmux.type_line("no", "n");
    let screen = tmux.wait_for("no", "[exit ", WAIT).await;
    assert!(screen.contains("Continue? [y/n]: n\nNothing added.\n[exit 0]"), "{screen}");
    assert!(instances.list(&ListParams::default()).await.unwrap().items.is_empty(), "`n` created an Instance");

    // --- add at a terminal, `y`: created, followed until idle. ---
    tmux.start("yes", user, "kubectl pool add --gpu 80GB");
    tmux.wait_for("yes", "Continue? [y/n]:", WAIT).await;
    tmux.type_line("yes", "y");
    let screen = tmux.wait_for("yes", "[exit ", WAIT).await;
    let gpu = screen
        .lines()
        .find_map(|l| l.strip_prefix("instance ")?.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("no `instance … created` line:\n{screen}"))
        .to_string();
    let ready = format!("instance {gpu} is ready: 2xCPU, 8GB, 1xA100 (80GB), 100GB (disk)\n[exit 0]");
    assert!(screen.contains(&ready), "{screen}");
    let inst = instances.get(&gpu).await.expect("the added Instance");
    assert_eq!(phase(&inst), InstancePhase::Idle);
    let st = inst.status.clone().unwrap();
    assert_eq!(st.pool.as_deref(), Some("gpu"), "added to the namespace's default pool");
    assert_eq!(st.offer.as_ref().map(|o| o.instance_type.as_str()), Some(GPU_NODE));
    let slot_name = st.machine_name.clone().expect("a machine name");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let slot = pods.get(&slot_name).await.expect("the slot Pod");
    let pod_spec = slot.spec.clone().unwrap();
    assert_eq!(pod_spec.node_name.as_deref(), Some(GPU_NODE));
    assert_eq!(slot.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    let requests = pod_spec.containers[0].resources.as_ref().and_then(|r| r.requests.clone()).unwrap();
    assert_eq!(requests.get("nvidia.com/gpu").map(|q| q.0.as_str()), Some("1"));

    // --- A second instance without a terminal (-y), on the CPU node; a run on the first. ---
    let out = user.pool_ok(&["add", "--cpu", "1", "--memory", "1GB", "--disk", "1GB", "--name", "cpu-1", "-y"]);
    assert!(out.contains("instance cpu-1 created\n"), "{out}");
    assert!(out.ends_with("instance cpu-1 is ready: 1xCPU, 1GB, 1GB (disk)\n"), "{out}");
    // Each phase it went through, with the Ready condition's message when there is one.
    assert!(out.lines().all(|l| !l.ends_with(' ') && !l.ends_with(':')), "a dangling line:\n{out:?}");
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    let run = RunSpec {
        instance: Some(gpu.clone()),
        resources: ResourcesSpec { gpu: Some("80GB".into()), ..Default::default() },
        commands: vec!["python train.py".into()],
        ..Default::default()
    };
    runs.create(&PostParams::default(), &Run::new("train", run)).await.expect("create the Run");
    eventually("run train Running on the GPU instance, which is busy", WAIT, || async {
        let st = runs.get("train").await.ok()?.status?;
        let busy = instances.get(&gpu).await.ok().is_some_and(|i| phase(&i) == InstancePhase::Busy);
        (busy && st.phase == RunPhase::Running && st.instance.as_deref() == Some(gpu.as_str())).then_some(())
    })
    .await;

    // --- ps: busy and idle, as printed. ---
    let out = user.pool_ok(&["ps"]);
    let rows = table(&out, "INSTANCE", |_| true);
    assert_eq!(rows.iter().map(|r| r["INSTANCE"].as_str()).collect::<Vec<_>>(), [gpu.as_str(), "cpu-1"], "{out}");
    let (busy, idle) = (&rows[0], &rows[1]);
    assert_eq!(busy["STATUS"], "busy", "{out}");
    assert_eq!(busy["RUN"], "train", "{out}");
    assert_eq!(busy["IDLE FOR"], "-", "{out}");
    assert_eq!(busy["RESOURCES"], "2xCPU, 8GB, 1xA100 (80GB), 100GB (disk)", "{out}");
    assert_eq!(idle["STATUS"], "idle", "{out}");
    assert_eq!(idle["RUN"], "-", "{out}");
    assert!(idle["IDLE FOR"].ends_with('s') || idle["IDLE FOR"].ends_with('m'), "{out}");
    for r in &rows {
        assert_eq!((r["BACKEND"].as_str(), r["REGION"].as_str()), ("cluster", "us-east-1"), "{out}");
        assert_eq!((r["SPOT"].as_str(), r["PRICE"].as_str()), ("on-demand", "$1.25"), "{out}");
    }
    // The job Pod took the slot's place on the same node.
    // (bound by the scheduler a moment after kpool creates it)
    let selector = format!("kpool.dev/machine={slot_name}");
    let job_pods = eventually(&format!("the job Pod of {slot_name} bound"), Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await.ok()?;
        list.items.first()?.spec.as_ref()?.node_name.is_some().then_some(list)
    })
    .await;
    let job = job_pods.items[0].name_any();
    assert_eq!(job_pods.items[0].spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(GPU_NODE));

    // --- list: the pool's counts and price, once the pool controller has counted. ---
    let out = eventually("the gpu pool counting one busy and one idle instance", WAIT, || async {
        let out = user.pool_ok(&["list"]);
        let rows = table(&out, "POOL", |_| true);
        let gpu_pool = rows.iter().find(|r| r["POOL"] == "gpu")?;
        (gpu_pool["INSTANCES"] == "2" && gpu_pool["IDLE"] == "1" && gpu_pool["BUSY"] == "1").then_some(out)
    })
    .await;
    let rows = table(&out, "POOL", |_| true);
    assert_eq!(rows.iter().find(|r| r["POOL"] == "gpu").unwrap()["PRICE/H"], "$2.50", "{out}");
    assert_eq!(rows.iter().find(|r| r["POOL"] == "training").unwrap()["INSTANCES"], "0", "{out}");

    // --- logs: kwok is no kubelet, so the API server has nowhere to read a job Pod's log
    // from; the command says which Pod's log it could not read and exits 1. ---
    let err = user.pool_err(&["logs", "train"], 1);
    assert!(err.starts_with(&format!("error: logs of train: failed to read the log of {job}: ")), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let err = user.pool_err(&["logs", "nosuch"], 1);
    assert_eq!(err, format!("error: run nosuch not found in namespace {ns}\n"));

    // --- remove: a busy instance needs --force; no terminal needs -y; then gone. ---
    let err = user.pool_err(&["remove", &gpu], 2);
    assert_eq!(
        err,
        format!("error: instance {gpu} is busy with run train: pass --force to stop train and remove {gpu}\n")
    );
    let err = user.pool_err(&["remove", "cpu-1"], 2);
    assert_eq!(err, "error: Remove cpu-1? needs confirmation: pass -y to proceed without a prompt\n");
    assert!(instances.get_opt("cpu-1").await.unwrap().is_some(), "refused removals removed cpu-1");
    let cpu_slot = instances.get("cpu-1").await.unwrap().status.and_then(|s| s.machine_name).unwrap();
    assert_eq!(user.pool_ok(&["remove", "cpu-1", "-y"]), "instance cpu-1 removed (its machine is being terminated)\n");
    let out = user.pool_ok(&["remove", &gpu, "--force", "-y"]);
    assert_eq!(out, format!("instance {gpu} removed (its machine is being terminated)\n"));
    eventually("both instances and all their Pods gone", WAIT, || async {
        let left = instances.list(&ListParams::default()).await.ok()?.items;
        let pods_left = pods.list(&ListParams::default().labels("kpool.dev/managed-by=kpool")).await.ok()?.items;
        (left.is_empty() && pods_left.is_empty()).then_some(())
    })
    .await;
    assert!(pods.get_opt(&cpu_slot).await.unwrap().is_none());
    assert!(pods.get_opt(&slot_name).await.unwrap().is_none());
    let run = runs.get("train").await.unwrap();
    assert!(run.status.is_some_and(|s| s.phase.is_finished()), "the run on the removed instance ended");
    assert_eq!(user.pool_ok(&["ps"]), format!("No instances in namespace {ns}. Add one with `kubectl pool add`.\n"));

    controller.assert_running();
    eprintln!("cluster_cli took {:.1} s", started.elapsed().as_secs_f64());
}

/// `kubectl pool run` as users run it, against the controller process: refusals and bad
/// flags in a script; at a terminal (tmux) the offers, `y`, the job Pod on the A100 node
/// exiting 3 and the command with it; then the idle instance shown and reused, Ctrl-C and
/// `y` stopping the run; in a script `-y` ending with the run's 0, and `--detach`.
#[tokio::test]
async fn kubectl_pool_run_plans_follows_and_exits_with_the_runs_exit_code() {
    let started = Instant::now();
    let mut setup = Setup::new("kpool-run").await;
    let (client, ns, user, tmux) = (setup.client.clone(), setup.ns.clone(), &setup.user, &setup.tmux);
    let controller = &mut setup.controller;
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // --- Refusals: nothing idle with --reuse; a bad flag value. Nothing is created. ---
    let err = user.pool_err(&["run", "--gpu", "80GB", "--reuse", "-y", "--", "true"], 1);
    assert!(err.starts_with("error: pool default-pool has no idle instance, and the run may only reuse"), "{err}");
    let err = user.pool_err(&["run", "--gpu", "A100:2:3", "-y", "--", "true"], 2);
    assert!(err.starts_with("error: invalid --gpu \"3\""), "{err}");
    assert!(runs.list(&ListParams::default()).await.unwrap().items.is_empty(), "a refused run was created");

    // --- At a terminal: no idle instance, so the offers; `y`; the job exits 3. ---
    tmux.start("first", user, "kubectl pool run --gpu 80GB --name first -- python train.py");
    let screen = tmux.wait_for("first", "Continue? [y/n]:", WAIT).await;
    assert!(
        screen.contains("pool default-pool has no idle instance; provisions the first of these offers"),
        "{screen}"
    );
    let offers = table(&screen, "#", |l| l.starts_with(|c: char| c.is_ascii_digit()));
    assert_eq!(offers.len(), 1, "{screen}");
    assert_eq!((offers[0]["INSTANCE TYPE"].as_str(), offers[0]["PRICE"].as_str()), (GPU_NODE, "$1.25"), "{screen}");
    tmux.type_line("first", "y");
    tmux.wait_for("first", "run first is placed on instance ", WAIT).await;
    let first = runs.get("first").await.unwrap();
    let instance = first.status.as_ref().and_then(|s| s.instance.clone()).expect("placed");
    exit_job(&pods, &job_pod(&pods, &first).await, 3).await;
    let screen = tmux.wait_for("first", "[exit ", WAIT).await;
    // kwok is no kubelet: the job Pod's log cannot be read, which the command says once.
    assert!(screen.contains("warning: cannot read the output of run first ("), "{screen}");
    assert!(screen.contains("run first failed (ContainerExitedWithError): exit code 3\n[exit 3]"), "{screen}");

    // --- At a terminal: the idle instance is reused; Ctrl-C, `y`: the run is stopped. ---
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns);
    eventually("the instance of run first idle again", WAIT, || async {
        instances.get_opt(&instance).await.ok()?.filter(|i| phase(i) == InstancePhase::Idle)
    })
    .await;
    tmux.start("second", user, "kubectl pool run --gpu 80GB --reuse --name second -- sleep 600");
    let screen = tmux.wait_for("second", "Continue? [y/n]:", WAIT).await;
    assert!(screen.contains("Reuses the idle instance:\n"), "{screen}");
    let reused = table(&screen, "INSTANCE", |_| true);
    assert_eq!(reused[0]["INSTANCE"], instance, "{screen}");
    assert_eq!((reused[0]["INSTANCE TYPE"].as_str(), reused[0]["PRICE"].as_str()), (GPU_NODE, "$1.25"), "{screen}");
    tmux.type_line("second", "y");
    tmux.wait_for("second", &format!("run second is placed on instance {instance}"), WAIT).await;
    tmux.press("second", "C-c");
    tmux.wait_for("second", "Stop the run? [y/n]:", WAIT).await;
    tmux.type_line("second", "y");
    let screen = tmux.wait_for("second", "[exit ", WAIT).await;
    assert!(screen.contains("run second terminated (Stopped): stopped by the user\n[exit 1]"), "{screen}");
    let second = runs.get("second").await.unwrap();
    assert!(second.spec.stop);
    assert_eq!(second.status.map(|s| s.phase), Some(RunPhase::Terminated));

    // --- In a script: -y, the job exits 0, and so does the command. ---
    let third = Command::new(&user.kubectl)
        .args(["pool", "run", "--gpu", "80GB", "--name", "third", "-y", "--", "true"])
        .env("KUBECONFIG", &user.kubeconfig)
        .env("PATH", &user.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl pool run");
    let placed = eventually("run third Running", WAIT, || async {
        runs.get_opt("third").await.ok()?.filter(|r| r.status.as_ref().is_some_and(|s| s.phase == RunPhase::Running))
    })
    .await;
    exit_job(&pods, &job_pod(&pods, &placed).await, 0).await;
    let out = tokio::task::spawn_blocking(move || third.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains(&format!("run third is placed on instance {instance}\n")), "{stdout}");

    // --- --detach: back once placed; the run keeps running. ---
    let out = user.pool_ok(&["run", "--gpu", "80GB", "--name", "fourth", "-y", "--detach", "--", "sleep", "600"]);
    let detached =
        format!("run fourth is placed on instance {instance}\nDetached: follow it with `kubectl pool logs fourth -f`");
    assert!(out.contains(&detached), "{out}");
    let fourth = runs.get("fourth").await.unwrap().status.unwrap();
    assert_eq!((fourth.phase, fourth.instance.as_deref()), (RunPhase::Running, Some(instance.as_str())));

    controller.assert_running();
    eprintln!("cluster_cli run took {:.1} s", started.elapsed().as_secs_f64());
}
