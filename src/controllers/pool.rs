//! The `Pool` controller: counts the pool's instances by phase and its $/hour, and keeps
//! its warm headroom (`spec.warm`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::observe::{instance_pool, instances};
use super::{is_conflict, is_not_found, Context, Error};
use crate::api::conditions::{condition, AT_CAPACITY, READY, WARM};
use crate::api::instance::{Instance, InstancePhase, InstanceSpec, INSTANCE_FINALIZER, POOL_LABEL, WARM_LABEL};
use crate::api::pool::{Pool, PoolStatus, WarmStatus};
use crate::api::reasons::Reason;
use crate::core::pool::{fits, occupying, pool_counts, room};

/// Reconciles one `Pool`: writes counts and conditions when they changed.
pub async fn reconcile(pool: Arc<Pool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let all = instances(&ctx, &ns).await?;
    let mine = || all.iter().map(|i| &**i).filter(|i| instance_pool(i) == Some(&name));
    let mut st = pool_counts(mine());
    st.observed_generation = pool.metadata.generation;
    let previous = pool.status.clone().unwrap_or_default();
    // Written by the instance and run controllers (see `idle_gaps`); carried over, on the
    // resourceVersion this write is conditional on.
    st.idle_gaps = previous.idle_gaps.clone();
    // Creation's count (see `core::pool`): every instance of the pool not ended.
    let holding = occupying(mine(), &name);
    let at_capacity = !fits(pool.spec.max_instances, holding, 0);
    let now = ctx.now();
    let warm = keep_warm(&pool, &all, holding as u32, &ctx).await?;
    let enforce_again = super::budget::enforce(&pool, &all, &ctx).await?;
    let message = match pool.spec.max_instances {
        Some(m) => format!("{holding} of {m} instances in use"),
        None => format!("{holding} instances; no limit"),
    };
    st.conditions = vec![
        condition(
            &previous.conditions,
            READY,
            true,
            Reason::Reconciled,
            "counts are up to date",
            pool.metadata.generation,
            now,
        ),
        condition(
            &previous.conditions,
            AT_CAPACITY,
            at_capacity,
            if at_capacity { Reason::MaxInstancesReached } else { Reason::HasRoom },
            message,
            pool.metadata.generation,
            now,
        ),
    ];
    // The pool also wakes when a warm window next opens or closes.
    let mut requeue = RECHECK;
    if let Some(Warmth { status: w, message, invalid, relaunch_at }) = warm {
        let ok = w.ready >= w.wanted && invalid.is_none();
        let (reason, message) = match invalid {
            Some(e) => (Reason::InvalidWindow, format!("{e}; this window is ignored; {message}")),
            None if ok => (Reason::Ready, message),
            None if w.starting > 0 => (Reason::Starting, message),
            None if relaunch_at.is_some() => (Reason::WarmLaunchFailed, message),
            None => (Reason::NoRoom, message),
        };
        for t in w.next_change.iter().map(|t| t.0).chain(relaunch_at) {
            requeue = requeue.min(super::instance::until(now, t));
        }
        let c = condition(&previous.conditions, WARM, ok, reason, message, pool.metadata.generation, now);
        st.conditions.push(c);
        st.warm = Some(w);
    }
    // Skip writes that would change nothing but timestamps, and the spend, which grows
    // every second: it is refreshed with any other change, and at least hourly.
    let cost = super::pool_cost::current(&name, previous.cost.as_ref(), &all, now);
    let stale = super::pool_cost::is_stale(previous.cost.as_ref(), &cost, st.price_per_hour, now);
    st.cost = previous.cost.clone();
    if !same_except_times(&previous, &st) || stale {
        // A change of the counts alone (its instances', its cost's runs) waits for the
        // interval since the last write: the pool looks again then, and writes the
        // counts as they are by that time.
        let counts = counts_only(&previous, &st) && previous.cost.is_some();
        let due = if counts { ctx.counts_due(&ns, &name) } else { Duration::ZERO };
        if due.is_zero() {
            st.cost = Some(cost);
            ctx.write_status(&*pool, &st).await?;
            ctx.pool_written(&ns, &name);
        } else {
            requeue = requeue.min(due);
        }
    }
    Ok(Action::requeue(enforce_again.map_or(requeue, |d| d.min(requeue))))
}

/// How often a pool is looked at again when nothing it watches changes.
const RECHECK: Duration = Duration::from_secs(300);

/// The pool's warm headroom as [`keep_warm`] left it.
struct Warmth {
    status: WarmStatus,
    /// A sentence on it, for the `Warm` condition.
    message: String,
    /// The first window that is not valid, named by field and value.
    invalid: Option<crate::api::resources::SpecError>,
    /// When a warm instance is next launched, while the back-off after a failed launch
    /// holds launches back.
    relaunch_at: Option<jiff::Timestamp>,
}

/// Keeps the idle warm instances the pool wants now (`spec.warm.minIdle`, more while a
/// window is open): launches the missing ones (within `maxInstances`; `holding`
/// instances of the pool hold capacity now) and ends idle ones beyond it. `None` without
/// `spec.warm`.
async fn keep_warm(pool: &Pool, all: &[Arc<Instance>], holding: u32, ctx: &Context) -> Result<Option<Warmth>, Error> {
    let Some(warm) = pool.spec.warm.as_ref() else { return Ok(None) };
    let (wanted, invalid) = crate::core::warm::wanted(warm, ctx.now());
    let min_idle = wanted.min_idle;
    let name = pool.name_any();
    let ns = pool.namespace().unwrap_or_default();
    let phase = |i: &Instance| i.status.as_ref().map_or(InstancePhase::Pending, |s| s.phase);
    let mine: Vec<&Instance> = all
        .iter()
        .map(|i| &**i)
        .filter(|i| i.labels().get(WARM_LABEL) == Some(&name) && i.metadata.deletion_timestamp.is_none())
        .collect();
    let idle: Vec<&Instance> = mine.iter().copied().filter(|i| phase(i) == InstancePhase::Idle).collect();
    let starting = mine.iter().filter(|i| matches!(phase(i), InstancePhase::Pending | InstancePhase::Provisioning));
    let starting = starting.count() as u32;
    let ready = idle.len() as u32;
    // Beyond what is wanted now (a window closed): warm instances not launched yet are
    // ended first, by a status write conditional on the copy looked at, as the instance
    // controller writes Provisioning before a launch: one of the two wins, and an ended
    // instance is never launched. (Removed with the other ended ones on the next pass.)
    let excess = (ready + starting).saturating_sub(min_idle) as usize;
    let mut unlaunched: Vec<&Instance> =
        mine.iter().copied().filter(|i| i.status.as_ref().is_none_or(crate::core::instance::unlaunched)).collect();
    unlaunched.sort_by_key(|i| std::cmp::Reverse(i.name_any()));
    let mut ended = 0;
    for inst in unlaunched.into_iter().take(excess) {
        let why = format!("pool {name} keeps {min_idle} warm now; this one was not launched yet and is not needed");
        if super::instance::end_if_unchanged(inst, Reason::WarmSurplus, why, ctx).await? {
            ended += 1;
        }
    }
    let starting = starting - ended;
    let room = room(pool.spec.max_instances, holding as usize, 0).map_or(u32::MAX, |r| r as u32);
    let missing = min_idle.saturating_sub(ready + starting);
    // After a warm instance failed to launch, the next waits out a back-off: without it a
    // pool whose warm resources no offer fits (or whose Backend is being deleted) would
    // create, fail and remove an instance on every pass, as fast as the API answers.
    // The failed one stays (with its reason) until the back-off has passed.
    let backoff = crate::core::warm::relaunch_backoff(mine.iter().copied(), ctx.now());
    let launch = match backoff {
        Some(_) => 0,
        None => missing.min(room),
    };
    let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &ns);
    let taken: std::collections::HashSet<String> = all.iter().map(|i| i.name_any()).collect();
    let mut next = 0;
    for _ in 0..launch {
        let inst = loop {
            let candidate = format!("{name}-warm-{next}");
            next += 1;
            if !taken.contains(&candidate) {
                break candidate;
            }
        };
        create_warm(&api, pool, &inst).await?;
    }
    // Idle beyond minIdle: ended with a status write conditional on the copy looked at,
    // so that one a run claims meanwhile is left alone (the claim wins, or this does).
    // One a waiting run of the pool is about to take is not surplus: ending it would make
    // that run launch (and wait for) another machine.
    // (Looked up only when there is a surplus: it resolves every waiting run's policy.)
    let wanted_by_runs = match ready > min_idle {
        true => taken_by_waiting_runs(pool, all, ctx).await?,
        false => Default::default(),
    };
    let mut surplus: Vec<&Instance> =
        idle.iter().copied().filter(|i| !wanted_by_runs.contains(&i.name_any())).collect();
    surplus.sort_by_key(|i| std::cmp::Reverse(i.name_any()));
    for inst in surplus.into_iter().take(ready.saturating_sub(min_idle) as usize) {
        let why = format!("pool {name} keeps {min_idle} warm now; this one is beyond that");
        super::instance::end_if_unchanged(inst, Reason::WarmSurplus, why, ctx).await?;
    }
    // Ended warm instances are removed, so that their names do not pile up (failed ones
    // once the back-off after them has passed).
    let ended = mine.iter().filter(|i| match phase(i) {
        InstancePhase::Terminated => true,
        InstancePhase::Failed => backoff.is_none(),
        _ => false,
    });
    for inst in ended {
        match api.delete(&inst.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut message = if let Some((inst, until)) = backoff {
        let why = inst.status.as_ref().and_then(|s| crate::api::conditions::find(&s.conditions, READY));
        let why = why.map_or_else(String::new, |c| format!(" ({}: {})", c.reason, c.message));
        format!(
            "{ready} of {min_idle} warm instances idle, {starting} starting; warm instance {} failed to launch{why}; \
             the next is launched at {}",
            inst.name_any(),
            until.round(jiff::Unit::Second).unwrap_or(until)
        )
    } else if launch < missing {
        format!(
            "{ready} of {min_idle} warm instances idle, {starting} starting; maxInstances ({}) leaves no room for {} \
             more",
            pool.spec.max_instances.unwrap_or_default(),
            missing - launch
        )
    } else {
        format!("{ready} of {min_idle} warm instances idle, {} starting", starting + launch)
    };
    if !wanted.open.is_empty() {
        message.push_str(&format!("; window open: {}", wanted.open.join(", ")));
    }
    if let Some(t) = wanted.next_change {
        message.push_str(&format!("; next window change at {t}"));
    }
    let status = WarmStatus {
        wanted: min_idle,
        ready,
        starting: starting + launch,
        open_windows: wanted.open,
        next_change: wanted.next_change.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
    };
    let relaunch_at = backoff.map(|(_, until)| until);
    Ok(Some(Warmth { status, message, invalid, relaunch_at }))
}

/// The idle instances of `pool` its waiting runs take next: the runs' own queue-order
/// assignment ([`plan_now`](super::placement::plan_now)) over the pool's waiting runs,
/// each with its own requirements and policy, and the idle instances as the runs see
/// them.
async fn taken_by_waiting_runs(
    pool: &Pool,
    all: &[Arc<Instance>],
    ctx: &Context,
) -> Result<std::collections::HashSet<String>, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let runs = super::observe::runs_shared(ctx, &ns).await?;
    let plan = super::placement::plan_now(ctx, pool, all, &runs).await?;
    Ok(plan.assigned().map(|(_, i)| i.to_string()).collect())
}

/// Creates warm instance `name` of `pool`: its resources and policies, never idling out.
async fn create_warm(api: &Api<Instance>, pool: &Pool, name: &str) -> Result<(), Error> {
    let warm = pool.spec.warm.clone().unwrap_or_default();
    let mut policy = warm.policy.unwrap_or_default();
    policy.idle_duration = Some("off".into());
    let spec = InstanceSpec { pool: Some(pool.name_any()), resources: warm.resources, policy, ..Default::default() };
    let mut inst = Instance::new(name, spec);
    inst.metadata.namespace = pool.namespace();
    inst.metadata.finalizers = Some(vec![INSTANCE_FINALIZER.to_string()]);
    inst.metadata.labels =
        Some(BTreeMap::from([(POOL_LABEL.to_string(), pool.name_any()), (WARM_LABEL.to_string(), pool.name_any())]));
    match api.create(&PostParams::default(), &inst).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `new` differs from `old` in its instance counts alone (see
/// [`super::context::COUNTS_INTERVAL`]).
fn counts_only(old: &PoolStatus, new: &PoolStatus) -> bool {
    let with_old_counts = PoolStatus {
        total: old.total,
        provisioning: old.provisioning,
        idle: old.idle,
        busy: old.busy,
        terminating: old.terminating,
        failed: old.failed,
        ..new.clone()
    };
    same_except_times(old, &with_old_counts)
}

fn same_except_times(a: &PoolStatus, b: &PoolStatus) -> bool {
    let strip = |s: &PoolStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

/// Where a pool-status update reads the pool first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstRead {
    /// The watch cache's copy (a stale one only costs a conflict and a fresh read).
    Cache,
    /// The API's.
    Api,
}

/// What a pool-status update does when it met a conflict on every one of its tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// Logs a warning naming `what` was not written, and succeeds.
    Warn(&'static str),
    /// Returns the conflict, for the caller's reconcile to be retried.
    Fail,
}

/// How many times a pool-status write that met a conflict is made.
const STATUS_TRIES: usize = 5;

/// Applies `change` to the status of pool `pool` of namespace `ns` and writes it,
/// conditional on the resourceVersion it was computed from: a 409 (another writer came
/// first) reads the pool again from the API and applies `change` to the new status, up
/// to [`STATUS_TRIES`] writes, then does as `give_up` says. `change` returns whether
/// there is anything to write (false: done, nothing written). A pool that does not exist
/// is nothing to update.
pub async fn update_status(
    ctx: &Context,
    ns: &str,
    pool: &str,
    first: FirstRead,
    give_up: GiveUp,
    change: impl Fn(&mut PoolStatus) -> bool,
) -> Result<(), Error> {
    let api: Api<Pool> = Api::namespaced(ctx.client.clone(), ns);
    let mut latest = match first {
        FirstRead::Cache => ctx.get_in(ns, pool, |c| &c.pools, |_| true).await?,
        FirstRead::Api => api.get_opt(pool).await?,
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let Some(p) = latest else { return Ok(()) };
        let mut st = p.status.clone().unwrap_or_default();
        if !change(&mut st) {
            return Ok(());
        }
        match ctx.write_status(&p, &st).await {
            Ok(_) => return Ok(()),
            Err(Error::Kube(e)) if is_conflict(&e) && tries < STATUS_TRIES => latest = api.get_opt(pool).await?,
            Err(e) => {
                return match (give_up, &e) {
                    (GiveUp::Warn(what), Error::Kube(k)) if is_conflict(k) => {
                        tracing::warn!(namespace = ns, pool, what, "pool status not updated: the pool kept changing");
                        Ok(())
                    }
                    _ => Err(e),
                }
            }
        }
    }
}
