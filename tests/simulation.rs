//! A simulated hour of a busy pool: runs arrive, finish, fail and are stopped at random
//! (reproducibly, from a seed) while virtual time advances, every reconciler races the
//! others, and capacity errors, conflicts and machines reclaimed by the provider are
//! injected. After every step the
//! invariants of DESIGN.md are checked against what is stored in the (in-memory) API
//! and what the backend holds.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{Run, RunPhase, RunSpec};
use kpool::backends::BackendError;
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use support::*;

/// How long an idle instance a run provisioned is kept (the built-in default).
const RUN_IDLE: Duration = Duration::from_secs(300);
const TICK: Duration = Duration::from_secs(30);

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

struct World {
    runs: BTreeMap<String, Run>,
    instances: BTreeMap<String, Instance>,
}

async fn observe(h: &Harness) -> World {
    let runs = h.api::<Run>().list(&Default::default()).await.unwrap().items;
    let instances = h.api::<Instance>().list(&Default::default()).await.unwrap().items;
    World {
        runs: runs.into_iter().map(|r| (r.name_any(), r)).collect(),
        instances: instances.into_iter().map(|i| (i.name_any(), i)).collect(),
    }
}

/// Steps within which the health check (every 60 s, two steps) notices a reclaimed machine.
const NOTICE_STEPS: usize = 2;

/// The invariants, checked on a settled world. `reclaimed`: machines the provider took
/// back, by the step it happened at.
fn check(h: &Harness, w: &World, step: usize, reclaimed: &BTreeMap<String, usize>) {
    let now = h.clock_now();
    let mut holders: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, inst) in &w.instances {
        let Some(st) = &inst.status else { continue };
        if st.phase == InstancePhase::Busy {
            let run = st.run.as_deref().unwrap_or_else(|| panic!("step {step}: busy {name} has no run"));
            // One run per instance, and one instance per run.
            if let Some(other) = holders.insert(run, name) {
                panic!("step {step}: run {run} holds both {other} and {name}");
            }
            let r = w.runs.get(run).unwrap_or_else(|| panic!("step {step}: {name} is busy with missing run {run}"));
            let rs = r.status.as_ref().unwrap();
            assert!(!rs.phase.is_finished(), "step {step}: {name} still busy with finished run {run} ({:?})", rs.phase);
            assert_eq!(rs.instance.as_deref(), Some(name.as_str()), "step {step}: {run} does not know it holds {name}");
        }
        if st.phase == InstancePhase::Idle {
            assert!(st.run.is_none(), "step {step}: idle {name} names run {:?}", st.run);
            let since = st.idle_since.as_ref().expect("idle since").0;
            let limit = since + jiff::SignedDuration::try_from(RUN_IDLE + TICK).unwrap();
            assert!(now <= limit, "step {step}: {name} idle since {since}, still idle at {now}");
        }
    }
    for (name, run) in &w.runs {
        let Some(rs) = &run.status else { continue };
        if rs.phase == RunPhase::Running {
            let inst = rs.instance.as_deref().unwrap_or_else(|| panic!("step {step}: running {name} has no instance"));
            assert_eq!(holders.get(name.as_str()), Some(&inst), "step {step}: running {name} is not held by {inst}");
        }
    }
    // Every machine the backend holds belongs to a live instance, and every live
    // instance with a machine is backed by exactly one.
    let live: BTreeSet<String> = h.backend.live_machines().into_iter().map(|m| m.name).collect();
    let owned: BTreeSet<String> = w
        .instances
        .values()
        .filter_map(|i| i.status.as_ref())
        .filter(|s| matches!(s.phase, InstancePhase::Idle | InstancePhase::Busy))
        .filter_map(|s| s.machine_name.clone())
        .collect();
    // A reclaimed machine's instance stays live only until the next health check.
    let unnoticed: Vec<&String> =
        owned.difference(&live).filter(|m| reclaimed.get(*m).is_none_or(|at| step > at + NOTICE_STEPS)).collect();
    assert!(unnoticed.is_empty(), "step {step}: instances without machines: {unnoticed:?}");
    let known: BTreeSet<String> =
        w.instances.values().filter_map(|i| i.status.as_ref()?.machine_name.clone()).collect();
    assert!(
        live.is_subset(&known),
        "step {step}: machines without an instance: {:?}",
        live.difference(&known).collect::<Vec<_>>()
    );
}

async fn simulate(seed: u64) {
    let h = Harness::new().await;
    let mut rng = Rng(seed);
    let mut race = seed;
    let shapes = shapes();
    let mut submitted = 0;
    let mut reclaimed = BTreeMap::new();
    let steps = 120; // one hour of 30 s ticks
    for step in 0..steps {
        if step < steps - 20 && rng.chance(35) {
            submitted += 1;
            let spec =
                RunSpec { resources: rng.pick(&shapes).clone(), commands: vec!["train".into()], ..Default::default() };
            h.run(&format!("run-{submitted}"), spec).await;
        }
        if rng.chance(5) {
            h.backend.fail_next_create(BackendError::InsufficientCapacity("injected".into()));
        }
        if rng.chance(5) {
            h.fail_status_writes.store(1, std::sync::atomic::Ordering::SeqCst);
        }
        let live = h.backend.live_machines();
        if !live.is_empty() && rng.chance(4) {
            let m = rng.pick(&live).name.clone();
            h.backend.reclaim(&m);
            reclaimed.insert(m, step);
        }
        let w = observe(&h).await;
        for (name, run) in &w.runs {
            let Some(rs) = &run.status else { continue };
            if rs.phase != RunPhase::Running {
                continue;
            }
            match rng.next() % 100 {
                0..=11 => h.exec.exit(name, 0),
                12..=13 => h.exec.exit(name, 1),
                14 => {
                    let patch = serde_json::json!({"spec": {"stop": true}});
                    h.api::<Run>().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
                }
                _ => {}
            }
        }
        h.settle_racing(&mut race).await;
        check(&h, &observe(&h).await, step, &reclaimed);
        h.advance(TICK);
    }
    // Drain: every job ends, then the pool empties once the idle duration passes.
    for name in observe(&h).await.runs.keys() {
        h.exec.exit(name, 0);
    }
    for _ in 0..12 {
        h.settle_racing(&mut race).await;
        check(&h, &observe(&h).await, steps, &reclaimed);
        h.advance(TICK);
    }
    h.settle_racing(&mut race).await;
    let w = observe(&h).await;
    let finished = w.runs.values().filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
    let launched = h.backend.creates().len();
    let interrupted = w
        .runs
        .values()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.termination_reason.as_deref() == Some("Interrupted")))
        .count();
    println!(
        "seed {seed}: {submitted} runs, {finished} finished ({interrupted} interrupted), {launched} create calls, \
         {} instances, {} machines reclaimed",
        w.instances.len(),
        reclaimed.len()
    );
    assert_eq!(finished, submitted, "every run ends");
    assert!(h.backend.live_machines().is_empty(), "idle machines were torn down: {:?}", h.backend.live_machines());
    for (name, inst) in &w.instances {
        let phase = inst.status.as_ref().map(|s| s.phase);
        assert!(matches!(phase, Some(InstancePhase::Terminated | InstancePhase::Failed)), "{name}: {phase:?}");
    }
    // Reuse happened: fewer launches than runs (with four shapes and short idle gaps).
    assert!(launched < submitted, "{launched} launches for {submitted} runs: no reuse");
}

#[tokio::test]
async fn an_hour_of_random_runs_keeps_every_invariant_seed_1() {
    simulate(1).await;
}

#[tokio::test]
async fn an_hour_of_random_runs_keeps_every_invariant_seed_2() {
    simulate(2).await;
}

#[tokio::test]
async fn an_hour_of_random_runs_keeps_every_invariant_seed_3() {
    simulate(3).await;
}
