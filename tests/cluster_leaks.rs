//! No machine outlives its objects on the real API server: an `aws` backend on moto, the
//! `kpool` binary as a process with the chart's permissions (a release of its own), and
//! deletions as users make them — the Backend first, or the whole namespace at once (the
//! namespace controller deletes Backends, Secrets and Instances together).

#[allow(dead_code)] // the fault proxy is for the backend tests
mod support_aws;
mod support_kube;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kpool::api::backend::Backend;
use kpool::api::instance::{Instance, InstancePhase, InstanceSpec};
use kpool::api::policy::PolicySpec;
use kpool::api::resources::ResourcesSpec;
use kpool::backends::aws::client::Params;
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use support_aws::moto;
use support_kube::{cluster, describe, eventually, helm, root, Cluster, Kpool};

const WAIT: Duration = Duration::from_secs(90);

/// A chart release named like its (new) namespace, with cluster-wide permissions; returns
/// the release namespace and a kubeconfig of its ServiceAccount.
fn release(c: &Cluster, ns: &str) -> PathBuf {
    let out = Command::new(helm())
        .args(["install", ns, root().join("charts/kpool").to_str().unwrap(), "-n", ns])
        .args(["--skip-crds", "--set", "replicas=1"])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm install failed: {}", describe(&out));
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{ns}.kubeconfig"));
    c.service_account_kubeconfig(ns, ns, &path);
    path
}

/// The aws Backend `ec2` on moto (Secret, catalog ConfigMap, Backend) and an idle
/// instance `vm` on it; returns the EC2 instance id.
async fn idle_aws_instance(admin: &Client, ns: &str) -> String {
    let (secret, catalog, backend) =
        moto().backend_objects("ec2", "t3.micro,us-east-1,0.0104,2,1.0,0,,,False,,,,x86,{}\n", Default::default());
    let pp = PostParams::default();
    Api::<Secret>::namespaced(admin.clone(), ns).create(&pp, &secret).await.unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), ns).create(&pp, &catalog).await.unwrap();
    Api::<Backend>::namespaced(admin.clone(), ns).create(&pp, &backend).await.unwrap();
    let spec = InstanceSpec {
        resources: ResourcesSpec { cpu: Some("1..".into()), memory: Some("1GB..".into()), ..Default::default() },
        policy: PolicySpec {
            backends: Some(vec!["ec2".into()]),
            idle_duration: Some("off".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let instances: Api<Instance> = Api::namespaced(admin.clone(), ns);
    instances.create(&pp, &Instance::new("vm", spec)).await.unwrap();
    let idle = eventually("instance vm Idle", WAIT, || async {
        instances.get("vm").await.ok().filter(|i| i.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Idle))
    })
    .await;
    idle.status.unwrap().provider_id.expect("an EC2 instance id")
}

/// The EC2 state of instance `id` on moto (`running`, `terminated`, …).
async fn ec2_state(id: &str) -> String {
    let mut p = Params::new();
    p.set("InstanceId.1", id);
    let xml = moto().ec2().call("us-east-1", "DescribeInstances", &p).await.expect("DescribeInstances");
    let at = xml.find("<instanceState>").expect("an instance state");
    let name = &xml[at..];
    let start = name.find("<name>").unwrap() + "<name>".len();
    name[start..start + name[start..].find("</name>").unwrap()].to_string()
}

#[tokio::test]
async fn a_backend_deleted_before_its_instance_waits_and_the_machine_is_terminated() {
    let c = cluster();
    c.install_crds();
    let admin = c.client().await;
    let ns = c.namespace("leak-backend").await;
    let rel = c.namespace("kpool-leak-backend").await;
    let kubeconfig = release(c, &rel);
    let _kpool = Kpool::start_with(&kubeconfig, &ns, Some(&rel), &["--allow-endpoint", &moto().endpoint]);
    let id = idle_aws_instance(&admin, &ns).await;
    assert_eq!(ec2_state(&id).await, "running");

    // The Backend stays while an instance uses it, and says which.
    let backends: Api<Backend> = Api::namespaced(admin.clone(), &ns);
    backends.delete("ec2", &DeleteParams::default()).await.unwrap();
    let held = eventually("the Backend held by its instance", WAIT, || async {
        let b = backends.get_opt("ec2").await.ok()??;
        let c = b.status.as_ref()?.conditions.iter().find(|c| c.type_ == "InUse")?.clone();
        Some((b, c))
    })
    .await;
    assert!(held.0.metadata.deletion_timestamp.is_some());
    assert!(held.1.message.contains("vm"), "the condition names the instance: {:?}", held.1);
    // Its credentials stay readable for the teardown even when deleted meanwhile.
    Api::<Secret>::namespaced(admin.clone(), &ns).delete("ec2-creds", &DeleteParams::default()).await.unwrap();

    let instances: Api<Instance> = Api::namespaced(admin.clone(), &ns);
    instances.delete("vm", &DeleteParams::default()).await.unwrap();
    eventually("instance and Backend gone", WAIT, || async {
        let gone = instances.get_opt("vm").await.ok()?.is_none() && backends.get_opt("ec2").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    assert_eq!(ec2_state(&id).await, "terminated");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    assert!(secrets.get_opt("ec2-creds").await.unwrap().is_none(), "the credentials Secret is released once unused");
}

#[tokio::test]
async fn deleting_a_namespace_with_a_live_aws_instance_leaves_no_machine() {
    let c = cluster();
    c.install_crds();
    let admin = c.client().await;
    let ns = c.namespace("leak-ns").await;
    let rel = c.namespace("kpool-leak-ns").await;
    let kubeconfig = release(c, &rel);
    let _kpool = Kpool::start_with(&kubeconfig, &ns, Some(&rel), &["--allow-endpoint", &moto().endpoint]);
    let id = idle_aws_instance(&admin, &ns).await;

    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
    eventually("the namespace gone", Duration::from_secs(120), || async {
        namespaces.get_opt(&ns).await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(ec2_state(&id).await, "terminated");
}
