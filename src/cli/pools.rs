//! `kubectl pool list | create | delete | set-default`.

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::output::{price, table};
use super::{CliError, CreateArgs, DeleteArgs, Term};
use crate::api::instance::Instance;
use crate::api::pool::{Pool, PoolSpec, DEFAULT_POOL_ANNOTATION};
use crate::core::pool::resolve_pool_name;

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

/// `create`.
pub async fn create(args: &CreateArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let api = Api::<Pool>::namespaced(client.clone(), namespace);
    if api.get_opt(&args.name).await?.is_some() {
        return Err(CliError::Failed(format!("pool {} already exists in namespace {namespace}", args.name)));
    }
    let pool = Pool::new(
        &args.name,
        PoolSpec { max_instances: args.max_instances, profile: args.profile.clone(), defaults: None },
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
