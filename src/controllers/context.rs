//! What every reconciler shares: the client, the backends, the executor, the clock.

use super::metrics::Metrics;
use super::requests::{counting, ApiRequests};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Error;
use crate::api::backend::Backend as BackendObject;
use crate::api::conditions::ObservedStatus;
use crate::api::offer::Offer;
use crate::api::resources::Requirements;
use crate::backends::{Backend, BackendFactory};
pub use crate::clock::{Clock, ManualClock, SystemClock};
use crate::core::offers::rank_offers;
use crate::core::policy::EffectivePolicy;
use crate::exec::Executor;

/// The field manager of every status write. One manager for all of kpool's status
/// writes, so that a field left out of an apply is removed.
pub const FIELD_MANAGER: &str = "kpool-controller";
/// How many ranked offers an instance keeps as candidates.
pub const MAX_CANDIDATES: usize = 20;

/// Built backends by (namespace, name), with the resourceVersion they were built from.
type BackendCache = HashMap<(String, String), (String, Arc<dyn Backend>)>;

/// Policy defaults of this installation (e.g. the chart's idle durations), by who created
/// the instance; the last layer before the built-in defaults.
#[derive(Clone, Debug, Default)]
pub struct SiteDefaults {
    pub run: crate::api::policy::PolicySpec,
    pub manual: crate::api::policy::PolicySpec,
}

impl SiteDefaults {
    pub fn for_origin(&self, origin: crate::core::policy::Origin) -> &crate::api::policy::PolicySpec {
        match origin {
            crate::core::policy::Origin::Run => &self.run,
            crate::core::policy::Origin::Manual => &self.manual,
        }
    }
}

/// How kpool watches the health of live instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// How often the provider is asked about each Idle or Busy instance's machine.
    pub interval: std::time::Duration,
    /// How long an instance may stay unreachable before it is given up (terminated, its
    /// run interrupted).
    pub unreachable_grace: std::time::Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: std::time::Duration::from_secs(60),
            unreachable_grace: std::time::Duration::from_secs(300),
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub factory: Arc<dyn BackendFactory>,
    pub executor: Arc<dyn Executor>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Every request `client` has sent, by verb, resource and outcome.
    pub requests: ApiRequests,
    /// The installation's defaults, below pools' defaults and above the built-in ones.
    pub site_defaults: SiteDefaults,
    /// Health checks of live instances.
    pub health: HealthConfig,
    /// The least time between two writes of a pool's status that change only its counts
    /// ([`COUNTS_INTERVAL`] unless set otherwise).
    pub counts_interval: std::time::Duration,
    events: super::events::Publisher,
    /// Instances this process admitted to a pool whose admission may not be visible in
    /// the API yet, per (namespace, pool). With a single active controller this makes
    /// `maxInstances` strict even when two instances are reconciled at once.
    admissions: Mutex<HashMap<(String, String), HashSet<String>>>,
    /// Launches this process let through its budget checks whose offer the watch cache
    /// may not show yet, per namespace and instance: counted by the next checks, so two
    /// launches checked at once cannot together go beyond a budget.
    launches: Mutex<HashMap<String, HashMap<String, PendingLaunch>>>,
    /// The resourceVersions of this process's last writes of each object, by UID: a
    /// cached copy with another one may predate the last write (see [`Self::is_current`]).
    written: Mutex<HashMap<String, Writes>>,
    /// Claims this process is making, by run UID: the instance a run is taking, until
    /// the run's status says so (see [`Self::claim_in_flight`]).
    claims: Mutex<HashMap<String, String>>,
    /// Each pool's last queue-order assignment of its waiting runs, shared by their
    /// reconciles (see [`super::placement`]).
    pub plans: super::placement::Plans,
    /// Built backends by (namespace, name, resourceVersion of the `Backend` object).
    backends: Mutex<BackendCache>,
    /// When each live instance's machine was last looked at (by instance UID).
    health_checked: Mutex<HashMap<String, Timestamp>>,
    /// When each pool's status was last written, by (namespace, name) (see
    /// [`Self::counts_due`]).
    pool_written: Mutex<HashMap<(String, String), Timestamp>>,
    /// The controllers' watch caches, once they run (reconcile tests run without).
    caches: std::sync::OnceLock<Caches>,
}

/// This process's writes of one object: the resourceVersion of the last, and of a few
/// before it (a copy showing one of those is known stale without asking the API).
#[derive(Default)]
struct Writes {
    last: String,
    earlier: Vec<String>,
}

impl Writes {
    const KEPT: usize = 8;
}

/// The stores the controllers' watches keep (one watch per kind, shared): what the
/// reconcilers list from instead of asking the API server for every object of a
/// namespace on every pass. Writes still go to the API with resourceVersion
/// preconditions, so a decision made on a copy the watch has not caught up with fails
/// with 409 and is made again, never twice.
#[derive(Clone)]
pub struct Caches {
    pub pools: Store<crate::api::pool::Pool>,
    pub instances: Store<crate::api::instance::Instance>,
    pub runs: Store<crate::api::run::Run>,
    pub backends: Store<BackendObject>,
    /// Profiles have no controller: a watch of their own keeps this store.
    pub profiles: Store<crate::api::profile::Profile>,
}

impl Caches {
    /// Waits until every store has listed everything once, saying every `warn_every`
    /// which ones it still waits for (a watch that cannot list, e.g. for lack of RBAC,
    /// retries with backoff meanwhile).
    ///
    /// Called once, by one task, before any reconciler reads the stores. A store's own
    /// `wait_until_ready` wakes only the task that polled it last: with many reconciles
    /// waiting at once (and polls that only peek), the others slept until a timeout. That
    /// is what kept a new leader's first reconciles 30 s late.
    pub async fn wait_until_ready(&self, warn_every: std::time::Duration) {
        use futures::FutureExt;
        loop {
            let pending: Vec<&str> = [
                ("pools", self.pools.wait_until_ready().now_or_never().is_some()),
                ("instances", self.instances.wait_until_ready().now_or_never().is_some()),
                ("runs", self.runs.wait_until_ready().now_or_never().is_some()),
                ("backends", self.backends.wait_until_ready().now_or_never().is_some()),
                ("profiles", self.profiles.wait_until_ready().now_or_never().is_some()),
            ]
            .into_iter()
            .filter(|(_, ready)| !ready)
            .map(|(what, _)| what)
            .collect();
            if pending.is_empty() {
                return;
            }
            let all = async {
                let _ = self.pools.wait_until_ready().await;
                let _ = self.instances.wait_until_ready().await;
                let _ = self.runs.wait_until_ready().await;
                let _ = self.backends.wait_until_ready().await;
                let _ = self.profiles.wait_until_ready().await;
            };
            if tokio::time::timeout(warn_every, all).await.is_ok() {
                return;
            }
            tracing::warn!(?pending, "still waiting for the first list of these watches before reconciling");
        }
    }
}

impl Context {
    pub fn new(
        client: Client,
        factory: Arc<dyn BackendFactory>,
        executor: Arc<dyn Executor>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let counted = metrics.clone();
        let requests =
            ApiRequests::with_hook(move |call, outcome| counted.api_request(&call.verb, &call.resource, outcome));
        let client = counting(client, requests.clone());
        Context {
            events: super::events::Publisher::new(client.clone(), "kpool", std::env::var("POD_NAME").ok()),
            client,
            factory,
            executor,
            clock,
            metrics,
            requests,
            site_defaults: SiteDefaults::default(),
            health: HealthConfig::default(),
            counts_interval: COUNTS_INTERVAL,
            admissions: Mutex::default(),
            launches: Mutex::default(),
            written: Mutex::default(),
            claims: Mutex::default(),
            plans: Default::default(),
            backends: Mutex::default(),
            health_checked: Mutex::default(),
            pool_written: Mutex::default(),
            caches: std::sync::OnceLock::new(),
        }
    }

    /// Reads lists from these watch caches from now on. Every store must have listed
    /// everything already (see `Caches::wait_until_ready`): reads take them as they are.
    pub fn use_caches(&self, caches: Caches) {
        let _ = self.caches.set(caches);
    }

    /// Every `K` of namespace `ns`, by name: from the watch cache `pick` chooses, from
    /// the API without caches (reconcile tests).
    pub async fn list_in<K>(&self, ns: &str, pick: impl Fn(&Caches) -> &Store<K>) -> Result<Vec<K>, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + 'static,
    {
        if let Some(shared) = self.cached(Some(ns), pick) {
            let mut objects: Vec<K> = shared.into_iter().map(|o| (*o).clone()).collect();
            objects.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
            return Ok(objects);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        Ok(api.list(&Default::default()).await?.items)
    }

    /// Like [`Self::list_in`], sharing the watch cache's copies instead of cloning them
    /// and in no particular order: for passes that look at every object of a namespace
    /// and keep few.
    pub async fn list_shared<K>(&self, ns: &str, pick: impl Fn(&Caches) -> &Store<K>) -> Result<Vec<Arc<K>>, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + 'static,
    {
        if let Some(objects) = self.cached(Some(ns), pick) {
            return Ok(objects);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        Ok(api.list(&Default::default()).await?.items.into_iter().map(Arc::new).collect())
    }

    /// Every `K` of the watch cache `pick` chooses, of namespace `ns` or of all, shared
    /// with it; `None` without caches (reconcile tests, the CLI).
    pub fn cached<K>(&self, ns: Option<&str>, pick: impl Fn(&Caches) -> &Store<K>) -> Option<Vec<Arc<K>>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let store = self.caches.get().map(pick)?;
        let all = store.state().into_iter();
        Some(all.filter(|o| ns.is_none_or(|ns| o.meta().namespace.as_deref() == Some(ns))).collect())
    }

    /// `K` named `name` in namespace `ns`: the watch cache's copy when the cache has listed
    /// everything and `trusted` accepts that copy, else the API's. A watch may lag behind
    /// the API by a moment, so only an answer that is safe to act on while a little stale
    /// is taken from the cache (e.g. "the instance still holds this run": a lagging copy
    /// can only say so of a run that held it a moment ago, which the next poll corrects);
    /// an answer that would end something (gone, released, another run) is read again
    /// from the API first. This keeps a running run's and a busy instance's periodic
    /// checks off the API server.
    pub async fn get_in<K>(
        &self,
        ns: &str,
        name: &str,
        pick: impl Fn(&Caches) -> &Store<K>,
        trusted: impl Fn(&K) -> bool,
    ) -> Result<Option<K>, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + 'static,
    {
        if let Some(store) = self.caches.get().map(pick) {
            let key = kube::runtime::reflector::ObjectRef::new(name).within(ns);
            if let Some(obj) = store.get(&key).filter(|o| trusted(o)) {
                return Ok(Some((*obj).clone()));
            }
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Publishes an Event about `obj`. Failing to publish never fails a reconcile.
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: impl AsRef<str>, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let reason = reason.as_ref();
        if let Err(e) = self.events.publish(obj.object_ref(&()), warning, reason, note).await {
            tracing::debug!(error = %e, reason, "failed to publish event");
        }
    }

    /// A pass over a new generation of `name`'s spec ended: records that its status
    /// describes that generation, if no write of the pass did (the spec changed nothing,
    /// e.g. a new `idleDuration` of a busy instance, new commands of a finished run).
    /// Without it kstatus would report the object InProgress until its next status change.
    /// `status` picks the object's status.
    pub async fn observe_generation<K, S, F>(
        &self,
        api: &Api<K>,
        name: &str,
        generation: Option<i64>,
        status: F,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        S: ObservedStatus + Serialize + Clone,
        F: Fn(&K) -> Option<&S>,
    {
        let Some(latest) = api.get_opt(name).await? else { return Ok(()) };
        let Some(mut st) = status(&latest).filter(|s| s.observed_generation() != generation).cloned() else {
            return Ok(());
        };
        if latest.meta().generation != generation {
            return Ok(()); // changed again: the next pass records it
        }
        st.observe(generation);
        match self.write_status(&latest, &st).await {
            Err(Error::Kube(e)) if super::is_conflict(&e) => Ok(()), // changed meanwhile: a new pass comes
            other => other.map(|_| ()),
        }
    }

    /// Writes `status` of `obj` by Server-Side Apply, with the observed resourceVersion
    /// as a precondition so a decision made on stale state is rejected (409) and retried.
    pub async fn write_status<K, S>(&self, obj: &K, status: &S) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        S: Serialize,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": {"name": obj.name_any(), "resourceVersion": obj.resource_version()},
            "status": status,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let mut written = api.patch_status(&obj.name_any(), &pp, &Patch::Apply(&body)).await?;
        self.record_write(obj, &written);
        // Kept as the watch caches keep objects: a batch holds the claims it wrote until
        // their runs' passes take them, and the field managers' bookkeeping was most of
        // each (at 4,000 claims, 25 MB of 168 MB in use).
        super::runtime::slim(&mut written);
        Ok(written)
    }

    /// Whether `obj` (a copy from the watch cache) shows this process's last status write
    /// of it, or a later change: only then may a decision that must not be made twice
    /// (claiming an instance, starting a job) rest on it. The copies a process reads can
    /// only lag behind its own writes (a new process lists everything written before),
    /// so a copy whose resourceVersion is the one last written is current; another one
    /// is checked at the API once (the copy may be newer than the write: someone else
    /// changed the object since).
    pub async fn is_current<K>(&self, obj: &K) -> Result<bool, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let (Some(uid), Some(version)) = (obj.uid(), obj.resource_version()) else { return Ok(true) };
        let last = self.written.lock().expect("written").get(&uid).map(|w| w.last.clone());
        if last.is_none_or(|w| w == version) {
            return Ok(true);
        }
        if self.known_stale(obj) {
            return Ok(false);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        let fresh = api.get_opt(&obj.name_any()).await?;
        let current = fresh.and_then(|f| f.resource_version()).is_some_and(|v| v == version);
        if current {
            self.written.lock().expect("written").entry(uid).or_default().last = version;
        }
        Ok(current)
    }

    /// Whether `obj` is a copy this process knows to be older than its own last write of
    /// the object (one it wrote, or wrote over, before that write). No request is made.
    pub fn known_stale<K: Resource>(&self, obj: &K) -> bool {
        let (Some(uid), Some(version)) = (obj.uid(), obj.resource_version()) else { return false };
        self.written.lock().expect("written").get(&uid).is_some_and(|w| w.earlier.contains(&version))
    }

    /// Remembers `written`'s resourceVersion as this process's last write of the object,
    /// and the one it was written over (`base`, the copy the pass read) among the earlier
    /// ones: a version that existed before a write is older than the write's.
    fn record_write<K: Resource>(&self, base: &K, written: &K) {
        let (Some(uid), Some(version)) = (written.uid(), written.resource_version()) else { return };
        let mut all = self.written.lock().expect("written");
        let w = all.entry(uid).or_default();
        let last = std::mem::replace(&mut w.last, version);
        for old in [last, base.resource_version().unwrap_or_default()] {
            if !old.is_empty() && old != w.last && !w.earlier.contains(&old) {
                if w.earlier.len() == Writes::KEPT {
                    w.earlier.remove(0);
                }
                w.earlier.push(old);
            }
        }
    }

    /// Adds `finalizer` to `obj` (a copy that lacks it and is not being deleted) and
    /// returns the object as written, so that the pass goes on at once instead of waiting
    /// for the watch to bring the change back. `None` when the copy is older than this
    /// process's own last write of the object ([`Self::is_current`]): the finalizer was
    /// most likely added then, and the object is looked at again once the cache has caught
    /// up, instead of adding it twice. The patch tests the list it extends, so a concurrent
    /// change to it fails the patch instead of losing an entry.
    pub async fn add_finalizer<K>(&self, obj: &K, finalizer: &str) -> Result<Option<K>, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        if !self.is_current(obj).await? {
            return Ok(None);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        use json_patch::{jsonptr::PointerBuf, AddOperation, PatchOperation, TestOperation};
        use std::str::FromStr;
        let list = PointerBuf::from_str("/metadata/finalizers").expect("a valid JSON pointer");
        let (test, add) = match obj.finalizers() {
            // The API server leaves an empty list out.
            [] => (serde_json::Value::Null, (list.clone(), serde_json::json!([finalizer]))),
            present => {
                let end = PointerBuf::from_str("/metadata/finalizers/-").expect("a valid JSON pointer");
                (serde_json::json!(present), (end, serde_json::json!(finalizer)))
            }
        };
        let patch = json_patch::Patch(vec![
            PatchOperation::Test(TestOperation { path: list, value: test }),
            PatchOperation::Add(AddOperation { path: add.0, value: add.1 }),
        ]);
        let written = api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
        self.record_write(obj, &written);
        Ok(Some(written))
    }

    /// Drops what is kept about the writes and claims of an object that is gone.
    pub fn forget_object(&self, uid: &str) {
        self.written.lock().expect("written").remove(uid);
        self.claims.lock().expect("claims").remove(uid);
        self.plans.forget(uid);
    }

    /// Records that the run with UID `run` is claiming `instance` (before the claim is
    /// written), or, with `None`, that its status now says where it is.
    pub fn set_claim_in_flight(&self, run: &str, instance: Option<&str>) {
        let mut claims = self.claims.lock().expect("claims");
        match instance {
            Some(i) => claims.insert(run.to_string(), i.to_string()),
            None => claims.remove(run),
        };
    }

    /// Records that the run with UID `run` is claiming `instance`, unless this process
    /// has a claim for it already that its status does not show yet: then `false`.
    pub fn begin_claim(&self, run: &str, instance: &str) -> bool {
        let mut claims = self.claims.lock().expect("claims");
        if claims.contains_key(run) {
            return false;
        }
        claims.insert(run.to_string(), instance.to_string());
        true
    }

    /// The instance the run with UID `run` was claiming in this process when its pass
    /// ended before its status said so (the claim may be written but not in the cache yet).
    pub fn claim_in_flight(&self, run: &str) -> Option<String> {
        self.claims.lock().expect("claims").get(run).cloned()
    }

    /// The backend built from the `Backend` object `name` of namespace `ns`.
    pub async fn backend(&self, ns: &str, name: &str) -> Result<Arc<dyn Backend>, Error> {
        Ok(self.backend_and_object(ns, name).await?.0)
    }

    /// The backend built from the `Backend` object `name` of namespace `ns`, and the object.
    pub async fn backend_and_object(&self, ns: &str, name: &str) -> Result<(Arc<dyn Backend>, BackendObject), Error> {
        // A Backend's spec changes rarely; a cached copy is used while it exists (a
        // missing one is confirmed at the API).
        let obj = self
            .get_in(ns, name, |c| &c.backends, |_| true)
            .await?
            .ok_or_else(|| Error::MissingBackend(name.to_string(), ns.to_string()))?;
        Ok((self.build_backend(&obj).await?, obj))
    }

    /// The backend built from `obj` (cached while its resourceVersion stays the same).
    pub async fn build_backend(&self, obj: &BackendObject) -> Result<Arc<dyn Backend>, Error> {
        let key = (obj.namespace().unwrap_or_default(), obj.name_any());
        let version = obj.resource_version().unwrap_or_default();
        if let Some((v, b)) = self.backends.lock().expect("backends").get(&key) {
            if *v == version {
                return Ok(b.clone());
            }
        }
        let built =
            self.factory.build(obj).await.map_err(|source| Error::Backend { backend: key.1.clone(), source })?;
        self.backends.lock().expect("backends").insert(key, (version, built.clone()));
        Ok(built)
    }

    /// The cheapest fitting offers across the namespace's allowed backends, and the
    /// backends that could not be asked (name → error), so a status can say so.
    pub async fn ranked_offers(
        &self,
        ns: &str,
        req: &Requirements,
        policy: &EffectivePolicy,
    ) -> Result<(Vec<Offer>, BTreeMap<String, String>), Error> {
        let objects = self.list_in(ns, |c| &c.backends).await?;
        let mut offers = Vec::new();
        let mut failed = BTreeMap::new();
        for obj in objects.iter() {
            let name = obj.name_any();
            if !policy.backends.is_empty() && !policy.backends.contains(&name) {
                continue;
            }
            let result = match self.build_backend(obj).await {
                Ok(b) => b.offers(req).await.map_err(|e| e.to_string()),
                Err(e) => Err(match e {
                    Error::Backend { source, .. } => source.to_string(),
                    other => other.to_string(),
                }),
            };
            match result {
                Ok(list) => offers.extend(list.into_iter().map(|o| Offer { backend: name.clone(), ..o })),
                Err(msg) => {
                    failed.insert(name, msg);
                }
            }
        }
        Ok((rank_offers(offers.iter(), req, policy, MAX_CANDIDATES), failed))
    }

    /// Admits `name` to (ns, pool) when fewer than `max` instances hold capacity.
    /// `holding` are the instances the API shows holding capacity (self excluded).
    pub fn admit(&self, ns: &str, pool: &str, name: &str, max: Option<u32>, holding: &HashSet<String>) -> bool {
        let mut all = self.admissions.lock().expect("admissions");
        let ledger = all.entry((ns.to_string(), pool.to_string())).or_default();
        if ledger.contains(name) {
            return true;
        }
        // Admissions the API already shows are counted once.
        let pending_in_ledger = ledger.iter().filter(|n| !holding.contains(*n)).count();
        if crate::core::pool::fits(max, holding.len(), pending_in_ledger) {
            ledger.insert(name.to_string());
            true
        } else {
            false
        }
    }

    /// Whether the instance with this UID is due for a health check at `now`; when it is,
    /// the check is recorded as done now. Kept in memory: a restarted controller checks
    /// every live instance once at start.
    pub fn health_due(&self, uid: &str, now: Timestamp) -> bool {
        let mut checked = self.health_checked.lock().expect("health");
        let due = checked.get(uid).is_none_or(|last| crate::core::add(*last, self.health.interval) <= now);
        if due {
            checked.insert(uid.to_string(), now);
        }
        due
    }

    /// When the instance with this UID is next due for a health check.
    pub fn next_health_check(&self, uid: &str, now: Timestamp) -> std::time::Duration {
        let last = self.health_checked.lock().expect("health").get(uid).copied().unwrap_or(now);
        super::instance::until(now, crate::core::add(last, self.health.interval))
    }

    /// Drops what is kept about an instance that is gone.
    pub fn forget_health(&self, uid: &str) {
        self.health_checked.lock().expect("health").remove(uid);
    }

    /// Forgets an admission once the API shows it (or the instance is gone), and the
    /// instance's launch approved against budgets, if any.
    pub fn forget_admission(&self, ns: &str, pool: &str, name: &str) {
        if let Some(l) = self.admissions.lock().expect("admissions").get_mut(&(ns.to_string(), pool.to_string())) {
            l.remove(name);
        }
        if let Some(l) = self.launches.lock().expect("launches").get_mut(ns) {
            l.remove(name);
        }
    }

    /// Checks the launch of instance `name` in `ns` against budgets, atomically with the
    /// other launches of this process: `check` gets, for what a budget covers, the $/hour
    /// of launches approved earlier that the cache does not show yet (`shown`: instances
    /// whose offer it shows), and says why the launch would go beyond, if it would. An
    /// approved launch is recorded until the cache shows it or [`Self::forget_admission`].
    /// How long a write of the pool `name` of namespace `ns` that would change only its
    /// counts waits: zero when its status was last written `counts_interval` ago or more
    /// (or never by this process), else what is left of that interval.
    pub fn counts_due(&self, ns: &str, name: &str) -> std::time::Duration {
        let last = self.pool_written.lock().expect("pools").get(&(ns.to_string(), name.to_string())).copied();
        let Some(last) = last else { return std::time::Duration::ZERO };
        let since = std::time::Duration::try_from(self.now().duration_since(last)).unwrap_or_default();
        self.counts_interval.saturating_sub(since)
    }

    /// Notes that the status of pool `name` of namespace `ns` was written now.
    pub fn pool_written(&self, ns: &str, name: &str) {
        self.pool_written.lock().expect("pools").insert((ns.to_string(), name.to_string()), self.now());
    }

    pub fn approve_launch(
        &self,
        ns: &str,
        name: &str,
        launch: PendingLaunch,
        shown: &HashSet<String>,
        check: impl FnOnce(&dyn Fn(&crate::core::budget::Covers) -> f64) -> Result<Option<String>, Error>,
    ) -> Result<Option<String>, Error> {
        let mut all = self.launches.lock().expect("launches");
        let ledger = all.entry(ns.to_string()).or_default();
        ledger.retain(|n, _| !shown.contains(n));
        let pending = |covers: &crate::core::budget::Covers| -> f64 {
            ledger
                .iter()
                .filter(|(n, l)| n.as_str() != name && covers.includes(&l.pool, l.profile.as_deref()))
                .map(|(_, l)| l.price)
                .sum()
        };
        let why = check(&pending)?;
        if why.is_none() {
            ledger.insert(name.to_string(), launch);
        }
        Ok(why)
    }
}

/// The least time between two writes of a pool's status that change only its counts
/// (instances idle, busy, …, and its cost's runs): every claim and release changes them,
/// and a stream of runs wrote the pool once per run. A change of its conditions is
/// written at once.
pub const COUNTS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// A launch approved against budgets (see [`Context::approve_launch`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingLaunch {
    /// The offer's $/hour.
    pub price: f64,
    /// The instance's pool.
    pub pool: String,
    /// The profile it is launched under (its own, else its pool's).
    pub profile: Option<String>,
}
