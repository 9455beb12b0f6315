//! `kubectl pool ps`, `remove` and `add`.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};

use super::offers::{catalog_offers, cluster_offers};
use super::output::{age, offers_table, price, table};
use super::{AddArgs, CliError, ObjectFormat, PsArgs, PsFormat, RemoveArgs, Term};
use crate::api::conditions::find;
use crate::api::instance::{Instance, InstancePhase, InstanceSpec};
use crate::api::pool::Pool;
use crate::api::profile::Profile;
use crate::api::resources::Requirements;
use crate::core::offers::rank_offers;
use crate::core::policy::EffectivePolicy;
use crate::core::pool::resolve_pool_name;

fn status_word(phase: InstancePhase) -> String {
    phase.as_str().to_lowercase()
}

fn seconds_since(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, now: Timestamp) -> Option<i64> {
    t.map(|t| now.as_second() - t.0.as_second())
}

/// The rows of `ps`, oldest first.
pub fn ps_rows(instances: &[Instance], now: Timestamp, wide: bool) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header =
        vec!["INSTANCE", "BACKEND", "REGION", "RESOURCES", "SPOT", "PRICE", "STATUS", "RUN", "IDLE FOR", "CREATED"];
    if wide {
        header.extend(["POOL", "INSTANCE TYPE", "ADDRESS", "MESSAGE"]);
    }
    let rows = instances
        .iter()
        .map(|i| {
            let st = i.status.clone().unwrap_or_default();
            let offer = st.offer.as_ref();
            let idle = (st.phase == InstancePhase::Idle)
                .then(|| seconds_since(st.idle_since.as_ref(), now).map(age))
                .flatten()
                .unwrap_or_else(|| "-".into());
            let mut row = vec![
                i.name_any(),
                offer.map(|o| o.backend.clone()).unwrap_or_else(|| "-".into()),
                offer.map(|o| o.region.clone()).unwrap_or_else(|| "-".into()),
                st.resources.clone().unwrap_or_else(|| "-".into()),
                offer.map(|o| if o.spot { "spot" } else { "on-demand" }.to_string()).unwrap_or_else(|| "-".into()),
                offer.map(|o| price(o.price)).unwrap_or_else(|| "-".into()),
                match find(&st.conditions, "Reachable") {
                    // Idle or busy, but not answering: the health check may give it up.
                    Some(c) if c.status == "False" && matches!(st.phase, InstancePhase::Idle | InstancePhase::Busy) => {
                        format!("{} (unreachable)", status_word(st.phase))
                    }
                    _ => status_word(st.phase),
                },
                st.run.clone().unwrap_or_else(|| "-".into()),
                idle,
                seconds_since(i.metadata.creation_timestamp.as_ref(), now).map(age).unwrap_or_else(|| "-".into()),
            ];
            if wide {
                row.push(st.pool.clone().unwrap_or_else(|| "-".into()));
                row.push(offer.map(|o| o.instance_type.clone()).unwrap_or_else(|| "-".into()));
                row.push(st.address.clone().unwrap_or_else(|| "-".into()));
                row.push(find(&st.conditions, "Ready").map(|c| c.message.clone()).unwrap_or_default());
            }
            row
        })
        .collect();
    (header, rows)
}

async fn listed(client: &Client, namespace: &str, args: &PsArgs) -> Result<Vec<Instance>, CliError> {
    let mut items = Api::<Instance>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    items.retain(|i| {
        let st = i.status.as_ref();
        let pool_ok = args.pool.as_deref().is_none_or(|p| st.and_then(|s| s.pool.as_deref()) == Some(p));
        let live = args.all || st.is_none_or(|s| !matches!(s.phase, InstancePhase::Terminated | InstancePhase::Failed));
        pool_ok && live
    });
    items.sort_by_key(|i| (i.metadata.creation_timestamp.as_ref().map(|t| t.0), i.name_any()));
    Ok(items)
}

fn render_ps(items: &[Instance], format: PsFormat, namespace: &str) -> Result<String, CliError> {
    if format == PsFormat::Json {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        return serde_json::to_string_pretty(&list).map(|s| s + "\n").map_err(|e| CliError::Failed(e.to_string()));
    }
    if items.is_empty() {
        return Ok(format!("No instances in namespace {namespace}. Add one with `kubectl pool add`.\n"));
    }
    let (header, rows) = ps_rows(items, Timestamp::now(), format == PsFormat::Wide);
    Ok(table(&header, &rows))
}

/// `ps`: the instances, and with `-w` again whenever they change (polling every 2 s).
pub async fn ps(args: &PsArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let mut last = String::new();
    loop {
        let items = listed(client, namespace, args).await?;
        let text = render_ps(&items, args.output, namespace)?;
        if text != last {
            if !last.is_empty() {
                writeln!(term.out)?;
            }
            write!(term.out, "{text}")?;
            term.out.flush()?;
            last = text;
        }
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `remove`: deletes the instances; a busy one needs `--force`, and says which run stops.
pub async fn remove(args: &RemoveArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let api = Api::<Instance>::namespaced(client.clone(), namespace);
    let mut plan = Vec::new();
    for name in &args.names {
        let Some(inst) = api.get_opt(name).await? else {
            return Err(CliError::Failed(format!("instance {name} not found in namespace {namespace}")));
        };
        let busy_with = inst.status.as_ref().filter(|s| s.phase == InstancePhase::Busy).and_then(|s| s.run.clone());
        if let (Some(run), false) = (&busy_with, args.force) {
            return Err(CliError::Usage(format!(
                "instance {name} is busy with run {run}: pass --force to stop {run} and remove {name}"
            )));
        }
        plan.push((name.clone(), busy_with));
    }
    let what: Vec<String> = plan
        .iter()
        .map(|(n, run)| match run {
            Some(r) => format!("{n} (stops run {r})"),
            None => n.clone(),
        })
        .collect();
    if !args.yes && !term.confirm(&format!("Remove {}?", what.join(", ")))? {
        writeln!(term.out, "Nothing removed.")?;
        return Ok(());
    }
    for (name, _) in plan {
        api.delete(&name, &DeleteParams::default()).await?;
        writeln!(term.out, "instance {name} removed (its machine is being terminated)")?;
    }
    Ok(())
}

/// The Instance `add` creates.
pub fn instance_for(args: &AddArgs, name: Option<String>) -> Instance {
    let spec = InstanceSpec {
        pool: args.place.pool.clone(),
        profile: args.place.profile.clone(),
        resources: args.resources.spec(),
        policy: args.policy.spec(),
    };
    let mut inst = Instance::new("", spec);
    inst.metadata.name = name;
    if inst.metadata.name.is_none() {
        inst.metadata.generate_name = Some("instance-".into());
    }
    inst
}

/// `add`: resolve, rank, show, ask, create, follow.
pub async fn add(
    args: &AddArgs,
    client: Option<&Client>,
    namespace: &str,
    term: &mut Term<'_>,
) -> Result<(), CliError> {
    let req = args.resources.resolve()?;
    let mut inst = instance_for(args, args.name.clone());
    inst.metadata.namespace = Some(namespace.to_string());
    // The policy as the controller will see it: flags > profile > pool defaults > built-in.
    let (profile, pool) = match client {
        Some(c) => layers(c, namespace, args).await?,
        None => (None, None),
    };
    let mut rest = Vec::new();
    rest.extend(profile.as_ref().map(|p| &p.spec.policy));
    rest.extend(pool.as_ref().and_then(|p| p.spec.defaults.as_ref()));
    let policy = args.policy.effective(&rest)?;

    let (ranked, warnings) = match (&args.catalog, client) {
        (Some(dir), _) => (catalog_offers(dir, &req, &policy, args.plan.max_offers)?, Vec::new()),
        (None, Some(c)) => {
            let (all, warnings) = cluster_offers(c, namespace, &req).await?;
            (rank_offers(&all, &req, &policy, args.plan.max_offers), warnings)
        }
        (None, None) => (Vec::new(), vec!["no cluster and no --catalog: offers not shown".to_string()]),
    };
    if args.dry_run {
        let text = match args.output {
            ObjectFormat::Yaml => serde_yaml::to_string(&inst).map_err(|e| CliError::Failed(e.to_string()))?,
            ObjectFormat::Json => {
                serde_json::to_string_pretty(&inst).map_err(|e| CliError::Failed(e.to_string()))? + "\n"
            }
        };
        write!(term.out, "{text}")?;
        return Ok(());
    }
    let client = client.ok_or_else(|| CliError::Usage("no cluster: use --dry-run to print the Instance".into()))?;
    plan_header(term, &pool_name(client, namespace, args).await?, &req, &policy, &warnings)?;
    if ranked.is_empty() {
        return Err(CliError::Failed(
            "no offer fits: loosen the requirements or the policy, or check `kubectl get backends`".into(),
        ));
    }
    write!(term.out, "{}", offers_table(&ranked))?;
    if !args.plan.yes && !term.confirm("Continue?")? {
        writeln!(term.out, "Nothing added.")?;
        return Ok(());
    }
    let api = Api::<Instance>::namespaced(client.clone(), namespace);
    let created = api.create(&PostParams::default(), &inst).await?;
    let name = created.name_any();
    writeln!(term.out, "instance {name} created")?;
    if args.no_wait {
        return Ok(());
    }
    follow(&api, &name, term).await
}

/// The lines above a plan (`add`, `run`): the pool, the resolved requirements, the
/// policy, and the backends that could not be asked.
pub fn plan_header(
    term: &mut Term<'_>,
    pool: &str,
    req: &Requirements,
    policy: &EffectivePolicy,
    warnings: &[String],
) -> std::io::Result<()> {
    writeln!(term.out, "Pool:         {pool}")?;
    writeln!(term.out, "Requirements: {}", req.render())?;
    writeln!(
        term.out,
        "Spot policy:  {:?}   Max price: {}",
        policy.spot_policy,
        policy.max_price.map(price).unwrap_or("-".into())
    )?;
    for w in warnings {
        writeln!(term.out, "warning: {w}")?;
    }
    Ok(())
}

async fn layers(client: &Client, namespace: &str, args: &AddArgs) -> Result<(Option<Profile>, Option<Pool>), CliError> {
    let profile = match &args.place.profile {
        Some(p) => Some(
            Api::<Profile>::namespaced(client.clone(), namespace)
                .get_opt(p)
                .await?
                .ok_or_else(|| CliError::Usage(format!("--profile {p}: no such Profile in namespace {namespace}")))?,
        ),
        None => None,
    };
    let name = pool_name(client, namespace, args).await?;
    let pool = Api::<Pool>::namespaced(client.clone(), namespace).get_opt(&name).await?;
    Ok((profile, pool))
}

async fn pool_name(client: &Client, namespace: &str, args: &AddArgs) -> Result<String, CliError> {
    let pools = Api::<Pool>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    Ok(resolve_pool_name(args.place.pool.as_deref(), &pools.iter().collect::<Vec<_>>()))
}

/// Prints each phase the instance goes through until it is idle (success) or failed.
pub async fn follow(api: &Api<Instance>, name: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let mut last = String::new();
    loop {
        let inst = api.get(name).await?;
        let st = inst.status.clone().unwrap_or_default();
        let msg = find(&st.conditions, "Ready").map(|c| c.message.clone()).unwrap_or_default();
        // A phase without a message yet (a new instance's `pending`) is the word alone.
        let line = match msg.as_str() {
            "" => status_word(st.phase),
            m => format!("{}: {m}", status_word(st.phase)),
        };
        if line != last {
            writeln!(term.out, "{line}")?;
            term.out.flush()?;
            last = line;
        }
        match st.phase {
            InstancePhase::Idle | InstancePhase::Busy => {
                writeln!(term.out, "instance {name} is ready: {}", st.resources.unwrap_or_default())?;
                return Ok(());
            }
            InstancePhase::Failed | InstancePhase::Terminated => {
                return Err(CliError::Failed(format!("instance {name} failed: {msg}")));
            }
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}
