//! Test support: the in-memory API (kube-fake-client) set up for kpool's kinds, the
//! fake backend and executor, a manual clock, and a small driver that plays the role
//! of the controller loops.
//!
//! Gaps of the in-memory API are closed here, as the real API server behaves:
//! - Server-Side Apply of a status is stored as a merge patch by the fake; with one
//!   field manager writing whole statuses (kpool's rule) the real server replaces the
//!   status, so the `patch_status` interceptor below replaces it too, after checking the
//!   `resourceVersion` precondition (409 on mismatch).
//! - DELETE removes an object at once even with finalizers; [`Harness::delete_instance`]
//!   and [`Harness::delete_run`] set `deletionTimestamp` on the object handed to the
//!   reconciler and remove the stored object only once its finalizers are gone.
//! - The fake stores any label value; the create interceptor refuses what the real API
//!   server refuses (values over 63 characters or with other characters).
//! - A JSON patch `test` of a missing `/metadata/finalizers` fails in the fake (the real
//!   server treats it as null), so objects made here start with a placeholder
//!   finalizer, [`HOLD`], which deletion ignores.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use kube_fake_client::interceptor::{Funcs, PatchStatusContext};
use kube_fake_client::ClientBuilder;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use kpool::api::backend::{Backend, BackendSpec, BackendType};
use kpool::api::instance::{Instance, InstanceSpec};
use kpool::api::offer::Offer;
use kpool::api::pool::{Pool, PoolSpec};
use kpool::api::profile::Profile;
use kpool::api::run::{Run, RunSpec};
use kpool::backends::fake::{FakeBackend, FakeFactory};
use kpool::controllers::{instance, pool, run, Context, Error, ManualClock};
use kpool::exec::ScriptedExecutor;

pub const NS: &str = "ml";
/// The installation identity of the controllers of [`Harness::with_real_backends`].
pub const INSTALLATION: &str = "kpool-test";
/// Placeholder finalizer on objects made by the harness (see the module docs).
pub const HOLD: &str = "test.kpool.dev/hold";

/// `obj` as [`Harness::create`] creates it: in the test namespace, held by [`HOLD`], and
/// created at `now` unless it says otherwise.
pub fn as_created<K: Resource>(mut obj: K, now: Timestamp) -> K {
    obj.meta_mut().namespace = Some(NS.into());
    obj.meta_mut().finalizers.get_or_insert_with(Vec::new).push(HOLD.to_string());
    if obj.meta().creation_timestamp.is_none() {
        obj.meta_mut().creation_timestamp = Some(Time(now));
    }
    obj
}

/// The controllers' context for a harness: as production's, but a pool writes a change
/// of its counts at once (`counts_interval` zero), since tests read them right after a
/// pass on a clock that only moves when told; `tests/placement.rs` checks the interval.
pub fn context(
    client: Client,
    factory: Arc<dyn kpool::backends::BackendFactory>,
    executor: Arc<dyn kpool::exec::Executor>,
    clock: &ManualClock,
) -> Arc<Context> {
    let mut ctx = Context::new(client, factory, executor, Arc::new(clock.clone()));
    ctx.counts_interval = Duration::ZERO;
    Arc::new(ctx)
}

pub fn t0() -> Timestamp {
    "2026-11-28T10:00:00Z".parse().unwrap()
}

pub fn offer(instance_type: &str, cpu: u32, memory: f64, gpus: u32, gpu: &str, gpu_mem: f64, price: f64) -> Offer {
    Offer {
        backend: String::new(),
        region: "us-east-1".into(),
        instance_type: instance_type.into(),
        cpu,
        memory,
        disk: None,
        gpu_count: gpus,
        gpu_name: (gpus > 0).then(|| gpu.to_string()),
        gpu_memory: gpu_mem,
        gpu_vendor: (gpus > 0).then_some(kpool::api::resources::GpuVendor::Nvidia),
        compute_capability: None,
        spot: false,
        price,
        cpu_arch: None,
    }
}

/// A sample catalog: CPU machines and A10G / A100 machines.
pub fn catalog() -> Vec<Offer> {
    vec![
        offer("m5.xlarge", 4, 16.0, 0, "", 0.0, 0.192),
        offer("m5.2xlarge", 8, 32.0, 0, "", 0.0, 0.384),
        offer("g5.xlarge", 4, 16.0, 1, "A10G", 24.0, 1.006),
        offer("g5.2xlarge", 8, 32.0, 1, "A10G", 24.0, 1.212),
        offer("p4d.24xlarge", 96, 1152.0, 8, "A100", 40.0, 32.77),
        offer("p4de.24xlarge", 96, 1152.0, 8, "A100", 80.0, 40.96),
    ]
}

/// A pending reconcile; yields its error, if any.
type Job<'a> = futures::future::LocalBoxFuture<'a, Option<String>>;

pub struct Harness {
    pub client: Client,
    pub ctx: Arc<Context>,
    pub clock: ManualClock,
    pub backend: FakeBackend,
    pub exec: ScriptedExecutor,
    /// The next N status writes fail with 409 Conflict.
    pub fail_status_writes: Arc<AtomicUsize>,
    /// The next N creates of an Instance fail with a server error (500).
    pub fail_instance_creates: Arc<AtomicUsize>,
    /// Fails the next N status writes of Runs only (say, the controller dies right before).
    pub fail_run_status_writes: Arc<AtomicUsize>,
    /// Every API request the controllers made (through `ctx.client`), as RBAC sees it.
    pub api_calls: Arc<std::sync::Mutex<Vec<ApiCall>>>,
    /// While set, creating a job Pod (a Pod labelled `kpool.dev/run-uid`) is refused with
    /// this message (422), as an admission webhook or policy refuses it.
    pub refuse_job_pods: Arc<std::sync::Mutex<Option<String>>>,
}

pub use kpool::controllers::requests::{api_call, ApiCall};

/// Wraps a client so that every request it sends is recorded.
pub fn recording(inner: Client) -> (Client, Arc<std::sync::Mutex<Vec<ApiCall>>>) {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = calls.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        log.lock().unwrap().push(api_call(req.method(), req.uri()));
        let inner = inner.clone();
        async move { inner.send(req).await }
    });
    (Client::new(service, NS), calls)
}

/// Why the API server would refuse the labels of `obj` (a value longer than 63 characters,
/// or not alphanumeric at both ends with only `-`, `_` and `.` between), if it would.
fn invalid_label_value(obj: &Value) -> Option<String> {
    let labels = obj.pointer("/metadata/labels")?.as_object()?;
    labels.iter().find_map(|(key, value)| {
        let v = value.as_str().unwrap_or_default();
        let inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let ends = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
        let ok = v.len() <= 63 && v.chars().all(inner) && ends(v.chars().next()) && ends(v.chars().last());
        (!ok).then(|| format!("metadata.labels: Invalid value: {v:?} of label {key}: must be a valid label value"))
    })
}

fn conflict(msg: String) -> kube_fake_client::Error {
    kube_fake_client::Error::Conflict(msg)
}

/// Replaces the status of a `K` from an apply patch, honouring its resourceVersion.
fn replace_status<K>(ctx: &PatchStatusContext) -> kube_fake_client::Result<Option<Value>>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Default,
{
    let mut current: K = ctx.client.get(ctx.namespace, ctx.name)?;
    let want = ctx.patch.pointer("/metadata/resourceVersion").and_then(Value::as_str);
    let have = current.meta().resource_version.clone();
    if let Some(want) = want {
        if have.as_deref() != Some(want) {
            return Err(conflict(format!(
                "the object has been modified: resourceVersion {want} is stale (now {})",
                have.unwrap_or_default()
            )));
        }
    }
    let mut value = serde_json::to_value(&current)?;
    value["status"] = ctx.patch.get("status").cloned().unwrap_or(Value::Null);
    current = serde_json::from_value(value)?;
    let updated = ctx.client.update_status(ctx.namespace, &current, &PostParams::default())?;
    Ok(Some(serde_json::to_value(updated)?))
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with_offers(catalog()).await
    }

    /// The production backend factory and executor (real ssh, kubernetes and aws backends,
    /// jobs over SSH) instead of the fakes; the manual clock and in-memory API as usual.
    pub async fn with_real_backends() -> Harness {
        Self::with_real_backends_of(INSTALLATION).await
    }

    /// As [`Harness::with_real_backends`], for the installation `installation` (the
    /// identity its machines are tagged with): a cluster of its own.
    pub async fn with_real_backends_of(installation: &str) -> Harness {
        Self::build(catalog(), Some(installation)).await
    }

    /// As [`Harness::with_real_backends_of`], with what the operator allows backends beyond
    /// their own namespace and their providers' official endpoints (a loopback moto, a
    /// namespace for machine Pods), as `--allow-endpoint` and
    /// `--kubernetes-backend-namespaces` do.
    pub async fn with_real_backends_allowing(
        installation: &str,
        allowances: kpool::backends::allow::Allowances,
    ) -> Harness {
        let mut h = Self::with_real_backends_of(installation).await;
        let client = h.ctx.client.clone();
        let factory = Arc::new(
            kpool::backends::factory::DefaultFactory::new(client.clone())
                .with_installation(installation)
                .with_allowances(allowances),
        );
        let executor = Arc::new(kpool::exec::DispatchExecutor::new(client.clone(), factory.clone()));
        h.ctx = context(client, factory, executor, &h.clock);
        h
    }

    pub async fn with_offers(offers: Vec<Offer>) -> Harness {
        Self::build(offers, None).await
    }

    /// The fake backend, as [`Harness::new`], with the production executor
    /// ([`DispatchExecutor`](kpool::exec::DispatchExecutor)) instead of the scripted one.
    pub async fn with_dispatch_executor() -> Harness {
        let mut h = Self::new().await;
        let client = h.ctx.client.clone();
        let factory = Arc::new(kpool::backends::factory::DefaultFactory::new(client.clone()));
        let executor = Arc::new(kpool::exec::DispatchExecutor::new(client.clone(), factory));
        let fake: Arc<dyn kpool::backends::BackendFactory> = Arc::new(FakeFactory::with([h.backend.clone()]));
        h.ctx = context(client, fake, executor, &h.clock);
        h
    }

    /// `real`: the production factory and executor, for this installation.
    async fn build(offers: Vec<Offer>, real: Option<&str>) -> Harness {
        let fail_status_writes = Arc::new(AtomicUsize::new(0));
        let fail_instance_creates = Arc::new(AtomicUsize::new(0));
        let fail_create = fail_instance_creates.clone();
        let fail = fail_status_writes.clone();
        let fail_run_status_writes = Arc::new(AtomicUsize::new(0));
        let fail_run = fail_run_status_writes.clone();
        let refuse_job_pods = Arc::new(std::sync::Mutex::new(None::<String>));
        let refuse = refuse_job_pods.clone();
        let funcs = Funcs::new().create(move |ctx| {
            if let Some(why) = invalid_label_value(ctx.object) {
                return Err(kube_fake_client::Error::InvalidRequest(why));
            }
            let job_pod = ctx.object.get("kind").and_then(Value::as_str) == Some("Pod")
                && ctx.object.pointer("/metadata/labels/kpool.dev~1run-uid").is_some();
            if let Some(why) = refuse.lock().unwrap().clone().filter(|_| job_pod) {
                return Err(kube_fake_client::Error::InvalidRequest(why));
            }
            let instance = ctx.object.get("kind").and_then(Value::as_str) == Some("Instance");
            if instance && fail_create.load(Ordering::SeqCst) > 0 {
                fail_create.fetch_sub(1, Ordering::SeqCst);
                return Err(kube_fake_client::Error::Internal("injected failure of an Instance create".into()));
            }
            Ok(None)
        });
        let funcs = funcs.patch_status(move |ctx: PatchStatusContext| {
            if fail.load(Ordering::SeqCst) > 0 {
                fail.fetch_sub(1, Ordering::SeqCst);
                return Err(conflict("injected conflict".into()));
            }
            let run = ctx.patch.get("kind").and_then(Value::as_str) == Some("Run");
            if run && fail_run.load(Ordering::SeqCst) > 0 {
                fail_run.fetch_sub(1, Ordering::SeqCst);
                return Err(kube_fake_client::Error::Internal("injected failure of a Run status write".into()));
            }
            if ctx.patch_type != kube_fake_client::PatchType::ApplyPatch {
                return Ok(None);
            }
            match ctx.patch.get("kind").and_then(Value::as_str) {
                Some("Instance") => replace_status::<Instance>(&ctx),
                Some("Run") => replace_status::<Run>(&ctx),
                Some("Pool") => replace_status::<Pool>(&ctx),
                Some("Backend") => replace_status::<Backend>(&ctx),
                _ => Ok(None),
            }
        });
        let client = ClientBuilder::new()
            .with_resource::<Instance>()
            .with_status_subresource::<Instance>()
            .with_resource::<Run>()
            .with_status_subresource::<Run>()
            .with_resource::<Pool>()
            .with_status_subresource::<Pool>()
            .with_resource::<Profile>()
            .with_resource::<Backend>()
            .with_status_subresource::<Backend>()
            .with_resource::<k8s_openapi::api::events::v1::Event>()
            .with_resource::<k8s_openapi::api::coordination::v1::Lease>()
            .with_resource::<k8s_openapi::api::core::v1::Pod>()
            .with_status_subresource::<k8s_openapi::api::core::v1::Pod>()
            .with_resource::<k8s_openapi::api::core::v1::Node>()
            .with_resource::<k8s_openapi::api::core::v1::Namespace>()
            .with_resource::<k8s_openapi::api::core::v1::Secret>()
            .with_resource::<k8s_openapi::api::core::v1::ConfigMap>()
            .with_interceptor_funcs(funcs)
            .build()
            .await
            .expect("fake client");
        // The controllers talk through a recording client; the test's own calls do not.
        let (controller_client, api_calls) = recording(client.clone());
        let backend = FakeBackend::new("aws", offers);
        let clock = ManualClock::new(t0());
        let exec = ScriptedExecutor::default();
        let (factory, executor): (Arc<dyn kpool::backends::BackendFactory>, Arc<dyn kpool::exec::Executor>) =
            if let Some(installation) = real {
                let factory = Arc::new(
                    kpool::backends::factory::DefaultFactory::new(controller_client.clone())
                        .with_installation(installation),
                );
                (factory.clone(), Arc::new(kpool::exec::DispatchExecutor::new(controller_client.clone(), factory)))
            } else {
                (Arc::new(FakeFactory::with([backend.clone()])), Arc::new(exec.clone()))
            };
        let ctx = context(controller_client, factory, executor, &clock);
        let h = Harness {
            client,
            ctx,
            clock,
            backend,
            exec,
            fail_status_writes,
            fail_instance_creates,
            fail_run_status_writes,
            api_calls,
            refuse_job_pods,
        };
        h.create(Backend::new("aws", BackendSpec { type_: BackendType::Aws, ..Default::default() })).await;
        h
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn create<K>(&self, obj: K) -> K
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let obj = as_created(obj, self.clock_now());
        self.api::<K>().create(&PostParams::default(), &obj).await.expect("create")
    }

    pub fn clock_now(&self) -> Timestamp {
        use kpool::controllers::Clock;
        self.clock.now()
    }

    pub async fn pool(&self, name: &str, spec: PoolSpec) -> Pool {
        self.create(Pool::new(name, spec)).await
    }

    pub async fn instance(&self, name: &str, spec: InstanceSpec) -> Instance {
        self.create(Instance::new(name, spec)).await
    }

    pub async fn run(&self, name: &str, spec: RunSpec) -> Run {
        self.create(Run::new(name, spec)).await
    }

    pub async fn get_instance(&self, name: &str) -> Instance {
        self.api::<Instance>().get(name).await.expect("instance exists")
    }

    pub async fn get_run(&self, name: &str) -> Run {
        self.api::<Run>().get(name).await.expect("run exists")
    }

    pub async fn reconcile_instance(&self, name: &str) -> Result<Action, Error> {
        let obj = self.get_instance(name).await;
        instance::reconcile(Arc::new(obj), self.ctx.clone()).await
    }

    pub async fn reconcile_run(&self, name: &str) -> Result<Action, Error> {
        let obj = self.get_run(name).await;
        run::reconcile(Arc::new(obj), self.ctx.clone()).await
    }

    /// A fingerprint of every object's resourceVersion, to tell when nothing changes.
    async fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        v.extend(
            self.api::<Run>()
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|o| format!("r/{}/{:?}", o.name_any(), o.resource_version())),
        );
        v.extend(
            self.api::<Instance>()
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|o| format!("i/{}/{:?}", o.name_any(), o.resource_version())),
        );
        v.extend(
            self.api::<Pool>()
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|o| format!("p/{}/{:?}", o.name_any(), o.resource_version())),
        );
        v
    }

    /// One reconcile of every `K` listed now, each a future that yields the error, if any.
    async fn reconcile_each<'a, K, F, Fut>(&'a self, kind: &'static str, reconcile: F) -> Vec<Job<'a>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + 'a,
        F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + 'a,
        Fut: std::future::Future<Output = Result<Action, Error>> + 'a,
    {
        let objects = self.api::<K>().list(&Default::default()).await.unwrap().items;
        let jobs = objects.into_iter().map(move |obj| {
            let name = format!("{kind} {}", obj.name_any());
            let job: Job<'a> = Box::pin(async move {
                reconcile(Arc::new(obj), self.ctx.clone())
                    .await
                    .err()
                    .map(|e| format!("{name}: {}", kpool::controllers::chain(&e)))
            });
            job
        });
        jobs.collect()
    }

    /// Plays the controllers: reconciles every Run, then every Instance, then every Pool
    /// (each kind listed afresh), at least `rounds` times and then until a round changes
    /// nothing (at most 30 rounds), as the watch loops would. Errors are tolerated (the
    /// real loop requeues them); the errors of the last round are returned.
    pub async fn settle(&self, rounds: usize) -> Vec<String> {
        let mut errors = Vec::new();
        for round in 0..30 {
            let (before, woken) = (self.versions().await, self.ctx.plans.woken());
            errors.clear();
            for job in self.reconcile_each("run", run::reconcile).await {
                errors.extend(job.await);
            }
            for job in self.reconcile_each("instance", instance::reconcile).await {
                errors.extend(job.await);
            }
            for job in self.reconcile_each("pool", pool::reconcile).await {
                errors.extend(job.await);
            }
            // A run woken by another's pass (see `placement`) is looked at again.
            if round + 1 >= rounds && before == self.versions().await && woken == self.ctx.plans.woken() {
                break;
            }
        }
        errors
    }

    /// As [`Harness::settle`], but each round reconciles every object concurrently, in
    /// an order drawn from `seed`, so that two reconcilers race for the same objects
    /// as the controller's worker pool lets them.
    pub async fn settle_racing(&self, seed: &mut u64) -> Vec<String> {
        let mut errors = Vec::new();
        // A failed reconcile is requeued within seconds by the controller (its error
        // policy), well within a step of the simulation: a round that changed nothing but
        // failed somewhere is played again, at most twice.
        let mut retries = 0;
        for _ in 0..30 {
            let (before, woken) = (self.versions().await, self.ctx.plans.woken());
            let mut jobs = self.reconcile_each("run", run::reconcile).await;
            jobs.extend(self.reconcile_each("instance", instance::reconcile).await);
            jobs.extend(self.reconcile_each("pool", pool::reconcile).await);
            // Fisher-Yates with a small LCG: reproducible from the seed.
            for k in (1..jobs.len()).rev() {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                jobs.swap(k, (*seed >> 33) as usize % (k + 1));
            }
            errors = futures::future::join_all(jobs).await.into_iter().flatten().collect();
            if before == self.versions().await && woken == self.ctx.plans.woken() {
                if errors.is_empty() || retries == 2 {
                    break;
                }
                retries += 1;
            }
        }
        errors
    }

    /// Deletes an instance the way the API server does with finalizers: marks it,
    /// reconciles it, and removes it once no finalizer is left.
    pub async fn delete_instance(&self, name: &str) -> Result<Action, Error> {
        let mut obj = self.get_instance(name).await;
        obj.metadata.deletion_timestamp = Some(Time(self.clock_now()));
        let r = instance::reconcile(Arc::new(obj), self.ctx.clone()).await;
        if self.get_instance(name).await.finalizers().iter().all(|f| f == HOLD) {
            self.api::<Instance>().delete(name, &Default::default()).await.expect("delete");
        }
        r
    }

    /// Deletes a run as the API server and the controller do: a run carries no finalizer,
    /// so it is removed at once, and the instances its deletion wakes (the run watch's
    /// delete, `controllers::runtime::instances_of_deleted`) are reconciled until they
    /// settle. A run with the finalizer of earlier versions is marked, reconciled (which
    /// cleans up and removes it), then removed. Returns the last reconcile's outcome.
    pub async fn delete_run(&self, name: &str) -> Result<Action, Error> {
        let mut obj = self.get_run(name).await;
        if obj.finalizers().iter().any(|f| f == kpool::api::run::RUN_FINALIZER) {
            obj.metadata.deletion_timestamp = Some(Time(self.clock_now()));
            let r = run::reconcile(Arc::new(obj), self.ctx.clone()).await;
            if self.get_run(name).await.finalizers().iter().all(|f| f == HOLD) {
                self.api::<Run>().delete(name, &Default::default()).await.expect("delete");
            }
            return r;
        }
        self.api::<Run>().delete(name, &Default::default()).await.expect("delete");
        self.ctx.forget_object(&obj.uid().unwrap_or_default());
        let mut last = Ok(Action::await_change());
        for inst in kpool::controllers::runtime::instances_of_deleted(&obj) {
            for _ in 0..8 {
                let Some(i) = self.api::<Instance>().get_opt(&inst.name).await.unwrap() else { break };
                let version = i.resource_version();
                last = instance::reconcile(Arc::new(i), self.ctx.clone()).await;
                let now = self.api::<Instance>().get_opt(&inst.name).await.unwrap();
                if now.is_none_or(|n| n.resource_version() == version) {
                    break;
                }
            }
        }
        last
    }

    /// How many API requests the controllers have made so far.
    pub fn calls_made(&self) -> usize {
        self.api_calls.lock().unwrap().len()
    }

    /// Status writes of `resource` (`runs/status`, `instances/status`) among the
    /// controllers' requests since the first `before` ([`Harness::calls_made`]).
    pub fn status_writes_since(&self, before: usize, resource: &str) -> usize {
        self.api_calls.lock().unwrap()[before..].iter().filter(|c| c.verb == "patch" && c.resource == resource).count()
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

/// A Ready, schedulable node of the in-memory cluster with this allocatable capacity
/// (e.g. `[("cpu", "16"), ("memory", "64Gi"), ("pods", "110")]`), labelled amd64.
pub fn ready_node(name: &str, allocatable: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Node {
    use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(std::collections::BTreeMap::from([("kubernetes.io/arch".to_string(), "amd64".to_string())])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(allocatable.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}
