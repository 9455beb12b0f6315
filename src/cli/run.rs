//! `kubectl pool run`: dstack's `run` for a pool. Builds a `Run` from flags and/or a
//! manifest (`-f`), shows the plan (the idle instance of the pool it would reuse, else
//! the ranked offers it would provision), asks, creates the Run, follows it until it is
//! placed, streams its output and ends with its exit code. Ctrl-C while following asks
//! whether to stop the run (`spec.stop`) or leave it running.
//!
//! The plan is a preview computed as the controller computes it (same matching and
//! ranking, over the run's own policy, its profile, its pool's profile and defaults);
//! the controller decides for real once the Run exists, so a run queued behind an older
//! one may be placed elsewhere.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::instances::plan_header;
use super::offers::cluster_offers;
use super::output::{offers_table, price, table};
use super::{CliError, RunArgs, Term};
use crate::api::conditions::find;
use crate::api::instance::{Instance, InstancePhase};
use crate::api::policy::{CreationPolicy, PolicySpec};
use crate::api::pool::Pool;
use crate::api::profile::Profile;
use crate::api::run::{Run, RunPhase, RunSpec};
use crate::core::matching::{pick_instance, IdleInstance, PendingRun};
use crate::core::offers::rank_offers;
use crate::core::policy::{effective_policy, EffectivePolicy, Origin};
use crate::core::pool::resolve_pool_name;
use crate::exec::ssh::script::quote_if_needed;
use crate::exec::JobLogs;

/// The exit code when the user interrupted the command and the run was left running.
pub const INTERRUPTED: i32 = 130;

/// What `run` needs besides the cluster and the terminal: where the job's output is read
/// from, the user's interrupt (Ctrl-C), and how often the run is looked at.
pub struct Follow<'a> {
    pub logs: &'a dyn JobLogs,
    pub interrupt: Pin<&'a mut dyn Future<Output = ()>>,
    pub poll: Duration,
}

/// `NAME=VALUE` of `-e`.
pub fn parse_env(s: &str) -> Result<EnvVar, String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() && !name.contains(char::is_whitespace) => {
            Ok(EnvVar { name: name.to_string(), value: Some(value.to_string()), ..Default::default() })
        }
        _ => Err(format!("invalid --env {s:?}: write it as NAME=VALUE")),
    }
}

/// The Run that `args` describe: the manifest of `-f` (when given) with the flags over it.
pub fn run_for(args: &RunArgs, namespace: &str) -> Result<Run, CliError> {
    args.resources.resolve()?;
    let mut run = match &args.file {
        Some(path) => {
            let what = |e: &dyn std::fmt::Display| CliError::Usage(format!("-f {}: {e}", path.display()));
            let text = std::fs::read_to_string(path).map_err(|e| what(&e))?;
            let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| what(&e))?;
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
            if kind != "Run" {
                return Err(what(&format!("kind {kind:?} is not a Run")));
            }
            let run: Run = serde_yaml::from_value(value).map_err(|e| what(&e))?;
            if let Some(ns) = run.metadata.namespace.as_deref().filter(|ns| *ns != namespace) {
                return Err(what(&format!(
                    "its namespace {ns} is not the command's namespace {namespace}: pass -n {ns}"
                )));
            }
            run
        }
        None => Run::new("", RunSpec::default()),
    };
    let spec = &mut run.spec;
    spec.resources = args.resources.over(&spec.resources);
    spec.policy = args.policy.over(&spec.policy);
    if args.reuse {
        spec.policy.creation_policy = Some(CreationPolicy::Reuse);
    }
    spec.pool = args.place.pool.clone().or(spec.pool.take());
    spec.profile = args.place.profile.clone().or(spec.profile.take());
    spec.image = args.image.clone().or(spec.image.take());
    if !args.command.is_empty() {
        spec.commands = vec![args.command.iter().map(|w| quote_if_needed(w)).collect::<Vec<_>>().join(" ")];
    }
    for e in &args.env {
        spec.env.retain(|old| old.name != e.name);
        spec.env.push(e.clone());
    }
    if spec.commands.is_empty() {
        return Err(CliError::Usage(
            "no command: give it after `--` (`kubectl pool run -- python train.py`) or in the manifest's spec.commands"
                .into(),
        ));
    }
    spec.resources.resolve().map_err(|e| match &args.file {
        Some(path) => CliError::Usage(format!("-f {}: {e}", path.display())),
        None => CliError::from(e),
    })?;
    run.metadata.namespace = Some(namespace.to_string());
    run.metadata.resource_version = None;
    run.metadata.uid = None;
    run.status = None;
    if let Some(name) = &args.name {
        run.metadata.name = Some(name.clone());
    }
    if run.metadata.name.as_deref().unwrap_or_default().is_empty() {
        run.metadata.name = None;
        run.metadata.generate_name.get_or_insert_with(|| "run-".to_string());
    }
    Ok(run)
}

/// The run's policy as the controller resolves it: its own, its profile's, its pool's
/// profile's, its pool's defaults, the built-in defaults.
async fn policy_of(
    client: &Client,
    namespace: &str,
    run: &Run,
    pool: Option<&Pool>,
) -> Result<EffectivePolicy, CliError> {
    let profiles = Api::<Profile>::namespaced(client.clone(), namespace);
    let mut specs: Vec<PolicySpec> = Vec::new();
    for (what, name) in [
        ("--profile", run.spec.profile.as_deref()),
        ("the pool's profile", pool.and_then(|p| p.spec.profile.as_deref())),
    ] {
        if let Some(name) = name {
            let p = profiles
                .get_opt(name)
                .await?
                .ok_or_else(|| CliError::Usage(format!("{what} {name}: no such Profile in namespace {namespace}")))?;
            specs.push(p.spec.policy);
        }
    }
    let mut layers = vec![&run.spec.policy];
    layers.extend(specs.iter());
    layers.extend(pool.and_then(|p| p.spec.defaults.as_ref()));
    Ok(effective_policy(&layers, Origin::Run)?)
}

/// The idle instance of `pool` the run would take, as the controller matches.
async fn reuse_candidate(
    client: &Client,
    namespace: &str,
    pool: &str,
    pending: &PendingRun,
) -> Result<(Option<Instance>, usize), CliError> {
    let all = Api::<Instance>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let runs = Api::<Run>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let reserved = |inst: &str| {
        runs.iter().find_map(|r| {
            let s = r.status.as_ref().filter(|s| !s.phase.is_finished())?;
            (s.provisioning_instance.as_deref() == Some(inst)).then(|| r.name_any())
        })
    };
    let idle: Vec<(IdleInstance, &Instance)> = all
        .iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter_map(|i| {
            let s = i.status.as_ref().filter(|s| s.phase == InstancePhase::Idle && s.run.is_none())?;
            let c = IdleInstance {
                name: i.name_any(),
                namespace: namespace.to_string(),
                pool: s.pool.clone().filter(|p| p == pool)?,
                offer: s.offer.clone()?,
                reserved_for: reserved(&i.name_any()),
            };
            Some((c, i))
        })
        .collect();
    let candidates: Vec<IdleInstance> = idle.iter().map(|(c, _)| c.clone()).collect();
    Ok((pick_instance(pending, &candidates).map(|ix| idle[ix].1.clone()), idle.len()))
}

fn reuse_table(inst: &Instance, offer: &crate::api::offer::Offer) -> String {
    let st = inst.status.clone().unwrap_or_default();
    let row = vec![
        inst.name_any(),
        offer.backend.clone(),
        offer.region.clone(),
        offer.instance_type.clone(),
        st.resources.unwrap_or_else(|| offer.resources_summary()),
        if offer.spot { "spot" } else { "on-demand" }.to_string(),
        price(offer.price),
    ];
    table(&["INSTANCE", "BACKEND", "REGION", "INSTANCE TYPE", "RESOURCES", "SPOT", "PRICE"], &[row])
}

/// Shows the plan; `Err` when nothing fits.
async fn plan(
    args: &RunArgs,
    client: &Client,
    namespace: &str,
    run: &Run,
    term: &mut Term<'_>,
) -> Result<(), CliError> {
    let pools = Api::<Pool>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    let pool_name = resolve_pool_name(run.spec.pool.as_deref(), &pools.iter().collect::<Vec<_>>());
    let pool = pools.iter().find(|p| p.name_any() == pool_name);
    let policy = policy_of(client, namespace, run, pool).await?;
    let req = run.spec.resources.resolve()?;
    let pending = PendingRun {
        name: run.metadata.name.clone().unwrap_or_default(),
        namespace: namespace.to_string(),
        pool: pool_name.clone(),
        requirements: req.clone(),
        policy: policy.clone(),
        pinned_instance: run.spec.instance.clone(),
    };
    let (candidate, idle) = reuse_candidate(client, namespace, &pool_name, &pending).await?;
    if let Some((inst, offer)) = candidate.as_ref().and_then(|i| Some((i, i.status.as_ref()?.offer.as_ref()?))) {
        plan_header(term, &pool_name, &req, &policy, &[])?;
        writeln!(term.out, "Reuses the idle instance:")?;
        write!(term.out, "{}", reuse_table(inst, offer))?;
        return Ok(());
    }
    let none_idle = match idle {
        0 => format!("pool {pool_name} has no idle instance"),
        n => format!("none of the {n} idle instances of pool {pool_name} fits {}", req.render()),
    };
    if policy.creation_policy == CreationPolicy::Reuse {
        return Err(CliError::Failed(format!(
            "{none_idle}, and the run may only reuse (--reuse or creationPolicy Reuse): \
             add one with `kubectl pool add`, or drop --reuse to provision"
        )));
    }
    let (all, warnings) = cluster_offers(client, namespace, &req).await?;
    let ranked = rank_offers(&all, &req, &policy, args.plan.max_offers);
    plan_header(term, &pool_name, &req, &policy, &warnings)?;
    if ranked.is_empty() {
        return Err(CliError::Failed(format!(
            "{none_idle}, and no offer fits: loosen the requirements or the policy, or check `kubectl get backends`"
        )));
    }
    writeln!(term.out, "{none_idle}; provisions the first of these offers that succeeds:")?;
    write!(term.out, "{}", offers_table(&ranked))?;
    Ok(())
}

/// `run`: plan, ask, create, follow; the exit code to end with.
pub async fn run(
    args: &RunArgs,
    client: &Client,
    namespace: &str,
    term: &mut Term<'_>,
    follow: Follow<'_>,
) -> Result<i32, CliError> {
    let run = run_for(args, namespace)?;
    plan(args, client, namespace, &run, term).await?;
    if !args.plan.yes && !term.confirm("Continue?")? {
        writeln!(term.out, "No run created.")?;
        return Ok(0);
    }
    let api = Api::<Run>::namespaced(client.clone(), namespace);
    let created = api.create(&PostParams::default(), &run).await?;
    let name = created.name_any();
    writeln!(term.out, "run {name} created")?;
    term.out.flush()?;
    attach(&api, &name, args.detach, client, namespace, term, follow).await
}

fn reattach_hint(name: &str) -> String {
    format!(
        "follow it with `kubectl pool logs {name} -f`; stop it with \
         `kubectl patch run {name} --type merge -p '{{\"spec\":{{\"stop\":true}}}}'`"
    )
}

/// What the run's end means for the command: its exit code, and a line when it did not
/// succeed.
fn outcome(run: &Run) -> (i32, Option<String>) {
    let st = run.status.clone().unwrap_or_default();
    let name = run.name_any();
    let why = find(&st.conditions, "Succeeded").map(|c| c.message.clone()).filter(|m| !m.is_empty());
    let reason = st.termination_reason.clone().unwrap_or_else(|| st.phase.as_str().to_string());
    match (st.phase, st.exit_code) {
        (RunPhase::Succeeded, _) => (0, None),
        (_, Some(code)) if code != 0 => {
            // An exit status keeps only its low 8 bits: never let a failure read as 0.
            let exit = if code & 0xff == 0 { 1 } else { code };
            (exit, Some(format!("run {name} {} ({reason}): exit code {code}", st.phase.as_str().to_lowercase())))
        }
        (phase, _) => {
            let msg = why.map(|m| format!(": {m}")).unwrap_or_default();
            (1, Some(format!("run {name} {} ({reason}){msg}", phase.as_str().to_lowercase())))
        }
    }
}

/// Follows run `name`: its placement, then its output, until it ends (or, with `detach`,
/// until it is placed). Ctrl-C asks whether to stop it.
async fn attach(
    api: &Api<Run>,
    name: &str,
    detach: bool,
    client: &Client,
    namespace: &str,
    term: &mut Term<'_>,
    mut follow: Follow<'_>,
) -> Result<i32, CliError> {
    let instances = Api::<Instance>::namespaced(client.clone(), namespace);
    let mut last = String::new();
    let mut placed = false;
    let mut offset = 0;
    let mut logs_broken = false;
    loop {
        let run = api.get(name).await?;
        let st = run.status.clone().unwrap_or_default();
        if !placed {
            let scheduled = find(&st.conditions, "Scheduled").map(|c| c.message.clone()).unwrap_or_default();
            let line = match scheduled.as_str() {
                "" => st.phase.as_str().to_lowercase(),
                m => format!("{}: {m}", st.phase.as_str().to_lowercase()),
            };
            if let (Some(inst), true) = (&st.instance, st.phase == RunPhase::Running || st.phase.is_finished()) {
                placed = true;
                writeln!(term.out, "run {name} is placed on instance {inst}")?;
                if detach {
                    writeln!(term.out, "Detached: {}", reattach_hint(name))?;
                    return Ok(0);
                }
            } else if line != last {
                writeln!(term.out, "{line}")?;
                last = line;
            }
        }
        let mut wrote = false;
        if let (true, false, Some(inst)) = (placed, logs_broken, &st.instance) {
            let read = match instances.get_opt(inst).await? {
                Some(instance) => follow.logs.logs(&run, &instance, offset).await.map_err(|e| e.to_string()),
                None => Err(format!("instance {inst} is gone, and its logs with it")),
            };
            match read {
                Ok((text, next)) => {
                    write!(term.out, "{text}")?;
                    wrote = !text.is_empty();
                    offset = next;
                }
                Err(e) => {
                    writeln!(term.out, "warning: cannot read the output of run {name} ({e}); following its status")?;
                    logs_broken = true;
                }
            }
        }
        term.out.flush()?;
        if st.phase.is_finished() && !wrote {
            let (code, line) = outcome(&run);
            if let Some(line) = line {
                writeln!(term.out, "{line}")?;
            }
            return Ok(code);
        }
        // More output may be waiting: look again at once, but still hear Ctrl-C.
        let pause = if wrote { Duration::ZERO } else { follow.poll };
        tokio::select! {
            biased;
            _ = follow.interrupt.as_mut() => {
                writeln!(term.out)?;
                return interrupted(api, name, term, follow.poll).await;
            }
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// After Ctrl-C: stop the run (and wait for it to end) or leave it running.
async fn interrupted(api: &Api<Run>, name: &str, term: &mut Term<'_>, poll: Duration) -> Result<i32, CliError> {
    if !term.interactive || !term.confirm("Stop the run?")? {
        writeln!(term.out, "run {name} keeps running: {}", reattach_hint(name))?;
        return Ok(INTERRUPTED);
    }
    let patch = serde_json::json!({"spec": {"stop": true}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    writeln!(term.out, "stopping run {name}…")?;
    term.out.flush()?;
    loop {
        let run = api.get(name).await?;
        if run.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
            let (code, line) = outcome(&run);
            if let Some(line) = line {
                writeln!(term.out, "{line}")?;
            }
            return Ok(code);
        }
        tokio::time::sleep(poll).await;
    }
}
