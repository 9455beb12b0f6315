//! Wires the reconcilers into kube-runtime controllers and runs them until shutdown.

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::ResourceExt;

use super::context::Caches;
use super::gc::{self, GcConfig};
use super::{backend, error_policy, instance, pool, run, Context};
use crate::api::backend::Backend;
use crate::api::instance::Instance;
use crate::api::pool::Pool;
use crate::api::profile::Profile;
use crate::api::run::Run;

/// Runs the Instance, Run and Pool controllers and the garbage collector, until a
/// shutdown signal arrives.
/// `namespace`: watch only that namespace (`None`: every namespace).
pub async fn run_all(ctx: Arc<Context>, gc_config: GcConfig, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (instances, runs, pools, backends): (Api<Instance>, Api<Run>, Api<Pool>, Api<Backend>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => {
            (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone()))
        }
    };
    let profiles: Api<Profile> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let cfg = watcher::Config::default();

    // One watch per kind, shared, each driven by a task of its own: it keeps the store
    // every reconciler reads and triggers the controllers only once the store holds the
    // change, so a reconcile woken by a change never reads the copy from before it (with
    // a watch per controller, a pool woken by its own watch could count from a store that
    // had not caught up, and nothing woke it again). Driven apart from the controllers,
    // a store fills even while its controller runs its most reconciles at once: when a
    // controller drove its own store, a restarted controller's first 16 runs waited for a
    // store that only that busy controller could fill, until the 30 s read timeout.
    let (instance_store, instance_events, instance_watch) = shared_watch(instances, &cfg, "instances", |_| {});
    // Runs carry no finalizer (see `run::reconcile`): a deleted run wakes the instances it
    // held or was having made, whose controller undoes what the run left there.
    let (let_go, runs_gone) = futures::channel::mpsc::unbounded();
    let forget = ctx.clone();
    let (run_store, run_events, run_watch) = shared_watch(runs, &cfg, "runs", move |r: &Run| {
        forget.forget_object(&r.uid().unwrap_or_default());
        for i in instances_of_deleted(r) {
            let _ = let_go.unbounded_send(i);
        }
    });
    let (pool_store, pool_events, pool_watch) = shared_watch(pools, &cfg, "pools", |_| {});
    let (backend_store, backend_events, backend_watch) = shared_watch(backends, &cfg, "backends", |_| {});
    let instance_controller = Controller::for_shared_stream(instance_events.clone(), instance_store.clone());
    let instance_ctl = instance_controller
        .reconcile_on(runs_gone)
        .with_config(controller_config())
        .shutdown_on_signal()
        .run(|o, c| timed("instance", c.clone(), instance::reconcile(o, c)), error_policy, ctx.clone())
        .for_each(|r| async move { log_result("instance", r) });

    // A run wakes up when an instance it holds or waits for changes, and the runs waiting
    // in a pool when one of its instances may let them go on (`runs_woken_by`).
    let run_controller = Controller::for_shared_stream(run_events, run_store.clone());
    // Runs a placement batch leaves to their own pass (see `placement`).
    let (waker, woken) = futures::channel::mpsc::unbounded();
    ctx.plans.set_waker(waker);
    let runs_cache = run_store.clone();
    let run_ctl = run_controller
        .watches_shared_stream(instance_events.clone(), move |inst: Arc<Instance>| {
            // The run cache is looked through only when waiting runs may be woken: a
            // fresh controller's first list of 10,000 instances copied 10,000 run
            // handles per instance.
            let runs = if frees(&inst) { run_store.state() } else { Vec::new() };
            runs_woken_by(&inst, &runs)
        })
        .reconcile_on(woken)
        .with_config(controller_config())
        .shutdown_on_signal()
        .run(|o, c| timed("run", c.clone(), run::reconcile(o, c)), error_policy, ctx.clone())
        .for_each(|r| async move { log_result("run", r) });

    let pool_controller = Controller::for_shared_stream(pool_events, pool_store.clone());
    let backend_controller = Controller::for_shared_stream(backend_events, backend_store.clone());
    // Profiles are read by every reconcile that resolves a policy: a watch keeps them.
    let (profile_store, profile_writer) = reflector::store();
    let profile_watch = reflector(profile_writer, watcher(profiles, cfg.clone()).default_backoff().modify(slim))
        .applied_objects()
        .for_each(|_| async {});
    let profile_watch = tokio::spawn(profile_watch);
    // The reconcilers read from these watch caches, once each has listed everything:
    // no controller starts before (the watches run meanwhile).
    let caches = Caches {
        pools: pool_store,
        instances: instance_store,
        runs: runs_cache,
        backends: backend_store.clone(),
        profiles: profile_store,
    };
    caches.wait_until_ready(std::time::Duration::from_secs(30)).await;
    ctx.use_caches(caches);
    let pool_ctl = pool_controller
        .watches_shared_stream(instance_events.clone(), |inst: Arc<Instance>| {
            let ns = inst.namespace().unwrap_or_default();
            inst.status.as_ref().and_then(|s| s.pool.clone()).map(|p| ObjectRef::new(&p).within(&ns))
        })
        .with_config(controller_config())
        .shutdown_on_signal()
        .run(|o, c| timed("pool", c.clone(), pool::reconcile(o, c)), error_policy, ctx.clone())
        .for_each(|r| async move { log_result("pool", r) });

    // A Backend being deleted waits for the instances that have machines of it: it looks
    // again whenever one of its namespace's instances changes.
    let backend_ctl = backend_controller
        .watches_shared_stream(instance_events, move |inst: Arc<Instance>| {
            let ns = inst.namespace().unwrap_or_default();
            backend_store
                .state()
                .into_iter()
                .filter(|b| b.namespace().as_deref() == Some(ns.as_str()) && b.metadata.deletion_timestamp.is_some())
                .map(|b| ObjectRef::from_obj(&*b))
                .collect::<Vec<_>>()
        })
        .with_config(controller_config())
        .shutdown_on_signal()
        .run(|o, c| timed("backend", c.clone(), backend::reconcile(o, c)), error_policy, ctx.clone())
        .for_each(|r| async move { log_result("backend", r) });

    let gc = tokio::spawn(gc::run(ctx.clone(), gc_config, namespace));
    tokio::join!(instance_ctl, run_ctl, pool_ctl, backend_ctl);
    gc.abort();
    profile_watch.abort();
    for watch in [instance_watch, run_watch, pool_watch, backend_watch] {
        watch.abort();
    }
}

/// A shared watch of `api`'s objects, driven by a task of its own: the store it keeps,
/// a stream of the objects it applied (for controllers to subscribe to), and the task.
/// `deleted` is called with each object the watch sees deleted (a deletion missed while
/// the watch was down is not: the relist that follows wakes every subscriber instead).
fn shared_watch<K>(
    api: Api<K>,
    cfg: &watcher::Config,
    what: &'static str,
    deleted: impl Fn(&K) + Send + 'static,
) -> (reflector::Store<K>, impl futures::Stream<Item = Arc<K>> + Clone + Send + 'static, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store_shared(SHARED_BUFFER);
    let events = writer.subscribe().expect("a shared store has subscribers");
    let task = tokio::spawn(watcher(api, cfg.clone()).default_backoff().modify(slim).reflect_shared(writer).for_each(
        move |event| {
            match event {
                Ok(watcher::Event::Delete(o)) => deleted(&o),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, kind = what, "a watch failed; retrying"),
            }
            futures::future::ready(())
        },
    ));
    (store, events, task)
}

/// The instances a deleted run leaves something on: the one it held (its job may still
/// run there) and the one being provisioned for it (not needed any more if it has not
/// launched).
pub fn instances_of_deleted(run: &Run) -> Vec<ObjectRef<Instance>> {
    let ns = run.namespace().unwrap_or_default();
    let Some(st) = run.status.as_ref() else { return Vec::new() };
    [st.instance.as_deref(), st.provisioning_instance.as_deref()]
        .into_iter()
        .flatten()
        .map(|i| ObjectRef::new(i).within(&ns))
        .collect()
}

/// What the caches keep of an object: everything but the field managers' bookkeeping
/// (`metadata.managedFields`, often the largest part of a small object) and kubectl's
/// copy of the last applied manifest, which no reconcile reads. kpool writes statuses by
/// patches that never carry `metadata`, so a slim copy never writes them away.
pub(crate) fn slim<K: kube::Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// How many instance changes the shared watch holds for a controller that has not taken
/// them yet; the watch waits when one is that far behind.
const SHARED_BUFFER: usize = 4096;

/// The runs a change of `inst` wakes, among `runs` (the watch cache): the run it names and
/// the one it was provisioned for, and, when the change may let runs waiting in its pool
/// go on ([`frees`]), those runs. A claim wakes its run alone: in a wave of N runs on N
/// idle instances, waking every waiting run on every claim made N² wake-ups, each a
/// placement pass.
pub fn runs_woken_by(inst: &Instance, runs: &[Arc<Run>]) -> Vec<ObjectRef<Run>> {
    let ns = inst.namespace().unwrap_or_default();
    let mut refs: Vec<ObjectRef<Run>> = Vec::new();
    if let Some(r) = inst.status.as_ref().and_then(|s| s.run.as_deref()) {
        refs.push(ObjectRef::new(r).within(&ns));
    }
    if let Some(r) = inst.provisioned_for() {
        refs.push(ObjectRef::new(r).within(&ns));
    }
    if !frees(inst) {
        return refs;
    }
    let pool = inst.status.as_ref().and_then(|s| s.pool.as_deref());
    for r in runs {
        let Some(s) = r.status.as_ref() else { continue };
        let waiting = s.instance.is_none() && !s.phase.is_finished();
        if waiting && r.namespace().as_deref() == Some(ns.as_str()) && pool.is_none_or(|p| s.pool.as_deref() == Some(p))
        {
            refs.push(ObjectRef::from_obj(&**r));
        }
    }
    refs
}

/// Whether a change of `inst` may let a run waiting in its pool go on: it is idle and
/// free (a run may take it), or it is going or gone (room in the pool). A run not
/// reconciled yet needs no wake-up: its first pass is coming.
fn frees(inst: &Instance) -> bool {
    use crate::api::instance::InstancePhase::*;
    inst.metadata.deletion_timestamp.is_some()
        || inst.status.as_ref().is_some_and(|s| match s.phase {
            Idle => s.run.is_none(),
            Terminating | Terminated | Failed => true,
            _ => false,
        })
}

/// How many objects of one kind are reconciled at once. Unbounded, a wave of a thousand
/// runs became a thousand concurrent reconciles, each holding its own copy of the
/// namespace's instances and runs (the placement benchmark peaked at 6.8 GB), and all
/// racing for the same instances; bounded, memory stays flat and a wave is worked
/// through in order.
pub const RECONCILE_CONCURRENCY: u16 = 16;

fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// Runs one reconcile and records how long it took.
async fn timed<F>(kind: &'static str, ctx: Arc<Context>, reconcile: F) -> F::Output
where
    F: std::future::Future,
{
    let started = std::time::Instant::now();
    let out = reconcile.await;
    ctx.metrics.reconciled(kind, started.elapsed());
    out
}

fn log_result<T: std::fmt::Debug, E: std::error::Error + 'static>(kind: &str, r: Result<T, E>) {
    match r {
        Ok(o) => tracing::debug!(kind, object = ?o, "reconciled"),
        Err(e) => tracing::debug!(kind, error = %super::chain(&e), "reconcile error"),
    }
}
