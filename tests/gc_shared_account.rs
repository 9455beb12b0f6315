//! Garbage collectors of several kpool installations on one cloud account (one moto): each
//! only ever touches its own machines. The controllers run against the in-memory API with
//! the production backend factory (aws backends at moto), as in tests/health.rs.
//!
//! - Two clusters (two in-memory APIs, two installation identities), each with a busy
//!   instance in a namespace of the same name: each collector leaves the other cluster's
//!   machines alone, and still deletes its own orphan after the grace.
//! - Two controllers of one cluster, each watching one namespace (same identity): each
//!   leaves the other namespace's machines alone.
//! - A machine launched before machines carried an installation identity is reported
//!   (Warning `UnattributedMachine`), never deleted.
//!
//! Without the identity, the first two fail: every collector lists every kpool machine of
//! the account and deletes those its cluster or namespace has no Instance for.

mod support;
#[allow(dead_code)] // the fault proxy is for the backend tests
mod support_aws;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kpool::api::instance::{Instance, InstancePhase, InstanceSpec};
use kpool::api::policy::PolicySpec;
use kpool::api::resources::ResourcesSpec;
use kpool::backends::allow::Allowances;
use kpool::backends::aws::client::Params;
use kpool::backends::aws::AwsBackend;
use kpool::backends::factory::DefaultFactory;
use kpool::backends::{Backend, MachineSpec, TAG_INSTANCE, TAG_MANAGED_BY};
use kpool::controllers::gc::{Collector, GcConfig, GcReport};
use kpool::controllers::{instance, Context, ManualClock};
use kpool::exec::DispatchExecutor;
use kube::api::{Api, PostParams};
use kube::Resource;
use support::*;
use support_aws::moto;

const CATALOG: &str = "t3.micro,us-east-1,0.0104,2,1.0,0,,,False,,,,x86,{}\n";

fn gc() -> GcConfig {
    GcConfig { interval: Duration::from_secs(60), grace: Duration::from_secs(900), report_only: false }
}

fn kept() -> InstanceSpec {
    InstanceSpec {
        resources: ResourcesSpec {
            cpu: Some("1..".into()),
            memory: Some("0.5GB..".into()),
            disk: Some("1GB..".into()),
            ..Default::default()
        },
        policy: PolicySpec {
            backends: Some(vec!["ec2".into()]),
            idle_duration: Some("off".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The objects of the `aws` Backend `ec2` at moto, in namespace `ns` through `client`.
async fn aws_backend_in(client: &kube::Client, ns: &str, clock: &ManualClock) {
    let (creds, catalog, backend) = moto().backend_objects("ec2", CATALOG, Default::default());
    create_in(client, ns, clock, creds).await;
    create_in(client, ns, clock, catalog).await;
    create_in(client, ns, clock, backend).await;
}

/// As [`Harness::create`], in namespace `ns`.
async fn create_in<K>(client: &kube::Client, ns: &str, clock: &ManualClock, mut obj: K) -> K
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    use kpool::controllers::Clock;
    obj.meta_mut().namespace = Some(ns.into());
    obj.meta_mut().finalizers.get_or_insert_with(Vec::new).push(HOLD.to_string());
    obj.meta_mut().creation_timestamp = Some(Time(clock.now()));
    Api::<K>::namespaced(client.clone(), ns).create(&PostParams::default(), &obj).await.expect("create")
}

/// Reconciles instance `name` of `ns` with `ctx` until it is Idle; its provider id.
async fn launched(client: &kube::Client, ns: &str, name: &str, ctx: &Arc<Context>) -> String {
    let api: Api<Instance> = Api::namespaced(client.clone(), ns);
    for _ in 0..10 {
        let obj = api.get(name).await.unwrap();
        if let Some(st) = obj.status.as_ref().filter(|s| s.phase == InstancePhase::Idle) {
            return st.provider_id.clone().expect("a provider id");
        }
        let _ = instance::reconcile(Arc::new(obj), ctx.clone()).await;
    }
    panic!("instance {ns}/{name} never became Idle: {:?}", api.get(name).await.unwrap().status);
}

/// The instance's Instance object vanishes without its finalizer running (force-removed):
/// its machine becomes a real orphan of this controller.
async fn force_remove(client: &kube::Client, ns: &str, name: &str) {
    Api::<Instance>::namespaced(client.clone(), ns).delete(name, &Default::default()).await.unwrap();
}

/// EC2's state of instance `id` at moto.
async fn ec2_state(id: &str) -> String {
    let mut p = Params::new();
    p.set("InstanceId.1", id);
    let xml = moto().ec2().call("us-east-1", "DescribeInstances", &p).await.expect("DescribeInstances");
    let at = xml.find("<instanceState>").expect("an instance state");
    let rest = &xml[at..];
    let start = rest.find("<name>").unwrap() + "<name>".len();
    rest[start..start + rest[start..].find("</name>").unwrap()].to_string()
}

/// Two passes of each collector, the grace apart.
async fn collect(passes: &mut [(&mut Collector, &Arc<Context>, &str, &ManualClock)]) -> Vec<GcReport> {
    for (collector, ctx, ns, _) in passes.iter_mut() {
        let first = collector.pass(ctx, &gc(), Some(ns)).await.unwrap();
        assert!(first.deleted.is_empty(), "the first sighting only starts the grace: {first:?}");
    }
    for (_, _, _, clock) in passes.iter() {
        clock.advance(gc().grace);
    }
    let mut reports = Vec::new();
    for (collector, ctx, ns, _) in passes.iter_mut() {
        reports.push(collector.pass(ctx, &gc(), Some(ns)).await.unwrap());
    }
    reports
}

/// What the operator allows for these tests: moto's loopback endpoint.
fn at_moto() -> Allowances {
    Allowances::default().with_endpoints([moto().endpoint.as_str()])
}

#[tokio::test]
async fn two_clusters_on_one_account_leave_each_others_machines_alone() {
    let a = Harness::with_real_backends_allowing("cluster-a", at_moto()).await;
    let b = Harness::with_real_backends_allowing("cluster-b", at_moto()).await;
    for h in [&a, &b] {
        aws_backend_in(&h.client, NS, &h.clock).await;
        h.instance("busy", kept()).await;
    }
    a.instance("lost", kept()).await;
    let a_busy = launched(&a.client, NS, "busy", &a.ctx).await;
    let a_lost = launched(&a.client, NS, "lost", &a.ctx).await;
    let b_busy = launched(&b.client, NS, "busy", &b.ctx).await;
    let lost_machine = a.get_instance("lost").await.status.unwrap().machine_name.unwrap();
    force_remove(&a.client, NS, "lost").await;

    let (mut gc_a, mut gc_b) = (Collector::default(), Collector::default());
    let reports = collect(&mut [(&mut gc_a, &a.ctx, NS, &a.clock), (&mut gc_b, &b.ctx, NS, &b.clock)]).await;

    assert_eq!(reports[0].deleted, vec![lost_machine], "cluster a collects its own orphan");
    assert!(
        reports[1].deleted.is_empty(),
        "cluster b has no Instance for a's machines, yet they are not its: {:?}",
        reports[1]
    );
    for (id, what) in [(&a_busy, "a's busy machine"), (&b_busy, "b's busy machine")] {
        assert_eq!(ec2_state(id).await, "running", "{what} ({id}) is left alone");
    }
    assert!(matches!(ec2_state(&a_lost).await.as_str(), "shutting-down" | "terminated"), "a's orphan is terminated");
}

#[tokio::test]
async fn controllers_watching_different_namespaces_leave_each_others_machines_alone() {
    // One cluster, one identity; one controller watches `ml`, another `team-b`.
    let h = Harness::with_real_backends_allowing("cluster-c", at_moto()).await;
    let factory =
        Arc::new(DefaultFactory::new(h.ctx.client.clone()).with_installation("cluster-c").with_allowances(at_moto()));
    let executor = Arc::new(DispatchExecutor::new(h.ctx.client.clone(), factory.clone()));
    let team_b = Arc::new(Context::new(h.ctx.client.clone(), factory, executor, Arc::new(h.clock.clone())));
    aws_backend_in(&h.client, NS, &h.clock).await;
    aws_backend_in(&h.client, "team-b", &h.clock).await;
    h.instance("lost", kept()).await;
    create_in(&h.client, "team-b", &h.clock, Instance::new("busy", kept())).await;
    let ml_lost = launched(&h.client, NS, "lost", &h.ctx).await;
    let b_busy = launched(&h.client, "team-b", "busy", &team_b).await;
    let lost_machine = h.get_instance("lost").await.status.unwrap().machine_name.unwrap();
    force_remove(&h.client, NS, "lost").await;

    let (mut gc_ml, mut gc_b) = (Collector::default(), Collector::default());
    // Both share the one clock of the cluster: advance it once.
    let first_ml = gc_ml.pass(&h.ctx, &gc(), Some(NS)).await.unwrap();
    let first_b = gc_b.pass(&team_b, &gc(), Some("team-b")).await.unwrap();
    assert!(first_ml.deleted.is_empty() && first_b.deleted.is_empty());
    h.advance(gc().grace);
    let report_b = gc_b.pass(&team_b, &gc(), Some("team-b")).await.unwrap();
    let report_ml = gc_ml.pass(&h.ctx, &gc(), Some(NS)).await.unwrap();

    assert!(report_b.deleted.is_empty(), "ml's orphan is not team-b's to collect: {report_b:?}");
    assert_eq!(report_ml.deleted, vec![lost_machine], "ml collects its own orphan only");
    assert_eq!(ec2_state(&b_busy).await, "running", "team-b's busy machine is left alone");
    assert!(matches!(ec2_state(&ml_lost).await.as_str(), "shutting-down" | "terminated"));
}

#[tokio::test]
async fn a_machine_without_an_installation_identity_is_reported_never_deleted() {
    let h = Harness::with_real_backends_allowing("cluster-d", at_moto()).await;
    aws_backend_in(&h.client, NS, &h.clock).await;
    // Launched the way kpool launched machines before they carried an identity.
    let before = AwsBackend::new(
        "ec2",
        kpool::backends::aws::AwsConfig { regions: vec!["us-east-1".into()], ..moto().config(&moto().endpoint) },
        vec![support_aws::offer("us-east-1", "t3.micro", false, 0.0104)],
    )
    .unwrap();
    let spec = MachineSpec {
        name: "kpool-launched-before".into(),
        offer: support_aws::offer("us-east-1", "t3.micro", false, 0.0104),
        tags: BTreeMap::from([
            (TAG_MANAGED_BY.to_string(), "kpool".to_string()),
            (TAG_INSTANCE.to_string(), format!("{NS}/gone")),
        ]),
        ssh_public_key: None,
    };
    let old = before.create(&spec).await.unwrap();

    let mut collector = Collector::default();
    let first = collector.pass(&h.ctx, &gc(), Some(NS)).await.unwrap();
    assert!(first.unattributed.is_empty(), "reported after the grace, like any orphan");
    h.advance(gc().grace);
    let report = collector.pass(&h.ctx, &gc(), Some(NS)).await.unwrap();
    assert!(report.unattributed.contains(&spec.name), "{report:?}");
    assert!(!report.deleted.contains(&spec.name) && !report.reported.contains(&spec.name), "{report:?}");
    assert_eq!(ec2_state(&old.provider_id).await, "running", "never deleted");
    let events = h.api::<Event>().list(&Default::default()).await.unwrap().items;
    let warning = events
        .iter()
        .find(|e| {
            e.reason.as_deref() == Some("UnattributedMachine") && e.note.as_deref().unwrap_or("").contains(&spec.name)
        })
        .expect("a warning event on the Backend");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(warning.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("ec2"));
}
