//! Runs a run's commands on its instance over SSH, detached from the controller.
//!
//! Each run has a job directory on its host, `~/.kpool/runs/<job id>/` (private to the
//! login user, mode 0700), where the job id is the run's UID, with `-<N>` appended for the
//! N-th retry ([`job_id`]), holding:
//! - `job.sh`: `set -e` then the run's commands in order, byte for byte;
//! - `env`: `export NAME='value'` lines (values single-quoted, names checked shell names);
//! - `run.sh`: the runner kpool generates (see [`script::runner_script`]);
//! - `output.log`: the job's standard output and standard error, as written (see
//!   [`SshExecutor::logs`]); it stays on the host after the run, with the directory;
//! - `pid`: the runner's pid, which is also the job's process group and session;
//! - `exit_code`: written when the job has ended;
//! - `boot_id`, `lock`, and `container` for a job in a container.
//!
//! A job's directory stays for [`script::JOB_RETENTION_DAYS`] days after the job ended;
//! the next job started on the host removes older ones.
//!
//! The files are written through the SSH channel's standard input, never through a shell
//! command line, so commands and values with quotes, `$`, newlines or `;` arrive unchanged.
//!
//! `start` is idempotent: when the directory has a `pid` or an `exit_code` it does nothing;
//! two concurrent starts run one job (the runner takes `lock`). The runner is started with
//! `setsid nohup sh run.sh &`, standard input from `/dev/null`: in its own session, so a
//! dropped SSH connection, a restarted or crashed controller never stops the job, and any
//! controller can ask about it later. The job runs with `sh` in `$HOME` (or
//! `spec.workingDir`, relative to `$HOME`). When it ends, processes it left in the background
//! get SIGTERM and its exit code is recorded.
//!
//! With `spec.image`, the commands run in `docker run --rm --name kpool-<job id> [--gpus all]
//! -e NAME… [-w DIR] -- IMAGE sh -c <commands>` (`--gpus all` when the host has `nvidia-smi`;
//! variables are passed by name, their values come from the runner's environment). A host
//! without `docker`, or whose docker daemon does not answer, gives
//! [`ExecError::Unsupported`]; so does an image docker could read as an option (starting
//! with `-`, or with whitespace: [`script::check_image`]), before anything runs on the host.
//!
//! `status`: `exit_code` -> `Exited(code)`; the runner alive (its pid, in this boot, running
//! this job's `run.sh`) -> `Running`; a runner gone without an exit code (the host
//! restarted, the runner was killed) -> `Exited(137)` ([`script::VANISHED_EXIT_CODE`]),
//! recorded in `exit_code` with a line in `output.log` saying so. A job that was never
//! started (no `pid`) is [`ExecError::Other`].
//!
//! `stop`: nothing when the job has ended or never started; else `docker stop` of its
//! container, then SIGTERM to its process group, SIGKILL after the grace period
//! ([`SshExecutor::with_stop_grace`]); the exit code is the job's (143 after SIGTERM) or 137
//! when it had to be killed. A process of the group still alive after SIGKILL (e.g. stuck
//! in the kernel) makes `stop` fail, so it is tried again: `stop` succeeds only once the
//! whole group is gone. `fence` is `stop` of one given attempt of a run (see
//! [`Executor::fence`]), the run's current attempt or not.
//!
//! Every SSH call has a timeout: login within the backend's `connectTimeoutSeconds` (else
//! [`DEFAULT_CONNECT_TIMEOUT`]), each command within [`DEFAULT_COMMAND_TIMEOUT`] (stop:
//! plus twice the grace period). A host that cannot be reached or stops answering is
//! [`ExecError::Unreachable`]. Each call opens its own connection and closes it.

mod conn;
pub mod instance_key;
pub mod script;
mod targets;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::ResourceExt;

use self::conn::{Conn, Output, Tofu};
use self::script::{Container, Reported};
pub use self::targets::ApiTargets;
use super::env::{is_shell_name, ApiEnv, RunEnv};
use super::{ExecError, Executor, JobLogs, JobState};
use crate::api::instance::{Instance, JobRef};
use crate::api::run::Run;
use crate::backends::factory::DefaultFactory;
pub use crate::backends::ssh::KnownHosts;

/// Login timeout when the backend sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one command of the executor may take (stop: plus twice the grace period).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Time between SIGTERM and SIGKILL when a job is stopped.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Most bytes of output one `logs` call returns.
pub const LOG_CHUNK: usize = 1024 * 1024;
/// Most output kept from the executor's own commands.
const MAX_CONTROL_OUTPUT: usize = 64 * 1024;

/// Where and as whom to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// What logging in to an instance's host takes.
#[derive(Clone)]
pub struct SshLogin {
    pub target: Target,
    /// Unencrypted OpenSSH or PEM private key. Never logged.
    pub private_key: String,
    /// Host keys seen by the backend; a host it has not seen is trusted on first use.
    pub known_hosts: KnownHosts,
    /// Login timeout; the executor's default when `None`.
    pub connect_timeout: Option<Duration>,
    /// Scope of the host key the executor trusts on first use and then pins (with
    /// `host:port`): the instance's UID for cloud instances, whose addresses are reused by
    /// other machines later; `None` pins by `host:port` alone (hosts you own).
    pub pin_as: Option<String>,
    /// SHA-256 fingerprint of the host key recorded durably for this machine: any other
    /// key is refused. `None`: trust on first use (and, with `pin_as`, record it).
    pub host_key: Option<String>,
}

/// Tells how to reach an instance's host.
#[async_trait]
pub trait SshTargets: Send + Sync {
    async fn login(&self, instance: &Instance) -> Result<SshLogin, ExecError>;
    /// Records, durably, the host key fingerprint first seen for the instance's machine
    /// (asked when the login has [`SshLogin::pin_as`] and no [`SshLogin::host_key`]).
    async fn remember_host_key(&self, _instance: &Instance, _fingerprint: &str) -> Result<(), ExecError> {
        Ok(())
    }
}

/// See the module docs.
pub struct SshExecutor {
    targets: Arc<dyn SshTargets>,
    env: Arc<dyn RunEnv>,
    connect_timeout: Duration,
    command_timeout: Duration,
    stop_grace: Duration,
    tofu: Tofu,
}

impl SshExecutor {
    /// An executor that finds hosts with `targets` and the runs' environment with `env`.
    pub fn new(targets: Arc<dyn SshTargets>, env: Arc<dyn RunEnv>) -> Self {
        SshExecutor {
            targets,
            env,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            tofu: Tofu::default(),
        }
    }

    /// The production executor: hosts from the instances' `Backend`s and, for cloud
    /// machines, their status and key Secret ([`ApiTargets`]); environment from the API
    /// ([`ApiEnv`]).
    pub fn from_api(client: kube::Client, factory: Arc<DefaultFactory>) -> Self {
        Self::new(Arc::new(ApiTargets::new(client.clone(), factory)), Arc::new(ApiEnv::new(client)))
    }

    /// Login timeout when the target sets none, and the timeout of each command.
    pub fn with_timeouts(mut self, connect: Duration, command: Duration) -> Self {
        self.connect_timeout = connect;
        self.command_timeout = command;
        self
    }

    /// Time a stopped job has between SIGTERM (or `docker stop`) and SIGKILL.
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// The job's output (`~/.kpool/runs/<job id>/output.log` on the host) from byte
    /// `from_byte` on, at most [`LOG_CHUNK`] bytes, and the offset to read from next. A
    /// chunk never ends inside a UTF-8 character (the rest comes with the next read);
    /// other invalid bytes are replaced. The log is there while the job runs and after.
    pub async fn logs(&self, run: &Run, instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError> {
        let uid = job_id(run)?;
        let (conn, host) = self.connect(instance).await?;
        let out = self.control(&conn, &script::logs_script(&uid, from_byte, LOG_CHUNK), &[], LOG_CHUNK).await;
        conn.close().await;
        let out = out?;
        match out.status {
            0 => {}
            3 => return Err(no_job(run, &host)),
            _ => return Err(failed("read the job's output", &host, &out)),
        }
        let cut = script::utf8_prefix(&out.stdout);
        Ok((String::from_utf8_lossy(&out.stdout[..cut]).into_owned(), from_byte + cut as u64))
    }

    async fn connect(&self, instance: &Instance) -> Result<(Conn, String), ExecError> {
        let login = self.targets.login(instance).await?;
        let host = format!("{} of instance {}", login.target.host, instance.name_any());
        let timeout = login.connect_timeout.unwrap_or(self.connect_timeout);
        let conn = conn::connect(&login, &self.tofu, timeout).await?;
        if login.pin_as.is_some() && login.host_key.is_none() {
            // First contact with this machine: its key is pinned for good.
            if let Err(e) = self.targets.remember_host_key(instance, conn.host_key()).await {
                tracing::warn!(instance = %instance.name_any(), error = %e, "could not record the host key");
            }
        }
        Ok((conn, host))
    }

    async fn control(&self, conn: &Conn, script: &str, stdin: &[u8], max: usize) -> Result<Output, ExecError> {
        conn.run(&script::remote(script), stdin, self.command_timeout, max).await
    }

    async fn start_on(&self, conn: &Conn, host: &str, run: &Run, uid: &str) -> Result<(), ExecError> {
        let spec = &run.spec;
        let out =
            self.control(conn, &script::inspect_script(uid, spec.image.is_some()), &[], MAX_CONTROL_OUTPUT).await?;
        if out.status != 0 {
            return Err(failed("inspect the host", host, &out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let facts: HashSet<&str> = text.lines().map(str::trim).collect();
        if facts.contains("started") {
            return Ok(());
        }
        if !facts.contains("ok") {
            return Err(ExecError::Other(format!("failed to inspect host {host}: unexpected answer {text:?}")));
        }
        if !facts.contains("setsid") || !facts.contains("nohup") {
            return Err(ExecError::Unsupported(format!(
                "host {host} lacks setsid or nohup, which a job detached from the SSH session needs"
            )));
        }
        let container = match spec.image.as_deref() {
            None => None,
            Some(image) if !facts.contains("docker") => {
                return Err(ExecError::Unsupported(format!(
                    "the run asks for image {image} but host {host} has no container runtime (docker)"
                )))
            }
            Some(image) if !facts.contains("dockerd") => {
                return Err(ExecError::Unsupported(format!(
                    "the run asks for image {image} but the docker daemon of host {host} does not answer"
                )))
            }
            Some(image) => {
                Some(Container { image, gpus: facts.contains("nvidia"), commands: !spec.commands.is_empty() })
            }
        };
        let env = self.env.env(run).await?;
        if let Some((name, _)) = env.iter().find(|(k, _)| !is_shell_name(k)) {
            return Err(ExecError::Unsupported(format!(
                "environment variable name {name:?} is not a valid shell name"
            )));
        }
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        let wd = spec.working_dir.as_deref();
        let line = container.map(|c| script::docker_line(uid, &c, &names, wd));
        let files = [
            (script::ENV_FILE, script::env_file(&env)),
            (script::JOB_FILE, script::job_script(&spec.commands)),
            (script::RUNNER_FILE, script::runner_script(uid, wd, line.as_deref())),
        ];
        for (name, content) in files {
            let out =
                self.control(conn, &script::write_script(uid, name), content.as_bytes(), MAX_CONTROL_OUTPUT).await?;
            if out.status != 0 {
                return Err(failed(&format!("write {name} of the job"), host, &out));
            }
        }
        let out = self.control(conn, &script::launch_script(uid), &[], MAX_CONTROL_OUTPUT).await?;
        if out.status != 0 {
            return Err(failed("start the job", host, &out));
        }
        Ok(())
    }

    async fn report(&self, run: &Run, instance: &Instance, stop: bool) -> Result<(Reported, String), ExecError> {
        self.report_on(&job_id(run)?, instance, stop).await
    }

    /// Runs the status (or stop) script of job `uid` on the instance's host.
    async fn report_on(&self, uid: &str, instance: &Instance, stop: bool) -> Result<(Reported, String), ExecError> {
        let (conn, host) = self.connect(instance).await?;
        let (script, timeout) = if stop {
            let grace = self.stop_grace.as_secs().max(1);
            (script::stop_script(uid, grace), self.command_timeout + self.stop_grace * 2 + Duration::from_secs(10))
        } else {
            (script::status_script(uid), self.command_timeout)
        };
        let out = conn.run(&script::remote(&script), &[], timeout, MAX_CONTROL_OUTPUT).await;
        conn.close().await;
        let out = out?;
        let what = if stop { "stop the job" } else { "read the job's status" };
        if out.status != 0 {
            return Err(failed(what, &host, &out));
        }
        let reported = script::parse_report(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| ExecError::Other(format!("failed to {what} on host {host}: {e}")))?;
        Ok((reported, host))
    }
}

#[async_trait]
impl Executor for SshExecutor {
    async fn start(&self, run: &Run, instance: &Instance) -> Result<(), ExecError> {
        let uid = job_id(run)?;
        if let Some(image) = &run.spec.image {
            script::check_image(image).map_err(ExecError::Unsupported)?;
        }
        let (conn, host) = self.connect(instance).await?;
        let result = self.start_on(&conn, &host, run, &uid).await;
        conn.close().await;
        result
    }

    async fn status(&self, run: &Run, instance: &Instance) -> Result<JobState, ExecError> {
        match self.report(run, instance, false).await? {
            (Reported::Running, _) => Ok(JobState::Running),
            (Reported::Exited(code) | Reported::Stopped(code), _) => Ok(JobState::Exited(code)),
            (Reported::Vanished(code), host) => {
                tracing::warn!(run = %run.name_any(), %host, code, "the job's runner is gone without an exit code");
                Ok(JobState::Exited(code))
            }
            (Reported::Absent, host) => Err(no_job(run, &host)),
        }
    }

    async fn stop(&self, run: &Run, instance: &Instance) -> Result<(), ExecError> {
        self.report(run, instance, true).await.map(|_| ())
    }

    async fn fence(&self, job: &JobRef, instance: &Instance) -> Result<(), ExecError> {
        let uid = job_id_of(&job.run, &job.run_uid, job.attempt)?;
        self.report_on(&uid, instance, true).await.map(|_| ())
    }
}

#[async_trait]
impl JobLogs for SshExecutor {
    async fn logs(&self, run: &Run, instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError> {
        SshExecutor::logs(self, run, instance, from_byte).await
    }
}

/// The job's id, which names its directory and container: the run's UID, and for a retry
/// (`status.attempts` > 0) `-<attempts>` after it, so a retried run placed on the same host
/// runs a new job instead of finding the last attempt's exit code.
pub fn job_id(run: &Run) -> Result<String, ExecError> {
    let uid = run.metadata.uid.clone().unwrap_or_default();
    job_id_of(&run.name_any(), &uid, run.status.as_ref().map(|s| s.attempts).unwrap_or(0))
}

/// [`job_id`] of attempt `attempt` of the run `run` with UID `uid`.
pub fn job_id_of(run: &str, uid: &str, attempt: u32) -> Result<String, ExecError> {
    if uid.is_empty() {
        return Err(ExecError::Other(format!("run {run} has no UID")));
    }
    let id = match attempt {
        0 => uid.to_string(),
        n => format!("{uid}-{n}"),
    };
    script::check_uid(&id)?;
    Ok(id)
}

fn no_job(run: &Run, host: &str) -> ExecError {
    let id = job_id(run).unwrap_or_default();
    ExecError::Other(format!(
        "no job of run {} on host {host}: it was never started, or ~/.kpool/runs/{id} was removed",
        run.name_any()
    ))
}

fn failed(what: &str, host: &str, out: &Output) -> ExecError {
    ExecError::Other(format!("failed to {what} on host {host} (exit status {}): {}", out.status, out.stderr_text()))
}
