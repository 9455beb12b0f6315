//! Runs end to end on a host you own: the controllers (against the in-memory API) with
//! the production backend factory and executor, a real sshd on loopback as the host. An
//! instance takes the host, a run executes there over SSH, its exit code and output come
//! back, and the host goes back to idle for the next run.

mod support;
mod support_ssh;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kpool::api::backend::{Backend, BackendSpec, BackendType, Credentials, SecretRef, SshBackendConfig};
use kpool::api::instance::{InstancePhase, InstanceSpec};
use kpool::api::policy::PolicySpec;
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use kpool::backends::factory::DefaultFactory;
use kpool::exec::{DispatchExecutor, JobLogs};
use kube::api::ObjectMeta;
use support::*;
use support_ssh::*;

/// Reconciles until the run has finished (jobs take real time), at most 20 s.
async fn until_finished(h: &Harness, run: &str) -> kpool::api::run::RunStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        h.settle(1).await;
        let st = h.get_run(run).await.status.unwrap_or_default();
        if st.phase.is_finished() {
            return st;
        }
        assert!(Instant::now() < deadline, "run {run} did not finish: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn runs_execute_on_an_ssh_host_and_the_host_is_reused() {
    let sshd = Sshd::start();
    let h = Harness::with_real_backends().await;
    h.create(Secret {
        metadata: ObjectMeta { name: Some("lab-key".into()), ..Default::default() },
        type_: Some("kubernetes.io/ssh-auth".into()),
        data: Some(BTreeMap::from([("ssh-privatekey".to_string(), ByteString(key_pem(CLIENT_SEED).into_bytes()))])),
        ..Default::default()
    })
    .await;
    h.create(Backend::new(
        "lab",
        BackendSpec {
            type_: BackendType::Ssh,
            credentials: Some(Credentials { secret_ref: SecretRef { name: "lab-key".into() } }),
            ssh: Some(SshBackendConfig { hosts: vec![sshd.host("box")], ..Default::default() }),
            ..Default::default()
        },
    ))
    .await;
    // Small requirements: the host is this machine.
    let small = ResourcesSpec {
        cpu: Some("1..".into()),
        memory: Some("1GB..".into()),
        disk: Some("1GB..".into()),
        ..Default::default()
    };
    let pin = PolicySpec {
        backends: Some(vec!["lab".into()]),
        instance_types: Some(vec!["box".into()]),
        idle_duration: Some("off".into()),
        ..Default::default()
    };
    h.instance("box", InstanceSpec { resources: small.clone(), policy: pin, ..Default::default() }).await;
    h.settle(2).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);

    let first = RunSpec {
        resources: small.clone(),
        commands: vec!["echo \"it's $((6 * 7))\"; echo to-stderr >&2".into(), "exit 3".into()],
        ..Default::default()
    };
    h.run("first", first).await;
    let st = until_finished(&h, "first").await;
    assert_eq!((st.phase, st.exit_code, st.instance.as_deref()), (RunPhase::Failed, Some(3), Some("box")));

    let executor = DispatchExecutor::new(h.client.clone(), Arc::new(DefaultFactory::new(h.client.clone())));
    let run = h.get_run("first").await;
    let (text, _) = executor.logs(&run, &h.get_instance("box").await, 0).await.unwrap();
    assert!(text.contains("it's 42\n") && text.contains("to-stderr\n"), "{text:?}");
    assert_eq!(h.get_instance("box").await.status.unwrap().phase, InstancePhase::Idle, "released after the run");
    // The same output through `kubectl pool logs first -f` (it returns: the run has ended).
    let mut out = Vec::new();
    let mut input = std::io::Cursor::new(Vec::new());
    let mut term = kpool::cli::Term { out: &mut out, input: &mut input, interactive: false };
    let args = kpool::cli::LogsArgs { run: "first".into(), follow: true };
    kpool::cli::logs::logs(&args, &h.client, support::NS, &mut term).await.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), text);

    h.run("second", RunSpec { resources: small, commands: vec!["true".into()], ..Default::default() }).await;
    let st = until_finished(&h, "second").await;
    assert_eq!((st.phase, st.exit_code, st.instance.as_deref()), (RunPhase::Succeeded, Some(0), Some("box")));
    let _ = std::fs::remove_dir_all(
        std::path::Path::new(&std::env::var("HOME").unwrap())
            .join(".kpool/runs")
            .join(h.get_run("first").await.metadata.uid.unwrap_or_default()),
    );
}
