//! The crash-and-fault simulation (issue 12): an hour of a busy pool per seed — runs
//! arrive, finish, fail, are stopped and hit their maxDuration, with retry policies,
//! `idleDuration: 0` and names longer than a label — while virtual time advances, every
//! reconciler races the others, and faults are injected:
//! - the controller crashes between any two of its calls (a seeded countdown over its API
//!   requests, backend calls and executor calls; then every call of that process fails,
//!   and a fresh controller — no caches, no admissions, no health or GC memory — starts
//!   on what the API and the backend hold);
//! - API requests time out, half of them after the API server applied them;
//! - the provider loses answers (a create or delete that did its work, then a transport
//!   error), has no capacity, and reclaims machines;
//! - status writes conflict, Instance creates fail;
//! - the Backend's regions are edited; the Backend is deleted and later created again, or
//!   removed by hand with its finalizer while instances use it and put back a step later;
//! - the pool has a maxInstances in most seeds (`KPOOL_SIM_MAX_INSTANCES=0` turns it off).
//!
//! The backend is regional (a machine lives in its offer's region; a name is unique per
//! region) with offers in two regions. After every step the invariants of DESIGN.md are
//! checked ([`check`]); the hosts' side of jobs sees every start ([`faults::SimExecutor`]).
//!
//! `cargo test --test simulation -- --nocapture` runs 500 seeds (CI, debug build with
//! optimised dependencies, about 13 minutes on two cores; `KPOOL_SIM_SEEDS=20` for a quick
//! look);
//! `KPOOL_SIM_SEEDS=10000 cargo test --release --test simulation -- --nocapture` runs
//! 10,000. `KPOOL_SIM_FIRST_SEED=N KPOOL_SIM_SEEDS=1` replays seed N and prints its
//! violations. `KPOOL_SIM_LOST_CREATES=0` turns lost create answers off.
//! `KPOOL_SIM_MAX_INSTANCES=0` leaves the pool without a maxInstances.
//! `KPOOL_SIM_TRACE=run-9` prints, after every step, the live machines, the runs and
//! instances whose names start with `run-9` (instances with their UID, offer region and
//! launch attempts), their new Events (also of objects gone within the step), and the
//! reconcile errors of the step.
//!
//! A failed reconcile is played again within its step (the controller requeues it within
//! seconds), at most twice: without that, a few injected timeouts in a row kept an idle
//! instance past its deadline for minutes (seed 86), which no controller would do.

#[path = "sim/check.rs"]
mod check;
#[path = "sim/faults.rs"]
mod faults;
#[path = "sim/queue.rs"]
mod queue;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kpool::api::backend::{Backend, BackendSpec, BackendType};
use kpool::api::instance::InstancePhase;
use kpool::api::offer::Offer;
use kpool::api::policy::{PolicySpec, RetryEvent, RetrySpec};
use kpool::api::pool::{Pool, PoolSpec, WarmSpec, WarmWindow, DEFAULT_POOL_NAME};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{Run, RunSpec};
use kpool::backends::fake::FakeFactory;
use kpool::backends::BackendError;
use kpool::controllers::gc::{Collector, GcConfig};
use kpool::controllers::Context;
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use support::*;

use check::{Memory, World, TICK};
use faults::{Faults, SimExecutor};

/// One hour of 30 s steps with faults, then a calm drain.
const STEPS: usize = 120;
const DRAIN: usize = 40;
const REGIONS: [&str; 2] = ["us-east-1", "us-west-2"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// True with probability `p` percent.
    fn chance(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
}

fn shapes() -> Vec<ResourcesSpec> {
    vec![
        ResourcesSpec { cpu: Some("4..".into()), ..Default::default() },
        ResourcesSpec { cpu: Some("8..".into()), ..Default::default() },
        ResourcesSpec { gpu: Some("A10G".into()), ..Default::default() },
        ResourcesSpec { gpu: Some("24GB..".into()), ..Default::default() },
    ]
}

/// The harness's catalog in both regions, the second region a little dearer: when an
/// offer fails the next one is often the same machine type in the other region.
fn catalog() -> Vec<Offer> {
    let mut offers = Vec::new();
    for o in support::catalog() {
        offers.push(Offer { region: REGIONS[1].into(), price: o.price + 0.01, ..o.clone() });
        offers.push(o);
    }
    offers
}

/// What one seed did.
#[derive(Default, Debug)]
struct Figures {
    steps: usize,
    crashes: usize,
    faults: usize,
    launches: usize,
    runs: usize,
    starts: usize,
    /// (step, violation)
    violations: Vec<(usize, String)>,
}

#[derive(Clone, Copy, PartialEq)]
enum BackendLife {
    Live,
    Deleting,
    Gone(usize),
    /// Removed by hand with its finalizer (`kubectl patch … finalizers: null`) while
    /// instances use it, at this step; an administrator puts it back at the next one.
    Forced(usize),
}

struct Sim {
    h: Harness,
    faults: Arc<Faults>,
    exec: SimExecutor,
    gc: Collector,
    rng: Rng,
    race: u64,
    mem: Memory,
    queue: queue::QueueMemory,
    max_instances: Option<u32>,
    /// The pool's warm headroom, in some seeds (with a window in half of those).
    warm: Option<WarmSpec>,
    backend: BackendLife,
    lost_creates: bool,
    fig: Figures,
    /// Events already printed by `KPOOL_SIM_TRACE`.
    traced_events: std::collections::HashSet<String>,
}

impl Sim {
    async fn new(seed: u64, lost_creates: bool, pool_limit: bool) -> Sim {
        let h = Harness::with_offers(catalog()).await;
        let _ = h.backend.clone().regional();
        let faults = Arc::new(Faults::default());
        let exec = SimExecutor::new(h.backend.clone(), faults.clone());
        let mut rng = Rng(seed);
        let max_instances = (!rng.chance(25)).then(|| 2 + rng.below(4) as u32).filter(|_| pool_limit);
        let warm = rng.chance(40).then(|| {
            // The simulation starts at 10:00; this window is open from 10:20 to 10:40.
            let window = WarmWindow { schedule: "20 10 * * *".into(), duration: "20m".into(), ..Default::default() };
            let min_idle = 1 + rng.below(2) as u32;
            let windows = match rng.chance(50) {
                true => vec![WarmWindow { min_idle: min_idle + 1, ..window }],
                false => vec![],
            };
            let resources = ResourcesSpec { cpu: Some("4..".into()), ..Default::default() };
            WarmSpec { min_idle, resources, windows, ..Default::default() }
        });
        h.pool(DEFAULT_POOL_NAME, PoolSpec { max_instances, warm: warm.clone(), ..Default::default() }).await;
        let mut sim = Sim {
            h,
            faults,
            exec,
            gc: Collector::default(),
            rng,
            race: seed,
            mem: Memory::default(),
            queue: Default::default(),
            max_instances,
            warm,
            backend: BackendLife::Live,
            lost_creates,
            fig: Figures::default(),
            traced_events: Default::default(),
        };
        sim.start_controller();
        sim
    }

    /// A fresh controller process: new context (no caches, no admissions, no health
    /// memory), new garbage collector, on the same API, backend and hosts.
    fn start_controller(&mut self) {
        self.faults.restart();
        let client = faults::client(self.h.client.clone(), self.faults.clone());
        let factory = Arc::new(faults::Factory {
            inner: FakeFactory::with([self.h.backend.clone()]),
            faults: self.faults.clone(),
        });
        let clock = Arc::new(self.h.clock.clone());
        // The production dispatch in front of the hosts: it reads the instance's Backend
        // (through the same faulty API), so a missing one is met as in production.
        let exec = Arc::new(self.exec.clone());
        let dispatch = kpool::exec::DispatchExecutor::with_executors(client.clone(), exec.clone(), exec);
        self.h.ctx = Arc::new(Context::new(client, factory, Arc::new(dispatch), clock));
        self.gc = Collector::default();
    }

    fn restart_if_crashed(&mut self) -> bool {
        if self.faults.crashed() {
            self.fig.crashes += 1;
            self.start_controller();
            return true;
        }
        false
    }

    /// Every reconciler until nothing changes; a crash restarts the controller, which
    /// then goes on.
    async fn settle(&mut self) {
        for _ in 0..5 {
            self.backend_pass().await;
            let errors = self.h.settle_racing(&mut self.race).await;
            if std::env::var("KPOOL_SIM_TRACE").is_ok() && !errors.is_empty() {
                println!("  [{}] reconcile errors: {errors:?}", self.fig.steps);
            }
            if !self.restart_if_crashed() {
                return;
            }
        }
    }

    /// Reconciles the Backend; while it is being deleted, as the API server does with
    /// finalizers: marked, removed once only the harness's placeholder is left.
    async fn backend_pass(&mut self) {
        let api = self.h.api::<Backend>();
        let Some(mut b) = api.get_opt("aws").await.unwrap() else { return };
        let deleting = self.backend == BackendLife::Deleting;
        if deleting {
            b.metadata.deletion_timestamp = Some(Time(self.h.clock_now()));
        }
        let _ = kpool::controllers::backend::reconcile(Arc::new(b), self.h.ctx.clone()).await;
        if deleting && api.get("aws").await.unwrap().finalizers().iter().all(|f| f == HOLD) {
            api.delete("aws", &Default::default()).await.unwrap();
            self.backend = BackendLife::Gone(self.fig.steps);
        }
    }

    async fn submit(&mut self, n: usize) {
        let shapes = shapes();
        let mut policy = PolicySpec::default();
        if self.rng.chance(30) {
            let on = vec![RetryEvent::NoCapacity, RetryEvent::Interruption, RetryEvent::Error];
            policy.retry = Some(RetrySpec { on: Some(on), duration: Some("10m".into()) });
        }
        if self.rng.chance(20) {
            policy.max_duration = Some("5m".into());
        }
        if self.rng.chance(10) {
            policy.idle_duration = Some("0s".into());
        }
        // Some names are longer than a label value may be (63).
        let name = match self.rng.chance(10) {
            true => format!("run-{n}-{}", "x".repeat(70)),
            false => format!("run-{n}"),
        };
        let spec = RunSpec {
            priority: *self.rng.pick(&[0, 0, 0, 5, 10]),
            resources: self.rng.pick(&shapes).clone(),
            commands: vec!["train".into()],
            policy,
            ..Default::default()
        };
        self.h.run(&name, spec).await;
        self.fig.runs += 1;
    }

    async fn inject(&mut self) {
        let r = &mut self.rng;
        let mut n = 0;
        if r.chance(5) {
            self.h.backend.fail_next_create(BackendError::InsufficientCapacity("injected".into()));
            n += 1;
        }
        if r.chance(4) {
            self.h.fail_status_writes.store(1, Ordering::SeqCst);
            n += 1;
        }
        if r.chance(3) {
            self.h.fail_instance_creates.store(1, Ordering::SeqCst);
            n += 1;
        }
        if self.lost_creates && r.chance(4) {
            self.h.backend.lose_next_creates(1);
            n += 1;
        }
        if r.chance(3) {
            self.h.backend.lose_next_deletes(1);
            n += 1;
        }
        if r.chance(8) {
            self.faults.time_out(1 + r.below(3) as usize);
            n += 1;
        }
        if r.chance(10) {
            self.faults.arm_crash(1 + r.below(150) as usize);
        }
        // By launch order: machine names derive from random UIDs.
        let mut live = self.h.backend.live_machines();
        live.sort_by_key(|m| m.provider_id.trim_start_matches("fake-").parse::<u64>().unwrap_or_default());
        if !live.is_empty() && r.chance(4) {
            let m = r.pick(&live).name.clone();
            self.h.backend.reclaim(&m);
            self.mem.reclaimed(&m, self.h.clock_now());
            n += 1;
        }
        if r.chance(3) {
            let regions: Vec<String> = match r.below(3) {
                0 => REGIONS.iter().map(|s| s.to_string()).collect(),
                k => vec![REGIONS[k as usize - 1].to_string()],
            };
            let patch = serde_json::json!({"spec": {"regions": regions}});
            let api = self.h.api::<Backend>();
            if api.get_opt("aws").await.unwrap().is_some() {
                api.patch("aws", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
                n += 1;
            }
        }
        match self.backend {
            BackendLife::Live if self.rng.chance(1) => {
                self.backend = BackendLife::Deleting;
                n += 1;
            }
            BackendLife::Live if self.rng.chance(1) => {
                let api = self.h.api::<Backend>();
                let drop = serde_json::json!({"metadata": {"finalizers": null}});
                api.patch("aws", &PatchParams::default(), &Patch::Merge(&drop)).await.unwrap();
                api.delete("aws", &Default::default()).await.unwrap();
                self.backend = BackendLife::Forced(self.fig.steps);
                n += 1;
            }
            BackendLife::Forced(at) if self.fig.steps > at => self.recreate_backend().await,
            BackendLife::Gone(at) if self.fig.steps >= at + 6 && self.rng.chance(30) => self.recreate_backend().await,
            _ => {}
        }
        self.fig.faults += n;
    }

    async fn recreate_backend(&mut self) {
        let spec = BackendSpec { type_: BackendType::Aws, ..Default::default() };
        self.h.create(Backend::new("aws", spec)).await;
        self.backend = BackendLife::Live;
    }

    /// Jobs end, fail or are stopped at random.
    async fn jobs(&mut self) {
        for name in self.exec.running() {
            match self.rng.below(100) {
                0..=11 => self.exec.exit(&name, 0),
                12..=15 => self.exec.exit(&name, 1),
                16 => {
                    let patch = serde_json::json!({"spec": {"stop": true}});
                    let pp = PatchParams::default();
                    if self.h.api::<Run>().patch(&name, &pp, &Patch::Merge(&patch)).await.is_err() {
                        let v = format!("the job of run {name} still runs after the run was deleted");
                        self.fig.violations.push((self.fig.steps, v));
                    }
                }
                _ => {}
            }
        }
    }

    /// Users delete what ended a while ago (runs; instances that are gone), as
    /// `kubectl delete` does, with finalizers; keeps the lists short.
    async fn tidy(&mut self) {
        let w = self.world().await;
        let old = check::add(self.h.clock_now(), Duration::ZERO) - jiff::SignedDuration::from_secs(120);
        for (name, r) in &w.runs {
            let ended = r.status.as_ref().and_then(|s| s.finished_at.as_ref()).is_some_and(|t| t.0 < old);
            if ended {
                let _ = self.h.delete_run(name).await;
            }
        }
        for (name, i) in &w.instances {
            let gone =
                i.status.as_ref().is_some_and(|s| matches!(s.phase, InstancePhase::Terminated | InstancePhase::Failed));
            if gone && self.rng.chance(50) {
                let _ = self.h.delete_instance(name).await;
            }
        }
        self.restart_if_crashed();
    }

    async fn world(&self) -> World {
        let runs = self.h.api::<Run>().list(&Default::default()).await.unwrap().items;
        let instances = self.h.api().list(&Default::default()).await.unwrap().items;
        World {
            runs: runs.into_iter().map(|r| (r.name_any(), r)).collect(),
            instances: instances.into_iter().map(|i: kpool::api::instance::Instance| (i.name_any(), i)).collect(),
            machines: self.h.backend.live_machines_at(),
            max_instances: self.max_instances,
            launchable: self.backend == BackendLife::Live,
        }
    }

    async fn check(&mut self) {
        let w = self.world().await;
        let step = self.fig.steps;
        if let Ok(prefix) = std::env::var("KPOOL_SIM_TRACE") {
            trace(&w, step, &prefix);
            // The step's Events: what happened to objects gone before the step ended.
            let events = self.h.api::<Event>().list(&Default::default()).await.unwrap().items;
            for e in events {
                let about = e.regarding.as_ref().and_then(|r| r.name.clone()).unwrap_or_default();
                let key = format!("{:?}/{:?}/{:?}", e.metadata.name, e.series.as_ref().map(|s| s.count), e.note);
                if about.starts_with(prefix.as_str()) && self.traced_events.insert(key) {
                    println!(
                        "  [{step}] event {about}: {}: {}",
                        e.reason.unwrap_or_default(),
                        e.note.unwrap_or_default()
                    );
                }
            }
        }
        let mut found = check::check(&w, self.h.clock_now(), &mut self.mem);
        let running = w.runs.iter().filter_map(|(name, r)| {
            let st = r.status.as_ref().filter(|s| s.phase == kpool::api::run::RunPhase::Running)?;
            Some((name.as_str(), st.instance.as_deref()?))
        });
        found.extend(self.exec.running_without_a_job(running));
        found.extend(queue::check(&w, self.warm.as_ref(), self.h.clock_now(), &mut self.queue));
        self.fig.violations.extend(found.into_iter().chain(self.exec.take_violations()).map(|v| (step, v)));
    }

    async fn tick(&mut self) {
        self.settle().await;
        if self.fig.steps.is_multiple_of((check::GC_INTERVAL.as_secs() / TICK.as_secs()) as usize) {
            let _ = self.gc.pass(&self.h.ctx, &GcConfig::default(), Some(NS)).await;
            self.restart_if_crashed();
        }
        self.check().await;
        self.h.advance(TICK);
        self.fig.steps += 1;
    }

    async fn run(mut self) -> Figures {
        for step in 0..STEPS {
            if step < STEPS - 20 && self.rng.chance(35) {
                self.submit(self.fig.runs + 1).await;
            }
            self.inject().await;
            self.jobs().await;
            self.tidy().await;
            self.tick().await;
        }
        // Drain: no faults; every job ends; the pool empties once idle durations pass.
        if let BackendLife::Gone(_) | BackendLife::Forced(_) = self.backend {
            self.recreate_backend().await;
        }
        // No more headroom: the warm instances end with the rest.
        if let Some(warm) = self.warm.as_mut() {
            *warm = WarmSpec { min_idle: 0, windows: vec![], ..warm.clone() };
            let patch = serde_json::json!({"spec": {"warm": {"minIdle": 0, "windows": null}}});
            let api = self.h.api::<Pool>();
            api.patch(DEFAULT_POOL_NAME, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
        for _ in 0..DRAIN {
            for name in self.exec.running() {
                self.exec.exit(&name, 0);
            }
            self.tick().await;
        }
        let w = self.world().await;
        let step = self.fig.steps;
        for (name, r) in &w.runs {
            let phase = r.status.as_ref().map(|s| s.phase);
            if !phase.is_some_and(|p| p.is_finished()) {
                self.fig.violations.push((step, format!("run {name} never ended ({phase:?})")));
            }
        }
        for (name, i) in &w.instances {
            let phase = i.status.as_ref().map(|s| s.phase);
            if !matches!(phase, Some(InstancePhase::Terminated | InstancePhase::Failed)) {
                self.fig.violations.push((step, format!("instance {name} left {phase:?} after the drain")));
            }
        }
        for (region, m) in w.machines.iter().filter(|(_, m)| m.state != kpool::backends::MachineState::Stopping) {
            self.fig.violations.push((step, format!("machine {} ({region:?}) left after the drain", m.name)));
        }
        self.fig.launches = self.h.backend.creates().len();
        self.fig.starts = self.exec.starts();
        self.fig
    }
}

/// Prints the status of every run and instance whose name starts with `prefix`
/// (`KPOOL_SIM_TRACE=run-5`), after a step: how a replayed seed got where it did.
fn trace(w: &World, step: usize, prefix: &str) {
    for (name, r) in w.runs.iter().filter(|(n, _)| n.starts_with(prefix)) {
        let s = r.status.clone().unwrap_or_default();
        println!(
            "  [{step}] run {name}: {:?} attempts={} history={} instance={:?} provisioning={:?} exit={:?} sched={:?}",
            s.phase,
            s.attempts,
            s.history.len(),
            s.instance,
            s.provisioning_instance,
            s.exit_code,
            kpool::api::conditions::find(&s.conditions, "Scheduled").map(|c| (&c.reason, &c.message)),
        );
    }
    let machines: Vec<String> =
        w.machines.iter().map(|(r, m)| format!("{}@{}", &m.name, r.as_deref().unwrap_or("-"))).collect();
    println!("  [{step}] machines: {machines:?}");
    for (name, i) in w.instances.iter().filter(|(n, _)| n.starts_with(prefix)) {
        let s = i.status.clone().unwrap_or_default();
        println!(
            "  [{step}] instance {name} ({}): {:?} run={:?} job={:?} machine={:?} offer={:?} launches={:?} ready={:?}",
            i.metadata.uid.as_deref().unwrap_or_default(),
            s.phase,
            s.run,
            s.job.as_ref().map(|j| (&j.run, j.attempt)),
            s.machine_name,
            s.offer.as_ref().map(|o| &o.region),
            s.launch_attempts.iter().map(|a| format!("{}:{:?}", a.region, a.outcome)).collect::<Vec<_>>(),
            kpool::api::conditions::find(&s.conditions, "Ready").map(|c| (&c.reason, &c.message)),
        );
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn simulate(seed: u64, lost_creates: bool, pool_limit: bool) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async { Sim::new(seed, lost_creates, pool_limit).await.run().await })
}

#[test]
fn crashes_and_faults_keep_every_invariant() {
    // Seeds 1-500 in CI. Seed 291 found a machine left running with no Instance: a run
    // that found an idle instance deleted its provisioning instance, checked Pending a
    // moment before, while that instance's launch was in flight; where the delete takes
    // effect at once, nothing was left to tear the machine down. The run now ends such an
    // instance with a status write conditional on the copy it checked (see run.rs,
    // `delete_if_unlaunched`). Seed 84 once found a run started again after its job
    // exited 0: the machine was reclaimed before kpool read the exit status, an
    // interruption (see `SimExecutor`), now allowed.
    let seeds = env("KPOOL_SIM_SEEDS", 500);
    let first = env("KPOOL_SIM_FIRST_SEED", 1);
    let lost_creates = env("KPOOL_SIM_LOST_CREATES", 1) != 0;
    // With a maxInstances, seeds 4 and 8 found a run left Provisioning past its retry
    // window while its instance waited for room (pinned by reconcile test
    // `a_run_whose_instance_waits_for_room_fails_when_its_retry_window_ends`).
    let pool_limit = env("KPOOL_SIM_MAX_INSTANCES", 1) != 0;
    let next = AtomicU64::new(first);
    let results: Mutex<BTreeMap<u64, Figures>> = Mutex::default();
    let started = std::time::Instant::now();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= first + seeds {
                    break;
                }
                let fig = simulate(seed, lost_creates, pool_limit);
                results.lock().unwrap().insert(seed, fig);
            });
        }
    });
    let results = results.into_inner().unwrap();
    let sum = |f: fn(&Figures) -> usize| results.values().map(f).sum::<usize>();
    let failing: Vec<(&u64, &Figures)> = results.iter().filter(|(_, f)| !f.violations.is_empty()).collect();
    for (seed, f) in failing.iter().take(10) {
        let (step, first) = &f.violations[0];
        println!("seed {seed}: {} violations; first at step {step}: {first}", f.violations.len());
        if seeds == 1 {
            for (step, v) in &f.violations {
                println!("  step {step}: {v}");
            }
        }
    }
    println!(
        "simulation: {} seeds, {} steps, {} crashes, {} faults, {} runs, {} job starts, {} launches, {} violations \
         ({} seeds) in {:.1}s on {workers} threads",
        results.len(),
        sum(|f| f.steps),
        sum(|f| f.crashes),
        sum(|f| f.faults),
        sum(|f| f.runs),
        sum(|f| f.starts),
        sum(|f| f.launches),
        sum(|f| f.violations.len()),
        failing.len(),
        started.elapsed().as_secs_f64(),
    );
    assert!(sum(|f| f.crashes) > 0 && sum(|f| f.faults) > 0, "faults were injected");
    assert!(failing.is_empty(), "{} of {} seeds broke an invariant (see above)", failing.len(), results.len());
}
