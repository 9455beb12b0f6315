//! Runs end to end over SSH: the controllers (against the in-memory API) with the
//! production backend factory and executor, a real sshd on loopback as the host.
//! - A host you own: an instance takes the host, a run executes there over SSH, its exit
//!   code and output come back, and the host goes back to idle for the next run.
//! - A cloud machine: an instance of an `aws` Backend is launched through moto (EC2 on
//!   loopback, from scripts/peers/moto.sh) with its own key in the launch's user data; the
//!   sshd plays the machine, authorising exactly the keys of that user data, and the run
//!   executes there with the private key from the instance's Secret.

mod support;
#[allow(dead_code)]
mod support_aws;
mod support_ssh;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kpool::api::backend::AwsBackendConfig;
use kpool::api::instance::{InstancePhase, InstanceSpec};
use kpool::api::policy::PolicySpec;
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{RunPhase, RunSpec};
use kpool::backends::allow::Allowances;
use kpool::backends::factory::DefaultFactory;
use kpool::exec::{DispatchExecutor, JobLogs};
use kube::ResourceExt;
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

/// An ssh Backend `lab` with the test's sshd as host `box`, and an idle instance `box`
/// pinned to it. Returns the (small) requirements that fit this machine.
async fn lab_host(h: &Harness, sshd: &Sshd) -> ResourcesSpec {
    let (key, backend) = sshd.backend_objects("lab", "box");
    h.create(key).await;
    h.create(backend).await;
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
    small
}

#[tokio::test]
async fn runs_execute_on_an_ssh_host_and_the_host_is_reused() {
    let sshd = Sshd::start();
    let h = Harness::with_real_backends().await;
    let small = lab_host(&h, &sshd).await;

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

/// The `ssh_authorized_keys` entries of the cloud-config user data of EC2 instance `id`,
/// as moto stored them from the launch request.
async fn authorized_keys_in_user_data(moto: &support_aws::Moto, id: &str) -> Vec<String> {
    use base64::Engine;
    use kpool::backends::aws::client::Params;
    let ec2 = moto.ec2();
    let mut p = Params::new();
    p.set("InstanceId", id).set("Attribute", "userData");
    let answer = ec2.call("us-east-1", "DescribeInstanceAttribute", &p).await.unwrap();
    let encoded = answer.split("<value>").nth(1).and_then(|v| v.split("</value>").next()).expect("user data");
    let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap()).unwrap();
    assert!(text.starts_with("#cloud-config\nssh_authorized_keys:\n"), "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .map(|quoted| serde_json::from_str::<String>(quoted).expect("a JSON string"))
        .collect()
}

#[tokio::test]
async fn runs_execute_over_ssh_on_an_aws_instance_with_its_own_key() {
    let moto = support_aws::moto();
    let mut sshd = Sshd::start();
    let allow_moto = Allowances::default().with_endpoints([moto.endpoint.as_str()]);
    let h = Harness::with_real_backends_allowing(INSTALLATION, allow_moto).await;
    // The sshd plays the machine: its port, and the user it runs as.
    let config = AwsBackendConfig { ssh_port: Some(sshd.port), ssh_user: Some(current_user()), ..Default::default() };
    let (creds, catalog, backend) =
        moto.backend_objects("cloud", "t3.micro,us-east-1,0.0104,2,1.0,0,,,False,,,,x86,{}\n", config);
    h.create(creds).await;
    h.create(catalog).await;
    h.create(backend).await;
    let small = ResourcesSpec { cpu: Some("1..".into()), memory: Some("1GB..".into()), ..Default::default() };
    let pin =
        PolicySpec { backends: Some(vec!["cloud".into()]), idle_duration: Some("off".into()), ..Default::default() };
    h.instance("vm", InstanceSpec { resources: small.clone(), policy: pin, ..Default::default() }).await;
    h.settle(3).await;
    let inst = h.get_instance("vm").await;
    let st = inst.status.clone().unwrap();
    assert_eq!(st.phase, InstancePhase::Idle, "{:?}", st.conditions);
    let provider_id = st.provider_id.clone().expect("an EC2 instance id");
    assert!(st.address.is_some(), "moto reports an address: {st:?}");

    // The key Secret: owned by the instance, and its public key is in the launch's user data.
    let secret = h.api::<Secret>().get("vm-ssh").await.expect("the instance's key Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/ssh-auth"));
    assert_eq!(secret.metadata.labels.as_ref().unwrap()["kpool.dev/managed-by"], "kpool");
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), Some(owner.uid.clone())), ("Instance", inst.metadata.uid.clone()));
    let data = secret.data.unwrap();
    let public = String::from_utf8(data["ssh-publickey"].0.clone()).unwrap();
    let keys = authorized_keys_in_user_data(moto, &provider_id).await;
    assert_eq!(keys, [public], "user data carries the instance's key (the backend sets none)");
    // cloud-init's part: the "machine" authorises exactly the keys of its user data (the
    // harness's own client key is gone, so only the instance's key logs in).
    std::fs::write(sshd.dir.join("authorized_keys"), format!("{}\n", keys.join("\n"))).unwrap();

    // moto's addresses are made up and lead nowhere: point the instance at the loopback
    // sshd, as the machine's real public address would be.
    h.api::<kpool::api::instance::Instance>()
        .patch_status(
            "vm",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": {"address": "127.0.0.1"}})),
        )
        .await
        .unwrap();

    let spec = RunSpec {
        resources: small,
        commands: vec!["echo \"cloud $((40 + 2)) as $(id -un)\"".into(), "exit 5".into()],
        ..Default::default()
    };
    h.run("on-vm", spec).await;
    let st = until_finished(&h, "on-vm").await;
    assert_eq!((st.phase, st.exit_code, st.instance.as_deref()), (RunPhase::Failed, Some(5), Some("vm")), "{st:?}");
    let executor = DispatchExecutor::new(h.client.clone(), Arc::new(DefaultFactory::new(h.client.clone())));
    let run = h.get_run("on-vm").await;
    let (text, _) = executor.logs(&run, &h.get_instance("vm").await, 0).await.unwrap();
    assert_eq!(text, format!("cloud 42 as {}\n", current_user()));
    assert!(sshd.logins() >= 2, "the job ran over SSH: {}", sshd.log());
    assert_eq!(h.get_instance("vm").await.status.unwrap().phase, InstancePhase::Idle, "released after the run");

    // The machine's host key was pinned on the key Secret at first contact, so that a
    // controller that starts afresh (an executor with nothing in memory) refuses another.
    let pinned = h.api::<Secret>().get("vm-ssh").await.unwrap().annotations().get("kpool.dev/ssh-host-key").cloned();
    let expected = key(31).public_key().fingerprint(russh::keys::HashAlg::Sha256).to_string();
    assert_eq!(pinned.as_deref(), Some(expected.as_str()), "the sshd's host key");
    sshd.restart_with_host_key(32);
    let fresh = DispatchExecutor::new(h.client.clone(), Arc::new(DefaultFactory::new(h.client.clone())));
    let err = fresh.logs(&run, &h.get_instance("vm").await, 0).await.unwrap_err();
    assert!(err.to_string().contains("host key changed"), "{err}");
    let _ = std::fs::remove_dir_all(
        std::path::Path::new(&std::env::var("HOME").unwrap())
            .join(".kpool/runs")
            .join(run.metadata.uid.unwrap_or_default()),
    );
}

#[tokio::test]
async fn max_duration_stops_a_real_job_and_frees_the_host() {
    let sshd = Sshd::start();
    let h = Harness::with_real_backends().await;
    let small = lab_host(&h, &sshd).await;
    let policy = PolicySpec { max_duration: Some("10m".into()), ..Default::default() };
    let spec =
        RunSpec { resources: small, commands: vec!["echo started; sleep 600".into()], policy, ..Default::default() };
    h.run("long", spec).await;
    h.settle(2).await;
    assert_eq!(h.get_run("long").await.status.unwrap().phase, RunPhase::Running);
    let uid = h.get_run("long").await.metadata.uid.unwrap();
    let dir = support_ssh::home().join(".kpool/runs").join(&uid);
    let pid: u32 = loop {
        if let Some(p) = std::fs::read_to_string(dir.join("pid")).ok().and_then(|p| p.trim().parse().ok()) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Within maxDuration nothing happens; past it the job is stopped.
    h.advance(Duration::from_secs(9 * 60));
    h.settle(1).await;
    assert_eq!(h.get_run("long").await.status.unwrap().phase, RunPhase::Running);
    h.advance(Duration::from_secs(61));
    h.settle(2).await;
    let st = h.get_run("long").await.status.unwrap();
    assert_eq!((st.phase, st.termination_reason.as_deref()), (RunPhase::Terminated, Some("MaxDurationExceeded")));
    // Gone, or a zombie nobody reaped yet (the runner's parent is the init of this machine).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
        let rest = &s[s.rfind(')')? + 1..];
        rest.split_whitespace().next().map(str::to_string)
    });
    assert!(state.as_deref().is_none_or(|s| s == "Z"), "the job's process still runs: {state:?}");
    assert_eq!(std::fs::read_to_string(dir.join("exit_code")).unwrap().trim(), "143", "SIGTERM ended it");
    assert_eq!(h.get_instance("box").await.status.unwrap().phase, InstancePhase::Idle, "the host is free again");
    let _ = std::fs::remove_dir_all(dir);
}

/// The state letter of process `pid` (`R`, `S`, `Z`…), `None` once it is gone.
fn process_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().next().map(str::to_string)
}

fn modified(path: &std::path::Path) -> std::time::SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn an_interrupted_jobs_process_group_is_gone_before_its_host_takes_another_run() {
    use kpool::api::policy::{RetryEvent, RetrySpec};
    let mut sshd = Sshd::start();
    let h = Harness::with_real_backends().await;
    let small = lab_host(&h, &sshd).await;
    // Retried when interrupted, and while no host is free.
    let on = vec![RetryEvent::Interruption, RetryEvent::NoCapacity];
    let retry = RetrySpec { on: Some(on), duration: Some("1h".into()) };
    let policy = PolicySpec { retry: Some(retry), ..Default::default() };
    // A child in the job's process group that outlives its parent's shell.
    let commands = vec!["sleep 600 & echo started; sleep 600".into()];
    h.run("long", RunSpec { resources: small, commands, policy, ..Default::default() }).await;
    h.settle(2).await;
    assert_eq!(h.get_run("long").await.status.unwrap().phase, RunPhase::Running);
    let uid = h.get_run("long").await.metadata.uid.unwrap();
    let runs = support_ssh::home().join(".kpool/runs");
    let (first, second) = (runs.join(&uid), runs.join(format!("{uid}-1")));
    let pid: u32 = loop {
        if let Some(p) = std::fs::read_to_string(first.join("pid")).ok().and_then(|p| p.trim().parse().ok()) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // sshd goes away past the unreachable grace: the run is retried; its job lives on.
    sshd.stop();
    h.settle(1).await;
    h.advance(Duration::from_secs(301));
    h.settle(2).await;
    let st = h.get_run("long").await.status.unwrap();
    assert_eq!((st.phase != RunPhase::Running, st.attempts), (true, 1), "{st:?}");
    assert!(process_state(pid).is_some_and(|s| s != "Z"), "the first job still runs on the host");

    // sshd is back: the retried run runs on the host again, after the first job is gone.
    sshd.run();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !second.join("pid").exists() {
        assert!(Instant::now() < deadline, "the retried run did not start: {:?}", h.get_run("long").await.status);
        h.advance(Duration::from_secs(15));
        h.settle(1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(process_state(pid).is_none_or(|s| s == "Z"), "the first job's runner still runs: {:?}", process_state(pid));
    let group = std::process::Command::new("ps")
        .args(["-o", "pid,pgid,ppid,stat,lstart,args", "-g", &pid.to_string()])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&group.stdout);
    // Zombies are dead processes that only wait for their parent to read their exit
    // status; a job's orphans are re-parented to PID 1, and where PID 1 is no init (a
    // container's or a micro-VM's own program) nothing ever reads it.
    let live = left.lines().skip(1).filter(|l| l.split_whitespace().nth(3).is_some_and(|s| !s.starts_with('Z')));
    assert!(
        live.count() == 0,
        "the first job's process group {pid} is left:\n{left}\nits output:\n{}",
        std::fs::read_to_string(first.join("output.log")).unwrap_or_default()
    );
    assert!(
        modified(&first.join("exit_code")) <= modified(&second.join("pid")),
        "the first job was stopped before the second started"
    );
    h.settle(1).await;
    let st = h.get_run("long").await.status.unwrap();
    assert_eq!((st.phase, st.attempts), (RunPhase::Running, 1), "{st:?}");
    // Stop the second job, and leave nothing behind.
    let patch = serde_json::json!({"spec": {"stop": true}});
    h.api::<kpool::api::run::Run>()
        .patch("long", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    h.settle(2).await;
    let _ = std::fs::remove_dir_all(first);
    let _ = std::fs::remove_dir_all(second);
}
