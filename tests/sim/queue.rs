//! The queue and warm-headroom invariants of issue 14, checked after every step of the
//! simulation. Both allow the reaction granularity of one step: every reconciler runs
//! to a fixed point within a step, but an injected crash, timeout or conflict can leave a
//! reconcile undone until the next, so a condition is a violation only when it holds at
//! two checks in a row (that is, for longer than one step, 30 s).
//!
//! **Queue.** A run *waits* when it is not finished, not stopped, not being deleted, and
//! holds no instance (`core::run::is_waiting`). Runs wait in their pool's queue, ordered
//! by `core::run::queue_key`: higher `spec.priority` first, then older, then by name. An
//! instance *is free for* a waiting run R when it is Idle, names no run, is not being
//! deleted, is in R's pool, its offer fits R's requirements and policy, and it is not
//! provisioned for another run that still waits for it. It is *held for* a run ahead of R
//! when some waiting run ahead of R in the queue could take it (it is free for that run).
//! - (a1) No run waits while an instance is free for it that is not held for a run ahead
//!   of it.
//! - (a2) No run overtakes: when a run T newly holds instance I at a check, no run A that
//!   waited at the previous check, ahead of T in the queue, still waits with nothing free
//!   for it, while I fits A (its pool, requirements and policy; not provisioned for T).
//!   An instance that goes idle and is taken within one step is judged here: breaking
//!   priority or age order in `pick_in_queue` breaks this.
//!
//! **Warm headroom.** For a pool with `spec.warm`, *wanted* is what
//! `core::warm::wanted` gives at the check's time; warm instances (labelled
//! `kpool.dev/warm`) that are Idle are *ready*, Pending or Provisioning are *starting*
//! (a launch under way: however many steps the launch needs, it covers the gap).
//! - (b1) Restored: ready + starting ≥ wanted whenever the pool has room (fewer live
//!   instances than `maxInstances`, Pending ones included, as the pool counts them) and
//!   its Backend can launch (it exists and is not being deleted: without it no offer
//!   fits, and a warm instance fails as soon as it is created; seed 297), and no warm
//!   launch failed within the back-off (`core::warm::relaunch_backoff`).
//! - (b2) Not beyond: ready ≤ wanted (the surplus is ended), and maxInstances holds
//!   (checked with the other pool limits in `check.rs`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use jiff::Timestamp;
use kpool::api::instance::{Instance, InstancePhase, WARM_LABEL};
use kpool::api::pool::WarmSpec;
use kpool::api::run::Run;
use kpool::core::offers::OfferQuery;
use kpool::core::run::{is_waiting, queue_key};
use kube::ResourceExt;

use super::check::{policy_of_run, World};

/// What the checks saw at the previous step.
#[derive(Default)]
pub struct QueueMemory {
    /// Conditions seen at the previous check, by (run, instance, kind); reported when
    /// seen again.
    suspects: BTreeSet<(String, String, &'static str)>,
    /// Waiting runs, at the previous check.
    waiting: BTreeSet<String>,
    /// Instance → the run it was provisioned for, at the previous check.
    reserved: BTreeMap<String, String>,
    /// Instance → run holding it, at the previous check.
    held: BTreeMap<String, String>,
}

fn is_idle(inst: &Instance) -> bool {
    inst.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Idle && s.run.is_none())
        && inst.metadata.deletion_timestamp.is_none()
}

/// Whether idle instance `inst` is free for waiting run `run` (see the module docs).
fn free_for(run: &Run, inst: &Instance, reserved: &BTreeMap<String, String>) -> bool {
    is_idle(inst) && fits(run, inst, reserved)
}

/// Whether `inst` would do for `run`, busy or not: same pool, its offer fits the run's
/// requirements and policy, and it is not provisioned for another run.
fn fits(run: &Run, inst: &Instance, reserved: &BTreeMap<String, String>) -> bool {
    let Some(st) = inst.status.as_ref() else { return false };
    let pool = run.status.as_ref().and_then(|s| s.pool.clone());
    if pool.is_none() || st.pool != pool {
        return false;
    }
    if reserved.get(&inst.name_any()).is_some_and(|r| *r != run.name_any()) {
        return false;
    }
    let Ok(req) = run.spec.resources.resolve() else { return false };
    let policy = policy_of_run(run);
    st.offer.as_ref().is_some_and(|o| OfferQuery::new(&req, &policy).fits(o))
}

pub fn check(w: &World, warm: Option<&WarmSpec>, now: Timestamp, mem: &mut QueueMemory) -> Vec<String> {
    let mut v = Vec::new();
    let mut seen: BTreeMap<(String, String, &'static str), String> = BTreeMap::new();
    // Instances provisioned for runs that still wait for them.
    let reserved: BTreeMap<String, String> = w
        .runs
        .values()
        .filter(|r| is_waiting(r))
        .filter_map(|r| Some((r.status.as_ref()?.provisioning_instance.clone()?, r.name_any())))
        .collect();
    let mut queue: Vec<&Run> = w.runs.values().filter(|r| is_waiting(r)).collect();
    queue.sort_by_key(|r| queue_key(r));
    let idle: Vec<&Instance> = w.instances.values().filter(|i| is_idle(i)).collect();
    let free: Vec<BTreeSet<String>> = queue
        .iter()
        .map(|run| idle.iter().filter(|i| free_for(run, i, &reserved)).map(|i| i.name_any()).collect())
        .collect();
    for (k, run) in queue.iter().enumerate() {
        for inst in &free[k] {
            let held = free[..k].iter().any(|f| f.contains(inst));
            if !held {
                let why = format!("run {} waited two steps while instance {inst} was free for it", run.name_any());
                seen.insert((run.name_any(), inst.clone(), "a1"), why);
            }
        }
    }
    let stuck: BTreeSet<String> =
        queue.iter().zip(&free).filter(|(_, f)| f.is_empty()).map(|(r, _)| r.name_any()).collect();
    // (a2): who took what since the previous check.
    let held: BTreeMap<String, String> = w
        .instances
        .iter()
        .filter_map(|(n, i)| {
            let s = i.status.as_ref().filter(|s| s.phase == InstancePhase::Busy)?;
            Some((n.clone(), s.run.clone()?))
        })
        .collect();
    for (inst, taker) in &held {
        if mem.held.get(inst) == Some(taker) {
            continue;
        }
        let (Some(taker_run), Some(instance)) = (w.runs.get(taker), w.instances.get(inst)) else { continue };
        // A run's own instance (provisioned for it, maybe within this step) is its own.
        if !mem.waiting.contains(taker) || instance.provisioned_for() == Some(taker.as_str()) {
            continue;
        }
        // Runs ahead of the taker that waited then and wait now with nothing free (what is
        // free for them now is (a1)'s to judge).
        for other in mem.waiting.iter().filter(|o| *o != taker && stuck.contains(*o)) {
            let Some(a) = w.runs.get(other) else { continue };
            if queue_key(a) < queue_key(taker_run) && fits(a, instance, &mem.reserved) {
                v.push(format!("run {taker} took instance {inst} while run {other}, ahead of it in the queue, waited"));
            }
        }
    }
    // (b): warm headroom.
    if let Some(warm) = warm {
        let (wanted, _) = kpool::core::warm::wanted(warm, now);
        let phase = |i: &Instance| i.status.as_ref().map_or(InstancePhase::Pending, |s| s.phase);
        let mine = || {
            w.instances
                .values()
                .filter(|i| i.labels().contains_key(WARM_LABEL) && i.metadata.deletion_timestamp.is_none())
        };
        let ready = mine().filter(|i| phase(i) == InstancePhase::Idle).count() as u32;
        let starting =
            mine().filter(|i| matches!(phase(i), InstancePhase::Pending | InstancePhase::Provisioning)).count() as u32;
        let live = w
            .instances
            .values()
            .filter(|i| !matches!(phase(i), InstancePhase::Terminated | InstancePhase::Failed))
            .count();
        let room = w.max_instances.is_none_or(|m| live < m as usize);
        let want = wanted.min_idle;
        // After a warm launch failed, the pool waits out a back-off before the next.
        let backing_off = kpool::core::warm::relaunch_backoff(mine(), now).is_some();
        if ready + starting < want && room && w.launchable && !backing_off {
            let why = format!("warm headroom not restored for two steps: {ready} ready + {starting} starting < {want}");
            seen.insert((String::new(), String::new(), "b1"), why);
        }
        if ready > want {
            seen.insert(
                (String::new(), String::new(), "b2"),
                format!("{ready} warm ready for two steps, {want} wanted"),
            );
        }
    }
    for (key, why) in &seen {
        if mem.suspects.contains(key) {
            v.push(why.clone());
        }
    }
    mem.suspects = seen.into_keys().collect();
    mem.waiting = queue.iter().map(|r| r.name_any()).collect();
    mem.reserved = reserved;
    mem.held = held;
    v
}
