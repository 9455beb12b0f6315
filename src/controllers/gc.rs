//! The garbage collector: a periodic pass per `Backend` that deletes (or, in report-only
//! mode, reports) machines tagged as kpool's that no `Instance` owns.
//!
//! An instance owns the machine of its name at a backend only where it may hold it
//! ([`claimed_backends`]): its offer's backend, and backends a launch of it went to that
//! is still in flight or unanswered; while it is torn down, every place its teardown
//! deletes at; nowhere once it is Failed or Terminated. So the second machine of a launch
//! that was repeated elsewhere, and the machine of a Failed instance, are collected.
//!
//! It only ever sees this installation's machines of the `Backend`'s namespace: a backend
//! lists the machines of its owner (see [`crate::backends::Owner`]), so machines of
//! another cluster, or of a namespace another controller watches, in the same cloud
//! account or Pod namespace are never candidates. Machines launched before machines
//! carried an installation identity (kpool's marker, no installation tag) may be anyone's:
//! unowned ones are only reported (Warning `UnattributedMachine` on the `Backend`, after
//! the same grace), never deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::Api;
use kube::ResourceExt;

use super::{Context, Error};
use crate::api::backend::Backend as BackendObject;
use crate::api::instance::Instance;
use crate::api::reasons::Reason;
use crate::core::gc::{orphans, unowned};
use crate::core::instance::launch::claimed_backends;

/// Settings of the garbage collector.
#[derive(Clone, Debug)]
pub struct GcConfig {
    /// Time between passes.
    pub interval: Duration,
    /// How long a machine must stay unowned before it is collected.
    pub grace: Duration,
    /// Only report orphans (Warning Events on the `Backend`), never delete.
    pub report_only: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig { interval: Duration::from_secs(300), grace: Duration::from_secs(900), report_only: false }
    }
}

/// What one pass did.
#[derive(Debug, Default, PartialEq)]
pub struct GcReport {
    pub deleted: Vec<String>,
    pub reported: Vec<String>,
    /// Unowned machines without an installation identity, reported and left alone.
    pub unattributed: Vec<String>,
}

/// Instances read per request when a pass lists them from the API.
const GC_PAGE: u32 = 500;

/// Per Backend (namespace, name): the machine names of `instances` that may hold their
/// machine there. A Failed or Terminated instance holds none, and a live one only at its
/// offer's backend and where a launch of it is in flight or unresolved.
fn claims_of<'a>(instances: impl Iterator<Item = &'a Instance>) -> HashMap<(String, String), HashSet<String>> {
    let mut claims: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for inst in instances {
        let Some(st) = inst.status.as_ref() else { continue };
        let Some(name) = st.machine_name.as_ref() else { continue };
        let ns = inst.namespace().unwrap_or_default();
        for backend in claimed_backends(st) {
            claims.entry((ns.clone(), backend)).or_default().insert(name.clone());
        }
    }
    claims
}

/// [`claims_of`] the instances the API lists now, 500 at a time.
async fn claims_from_api(insts: &Api<Instance>) -> Result<HashMap<(String, String), HashSet<String>>, Error> {
    let mut claims: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut page = kube::api::ListParams::default().limit(GC_PAGE);
    loop {
        let list = insts.list(&page).await?;
        for (key, names) in claims_of(list.items.iter()) {
            claims.entry(key).or_default().extend(names);
        }
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => page = page.continue_token(&token),
            None => return Ok(claims),
        }
    }
}

/// The collector's memory between passes.
#[derive(Default)]
pub struct Collector {
    first_seen: HashMap<(String, String), HashMap<String, Timestamp>>,
    /// The same, for machines without an installation identity.
    first_seen_unattributed: HashMap<(String, String), HashMap<String, Timestamp>>,
}

impl Collector {
    /// One pass over every `Backend` in the cluster (or in `namespace`).
    ///
    /// Which machines the instances hold is read from the watch cache first: when it
    /// accounts for every machine a backend lists, the pass makes no request to the API
    /// server (a quiet cluster stays quiet). A machine the cache does not account for is
    /// a candidate only: the instances are then listed from the API (in pages, one
    /// consistent snapshot), and only what the API says now can make a machine an orphan.
    /// A cache can only lag behind the API, so it may keep an orphan one pass longer,
    /// never make one.
    pub async fn pass(&mut self, ctx: &Context, cfg: &GcConfig, namespace: Option<&str>) -> Result<GcReport, Error> {
        let (backends, insts): (Api<BackendObject>, Api<Instance>) = match namespace {
            Some(ns) => (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns)),
            None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
        };
        let cached = ctx.cached(namespace, |c| &c.instances);
        let mut from_api = cached.is_none();
        let mut claims = match cached {
            Some(all) => claims_of(all.iter().map(|i| &**i)),
            None => claims_from_api(&insts).await?,
        };
        let backend_objects: Vec<Arc<BackendObject>> = match ctx.cached(namespace, |c| &c.backends) {
            Some(all) => all,
            None => backends.list(&Default::default()).await?.items.into_iter().map(Arc::new).collect(),
        };
        let none = HashSet::new();
        let mut report = GcReport::default();
        let now = ctx.now();
        for obj in &backend_objects {
            let obj = &**obj;
            let ns = obj.namespace().unwrap_or_default();
            let backend = match ctx.backend(&ns, &obj.name_any()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(backend = %obj.name_any(), error = %e, "skipping backend in gc");
                    continue;
                }
            };
            let machines = match backend.list_owned().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(backend = %obj.name_any(), category = e.category(), "failed to list machines for gc");
                    continue;
                }
            };
            let unattributed = backend.list_unattributed().await;
            let key = (ns.clone(), obj.name_any());
            let owned = claims.get(&key).unwrap_or(&none);
            let candidates = unowned(&machines, owned).next().is_some()
                || unattributed.as_ref().is_ok_and(|u| unowned(u, owned).next().is_some());
            if candidates && !from_api {
                claims = claims_from_api(&insts).await?;
                from_api = true;
            }
            let owned = claims.get(&key).unwrap_or(&none);
            match unattributed {
                Ok(unattributed) => {
                    let seen = self.first_seen_unattributed.entry(key.clone()).or_default();
                    for name in orphans(&unattributed, owned, seen, now, cfg.grace) {
                        let note = format!(
                            "machine {name} is tagged as kpool's but carries no installation identity (launched \
                             before kpool tagged machines with one) and no Instance here owns it; kpool never \
                             deletes such machines: delete it by hand if no other installation uses it"
                        );
                        ctx.event(obj, true, Reason::UnattributedMachine, note).await;
                        report.unattributed.push(name);
                    }
                }
                Err(e) => {
                    tracing::warn!(backend = %obj.name_any(), category = e.category(), "failed to list unattributed machines for gc")
                }
            }
            let seen = self.first_seen.entry(key).or_default();
            for name in orphans(&machines, owned, seen, now, cfg.grace) {
                if cfg.report_only {
                    ctx.event(
                        obj,
                        true,
                        Reason::OrphanedMachine,
                        format!("machine {name} is tagged as kpool's but no Instance owns it"),
                    )
                    .await;
                    report.reported.push(name);
                    continue;
                }
                match backend.delete(&name).await {
                    Ok(()) | Err(crate::backends::BackendError::NotFound(_)) => {
                        ctx.event(
                            obj,
                            true,
                            Reason::OrphanDeleted,
                            format!("deleted machine {name}: no Instance owns it"),
                        )
                        .await;
                        report.deleted.push(name);
                    }
                    Err(e) => tracing::warn!(machine = %name, category = e.category(), "failed to delete orphan"),
                }
            }
        }
        Ok(report)
    }
}

/// Runs passes forever, every `cfg.interval`.
pub async fn run(ctx: Arc<Context>, cfg: GcConfig, namespace: Option<String>) {
    let mut collector = Collector::default();
    loop {
        match collector.pass(&ctx, &cfg, namespace.as_deref()).await {
            Ok(r) if !r.deleted.is_empty() || !r.reported.is_empty() || !r.unattributed.is_empty() => {
                tracing::info!(
                    deleted = r.deleted.len(),
                    reported = r.reported.len(),
                    unattributed = r.unattributed.len(),
                    "garbage collection pass"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "garbage collection pass failed"),
        }
        tokio::time::sleep(cfg.interval).await;
    }
}
