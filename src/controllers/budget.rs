//! Budgets in the controllers: the check before a launch (a pool's budget, and the
//! budgets of the namespace's profiles that cover the instance), and `enforce: terminate`
//! for a pool's budget, run by the pool controller. The rules are in
//! [`crate::core::budget`].

use std::collections::HashSet;

use jiff::Timestamp;
use kube::ResourceExt;

use super::context::PendingLaunch;
use super::observe::instance_pool;
use super::{Context, Error};
use crate::api::instance::Instance;
use crate::api::pool::{BudgetEnforce, BudgetSpec, Pool};
use crate::api::profile::BudgetScope;
use crate::api::reasons::Reason;
use crate::core::budget::{over_budget, Covers};

/// The profile an instance is launched under: its own `spec.profile`, else its pool's.
fn profile_of<'a>(i: &'a Instance, pools: &'a [Pool]) -> Option<&'a str> {
    i.spec.profile.as_deref().or_else(|| {
        let pool = instance_pool(i).or(i.spec.pool.as_deref())?;
        pools.iter().find(|p| p.name_any() == pool)?.spec.profile.as_deref()
    })
}

/// Why launching `inst` (of pool `pool_name`) at `price` $/hour would go beyond a budget
/// that covers it — its pool's, or a profile's of its namespace (scope `Profile` when it
/// is launched under that profile, `Namespace` always) — given the namespace's instances
/// `all`; `None` when every one holds, and then the launch is recorded as under way (see
/// [`Context::approve_launch`]) until the cache shows its offer.
pub async fn check_launch(
    ctx: &Context,
    inst: &Instance,
    pool_name: &str,
    all: &[std::sync::Arc<Instance>],
    price: f64,
    now: Timestamp,
) -> Result<Option<String>, Error> {
    let ns = inst.namespace().unwrap_or_default();
    let pools = ctx.list_in(&ns, |c| &c.pools).await?;
    let profile = profile_of(inst, &pools).map(str::to_string);
    let mut budgets: Vec<(Covers, BudgetSpec)> = Vec::new();
    if let Some(b) = pools.iter().find(|p| p.name_any() == pool_name).and_then(|p| p.spec.budget.clone()) {
        budgets.push((Covers::Pool(pool_name.to_string()), b));
    }
    for p in ctx.list_in(&ns, |c| &c.profiles).await? {
        let Some(b) = p.spec.budget.clone() else { continue };
        let covers = match b.scope.unwrap_or_default() {
            BudgetScope::Profile => Covers::Profile(p.name_any()),
            BudgetScope::Namespace => Covers::Namespace(p.name_any()),
        };
        if covers.includes(pool_name, profile.as_deref()) {
            budgets.push((covers, b.limits));
        }
    }
    if budgets.is_empty() {
        return Ok(None);
    }
    let me = inst.name_any();
    let shown: HashSet<String> =
        all.iter().filter(|i| i.status.as_ref().is_some_and(|s| s.offer.is_some())).map(|i| i.name_any()).collect();
    let launch = PendingLaunch { price, pool: pool_name.to_string(), profile: profile.clone() };
    ctx.approve_launch(&ns, &me, launch, &shown, |pending| {
        for (covers, budget) in &budgets {
            let members: Vec<&Instance> = all
                .iter()
                .map(|i| &**i)
                .filter(|i| i.name_any() != me)
                .filter(|i| covers.includes(instance_pool(i).unwrap_or_default(), profile_of(i, &pools)))
                .collect();
            if let Some(why) = over_budget(budget, &members, pending(covers), price, now)? {
                return Ok(Some(format!("{} {why}", covers.owner())));
            }
        }
        Ok(None)
    })
}

/// `budget.enforce: terminate` of `pool`'s budget: ends the instances that must go for it
/// to hold again (each with a status write conditional on the copy looked at, so a run
/// claiming an idle one meanwhile keeps it, and the next pass looks again), and says when
/// to look next: the moment the spend window fills up at the pool's present $/hour.
pub async fn enforce(
    pool: &Pool,
    all: &[std::sync::Arc<Instance>],
    ctx: &Context,
) -> Result<Option<std::time::Duration>, Error> {
    let Some(budget) = pool.spec.budget.as_ref().filter(|b| b.enforce == Some(BudgetEnforce::Terminate)) else {
        return Ok(None);
    };
    let name = pool.name_any();
    let members: Vec<&Instance> =
        all.iter().map(|i| &**i).filter(|i| instance_pool(i) == Some(name.as_str())).collect();
    let now = ctx.now();
    let (end, why) = crate::core::budget::to_end(budget, &members, now)?;
    for inst in end {
        let msg = format!("pool {name}'s {why}; budget.enforce: terminate ends this instance");
        super::instance::end_if_unchanged(inst, Reason::BudgetExceeded, msg, ctx).await?;
    }
    Ok(crate::core::budget::spend_reached_at(budget, &members, now).map(|t| super::instance::until(now, t)))
}
