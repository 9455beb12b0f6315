//! A pool's waiting runs placed as one decision: one pass of the queue-order assignment
//! ([`assign`]) over the pool's waiting runs, each with its own requirements and policy,
//! and the namespace's idle instances, kept as the pool's *plan* and shared by the runs'
//! reconciles.
//!
//! Without it, a wave of N waiting runs on M idle instances computed the assignment once
//! per run, each time over every run ahead of it: N passes of O(N + M). Now one
//! reconcile of the wave makes the plan and the others read their instance from it, for
//! as long as it is still what a new assignment would give them. The assignment is
//! greedy in queue order, so it is when:
//! - the run was waiting when the plan was made, and no run waiting ahead of it now was
//!   unknown to the plan (a newcomer behind it changes nothing for it); a newcomer
//!   behind every run of the plan takes the best instance the plan gives nobody, and
//!   the plan is extended with it (a wave created one run at a time makes one plan);
//! - every run of the plan that still waits still finds its instance idle, as reserved
//!   as it was (else a run ahead of this one may now take this one's instance);
//! - every instance idle now was idle then, as reserved, and the run the plan gave it
//!   to still waits or holds it (else an instance went free that this run may take).
//!
//! Claims that follow the plan keep it: the claiming run stops waiting as its instance
//! stops being idle. Each run still writes its own claim, conditional on the instance's
//! resourceVersion, so a plan made from a copy the watch had not caught up with costs a
//! 409 and a new plan, never a second placement. The run's own requirements and policy,
//! as they resolve at its pass, must still allow the instance the plan gives it.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use super::observe::{idle_for_matching, policy_of};
use super::{Context, Error};
use crate::api::instance::{Instance, InstancePhase};
use crate::api::pool::Pool;
use crate::api::run::Run;
use crate::core::matching::{assign, pick_instance, PendingRun};
use crate::core::policy::Origin;
use crate::core::pool::resolve_pool_name;
use crate::core::run::{is_waiting, queue_key};

/// One pool's assignment of its waiting runs to idle instances, as of when it was made.
#[derive(Debug, Default)]
pub struct Plan {
    /// The namespace's idle instances then, each with the run it was reserved for.
    idle: HashMap<String, Option<String>>,
    /// The pool's waiting runs then.
    waiting: HashSet<String>,
    /// The instance each run takes, by run.
    assigned: HashMap<String, String>,
    /// The run each instance goes to, by instance.
    taker: HashMap<String, String>,
    /// The queue key of its last waiting run.
    last: Option<(std::cmp::Reverse<i32>, Option<jiff::Timestamp>, String)>,
}

/// What a plan says of one run.
enum Answer<'p> {
    /// The plan gives the run this instance, or none.
    Planned(Option<&'p str>),
    /// The run is new, behind every run of the plan: it takes what a new assignment would
    /// give it last, the best of what the plan gives nobody.
    Last,
}

impl Plan {
    /// The runs given an instance, and the instance each takes.
    pub fn assigned(&self) -> impl Iterator<Item = (&str, &str)> {
        self.assigned.iter().map(|(r, i)| (r.as_str(), i.as_str()))
    }

    /// What the plan gives `run`, while a new assignment would give it the same (see the
    /// module docs); `None` when that may not be so. `key` is the run's queue key.
    fn answer(&self, run: &str, key: QueueKey<'_>, now: &Now<'_>) -> Option<Answer<'_>> {
        if now.waiting.iter().any(|(r, (k, _))| *k < key && *r != run && !self.waiting.contains(*r)) {
            return None;
        }
        let last = self.last.as_ref().is_none_or(|(p, t, n)| key > (*p, *t, n.as_str()));
        if !self.waiting.contains(run) && !last {
            return None;
        }
        let same = |i: &str| match (self.idle.get(i), now.idle.get(i)) {
            (Some(then), Some(now)) => then.as_deref() == *now,
            _ => false,
        };
        let kept = self.assigned.iter().all(|(r, i)| !now.waiting.contains_key(r.as_str()) || same(i));
        let nothing_freed = now.idle.keys().all(|i| {
            same(i)
                && self
                    .taker
                    .get(*i)
                    .is_none_or(|t| now.waiting.contains_key(t.as_str()) || now.holding.get(t.as_str()) == Some(i))
        });
        if !(kept && nothing_freed) {
            return None;
        }
        Some(match self.waiting.contains(run) {
            true => Answer::Planned(self.assigned.get(run).map(String::as_str)),
            false => Answer::Last,
        })
    }

    /// Adds `me`, behind every run of the plan, with the instance it takes.
    fn extend(&mut self, me: &str, key: QueueKey<'_>, instance: Option<&str>) {
        self.waiting.insert(me.to_string());
        self.last = Some((key.0, key.1, key.2.to_string()));
        if let Some(i) = instance {
            self.assigned.insert(me.to_string(), i.to_string());
            self.taker.insert(i.to_string(), me.to_string());
        }
    }
}

/// The instance `me` takes behind every run of `plan`: among the idle instances the plan
/// gives nobody (reserved for nobody else, its pinned one if it is pinned), the cheapest
/// that fits its requirements and policy, ties by name, as [`assign`] chooses.
fn best_left<'a, I: Borrow<Instance>>(me: &PendingRun, plan: &Plan, now: &Now<'_>, all: &'a [I]) -> Option<&'a str> {
    let query = crate::core::offers::OfferQuery::new(&me.requirements, &me.policy);
    all.iter()
        .map(Borrow::borrow)
        .filter_map(|i| {
            let name = i.metadata.name.as_deref()?;
            let free = now.idle.get(name)?.is_none_or(|r| r == me.name);
            let s = i.status.as_ref()?;
            let offer = s.offer.as_ref()?;
            let ok = free
                && !plan.taker.contains_key(name)
                && me.pinned_instance.as_deref().is_none_or(|p| p == name)
                && s.pool.as_deref() == Some(me.pool.as_str())
                && query.fits(offer);
            ok.then_some((offer.price, name))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, name)| name)
}

type QueueKey<'a> = (std::cmp::Reverse<i32>, Option<jiff::Timestamp>, &'a str);

/// A pool's plan, shared by its runs' passes.
type Shared = Arc<Mutex<Plan>>;

/// The pools' plans, by (namespace, pool), and how many were made.
#[derive(Default)]
pub struct Plans {
    plans: Mutex<HashMap<(String, String), Shared>>,
    made: AtomicU64,
}

impl Plans {
    fn get(&self, ns: &str, pool: &str) -> Option<Shared> {
        self.plans.lock().expect("plans").get(&(ns.to_string(), pool.to_string())).cloned()
    }

    fn put(&self, ns: &str, pool: &str, plan: Plan) {
        self.made.fetch_add(1, Ordering::Relaxed);
        self.plans.lock().expect("plans").insert((ns.to_string(), pool.to_string()), Arc::new(Mutex::new(plan)));
    }

    /// How many plans this process has made.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }
}

/// What a pass sees now: the idle instances (with the run each is reserved for), the
/// pool's waiting runs (with their queue keys; a run an instance names does not wait),
/// and the instance each run's own status says it holds.
struct Now<'a> {
    idle: HashMap<&'a str, Option<&'a str>>,
    waiting: HashMap<&'a str, (QueueKey<'a>, &'a Run)>,
    holding: HashMap<&'a str, &'a str>,
}

impl<'a> Now<'a> {
    fn of<I: Borrow<Instance>, R: Borrow<Run>>(all: &'a [I], runs: &'a [R], pool: &str, pools: &[&Pool]) -> Self {
        let mut idle = HashMap::new();
        let mut claimed = HashSet::new();
        for i in all.iter().map(Borrow::borrow) {
            let Some(s) = i.status.as_ref() else { continue };
            match (s.phase, s.run.as_deref()) {
                (InstancePhase::Busy, Some(run)) => {
                    claimed.insert(run);
                }
                (InstancePhase::Idle, None) if i.metadata.deletion_timestamp.is_none() => {
                    idle.insert(i.metadata.name.as_deref().unwrap_or_default(), None);
                }
                _ => {}
            }
        }
        let (mut waiting, mut holding) = (HashMap::new(), HashMap::new());
        for r in runs.iter().map(Borrow::borrow) {
            let name = r.metadata.name.as_deref().unwrap_or_default();
            if let Some(s) = r.status.as_ref().filter(|s| !s.phase.is_finished()) {
                if let Some(reserved) = s.provisioning_instance.as_deref().and_then(|p| idle.get_mut(p)) {
                    *reserved = Some(name);
                }
                if let Some(i) = s.instance.as_deref() {
                    holding.insert(name, i);
                }
            }
            if waits_in(r, pool, &claimed, pools) {
                waiting.insert(name, (queue_key(r), r));
            }
        }
        Now { idle, waiting, holding }
    }
}

/// Whether `r` waits in `pool`'s queue: waiting ([`is_waiting`]), named by no instance,
/// and in the pool (a run not reconciled yet in the one its spec resolves to, as its
/// first pass will resolve it).
fn waits_in(r: &Run, pool: &str, claimed: &HashSet<&str>, pools: &[&Pool]) -> bool {
    is_waiting(r)
        && !claimed.contains(r.metadata.name.as_deref().unwrap_or_default())
        && match r.status.as_ref().and_then(|s| s.pool.as_deref()) {
            Some(p) => p == pool,
            None => resolve_pool_name(r.spec.pool.as_deref(), pools) == pool,
        }
}

/// The idle instance `me` takes in its pool's queue order (by name), if any: from the
/// pool's plan while it holds for `me`, else from a new plan. `run` is `me`'s object;
/// `all` and `runs` are the namespace's instances and runs.
pub async fn pick<I: Borrow<Instance>, R: Borrow<Run>>(
    ctx: &Context,
    run: &Run,
    me: PendingRun,
    pool: Option<&Pool>,
    all: &[I],
    runs: &[R],
) -> Result<Option<String>, Error> {
    let (ns, pool_name) = (me.namespace.clone(), me.pool.clone());
    let pools = ctx.list_in(&ns, |c| &c.pools).await?;
    let pools: Vec<&Pool> = pools.iter().collect();
    let now = Now::of(all, runs, &pool_name, &pools);
    if let Some(plan) = ctx.plans.get(&ns, &pool_name) {
        let mut plan = plan.lock().expect("plan");
        let key = queue_key(run);
        match plan.answer(&me.name, key, &now) {
            Some(Answer::Planned(None)) => return Ok(None),
            // The plan was made with the policies of then: the run's own, as it resolves
            // now, must still allow the instance (a Profile may have changed since).
            Some(Answer::Planned(Some(name))) => {
                let inst = all.iter().map(Borrow::borrow).filter(|i| i.metadata.name.as_deref() == Some(name));
                let inst: Vec<&Instance> = inst.collect();
                if pick_instance(&me, &idle_for_matching(&inst, runs, &ns)) == Some(0) {
                    return Ok(Some(name.to_string()));
                }
            }
            Some(Answer::Last) => {
                let best = best_left(&me, &plan, &now, all);
                plan.extend(&me.name, key, best);
                return Ok(best.map(str::to_string));
            }
            None => {}
        }
    }
    let plan = make(ctx, pool, &pool_name, &ns, Some((run, me)), all, runs, &now).await?;
    let answer = plan.assigned.get(&run.name_any()).cloned();
    ctx.plans.put(&ns, &pool_name, plan);
    Ok(answer)
}

/// A new plan for pool `pool_name` of namespace `ns` (`pool` its object, if it exists),
/// from what the caches show now; not kept. What the warm pool's surplus check asks:
/// which idle instances its waiting runs take next.
pub async fn plan_now<I: Borrow<Instance>, R: Borrow<Run>>(
    ctx: &Context,
    pool: &Pool,
    all: &[I],
    runs: &[R],
) -> Result<Plan, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let pools = ctx.list_in(&ns, |c| &c.pools).await?;
    let pools: Vec<&Pool> = pools.iter().collect();
    let name = pool.name_any();
    make(ctx, Some(pool), &name, &ns, None, all, runs, &Now::of(all, runs, &name, &pools)).await
}

/// One pass of [`assign`] over the waiting runs of `pool_name` in queue order (`me`
/// among them, with its own requirements and policy; every other run with its own) and
/// the namespace's idle instances. A run whose resources or policy do not resolve takes
/// nothing (its own pass fails it).
#[allow(clippy::too_many_arguments)]
async fn make<I: Borrow<Instance>, R: Borrow<Run>>(
    ctx: &Context,
    pool: Option<&Pool>,
    pool_name: &str,
    ns: &str,
    me: Option<(&Run, PendingRun)>,
    all: &[I],
    runs: &[R],
    now: &Now<'_>,
) -> Result<Plan, Error> {
    let me_name = me.as_ref().map(|(_, p)| p.name.clone());
    let mut waiting: Vec<(_, &Run)> =
        now.waiting.iter().filter(|(n, _)| me_name.as_deref() != Some(**n)).map(|(_, (k, r))| (*k, *r)).collect();
    if let Some((run, _)) = &me {
        waiting.push((queue_key(run), run));
    }
    waiting.sort_by(|a, b| a.0.cmp(&b.0));
    let mut queue = Vec::with_capacity(waiting.len());
    let mut mine = me.map(|(_, p)| p);
    for (_, r) in &waiting {
        if me_name.as_deref() == r.metadata.name.as_deref() {
            queue.extend(mine.take());
            continue;
        }
        let Ok(requirements) = r.spec.resources.resolve() else { continue };
        let policy = policy_of(ctx, ns, &r.spec.policy, r.spec.profile.as_deref(), pool, Origin::Run).await;
        let Ok(policy) = policy else { continue };
        queue.push(PendingRun {
            name: r.name_any(),
            namespace: ns.to_string(),
            pool: pool_name.to_string(),
            requirements,
            policy,
            pinned_instance: r.spec.instance.clone(),
        });
    }
    let idle = idle_for_matching(all, runs, ns);
    let assigned = assign(&queue, &idle).into_iter().map(|(r, i)| (queue[r].name.clone(), idle[i].name.clone()));
    let assigned: HashMap<String, String> = assigned.collect();
    let last = waiting.last().map(|(k, _)| (k.0, k.1, k.2.to_string()));
    Ok(Plan {
        last,
        idle: now.idle.iter().map(|(i, r)| (i.to_string(), r.map(str::to_string))).collect(),
        waiting: waiting.iter().map(|(_, r)| r.name_any()).collect(),
        taker: assigned.iter().map(|(r, i)| (i.clone(), r.clone())).collect(),
        assigned,
    })
}
