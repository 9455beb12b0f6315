//! The SSH executor against a real OpenSSH server on loopback.
//!
//! Each test starts its own `sshd` (`/usr/sbin/sshd -D -e`) on 127.0.0.1 and a free high
//! port, as the current user, with throwaway host and client keys (made in-process from
//! fixed seeds), and kills it at the end. Jobs run for real on this machine, in
//! `~/.kpool/runs/<uid>` of the current user; each test uses its own run UID, and its
//! [`Job`] guard kills what is left of the job and removes the directory. The environment
//! comes from the in-memory API (kube-fake-client). Install sshd with
//! `scripts/peers/sshd.sh`.

mod support_ssh;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, EnvVar, EnvVarSource, ObjectFieldSelector, Secret, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kpool::api::backend::{Backend, BackendSpec, BackendType, Credentials, SecretRef, SshBackendConfig};
use kpool::api::instance::{Instance, InstanceSpec, InstanceStatus};
use kpool::api::offer::Offer;
use kpool::api::run::{Run, RunSpec};
use kpool::backends::factory::DefaultFactory;
use kpool::exec::env::{resolve_env, ApiEnv};
use kpool::exec::ssh::{KnownHosts, SshExecutor, SshLogin, SshTargets, Target};
use kpool::exec::{ExecError, Executor, JobLogs, JobState};
use kube::api::{Api, PostParams};
use kube_fake_client::ClientBuilder;
use support_ssh::*;

/// Every instance is on the test's sshd.
struct TestTargets(SshLogin);

#[async_trait]
impl SshTargets for TestTargets {
    async fn login(&self, _instance: &Instance) -> Result<SshLogin, ExecError> {
        Ok(self.0.clone())
    }
}

async fn api() -> kube::Client {
    ClientBuilder::new()
        .with_resource::<Secret>()
        .with_resource::<ConfigMap>()
        .with_resource::<Backend>()
        .build()
        .await
        .expect("fake client")
}

async fn executor_with(sshd: &Sshd, client: kube::Client) -> SshExecutor {
    SshExecutor::new(Arc::new(TestTargets(sshd.login())), Arc::new(ApiEnv::new(client)))
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(20))
        .with_stop_grace(Duration::from_secs(2))
}

async fn executor(sshd: &Sshd) -> SshExecutor {
    executor_with(sshd, api().await).await
}

fn instance() -> Instance {
    let mut i = Instance::new("box-1", InstanceSpec::default());
    i.metadata.namespace = Some(NS.into());
    i
}

fn literal(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

/// A run's job on this machine: its UID, directory and run object. On drop, whatever is
/// left of the job is killed and its directory removed.
struct Job {
    run: Run,
    dir: PathBuf,
}

impl Job {
    fn new(commands: &[&str]) -> Job {
        Self::with(RunSpec { commands: commands.iter().map(|c| c.to_string()).collect(), ..Default::default() })
    }

    fn with(spec: RunSpec) -> Job {
        let uid = unique("kpool-test");
        let mut run = Run::new(&format!("run-{uid}"), spec);
        run.metadata.namespace = Some(NS.into());
        run.metadata.uid = Some(uid.clone());
        Job { run, dir: home().join(".kpool/runs").join(&uid) }
    }

    fn uid(&self) -> &str {
        self.run.metadata.uid.as_deref().unwrap()
    }

    fn file(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.dir.join(name)).ok()
    }

    fn pid(&self) -> Option<u32> {
        self.file("pid").and_then(|p| p.trim().parse().ok()).filter(|p| *p > 1)
    }

    fn output(&self) -> String {
        self.file("output.log").unwrap_or_default()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            if !group_members(pid).is_empty() {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Live (non-zombie) processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            pids.push(pid);
        }
    }
    pids
}

async fn wait_exit(exec: &SshExecutor, job: &Job, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        match exec.status(&job.run, &instance()).await.expect("status") {
            JobState::Exited(code) => return code,
            JobState::Running => {
                assert!(Instant::now() < deadline, "the job did not end within {within:?}: {}", job.output());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_job_that_succeeds_leaves_its_output_in_the_logs() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let job = Job::new(&["echo hello", "echo to-stderr >&2", "pwd"]);
    exec.start(&job.run, &instance()).await.unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0);
    let (text, next) = exec.logs(&job.run, &instance(), 0).await.unwrap();
    let expected = format!("hello\nto-stderr\n{}\n", home().display());
    assert_eq!(text, expected);
    assert_eq!(next, expected.len() as u64);
    // The job directory is private, and holds what the module docs say.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&job.dir).unwrap().permissions().mode() & 0o777, 0o700);
    for f in ["job.sh", "env", "run.sh", "output.log", "pid", "exit_code"] {
        assert!(job.dir.join(f).exists(), "{f} missing");
    }
    assert_eq!(job.file("exit_code").unwrap().trim(), "0");
}

#[tokio::test]
async fn a_failing_command_ends_the_job_with_its_exit_code() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let job = Job::new(&["echo before", "sh -c 'exit 7'", "echo never"]);
    exec.start(&job.run, &instance()).await.unwrap();
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 7);
    assert_eq!(job.output(), "before\n");
    // Asking again gives the same answer.
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Exited(7));
}

#[tokio::test]
async fn the_job_outlives_the_executor_and_the_ssh_server() {
    let mut sshd = Sshd::start();
    let go = std::env::temp_dir().join(unique("kpool-go"));
    let job = Job::new(&[&format!("while [ ! -e '{}' ]; do sleep 0.1; done", go.display()), "echo done"]);
    {
        let exec = executor(&sshd).await;
        exec.start(&job.run, &instance()).await.unwrap();
        assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Running);
    }
    // A new controller, and even a restarted sshd, find the job still running.
    sshd.stop();
    sshd.run();
    let exec = executor(&sshd).await;
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Running);
    fs::write(&go, "").unwrap();
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0);
    let _ = fs::remove_file(&go);
    assert_eq!(exec.logs(&job.run, &instance(), 0).await.unwrap().0, "done\n");
}

#[tokio::test]
async fn stop_ends_a_running_job_and_its_processes() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let job = Job::new(&["echo started", "sleep 300 & sleep 300"]);
    exec.start(&job.run, &instance()).await.unwrap();
    wait_until("the job's output", Duration::from_secs(10), || job.output() == "started\n").await;
    let pgid = job.pid().expect("pid");
    assert!(group_members(pgid).len() >= 3, "runner, job shell and sleeps: {:?}", group_members(pgid));
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Running);

    let t = Instant::now();
    exec.stop(&job.run, &instance()).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "stop took {:?}", t.elapsed());
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Exited(143));
    assert!(group_members(pgid).is_empty(), "left: {:?}", group_members(pgid));
    // Stopping a finished job changes nothing.
    exec.stop(&job.run, &instance()).await.unwrap();
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Exited(143));
    // Neither does starting it again.
    exec.start(&job.run, &instance()).await.unwrap();
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Exited(143));
    assert_eq!(job.output(), "started\n");
}

#[tokio::test]
async fn a_job_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let job = Job::new(&["trap '' TERM", "echo started", "sleep 300"]);
    exec.start(&job.run, &instance()).await.unwrap();
    wait_until("the job's output", Duration::from_secs(10), || job.output() == "started\n").await;
    let pgid = job.pid().expect("pid");
    let t = Instant::now();
    exec.stop(&job.run, &instance()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(2), "SIGKILL before the grace period: {:?}", t.elapsed());
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Exited(137));
    assert!(group_members(pgid).is_empty(), "left: {:?}", group_members(pgid));
}

#[tokio::test]
async fn starting_twice_runs_one_job() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let job = Job::new(&["echo ran", "sleep 1"]);
    exec.start(&job.run, &instance()).await.unwrap();
    let pid = job.pid().expect("pid");
    exec.start(&job.run, &instance()).await.unwrap();
    assert_eq!(job.pid(), Some(pid));
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0);
    assert_eq!(job.output(), "ran\n");

    // Two controllers starting the same run at once also give one job.
    let job = Job::new(&["echo ran", "sleep 1"]);
    let other = executor(&sshd).await;
    let inst = instance();
    let (a, b) = tokio::join!(exec.start(&job.run, &inst), other.start(&job.run, &inst));
    a.unwrap();
    b.unwrap();
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0);
    assert_eq!(job.output(), "ran\n");
}

#[tokio::test]
async fn logs_are_read_from_an_offset_while_the_job_runs_and_after() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let go = std::env::temp_dir().join(unique("kpool-go"));
    let job = Job::with(RunSpec {
        commands: vec![
            "echo one-é".into(),
            format!("while [ ! -e '{}' ]; do sleep 0.1; done", go.display()),
            "echo two".into(),
        ],
        ..Default::default()
    });
    exec.start(&job.run, &instance()).await.unwrap();
    let first = "one-é\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, at) = loop {
        let (text, at) = exec.logs(&job.run, &instance(), 0).await.unwrap();
        if !text.is_empty() || Instant::now() > deadline {
            break (text, at);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((text.as_str(), at), (first, first.len() as u64));
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Running);
    // Nothing new yet.
    assert_eq!(exec.logs(&job.run, &instance(), at).await.unwrap(), (String::new(), at));
    // From the middle of a character: the rest of it is replaced, offsets stay exact.
    let (mid, next) = exec.logs(&job.run, &instance(), 5).await.unwrap();
    assert_eq!((mid.as_str(), next), ("\u{FFFD}\n", at));

    fs::write(&go, "").unwrap();
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0);
    let _ = fs::remove_file(&go);
    let (text, end) = exec.logs(&job.run, &instance(), at).await.unwrap();
    assert_eq!((text.as_str(), end), ("two\n", at + 4));
    assert_eq!(exec.logs(&job.run, &instance(), 0).await.unwrap(), (format!("{first}two\n"), end));
    assert_eq!(exec.logs(&job.run, &instance(), end).await.unwrap(), (String::new(), end));
    assert_eq!(exec.logs(&job.run, &instance(), end + 100).await.unwrap(), (String::new(), end + 100));
    // Through the trait, as a CLI would.
    let logs: &dyn JobLogs = &exec;
    assert_eq!(logs.logs(&job.run, &instance(), 4).await.unwrap().0, "é\ntwo\n");

    // A run that never started has no logs.
    let never = Job::new(&["true"]);
    let err = exec.logs(&never.run, &instance(), 0).await.unwrap_err();
    assert!(matches!(err, ExecError::Other(ref m) if m.contains("never started")), "{err:?}");
}

/// Text with everything a shell would interpret.
const NASTY: &str =
    "it's \"quoted\" and 'single' $HOME ${HOME} $(id -u) `id -u` \\n \\\\ ; echo injected && false || true\n\
                     second line\twith a tab; rm -rf /nonexistent-kpool-test | cat > /dev/null\n\
                     KPOOL_END_NOT \u{1F600} $((1+1)) !! ~ * ?";

#[tokio::test]
async fn commands_arrive_byte_for_byte() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let commands = [
        format!("cat <<'KPOOL_END'\n{NASTY}\nKPOOL_END"),
        "echo 'a;b' ; echo \"c $((2+3))\"".to_string(),
        "printf '%s\\n' \"$0\" > /dev/null".to_string(),
    ];
    let job = Job::with(RunSpec { commands: commands.to_vec(), ..Default::default() });
    exec.start(&job.run, &instance()).await.unwrap();
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0, "{}", job.output());
    let (text, _) = exec.logs(&job.run, &instance(), 0).await.unwrap();
    assert_eq!(text, format!("{NASTY}\na;b\nc 5\n"));
    assert_eq!(job.file("job.sh").unwrap(), format!("set -e\n{}\n", commands.join("\n")));
}

#[tokio::test]
async fn env_values_and_secrets_reach_the_job() {
    let sshd = Sshd::start();
    let client = api().await;
    let secret = Secret {
        metadata: ObjectMeta { name: Some("wandb".into()), namespace: Some(NS.into()), ..Default::default() },
        data: Some(BTreeMap::from([("key".to_string(), ByteString(b"s3cr3t 'with' $quotes\n".to_vec()))])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &secret).await.unwrap();
    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some("settings".into()), namespace: Some(NS.into()), ..Default::default() },
        data: Some(BTreeMap::from([("mode".to_string(), "fast".to_string())])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), NS).create(&PostParams::default(), &cm).await.unwrap();
    let from_secret = |name: &str, secret: &str, optional: Option<bool>| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: "key".into(), optional }),
            ..Default::default()
        }),
    };
    let env = vec![
        literal("NASTY", NASTY),
        literal("EMPTY", ""),
        from_secret("WANDB_KEY", "wandb", None),
        from_secret("OPTIONAL", "missing", Some(true)),
        EnvVar {
            name: "MODE".into(),
            value: None,
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: "settings".into(),
                    key: "mode".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        },
        literal("REPEATED", "first"),
        literal("REPEATED", "second"),
    ];
    let job = Job::with(RunSpec {
        commands: vec![
            "printf '%s|' \"$NASTY\" \"$EMPTY\" \"$WANDB_KEY\" \"${OPTIONAL-unset}\" \"$MODE\" \"$REPEATED\"".into(),
        ],
        env,
        ..Default::default()
    });
    let exec = executor_with(&sshd, client).await;
    exec.start(&job.run, &instance()).await.unwrap();
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0, "{}", job.output());
    assert_eq!(job.output(), format!("{NASTY}||s3cr3t 'with' $quotes\n|unset|fast|second|"));
    // Secret values are in the private env file only, never in run.sh or job.sh.
    assert!(!job.file("run.sh").unwrap().contains("s3cr3t") && !job.file("job.sh").unwrap().contains("s3cr3t"));
}

#[tokio::test]
async fn resolving_env_checks_names_and_sources() {
    let client = api().await;
    let run_with = |env: Vec<EnvVar>| {
        let mut run = Run::new("r", RunSpec { env, ..Default::default() });
        run.metadata.namespace = Some(NS.into());
        run
    };
    for bad in ["1X", "A-B", "A B", "", "X=Y"] {
        let err = resolve_env(&client, &run_with(vec![literal(bad, "v")])).await.unwrap_err();
        assert!(matches!(err, ExecError::Unsupported(ref m) if m.contains("spec.env[0].name")), "{bad:?}: {err:?}");
    }
    let field_ref = EnvVar {
        name: "NODE".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "spec.nodeName".into(), ..Default::default() }),
            ..Default::default()
        }),
    };
    let err = resolve_env(&client, &run_with(vec![literal("OK", "1"), field_ref])).await.unwrap_err();
    assert!(matches!(err, ExecError::Unsupported(ref m) if m.contains("spec.env[1].valueFrom")), "{err:?}");
    let missing = EnvVar {
        name: "K".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: "nope".into(), key: "k".into(), optional: None }),
            ..Default::default()
        }),
    };
    let err = resolve_env(&client, &run_with(vec![missing])).await.unwrap_err();
    assert!(matches!(err, ExecError::Other(ref m) if m.contains("Secret nope not found in namespace ml")), "{err:?}");
    assert_eq!(
        resolve_env(&client, &run_with(vec![literal("A", "x"), literal("B", "")])).await.unwrap(),
        vec![("A".to_string(), "x".to_string()), ("B".to_string(), String::new())]
    );
}

#[tokio::test]
async fn an_invalid_env_name_fails_the_start_and_runs_nothing() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let job = Job::with(RunSpec {
        commands: vec!["echo ran".into()],
        env: vec![literal("NOT-A-NAME", "x")],
        ..Default::default()
    });
    let err = exec.start(&job.run, &instance()).await.unwrap_err();
    assert!(matches!(err, ExecError::Unsupported(ref m) if m.contains("NOT-A-NAME")), "{err:?}");
    assert!(job.pid().is_none());
}

#[tokio::test]
async fn a_host_that_disappears_is_unreachable() {
    let mut sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let job = Job::new(&["sleep 300"]);
    exec.start(&job.run, &instance()).await.unwrap();
    sshd.stop();
    let err = exec.status(&job.run, &instance()).await.unwrap_err();
    assert!(matches!(err, ExecError::Unreachable(_)), "{err:?}");
    assert_eq!(err.category(), "Unreachable");
    let err = exec.stop(&job.run, &instance()).await.unwrap_err();
    assert!(matches!(err, ExecError::Unreachable(_)), "{err:?}");
    let err = exec.logs(&job.run, &instance(), 0).await.unwrap_err();
    assert!(matches!(err, ExecError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn a_host_that_does_not_answer_is_unreachable_within_the_timeout() {
    // A listener that accepts and never speaks SSH.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let login = SshLogin {
        target: Target { host: "127.0.0.1".into(), port, user: current_user() },
        private_key: key_pem(CLIENT_SEED),
        known_hosts: KnownHosts::default(),
        connect_timeout: Some(Duration::from_millis(500)),
        pin_as: None,
        host_key: None,
    };
    let exec = SshExecutor::new(Arc::new(TestTargets(login)), Arc::new(ApiEnv::new(api().await)));
    let job = Job::new(&["true"]);
    let t = Instant::now();
    let err = exec.start(&job.run, &instance()).await.unwrap_err();
    assert!(matches!(err, ExecError::Unreachable(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(listener);
}

#[tokio::test]
async fn a_runner_that_vanished_ends_the_job_with_137() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let job = Job::new(&["echo started", "sleep 300"]);
    exec.start(&job.run, &instance()).await.unwrap();
    wait_until("the job's output", Duration::from_secs(10), || job.output() == "started\n").await;
    // As after a crash of the host: the whole process group is gone, no exit code written.
    let pgid = job.pid().unwrap();
    Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status().unwrap();
    wait_until("the job's processes to go", Duration::from_secs(10), || group_members(pgid).is_empty()).await;
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Exited(137));
    assert_eq!(job.file("exit_code").unwrap().trim(), "137");
    assert!(job.output().contains("gone without an exit code"), "{}", job.output());
    // A run that was never started has no status.
    let never = Job::new(&["true"]);
    let err = exec.status(&never.run, &instance()).await.unwrap_err();
    assert!(matches!(err, ExecError::Other(ref m) if m.contains("never started")), "{err:?}");
    exec.stop(&never.run, &instance()).await.unwrap();
}

#[tokio::test]
async fn an_image_on_a_host_without_docker_is_unsupported() {
    let sshd = Sshd::with_path(SYSTEM_PATH);
    let exec = executor(&sshd).await;
    let job = Job::with(RunSpec {
        image: Some("alpine:3.20".into()),
        commands: vec!["echo hi".into()],
        ..Default::default()
    });
    let err = exec.start(&job.run, &instance()).await.unwrap_err();
    let ExecError::Unsupported(message) = &err else { panic!("{err:?}") };
    assert!(
        message.contains(
            "the run asks for image alpine:3.20 but host 127.0.0.1 of instance box-1 has no container runtime (docker)"
        ),
        "{message}"
    );
    assert!(job.pid().is_none() && !job.dir.join("job.sh").exists());
}

/// A `docker` stand-in: `version` answers as a live daemon would (or fails with
/// `FAIL_VERSION`), `run` records its arguments and the variables it was asked to pass,
/// then runs the command on this machine in the working directory; `stop` sends SIGTERM
/// to what `run` runs.
const FAKE_DOCKER: &str = r#"#!/bin/sh
here=$(dirname "$0")
case "$1" in
  version) [ -e "$here/FAIL_VERSION" ] && exit 1; echo 28.0.0; exit 0 ;;
  stop) echo "stop $*" >> "$here/calls"; kill -TERM "$(cat "$here/pid-$4")" 2>/dev/null; exit 0 ;;
  run) shift ;;
  *) exit 1 ;;
esac
for a in "$@"; do printf '[%s]' "$a"; done > "$here/run-args"
wd=
while [ $# -gt 0 ]; do
  case "$1" in
    --rm) shift ;;
    --name) name=$2; shift 2 ;;
    --gpus) shift 2 ;;
    -e) printf '%s=%s\n' "$2" "$(printenv "$2")" >> "$here/passed-env"; shift 2 ;;
    -w) wd=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
shift
echo $$ > "$here/pid-$name"
[ -n "$wd" ] && cd "$wd"
exec "$@"
"#;

fn fake_docker() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("kpool-fake-docker"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("docker"), FAKE_DOCKER).unwrap();
    set_mode(&dir.join("docker"), 0o755);
    dir
}

#[tokio::test]
async fn an_image_runs_in_docker_with_the_env_passed_by_name() {
    let bin = fake_docker();
    let sshd = Sshd::with_path(&format!("{}:{SYSTEM_PATH}", bin.display()));
    let exec = executor(&sshd).await;
    let job = Job::with(RunSpec {
        image: Some("registry.example/team/img:1".into()),
        commands: vec!["echo \"in $(pwd): $TOKEN\"".into()],
        env: vec![literal("TOKEN", "it's secret")],
        working_dir: Some("/tmp".into()),
        ..Default::default()
    });
    exec.start(&job.run, &instance()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0, "{}", job.output());
    assert_eq!(job.output(), "in /tmp: it's secret\n");
    let args = fs::read_to_string(bin.join("run-args")).unwrap();
    let expected = format!(
        "[--rm][--name][kpool-{}][-e][TOKEN][-w][/tmp][--][registry.example/team/img:1][sh][-c][set -e\n{}]",
        job.uid(),
        "echo \"in $(pwd): $TOKEN\""
    );
    assert_eq!(args, expected);
    assert_eq!(fs::read_to_string(bin.join("passed-env")).unwrap(), "TOKEN=it's secret\n");
    assert!(!job.file("run.sh").unwrap().contains("it's secret"));

    // A docker CLI whose daemon does not answer cannot run images either.
    fs::write(bin.join("FAIL_VERSION"), "").unwrap();
    let other = Job::with(RunSpec { image: Some("alpine".into()), ..Default::default() });
    let err = exec.start(&other.run, &instance()).await.unwrap_err();
    assert!(matches!(err, ExecError::Unsupported(ref m) if m.contains("docker daemon")), "{err:?}");
    let _ = fs::remove_dir_all(&bin);
}

/// An image is never an option of `docker run`: one docker could read as an option (or as
/// several words) is refused before the host is asked anything.
#[tokio::test]
async fn an_image_docker_could_read_as_an_option_is_refused() {
    let bin = fake_docker();
    let sshd = Sshd::with_path(&format!("{}:{SYSTEM_PATH}", bin.display()));
    let exec = executor(&sshd).await;
    for image in ["--privileged", "-v/:/host", "alpine --privileged", "alpine\t-v/:/host"] {
        let job = Job::with(RunSpec { image: Some(image.into()), commands: vec!["id".into()], ..Default::default() });
        let err = exec.start(&job.run, &instance()).await.unwrap_err();
        let ExecError::Unsupported(message) = &err else { panic!("{image:?}: {err:?}") };
        assert!(message.starts_with(&format!("spec.image {image:?}")), "{message}");
        assert!(job.pid().is_none() && !job.dir.join("job.sh").exists(), "{image:?}");
    }
    assert!(!bin.join("run-args").exists(), "docker was run");
    let _ = fs::remove_dir_all(&bin);
}

#[tokio::test]
async fn stop_of_a_job_in_a_container_stops_the_container() {
    let bin = fake_docker();
    let sshd = Sshd::with_path(&format!("{}:{SYSTEM_PATH}", bin.display()));
    let exec = executor(&sshd).await;
    let job = Job::with(RunSpec {
        image: Some("alpine".into()),
        commands: vec!["echo started".into(), "sleep 300".into()],
        ..Default::default()
    });
    exec.start(&job.run, &instance()).await.unwrap();
    wait_until("the job's output", Duration::from_secs(10), || job.output() == "started\n").await;
    let pgid = job.pid().unwrap();
    exec.stop(&job.run, &instance()).await.unwrap();
    let calls = fs::read_to_string(bin.join("calls")).unwrap();
    assert_eq!(calls, format!("stop stop -t 2 kpool-{}\n", job.uid()));
    assert_eq!(exec.status(&job.run, &instance()).await.unwrap(), JobState::Exited(143));
    assert!(group_members(pgid).is_empty());
    let _ = fs::remove_dir_all(&bin);
}

/// The production targets: the host named by the instance's offer, in its ssh Backend,
/// logged into with the key of the Backend's Secret.
#[tokio::test]
async fn api_targets_reach_the_host_of_the_instance_offer() {
    let sshd = Sshd::start();
    let client = api().await;
    let key_secret = Secret {
        metadata: ObjectMeta { name: Some("byo-key".into()), namespace: Some(NS.into()), ..Default::default() },
        data: Some(BTreeMap::from([("ssh-privatekey".to_string(), ByteString(key_pem(CLIENT_SEED).into_bytes()))])),
        type_: Some("kubernetes.io/ssh-auth".into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &key_secret).await.unwrap();
    let backends = Api::<Backend>::namespaced(client.clone(), NS);
    let mut byo = Backend::new(
        "byo",
        BackendSpec {
            type_: BackendType::Ssh,
            credentials: Some(Credentials { secret_ref: SecretRef { name: "byo-key".into() } }),
            ssh: Some(SshBackendConfig {
                hosts: vec![sshd.host("box-0-unused"), sshd.host("box-1")],
                connect_timeout_seconds: Some(5),
                price_per_hour: None,
            }),
            ..Default::default()
        },
    );
    byo.metadata.namespace = Some(NS.into());
    backends.create(&PostParams::default(), &byo).await.unwrap();
    let mut cloud = Backend::new("cloud", BackendSpec { type_: BackendType::Aws, ..Default::default() });
    cloud.metadata.namespace = Some(NS.into());
    backends.create(&PostParams::default(), &cloud).await.unwrap();
    let mut cluster = Backend::new("cluster", BackendSpec { type_: BackendType::Kubernetes, ..Default::default() });
    cluster.metadata.namespace = Some(NS.into());
    backends.create(&PostParams::default(), &cluster).await.unwrap();

    let on = |backend: &str, host: &str| {
        let mut i = instance();
        i.status = Some(InstanceStatus {
            offer: Some(Offer { backend: backend.into(), instance_type: host.into(), ..Default::default() }),
            ..Default::default()
        });
        i
    };
    let exec = SshExecutor::from_api(client.clone(), Arc::new(DefaultFactory::new(client.clone())));
    let job = Job::new(&["echo via the API"]);
    exec.start(&job.run, &on("byo", "box-1")).await.unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while exec.status(&job.run, &on("byo", "box-1")).await.unwrap() == JobState::Running {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(exec.status(&job.run, &on("byo", "box-1")).await.unwrap(), JobState::Exited(0));
    assert_eq!(exec.logs(&job.run, &on("byo", "box-1"), 0).await.unwrap().0, "via the API\n");

    // Cloud machines are reached at their address (tests/run_ssh.rs runs a job on one).
    let err = exec.start(&job.run, &on("cloud", "m5.xlarge")).await.unwrap_err();
    assert!(matches!(err, ExecError::Other(ref m) if m.contains("no address yet")), "{err:?}");
    let err = exec.start(&job.run, &on("cluster", "node-1")).await.unwrap_err();
    assert!(
        matches!(err, ExecError::Unsupported(ref m) if m.contains("backend cluster of type kubernetes")),
        "{err:?}"
    );
    let err = exec.status(&job.run, &on("byo", "box-9")).await.unwrap_err();
    assert!(matches!(err, ExecError::Other(ref m) if m.contains("\"box-9\"")), "{err:?}");
    let err = exec.status(&job.run, &on("gone", "box-1")).await.unwrap_err();
    assert!(matches!(err, ExecError::Other(ref m) if m.contains("Backend gone")), "{err:?}");
    let err = exec.status(&job.run, &instance()).await.unwrap_err();
    assert!(matches!(err, ExecError::Other(ref m) if m.contains("no offer")), "{err:?}");
}

#[tokio::test]
async fn starting_a_job_prunes_directories_of_jobs_that_ended_long_ago() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let runs = home().join(".kpool/runs");
    let make = |name: &str, files: &[&str], days_old: u32| {
        let dir = runs.join(unique(name));
        fs::create_dir_all(&dir).unwrap();
        for f in files {
            let path = dir.join(f);
            fs::write(&path, "0\n").unwrap();
            let stamp = format!("{days_old} days ago");
            assert!(Command::new("touch").args(["-d", &stamp]).arg(&path).status().unwrap().success());
        }
        dir
    };
    let ended_long_ago = make("kpool-test-old", &["output.log", "exit_code"], 10);
    let ended_recently = make("kpool-test-recent", &["output.log", "exit_code"], 2);
    let running_long = make("kpool-test-running", &["output.log", "pid"], 30);

    let job = Job::new(&["true"]);
    exec.start(&job.run, &instance()).await.unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0);

    assert!(!ended_long_ago.exists(), "a job that ended 10 days ago is pruned");
    assert!(ended_recently.exists(), "a job that ended 2 days ago keeps its logs");
    assert!(running_long.exists(), "a job without an exit code is never pruned");
    assert!(job.dir.exists());
    let _ = fs::remove_dir_all(ended_recently);
    let _ = fs::remove_dir_all(running_long);
}

#[tokio::test]
async fn a_retried_run_on_the_same_host_runs_a_new_job() {
    let sshd = Sshd::start();
    let exec = executor(&sshd).await;
    let mut job = Job::new(&[
        "test -e \"$HOME/.kpool/runs/$RETRY_MARK\" || { touch \"$HOME/.kpool/runs/$RETRY_MARK\"; exit 3; }",
    ]);
    let mark = format!("{}.mark", job.uid());
    job.run.spec.env = vec![literal("RETRY_MARK", &mark)];
    exec.start(&job.run, &instance()).await.unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 3);

    // The run controller resubmits it (status.attempts 1) and it lands on the same host.
    job.run.status = Some(kpool::api::run::RunStatus { attempts: 1, ..Default::default() });
    exec.start(&job.run, &instance()).await.unwrap();
    assert_eq!(wait_exit(&exec, &job, Duration::from_secs(20)).await, 0, "a new job, not the old exit code");
    let retry_dir = job.dir.with_file_name(format!("{}-1", job.uid()));
    assert_eq!(fs::read_to_string(retry_dir.join("exit_code")).unwrap().trim(), "0");
    assert_eq!(job.file("exit_code").unwrap().trim(), "3", "the first attempt's directory is kept");
    let _ = fs::remove_dir_all(retry_dir);
    let _ = fs::remove_file(home().join(".kpool/runs").join(mark));
}
