//! `kubectl pool list | queue | create | delete | set-default`.

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::output::{age, price, table};
use super::{CliError, CreateArgs, DeleteArgs, Format, QueueArgs, Term};
use crate::api::instance::Instance;
use crate::api::pool::{Pool, PoolSpec, DEFAULT_POOL_ANNOTATION};
use crate::api::run::Run;
use crate::core::pool::resolve_pool_name;
use crate::core::run::{is_waiting, queue_key};

fn instances_of(all: &[Instance], pool: &str) -> Vec<String> {
    all.iter()
        .filter(|i| i.status.as_ref().and_then(|s| s.pool.as_deref()).or(i.spec.pool.as_deref()) == Some(pool))
        .map(|i| i.name_any())
        .collect()
}

/// `list`: the pools, with the default marked.
pub async fn list(client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let pools = Api::<Pool>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    if pools.is_empty() {
        writeln!(term.out, "No pools in namespace {namespace}. Create one with `kubectl pool create NAME`.")?;
        return Ok(());
    }
    let default = resolve_pool_name(None, &pools.iter().collect::<Vec<_>>());
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let st = p.status.clone().unwrap_or_default();
            vec![
                p.name_any(),
                if p.name_any() == default { "yes" } else { "" }.to_string(),
                st.total.to_string(),
                st.idle.to_string(),
                st.busy.to_string(),
                p.spec.max_instances.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                p.spec.profile.clone().unwrap_or_else(|| "-".into()),
                price(st.price_per_hour),
            ]
        })
        .collect();
    write!(
        term.out,
        "{}",
        table(&["POOL", "DEFAULT", "INSTANCES", "IDLE", "BUSY", "MAX", "PROFILE", "PRICE/H"], &rows)
    )?;
    Ok(())
}

/// `queue`: the waiting runs of each pool in the order the controller serves them
/// (priority, then age), with why each waits (its `Scheduled` condition).
pub async fn queue(args: &QueueArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let pools = Api::<Pool>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let refs: Vec<&Pool> = pools.iter().collect();
    let runs = Api::<Run>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let mut waiting: Vec<(String, &Run)> = runs
        .iter()
        .filter(|r| is_waiting(r))
        .map(|r| {
            let pool = r.status.as_ref().and_then(|s| s.pool.clone());
            (pool.unwrap_or_else(|| resolve_pool_name(r.spec.pool.as_deref(), &refs)), r)
        })
        .filter(|(p, _)| args.pool.as_ref().is_none_or(|want| want == p))
        .collect();
    waiting.sort_by(|a, b| (&a.0, queue_key(a.1)).cmp(&(&b.0, queue_key(b.1))));
    let now = jiff::Timestamp::now();
    let mut position = 0;
    let mut rows = Vec::new();
    for (k, (pool, r)) in waiting.iter().enumerate() {
        position = if k > 0 && waiting[k - 1].0 == *pool { position + 1 } else { 1 };
        let st = r.status.clone().unwrap_or_default();
        let why = crate::api::conditions::find(&st.conditions, "Scheduled");
        let waited = r.metadata.creation_timestamp.as_ref().map(|t| now.as_second() - t.0.as_second());
        rows.push((pool.clone(), position, r, why.map(|c| (c.reason.clone(), c.message.clone())), waited));
    }
    if args.output == Format::Json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|(pool, position, r, why, waited)| {
                serde_json::json!({
                    "pool": pool, "position": position, "run": r.name_any(), "priority": r.spec.priority,
                    "waitingSeconds": waited, "phase": r.status.as_ref().map(|s| s.phase),
                    "reason": why.as_ref().map(|w| &w.0), "message": why.as_ref().map(|w| &w.1),
                })
            })
            .collect();
        let out = serde_json::to_string_pretty(&serde_json::json!({"items": items}))
            .map_err(|e| CliError::Failed(e.to_string()))?;
        writeln!(term.out, "{out}")?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(term.out, "No run waits in namespace {namespace}.")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(pool, position, r, why, waited)| {
            let (reason, message) = why.unwrap_or_else(|| ("Pending".into(), "not reconciled yet".into()));
            vec![
                pool,
                position.to_string(),
                r.name_any(),
                r.spec.priority.to_string(),
                waited.map(age).unwrap_or_else(|| "-".into()),
                reason,
                message,
            ]
        })
        .collect();
    write!(term.out, "{}", table(&["POOL", "#", "RUN", "PRIORITY", "WAITING", "REASON", "MESSAGE"], &rows))?;
    Ok(())
}

/// `create`.
pub async fn create(args: &CreateArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let api = Api::<Pool>::namespaced(client.clone(), namespace);
    if api.get_opt(&args.name).await?.is_some() {
        return Err(CliError::Failed(format!("pool {} already exists in namespace {namespace}", args.name)));
    }
    let pool = Pool::new(
        &args.name,
        PoolSpec {
            max_instances: args.max_instances,
            profile: args.profile.clone(),
            defaults: None,
            warm: None,
            budget: None,
        },
    );
    api.create(&PostParams::default(), &pool).await?;
    writeln!(term.out, "pool {} created", args.name)?;
    if args.default {
        set_default(&args.name, client, namespace, term).await?;
    }
    Ok(())
}

/// `delete`: refuses while instances remain, unless `--force`.
pub async fn delete(args: &DeleteArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let pools = Api::<Pool>::namespaced(client.clone(), namespace);
    if pools.get_opt(&args.name).await?.is_none() {
        return Err(CliError::Failed(format!("pool {} not found in namespace {namespace}", args.name)));
    }
    let instances = Api::<Instance>::namespaced(client.clone(), namespace);
    let members = instances_of(&instances.list(&Default::default()).await?.items, &args.name);
    if !members.is_empty() && !args.force {
        return Err(CliError::Usage(format!(
            "pool {} still has instances ({}): remove them or pass --force",
            args.name,
            members.join(", ")
        )));
    }
    for m in &members {
        instances.delete(m, &DeleteParams::default()).await?;
        writeln!(term.out, "instance {m} removed")?;
    }
    pools.delete(&args.name, &DeleteParams::default()).await?;
    writeln!(term.out, "pool {} deleted", args.name)?;
    Ok(())
}

/// `set-default`: marks one pool and unmarks the others.
pub async fn set_default(name: &str, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let api = Api::<Pool>::namespaced(client.clone(), namespace);
    let pools = api.list(&Default::default()).await?.items;
    if !pools.iter().any(|p| p.name_any() == name) {
        return Err(CliError::Failed(format!("pool {name} not found in namespace {namespace}")));
    }
    for p in pools {
        let marked = p.annotations().get(DEFAULT_POOL_ANNOTATION).is_some_and(|v| v == "true");
        let want = p.name_any() == name;
        if marked == want {
            continue;
        }
        let value = if want { serde_json::json!("true") } else { serde_json::Value::Null };
        let patch = serde_json::json!({"metadata": {"annotations": {DEFAULT_POOL_ANNOTATION: value}}});
        api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    writeln!(term.out, "pool {name} is the default of namespace {namespace}")?;
    Ok(())
}
