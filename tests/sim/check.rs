//! The invariants of DESIGN.md, checked against what the API stores and what the
//! backend and the hosts hold, after every step. Each check returns violations as
//! sentences (the simulation counts them; one is a failure).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use kpool::api::instance::{Instance, InstancePhase};
use kpool::api::run::{Run, RunPhase};
use kpool::backends::{Machine, MachineState};
use kpool::core::policy::{effective_policy, EffectivePolicy, Origin};
use kube::ResourceExt;

/// The simulation's step: every reconciler runs once per step, so deadlines are kept to
/// within one step (the controller's `requeue_after` fires at the deadline itself).
pub const TICK: Duration = Duration::from_secs(30);
/// The garbage collector's grace and interval (its defaults): an orphan must be gone
/// within both, plus a step.
pub const GC_GRACE: Duration = Duration::from_secs(900);
pub const GC_INTERVAL: Duration = Duration::from_secs(300);
/// How long the health check (every 60 s) may take to notice a machine the provider took.
pub const NOTICE: Duration = Duration::from_secs(120);
/// How long an instance may stay Terminating with its machine up (teardown polls every 5 s;
/// a failing provider call or a crash costs a step or two).
pub const TEARDOWN: Duration = Duration::from_secs(300);

pub struct World {
    pub runs: BTreeMap<String, Run>,
    pub instances: BTreeMap<String, Instance>,
    /// Live machines with their regions.
    pub machines: Vec<(Option<String>, Machine)>,
    pub max_instances: Option<u32>,
    /// Whether the pool can launch: its Backend exists and is not being deleted (a
    /// Backend being deleted launches nothing more; its offers are gone).
    pub launchable: bool,
}

/// What the checker remembers between steps: since when each machine has had no live
/// owner, and since when each instance has been Terminating.
#[derive(Default)]
pub struct Memory {
    ownerless: BTreeMap<(String, Option<String>), Timestamp>,
    terminating: BTreeMap<String, Timestamp>,
    reclaimed: BTreeMap<String, Timestamp>,
}

impl Memory {
    /// The provider took machine `name` back at `at`.
    pub fn reclaimed(&mut self, name: &str, at: Timestamp) {
        self.reclaimed.insert(name.to_string(), at);
    }
}

pub fn policy_of_run(r: &Run) -> EffectivePolicy {
    effective_policy(&[&r.spec.policy], Origin::Run).expect("the simulation's policies are valid")
}

fn policy_of_instance(i: &Instance) -> EffectivePolicy {
    effective_policy(&[&i.spec.policy], kpool::controllers::instance::origin(i)).expect("valid policy")
}

/// `t + d`.
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).expect("short duration")).expect("in range")
}

fn late(now: Timestamp, deadline: Timestamp, slack: Duration) -> bool {
    now > add(deadline, slack)
}

pub fn check(w: &World, now: Timestamp, mem: &mut Memory) -> Vec<String> {
    let mut v = Vec::new();
    runs_and_instances(w, now, &mut v);
    machines(w, now, mem, &mut v);
    deadlines(w, now, &mut v);
    v
}

/// One run per instance, one instance per run, and both sides agree.
fn runs_and_instances(w: &World, now: Timestamp, v: &mut Vec<String>) {
    let mut holders: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, inst) in &w.instances {
        let Some(st) = &inst.status else { continue };
        if st.phase == InstancePhase::Busy {
            let Some(run) = st.run.as_deref() else {
                // Held: its run let go without knowing its job stopped, and the instance
                // fences the job before it takes another run (the hosts' side checks that).
                if st.job.is_none() {
                    v.push(format!("busy instance {name} names no run and holds no job"));
                }
                continue;
            };
            if let Some(other) = holders.insert(run, name) {
                v.push(format!("run {run} holds both {other} and {name}"));
            }
            if let Some(rs) = w.runs.get(run).and_then(|r| r.status.as_ref()) {
                if rs.phase.is_finished() && late(now, rs.finished_at.as_ref().map_or(now, |t| t.0), TICK) {
                    v.push(format!("instance {name} still busy with run {run}, which ended ({:?})", rs.phase));
                }
            }
        }
        if st.phase == InstancePhase::Idle && st.run.is_some() {
            v.push(format!("idle instance {name} names run {:?}", st.run));
        }
    }
    for (name, run) in &w.runs {
        let Some(rs) = &run.status else { continue };
        if rs.phase == RunPhase::Running {
            let inst = rs.instance.as_deref().unwrap_or_default();
            if holders.get(name.as_str()) != Some(&inst) {
                v.push(format!("running run {name} is not held by its instance {inst}"));
            }
        }
    }
    // maxInstances: instances of the pool holding capacity.
    if let Some(max) = w.max_instances {
        let holding: Vec<&String> = w
            .instances
            .iter()
            .filter(|(_, i)| i.status.as_ref().is_some_and(|s| kpool::core::pool::holds_capacity(s.phase)))
            .map(|(n, _)| n)
            .collect();
        if holding.len() > max as usize {
            v.push(format!("pool holds {} instances, maxInstances {max}: {holding:?}", holding.len()));
        }
    }
}

/// No machine without a live owner beyond the GC grace; no instance with two machines;
/// no live instance without its machine once the health check had its chance.
fn machines(w: &World, now: Timestamp, mem: &mut Memory, v: &mut Vec<String>) {
    let mut per_name: BTreeMap<&str, usize> = BTreeMap::new();
    let up: Vec<&(Option<String>, Machine)> =
        w.machines.iter().filter(|(_, m)| m.state != MachineState::Stopping).collect();
    for (_, m) in &up {
        *per_name.entry(m.name.as_str()).or_default() += 1;
    }
    for (name, n) in &per_name {
        if *n > 1 {
            v.push(format!("{n} machines named {name}: one instance launched twice"));
        }
    }
    mem.terminating.retain(|i, _| {
        w.instances.get(i).is_some_and(|x| x.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Terminating))
    });
    let mut ownerless = BTreeSet::new();
    for (region, m) in &up {
        let owner = w.instances.values().find(|i| {
            i.status.as_ref().is_some_and(|s| {
                s.machine_name.as_deref() == Some(m.name.as_str())
                    && (region.is_none() || s.offer.as_ref().map(|o| &o.region) == region.as_ref())
            })
        });
        let live = owner.is_some_and(|i| {
            let st = i.status.as_ref().expect("owner has status");
            match st.phase {
                InstancePhase::Provisioning | InstancePhase::Idle | InstancePhase::Busy => true,
                InstancePhase::Terminating => {
                    let since = *mem.terminating.entry(i.name_any()).or_insert(now);
                    !late(now, since, TEARDOWN)
                }
                _ => false,
            }
        });
        if !live {
            let key = (m.name.clone(), region.clone());
            let since = *mem.ownerless.entry(key.clone()).or_insert(now);
            if late(now, since, GC_GRACE + GC_INTERVAL + TICK) {
                v.push(format!(
                    "machine {} ({}) has had no live owner since {since} (owner: {:?})",
                    m.name,
                    region.as_deref().unwrap_or("-"),
                    owner.map(|i| (i.name_any(), i.status.as_ref().map(|s| s.phase)))
                ));
            }
            ownerless.insert(key);
        }
    }
    mem.ownerless.retain(|k, _| ownerless.contains(k));
    // Live instances whose machine is gone: only until the health check notices.
    let names: BTreeSet<&str> = up.iter().map(|(_, m)| m.name.as_str()).collect();
    for (name, inst) in &w.instances {
        let Some(st) = &inst.status else { continue };
        let Some(machine) = st.machine_name.as_deref() else { continue };
        if matches!(st.phase, InstancePhase::Idle | InstancePhase::Busy) && !names.contains(machine) {
            let at = mem.reclaimed.get(machine).copied().unwrap_or(now);
            if late(now, at, NOTICE + TICK) {
                v.push(format!("instance {name} is {:?} without its machine {machine} since {at}", st.phase));
            }
        }
    }
}

/// Idle instances go within their idle duration; runs end by their maxDuration; runs do
/// not wait past their retry window.
fn deadlines(w: &World, now: Timestamp, v: &mut Vec<String>) {
    for (name, inst) in &w.instances {
        let Some(st) = &inst.status else { continue };
        if st.phase != InstancePhase::Idle {
            continue;
        }
        let Some(since) = st.idle_since.as_ref().map(|t| t.0) else { continue };
        let Some(idle) = policy_of_instance(inst).idle_duration else { continue };
        // An instance its run still waits to claim is kept for the claim window.
        let kept = idle.max(kpool::core::instance::CLAIM_WINDOW);
        if late(now, add(since, kept), TICK) {
            v.push(format!("instance {name} idle since {since} (idle duration {idle:?}), still idle at {now}"));
        }
    }
    for (name, run) in &w.runs {
        let Some(rs) = &run.status else { continue };
        let policy = policy_of_run(run);
        if rs.phase == RunPhase::Running {
            if let Some(deadline) = kpool::core::run::max_duration_deadline(rs, &policy) {
                if late(now, deadline, TICK) {
                    v.push(format!("run {name} still running past its maxDuration (deadline {deadline})"));
                }
            }
        }
        if matches!(rs.phase, RunPhase::Pending | RunPhase::Provisioning) {
            let deadline = [kpool::api::policy::RetryEvent::NoCapacity]
                .iter()
                .filter_map(|e| kpool::core::run::retry_deadline(rs, &policy, *e))
                .max();
            if let Some(d) = deadline {
                // A waiting run looks again every minute at most.
                if late(now, d, kpool::controllers::run::WAIT_RECHECK + TICK) {
                    let why = rs.conditions.iter().find(|c| c.type_ == "Scheduled").map(|c| c.message.clone());
                    v.push(format!("run {name} still {:?} past its retry window (ended {d}): {why:?}", rs.phase));
                }
            }
        }
    }
}
