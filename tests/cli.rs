//! The `kubectl pool` plugin: its commands against the in-memory API, and the binary
//! itself for what needs no cluster (help, offline offers, flag errors).

mod support;

use std::io::Cursor;
use std::process::Command as Process;

use kpool::api::instance::{InstancePhase, InstanceSpec};
use kpool::api::pool::PoolSpec;
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::RunSpec;
use kpool::cli::{self, Cli, CliError, Command, Term};
use kube::ResourceExt;
use support::*;

/// Runs one plugin command line against the harness's API; returns what it printed.
async fn pool_cmd(h: &Harness, line: &str, answer: Option<&str>) -> Result<String, CliError> {
    let args = std::iter::once("kubectl-pool").chain(line.split_whitespace());
    let cli = <Cli as clap::Parser>::try_parse_from(args).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut out = Vec::new();
    let mut input = Cursor::new(answer.unwrap_or_default().as_bytes().to_vec());
    let mut term = Term { out: &mut out, input: &mut input, interactive: answer.is_some() };
    let client = h.client.clone();
    let r = match &cli.command {
        Command::Ps(a) => cli::instances::ps(a, &client, NS, &mut term).await,
        Command::Remove(a) => cli::instances::remove(a, &client, NS, &mut term).await,
        Command::AddSsh(a) => cli::ssh::add_ssh(a, &client, NS, &mut term).await,
        Command::Logs(a) => cli::logs::logs(a, &client, NS, &mut term).await,
        Command::Add(a) => cli::instances::add(a, Some(&client), NS, &mut term).await,
        Command::List => cli::pools::list(&client, NS, &mut term).await,
        Command::Queue(a) => cli::pools::queue(a, &client, NS, &mut term).await,
        Command::Cost(a) => cli::cost::cost(a, &client, NS, &mut term).await,
        Command::Create(a) => cli::pools::create(a, &client, NS, &mut term).await,
        Command::Delete(a) => cli::pools::delete(a, &client, NS, &mut term).await,
        Command::SetDefault { name } => cli::pools::set_default(name, &client, NS, &mut term).await,
        Command::Offers(a) => cli::offers::run(a, Some(&client), NS, &mut term).await,
        // Driven at length in tests/cli_run.rs; here as the binary runs it, output included.
        Command::Run(a) => {
            let logs = cli::logs::executor(&client);
            let interrupt = std::pin::pin!(std::future::pending::<()>());
            let follow = cli::run::Follow { logs: &logs, interrupt, poll: std::time::Duration::from_millis(50) };
            cli::run::run(a, &client, NS, &mut term, follow).await.map(drop)
        }
    };
    r.map(|_| String::from_utf8(out).unwrap())
}

fn cpu(spec: &str) -> ResourcesSpec {
    ResourcesSpec { cpu: Some(spec.into()), ..Default::default() }
}

/// An idle instance `idle` and one `busy` with run `train`.
async fn two_instances(h: &Harness) {
    h.instance("idle", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.instance("busy", InstanceSpec { resources: cpu("8.."), ..Default::default() }).await;
    h.settle(2).await;
    h.run("train", RunSpec { resources: cpu("8.."), instance: Some("busy".into()), ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_instance("busy").await.status.unwrap().phase, InstancePhase::Busy);
}

#[tokio::test]
async fn ps_shows_busy_and_idle_instances_with_their_run() {
    let h = Harness::new().await;
    two_instances(&h).await;
    let out = pool_cmd(&h, "ps", None).await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("INSTANCE") && lines[0].contains("IDLE FOR") && lines[0].contains("CREATED"));
    let idle = lines.iter().find(|l| l.starts_with("idle ")).expect("idle row");
    assert!(idle.contains("m5.xlarge") || idle.contains("4xCPU"), "{idle}");
    assert!(idle.contains(" idle "), "{idle}");
    let busy = lines.iter().find(|l| l.starts_with("busy ")).expect("busy row");
    assert!(busy.contains(" busy ") && busy.contains(" train "), "{busy}");
    assert!(busy.contains("$0.384") && busy.contains("on-demand") && busy.contains("us-east-1"), "{busy}");

    let json: serde_json::Value = serde_json::from_str(&pool_cmd(&h, "ps -o json", None).await.unwrap()).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 2);
    let wide = pool_cmd(&h, "ps -o wide", None).await.unwrap();
    assert!(wide.lines().next().unwrap().contains("ADDRESS"), "{wide}");
    assert_eq!(pool_cmd(&h, "ps --pool elsewhere", None).await.unwrap().lines().count(), 1, "only the hint");

    // A machine that stops answering shows at the next health check.
    let machine = h.get_instance("idle").await.status.unwrap().machine_name.unwrap();
    h.backend.set_unreachable(&machine, true);
    h.advance(std::time::Duration::from_secs(60));
    h.settle(1).await;
    let out = pool_cmd(&h, "ps", None).await.unwrap();
    let idle = out.lines().find(|l| l.starts_with("idle ")).expect("idle row");
    assert!(idle.contains(" idle (unreachable) "), "{idle}");
}

#[tokio::test]
async fn removing_a_busy_instance_needs_force_and_names_the_run() {
    let h = Harness::new().await;
    two_instances(&h).await;
    let err = pool_cmd(&h, "remove busy -y", None).await.unwrap_err().to_string();
    assert!(err.contains("busy with run train") && err.contains("--force"), "{err}");
    let err = pool_cmd(&h, "remove idle", None).await.unwrap_err().to_string();
    assert!(err.contains("pass -y"), "without a terminal, -y is required: {err}");
    let out = pool_cmd(&h, "remove idle", Some("n\n")).await.unwrap();
    assert!(out.contains("Nothing removed"), "{out}");
    assert!(h.api::<kpool::api::instance::Instance>().get_opt("idle").await.unwrap().is_some());

    let out = pool_cmd(&h, "remove busy idle --force", Some("y\n")).await.unwrap();
    assert!(out.contains("busy (stops run train), idle?"), "{out}");
    let left = h.api::<kpool::api::instance::Instance>().list(&Default::default()).await.unwrap().items;
    assert!(left.is_empty(), "{:?}", left.iter().map(|i| i.name_any()).collect::<Vec<_>>());
    let err = pool_cmd(&h, "remove ghost -y", None).await.unwrap_err().to_string();
    assert!(err.contains("ghost not found"), "{err}");
}

#[tokio::test]
async fn pools_are_created_listed_made_default_and_deleted() {
    let h = Harness::new().await;
    pool_cmd(&h, "create training --max-instances 4 --default", None).await.unwrap();
    pool_cmd(&h, "create batch", None).await.unwrap();
    let out = pool_cmd(&h, "list", None).await.unwrap();
    let training = out.lines().find(|l| l.starts_with("training")).unwrap();
    assert!(training.contains("yes") && training.contains(" 4 "), "{out}");
    assert!(!out.lines().find(|l| l.starts_with("batch")).unwrap().contains("yes"), "{out}");

    pool_cmd(&h, "set-default batch", None).await.unwrap();
    let out = pool_cmd(&h, "list", None).await.unwrap();
    assert!(out.lines().find(|l| l.starts_with("batch")).unwrap().contains("yes"), "{out}");
    assert!(!out.lines().find(|l| l.starts_with("training")).unwrap().contains("yes"), "{out}");
    let err = pool_cmd(&h, "create batch", None).await.unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");

    h.pool("gpu", PoolSpec::default()).await;
    h.instance("g1", InstanceSpec { pool: Some("gpu".into()), resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
    let err = pool_cmd(&h, "delete gpu", None).await.unwrap_err().to_string();
    assert!(err.contains("still has instances (g1)") && err.contains("--force"), "{err}");
    let out = pool_cmd(&h, "delete gpu --force", None).await.unwrap();
    assert!(out.contains("instance g1 removed") && out.contains("pool gpu deleted"), "{out}");
}

#[tokio::test]
async fn add_dry_run_prints_the_instance_it_would_create() {
    let h = Harness::new().await;
    let out = pool_cmd(&h, "add --gpu A10G --spot --idle-duration 2h --name g --pool p --dry-run -o json", None)
        .await
        .unwrap();
    let inst: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(inst["kind"], "Instance");
    assert_eq!(inst["metadata"]["name"], "g");
    assert_eq!(inst["spec"]["resources"]["gpu"], "A10G");
    assert_eq!(inst["spec"]["spotPolicy"], "spot");
    assert_eq!(inst["spec"]["idleDuration"], "2h");
    assert_eq!(inst["spec"]["pool"], "p");
    assert!(h.api::<kpool::api::instance::Instance>().list(&Default::default()).await.unwrap().items.is_empty());
}

// The binary, for what needs no cluster.

fn plugin(args: &[&str]) -> (i32, String, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_kubectl-pool"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run kubectl-pool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_command_has_help_with_examples() {
    for cmd in ["offers", "add", "ps", "remove", "create", "queue", "run"] {
        let (code, out, _) = plugin(&[cmd, "--help"]);
        assert_eq!(code, 0, "{cmd}");
        assert!(out.contains("Examples") || out.contains("Example:"), "{cmd}: {out}");
    }
    let (code, out, _) = plugin(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["offers", "add", "ps", "remove", "list", "queue", "create", "delete", "set-default", "run"] {
        assert!(out.contains(cmd), "{cmd} missing from {out}");
    }
}

#[test]
fn a_bad_flag_value_names_the_flag_and_the_token() {
    let dir = env!("CARGO_MANIFEST_DIR").to_string() + "/catalogs/sample";
    let (code, _, err) = plugin(&["offers", "--catalog", &dir, "--gpu", "A100:2:3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--gpu") && err.contains("\"3\""), "{err}");
    let (code, _, err) = plugin(&["offers", "--catalog", &dir, "--max-price", "-1"]);
    assert_ne!(code, 0);
    assert!(err.contains("--max-price"), "{err}");
    let (code, _, err) = plugin(&["offers", "--catalog", &dir, "--idle-duration", "5 minutes"]);
    assert_ne!(code, 0);
    assert!(err.contains("--idle-duration") && err.contains("5 minutes"), "{err}");
}

#[test]
fn without_a_cluster_the_error_says_what_to_do() {
    let (code, _, err) = plugin(&["ps"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: no usable kube context") && err.contains("KUBECONFIG"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn offline_offers_follow_the_json_contract() {
    let dir = env!("CARGO_MANIFEST_DIR").to_string() + "/catalogs/sample";
    let (code, out, err) = plugin(&["offers", "--catalog", &dir, "--gpu", "A100", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let req = &v["requirements"];
    assert_eq!(req["cpu"], serde_json::json!({"min": 2, "max": null}));
    assert_eq!(req["memory"]["min"], 8.0);
    assert_eq!(req["disk"]["min"], 100.0);
    assert_eq!(req["gpu"]["names"], serde_json::json!(["A100"]));
    assert_eq!(req["gpu"]["count"], serde_json::json!({"min": 1, "max": null}));
    assert_eq!(req["spotPolicy"], "on-demand");
    assert_eq!(req["maxPrice"], serde_json::Value::Null);
    let offers = v["offers"].as_array().unwrap();
    assert!(!offers.is_empty(), "the sample catalog has A100 offers");
    let keys = [
        "backend",
        "region",
        "instanceType",
        "cpu",
        "memory",
        "disk",
        "gpuCount",
        "gpuName",
        "gpuMemory",
        "spot",
        "price",
    ];
    for o in offers {
        let mut have: Vec<&str> = o.as_object().unwrap().keys().map(String::as_str).collect();
        have.sort();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(have, want, "{o}");
        assert_eq!(o["gpuName"], "A100");
        assert_eq!(o["spot"], false, "on-demand by default");
        assert!(["aws", "gcp", "lambdalabs"].contains(&o["backend"].as_str().unwrap()), "{o}");
    }
    let prices: Vec<f64> = offers.iter().map(|o| o["price"].as_f64().unwrap()).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "cheapest first: {prices:?}");

    let (code, out, _) = plugin(&["offers", "--catalog", &dir, "--gpu", "A100", "-o", "json", "--max-offers", "2"]);
    assert_eq!(code, 0);
    let bounded: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(bounded["offers"].as_array().unwrap().len(), 2.min(offers.len()));
    assert_eq!(bounded["offers"][0], offers[0]);
}

#[test]
fn offline_offers_table_fits_a_terminal() {
    let dir = env!("CARGO_MANIFEST_DIR").to_string() + "/catalogs/sample";
    let (code, out, err) =
        plugin(&["offers", "--catalog", &dir, "--gpu", "24GB..", "--spot-auto", "--max-offers", "5"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Requirements: cpu=2.. mem=8GB.. disk=100GB.. gpu=24GB..:1.."), "{out}");
    assert!(lines[1].starts_with("#") && lines[1].contains("BACKEND") && lines[1].contains("PRICE"), "{out}");
    assert_eq!(lines.len(), 2 + 5, "{out}");
    assert!(!out.contains('\u{1b}'), "no colour when not a terminal");
    let (code, _, err) = plugin(&["offers", "--catalog", "/nonexistent"]);
    assert_eq!(code, 1);
    assert!(err.contains("--catalog /nonexistent"), "{err}");
}

#[tokio::test]
async fn add_ssh_extends_the_ssh_backend_and_pins_an_instance_to_the_host() {
    use kpool::api::backend::Backend;
    let h = Harness::new().await;
    let err = pool_cmd(&h, "add-ssh ubuntu@10.0.0.9 --no-wait", None).await.unwrap_err().to_string();
    assert!(err.contains("pass -i KEY"), "{err}");

    let key = std::env::temp_dir().join(format!("kpool-cli-key-{}", std::process::id()));
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nnot checked here\n").unwrap();
    let out = pool_cmd(&h, &format!("add-ssh ubuntu@10.0.0.9 -i {} --no-wait", key.display()), None).await.unwrap();
    assert!(out.contains("backend ssh created") && out.contains("instance 10.0.0.9 created"), "{out}");
    let out = pool_cmd(&h, "add-ssh gpu.lan -p 2222 --name box --no-wait", None).await.unwrap();
    assert!(out.contains("host box added to backend ssh"), "{out}");
    std::fs::remove_file(&key).unwrap();

    let b = h.api::<Backend>().get("ssh").await.unwrap();
    let hosts = b.spec.ssh.unwrap().hosts;
    assert_eq!(hosts.len(), 2);
    assert_eq!((hosts[0].host.as_str(), hosts[0].user.as_deref()), ("10.0.0.9", Some("ubuntu")));
    assert_eq!(
        (hosts[1].name.as_deref(), hosts[1].port, hosts[1].user.as_deref()),
        (Some("box"), Some(2222), Some("root"))
    );
    assert_eq!(b.spec.credentials.unwrap().secret_ref.name, "ssh-key");
    let secret = h.api::<k8s_openapi::api::core::v1::Secret>().get("ssh-key").await.unwrap();
    assert!(secret.data.unwrap().contains_key("ssh-privatekey"));

    let inst = h.api::<kpool::api::instance::Instance>().get("box").await.unwrap();
    assert_eq!(inst.spec.policy.backends, Some(vec!["ssh".to_string()]));
    assert_eq!(inst.spec.policy.instance_types, Some(vec!["box".to_string()]));
    assert_eq!(inst.spec.policy.idle_duration.as_deref(), Some("off"));

    let err = pool_cmd(&h, "add-ssh other@10.0.0.1 --name box --no-wait", None).await.unwrap_err().to_string();
    assert!(err.contains("already has a different host named box"), "{err}");
}

fn node(name: &str) -> k8s_openapi::api::core::v1::Node {
    ready_node(name, &[("cpu", "16"), ("memory", "64Gi"), ("pods", "110")])
}

/// Plays the kubelet for the in-memory cluster: every Pod without a phase starts and
/// becomes Ready.
async fn kubelet(h: &Harness) {
    use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
    let pods: kube::Api<Pod> = kube::Api::all(h.client.clone());
    for mut pod in pods.list(&Default::default()).await.unwrap().items {
        if pod.status.as_ref().is_some_and(|s| s.phase.is_some()) {
            continue;
        }
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.1.2.3".into()),
            conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }]),
            ..Default::default()
        });
        let api: kube::Api<Pod> = kube::Api::namespaced(h.client.clone(), &pod.namespace().unwrap_or_default());
        api.replace_status(&pod.name_any(), &Default::default(), &pod).await.unwrap();
    }
}

/// Gives instances the plugin created the harness's hold finalizer: the in-memory API
/// rejects the JSON patch that adds a first finalizer (its `test` of an absent list),
/// which the real API server accepts (see tests/support).
async fn hold_new_instances(h: &Harness) {
    use kube::api::{Patch, PatchParams};
    for i in h.api::<kpool::api::instance::Instance>().list(&Default::default()).await.unwrap().items {
        if i.finalizers().is_empty() {
            let patch = serde_json::json!({"metadata": {"finalizers": [HOLD]}});
            h.api::<kpool::api::instance::Instance>()
                .patch(&i.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    }
}

/// `add` on a cluster: offers from the namespace's backends, the question, the Instance,
/// and its progress until it is idle, while the controllers (and a stand-in kubelet) run.
#[tokio::test]
async fn add_asks_then_creates_the_instance_and_follows_it_until_it_is_idle() {
    use kpool::api::backend::{Backend, BackendSpec, BackendType};
    let h = Harness::with_real_backends().await;
    h.api::<Backend>().delete("aws", &Default::default()).await.unwrap();
    h.create(Backend::new("k8s", BackendSpec { type_: BackendType::Kubernetes, ..Default::default() })).await;
    kube::Api::<k8s_openapi::api::core::v1::Node>::all(h.client.clone())
        .create(&Default::default(), &node("node-a"))
        .await
        .unwrap();

    // Declined: nothing is created.
    let out = pool_cmd(&h, "add --cpu 4.. --memory 8GB.. --name box", Some("n")).await.unwrap();
    assert!(out.contains("BACKEND") && out.contains("node-a") && out.contains("Continue? [y/n]"), "{out}");
    assert!(out.contains("Nothing added."), "{out}");
    assert!(h.api::<kpool::api::instance::Instance>().get_opt("box").await.unwrap().is_none());

    // Accepted: created, then followed while the controllers bring it up.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (out, ()) = tokio::join!(
        async {
            let r = pool_cmd(&h, "add --cpu 4.. --memory 8GB.. --name box", Some("y")).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        },
        async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !done.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < deadline {
                hold_new_instances(&h).await;
                h.settle(1).await;
                kubelet(&h).await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    );
    let out = out.unwrap();
    assert!(out.contains("instance box created"), "{out}");
    assert!(out.contains("instance box is ready: 4xCPU, 8GB"), "{out}");
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle);
    assert_eq!(st.offer.unwrap().instance_type, "node-a");
}

#[tokio::test]
async fn add_ssh_records_a_declared_host_key_and_rejects_a_bad_one() {
    use kpool::api::backend::Backend;
    let h = Harness::new().await;
    let run = |host_key: &str| {
        let args = ["kubectl-pool", "add-ssh", "gpu.lan", "--name", "box", "--no-wait", "--host-key", host_key];
        <Cli as clap::Parser>::try_parse_from(args).unwrap()
    };
    let key = std::env::temp_dir().join(format!("kpool-cli-hostkey-{}", std::process::id()));
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nnot checked here\n").unwrap();
    let mut out = Vec::new();
    let mut input = Cursor::new(Vec::new());
    let mut term = Term { out: &mut out, input: &mut input, interactive: false };

    let Command::AddSsh(mut bad) = run("ssh-ed25519 !!!").command else { panic!("add-ssh") };
    bad.identity = Some(key.clone());
    let err = cli::ssh::add_ssh(&bad, &h.client, NS, &mut term).await.unwrap_err().to_string();
    assert!(err.starts_with("--host-key: not an OpenSSH public key line"), "{err}");
    assert!(h.api::<Backend>().get_opt("ssh").await.unwrap().is_none(), "nothing written");

    let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    let Command::AddSsh(mut good) = run(line).command else { panic!("add-ssh") };
    good.identity = Some(key.clone());
    cli::ssh::add_ssh(&good, &h.client, NS, &mut term).await.unwrap();
    std::fs::remove_file(&key).unwrap();
    let hosts = h.api::<Backend>().get("ssh").await.unwrap().spec.ssh.unwrap().hosts;
    assert_eq!(hosts[0].host_key.as_deref(), Some(line));
}

#[tokio::test]
async fn queue_lists_waiting_runs_by_priority_then_age_with_why_they_wait() {
    let h = Harness::new().await;
    two_instances(&h).await;
    let reuse = kpool::api::policy::PolicySpec {
        creation_policy: Some(kpool::api::policy::CreationPolicy::Reuse),
        ..Default::default()
    };
    for (name, priority) in [("a-first", 0), ("b-second", 0), ("z-urgent", 5)] {
        h.run(name, RunSpec { resources: cpu("16.."), policy: reuse.clone(), priority, ..Default::default() }).await;
    }
    h.settle(2).await;
    let out = pool_cmd(&h, "queue", None).await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("POOL") && lines[0].contains("PRIORITY"), "{out}");
    let order: Vec<&str> = lines[1..].iter().map(|l| l.split_whitespace().nth(2).unwrap()).collect();
    assert_eq!(order, ["z-urgent", "a-first", "b-second"], "{out}");
    assert!(lines[1].contains("NoIdleInstance"), "the reason: {out}");
    assert!(!out.contains("train"), "a running run does not wait: {out}");

    let json: serde_json::Value = serde_json::from_str(&pool_cmd(&h, "queue -o json", None).await.unwrap()).unwrap();
    let items = json["items"].as_array().unwrap();
    let positions: Vec<(String, u64)> =
        items.iter().map(|i| (i["run"].as_str().unwrap().to_string(), i["position"].as_u64().unwrap())).collect();
    assert_eq!(positions[0], ("z-urgent".to_string(), 1));
    assert_eq!(positions[2], ("b-second".to_string(), 3));
    assert_eq!(pool_cmd(&h, "queue --pool other", None).await.unwrap(), "No run waits in namespace ml.\n");
}

/// `cost` from the instances' statuses: one m5.2xlarge ($0.384/h) provisioned by run `a`
/// at t0 (idle duration 25 min), busy 10 min, idle 20 min until run `b` takes it, busy 30
/// min, then idle 25 min until it is torn down: 85 min billed, 45 of them idle; two runs,
/// one of them reused.
#[tokio::test]
async fn cost_sums_each_instances_billed_time_at_its_price_with_idle_time_and_reuse() {
    use std::time::Duration;
    let h = Harness::new().await;
    let policy = kpool::api::policy::PolicySpec { idle_duration: Some("25m".into()), ..Default::default() };
    h.run("a", RunSpec { resources: cpu("8.."), policy, ..Default::default() }).await;
    h.settle(3).await;
    let on = h.get_run("a").await.status.unwrap().instance.unwrap();
    h.advance(Duration::from_secs(600));
    h.exec.exit("a", 0);
    h.settle(1).await;
    h.advance(Duration::from_secs(1200));
    h.run("b", RunSpec { resources: cpu("8.."), ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_run("b").await.status.unwrap().instance.as_deref(), Some(on.as_str()), "b reuses it");
    h.advance(Duration::from_secs(1800));
    h.exec.exit("b", 0);
    h.settle(1).await;
    h.advance(Duration::from_secs(1500));
    h.settle(2).await;
    let st = h.get_instance(&on).await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Terminated, "{st:?}");
    let usage = st.usage.clone().unwrap();
    assert_eq!((usage.busy_seconds, usage.idle_seconds, usage.runs), (2400, 2700, 2), "{usage:?}");

    let json: serde_json::Value = serde_json::from_str(&pool_cmd(&h, "cost -o json", None).await.unwrap()).unwrap();
    let item = &json["items"][0];
    assert_eq!((item["pool"].as_str(), item["instanceType"].as_str()), (Some("default-pool"), Some("m5.2xlarge")));
    let dollars = |seconds: f64| (seconds * 0.384 / 3600.0 * 10_000.0).round() / 10_000.0;
    assert_eq!(item["spend"].as_f64(), Some(dollars(5100.0)), "{json}");
    assert_eq!(item["idleSpend"].as_f64(), Some(dollars(2700.0)), "{json}");
    assert_eq!(item["busySpend"].as_f64(), Some(dollars(2400.0)), "{json}");
    assert_eq!((item["runs"].as_u64(), item["reusedRuns"].as_u64()), (Some(2), Some(1)), "{json}");
    assert_eq!(item["reuseRate"].as_f64(), Some(0.5));
    assert_eq!(json["total"]["spend"], item["spend"]);

    let table = pool_cmd(&h, "cost", None).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("POOL") && lines[0].contains("IDLE SPEND"), "{table}");
    assert!(lines[1].contains("m5.2xlarge") && lines[1].contains("$0.54") && lines[1].contains("$0.29"), "{table}");
    assert!(lines[1].contains("50%"), "{table}");
    assert!(lines[2].starts_with("TOTAL"), "{table}");
    assert_eq!(
        pool_cmd(&h, "cost --pool other", None).await.unwrap(),
        "No instance with a launched machine in namespace ml.\n"
    );
    assert!(!table.contains("auto saved"), "no auto spell: {table}");

    // The instance is deleted: its figures stay, as the pool's deleted instances.
    let _ = h.delete_instance(&on).await;
    h.settle(1).await;
    assert!(h.api::<kpool::api::instance::Instance>().get_opt(&on).await.unwrap().is_none(), "deleted");
    let json: serde_json::Value = serde_json::from_str(&pool_cmd(&h, "cost -o json", None).await.unwrap()).unwrap();
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{json}");
    let item = &items[0];
    assert_eq!((item["pool"].as_str(), item["deleted"].as_bool()), (Some("default-pool"), Some(true)), "{json}");
    assert_eq!(item["spend"].as_f64(), Some(dollars(5100.0)), "{json}");
    assert_eq!(item["idleSpend"].as_f64(), Some(dollars(2700.0)), "{json}");
    assert_eq!(
        (item["instances"].as_u64(), item["runs"].as_u64(), item["reusedRuns"].as_u64()),
        (Some(1), Some(2), Some(1))
    );
    let table = pool_cmd(&h, "cost", None).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[1].starts_with("default-pool") && lines[1].contains("(deleted)"), "{table}");
    assert!(lines[1].contains("$0.54") && lines[1].contains("$0.29") && lines[1].contains("50%"), "{table}");
}

/// A run of 8 CPUs or more under `idleDuration: auto`.
fn auto_run() -> RunSpec {
    let auto = kpool::api::policy::PolicySpec { idle_duration: Some("auto".into()), ..Default::default() };
    RunSpec { resources: cpu("8.."), policy: auto, ..Default::default() }
}

/// Creates run `name` under `idleDuration: auto` (8 CPUs or more, so an m5.2xlarge) and
/// lets the machine it launches boot in `boot`; the instance it runs on.
async fn auto_run_booted(h: &Harness, name: &str, boot: std::time::Duration) -> String {
    h.backend.set_pending_polls(u32::MAX);
    h.run(name, auto_run()).await;
    h.settle(2).await;
    h.advance(boot);
    h.backend.set_pending_polls(0);
    h.settle(3).await;
    h.get_run(name).await.status.unwrap().instance.unwrap()
}

/// `cost` says what `idleDuration: auto` saved against 5 minutes, by hand: the machine
/// (m5.2xlarge, $0.384/h) boots in 400 s. Run `a` launches it; once idle, auto (nothing
/// learned yet: one boot, 400 s) keeps it, and run `b` takes it 350 s later: 5 minutes
/// would have ended it at 300 s and booted a new one (700 s) against auto's 350 s, 350 s
/// saved. Idle again, nothing comes: auto ends it at 400 s where 5 minutes would have at
/// 300 s, 100 s lost. 250 s saved in all: $0.0267.
#[tokio::test]
async fn cost_shows_what_auto_saved_against_five_minutes() {
    use std::time::Duration;
    let h = Harness::new().await;
    let on = auto_run_booted(&h, "a", Duration::from_secs(400)).await;
    assert_eq!(h.get_instance(&on).await.status.unwrap().boot_seconds, Some(400));
    h.exec.exit("a", 0);
    h.settle(2).await;
    assert_eq!(h.get_instance(&on).await.status.unwrap().idle_auto.map(|a| a.idle_seconds), Some(400));
    h.advance(Duration::from_secs(350));
    h.run("b", auto_run()).await;
    h.settle(2).await;
    assert_eq!(h.get_run("b").await.status.unwrap().instance.as_deref(), Some(on.as_str()), "b reuses it");
    let usage = h.get_instance(&on).await.status.unwrap().usage.unwrap();
    assert_eq!((usage.saved_vs_5m_seconds, usage.settled_vs_5m, usage.unsettled_vs_5m), (350, 1, 0));
    h.exec.exit("b", 0);
    h.settle(2).await;
    h.advance(Duration::from_secs(401));
    h.settle(2).await;
    let usage = h.get_instance(&on).await.status.unwrap().usage.unwrap();
    assert_eq!((usage.saved_vs_5m_seconds, usage.settled_vs_5m, usage.unsettled_vs_5m), (250, 2, 0));

    let json: serde_json::Value = serde_json::from_str(&pool_cmd(&h, "cost -o json", None).await.unwrap()).unwrap();
    let total = &json["total"];
    let saved = (250.0 * 0.384 / 3600.0 * 10_000.0_f64).round() / 10_000.0;
    assert_eq!((total["savedVs5m"].as_f64(), total["settledVs5m"].as_u64()), (Some(saved), Some(2)), "{json}");
    let table = pool_cmd(&h, "cost", None).await.unwrap();
    assert!(table.ends_with("auto saved $0.03 vs 5m over 2 idle spells\n"), "{table}");
}

/// A spell auto ended before 5 minutes is settled once its pool sees the next launch of
/// its shape, by hand: the machine (m5.2xlarge, $0.384/h) boots in 100 s. Run `a`
/// launches it; once idle, auto (nothing learned yet: one boot, 100 s) ends it at 100 s,
/// before 5 minutes: not known yet. Run `b` arrives 250 s after that spell started and
/// launches a machine (100 s boot): 5 minutes would have kept the first one for `b`
/// (250 s idle, no boot) where auto idled 100 s and booted 100 s: 50 s saved, $0.0053,
/// in the pool's `status.cost.settledLaterVs5m`, and `cost` counts it as settled.
#[tokio::test]
async fn cost_settles_a_spell_auto_ended_early_at_the_next_launch() {
    use std::time::Duration;
    let h = Harness::new().await;
    let first = auto_run_booted(&h, "a", Duration::from_secs(100)).await;
    h.exec.exit("a", 0);
    h.settle(2).await;
    assert_eq!(h.get_instance(&first).await.status.unwrap().idle_auto.map(|a| a.idle_seconds), Some(100));
    h.advance(Duration::from_secs(101));
    h.settle(2).await;
    let usage = h.get_instance(&first).await.status.unwrap().usage.unwrap();
    assert_eq!((usage.settled_vs_5m, usage.unsettled_vs_5m), (0, 1), "ended at 100 s: not known yet");
    let table = pool_cmd(&h, "cost", None).await.unwrap();
    assert!(table.contains("1 spells auto ended before 5 minutes are not counted yet"), "{table}");

    h.advance(Duration::from_secs(149));
    let second = auto_run_booted(&h, "b", Duration::from_secs(100)).await;
    assert_ne!(second, first, "b launched a machine");
    let pool = h.api::<kpool::api::pool::Pool>().get("default-pool").await.unwrap();
    let later = pool.status.unwrap().cost.unwrap().settled_later_vs_5m;
    let saved = (50.0 * 0.384 / 3600.0 * 10_000.0_f64).round() / 10_000.0;
    assert_eq!((later.dollars, later.spells), (saved, 1));
    let json: serde_json::Value = serde_json::from_str(&pool_cmd(&h, "cost -o json", None).await.unwrap()).unwrap();
    let total = &json["total"];
    assert_eq!(
        (total["savedVs5m"].as_f64(), total["settledVs5m"].as_u64(), total["unsettledVs5m"].as_u64()),
        (Some(saved), Some(1), Some(0)),
        "{json}"
    );
    let table = pool_cmd(&h, "cost", None).await.unwrap();
    assert!(table.ends_with("auto saved $0.01 vs 5m over 1 idle spells\n"), "{table}");
}
