//! GitOps readiness on the real control plane (scripts/peers/kube.sh): what kstatus — the
//! status library of Flux, kpt and cli-utils — computes for kpool's objects, read with
//! `kubectl get -o json` while the `kpool` binary drives them with the `kubernetes` backend
//! on kwok nodes.
//!
//! - Current: a Backend, a Pool, an Idle or Busy Instance, a Running or Succeeded Run.
//! - InProgress: an Instance or a Run on its way (Pending, Provisioning; held here by
//!   asking for more GPUs than any node has, with a retry window), and any object whose
//!   spec changed until the controller has looked at it.
//! - Failed: a Run whose job exited 1, a Run and an Instance no offer fits (no retry), an
//!   Instance terminated after its idle duration.
//!
//! Besides the settled states, `kubectl get --watch -o json` records every state the
//! objects pass through, and each one must read as its phase says (so the short-lived
//! Provisioning phase of a real launch is checked too). That includes the moment after
//! `kubectl apply` before kpool has looked: the API server defaults the status to
//! `observedGeneration: 0`, so the object reads InProgress, not Current.
//!
//! kwok is not a kubelet: it makes scheduled Pods Running and Ready; a job Pod's container
//! exit is written here, as a kubelet would.

#[path = "support_kube/mod.rs"]
mod support_kube;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::run::{Run, RunPhase};
use kube::api::Api;
use serde_json::Value;
use support_kube::{
    apply, cluster, eventually, exit_job, instance_in_phase, job_pod, run_in_phase, Cluster, Kpool, WAIT,
};

/// Small enough for the shared kwok nodes.
const SMALL: &str = "{cpu: \"1..\", memory: \"1GB..\", disk: \"1GB..\"}";
/// More GPUs than any kwok node has (8): no offer fits.
const TOO_BIG: &str = "{gpu: \"A100:16\", cpu: \"1..\", memory: \"1GB..\", disk: \"1GB..\"}";

/// One line of kstatus: `KIND NAMESPACE/NAME STATUS MESSAGE`.
#[derive(Clone, Debug)]
struct Verdict {
    kind: String,
    name: String,
    status: String,
    message: String,
}

/// Pipes `json` (an object or a List) into the kstatus binary.
fn kstatus(bin: &Path, json: &[u8]) -> Vec<Verdict> {
    let mut child = Command::new(bin.join("kstatus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kstatus");
    child.stdin.take().unwrap().write_all(json).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kstatus failed: {}", support_kube::describe(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let kind = f.next().unwrap_or_default().to_string();
            let name = f.next().unwrap_or_default().split('/').nth(1).unwrap_or_default().to_string();
            Verdict {
                kind,
                name,
                status: f.next().unwrap_or_default().into(),
                message: f.next().unwrap_or_default().into(),
            }
        })
        .collect()
}

/// `kubectl get -o json <what>` in `ns`, through kstatus: its verdict of the one object.
fn verdict(c: &Cluster, ns: &str, what: &str) -> Verdict {
    let json = c.kubectl_ok(&["get", "-n", ns, what, "-o", "json"]);
    let mut v = kstatus(&c.bin, json.as_bytes());
    assert_eq!(v.len(), 1, "{what}: {v:?}");
    v.remove(0)
}

/// Waits until kstatus says `want` of `what`, and returns its verdict.
async fn becomes(c: &Cluster, ns: &str, what: &str, want: &str) -> Verdict {
    eventually(&format!("kstatus {want} for {what}"), WAIT, || async {
        Some(verdict(c, ns, what)).filter(|v| v.status == want)
    })
    .await
}

/// What kstatus must say of an object in the state it was seen in; `None` for an object
/// without a status (which the CRD's status default is there to prevent).
fn expected(obj: &Value) -> Option<&'static str> {
    obj.get("status")?;
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Some("Terminating");
    }
    if obj.pointer("/status/observedGeneration") != obj.pointer("/metadata/generation") {
        return Some("InProgress");
    }
    let phase = obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    let reason = obj.pointer("/status/terminationReason").and_then(Value::as_str);
    Some(match (obj["kind"].as_str()?, phase) {
        ("Pool", _) => "Current",
        ("Instance", "Pending" | "Provisioning" | "Terminating") => "InProgress",
        ("Instance", "Idle" | "Busy") => "Current",
        ("Instance", "Failed" | "Terminated") => "Failed",
        ("Run", "Pending" | "Provisioning") => "InProgress",
        ("Run", "Running" | "Succeeded") => "Current",
        ("Run", "Terminated") if reason == Some("Stopped") => "Current",
        ("Run", "Failed" | "Terminated") => "Failed",
        _ => return None,
    })
}

/// A state an object was seen in by a watch, with kstatus' verdict of it.
#[derive(Clone, Debug)]
struct Seen {
    kind: String,
    name: String,
    phase: String,
    expected: Option<&'static str>,
    got: String,
    message: String,
}

/// `kubectl get <resource> --watch -o json` in a namespace: every state of every object,
/// through kstatus.
struct Recorder {
    children: Vec<Child>,
    threads: Vec<std::thread::JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn start(c: &Cluster, ns: &str, resources: &[&str]) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut children = Vec::new();
        let mut threads = Vec::new();
        for r in resources {
            let mut child = c
                .kubectl()
                .args(["get", "-n", ns, r, "--watch", "-o", "json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("run kubectl get --watch");
            let stdout = child.stdout.take().unwrap();
            let (bin, seen) = (c.bin.clone(), seen.clone());
            threads.push(std::thread::spawn(move || {
                for obj in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                    let Ok(obj) = obj else { return };
                    let v = kstatus(&bin, &serde_json::to_vec(&obj).unwrap()).remove(0);
                    seen.lock().unwrap().push(Seen {
                        kind: v.kind,
                        name: v.name,
                        phase: obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or("-").into(),
                        expected: expected(&obj),
                        got: v.status,
                        message: v.message,
                    });
                }
            }));
            children.push(child);
        }
        Recorder { children, threads, seen }
    }

    /// Stops watching; every state seen so far.
    fn stop(mut self) -> Vec<Seen> {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Backend of type `kubernetes` and a default pool whose instances stay idle for `idle`.
fn backend_and_pool(idle: &str) -> String {
    format!(
        "apiVersion: kpool.dev/v1alpha1\nkind: Backend\nmetadata: {{name: cluster}}\nspec: {{type: kubernetes}}\n---\n\
         apiVersion: kpool.dev/v1alpha1\nkind: Pool\nmetadata:\n  name: gitops\n  annotations: {{kpool.dev/default: \"true\"}}\n\
         spec:\n  defaults: {{idleDuration: {idle}}}\n"
    )
}

fn run_yaml(name: &str, resources: &str, extra: &str) -> String {
    format!(
        "apiVersion: kpool.dev/v1alpha1\nkind: Run\nmetadata: {{name: {name}}}\nspec:\n  image: busybox:1.36\n  \
         commands: [\"sleep 600\"]\n  resources: {resources}\n{extra}"
    )
}

fn instance_yaml(name: &str, resources: &str, extra: &str) -> String {
    format!("apiVersion: kpool.dev/v1alpha1\nkind: Instance\nmetadata: {{name: {name}}}\nspec:\n  resources: {resources}\n{extra}")
}

/// Retry for an hour on every event (no-capacity among them).
const RETRY: &str = "  retry: {duration: 1h}\n";

/// Deletes the test's runs and instances while kpool still runs (it deletes their Pods,
/// which would otherwise hold kwok capacity other tests need).
fn clean_up(c: &Cluster, ns: &str) {
    c.kubectl_ok(&["delete", "-n", ns, "runs,instances", "--all", "--wait", "--timeout=60s"]);
}

/// Every state the watch saw must read as its phase says; prints them.
fn check_seen(seen: &[Seen]) {
    for s in seen {
        eprintln!("seen: {} {} {:<12} -> {} ({})", s.kind, s.name, s.phase, s.got, s.message);
    }
    let wrong: Vec<&Seen> = seen.iter().filter(|s| s.expected != Some(s.got.as_str())).collect();
    assert!(wrong.is_empty(), "kstatus disagrees with the phase (or no status): {wrong:#?}");
}

fn saw(seen: &[Seen], kind: &str, phase: &str, status: &str) -> bool {
    seen.iter().any(|s| s.kind == kind && s.phase == phase && s.got == status)
}

#[tokio::test]
async fn a_run_s_lifecycle_reads_in_progress_then_current_and_a_failed_job_reads_failed() {
    let started = Instant::now();
    let c = cluster();
    c.install_crds();
    let ns = c.namespace("gitops").await;
    let admin = c.client().await;
    let runs: Api<Run> = Api::namespaced(admin.clone(), &ns);
    let instances: Api<Instance> = Api::namespaced(admin.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let recorder = Recorder::start(c, &ns, &["instances", "runs", "pools"]);
    let kpool = Kpool::start(&c.kubeconfig, &ns, None);

    apply(c, &ns, &backend_and_pool("10m"));
    apply(c, &ns, &run_yaml("ok", SMALL, ""));
    let ok = run_in_phase(&runs, "ok", RunPhase::Running).await;
    let instance = ok.status.as_ref().unwrap().instance.clone().expect("an instance");
    // Running is Current, as kstatus reads a started Job; its instance is Busy.
    assert_eq!(verdict(c, &ns, "run/ok").status, "Current");
    assert_eq!(verdict(c, &ns, &format!("instance/{instance}")).status, "Current");

    exit_job(&pods, &job_pod(&pods, &ok).await, 0).await;
    run_in_phase(&runs, "ok", RunPhase::Succeeded).await;
    instance_in_phase(&instances, &instance, InstancePhase::Idle).await;
    let succeeded = verdict(c, &ns, "run/ok");
    let idle = verdict(c, &ns, &format!("instance/{instance}"));
    let backend = verdict(c, &ns, "backend/cluster");
    let pool = verdict(c, &ns, "pool/gitops");
    for v in [&succeeded, &idle, &backend, &pool] {
        assert_eq!(v.status, "Current", "{v:?}");
    }

    // A second run reuses the idle instance; its job exits 1.
    apply(c, &ns, &run_yaml("bad", SMALL, ""));
    let bad = run_in_phase(&runs, "bad", RunPhase::Running).await;
    assert_eq!(bad.status.as_ref().unwrap().instance.as_deref(), Some(instance.as_str()), "reused");
    exit_job(&pods, &job_pod(&pods, &bad).await, 1).await;
    let failed = becomes(c, &ns, "run/bad", "Failed").await;
    assert!(failed.message.contains("exited with code 1"), "{failed:?}");
    instance_in_phase(&instances, &instance, InstancePhase::Idle).await;

    // A spec change is InProgress until the controller has looked at it, then Current
    // again, also for an object that has nothing left to do (a finished run).
    c.kubectl_ok(&["patch", "-n", &ns, "run/ok", "--type=merge", "-p", "{\"spec\":{\"commands\":[\"true\"]}}"]);
    c.kubectl_ok(&[
        "patch",
        "-n",
        &ns,
        &format!("instance/{instance}"),
        "--type=merge",
        "-p",
        "{\"spec\":{\"idleDuration\":\"20m\"}}",
    ]);
    for what in ["run/ok".to_string(), format!("instance/{instance}")] {
        eventually(&format!("{what}'s new generation observed"), WAIT, || async {
            let obj: Value = serde_json::from_str(&c.kubectl_ok(&["get", "-n", &ns, &what, "-o", "json"])).ok()?;
            (obj.pointer("/metadata/generation") == Some(&Value::from(2))
                && obj.pointer("/status/observedGeneration") == Some(&Value::from(2)))
            .then_some(())
        })
        .await;
        assert_eq!(verdict(c, &ns, &what).status, "Current", "{what}");
    }

    let all = kstatus(&c.bin, c.kubectl_ok(&["get", "-n", &ns, "kpool", "-o", "json"]).as_bytes());
    for v in &all {
        eprintln!("kstatus: {} {} {} ({})", v.kind, v.name, v.status, v.message);
    }
    let seen = recorder.stop();
    check_seen(&seen);
    assert!(saw(&seen, "Instance", "Provisioning", "InProgress"), "the launch was not seen");
    assert!(saw(&seen, "Instance", "Busy", "Current"));
    assert!(saw(&seen, "Run", "Pending", "InProgress"));
    assert!(saw(&seen, "Run", "Provisioning", "InProgress"));
    assert!(saw(&seen, "Run", "Running", "Current"));
    assert!(saw(&seen, "Pool", "-", "Current"));
    clean_up(c, &ns);
    drop(kpool);
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test]
async fn objects_that_wait_for_capacity_read_in_progress_and_those_that_cannot_get_any_read_failed() {
    let started = Instant::now();
    let c = cluster();
    c.install_crds();
    let ns = c.namespace("gitops").await;
    let admin = c.client().await;
    let runs: Api<Run> = Api::namespaced(admin.clone(), &ns);
    let instances: Api<Instance> = Api::namespaced(admin.clone(), &ns);
    let recorder = Recorder::start(c, &ns, &["instances", "runs"]);
    let kpool = Kpool::start(&c.kubeconfig, &ns, None);

    apply(c, &ns, &backend_and_pool("10m"));
    // No node has 16 GPUs: with a retry window the objects wait for capacity, held in
    // provisioning; without one they fail.
    apply(c, &ns, &instance_yaml("waiting", TOO_BIG, RETRY));
    apply(c, &ns, &instance_yaml("impossible", TOO_BIG, ""));
    apply(c, &ns, &run_yaml("hungry", TOO_BIG, RETRY));
    apply(c, &ns, &run_yaml("doomed", TOO_BIG, ""));
    // Added by hand with a short idle duration: Idle, then terminated for good.
    apply(c, &ns, &instance_yaml("brief", SMALL, "  idleDuration: 3s\n"));

    eventually("instance waiting to wait for capacity", WAIT, || async {
        let st = instances.get_opt("waiting").await.ok()??.status?;
        st.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "WaitingForCapacity").then_some(())
    })
    .await;
    let waiting = verdict(c, &ns, "instance/waiting");
    assert_eq!(waiting.status, "InProgress", "{waiting:?}");
    assert!(waiting.message.contains("no offer fits"), "{waiting:?}");

    let hungry = run_in_phase(&runs, "hungry", RunPhase::Provisioning).await;
    let for_hungry = hungry.status.as_ref().unwrap().provisioning_instance.clone().expect("an instance for it");
    eventually("the instance of run hungry to wait for capacity", WAIT, || async {
        let st = instances.get_opt(&for_hungry).await.ok()??.status?;
        st.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "WaitingForCapacity").then_some(())
    })
    .await;
    let hungry = verdict(c, &ns, "run/hungry");
    assert_eq!(hungry.status, "InProgress", "{hungry:?}");

    let impossible = becomes(c, &ns, "instance/impossible", "Failed").await;
    let doomed = becomes(c, &ns, "run/doomed", "Failed").await;
    assert_eq!(instances.get("impossible").await.unwrap().status.unwrap().phase, InstancePhase::Failed);
    assert_eq!(runs.get("doomed").await.unwrap().status.unwrap().phase, RunPhase::Failed);
    assert!(impossible.message.contains("no offer fits"), "{impossible:?}");
    assert!(doomed.message.contains("could not provision"), "{doomed:?}");

    instance_in_phase(&instances, "brief", InstancePhase::Terminated).await;
    let brief = verdict(c, &ns, "instance/brief");
    assert_eq!(brief.status, "Failed", "{brief:?}");

    // Still waiting a while later: the hold is real, not a moment before a launch.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(verdict(c, &ns, "instance/waiting").status, "InProgress");
    assert_eq!(verdict(c, &ns, "run/hungry").status, "InProgress");

    let all = kstatus(&c.bin, c.kubectl_ok(&["get", "-n", &ns, "kpool", "-o", "json"]).as_bytes());
    for v in &all {
        eprintln!("kstatus: {} {} {} ({})", v.kind, v.name, v.status, v.message);
    }
    let seen = recorder.stop();
    check_seen(&seen);
    assert!(saw(&seen, "Instance", "Idle", "Current"), "instance brief was Idle first");
    clean_up(c, &ns);
    drop(kpool);
    eprintln!("took {:?}", started.elapsed());
}
