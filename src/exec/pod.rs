//! Runs a run's commands in a Pod on the node of an instance of a `kubernetes` backend.
//!
//! Reuse on Kubernetes is reuse of a reserved slice of a node: the instance's machine is a
//! *slot* Pod (`kpool-<instance UID>`, image `pause`) pinned to a node with requests =
//! limits of the offer (see [`crate::backends::kubernetes`]). A run on the instance swaps
//! the slot for the run's *job* Pod, which takes the same slice; when the job ends the
//! slot is created again. Runs with different images thus reuse the same capacity.
//!
//! The job Pod, `<machine name>-run-<run UID>-<attempt>` in the backend's namespace (the
//! attempt is the run's `status.attempts`, so a retried run gets a new job), is the slot
//! Pod as the backend makes it (same `nodeName`, requests and limits, tolerations, node
//! selector, labels and annotations) with:
//! - labels `kpool.dev/machine=<machine name>` and `kpool.dev/run-uid=<run UID>`, the
//!   annotation `kpool.dev/run=<namespace>/<name>`;
//! - one container `job`: the run's `spec.image`, else the backend's
//!   `spec.kubernetes.runImage`, else [`DEFAULT_RUN_IMAGE`]; command `sh -c <script>`,
//!   the script being `set -e` and then the run's commands, one a line, byte for byte (an
//!   argv element, never re-quoted); no command when the run has none (the image's own);
//!   `workingDir` = `spec.workingDir` (which must be absolute: a relative one fails `start`
//!   with [`ExecError::Unsupported`]);
//! - `restartPolicy: Never`; `envFrom` the job's Secret.
//!
//! The environment (`spec.env`, resolved by [`super::env::resolve_env`] in the run's
//! namespace) goes into a Secret with the job Pod's name, in the Pod's namespace, never
//! into the Pod spec. The Secret is made before the slot is touched and gets the job Pod
//! as owner once the Pod exists, so it is deleted with the Pod. It also records the swap:
//! a Secret without owner means "the job Pod is due".
//!
//! `start` is idempotent and leaves the job detached (its whole state is in the API):
//! nothing when the job Pod exists; else it resolves the environment (an invalid one, like
//! a relative working directory, fails with the slot untouched), deletes finished job Pods
//! of earlier runs on the machine, makes the Secret, deletes the slot Pod (grace period
//! [`SLOT_GRACE_SECONDS`]) and, once the slot is gone, creates the job Pod (409 = already
//! there). A slot that takes longer to go (the kubelet must release its resources first)
//! leaves the job Pod to `status`: the job starts at the run controller's next poll. A job
//! Pod the API server refuses (403 or 422: an admission webhook or policy, Pod Security)
//! is [`ExecError::Unsupported`], after the Secret is deleted and the slot created again:
//! the run fails, naming the refusal, and the instance is whole for the next run.
//!
//! `status`:
//! - job Pod `Succeeded`/`Failed` -> the slot is created again, then `Exited(code)`, the
//!   code from the `job` container's terminated state (137 when there is none, e.g. an
//!   evicted Pod). The finished Pod is kept, for its log, until the next job on the
//!   machine starts or the machine is deleted;
//! - `Pending`/`Running` (or being deleted) -> `Running`; the Secret is checked (made
//!   again if missing, given its owner if it has none);
//! - a waiting `job` container with `ErrImagePull`, `ImagePullBackOff` or
//!   `InvalidImageName` -> [`ExecError::Unsupported`] naming the image and the kubelet's
//!   message: the run controller stops the job and fails the run;
//! - no job Pod and a Secret without owner -> the swap goes on (slot deleted, job Pod
//!   created when the slot is gone) -> `Running`;
//! - no job Pod otherwise (deleted by someone else once it existed; never started) ->
//!   the slot is created again, then `Exited(137)`, as the SSH runner reports a job that
//!   vanished ([`VANISHED_EXIT_CODE`]).
//!
//! `stop`: deletes a job Pod that has not finished with grace period
//! [`DEFAULT_STOP_GRACE`] (see [`PodExecutor::with_stop_grace`]) and waits until it is
//! gone (and a slot still being deleted by the swap, too), deletes the Secret, and creates
//! the slot again. Waiting longer than the grace period plus [`STOP_WAIT_MARGIN`] is
//! [`ExecError::Other`], retried by the controller.
//!
//! `logs`: the `job` container's log through `pods/log`, from a byte offset on (the API
//! has no offsets: the log is read from its start, up to `from_byte` + [`LOG_CHUNK`]
//! bytes, and cut). Nothing while the container has not started. The kubelet's log
//! rotation applies: a long log loses its beginning.
//!
//! Permissions (in the backend's namespace): `get`, `list`, `create`, `delete` on pods,
//! `get` on pods/log, `get`, `create`, `patch`, `delete` on secrets.
//!
//! Limits: images from private registries need `imagePullSecrets`, which kpool does not
//! set. A container that cannot be created for another reason (`CreateContainerError`,
//! `CreateContainerConfigError`) keeps the run Running until it is stopped or reaches
//! `maxDuration`. The job runs as its image's user: a namespace that enforces the
//! `restricted` Pod Security Standard may refuse it (the run then fails, see above). A job
//! Pod whose Secret got its owner is never started twice; in the short window between
//! creating the job Pod and giving its Secret the owner, a job Pod deleted by someone else
//! would be started again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::{EnvFromSource, Pod, Secret, SecretEnvSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, LogParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::ResourceExt;

use super::env::{ApiEnv, RunEnv};
use super::ssh::script::{job_script, utf8_prefix, VANISHED_EXIT_CODE};
use super::{ExecError, Executor, JobLogs, JobState};
use crate::api::backend::{Backend as BackendObject, BackendType};
use crate::api::instance::{Instance, JobRef};
use crate::api::run::Run;
use crate::backends::allow::Allowances;
pub use crate::backends::kubernetes::DEFAULT_RUN_IMAGE;
use crate::backends::kubernetes::{KubernetesBackend, ANNOTATION_RUN, LABEL_MACHINE, LABEL_RUN_UID, MANAGED_BY};
use crate::backends::{machine_tags, MachineSpec, Owner, TAG_MANAGED_BY};

/// Grace period of a stopped job Pod.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Grace period of the slot Pod when a job takes its place (`pause` exits on SIGTERM).
pub const SLOT_GRACE_SECONDS: i64 = 1;
/// How much longer than the grace period `stop` waits for a Pod to go.
pub const STOP_WAIT_MARGIN: Duration = Duration::from_secs(15);
/// Most bytes of log one `logs` call returns.
pub const LOG_CHUNK: usize = 1024 * 1024;
/// Name of the job Pod's container.
pub const JOB_CONTAINER: &str = "job";
/// Waiting reasons of a container whose image cannot be pulled.
pub const PULL_FAILURES: &[&str] = &["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// See the module docs.
pub struct PodExecutor {
    client: kube::Client,
    env: Arc<dyn RunEnv>,
    stop_grace: Duration,
    poll: Duration,
    /// This installation's identity, which the slot and job Pods are labelled with.
    installation: Option<String>,
    /// Where the operator allows backends to place Pods.
    allowances: Allowances,
}

/// What one call works on: the run's job on one instance.
struct Job {
    pods: Api<Pod>,
    secrets: Api<Secret>,
    /// The slot Pod as the backend makes it; also the template of the job Pod.
    slot: Pod,
    slot_name: String,
    /// Name of the job Pod and of its Secret.
    name: String,
    run_uid: String,
    run_image: String,
    instance: String,
}

impl PodExecutor {
    /// The production executor: environment from the API.
    pub fn new(client: kube::Client) -> Self {
        let env = Arc::new(ApiEnv::new(client.clone()));
        Self::with_env(client, env)
    }

    /// An executor that takes the runs' environment from `env`.
    pub fn with_env(client: kube::Client, env: Arc<dyn RunEnv>) -> Self {
        PodExecutor {
            client,
            env,
            stop_grace: DEFAULT_STOP_GRACE,
            poll: Duration::from_millis(500),
            installation: None,
            allowances: Allowances::default(),
        }
    }

    /// Places job Pods only where `allowances` let the backend place Pods (as the
    /// controller's factory does); by default, only in the backend's own namespace.
    pub fn with_allowances(mut self, allowances: Allowances) -> Self {
        self.allowances = allowances;
        self
    }

    /// Labels the Pods it makes (slot Pods made again, job Pods) with this installation's
    /// identity, as the backend built by the controller's factory does.
    pub fn with_installation(mut self, installation: Option<String>) -> Self {
        self.installation = installation;
        self
    }

    /// Grace period of a stopped job Pod.
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// The name of the job Pod of attempt `attempt` of the run with UID `run_uid` on
    /// machine `machine`.
    pub fn job_pod_name(machine: &str, run_uid: &str, attempt: u32) -> String {
        format!("{machine}-run-{run_uid}-{attempt}")
    }

    async fn job(&self, run: &Run, instance: &Instance) -> Result<Job, ExecError> {
        self.job_of(&JobRef::of(run), instance).await
    }

    /// What a call on attempt `job.attempt` of run `job.run` works on.
    async fn job_of(&self, job: &JobRef, instance: &Instance) -> Result<Job, ExecError> {
        if job.run_uid.is_empty() {
            return Err(ExecError::Other(format!("run {} has no UID", job.run)));
        }
        let run_uid = job.run_uid.clone();
        let attempt = job.attempt;
        let st = instance.status.clone().unwrap_or_default();
        let (Some(offer), Some(machine)) = (st.offer, st.machine_name) else {
            return Err(ExecError::Other(format!("instance {} has no machine yet", instance.name_any())));
        };
        let ns = instance.namespace().unwrap_or_default();
        let objects: Api<BackendObject> = Api::namespaced(self.client.clone(), &ns);
        let object = objects
            .get_opt(&offer.backend)
            .await
            .map_err(|e| ExecError::Other(format!("failed to read Backend {}: {e}", offer.backend)))?
            .ok_or_else(|| ExecError::Other(format!("Backend {} not found in namespace {ns}", offer.backend)))?;
        if object.spec.type_ != BackendType::Kubernetes {
            return Err(ExecError::Unsupported(format!(
                "Backend {} is of type {}, not kubernetes",
                offer.backend,
                object.spec.type_.as_str()
            )));
        }
        // The machine's Pods live where it was launched (its provider id is
        // `namespace/name`), even after spec.kubernetes.namespace named another.
        let mut object = object;
        if let Some((placed, _)) =
            st.provider_id.as_deref().and_then(|p| p.split_once('/')).filter(|(n, _)| !n.is_empty())
        {
            object.spec.kubernetes.get_or_insert_with(Default::default).namespace = Some(placed.to_string());
        }
        // Job Pods carry the run's image and Secret: never outside the allowed namespaces.
        self.allowances
            .check_kubernetes_namespace(&object)
            .map_err(|e| ExecError::Unsupported(format!("Backend {}: {e}", offer.backend)))?;
        let mut backend = KubernetesBackend::new(self.client.clone(), &object)
            .map_err(|e| ExecError::Other(format!("Backend {}: {e}", offer.backend)))?;
        if let Some(installation) = &self.installation {
            backend = backend.with_owner(Owner { installation: installation.clone(), namespace: ns.clone() });
        }
        let spec = MachineSpec { name: machine.clone(), offer, tags: machine_tags(instance), ssh_public_key: None };
        Ok(Job {
            pods: Api::namespaced(self.client.clone(), backend.namespace()),
            secrets: Api::namespaced(self.client.clone(), backend.namespace()),
            slot: backend.pod_for(&spec),
            name: Self::job_pod_name(&machine, &run_uid, attempt),
            slot_name: machine,
            run_uid,
            run_image: backend.run_image().to_string(),
            instance: instance.name_any(),
        })
    }

    /// The job Pod of `run` (see the module docs).
    fn job_pod(&self, job: &Job, run: &Run) -> Pod {
        let mut pod = job.slot.clone();
        let meta = &mut pod.metadata;
        meta.name = Some(job.name.clone());
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(LABEL_MACHINE.into(), job.slot_name.clone());
        labels.insert(LABEL_RUN_UID.into(), job.run_uid.clone());
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ANNOTATION_RUN.into(), format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any()));
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.restart_policy = Some("Never".into());
        if let Some(c) = spec.containers.first_mut() {
            c.name = JOB_CONTAINER.into();
            c.image = Some(run.spec.image.clone().unwrap_or_else(|| job.run_image.clone()));
            c.command =
                (!run.spec.commands.is_empty()).then(|| vec!["sh".into(), "-c".into(), job_script(&run.spec.commands)]);
            c.working_dir = run.spec.working_dir.clone();
            c.env_from = Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource { name: job.name.clone(), optional: Some(false) }),
                ..EnvFromSource::default()
            }]);
        }
        pod
    }

    fn secret(&self, job: &Job, env: &[(String, String)], owner: Option<&Pod>) -> Secret {
        // A later variable of the same name wins, as in `spec.env`.
        let data: BTreeMap<String, ByteString> =
            env.iter().map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))).collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(job.name.clone()),
                labels: Some(BTreeMap::from([
                    (TAG_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                    (LABEL_MACHINE.to_string(), job.slot_name.clone()),
                    (LABEL_RUN_UID.to_string(), job.run_uid.clone()),
                ])),
                owner_references: owner.map(|p| vec![owner_of(p)]),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Makes the job's Secret (no owner yet); an existing one is kept.
    async fn create_secret(&self, job: &Job, env: &[(String, String)]) -> Result<(), ExecError> {
        match job.secrets.create(&PostParams::default(), &self.secret(job, env, None)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(api_failed("create Secret", &job.name, e)),
        }
    }

    /// The Secret of a job Pod that exists: made again if missing, owned by the Pod.
    async fn own_secret(&self, job: &Job, run: &Run, pod: &Pod) -> Result<(), ExecError> {
        let owner = owner_of(pod);
        match job.secrets.get_opt(&job.name).await.map_err(|e| api_failed("read Secret", &job.name, e))? {
            Some(s) if s.owner_references().iter().any(|o| o.uid == owner.uid) => Ok(()),
            Some(_) => {
                let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
                job.secrets
                    .patch(&job.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| api_failed("set the owner of Secret", &job.name, e))?;
                Ok(())
            }
            None => {
                let env = self.env.env(run).await?;
                match job.secrets.create(&PostParams::default(), &self.secret(job, &env, Some(pod))).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(api_failed("create Secret", &job.name, e)),
                }
            }
        }
    }

    /// Deletes the finished job Pods of earlier runs (and attempts) on the machine. A job
    /// Pod of another run or attempt that has not finished is an error: one job per
    /// instance.
    async fn clear_finished(&self, job: &Job) -> Result<(), ExecError> {
        let params = kube::api::ListParams::default().labels(&format!("{LABEL_MACHINE}={}", job.slot_name));
        let pods = job.pods.list(&params).await.map_err(|e| api_failed("list job Pods of", &job.slot_name, e))?;
        for pod in pods.items.iter().filter(|p| p.name_any() != job.name) {
            if exit_code(pod).is_none() && pod.metadata.deletion_timestamp.is_none() {
                return Err(ExecError::Other(format!(
                    "job Pod {} of another run or attempt is still on machine {}",
                    pod.name_any(),
                    job.slot_name
                )));
            }
            self.delete_pod(job, &pod.name_any(), None).await?;
        }
        Ok(())
    }

    /// Takes the slot's place: deletes the slot Pod; once it is gone, creates the job Pod.
    /// `true` when the job Pod exists.
    async fn swap(&self, job: &Job, run: &Run) -> Result<bool, ExecError> {
        if let Some(slot) = self.get_pod(job, &job.slot_name).await? {
            if slot.metadata.deletion_timestamp.is_none() {
                self.delete_pod(job, &job.slot_name, Some(SLOT_GRACE_SECONDS)).await?;
            }
            if self.get_pod(job, &job.slot_name).await?.is_some() {
                return Ok(false);
            }
        }
        let pod = match job.pods.create(&PostParams::default(), &self.job_pod(job, run)).await {
            Ok(p) => p,
            Err(kube::Error::Api(s)) if s.code == 409 => self
                .get_pod(job, &job.name)
                .await?
                .ok_or_else(|| ExecError::Other(format!("job Pod {} went away as it was created", job.name)))?,
            // Refused for good (admission: a webhook, a policy, Pod Security; an invalid
            // spec): the slot takes the node back and the job's Secret goes.
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => {
                self.delete_secret(job).await?;
                self.restore_slot(job).await?;
                return Err(ExecError::Unsupported(format!(
                    "the API server refused job Pod {} ({} {}): {}",
                    job.name, s.code, s.reason, s.message
                )));
            }
            Err(e) => return Err(api_failed("create job Pod", &job.name, e)),
        };
        self.own_secret(job, run, &pod).await?;
        Ok(true)
    }

    /// Creates the slot Pod again (an existing one is kept).
    async fn restore_slot(&self, job: &Job) -> Result<(), ExecError> {
        match job.pods.create(&PostParams::default(), &job.slot).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(api_failed("create slot Pod", &job.slot_name, e)),
        }
    }

    async fn get_pod(&self, job: &Job, name: &str) -> Result<Option<Pod>, ExecError> {
        job.pods.get_opt(name).await.map_err(|e| api_failed("read Pod", name, e))
    }

    async fn delete_pod(&self, job: &Job, name: &str, grace: Option<i64>) -> Result<(), ExecError> {
        let params = DeleteParams { grace_period_seconds: grace.map(|g| g.max(0) as u32), ..DeleteParams::default() };
        match job.pods.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_failed("delete Pod", name, e)),
        }
    }

    /// Waits until Pod `name` is gone, at most the stop grace period plus [`STOP_WAIT_MARGIN`].
    async fn wait_gone(&self, job: &Job, name: &str) -> Result<(), ExecError> {
        let deadline = tokio::time::Instant::now() + self.stop_grace + STOP_WAIT_MARGIN;
        while self.get_pod(job, name).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ExecError::Other(format!("Pod {name} is still terminating; trying again")));
            }
            tokio::time::sleep(self.poll).await;
        }
        Ok(())
    }

    /// The job's log (see the module docs).
    pub async fn logs(&self, run: &Run, instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError> {
        let job = self.job(run, instance).await?;
        let Some(pod) = self.get_pod(&job, &job.name).await? else {
            return Err(ExecError::Other(format!(
                "no job Pod {} for run {} on instance {}: it has not started there, or the Pod was deleted",
                job.name,
                run.name_any(),
                job.instance
            )));
        };
        if !container_started(&pod) {
            return Ok((String::new(), from_byte));
        }
        let limit = from_byte.saturating_add(LOG_CHUNK as u64).min(i64::MAX as u64) as i64;
        let params =
            LogParams { container: Some(JOB_CONTAINER.into()), limit_bytes: Some(limit), ..LogParams::default() };
        let mut bytes = Vec::new();
        let mut stream =
            job.pods.log_stream(&job.name, &params).await.map_err(|e| api_failed("read the log of", &job.name, e))?;
        stream
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| ExecError::Other(format!("failed to read the log of Pod {}: {e}", job.name)))?;
        let Some(rest) = usize::try_from(from_byte).ok().and_then(|from| bytes.get(from..)) else {
            return Ok((String::new(), from_byte));
        };
        let rest = &rest[..rest.len().min(LOG_CHUNK)];
        let cut = utf8_prefix(rest);
        Ok((String::from_utf8_lossy(&rest[..cut]).into_owned(), from_byte + cut as u64))
    }
}

#[async_trait]
impl Executor for PodExecutor {
    async fn start(&self, run: &Run, instance: &Instance) -> Result<(), ExecError> {
        let job = self.job(run, instance).await?;
        if let Some(wd) = run.spec.working_dir.as_deref().filter(|wd| !wd.starts_with('/')) {
            return Err(ExecError::Unsupported(format!(
                "spec.workingDir: {wd:?} is not an absolute path, which a job Pod's container needs"
            )));
        }
        if let Some(pod) = self.get_pod(&job, &job.name).await? {
            if exit_code(&pod).is_none() && pod.metadata.deletion_timestamp.is_none() {
                self.own_secret(&job, run, &pod).await?;
            }
            return Ok(());
        }
        let env = self.env.env(run).await?;
        self.clear_finished(&job).await?;
        self.create_secret(&job, &env).await?;
        self.swap(&job, run).await.map(|_| ())
    }

    async fn status(&self, run: &Run, instance: &Instance) -> Result<JobState, ExecError> {
        let job = self.job(run, instance).await?;
        if let Some(pod) = self.get_pod(&job, &job.name).await? {
            if let Some(code) = exit_code(&pod) {
                self.restore_slot(&job).await?;
                return Ok(JobState::Exited(code));
            }
            if pod.metadata.deletion_timestamp.is_none() {
                if let Some(why) = pull_failure(&pod) {
                    return Err(ExecError::Unsupported(why));
                }
                self.own_secret(&job, run, &pod).await?;
            }
            return Ok(JobState::Running);
        }
        let marker = job.secrets.get_opt(&job.name).await.map_err(|e| api_failed("read Secret", &job.name, e))?;
        if marker.is_some_and(|s| s.owner_references().is_empty()) {
            self.swap(&job, run).await?;
            return Ok(JobState::Running);
        }
        tracing::warn!(run = %run.name_any(), pod = %job.name, "the job Pod is gone without an exit code");
        self.restore_slot(&job).await?;
        Ok(JobState::Exited(VANISHED_EXIT_CODE))
    }

    async fn stop(&self, run: &Run, instance: &Instance) -> Result<(), ExecError> {
        let job = self.job(run, instance).await?;
        self.stop_job(&job).await
    }

    async fn fence(&self, job: &JobRef, instance: &Instance) -> Result<(), ExecError> {
        let job = self.job_of(job, instance).await?;
        self.stop_job(&job).await
    }
}

impl PodExecutor {
    /// `stop` of one job (see the module docs).
    async fn stop_job(&self, job: &Job) -> Result<(), ExecError> {
        if let Some(pod) = self.get_pod(job, &job.name).await? {
            if exit_code(&pod).is_none() {
                if pod.metadata.deletion_timestamp.is_none() {
                    let grace = i64::try_from(self.stop_grace.as_secs()).unwrap_or(i64::MAX);
                    self.delete_pod(job, &job.name, Some(grace)).await?;
                }
                self.wait_gone(job, &job.name).await?;
            }
        }
        if self.get_pod(job, &job.slot_name).await?.is_some_and(|s| s.metadata.deletion_timestamp.is_some()) {
            self.wait_gone(job, &job.slot_name).await?;
        }
        self.delete_secret(job).await?;
        self.restore_slot(job).await
    }

    async fn delete_secret(&self, job: &Job) -> Result<(), ExecError> {
        match job.secrets.delete(&job.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_failed("delete Secret", &job.name, e)),
        }
    }
}

#[async_trait]
impl JobLogs for PodExecutor {
    async fn logs(&self, run: &Run, instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError> {
        PodExecutor::logs(self, run, instance, from_byte).await
    }
}

fn owner_of(pod: &Pod) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

/// The exit code of a finished job Pod; `None` while it has not finished.
pub fn exit_code(pod: &Pod) -> Option<i32> {
    let status = pod.status.as_ref()?;
    if !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == JOB_CONTAINER)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    Some(match (terminated, status.phase.as_deref()) {
        (Some(t), _) => t.exit_code,
        (None, Some("Succeeded")) => 0,
        (None, _) => VANISHED_EXIT_CODE,
    })
}

/// Why the job container's image cannot be pulled, when that is why it waits.
pub fn pull_failure(pod: &Pod) -> Option<String> {
    let spec_image = pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
    pod.status.as_ref()?.container_statuses.iter().flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| PULL_FAILURES.contains(r))?;
        let image = spec_image.clone().unwrap_or_else(|| c.image.clone());
        let message = waiting.message.as_deref().unwrap_or("no message from the kubelet");
        Some(format!("image {image:?} of the job cannot be pulled ({reason}): {message}"))
    })
}

/// Whether the job container has started (running or terminated), so it has a log.
fn container_started(pod: &Pod) -> bool {
    pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()).any(|c| {
        c.state.as_ref().is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            || c.last_state.as_ref().is_some_and(|s| s.terminated.is_some())
    })
}

fn api_failed(what: &str, name: &str, e: kube::Error) -> ExecError {
    ExecError::Other(format!("failed to {what} {name}: {e}"))
}
