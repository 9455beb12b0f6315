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
//! stops being idle. Every claim is conditional on the instance's resourceVersion, so a
//! plan made from a copy the watch had not caught up with costs a 409 and a new plan,
//! never a second placement. The run's own requirements and policy, as they resolve at
//! its pass, must still allow the instance the plan gives it.
//!
//! **Batches.** A pass that makes a plan for more than one waiting run writes the claims
//! of all of them itself, [`BATCH_CONCURRENCY`] at a time, in queue order; each run's own
//! pass then only starts its job on the instance claimed for it ([`Pick::Claimed`]).
//! While a pool's plan is being made or its batch written, the other passes of its runs
//! do nothing but note that they came ([`Plans::defers`], no scan of the namespace), and
//! are woken when the batch ends: a wave of N runs costs one O(N + M) plan per batch
//! instead of one per run. A run that comes ahead of the batch's last run in the queue
//! stops the batch (the claims not yet sent are not sent) so that it is planned first.
//! A claim made by the batch that the cache has not caught up with is the process's
//! own write: the next plan counts its instance as taken ([`Context::known_stale`]).

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use super::idle_gaps;
use super::observe::{idle_for_matching, policy_of};
use super::{is_conflict, Context, Error};
use crate::api::instance::{Instance, InstancePhase, JobRef};
use crate::api::pool::Pool;
use crate::api::reasons::Reason;
use crate::api::run::Run;
use crate::core::idle_auto::spell;
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

/// How many claims a batch sends at once.
pub const BATCH_CONCURRENCY: usize = 32;

/// The pools' plans, by (namespace, pool), and how many were made; the pools whose plan
/// is being made or whose batch is being written; the claims batches wrote for runs
/// whose own pass has not taken them yet.
#[derive(Default)]
pub struct Plans {
    plans: Mutex<HashMap<(String, String), Shared>>,
    made: AtomicU64,
    woken: AtomicU64,
    busy: Mutex<HashMap<(String, String), Busy>>,
    /// Claims written by a batch, by run UID, as the API returned them.
    written: Mutex<HashMap<String, Instance>>,
    /// Wakes a run's reconcile (the run controller's queue), once the controllers run.
    waker: std::sync::OnceLock<futures::channel::mpsc::UnboundedSender<ObjectRef<Run>>>,
}

/// A pool whose plan is being made or whose batch is being written.
#[derive(Default)]
struct Busy {
    /// The runs whose passes came meanwhile: woken when it ends.
    deferred: Vec<String>,
    /// The runs the batch's plan knew (given an instance or not), and the queue key of
    /// the batch's last run.
    members: HashSet<String>,
    last: Option<(std::cmp::Reverse<i32>, Option<jiff::Timestamp>, String)>,
    /// A run came that is not in the batch and is ahead of its last run: the claims not
    /// sent yet are not sent.
    ahead: bool,
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

    /// Lets batches wake the runs they end for (the run controller reads `ObjectRef`s
    /// from the other end). Without it (reconcile tests) a deferred run waits for its
    /// requeue.
    pub fn set_waker(&self, waker: futures::channel::mpsc::UnboundedSender<ObjectRef<Run>>) {
        let _ = self.waker.set(waker);
    }

    /// Whether `run`'s pass leaves its placement to the pass that is making its pool's
    /// plan or writing its batch (which wakes it when done). Costs no scan.
    pub fn defers(&self, ns: &str, pool: &str, run: &Run) -> bool {
        let mut busy = self.busy.lock().expect("busy");
        let Some(b) = busy.get_mut(&(ns.to_string(), pool.to_string())) else { return false };
        let name = run.name_any();
        let key = queue_key(run);
        if !b.members.contains(&name) && b.last.as_ref().is_some_and(|(p, t, n)| key < (*p, *t, n.as_str())) {
            b.ahead = true;
        }
        b.deferred.push(name);
        true
    }

    /// Marks `pool` of namespace `ns` busy, as the pass making its plan or writing its
    /// batch does, unless it is: its runs' passes defer ([`Self::defers`]) until the guard
    /// is dropped, which wakes them.
    pub fn enter<'p>(&'p self, ns: &str, pool: &str) -> Option<BusyGuard<'p>> {
        let key = (ns.to_string(), pool.to_string());
        let mut busy = self.busy.lock().expect("busy");
        if busy.contains_key(&key) {
            return None;
        }
        busy.insert(key.clone(), Busy::default());
        Some(BusyGuard { plans: self, key })
    }

    /// The claim a batch wrote for the run with UID `uid`, once.
    pub fn take_written(&self, uid: &str) -> Option<Instance> {
        self.written.lock().expect("written").remove(uid)
    }

    /// Forgets what is kept for the run with UID `uid` (it is gone).
    pub fn forget(&self, uid: &str) {
        self.written.lock().expect("written").remove(uid);
    }

    fn wake(&self, ns: &str, runs: impl IntoIterator<Item = String>) {
        for r in runs {
            self.woken.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = self.waker.get() {
                let _ = w.unbounded_send(ObjectRef::new(&r).within(ns));
            }
        }
    }

    /// How many wake-ups of runs this process has asked for (the reconcile tests' loops
    /// play on while there are new ones, as the run controller's queue would).
    pub fn woken(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
    }
}

/// A pool marked busy ([`Plans::enter`]) until dropped, whatever way the pass ends.
pub struct BusyGuard<'p> {
    plans: &'p Plans,
    key: (String, String),
}

impl BusyGuard<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut Busy) -> T) -> T {
        f(self.plans.busy.lock().expect("busy").get_mut(&self.key).expect("held by this guard"))
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let ended = self.plans.busy.lock().map(|mut b| b.remove(&self.key)).ok().flatten();
        if let Some(b) = ended {
            self.plans.wake(&self.key.0, b.deferred);
        }
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
    /// `taken`: an idle copy of an instance a batch of this process has claimed since
    /// (the cache has not caught up with the claim): not idle.
    fn of<I: Borrow<Instance>, R: Borrow<Run>>(
        all: &'a [I],
        runs: &'a [R],
        pool: &str,
        pools: &[&Pool],
        taken: impl Fn(&Instance) -> bool,
    ) -> Self {
        let mut idle = HashMap::new();
        let mut claimed = HashSet::new();
        for i in all.iter().map(Borrow::borrow) {
            let Some(s) = i.status.as_ref() else { continue };
            match (s.phase, s.run.as_deref()) {
                (InstancePhase::Busy, Some(run)) => {
                    claimed.insert(run);
                }
                (InstancePhase::Idle, None) if i.metadata.deletion_timestamp.is_none() && !taken(i) => {
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

/// What a run's pass does, as its pool's plan says ([`pick`]).
#[derive(Debug)]
pub enum Pick {
    /// The run's claim on this instance is written: start there. `announce`: with an
    /// `Assigned` Event of its own (a batch publishes one for all its runs, on the pool).
    Claimed { instance: Box<Instance>, announce: bool },
    /// No idle instance is the run's.
    Nothing,
    /// Another pass is making the pool's plan or writing its batch: it wakes this run
    /// when it is done.
    Deferred,
    /// The claim written for this run failed (the instance changed), or the pool was
    /// busy a moment ago: look again.
    Again,
    /// The run's copy is older than this process's last write of it: look again once
    /// the cache caught up.
    Stale,
}

/// Idle instances of namespace `ns` a batch of this process claimed whose cached copy
/// is older than the claim.
fn taken_by_batches<'c>(ctx: &'c Context, ns: &str) -> impl Fn(&Instance) -> bool + 'c {
    let written = ctx.plans.written.lock().expect("written");
    let names: HashSet<String> = written
        .values()
        .filter(|i| i.metadata.namespace.as_deref() == Some(ns))
        .filter_map(|i| i.metadata.name.clone())
        .collect();
    move |i: &Instance| i.metadata.name.as_ref().is_some_and(|n| names.contains(n)) && ctx.known_stale(i)
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

/// Places `me` in its pool's queue order: from the pool's plan while it holds for `me`,
/// else from a new plan, whose claims this pass writes itself when it places more than
/// `me` (a batch). `run` is `me`'s object; `all` and `runs` are the namespace's
/// instances and runs.
pub async fn pick<I: Borrow<Instance>, R: Borrow<Run>>(
    ctx: &Context,
    run: &Run,
    me: PendingRun,
    pool: Option<&Pool>,
    all: &[I],
    runs: &[R],
) -> Result<Pick, Error> {
    let (ns, pool_name) = (me.namespace.clone(), me.pool.clone());
    let pools = ctx.list_in(&ns, |c| &c.pools).await?;
    let pools: Vec<&Pool> = pools.iter().collect();
    let now = Now::of(all, runs, &pool_name, &pools, taken_by_batches(ctx, &ns));
    let followed = ctx.plans.get(&ns, &pool_name).and_then(|plan| {
        let mut plan = plan.lock().expect("plan");
        let key = queue_key(run);
        // Newcomers besides `me` are planned together (a batch) rather than each
        // extending the plan on its own pass.
        let newcomers = now.waiting.keys().filter(|r| !plan.waiting.contains(**r)).count();
        match plan.answer(&me.name, key, &now)? {
            Answer::Planned(None) => Some(None),
            // The plan was made with the policies of then: the run's own, as it resolves
            // now, must still allow the instance (a Profile may have changed since).
            Answer::Planned(Some(name)) => {
                let inst = all.iter().map(Borrow::borrow).filter(|i| i.metadata.name.as_deref() == Some(name));
                let inst: Vec<&Instance> = inst.collect();
                (pick_instance(&me, &idle_for_matching(&inst, runs, &ns)) == Some(0)).then(|| Some(name.to_string()))
            }
            Answer::Last if newcomers <= 1 => {
                let best = best_left(&me, &plan, &now, all);
                plan.extend(&me.name, key, best);
                Some(best.map(str::to_string))
            }
            Answer::Last => None,
        }
    });
    let choice = match followed {
        Some(choice) => choice,
        None => {
            // One pass at a time makes a pool's plan (and writes its batch); the others
            // wait for it to wake them.
            let Some(busy) = ctx.plans.enter(&ns, &pool_name) else {
                return Ok(if ctx.plans.defers(&ns, &pool_name, run) { Pick::Deferred } else { Pick::Again });
            };
            let plan = make(ctx, pool, &pool_name, &ns, Some((run, me)), all, runs, &now).await?;
            let mine = plan.assigned.get(&run.name_any()).cloned();
            let others = plan.assigned.len() - usize::from(mine.is_some());
            let order = if others > 0 { batch_order(&plan, all, runs) } else { Vec::new() };
            // Every run the plan knew is accounted for by it, those it gives nothing too:
            // only a run it did not know can come ahead of the batch.
            let known = if order.is_empty() { HashSet::new() } else { plan.waiting.clone() };
            ctx.plans.put(&ns, &pool_name, plan);
            if !order.is_empty() {
                return Ok(batch(ctx, &busy, run, pool, known, order).await);
            }
            mine
        }
    };
    let Some(name) = choice else { return Ok(Pick::Nothing) };
    let chosen = all.iter().map(Borrow::borrow).find(|i| i.metadata.name.as_deref() == Some(name.as_str()));
    let chosen = chosen.expect("planned from all");
    // The run must be as current as this process's writes before it takes an instance:
    // a stale copy (e.g. of a run that has already run) claims nothing and starts nothing.
    if !ctx.is_current(run).await? {
        return Ok(Pick::Stale);
    }
    Ok(match claim(ctx, run, chosen).await? {
        Some(claimed) => Pick::Claimed { instance: Box::new(claimed), announce: true },
        // Another run claimed it since the cache's copy: look again.
        None => Pick::Again,
    })
}

/// The runs a plan gives an instance, with it, in queue order.
fn batch_order<'a, I: Borrow<Instance>, R: Borrow<Run>>(
    plan: &Plan,
    all: &'a [I],
    runs: &'a [R],
) -> Vec<(&'a Run, &'a Instance)> {
    let instances: HashMap<&str, &Instance> = all
        .iter()
        .map(Borrow::borrow)
        .filter(|i| plan.taker.contains_key(i.metadata.name.as_deref().unwrap_or_default()))
        .map(|i| (i.metadata.name.as_deref().unwrap_or_default(), i))
        .collect();
    let mut order: Vec<(&Run, &Instance)> = runs
        .iter()
        .map(Borrow::borrow)
        .filter_map(|r| {
            let i = plan.assigned.get(r.metadata.name.as_deref().unwrap_or_default())?;
            Some((r, *instances.get(i.as_str())?))
        })
        .collect();
    order.sort_by(|a, b| queue_key(a.0).cmp(&queue_key(b.0)));
    order
}

/// Writes the claims of `order` ([`BATCH_CONCURRENCY`] at a time; none more once a run
/// the plan did not know (`known`) came ahead of the batch's last), keeps each other run's written claim for its pass
/// ([`Plans::take_written`]) and says what `me` does. The runs left without their claim
/// (a conflict, a run this process has written since the plan's copy) are woken when
/// the pool stops being busy.
async fn batch(
    ctx: &Context,
    busy: &BusyGuard<'_>,
    me: &Run,
    pool: Option<&Pool>,
    known: HashSet<String>,
    order: Vec<(&Run, &Instance)>,
) -> Pick {
    busy.with(|b| {
        b.members = known;
        b.last = order.last().map(|(r, _)| {
            let k = queue_key(r);
            (k.0, k.1, k.2.to_string())
        });
    });
    let me_name = me.name_any();
    let in_batch = order.iter().any(|(r, _)| r.name_any() == me_name);
    let claims: Vec<_> =
        order.into_iter().map(|(r, i)| batch_claim(ctx, busy, r, i, r.name_any() == me_name)).collect();
    let outcomes: Vec<_> = futures::stream::iter(claims).buffer_unordered(BATCH_CONCURRENCY).collect().await;
    let mut pick = if in_batch { Pick::Again } else { Pick::Nothing };
    let (mut left, mut placed) = (Vec::new(), 0);
    for (name, written) in outcomes {
        match written {
            Some(Some(w)) => {
                pick = Pick::Claimed { instance: Box::new(w), announce: false };
                placed += 1;
            }
            Some(None) => placed += 1,
            None if name != me_name => left.push(name),
            None => {}
        }
    }
    // One Event for the batch instead of one per run.
    if let Some(pool) = pool.filter(|_| placed > 0) {
        let note = format!(
            "placed {placed} waiting run(s) on idle instances in one batch; {} left to their own pass",
            left.len()
        );
        ctx.event(pool, false, Reason::Assigned, note).await;
    }
    busy.with(|b| b.deferred.extend(left));
    pick
}

/// One claim of a batch, unless a run ahead of the batch came, or this process wrote the
/// run or the instance since the copies the plan was made from, or the run (if it is not
/// the batch's own, whose pass saw to that) waits for an instance provisioned for it
/// (its own pass claims, and lets that one go). The run's name and, if its claim was
/// written, the claim (kept for its pass if the run is not `mine`).
async fn batch_claim(
    ctx: &Context,
    busy: &BusyGuard<'_>,
    r: &Run,
    i: &Instance,
    mine: bool,
) -> (String, Option<Option<Instance>>) {
    let name = r.name_any();
    let provisioning = r.status.as_ref().is_some_and(|s| s.provisioning_instance.is_some());
    // (A run with a claim of this process its status does not show yet: `claim` refuses.)
    let skip = busy.with(|b| b.ahead) || ctx.known_stale(r) || (!mine && provisioning) || ctx.known_stale(i);
    if skip {
        return (name, None);
    }
    match claim(ctx, r, i).await {
        // Kept for the run's pass at once: the instance's change wakes it.
        Ok(Some(w)) if !mine => {
            ctx.plans.written.lock().expect("written").insert(r.uid().unwrap_or_default(), w);
            (name, Some(None))
        }
        Ok(written) => (name, written.map(Some)),
        Err(e) => {
            tracing::warn!(run = %name, instance = %i.name_any(), error = %e, "a batch's claim failed");
            (name, None)
        }
    }
}

/// Writes `run`'s claim on the idle instance `chosen` (the copy the decision was made
/// on): conditional on its resourceVersion, so that if anything changed the instance
/// since (another run claimed it) it fails with 409, and `None` is returned; `None`
/// too when this process has a claim for the run already that its status does not show
/// yet. An auto
/// idle spell the claim ends is settled with it, and the pool learns the gap.
pub async fn claim(ctx: &Context, run: &Run, chosen: &Instance) -> Result<Option<Instance>, Error> {
    let now = ctx.now();
    let (uid, name) = (run.uid().unwrap_or_default(), run.name_any());
    // This process claims one instance at a time for a run: a batch and the run's own
    // pass that both planned for it cannot both write a claim.
    if !ctx.begin_claim(&uid, &chosen.name_any()) {
        return Ok(None);
    }
    let mut ist = chosen.status.clone().unwrap_or_default();
    let own = chosen.provisioned_for() == Some(name.as_str());
    // An auto spell a run other than the instance's own ends: what 5 minutes would have
    // cost on it, with the claim.
    if let Some(record) = spell::current(&ist).filter(|_| !own) {
        let record = record.clone();
        spell::saving_reused(&mut ist, &record, now);
    }
    crate::core::instance::claim(&mut ist, JobRef::of(run), now);
    let claimed = match ctx.write_status(chosen, &ist).await {
        Ok(i) => i,
        Err(Error::Kube(e)) if is_conflict(&e) => {
            // Not written: the run claims nothing.
            ctx.set_claim_in_flight(&uid, None);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let backend = chosen.status.as_ref().and_then(|s| s.offer.as_ref()).map(|o| o.backend.as_str());
    ctx.metrics.run_placed(backend.unwrap_or_default(), !own);
    // Under `idleDuration: auto`, the gap this claim ended is what the pool learns from.
    // (Not when the run takes the machine it launched: that wait was a boot, not a gap.)
    if let Some((pool, record)) = chosen.status.as_ref().and_then(|s| Some((s.pool.as_deref()?, spell::current(s)?))) {
        let ns = run.namespace().unwrap_or_default();
        idle_gaps::record(ctx, &ns, pool, &record.shape, |g| match own {
            true => spell::close_launched_for(g, record),
            false => spell::close_reused(g, record, ctx.now()),
        })
        .await?;
    }
    Ok(Some(claimed))
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
    let now = Now::of(all, runs, &name, &pools, taken_by_batches(ctx, &ns));
    make(ctx, Some(pool), &name, &ns, None, all, runs, &now).await
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
    let mut idle = idle_for_matching(all, runs, ns);
    idle.retain(|i| now.idle.contains_key(i.name.as_str()));
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
