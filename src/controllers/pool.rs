//! The `Pool` controller: counts the pool's instances by phase and its $/hour.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::observe::{instance_pool, instances};
use super::{Context, Error};
use crate::api::conditions::condition;
use crate::api::pool::{Pool, PoolStatus};
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
    // Skip writes that would change nothing but timestamps.
    if !same_except_times(&previous, &st) {
        ctx.write_status(&*pool, &st).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
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
