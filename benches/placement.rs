//! Placement at scale: how long N runs take to be placed on M idle instances, and what it
//! costs the API server.
//!
//! Two APIs:
//! - `--api memory`: the in-memory API of the reconcile tests; the run reconciler is
//!   called for every waiting run, round after round, as the controller's queue would,
//!   until all run. It measures kpool's own cost per placement (no watch: the in-memory
//!   API cannot stream one).
//! - `--api cluster`: a real API server (`KUBECONFIG`, e.g. the control plane of
//!   `scripts/peers/kube.sh start DIR`). The controllers run in this process, as
//!   `kpool controller` runs them (watches, queues, leader-free), with an in-process
//!   backend and executor, so that only the API is real. CRDs are applied first.
//!
//! ```text
//! cargo bench --bench placement -- --api memory --runs 1000 --instances 1000
//! scripts/peers/kube.sh start .peers/bench
//! KUBECONFIG=.peers/bench/kubeconfig cargo bench --bench placement -- --api cluster \
//!     --runs 1000 --instances 1000 --stream-rate 50 --stream-seconds 20
//! ```
//!
//! Printed: seconds from the runs' creation to all Running, p50/p99 of creation → claimed,
//! API requests by verb and resource during the wave, requests and conflicts (409) per
//! placed run, peak RSS of this process (controllers plus the benchmark's own watch) beside
//! the heap bytes in use (a counting allocator: RSS minus what the allocator keeps), and
//! on the real API the requests per minute once everything settled, the latency of a
//! stream of arrivals, and the time a fresh controller takes to place one more run (with
//! its CPU seconds and requests: it starts on the same in-process provider and hosts, as
//! a new leader finds the machines and jobs of the old one).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};

use kpool::api::backend::{Backend, BackendSpec, BackendType};
use kpool::api::instance::{Instance, InstancePhase, InstanceSpec};
use kpool::api::pool::{Pool, PoolSpec};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{Run, RunPhase, RunSpec};
use kpool::backends::fake::{FakeBackend, FakeFactory};
use kpool::controllers::gc::GcConfig;
use kpool::controllers::requests::ApiCall;
use kpool::controllers::{Context, SystemClock};
use kpool::exec::ScriptedExecutor;

const POOL: &str = "bench";

struct Args {
    api: String,
    runs: usize,
    instances: usize,
    timeout: Duration,
    stream_rate: usize,
    stream_seconds: u64,
    settle_seconds: u64,
    ceiling: usize,
}

fn args() -> Args {
    let mut a = Args {
        api: "memory".into(),
        runs: 1000,
        instances: 1000,
        timeout: Duration::from_secs(900),
        stream_rate: 0,
        stream_seconds: 20,
        settle_seconds: 60,
        ceiling: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs this binary without `--bench`: a quick smoke run
    // of the in-memory API (50 runs on 50 instances) that checks it still places.
    if !argv.iter().any(|s| s == "--bench") {
        a.runs = 50;
        a.instances = 50;
        return a;
    }
    let argv: Vec<String> = argv.into_iter().filter(|s| s != "--bench").collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value")).clone();
        let number = |v: String| v.parse::<u64>().unwrap_or_else(|_| panic!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--api" => a.api = value(),
            "--runs" => a.runs = number(value()) as usize,
            "--instances" => a.instances = number(value()) as usize,
            "--timeout" => a.timeout = Duration::from_secs(number(value())),
            "--stream-rate" => a.stream_rate = number(value()) as usize,
            "--stream-seconds" => a.stream_seconds = number(value()),
            "--settle-seconds" => a.settle_seconds = number(value()),
            "--ceiling" => a.ceiling = number(value()) as usize,
            other => panic!("unknown flag {other:?} (see the docs at the top of benches/placement.rs)"),
        }
    }
    assert!(matches!(a.api.as_str(), "memory" | "cluster"), "--api: {:?} is not memory or cluster", a.api);
    a
}

fn shape() -> ResourcesSpec {
    ResourcesSpec { cpu: Some("4..".into()), ..Default::default() }
}

fn instance(i: usize) -> Instance {
    let spec = InstanceSpec { pool: Some(POOL.into()), resources: shape(), ..Default::default() };
    Instance::new(&format!("inst-{i:05}"), spec)
}

fn run(i: usize) -> Run {
    let spec =
        RunSpec { pool: Some(POOL.into()), resources: shape(), commands: vec!["train".into()], ..Default::default() };
    Run::new(&format!("run-{i:05}"), spec)
}

/// The system allocator, counting the bytes in use and their peak: what the process holds,
/// apart from what the allocator keeps from the system without handing it out (RSS
/// includes that).
struct Counting;

static HEAP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static HEAP_PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            let now = HEAP.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed) + layout.size();
            HEAP_PEAK.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        HEAP.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes in use at their peak and now, in MiB.
fn heap_mib() -> (f64, f64) {
    let mib = |a: &std::sync::atomic::AtomicUsize| a.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1048576.0;
    (mib(&HEAP_PEAK), mib(&HEAP))
}

/// Peak and current resident memory of this process, in MiB (Linux).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0)
}

/// CPU seconds (user + system) process `pid` has used (Linux; 100 ticks a second).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// CPU seconds used so far by this process (controllers and benchmark), and by every
/// `kube-apiserver` and `etcd` process of the machine.
fn cpu() -> [f64; 3] {
    let mut out = [cpu_seconds("self"), 0.0, 0.0];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        match comm.trim() {
            "kube-apiserver" => out[1] += cpu_seconds(&pid),
            "etcd" => out[2] += cpu_seconds(&pid),
            _ => {}
        }
    }
    out
}

fn report_cpu(label: &str, before: [f64; 3], wall: f64) {
    let after = cpu();
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    println!(
        "{label}: CPU seconds over {wall:.1}s: controllers+benchmark {:.1}, kube-apiserver {:.1}, etcd {:.1}",
        d[0], d[1], d[2]
    );
}

type Counts = BTreeMap<(ApiCall, &'static str), u64>;

fn delta(after: &Counts, before: &Counts) -> Counts {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
}

fn report_requests(label: &str, d: &Counts, placed: usize) {
    let total: u64 = d.values().sum();
    let lists: u64 = d.iter().filter(|((c, _), _)| c.verb == "list").map(|(_, v)| v).sum();
    let conflicts: u64 = d.iter().filter(|((_, o), _)| *o == "409").map(|(_, v)| v).sum();
    let per = |n: u64| if placed == 0 { f64::NAN } else { n as f64 / placed as f64 };
    println!(
        "{label}: {total} API requests ({:.2} per placed run), {lists} LISTs ({:.2} per run), {conflicts} conflicts (409, {:.3} per run)",
        per(total),
        per(lists),
        per(conflicts)
    );
    let mut by_verb: BTreeMap<(String, String), u64> = BTreeMap::new();
    for ((c, _), v) in d {
        *by_verb.entry((c.verb.clone(), c.resource.clone())).or_default() += v;
    }
    for ((verb, resource), v) in by_verb {
        println!("    {verb:>8} {resource:<24} {v}");
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn latencies(label: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{label}: n={} p50={:.3}s p99={:.3}s max={:.3}s",
        v.len(),
        quantile(&v, 0.5),
        quantile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

fn backend() -> FakeBackend {
    FakeBackend::new("aws", support::catalog())
}

async fn create_all<K>(api: &Api<K>, objects: Vec<K>, concurrency: usize)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move {
                let name = o.name_any();
                api.create(&PostParams::default(), &o).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

// ---------------------------------------------------------------------------------------
// The in-memory API

async fn memory(a: &Args) {
    let h = support::Harness::new().await;
    let ctx = h.ctx.clone();
    h.pool(POOL, PoolSpec::default()).await;
    let t = Instant::now();
    for i in 0..a.instances {
        h.create(instance(i)).await;
    }
    for i in 0..a.instances {
        let name = instance(i).name_any();
        // Launch, then poll the (instant) fake machine to Idle.
        for _ in 0..4 {
            h.reconcile_instance(&name).await.ok();
        }
        let phase = h.get_instance(&name).await.status.map(|s| s.phase);
        assert_eq!(phase, Some(InstancePhase::Idle), "{name} did not become idle");
    }
    println!("memory: {} idle instances in {:.1}s", a.instances, t.elapsed().as_secs_f64());

    let before = ctx.requests.snapshot();
    let t = Instant::now();
    let created: Vec<Instant> = {
        let mut v = Vec::new();
        for i in 0..a.runs {
            h.create(run(i)).await;
            v.push(Instant::now());
        }
        v
    };
    let mut claimed: HashMap<usize, f64> = HashMap::new();
    let mut rounds = 0;
    while claimed.len() < a.runs && t.elapsed() < a.timeout {
        rounds += 1;
        for (i, created_at) in created.iter().enumerate() {
            if claimed.contains_key(&i) {
                continue;
            }
            let name = run(i).name_any();
            h.reconcile_run(&name).await.ok();
            let st = h.get_run(&name).await.status;
            if st.is_some_and(|s| s.phase == RunPhase::Running) {
                claimed.insert(i, created_at.elapsed().as_secs_f64());
            }
            if t.elapsed() >= a.timeout {
                break;
            }
        }
    }
    let took = t.elapsed().as_secs_f64();
    let placed = claimed.len();
    println!(
        "memory: {placed}/{} runs Running on {} instances in {took:.2}s ({rounds} rounds of the run reconciler){}",
        a.runs,
        a.instances,
        if placed < a.runs { format!(" — stopped at the {}s timeout", a.timeout.as_secs()) } else { String::new() }
    );
    assert_eq!(placed, a.runs, "every run placed on the {} idle instances", a.instances);
    latencies("memory: creation → Running", claimed.into_values().collect());
    report_requests("memory: the wave", &delta(&ctx.requests.snapshot(), &before), placed);
    memory_line("memory: (the in-memory API's objects included)");
}

// ---------------------------------------------------------------------------------------
// A real API server

async fn install_crds(client: &Client) {
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in kpool::api::crds() {
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply("kpool-bench").force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
    }
    for crd in kpool::api::crds() {
        let name = crd.name_any();
        let cond = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(Duration::from_secs(30), kube::runtime::wait::await_condition(crds.clone(), &name, cond))
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not established in 30s"))
            .unwrap_or_else(|e| panic!("waiting for CRD {name}: {e}"));
    }
}

/// Follows runs through a watch and notes when each was first seen claimed / Running.
#[derive(Default)]
struct Seen {
    claimed: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
    /// Each status a run was seen with: when, its phase and its conditions' reasons.
    steps: HashMap<String, Vec<(Instant, String)>>,
}

fn follow_runs(api: Api<Run>, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
        while let Ok(Some(r)) = events.try_next().await {
            let Some(st) = r.status.as_ref() else { continue };
            let now = Instant::now();
            let mut s = seen.lock().unwrap();
            if st.instance.is_some() {
                s.claimed.entry(r.name_any()).or_insert(now);
            }
            if st.phase == RunPhase::Running {
                s.running.entry(r.name_any()).or_insert(now);
            }
            let reasons: Vec<&str> = st.conditions.iter().map(|c| c.reason.as_str()).collect();
            let step =
                format!("{:?} [{}] rv {}", st.phase, reasons.join(","), r.resource_version().unwrap_or_default());
            s.steps.entry(r.name_any()).or_default().push((now, step));
        }
    })
}

/// The `n` runs claimed last after their creation, with every status the watch saw them
/// with: where a slow claim spent its time.
fn slowest(seen: &Seen, created: &HashMap<String, Instant>, n: usize) {
    let mut lat: Vec<(f64, &String)> = created
        .iter()
        .filter_map(|(k, t0)| Some((seen.claimed.get(k)?.saturating_duration_since(*t0).as_secs_f64(), k)))
        .collect();
    lat.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (l, name) in lat.into_iter().take(n) {
        println!("cluster:   slow claim {name}: {l:.3}s");
        for (at, step) in seen.steps.get(name).into_iter().flatten() {
            println!("cluster:     +{:.3}s {step}", at.saturating_duration_since(created[name]).as_secs_f64());
        }
    }
}

async fn wait_for<F: Fn() -> bool>(what: &str, timeout: Duration, done: F) -> bool {
    let t = Instant::now();
    while !done() {
        if t.elapsed() > timeout {
            println!("cluster: {what}: not done after {}s", timeout.as_secs());
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// The provider's machines and the jobs on them: they outlive a controller (a fresh one
/// finds the machines and jobs its predecessor started).
struct World {
    cloud: FakeBackend,
    hosts: Arc<ScriptedExecutor>,
}

fn start_controllers(client: Client, ns: &str, world: &World) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let factory = Arc::new(FakeFactory::with([world.cloud.clone()]));
    let ctx = Arc::new(Context::new(client, factory, world.hosts.clone(), Arc::new(SystemClock)));
    let gc = GcConfig { report_only: true, ..GcConfig::default() };
    let task = tokio::spawn(kpool::controllers::runtime::run_all(ctx.clone(), gc, Some(ns.to_string())));
    (ctx, task)
}

async fn count_phase<K, F>(api: &Api<K>, pred: F) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> bool,
{
    // In pages, so that counting 10k objects does not hold them all at once (the memory
    // figures are the controllers').
    let mut lp = kube::api::ListParams::default().limit(500);
    let mut n = 0;
    loop {
        let Ok(page) = api.list(&lp).await else { return n };
        n += page.items.iter().filter(|o| pred(o)).count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return n,
        }
    }
}

async fn cluster(a: &Args) {
    let client = Client::try_default().await.expect("a kube context (KUBECONFIG) pointing at a cluster");
    install_crds(&client).await;
    let ns = format!("kpool-bench-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut namespace = k8s_openapi::api::core::v1::Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces.create(&PostParams::default(), &namespace).await.expect("create the namespace");
    let backends: Api<Backend> = Api::namespaced(client.clone(), &ns);
    // Any type will do: the factory hands out the in-process backend by the object's name.
    let spec = BackendSpec { type_: BackendType::Kubernetes, ..Default::default() };
    backends.create(&PostParams::default(), &Backend::new("aws", spec)).await.expect("create the Backend");
    let pools: Api<Pool> = Api::namespaced(client.clone(), &ns);
    pools.create(&PostParams::default(), &Pool::new(POOL, PoolSpec::default())).await.expect("create the Pool");
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns);
    let runs: Api<Run> = Api::namespaced(client.clone(), &ns);

    // What the API server takes with nothing else running: creates of small ConfigMaps,
    // 64 at a time (no controller watches them).
    if a.ceiling > 0 {
        use k8s_openapi::api::core::v1::ConfigMap;
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let objects = (0..a.ceiling).map(|i| {
            let mut m = ConfigMap::default();
            m.metadata.name = Some(format!("ceiling-{i:05}"));
            m.data = Some([("k".to_string(), "v".to_string())].into());
            m
        });
        let (t, before) = (Instant::now(), cpu());
        create_all(&maps, objects.collect(), 64).await;
        let took = t.elapsed().as_secs_f64();
        println!(
            "cluster: the API server's write rate: {} ConfigMaps created in {took:.2}s ({:.0}/s, 64 at a time)",
            a.ceiling,
            a.ceiling as f64 / took
        );
        report_cpu("cluster: those writes", before, took);
    }

    let world = World { cloud: backend(), hosts: Arc::new(ScriptedExecutor::default()) };
    let (ctx, controllers) = start_controllers(client.clone(), &ns, &world);
    let (t, cpu0) = (Instant::now(), cpu());
    create_all(&instances, (0..a.instances).map(instance).collect(), 32).await;
    let idle = |i: &Instance| i.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Idle);
    let mut n = 0;
    while n < a.instances && t.elapsed() < a.timeout {
        tokio::time::sleep(Duration::from_secs(1)).await;
        n = count_phase(&instances, idle).await;
    }
    println!("cluster: {n}/{} instances idle in {:.1}s", a.instances, t.elapsed().as_secs_f64());
    report_cpu("cluster: the instances", cpu0, t.elapsed().as_secs_f64());
    memory_line("cluster: instances idle, before the wave");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The wave: N runs at once.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let follower = follow_runs(runs.clone(), seen.clone());
    let before = ctx.requests.snapshot();
    let (t, cpu0) = (Instant::now(), cpu());
    let created = Arc::new(Mutex::new(HashMap::new()));
    futures::stream::iter(0..a.runs)
        .map(|i| {
            let (runs, created) = (runs.clone(), created.clone());
            async move {
                let r = run(i);
                runs.create(&PostParams::default(), &r).await.unwrap_or_else(|e| panic!("create run {i}: {e}"));
                created.lock().unwrap().insert(r.name_any(), Instant::now());
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let created_in = t.elapsed().as_secs_f64();
    let all = wait_for("the wave", a.timeout, || seen.lock().unwrap().running.len() >= a.runs).await;
    let took = t.elapsed().as_secs_f64();
    let after = ctx.requests.snapshot();
    println!("cluster: {} placement plans made for the wave (controllers::placement)", ctx.plans.made());
    let (placed, claim_lat, run_lat) = {
        let s = seen.lock().unwrap();
        let c = created.lock().unwrap();
        let lat = |m: &HashMap<String, Instant>| {
            m.iter().filter_map(|(k, at)| c.get(k).map(|t0| at.saturating_duration_since(*t0).as_secs_f64())).collect()
        };
        (s.running.len(), lat(&s.claimed), lat(&s.running))
    };
    println!(
        "cluster: {placed}/{} runs Running on {} idle instances {:.2}s after the first was created ({} created in {created_in:.2}s){}",
        a.runs,
        a.instances,
        took,
        a.runs,
        if all { String::new() } else { " — timed out".into() }
    );
    latencies("cluster: creation → claimed", claim_lat);
    latencies("cluster: creation → Running", run_lat);
    report_cpu("cluster: the wave", cpu0, took);
    report_requests("cluster: the wave", &delta(&after, &before), placed);
    memory_line("cluster: after the wave");

    // Steady state: nothing changes; what do the controllers still ask?
    if a.settle_seconds > 0 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = ctx.requests.snapshot();
        tokio::time::sleep(Duration::from_secs(a.settle_seconds)).await;
        let d = delta(&ctx.requests.snapshot(), &before);
        let total: u64 = d.iter().filter(|((c, _), _)| c.verb != "watch").map(|(_, v)| v).sum();
        println!(
            "cluster: steady state: {:.1} requests/minute besides watches (over {}s)",
            total as f64 * 60.0 / a.settle_seconds as f64,
            a.settle_seconds
        );
        report_requests("cluster: steady state", &d, 0);
    }

    // A stream of arrivals onto fresh idle capacity: free the instances first.
    if a.stream_rate > 0 {
        let n = a.stream_rate * a.stream_seconds as usize;
        futures::stream::iter(0..a.runs)
            .map(|i| {
                let runs = runs.clone();
                async move {
                    let _ = runs.delete(&run(i).name_any(), &Default::default()).await;
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
        // Every instance the wave used is released first (each deletion frees one: a fence
        // and a status write), so that the stream is measured on idle capacity and not
        // beside a thousand releases.
        let free = |i: &Instance| i.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Idle);
        let t = Instant::now();
        let mut idle = 0;
        while idle < a.instances && t.elapsed() < a.timeout {
            tokio::time::sleep(Duration::from_secs(1)).await;
            idle = count_phase(&instances, free).await;
        }
        println!(
            "cluster: {idle}/{} instances idle again {:.1}s after the wave's runs were deleted",
            a.instances,
            t.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = ctx.requests.snapshot();
        let created = Arc::new(Mutex::new(HashMap::new()));
        let t = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / a.stream_rate as f64);
        let mut tasks = Vec::new();
        for k in 0..n {
            let at = t + gap * k as u32;
            tokio::time::sleep_until(at.into()).await;
            let (runs, created) = (runs.clone(), created.clone());
            tasks.push(tokio::spawn(async move {
                let r = run(100_000 + k);
                let sent = Instant::now();
                runs.create(&PostParams::default(), &r).await.expect("create a streamed run");
                created.lock().unwrap().insert(r.name_any(), sent);
            }));
        }
        futures::future::join_all(tasks).await;
        let want: Vec<String> = created.lock().unwrap().keys().cloned().collect();
        wait_for("the stream", a.timeout, || {
            let s = seen.lock().unwrap();
            want.iter().all(|k| s.claimed.contains_key(k))
        })
        .await;
        let lat: Vec<f64> = {
            let s = seen.lock().unwrap();
            let c = created.lock().unwrap();
            c.iter()
                .filter_map(|(k, t0)| s.claimed.get(k).map(|at| at.saturating_duration_since(*t0).as_secs_f64()))
                .collect()
        };
        println!("cluster: stream of {} runs/s for {}s ({n} runs)", a.stream_rate, a.stream_seconds);
        latencies("cluster: stream creation → claimed", lat);
        slowest(&seen.lock().unwrap(), &created.lock().unwrap(), 3);
        report_requests("cluster: the stream", &delta(&ctx.requests.snapshot(), &before), n);
    }

    // A fresh controller (as after a leader takeover) on everything that exists: how long
    // until it places one more run?
    controllers.abort();
    let _ = controllers.await;
    let extra = run(999_999);
    let name = extra.name_any();
    let free = |i: &Instance| i.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Idle);
    if count_phase(&instances, free).await == 0 {
        // Free one instance so the extra run has somewhere to go.
        let _ = runs.delete(&run(0).name_any(), &Default::default()).await;
    }
    runs.create(&PostParams::default(), &extra).await.expect("create the extra run");
    let t = Instant::now();
    let cpu0 = cpu();
    let (fresh, controllers) = start_controllers(client.clone(), &ns, &world);
    wait_for("the fresh controller", a.timeout, || seen.lock().unwrap().claimed.contains_key(&name)).await;
    let took = t.elapsed().as_secs_f64();
    let requests = fresh.requests.snapshot();
    let objects = count_phase(&instances, |_| true).await + count_phase(&runs, |_| true).await;
    println!("cluster: a fresh controller on {objects} objects claimed an instance for a new run in {took:.2}s");
    report_cpu("cluster: the fresh controller", cpu0, took);
    report_requests("cluster: the fresh controller", &requests, 1);
    memory_line("cluster: the fresh controller");
    controllers.abort();
    follower.abort();
    let _ = namespaces.delete(&ns, &Default::default()).await;
    println!("cluster: namespace {ns} deleted (its objects go with it)");
}

/// Prints RSS and heap in use, peak and now.
fn memory_line(what: &str) {
    let ((rss_peak, rss), (heap_peak, heap)) = (rss_mib(), heap_mib());
    println!(
        "{what}: RSS peak {rss_peak:.0} MiB, now {rss:.0} MiB; heap in use peak {heap_peak:.0} MiB, now {heap:.0} MiB"
    );
}

fn main() {
    let a = args();
    kpool::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        match a.api.as_str() {
            "memory" => memory(&a).await,
            _ => cluster(&a).await,
        }
    });
}
