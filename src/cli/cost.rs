//! `kubectl pool cost`: what the namespace's pools spent, from their instances' statuses
//! and, for the instances deleted since, from each pool's `status.cost.deleted`.
//!
//! The figures are [`Spend`]'s, as the pool controller sums them ([`spend_of`]): an
//! instance's status records when its machine was launched and confirmed gone and how
//! its time split into busy and idle spells (`status.usage`); at its offer's price that
//! is its cost, right for spot and for machines that ended outside kpool (the end is when
//! kpool saw it gone). Deleted instances show as one `(deleted)` line per pool. With
//! `--since`, an instance counts for the part of its life inside the window, its busy and
//! idle seconds in proportion; runs and savings carry no times, so only instances
//! launched inside the window count them, and deleted instances are left out.
//!
//! Under `idleDuration: auto`, the last line says what auto saved against a fixed
//! 5-minute idle duration on the idle spells it could settle (those auto ended before 5
//! minutes once their pool saw whether a run would have come: `status.cost.settledLaterVs5m`),
//! and how many it could not yet.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::output::table;
use super::{CliError, CostArgs, Format, Term};
use crate::api::instance::Instance;
use crate::api::pool::{Pool, Spend};
use crate::core::pool::spend_within;

/// Groups key: pool, backend, instance type; deleted instances: pool, [`DELETED`], "".
pub type Key = (String, String, String);

/// The backend column of a pool's deleted instances.
pub const DELETED: &str = "(deleted)";

/// What each instance spent inside `[since, now]`, grouped, plus (without `since`) each
/// pool's deleted instances. An instance already folded into its pool's deleted figures
/// (its object not gone yet) counts there only.
pub fn report(
    instances: &[Instance],
    pools: &[Pool],
    since: Option<Timestamp>,
    now: Timestamp,
) -> BTreeMap<Key, Spend> {
    let mut out: BTreeMap<Key, Spend> = BTreeMap::new();
    let cost = |pool: &str| pools.iter().find(|p| p.name_any() == pool).and_then(|p| p.status.as_ref()?.cost.as_ref());
    for inst in instances {
        let Some(st) = inst.status.as_ref() else { continue };
        let Some(offer) = st.offer.as_ref() else { continue };
        let pool = st.pool.clone().unwrap_or_default();
        if since.is_none() && inst.uid().is_some_and(|u| cost(&pool).is_some_and(|c| c.recently_deleted.contains(&u))) {
            continue;
        }
        let spend = spend_within(inst, since, now);
        if spend.instances == 0 {
            continue;
        }
        out.entry((pool, offer.backend.clone(), offer.instance_type.clone())).or_default().add(&spend);
    }
    if since.is_none() {
        for p in pools {
            let Some(c) = p.status.as_ref().and_then(|s| s.cost.as_ref()).filter(|c| c.deleted.instances > 0) else {
                continue;
            };
            out.entry((p.name_any(), DELETED.into(), String::new())).or_default().add(&c.deleted);
        }
    }
    out
}

/// Adds to `total` the spells `pools` settled against 5 minutes after their instances
/// were gone (`status.cost.settledLaterVs5m`): counted as settled, no longer as left out.
pub fn add_settled_later<'a>(total: &mut Spend, pools: impl IntoIterator<Item = &'a Pool>) {
    for p in pools {
        let Some(later) = p.status.as_ref().and_then(|s| s.cost.as_ref()).map(|c| &c.settled_later_vs_5m) else {
            continue;
        };
        total.saved_vs_5m_dollars = round(total.saved_vs_5m_dollars + later.dollars);
        total.settled_vs_5m += later.spells;
        total.unsettled_vs_5m = total.unsettled_vs_5m.saturating_sub(later.spells);
    }
}

/// `auto saved $X vs 5m …`, or nothing when no auto spell ended.
pub fn saved_line(total: &Spend) -> Option<String> {
    if total.settled_vs_5m + total.unsettled_vs_5m == 0 {
        return None;
    }
    let saved = total.saved_vs_5m_dollars;
    let verb = if saved < 0.0 { "lost" } else { "saved" };
    let mut line = format!("auto {verb} ${:.2} vs 5m over {} idle spells", saved.abs(), total.settled_vs_5m);
    if total.unsettled_vs_5m > 0 {
        line += &format!(
            "; {} spells auto ended before 5 minutes are not counted yet (until a run of their shape launches a machine, 5m's cost depends on whether one would have come)",
            total.unsettled_vs_5m
        );
    }
    Some(line)
}

/// `cost`.
pub async fn cost(args: &CostArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let instances = Api::<Instance>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let pools = Api::<Pool>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let now = Timestamp::now();
    let since = match args.since {
        Some(d) => Some(
            now.checked_sub(jiff::SignedDuration::try_from(d).map_err(|e| CliError::Failed(e.to_string()))?)
                .map_err(|e| CliError::Failed(format!("--since reaches too far back: {e}")))?,
        ),
        None => None,
    };
    let mut lines = report(&instances, &pools, since, now);
    lines.retain(|(pool, _, _), _| args.pool.as_ref().is_none_or(|p| p == pool));
    let mut total = Spend::default();
    for l in lines.values() {
        total.add(l);
    }
    if since.is_none() {
        let chosen = pools.iter().filter(|p| args.pool.as_ref().is_none_or(|n| *n == p.name_any()));
        add_settled_later(&mut total, chosen);
    }
    let reuse = |l: &Spend| if l.runs == 0 { None } else { Some(l.reused_runs as f64 / l.runs as f64) };
    if args.output == Format::Json {
        let json = |l: &Spend| {
            serde_json::json!({
                "instances": l.instances, "spend": round(l.dollars), "busySpend": round(l.busy_dollars),
                "idleSpend": round(l.idle_dollars), "runs": l.runs, "reusedRuns": l.reused_runs, "reuseRate": reuse(l),
                "savedVs5m": round(l.saved_vs_5m_dollars), "settledVs5m": l.settled_vs_5m,
                "unsettledVs5m": l.unsettled_vs_5m,
            })
        };
        let items: Vec<serde_json::Value> = lines
            .iter()
            .map(|((pool, backend, itype), l)| {
                let mut v = json(l);
                v["pool"] = pool.clone().into();
                if backend == DELETED {
                    v["deleted"] = true.into();
                } else {
                    v["backend"] = backend.clone().into();
                    v["instanceType"] = itype.clone().into();
                }
                v
            })
            .collect();
        let doc = serde_json::json!({"since": since.map(|s| s.to_string()), "items": items, "total": json(&total)});
        let out = serde_json::to_string_pretty(&doc).map_err(|e| CliError::Failed(e.to_string()))?;
        writeln!(term.out, "{out}")?;
        return Ok(());
    }
    if lines.is_empty() {
        writeln!(term.out, "No instance with a launched machine in namespace {namespace}.")?;
        return Ok(());
    }
    let row = |pool: &str, backend: &str, itype: &str, l: &Spend| {
        vec![
            pool.to_string(),
            backend.to_string(),
            itype.to_string(),
            l.instances.to_string(),
            format!("${:.2}", l.dollars),
            format!("${:.2}", l.idle_dollars),
            l.runs.to_string(),
            reuse(l).map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
        ]
    };
    let mut rows: Vec<Vec<String>> = lines.iter().map(|((p, b, t), l)| row(p, b, t, l)).collect();
    rows.push(row("TOTAL", "", "", &total));
    let header = ["POOL", "BACKEND", "TYPE", "INSTANCES", "SPEND", "IDLE SPEND", "RUNS", "REUSED"];
    write!(term.out, "{}", table(&header, &rows))?;
    if let Some(line) = saved_line(&total) {
        writeln!(term.out, "{line}")?;
    }
    Ok(())
}

fn round(dollars: f64) -> f64 {
    (dollars * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::instance::{InstanceStatus, Usage};
    use crate::core::instance::accrued_within;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn since_counts_the_part_of_a_life_inside_the_window_busy_and_idle_in_proportion() {
        // Launched at 00:00, gone at 04:00: 1 h busy, 3 h idle.
        let st = InstanceStatus {
            usage: Some(Usage {
                launched_at: Some(Time(t("2026-01-01T00:00:00Z"))),
                ended_at: Some(Time(t("2026-01-01T04:00:00Z"))),
                busy_seconds: 3600,
                idle_seconds: 10_800,
                ..Default::default()
            }),
            ..Default::default()
        };
        let now = t("2026-01-02T00:00:00Z");
        assert_eq!(accrued_within(&st, None, now), (14_400.0, 3600.0, 10_800.0));
        assert_eq!(accrued_within(&st, Some(t("2026-01-01T03:00:00Z")), now), (3600.0, 900.0, 2700.0));
        assert_eq!(accrued_within(&st, Some(t("2026-01-01T05:00:00Z")), now), (0.0, 0.0, 0.0));
        // Never launched: nothing billed.
        assert_eq!(accrued_within(&InstanceStatus::default(), Some(t("2026-01-01T00:00:00Z")), now), (0.0, 0.0, 0.0));
    }
}
