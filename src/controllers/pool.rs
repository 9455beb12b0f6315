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
use crate::api::conditions::condition;
use crate::api::instance::{Instance, InstancePhase, InstanceSpec, INSTANCE_FINALIZER, POOL_LABEL, WARM_LABEL};
use crate::api::pool::{Pool, PoolStatus, WarmStatus};
use crate::core::pool::pool_counts;

/// Reconciles one `Pool`: writes counts and conditions when they changed.
pub async fn reconcile(pool: Arc<Pool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let all = instances(&ctx, &ns).await?;
    let mut st = pool_counts(all.iter().filter(|i| instance_pool(i) == Some(&name)));
    st.observed_generation = pool.metadata.generation;
    let previous = pool.status.clone().unwrap_or_default();
    // Written by the instance and run controllers (see `idle_gaps`); carried over, on the
    // resourceVersion this write is conditional on.
    st.idle_gaps = previous.idle_gaps.clone();
    let holding = (st.provisioning + st.idle + st.busy + st.terminating) as usize;
    let at_capacity = pool.spec.max_instances.is_some_and(|m| holding >= m as usize);
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
            "Ready",
            true,
            "Reconciled",
            "counts are up to date",
            pool.metadata.generation,
            now,
        ),
        condition(
            &previous.conditions,
            "AtCapacity",
            at_capacity,
            if at_capacity { "MaxInstancesReached" } else { "HasRoom" },
            message,
            pool.metadata.generation,
            now,
        ),
    ];
    if let Some((w, message)) = warm {
        let ok = w.ready >= w.wanted;
        let reason = if ok {
            "Ready"
        } else if w.starting > 0 {
            "Starting"
        } else {
            "NoRoom"
        };
        let c = condition(&previous.conditions, "Warm", ok, reason, message, pool.metadata.generation, now);
        st.conditions.push(c);
        st.warm = Some(w);
    }
    // Skip writes that would change nothing but timestamps, and the spend, which grows
    // every second: it is refreshed with any other change, and at least hourly.
    let cost = super::pool_cost::current(&name, previous.cost.as_ref(), &all, now);
    let stale = super::pool_cost::is_stale(previous.cost.as_ref(), &cost, st.price_per_hour, now);
    st.cost = previous.cost.clone();
    if !same_except_times(&previous, &st) || stale {
        st.cost = Some(cost);
        ctx.write_status(&*pool, &st).await?;
    }
    Ok(Action::requeue(enforce_again.map_or(RECHECK, |d| d.min(RECHECK))))
}

/// How often a pool is looked at again when nothing it watches changes.
const RECHECK: Duration = Duration::from_secs(300);

/// Keeps `spec.warm.minIdle` idle warm instances: launches the missing ones (within
/// `maxInstances`; `holding` instances of the pool hold capacity now) and ends idle ones
/// beyond it. Returns the headroom and a sentence on it; `None` without `spec.warm`.
async fn keep_warm(
    pool: &Pool,
    all: &[Instance],
    holding: u32,
    ctx: &Context,
) -> Result<Option<(WarmStatus, String)>, Error> {
    let Some(warm) = pool.spec.warm.as_ref() else { return Ok(None) };
    let name = pool.name_any();
    let ns = pool.namespace().unwrap_or_default();
    let phase = |i: &Instance| i.status.as_ref().map_or(InstancePhase::Pending, |s| s.phase);
    let mine: Vec<&Instance> = all
        .iter()
        .filter(|i| i.labels().get(WARM_LABEL) == Some(&name) && i.metadata.deletion_timestamp.is_none())
        .collect();
    let idle: Vec<&Instance> = mine.iter().copied().filter(|i| phase(i) == InstancePhase::Idle).collect();
    let starting = mine.iter().filter(|i| matches!(phase(i), InstancePhase::Pending | InstancePhase::Provisioning));
    let starting = starting.count() as u32;
    let ready = idle.len() as u32;
    let room = pool.spec.max_instances.map_or(u32::MAX, |m| m.saturating_sub(holding));
    let missing = warm.min_idle.saturating_sub(ready + starting);
    let launch = missing.min(room);
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
    let mut surplus: Vec<&Instance> = idle.clone();
    surplus.sort_by_key(|i| std::cmp::Reverse(i.name_any()));
    for inst in surplus.into_iter().take(ready.saturating_sub(warm.min_idle) as usize) {
        let why = format!("pool {name} keeps {} warm; this one is beyond that", warm.min_idle);
        super::instance::end_if_unchanged(inst, "WarmSurplus", why, ctx).await?;
    }
    // Ended warm instances are removed, so that their names do not pile up.
    for inst in mine.iter().filter(|i| matches!(phase(i), InstancePhase::Terminated | InstancePhase::Failed)) {
        match api.delete(&inst.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let message = if launch < missing {
        format!(
            "{ready} of {} warm instances idle, {starting} starting; maxInstances ({}) leaves no room for {} more",
            warm.min_idle,
            pool.spec.max_instances.unwrap_or_default(),
            missing - launch
        )
    } else {
        format!("{ready} of {} warm instances idle, {} starting", warm.min_idle, starting + launch)
    };
    Ok(Some((WarmStatus { wanted: warm.min_idle, ready, starting: starting + launch }, message)))
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
