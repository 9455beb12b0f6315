//! The controller crashing on the real control plane (scripts/peers/kube.sh), as the
//! `kpool` binary in separate processes, while runs flow:
//!
//! - two replicas elect a leader with the real Lease API; the leader is SIGKILLed and the
//!   standby takes over. The API server's audit log (kube.sh writes one) tells the
//!   replicas' writes apart by their User-Agent `kpool/VERSION (POD_NAME)`: the old leader
//!   wrote nothing after its death, the new one nothing before it held the Lease;
//! - one controller SIGKILLed at seeded random moments and restarted, many times.
//!
//! Runs execute on a `kubernetes` Backend (slot and job Pods on kwok nodes; this test plays
//! the kubelet and ends each job); machines are launched on an `aws` Backend at a loopback
//! moto (Instances added by hand, idling out), so EC2's own list counts the launches. Both
//! tests watch Instances, Runs and job Pods all along and check, at every change, that no
//! instance hosts two jobs at once, no run moves between instances or executes twice, and
//! that idle instances go within their idle duration plus a few seconds.
//!
//! `KPOOL_CRASH_SEED` picks the kill schedule of the second test (printed with the figures).

#[allow(dead_code)] // the fault proxy is for the backend tests
mod support_aws;
mod support_kube;
mod support_ssh;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kpool::api::backend::Backend;
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::pool::Pool;
use kpool::api::run::{Run, RunPhase};
use kpool::backends::aws::client::{from_xml, Params};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use support_aws::moto;
use support_kube::{cluster, eventually, tail, try_exit_job, Kpool};
use support_ssh::Sshd;

/// Idle duration of every instance of these tests.
const IDLE: Duration = Duration::from_secs(10);
/// How late past its idle deadline an idle instance may start going. The README promises
/// "its idle duration plus one reconcile"; here that is under 10 s, 20 restarts included
/// (the figure is printed). CI saw 20-38 s twice, both times the first reconciles of a
/// new controller waiting 30 s for a watch cache: once because only that controller,
/// busy with them, filled it (fixed: every cache has a watch task of its own), once
/// because a store's readiness wakes only the last task that polled it (fixed: the
/// controllers start once one task has seen every cache ready). The bound leaves room
/// for a slow machine and still fails for that, for an instance kept for its run's claim
/// window (120 s) or until the 5-minute recheck.
const IDLE_SLACK: Duration = Duration::from_secs(20);
const RUN_POOL: &str = "runs";
const VM_POOL: &str = "vms";

fn object<K: DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).expect("a valid object")
}

/// Backend `cluster` (kubernetes) and pool `runs` on it for the runs (at most
/// `max_instances`), Backend `ec2` (aws at moto) and pool `vms` on it for the machines.
async fn setup(admin: &Client, ns: &str, max_instances: u32) {
    let pp = PostParams::default();
    let (secret, catalog, ec2) =
        moto().backend_objects("ec2", "t3.micro,us-east-1,0.0104,2,1.0,0,,,False,,,,x86,{}\n", Default::default());
    Api::<Secret>::namespaced(admin.clone(), ns).create(&pp, &secret).await.unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), ns).create(&pp, &catalog).await.unwrap();
    let backends: Api<Backend> = Api::namespaced(admin.clone(), ns);
    backends.create(&pp, &ec2).await.unwrap();
    let cluster = serde_json::json!({"metadata": {"name": "cluster"}, "spec": {"type": "kubernetes"}});
    backends.create(&pp, &object(cluster)).await.unwrap();
    let pools: Api<Pool> = Api::namespaced(admin.clone(), ns);
    let idle = format!("{}s", IDLE.as_secs());
    for (name, backend, max) in [(RUN_POOL, "cluster", Some(max_instances)), (VM_POOL, "ec2", None)] {
        let pool = serde_json::json!({"metadata": {"name": name}, "spec": {
            "maxInstances": max, "defaults": {"idleDuration": idle, "backends": [backend]}}});
        pools.create(&pp, &object(pool)).await.unwrap();
    }
}

/// Run `name`: one `gpu` (when given) and a CPU, a command that the test's kubelet ends.
fn run(name: &str, gpu: Option<&str>) -> Run {
    object(serde_json::json!({"metadata": {"name": name}, "spec": {
        "pool": RUN_POOL, "image": "busybox:1.36", "commands": ["true"],
        "resources": {"cpu": "1..", "memory": "1GB..", "disk": "1GB..", "gpu": gpu}}}))
}

/// Instance `name` on the aws Backend, idling out after [`IDLE`].
fn vm(name: &str) -> Instance {
    object(serde_json::json!({"metadata": {"name": name}, "spec": {
        "pool": VM_POOL, "resources": {"cpu": "1..", "memory": "1GB.."}}}))
}

/// What the watches saw, checked at every change.
#[derive(Default)]
struct Seen {
    /// Instance name -> what it was.
    instances: HashMap<String, InstanceTrack>,
    /// Run name -> the instances it was on, in order, and when it was first placed.
    runs: HashMap<String, (Vec<String>, Option<Instant>, RunPhase)>,
    /// Job Pod name -> (run UID, machine, whether it may still execute).
    jobs: HashMap<String, (String, String, bool)>,
    /// How long after its idle deadline each idle instance started going, in seconds.
    teardowns: Vec<(String, f64)>,
    violations: Vec<String>,
}

#[derive(Default)]
struct InstanceTrack {
    machine: Option<String>,
    runs: Vec<String>,
    phase: Option<InstancePhase>,
    idle_since: Option<jiff::Timestamp>,
    going: bool,
    /// Every state seen: resourceVersion, phase, run, idle since.
    history: Vec<String>,
}

impl Seen {
    fn instance(&mut self, i: &Instance, deleted: bool) {
        let name = i.name_any();
        let t = self.instances.entry(name.clone()).or_default();
        let st = i.status.as_ref();
        if let Some(m) = st.and_then(|s| s.machine_name.clone()) {
            if t.machine.as_ref().is_some_and(|old| *old != m) {
                self.violations.push(format!("instance {name} changed machine {:?} -> {m}", t.machine));
            }
            t.machine = Some(m);
        }
        if let Some(r) = st.and_then(|s| s.run.clone()) {
            if t.runs.last() != Some(&r) {
                if t.runs.contains(&r) {
                    self.violations.push(format!("run {r} came back to instance {name} after {:?}", t.runs));
                }
                t.runs.push(r);
            }
        }
        let phase = st.map(|s| s.phase);
        let going = deleted
            || i.meta().deletion_timestamp.is_some()
            || matches!(phase, Some(InstancePhase::Terminating | InstancePhase::Terminated));
        if going && !t.going && t.phase == Some(InstancePhase::Idle) {
            if let Some(since) = t.idle_since {
                let late = jiff::Timestamp::now().duration_since(since).as_secs_f64() - IDLE.as_secs_f64();
                self.teardowns.push((name, late));
            }
        }
        t.going |= going;
        t.history.push(format!(
            "{} {:?} {phase:?} run={:?} idle_since={:?}{}",
            jiff::Timestamp::now(),
            i.resource_version(),
            st.and_then(|s| s.run.as_deref()),
            st.and_then(|s| s.idle_since.as_ref()).map(|t| t.0),
            if deleted { " deleted" } else { "" }
        ));
        t.phase = phase;
        t.idle_since = st.and_then(|s| s.idle_since.as_ref()).map(|t| t.0);
    }

    fn run(&mut self, r: &Run) {
        let name = r.name_any();
        let t = self.runs.entry(name.clone()).or_insert_with(|| (Vec::new(), None, RunPhase::Pending));
        let Some(st) = r.status.as_ref() else { return };
        t.2 = st.phase;
        if let Some(i) = st.instance.clone() {
            if t.0.last() != Some(&i) {
                if !t.0.is_empty() {
                    self.violations.push(format!("run {name} moved from instance(s) {:?} to {i}", t.0));
                }
                t.0.push(i);
                t.1.get_or_insert_with(Instant::now);
            }
        }
    }

    fn job(&mut self, p: &Pod, deleted: bool) {
        let labels = p.labels();
        let (Some(run), Some(machine)) = (labels.get("kpool.dev/run-uid"), labels.get("kpool.dev/machine")) else {
            return;
        };
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let live = !deleted && matches!(phase, "Pending" | "Running");
        let name = p.name_any();
        self.jobs.insert(name.clone(), (run.clone(), machine.clone(), live));
        let on_machine: Vec<&String> =
            self.jobs.iter().filter(|(_, (_, m, l))| m == machine && *l).map(|(n, _)| n).collect();
        if on_machine.len() > 1 {
            self.violations.push(format!("machine {machine} executes {on_machine:?} at once"));
        }
        let of_run: Vec<&String> = self.jobs.iter().filter(|(_, (r, _, _))| r == run).map(|(n, _)| n).collect();
        if of_run.len() > 1 {
            self.violations.push(format!("run {run} executed as {of_run:?}"));
        }
    }
}

/// Feeds every watch event of `api` (selected by `cfg`) to `on` (object, deleted) until
/// the task is aborted.
fn watch<K, F>(api: Api<K>, cfg: watcher::Config, seen: Arc<Mutex<Seen>>, on: F) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(&mut Seen, &K, bool) + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, cfg).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on(&mut seen.lock().unwrap(), &o, false),
                Ok(watcher::Event::Delete(o)) => on(&mut seen.lock().unwrap(), &o, true),
                _ => {}
            }
        }
    })
}

/// The watches of namespace `ns` and the test's kubelet, which ends every job Pod that
/// runs (exit 0). Aborted on drop.
struct Observer {
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Observer {
    fn start(admin: &Client, ns: &str) -> Observer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
        let kubelet_pods = pods.clone();
        let kubelet = tokio::spawn(async move {
            let pods = kubelet_pods;
            let mut ended = HashSet::new();
            loop {
                let list = pods.list(&ListParams::default().labels("kpool.dev/run-uid")).await;
                for p in list.map(|l| l.items).unwrap_or_default() {
                    let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    let fresh = running && p.meta().deletion_timestamp.is_none() && !ended.contains(&p.name_any());
                    if fresh && try_exit_job(&pods, &p, 0).await.is_ok() {
                        ended.insert(p.name_any());
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let all = watcher::Config::default;
        let tasks = vec![
            watch(Api::<Instance>::namespaced(admin.clone(), ns), all(), seen.clone(), Seen::instance),
            watch(Api::<Run>::namespaced(admin.clone(), ns), all(), seen.clone(), |s, r, _| s.run(r)),
            watch(pods.clone(), all().labels("kpool.dev/run-uid"), seen.clone(), Seen::job),
            kubelet,
        ];
        Observer { seen, tasks }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// An EC2 instance at moto.
#[derive(Debug)]
struct Ec2 {
    id: String,
    state: String,
    tags: BTreeMap<String, String>,
}

/// Every EC2 instance at moto tagged with namespace `ns`, terminated ones included.
async fn ec2_of(ns: &str) -> Vec<Ec2> {
    #[derive(Deserialize)]
    struct Items<T> {
        #[serde(rename = "item", default = "Vec::new")]
        items: Vec<T>,
    }
    #[derive(Deserialize)]
    struct Describe {
        #[serde(rename = "reservationSet")]
        reservations: Option<Items<Reservation>>,
    }
    #[derive(Deserialize)]
    struct Reservation {
        #[serde(rename = "instancesSet")]
        instances: Items<Item>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Item {
        instance_id: String,
        instance_state: State,
        tag_set: Option<Items<Tag>>,
    }
    #[derive(Deserialize)]
    struct State {
        name: String,
    }
    #[derive(Deserialize)]
    struct Tag {
        key: String,
        #[serde(default)]
        value: String,
    }
    let mut p = Params::new();
    p.filter("tag:kpool.dev/namespace", &[ns]);
    let xml = moto().ec2().call("us-east-1", "DescribeInstances", &p).await.expect("DescribeInstances at moto");
    let doc: Describe = from_xml("DescribeInstances", &xml).expect("a DescribeInstances answer");
    let items = doc.reservations.map(|r| r.items).unwrap_or_default().into_iter().flat_map(|r| r.instances.items);
    items
        .map(|i| Ec2 {
            id: i.instance_id,
            state: i.instance_state.name,
            tags: i.tag_set.map(|t| t.items).unwrap_or_default().into_iter().map(|t| (t.key, t.value)).collect(),
        })
        .collect()
}

/// Checks that every EC2 instance of `ns` is the machine of exactly one Instance the
/// watches saw and no Instance has two, and that none is left running; returns the launches.
fn check_launches(ns: &str, ec2: &[Ec2], seen: &Seen) -> usize {
    let mut per_instance: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in ec2 {
        let machine = e.tags.get("kpool.dev/machine").map(String::as_str).unwrap_or_default();
        let instance = e.tags.get("kpool.dev/instance").and_then(|i| i.strip_prefix(&format!("{ns}/")));
        let owner = instance.and_then(|i| seen.instances.get(i));
        assert!(
            owner.is_some_and(|o| o.machine.as_deref() == Some(machine)),
            "EC2 instance {e:?} is not the machine of an Instance seen"
        );
        per_instance.entry(instance.unwrap()).or_default().push(&e.id);
        assert_eq!(e.state, "terminated", "a machine outlived its Instance: {e:?}");
    }
    let twice: Vec<_> = per_instance.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "Instances launched twice: {twice:?}");
    ec2.len()
}

/// Waits until every run ended, every Instance went (idle ones idle out) with its
/// machine, and no Pod of a machine is left; asserts what the watches saw, idle instances
/// going at most `slack` after their idle deadline.
async fn drain(admin: &Client, ns: &str, runs: usize, obs: &Observer, timeout: Duration, slack: Duration) {
    let run_api: Api<Run> = Api::namespaced(admin.clone(), ns);
    let instances: Api<Instance> = Api::namespaced(admin.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    eventually("every run ended", timeout, || async {
        let list = run_api.list(&ListParams::default()).await.ok()?;
        let ended = list.items.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
        (ended == runs).then_some(())
    })
    .await;
    let list = run_api.list(&ListParams::default()).await.unwrap();
    for r in &list.items {
        let st = r.status.as_ref().unwrap();
        let on = st.instance.as_deref().unwrap_or_default();
        let history = obs.seen.lock().unwrap().instances.get(on).map(|t| t.history.join("\n")).unwrap_or_default();
        assert_eq!(
            (st.phase, st.exit_code),
            (RunPhase::Succeeded, Some(0)),
            "run {}: {st:?}\ninstance {on} was:\n{history}",
            r.name_any()
        );
    }
    eventually("every instance gone with its machine", Duration::from_secs(90), || async {
        let left = instances.list(&ListParams::default()).await.ok()?.items;
        let live = left.iter().any(|i| i.status.as_ref().is_none_or(|s| s.phase != InstancePhase::Terminated));
        let machines = pods.list(&ListParams::default().labels("kpool.dev/managed-by=kpool")).await.ok()?.items;
        let ec2 = ec2_of(ns).await;
        (!live && machines.is_empty() && ec2.iter().all(|e| e.state == "terminated")).then_some(())
    })
    .await;
    check_seen(&obs.seen.lock().unwrap(), runs, slack);
}

/// What the watches saw: no violation, `runs` runs each on one instance, idle instances
/// going at most `slack` after their idle deadline (those over 5 s are printed).
fn check_seen(seen: &Seen, runs: usize, slack: Duration) {
    assert!(seen.violations.is_empty(), "violations: {:#?}", seen.violations);
    assert_eq!(seen.runs.len(), runs);
    for (name, (on, _, _)) in &seen.runs {
        assert_eq!(on.len(), 1, "run {name} was on {on:?}");
    }
    for (name, late) in seen.teardowns.iter().filter(|(_, s)| *s > 5.0) {
        let history = seen.instances.get(name).map(|t| t.history.join("\n  ")).unwrap_or_default();
        println!("idle instance {name} went {late:.1} s after its idle deadline; it was:\n  {history}");
    }
    let late: Vec<_> = seen.teardowns.iter().filter(|(_, s)| *s > slack.as_secs_f64()).collect();
    assert!(late.is_empty(), "idle instances that went more than {slack:?} late: {late:?}");
}

fn max_late(seen: &Seen) -> f64 {
    seen.teardowns.iter().map(|(_, s)| *s).fold(f64::NEG_INFINITY, f64::max)
}

/// One line of the API server's audit log.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Audit {
    verb: String,
    #[serde(default)]
    user_agent: String,
    object_ref: Option<AuditRef>,
    request_received_timestamp: jiff::Timestamp,
    response_status: Option<AuditStatus>,
}

#[derive(Debug, Deserialize)]
struct AuditRef {
    resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AuditStatus {
    code: Option<i32>,
}

/// The writes of namespaces `namespaces` in the audit log that kube.sh has the API server
/// write next to the kubeconfig (`KPOOL_TEST_AUDIT_LOG` for a cluster of your own).
fn audit(namespaces: &[&str]) -> Vec<Audit> {
    let path = std::env::var("KPOOL_TEST_AUDIT_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cluster().kubeconfig.parent().unwrap().join("logs/audit.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the API server's audit log {} ({e}): start the cluster with scripts/peers/kube.sh \
             (it writes one) or set KPOOL_TEST_AUDIT_LOG",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| serde_json::from_str::<Audit>(l).ok())
        .filter(|a| a.object_ref.as_ref().and_then(|o| o.namespace.as_deref()).is_some_and(|n| namespaces.contains(&n)))
        .collect()
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("kpool-controller").await.ok()??.spec?.holder_identity
}

/// A small seeded generator (splitmix64): the same seed, the same kill schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + Duration::from_millis(self.next() % (hi - lo).as_millis() as u64)
    }
}

/// SIGKILLs `kpool` `kills` times, each `after` plus up to 4 s (seeded) after the last
/// start, and starts a new one up to 1 s later; returns the last one and the time taken.
async fn kill_and_restart(
    mut kpool: Kpool,
    start: impl Fn() -> Kpool,
    kills: usize,
    rng: &mut Rng,
    after: Duration,
) -> (Kpool, Duration) {
    let began = Instant::now();
    for _ in 0..kills {
        tokio::time::sleep(rng.between(after, after + Duration::from_secs(4))).await;
        kpool.kill();
        tokio::time::sleep(rng.between(Duration::ZERO, Duration::from_millis(1000))).await;
        kpool = start();
    }
    (kpool, began.elapsed())
}

/// Creates `runs` runs (`r-N`) and `vms` aws Instances (`vm-N`), spread evenly over `over`.
fn submit(
    admin: &Client,
    ns: &str,
    runs: usize,
    vms: usize,
    gpu: Option<&'static str>,
    over: Duration,
) -> tokio::task::JoinHandle<()> {
    let run_api: Api<Run> = Api::namespaced(admin.clone(), ns);
    let vm_api: Api<Instance> = Api::namespaced(admin.clone(), ns);
    tokio::spawn(async move {
        let pp = PostParams::default();
        let started = tokio::time::Instant::now();
        let every = over / runs as u32;
        let vm_every = runs.div_ceil(vms.max(1));
        for n in 0..runs {
            tokio::time::sleep_until(started + every * n as u32).await;
            run_api.create(&pp, &run(&format!("r-{n}"), gpu)).await.expect("create a run");
            if n % vm_every == 0 {
                vm_api.create(&pp, &vm(&format!("vm-{}", n / vm_every))).await.expect("create an instance");
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_from_a_killed_leader_and_no_object_is_written_by_both() {
    const RUNS: usize = 16;
    const VMS: usize = 8;
    let c = cluster();
    c.install_crds();
    let admin = c.client().await;
    let ns = c.namespace("crash-ha").await;
    let rel = c.namespace("crash-ha-lease").await;
    setup(&admin, &ns, 8).await;
    let obs = Observer::start(&admin, &ns);
    let flags = ["--allow-endpoint", &moto().endpoint];
    let (a, b) = (format!("kpool-a-{ns}"), format!("kpool-b-{ns}"));
    let mut leader = Kpool::start_as(&a, &c.kubeconfig, &ns, Some(&rel), &flags);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &rel);
    eventually("replica a leading", Duration::from_secs(60), || async {
        (lease_holder(&leases).await? == a).then_some(())
    })
    .await;
    let _standby = Kpool::start_as(&b, &c.kubeconfig, &ns, Some(&rel), &flags);

    // Runs flow (A100 runs on the kwok GPU node, 8 at most at once); a few are placed,
    // then the leader dies with work under way.
    let submitted = submit(&admin, &ns, RUNS, VMS, Some("A100:1"), Duration::from_secs(16));
    eventually("three runs placed", Duration::from_secs(60), || async {
        (obs.seen.lock().unwrap().runs.values().filter(|r| r.1.is_some()).count() >= 3).then_some(())
    })
    .await;
    leader.kill();
    let killed = Instant::now();
    let killed_at = jiff::Timestamp::now();
    eventually("replica b leading", Duration::from_secs(60), || async {
        (lease_holder(&leases).await? == b).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    submitted.await.unwrap();
    let first_placement = eventually("a run placed after the kill", Duration::from_secs(60), || async {
        obs.seen.lock().unwrap().runs.values().filter_map(|r| r.1).filter(|t| *t > killed).min()
    })
    .await;
    // An instance whose idle deadline falls while no replica leads goes once one does.
    drain(&admin, &ns, RUNS, &obs, Duration::from_secs(150), IDLE_SLACK + takeover).await;

    // Who wrote what, by the API server's audit log.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = audit(&[&ns, &rel]);
    let by =
        |who: &str| -> Vec<&Audit> { writes.iter().filter(|w| w.user_agent.contains(&format!("({who})"))).collect() };
    let (by_a, by_b) = (by(&a), by(&b));
    let acquired = by_b
        .iter()
        .filter(|w| w.object_ref.as_ref().and_then(|o| o.resource.as_deref()) == Some("leases"))
        .filter(|w| w.verb == "update" && w.response_status.as_ref().and_then(|s| s.code) == Some(200))
        .map(|w| w.request_received_timestamp)
        .min()
        .expect("replica b's write of the Lease that made it leader");
    let in_ns = |w: &&&Audit| w.object_ref.as_ref().and_then(|o| o.namespace.as_deref()) == Some(ns.as_str());
    let describe = |w: &Audit| format!("{} {:?} at {}", w.verb, w.object_ref, w.request_received_timestamp);
    let a_late: Vec<String> =
        by_a.iter().filter(|w| w.request_received_timestamp > killed_at).map(|w| describe(w)).collect();
    assert!(a_late.is_empty(), "the killed leader wrote after its death at {killed_at}: {a_late:#?}");
    let b_early: Vec<String> =
        by_b.iter().filter(in_ns).filter(|w| w.request_received_timestamp < acquired).map(|w| describe(w)).collect();
    assert!(b_early.is_empty(), "the standby wrote before it led (at {acquired}): {b_early:#?}");
    let (a_writes, b_writes) = (by_a.iter().filter(in_ns).count(), by_b.iter().filter(in_ns).count());
    assert!(a_writes > 0 && b_writes > 0, "both replicas acted: a {a_writes}, b {b_writes} writes");
    let objects = |ws: &[&Audit]| -> HashSet<String> {
        ws.iter()
            .filter(in_ns)
            .filter_map(|w| w.object_ref.as_ref())
            .map(|o| format!("{:?}/{:?}", o.resource, o.name))
            .collect()
    };
    let both = objects(&by_a).intersection(&objects(&by_b)).count();

    let ec2 = ec2_of(&ns).await;
    let seen = obs.seen.lock().unwrap();
    let launches = check_launches(&ns, &ec2, &seen);
    assert_eq!(launches, VMS, "one machine per aws Instance");
    println!(
        "two replicas: takeover {:.1} s after SIGKILL (Lease holder changed), first placement {:.1} s after; \
         {RUNS} runs, {launches} EC2 launches, {} instances; writes: old leader {a_writes} (all before its death), \
         new leader {b_writes} (all after {acquired}), {both} objects written by each in turn; idle teardown at most \
         {:.1} s late",
        takeover.as_secs_f64(),
        (first_placement - killed).as_secs_f64(),
        seen.instances.len(),
        max_late(&seen),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_at_random_moments_and_restarted_loses_nothing_and_launches_nothing_twice() {
    const RUNS: usize = 100;
    const VMS: usize = 20;
    const KILLS: usize = 20;
    let seed = std::env::var("KPOOL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let mut rng = Rng(seed);
    let c = cluster();
    c.install_crds();
    let admin = c.client().await;
    let ns = c.namespace("crash-restart").await;
    let rel = c.namespace("crash-restart-lease").await;
    setup(&admin, &ns, 6).await;
    let obs = Observer::start(&admin, &ns);
    let flags = ["--allow-endpoint", &moto().endpoint];
    // One replica, restarted under the same Pod name (as a container restarts in its Pod).
    let me = format!("kpool-solo-{ns}");
    let start = || Kpool::start_as(&me, &c.kubeconfig, &ns, Some(&rel), &flags);
    let kpool = start();
    let submitted = submit(&admin, &ns, RUNS, VMS, None, Duration::from_secs(60));
    let (kpool, chaos) = kill_and_restart(kpool, start, KILLS, &mut rng, Duration::from_millis(1000)).await;
    submitted.await.unwrap();
    drain(&admin, &ns, RUNS, &obs, Duration::from_secs(180), IDLE_SLACK).await;
    drop(kpool);

    let ec2 = ec2_of(&ns).await;
    let seen = obs.seen.lock().unwrap();
    let launches = check_launches(&ns, &ec2, &seen);
    assert_eq!(launches, VMS, "one machine per aws Instance");
    let jobs: HashSet<&String> = seen.jobs.values().map(|(run, _, _)| run).collect();
    assert_eq!(jobs.len(), RUNS, "every run executed once");
    println!(
        "crash and restart (seed {seed}): {RUNS} runs all Succeeded, {KILLS} SIGKILLs in {:.0} s, {launches} EC2 \
         launches for {VMS} aws Instances, {} instances in all, {} job Pods, leaks: 0; idle teardown at most {:.1} s \
         late",
        chaos.as_secs_f64(),
        seen.instances.len(),
        seen.jobs.len(),
        max_late(&seen),
    );
}

/// Hosts of the ssh Backend of [`ssh_hosts_keep_every_run_once_while_the_controller_is_killed`].
const HOSTS: [&str; 4] = ["h1", "h2", "h3", "h4"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_hosts_keep_every_run_once_while_the_controller_is_killed() {
    const RUNS: usize = 12;
    const KILLS: usize = 8;
    let seed = std::env::var("KPOOL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let mut rng = Rng(seed ^ 0x55);
    let sshd = Sshd::start();
    let c = cluster();
    c.install_crds();
    let admin = c.client().await;
    let ns = c.namespace("crash-ssh").await;
    let rel = c.namespace("crash-ssh-lease").await;
    // Backend `lab`: four hosts, all this sshd (a host is a claim by name); pool `hosts`.
    let pp = PostParams::default();
    let (secret, mut lab) = sshd.backend_objects("lab", HOSTS[0]);
    let hosts = &mut lab.spec.ssh.as_mut().unwrap().hosts;
    hosts.extend(HOSTS[1..].iter().map(|h| sshd.host(h)));
    Api::<Secret>::namespaced(admin.clone(), &ns).create(&pp, &secret).await.unwrap();
    Api::<Backend>::namespaced(admin.clone(), &ns).create(&pp, &lab).await.unwrap();
    let pool = serde_json::json!({"metadata": {"name": "hosts"}, "spec": {
        "defaults": {"idleDuration": format!("{}s", IDLE.as_secs()), "backends": ["lab"]}}});
    Api::<Pool>::namespaced(admin.clone(), &ns).create(&pp, &object(pool)).await.unwrap();
    let obs = Observer::start(&admin, &ns);
    // Every execution of a job appends its run's name here.
    let ran = support_ssh::home().join(format!("crash-ssh-{ns}.log"));
    let run_api: Api<Run> = Api::namespaced(admin.clone(), &ns);
    let submitter = {
        let (run_api, ran) = (run_api.clone(), ran.display().to_string());
        tokio::spawn(async move {
            for n in 0..RUNS {
                let name = format!("s-{n}");
                let run = serde_json::json!({"metadata": {"name": name}, "spec": {
                    "pool": "hosts", "commands": [format!("echo {name} >> {ran}; sleep 1")],
                    // Waits while all four hosts are busy.
                    "retry": {"onEvents": ["no-capacity"], "duration": "10m"},
                    "resources": {"cpu": "1..", "memory": "1GB..", "disk": "1GB.."}}});
                run_api.create(&PostParams::default(), &object(run)).await.expect("create a run");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let me = format!("kpool-ssh-{ns}");
    let start = || Kpool::start_as(&me, &c.kubeconfig, &ns, Some(&rel), &[]);
    let (kpool, chaos) = kill_and_restart(start(), start, KILLS, &mut rng, Duration::from_millis(2000)).await;
    submitter.await.unwrap();
    eventually("every ssh run ended", Duration::from_secs(240), || async {
        let list = run_api.list(&ListParams::default()).await.ok()?;
        let ended = list.items.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
        (ended == RUNS).then_some(())
    })
    .await;
    let instances: Api<Instance> = Api::namespaced(admin.clone(), &ns);
    eventually("every ssh instance idled out", Duration::from_secs(90), || async {
        let left = instances.list(&ListParams::default()).await.ok()?.items;
        let ended = |p| matches!(p, InstancePhase::Terminated | InstancePhase::Failed);
        left.iter().all(|i| i.status.as_ref().is_some_and(|s| ended(s.phase))).then_some(())
    })
    .await;
    let controller_log = kpool.log();
    drop(kpool);

    let runs = run_api.list(&ListParams::default()).await.unwrap().items;
    let log = std::fs::read_to_string(&ran).unwrap_or_default();
    let _ = std::fs::remove_file(&ran);
    let runs_dir = support_ssh::home().join(".kpool/runs");
    for r in &runs {
        let st = r.status.as_ref().unwrap();
        assert_eq!((st.phase, st.exit_code), (RunPhase::Succeeded, Some(0)), "run {}: {st:?}", r.name_any());
        let times = log.lines().filter(|l| *l == r.name_any()).count();
        if times != 1 {
            // What a second execution left to look at: the run's attempts and the job
            // directories of its UID (one per attempt), and the controllers' logs.
            let uid = r.uid().unwrap_or_default();
            let dirs: Vec<String> = std::fs::read_dir(&runs_dir)
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let dirs: Vec<&String> = dirs.iter().filter(|d| d.starts_with(&uid)).collect();
            panic!(
                "run {} executed {times} times; executions:\n{log}\nstatus: {st:?}\njob directories: {dirs:?}\n\
                 the controllers' log (every restart):\n{}",
                r.name_any(),
                tail(&controller_log, 200)
            );
        }
        // Nothing of the job is left running on the host.
        let dir = runs_dir.join(r.uid().unwrap());
        let ps = std::process::Command::new("pgrep").args(["-f", &dir.display().to_string()]).output().unwrap();
        assert!(
            ps.stdout.is_empty(),
            "processes of run {} still run: {}",
            r.name_any(),
            String::from_utf8_lossy(&ps.stdout)
        );
        let _ = std::fs::remove_dir_all(dir);
    }
    let seen = obs.seen.lock().unwrap();
    check_seen(&seen, RUNS, IDLE_SLACK);
    println!(
        "ssh hosts (seed {seed}): {RUNS} runs all Succeeded and executed once each, {KILLS} SIGKILLs in {:.0} s, \
         {} instances on {} hosts, no job process left, no instance with two runs; idle teardown at most {:.1} s late",
        chaos.as_secs_f64(),
        seen.instances.len(),
        HOSTS.len(),
        max_late(&seen),
    );
}
