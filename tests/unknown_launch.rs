//! Launches whose outcome is unknown, on the in-memory API with two fake backends: a
//! launch whose answer is lost is looked up where it went before any other offer is
//! tried; teardown and the garbage collector see every place a launch went to.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kpool::api::backend::{Backend, BackendSpec, BackendType};
use kpool::api::conditions::find;
use kpool::api::instance::{InstancePhase, InstanceSpec, InstanceStatus, LaunchOutcome};
use kpool::api::resources::ResourcesSpec;
use kpool::backends::fake::{FakeBackend, FakeFactory};
use kpool::backends::{BackendError, Machine, MachineState, TAG_MANAGED_BY};
use kpool::controllers::gc::{Collector, GcConfig};
use kpool::controllers::Context;
use kpool::core::instance::launch::ABSENT_AFTER;
use support::*;

/// A harness whose cheapest offer is on the fake `aws` (us-east-1) and the next one on
/// the fake `other` (us-west-2).
async fn two_backends() -> (Harness, FakeBackend) {
    let mut h = Harness::with_offers(vec![offer("m5.xlarge", 4, 16.0, 0, "", 0.0, 0.19)]).await;
    let west = kpool::api::offer::Offer { region: "us-west-2".into(), ..offer("n2.xlarge", 4, 16.0, 0, "", 0.0, 0.25) };
    let other = FakeBackend::new("other", vec![west]);
    h.create(Backend::new("other", BackendSpec { type_: BackendType::Aws, ..Default::default() })).await;
    let factory = Arc::new(FakeFactory::with([h.backend.clone(), other.clone()]));
    h.ctx = Arc::new(Context::new(h.ctx.client.clone(), factory, Arc::new(h.exec.clone()), Arc::new(h.clock.clone())));
    (h, other)
}

fn cpu4() -> InstanceSpec {
    InstanceSpec { resources: ResourcesSpec { cpu: Some("4".into()), ..Default::default() }, ..Default::default() }
}

fn lost() -> BackendError {
    BackendError::Unanswered("failed to launch m5.xlarge in us-east-1: no answer from EC2 within 30s".into())
}

/// Live machines of both backends, as `backend/name`.
fn live(h: &Harness, other: &FakeBackend) -> Vec<String> {
    let named = |b: &str, ms: Vec<Machine>| ms.into_iter().map(|m| format!("{b}/{}", m.name)).collect::<Vec<_>>();
    let mut all = named("aws", h.backend.live_machines());
    all.extend(named("other", other.live_machines()));
    all
}

/// Deletes the instance as the API server does, retrying while its machine is deleted.
async fn delete(h: &Harness, name: &str) {
    for _ in 0..5 {
        if h.delete_instance(name).await.is_ok() {
            return;
        }
    }
    panic!("instance {name} is still being deleted");
}

/// A running machine named `name`, tagged as kpool's.
fn running(name: &str, provider_id: &str) -> Machine {
    Machine {
        name: name.to_string(),
        provider_id: provider_id.to_string(),
        state: MachineState::Running,
        address: None,
        tags: BTreeMap::from([(TAG_MANAGED_BY.to_string(), "kpool".to_string())]),
    }
}

fn places(st: &InstanceStatus) -> Vec<(String, String, LaunchOutcome)> {
    st.launch_attempts.iter().map(|a| (a.backend.clone(), a.region.clone(), a.outcome)).collect()
}

#[tokio::test]
async fn a_launch_whose_answer_is_lost_is_found_and_used_before_any_other_offer() {
    let (h, other) = two_backends().await;
    h.backend.lose_next_create_answer(lost());
    h.instance("box", cpu4()).await;
    h.settle(2).await;

    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Provisioning, "{:?}", st.conditions);
    let c = find(&st.conditions, "LaunchResolved").expect("a LaunchResolved condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Resolving"), "{c:?}");
    assert!(c.message.contains("no answer") && c.message.contains("us-east-1"), "{}", c.message);
    assert_eq!(places(&st), vec![("aws".into(), "us-east-1".into(), LaunchOutcome::Unknown)]);
    assert!(other.creates().is_empty(), "no other offer while the first launch's outcome is unknown");

    // The first look-up finds the machine the lost launch started: it is the instance's.
    h.advance(Duration::from_secs(5));
    h.settle(2).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);
    assert_eq!(st.offer.as_ref().unwrap().backend, "aws");
    assert_eq!(st.provider_id, Some(h.backend.live_machines()[0].provider_id.clone()));
    assert_eq!(find(&st.conditions, "LaunchResolved").unwrap().reason, "MachineFound");
    assert_eq!(places(&st), vec![("aws".into(), "us-east-1".into(), LaunchOutcome::Launched)]);
    assert!(other.creates().is_empty());
    assert_eq!(live(&h, &other), vec![format!("aws/{}", st.machine_name.clone().unwrap())], "exactly one machine");

    // Deleted: no machine anywhere.
    delete(&h, "box").await;
    assert_eq!(live(&h, &other), Vec::<String>::new());
}

#[tokio::test]
async fn the_next_offer_is_tried_only_once_the_unanswered_launch_is_known_to_have_started_nothing() {
    let (h, other) = two_backends().await;
    // No answer, and (unknown to kpool) no machine either.
    h.backend.fail_next_create(lost());
    h.instance("box", cpu4()).await;
    h.settle(2).await;
    // Not there at the first look-ups: too early to believe (providers' lists lag).
    for _ in 0..3 {
        h.advance(Duration::from_secs(15));
        h.settle(2).await;
        let st = h.get_instance("box").await.status.unwrap();
        assert_eq!(st.phase, InstancePhase::Provisioning);
        assert_eq!(places(&st), vec![("aws".into(), "us-east-1".into(), LaunchOutcome::Unknown)]);
        assert!(other.creates().is_empty(), "no other offer before the machine is known to be absent");
    }
    h.advance(ABSENT_AFTER);
    h.settle(3).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);
    assert_eq!(st.offer.as_ref().unwrap().backend, "other");
    assert_eq!(find(&st.conditions, "LaunchResolved").unwrap().reason, "NoMachine");
    assert_eq!(
        places(&st),
        vec![
            ("aws".into(), "us-east-1".into(), LaunchOutcome::Absent),
            ("other".into(), "us-west-2".into(), LaunchOutcome::Launched)
        ]
    );
    assert_eq!(st.attempts.len(), 1);
    assert_eq!(st.attempts[0].error, "Unanswered");
    assert_eq!(other.creates().len(), 1);
}

#[tokio::test]
async fn deleting_the_instance_deletes_its_machine_at_every_place_a_launch_went() {
    let (h, other) = two_backends().await;
    h.backend.fail_next_create(lost());
    h.instance("box", cpu4()).await;
    h.settle(2).await;
    h.advance(ABSENT_AFTER);
    h.settle(3).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!((st.phase, st.offer.as_ref().unwrap().backend.as_str()), (InstancePhase::Idle, "other"));
    // The lost launch did start a machine after all, later than the look-ups could see.
    let name = st.machine_name.clone().unwrap();
    h.backend.insert_machine(running(&name, "late-1"));

    delete(&h, "box").await;
    assert_eq!(live(&h, &other), Vec::<String>::new(), "both places are cleaned up");
    assert!(h.api::<kpool::api::instance::Instance>().get_opt("box").await.unwrap().is_none());
}

fn gc_config() -> GcConfig {
    GcConfig { interval: Duration::from_secs(60), grace: Duration::from_secs(60), report_only: false }
}

#[tokio::test]
async fn the_gc_collects_a_failed_instances_machine_and_one_where_a_live_instance_does_not_hold_it() {
    let (h, other) = two_backends().await;
    // A live instance, on aws; a machine of its name on `other`, where it never launched.
    h.instance("box", cpu4()).await;
    h.settle(2).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!((st.phase, st.offer.as_ref().unwrap().backend.as_str()), (InstancePhase::Idle, "aws"));
    let name = st.machine_name.unwrap();
    other.insert_machine(running(&name, "x-1"));

    // A Failed instance (nothing fits it) whose machine exists all the same.
    h.instance(
        "huge",
        InstanceSpec {
            resources: ResourcesSpec { cpu: Some("512".into()), ..Default::default() },
            ..Default::default()
        },
    )
    .await;
    h.settle(2).await;
    let failed = h.get_instance("huge").await.status.unwrap();
    assert_eq!(failed.phase, InstancePhase::Failed, "{:?}", failed.conditions);
    let failed_name = failed.machine_name.unwrap();
    h.backend.insert_machine(running(&failed_name, "x-2"));

    let mut gc = Collector::default();
    assert!(gc.pass(&h.ctx, &gc_config(), Some(NS)).await.unwrap().deleted.is_empty(), "grace first");
    h.advance(Duration::from_secs(60));
    let mut deleted = gc.pass(&h.ctx, &gc_config(), Some(NS)).await.unwrap().deleted;
    deleted.sort();
    let mut want = vec![name.clone(), failed_name.clone()];
    want.sort();
    assert_eq!(deleted, want);
    let live_now = live(&h, &other);
    assert!(live_now.contains(&format!("aws/{name}")), "the live instance's machine stays: {live_now:?}");
    assert_eq!(h.backend.live_machines().iter().filter(|m| m.state == MachineState::Running).count(), 1);
    assert!(other.live_machines().iter().all(|m| m.state != MachineState::Running));
}
