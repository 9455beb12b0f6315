//! `kubectl pool cost`: what the namespace's instances cost, from their statuses.
//!
//! An instance's status records when its machine was launched and confirmed gone and how
//! its time split into busy and idle spells (`status.usage`); at its offer's price that
//! is its cost, right for spot and for machines that ended outside kpool (the end is when
//! kpool saw it gone). Instances deleted from the cluster take their figures with them.
//! With `--since`, an instance counts for the part of its life inside the window, its
//! busy and idle seconds in proportion.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::output::table;
use super::{CliError, CostArgs, Format, Term};
use crate::api::instance::Instance;
use crate::api::run::Run;
use crate::core::instance::accrued_within;

/// Spend of one (pool, backend, instance type), in dollars and runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Line {
    pub instances: u32,
    pub spend: f64,
    pub busy_spend: f64,
    pub idle_spend: f64,
    /// Runs that started on these instances.
    pub runs: u32,
    /// Of those, runs that found the instance idle (it was not provisioned for them).
    pub reused: u32,
}

/// Groups key: pool, backend, instance type.
pub type Key = (String, String, String);

/// The cost of each instance's life inside `[since, now]`, grouped, and the runs they
/// served (runs started inside the window).
pub fn report(instances: &[Instance], runs: &[Run], since: Option<Timestamp>, now: Timestamp) -> BTreeMap<Key, Line> {
    let mut out: BTreeMap<Key, Line> = BTreeMap::new();
    let mut keys: BTreeMap<String, (Key, Option<String>)> = BTreeMap::new();
    for inst in instances {
        let Some(st) = inst.status.as_ref() else { continue };
        let Some(offer) = st.offer.as_ref() else { continue };
        let key = (st.pool.clone().unwrap_or_default(), offer.backend.clone(), offer.instance_type.clone());
        keys.insert(inst.name_any(), (key.clone(), inst.provisioned_for().map(String::from)));
        let (total, busy, idle) = accrued_within(st, since, now);
        if total == 0.0 && st.usage.as_ref().and_then(|u| u.launched_at.as_ref()).is_none() {
            continue;
        }
        let line = out.entry(key).or_default();
        let per_second = if offer.price.is_finite() { offer.price / 3600.0 } else { 0.0 };
        line.instances += 1;
        line.spend += total * per_second;
        line.busy_spend += busy * per_second;
        line.idle_spend += idle * per_second;
    }
    for run in runs {
        let Some(st) = run.status.as_ref() else { continue };
        let started = st.started_at.as_ref().map(|t| t.0);
        if since.is_some_and(|s| started.is_none_or(|t| t < s)) {
            continue;
        }
        // Every instance the run ran on (its history holds the ended attempts, the last
        // one's instance too), each once.
        let on: std::collections::BTreeSet<String> =
            st.history.iter().filter_map(|a| a.instance.clone()).chain(st.instance.clone()).collect();
        for name in on {
            let Some((key, provisioned_for)) = keys.get(&name) else { continue };
            let line = out.entry(key.clone()).or_default();
            line.runs += 1;
            if provisioned_for.as_deref() != Some(run.name_any().as_str()) {
                line.reused += 1;
            }
        }
    }
    out
}

/// `cost`.
pub async fn cost(args: &CostArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let instances = Api::<Instance>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let runs = Api::<Run>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let now = Timestamp::now();
    let since = match args.since {
        Some(d) => Some(
            now.checked_sub(jiff::SignedDuration::try_from(d).map_err(|e| CliError::Failed(e.to_string()))?)
                .map_err(|e| CliError::Failed(format!("--since reaches too far back: {e}")))?,
        ),
        None => None,
    };
    let mut lines = report(&instances, &runs, since, now);
    lines.retain(|(pool, _, _), _| args.pool.as_ref().is_none_or(|p| p == pool));
    let mut total = Line::default();
    for l in lines.values() {
        total.instances += l.instances;
        total.spend += l.spend;
        total.busy_spend += l.busy_spend;
        total.idle_spend += l.idle_spend;
        total.runs += l.runs;
        total.reused += l.reused;
    }
    let reuse = |l: &Line| if l.runs == 0 { None } else { Some(f64::from(l.reused) / f64::from(l.runs)) };
    if args.output == Format::Json {
        let json = |l: &Line| {
            serde_json::json!({
                "instances": l.instances, "spend": round(l.spend), "busySpend": round(l.busy_spend),
                "idleSpend": round(l.idle_spend), "runs": l.runs, "reusedRuns": l.reused, "reuseRate": reuse(l),
            })
        };
        let items: Vec<serde_json::Value> = lines
            .iter()
            .map(|((pool, backend, itype), l)| {
                let mut v = json(l);
                v["pool"] = pool.clone().into();
                v["backend"] = backend.clone().into();
                v["instanceType"] = itype.clone().into();
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
    let row = |pool: &str, backend: &str, itype: &str, l: &Line| {
        vec![
            pool.to_string(),
            backend.to_string(),
            itype.to_string(),
            l.instances.to_string(),
            format!("${:.2}", l.spend),
            format!("${:.2}", l.idle_spend),
            l.runs.to_string(),
            reuse(l).map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
        ]
    };
    let mut rows: Vec<Vec<String>> = lines.iter().map(|((p, b, t), l)| row(p, b, t, l)).collect();
    rows.push(row("TOTAL", "", "", &total));
    let header = ["POOL", "BACKEND", "TYPE", "INSTANCES", "SPEND", "IDLE SPEND", "RUNS", "REUSED"];
    write!(term.out, "{}", table(&header, &rows))?;
    Ok(())
}

fn round(dollars: f64) -> f64 {
    (dollars * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::instance::{InstanceStatus, Usage};
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
