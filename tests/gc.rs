//! The garbage collector against the in-memory API and the fake backend: machines
//! tagged as kpool's that no `Instance` owns are deleted after the grace period, or
//! only reported in report-only mode; owned machines are never touched.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kpool::api::instance::{InstancePhase, InstanceSpec};
use kpool::api::resources::ResourcesSpec;
use kpool::backends::fake::Call;
use kpool::backends::{Machine, MachineState, TAG_MANAGED_BY};
use kpool::controllers::gc::{Collector, GcConfig};
use support::*;

fn stray(name: &str) -> Machine {
    Machine {
        name: name.into(),
        provider_id: format!("i-{name}"),
        state: MachineState::Running,
        address: None,
        tags: BTreeMap::from([(TAG_MANAGED_BY.to_string(), "kpool".to_string())]),
    }
}

/// Machines the backend still runs (a deleted machine is Stopping until it is gone).
fn running(h: &Harness) -> Vec<String> {
    h.backend.live_machines().into_iter().filter(|m| m.state == MachineState::Running).map(|m| m.name).collect()
}

fn config(report_only: bool) -> GcConfig {
    GcConfig { interval: Duration::from_secs(60), grace: Duration::from_secs(900), report_only }
}

async fn owned_instance(h: &Harness) -> String {
    let spec = InstanceSpec {
        resources: ResourcesSpec { cpu: Some("4..".into()), ..Default::default() },
        ..Default::default()
    };
    h.instance("kept", spec).await;
    h.settle(2).await;
    let st = h.get_instance("kept").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle);
    st.machine_name.unwrap()
}

#[tokio::test]
async fn an_orphan_is_deleted_after_the_grace_period_and_owned_machines_are_kept() {
    let h = Harness::new().await;
    let kept = owned_instance(&h).await;
    h.backend.insert_machine(stray("kpool-lost"));
    let mut gc = Collector::default();

    let first = gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap();
    assert!(first.deleted.is_empty(), "the first sighting only starts the grace period");
    h.advance(Duration::from_secs(899));
    assert!(gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap().deleted.is_empty());
    h.advance(Duration::from_secs(1));
    let due = gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap();
    assert_eq!(due.deleted, vec!["kpool-lost".to_string()]);

    assert_eq!(running(&h), vec![kept.clone()]);
    assert!(h.backend.calls().contains(&Call::Delete { name: "kpool-lost".into() }));
    assert!(!h.backend.calls().contains(&Call::Delete { name: kept }));
    let events = h.api::<Event>().list(&Default::default()).await.unwrap().items;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("OrphanDeleted")), "{events:?}");
}

#[tokio::test]
async fn report_only_mode_never_deletes() {
    let h = Harness::new().await;
    h.backend.insert_machine(stray("kpool-lost"));
    let mut gc = Collector::default();
    gc.pass(&h.ctx, &config(true), Some(NS)).await.unwrap();
    h.advance(Duration::from_secs(3600));
    let report = gc.pass(&h.ctx, &config(true), Some(NS)).await.unwrap();
    assert_eq!(report.reported, vec!["kpool-lost".to_string()]);
    assert!(report.deleted.is_empty());
    assert_eq!(h.backend.live_machines().len(), 1);
    assert!(!h.backend.calls().iter().any(|c| matches!(c, Call::Delete { .. })));
    let events = h.api::<Event>().list(&Default::default()).await.unwrap().items;
    let warning = events.iter().find(|e| e.reason.as_deref() == Some("OrphanedMachine")).expect("a warning event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn a_machine_whose_instance_is_deleted_becomes_an_orphan() {
    let h = Harness::new().await;
    let kept = owned_instance(&h).await;
    // The Instance object vanishes without its finalizer running (e.g. force-removed).
    h.api::<kpool::api::instance::Instance>().delete("kept", &Default::default()).await.unwrap();
    let mut gc = Collector::default();
    gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap();
    h.advance(Duration::from_secs(900));
    let report = gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap();
    assert_eq!(report.deleted, vec![kept]);
    assert!(running(&h).is_empty());
}

/// The watch caches as the controllers keep them, holding what the API holds now.
async fn caches_now(h: &Harness) -> kpool::controllers::context::Caches {
    use kube::runtime::{reflector, watcher};
    async fn store<K>(h: &Harness) -> reflector::Store<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + 'static,
    {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in h.api::<K>().list(&Default::default()).await.unwrap().items {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }
    kpool::controllers::context::Caches {
        pools: store(h).await,
        instances: store(h).await,
        runs: store(h).await,
        backends: store(h).await,
        profiles: store(h).await,
    }
}

/// With the controllers' watch caches, a pass that finds every machine accounted for
/// makes no request to the API server; a machine the cache does not account for makes it
/// list the instances from the API, and an orphan is still deleted after the grace.
#[tokio::test]
async fn a_pass_is_silent_while_the_cache_accounts_for_every_machine() {
    let h = Harness::new().await;
    let kept = owned_instance(&h).await;
    h.ctx.use_caches(caches_now(&h).await);
    let mut gc = Collector::default();
    let before = h.calls_made();
    let quiet = gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap();
    assert_eq!(quiet, kpool::controllers::gc::GcReport::default());
    assert_eq!(h.calls_made(), before, "every machine is an instance's: nothing asked");

    h.backend.insert_machine(stray("kpool-lost"));
    let before = h.calls_made();
    assert!(gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap().deleted.is_empty());
    assert!(h.calls_made() > before, "a machine the cache does not account for is checked at the API");
    h.advance(Duration::from_secs(900));
    let due = gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap();
    assert_eq!(due.deleted, vec!["kpool-lost".to_string()]);
    assert_eq!(running(&h), vec![kept]);
}

/// A cache that lags behind the API (an instance and its machine made since it listed)
/// never makes an orphan: the API's list, read before anything is decided, owns it.
#[tokio::test]
async fn a_machine_the_cache_has_not_seen_the_instance_of_is_never_collected() {
    let h = Harness::new().await;
    let kept = owned_instance(&h).await;
    let stale = caches_now(&h).await;
    let spec = InstanceSpec {
        resources: ResourcesSpec { cpu: Some("2..".into()), ..Default::default() },
        ..Default::default()
    };
    h.instance("late", spec).await;
    h.settle(2).await;
    let late = h.get_instance("late").await.status.unwrap().machine_name.unwrap();
    h.ctx.use_caches(stale);
    let mut gc = Collector::default();
    for _ in 0..3 {
        let report = gc.pass(&h.ctx, &config(false), Some(NS)).await.unwrap();
        assert!(report.deleted.is_empty() && report.reported.is_empty(), "{report:?}");
        h.advance(Duration::from_secs(1800));
    }
    let mut want = vec![kept, late];
    want.sort();
    let mut have = running(&h);
    have.sort();
    assert_eq!(have, want);
}
