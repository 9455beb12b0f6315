//! `kubectl pool run` against the in-memory API while the controllers run (the harness
//! plays their loops, the scripted executor plays the job): the plan (the idle instance it
//! would reuse, else the offers), the question, the Run it creates, its output, its exit
//! code, `--detach`, and Ctrl-C. The binary at a real terminal is in tests/cluster_cli.rs.

mod support;

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kpool::api::instance::{Instance, InstanceSpec};
use kpool::api::resources::ResourcesSpec;
use kpool::api::run::{Run, RunPhase};
use kpool::cli::run::{Follow, INTERRUPTED};
use kpool::cli::{self, Cli, CliError, Command, Term};
use kpool::exec::{ExecError, JobLogs};
use kube::ResourceExt;
use support::*;

/// A job's whole output, handed out from any offset as the executors do.
struct Output(&'static str);

#[async_trait]
impl JobLogs for Output {
    async fn logs(&self, _run: &Run, _instance: &Instance, from_byte: u64) -> Result<(String, u64), ExecError> {
        let from = (from_byte as usize).min(self.0.len());
        Ok((self.0[from..].to_string(), self.0.len() as u64))
    }
}

fn parse(line: &str) -> Result<cli::RunArgs, CliError> {
    let args = std::iter::once("kubectl-pool").chain(line.split_whitespace());
    let cli = <Cli as clap::Parser>::try_parse_from(args).map_err(|e| CliError::Usage(e.to_string()))?;
    match cli.command {
        Command::Run(a) => Ok(a),
        other => panic!("not a run command: {other:?}"),
    }
}

/// What one `kubectl pool run` did: its exit code (or error) and what it printed.
struct Outcome {
    code: Result<i32, CliError>,
    out: String,
}

/// Runs `line` with `answers` typed at a terminal (none: no terminal); `interrupt` is
/// the user's Ctrl-C.
async fn pool_run(
    h: &Harness,
    line: &str,
    answers: Option<&str>,
    output: &'static str,
    interrupt: impl std::future::Future<Output = ()>,
) -> Outcome {
    let args = match parse(line) {
        Ok(a) => a,
        Err(e) => return Outcome { code: Err(e), out: String::new() },
    };
    let mut out = Vec::new();
    let mut input = Cursor::new(answers.unwrap_or_default().as_bytes().to_vec());
    let mut term = Term { out: &mut out, input: &mut input, interactive: answers.is_some() };
    let logs = Output(output);
    let interrupt = std::pin::pin!(interrupt);
    let follow = Follow { logs: &logs, interrupt, poll: Duration::from_millis(20) };
    let code = cli::run::run(&args, &h.client, NS, &mut term, follow).await;
    Outcome { code, out: String::from_utf8(out).unwrap() }
}

/// Gives objects the plugin created the harness's hold finalizer (the in-memory API
/// rejects the JSON patch that adds a first finalizer; see tests/support).
async fn hold_new_runs(h: &Harness) {
    use kube::api::{Patch, PatchParams};
    for r in h.api::<Run>().list(&Default::default()).await.unwrap().items {
        if r.finalizers().is_empty() {
            let patch = serde_json::json!({"metadata": {"finalizers": [HOLD]}});
            h.api::<Run>().patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
    }
}

/// Plays the controllers while `command` runs; `job` is called on every round with each
/// run whose job the executor started (to finish it, or not).
async fn with_controllers<T>(
    h: &Harness,
    command: impl std::future::Future<Output = T>,
    job: impl Fn(&str, &Run),
) -> T {
    let done = AtomicBool::new(false);
    let (r, ()) = tokio::join!(
        async {
            let r = command.await;
            done.store(true, Ordering::SeqCst);
            r
        },
        async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                hold_new_runs(h).await;
                h.settle(1).await;
                for name in h.exec.jobs().keys() {
                    if let Ok(run) = h.api::<Run>().get(name).await {
                        job(name, &run);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    );
    r
}

fn cpu(spec: &str) -> ResourcesSpec {
    ResourcesSpec { cpu: Some(spec.into()), ..Default::default() }
}

/// An idle instance `small` (m5.xlarge: 4 CPUs, $0.192/h) of the default pool.
async fn idle_instance(h: &Harness) {
    h.instance("small", InstanceSpec { resources: cpu("4.."), ..Default::default() }).await;
    h.settle(2).await;
}

#[tokio::test]
async fn the_plan_shows_the_idle_instance_it_would_reuse_and_n_creates_nothing() {
    let h = Harness::new().await;
    idle_instance(&h).await;
    let r = pool_run(&h, "run --cpu 2.. --name r -- echo hi", Some("n\n"), "", std::future::pending()).await;
    assert_eq!(r.code.unwrap(), 0);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines[0], "Pool:         default-pool", "{}", r.out);
    assert!(lines[1].starts_with("Requirements: cpu=2.. mem=8GB.. disk=100GB.."), "{}", r.out);
    assert_eq!(lines[3], "Reuses the idle instance:", "{}", r.out);
    assert!(lines[4].starts_with("INSTANCE") && lines[4].contains("PRICE"), "{}", r.out);
    let row = lines[5];
    assert!(row.starts_with("small ") && row.contains("m5.xlarge") && row.ends_with("$0.192"), "{row}");
    assert!(r.out.ends_with("Continue? [y/n]: No run created.\n"), "{}", r.out);
    assert!(h.api::<Run>().list(&Default::default()).await.unwrap().items.is_empty(), "`n` created a Run");

    // Without a terminal and without -y: the question cannot be asked.
    let r = pool_run(&h, "run --cpu 2.. -- echo hi", None, "", std::future::pending()).await;
    let err = r.code.unwrap_err().to_string();
    assert_eq!(err, "Continue? needs confirmation: pass -y to proceed without a prompt");
}

#[tokio::test]
async fn reuse_with_no_idle_fit_refuses_and_says_why() {
    let h = Harness::new().await;
    let r = pool_run(&h, "run --reuse -y -- echo hi", None, "", std::future::pending()).await;
    let err = r.code.unwrap_err().to_string();
    assert!(err.starts_with("pool default-pool has no idle instance, and the run may only reuse"), "{err}");
    assert!(err.contains("--reuse") && err.contains("kubectl pool add"), "{err}");

    idle_instance(&h).await;
    let r = pool_run(&h, "run --cpu 16.. --reuse -y -- echo hi", None, "", std::future::pending()).await;
    let err = r.code.unwrap_err().to_string();
    assert!(err.starts_with("none of the 1 idle instances of pool default-pool fits cpu=16.."), "{err}");
    assert!(h.api::<Run>().list(&Default::default()).await.unwrap().items.is_empty(), "a refused run was created");
}

#[tokio::test]
async fn the_plan_shows_the_offers_when_no_idle_instance_fits() {
    use kpool::api::backend::{Backend, BackendSpec, BackendType};
    let h = Harness::with_real_backends().await;
    h.api::<Backend>().delete("aws", &Default::default()).await.unwrap();
    h.create(Backend::new("k8s", BackendSpec { type_: BackendType::Kubernetes, ..Default::default() })).await;
    let node = ready_node("node-a", &[("cpu", "16"), ("memory", "64Gi"), ("pods", "110")]);
    kube::Api::<k8s_openapi::api::core::v1::Node>::all(h.client.clone())
        .create(&Default::default(), &node)
        .await
        .unwrap();

    let r = pool_run(&h, "run --cpu 4.. --memory 8GB.. -- echo hi", Some("n\n"), "", std::future::pending()).await;
    assert_eq!(r.code.unwrap(), 0);
    assert!(
        r.out
            .contains("pool default-pool has no idle instance; provisions the first of these offers that succeeds:\n#"),
        "{}",
        r.out
    );
    let row = r.out.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("no offer row:\n{}", r.out));
    assert!(row.contains("k8s") && row.contains("node-a") && row.contains("on-demand"), "{row}");
    assert!(r.out.ends_with("Continue? [y/n]: No run created.\n"), "{}", r.out);

    let r = pool_run(&h, "run --cpu 64.. -y -- echo hi", None, "", std::future::pending()).await;
    let err = r.code.unwrap_err().to_string();
    assert!(err.starts_with("pool default-pool has no idle instance, and no offer fits"), "{err}");
}

#[tokio::test]
async fn y_creates_the_run_streams_its_output_and_ends_with_its_exit_code() {
    let h = Harness::new().await;
    idle_instance(&h).await;
    let exit_with = |code: i32| {
        let exec = h.exec.clone();
        move |name: &str, run: &Run| {
            if run.status.as_ref().is_some_and(|s| s.phase == RunPhase::Running) {
                exec.exit(name, code);
            }
        }
    };
    let line = "run --cpu 2.. --name ok -y -e GREETING=hello -- echo $GREETING world";
    let r = with_controllers(&h, pool_run(&h, line, None, "hello world\n", std::future::pending()), exit_with(0)).await;
    assert_eq!(r.code.unwrap(), 0, "{}", r.out);
    assert!(r.out.contains("Reuses the idle instance:\n"), "{}", r.out);
    assert!(r.out.contains("run ok created\n"), "{}", r.out);
    assert!(r.out.contains("run ok is placed on instance small\nhello world\n"), "{}", r.out);
    assert!(r.out.ends_with("hello world\n"), "a run that succeeds ends with its output: {}", r.out);
    let run = h.get_run("ok").await;
    assert_eq!(run.spec.commands, vec!["echo '$GREETING' world".to_string()], "the words, quoted for the shell");
    assert_eq!(run.spec.env[0].value.as_deref(), Some("hello"));
    assert_eq!(run.status.unwrap().phase, RunPhase::Succeeded);

    // The same instance, idle again, runs a job that exits 3: so does the command.
    let line = "run --cpu 2.. --name bad -y -- false";
    let r = with_controllers(&h, pool_run(&h, line, None, "oops\n", std::future::pending()), exit_with(3)).await;
    assert_eq!(r.code.unwrap(), 3, "{}", r.out);
    assert!(r.out.contains("run bad is placed on instance small\noops\n"), "{}", r.out);
    assert!(r.out.ends_with("run bad failed (ContainerExitedWithError): exit code 3\n"), "{}", r.out);

    // An exit code whose low byte is 0 would read as success: the command exits 1.
    let line = "run --cpu 2.. --name wrap -y -- false";
    let r = with_controllers(&h, pool_run(&h, line, None, "", std::future::pending()), exit_with(256)).await;
    assert_eq!(r.code.unwrap(), 1, "{}", r.out);
    assert!(r.out.ends_with("exit code 256\n"), "{}", r.out);
}

#[tokio::test]
async fn detach_returns_once_the_run_is_placed() {
    let h = Harness::new().await;
    idle_instance(&h).await;
    let line = "run --cpu 2.. --name bg -y --detach -- sleep 600";
    let r = with_controllers(&h, pool_run(&h, line, None, "never read\n", std::future::pending()), |_, _| {}).await;
    assert_eq!(r.code.unwrap(), 0, "{}", r.out);
    assert!(
        r.out.contains("run bg is placed on instance small\nDetached: follow it with `kubectl pool logs bg -f`"),
        "{}",
        r.out
    );
    assert!(!r.out.contains("never read"), "detached, the output is not followed: {}", r.out);
    let st = h.get_run("bg").await.status.unwrap();
    assert_eq!((st.phase, st.instance.as_deref()), (RunPhase::Running, Some("small")));
}

/// Ctrl-C once the run runs.
async fn ctrl_c_when_running(h: &Harness, name: &str) {
    loop {
        if h.api::<Run>()
            .get_opt(name)
            .await
            .unwrap()
            .and_then(|r| r.status)
            .is_some_and(|s| s.phase == RunPhase::Running)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ctrl_c_asks_whether_to_stop_the_run_or_leave_it_running() {
    let h = Harness::new().await;
    idle_instance(&h).await;

    // `n`: the run keeps running, and the command says how to get back to it.
    let line = "run --cpu 2.. --name keep -y -- sleep 600";
    let r = with_controllers(&h, pool_run(&h, line, Some("n\n"), "", ctrl_c_when_running(&h, "keep")), |_, _| {}).await;
    assert_eq!(r.code.unwrap(), INTERRUPTED, "{}", r.out);
    assert!(
        r.out.contains("Stop the run? [y/n]: run keep keeps running: follow it with `kubectl pool logs keep -f`"),
        "{}",
        r.out
    );
    let run = h.get_run("keep").await;
    assert!(!run.spec.stop);
    assert_eq!(run.status.unwrap().phase, RunPhase::Running);

    // Without a terminal nobody can answer: the run is left running too.
    h.exec.exit("keep", 0);
    h.settle(2).await;
    let line = "run --cpu 2.. --name piped -y -- sleep 600";
    let r = with_controllers(&h, pool_run(&h, line, None, "", ctrl_c_when_running(&h, "piped")), |_, _| {}).await;
    assert_eq!(r.code.unwrap(), INTERRUPTED, "{}", r.out);
    assert!(r.out.contains("run piped keeps running"), "{}", r.out);
    assert!(!h.get_run("piped").await.spec.stop);

    // `y`: spec.stop is set, and the command waits for the run to end.
    h.exec.exit("piped", 0);
    h.settle(2).await;
    let line = "run --cpu 2.. --name stopme -y -- sleep 600";
    let r =
        with_controllers(&h, pool_run(&h, line, Some("y\n"), "", ctrl_c_when_running(&h, "stopme")), |_, _| {}).await;
    assert_eq!(r.code.unwrap(), 1, "{}", r.out);
    assert!(r.out.contains("Stop the run? [y/n]: stopping run stopme…\n"), "{}", r.out);
    assert!(r.out.ends_with("run stopme terminated (Stopped): stopped by the user\n"), "{}", r.out);
    let run = h.get_run("stopme").await;
    assert!(run.spec.stop);
    assert_eq!(run.status.unwrap().phase, RunPhase::Terminated);
}

#[tokio::test]
async fn a_manifest_takes_the_flags_over_it_and_bad_values_name_the_flag() {
    let dir = std::env::temp_dir().join(format!("kpool-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.yaml");
    std::fs::write(
        &file,
        "apiVersion: kpool.dev/v1alpha1\nkind: Run\nmetadata: {name: finetune, namespace: ml}\n\
         spec:\n  pool: training\n  resources: {gpu: \"24GB..\", disk: 200GB..}\n  commands: [python train.py]\n  \
         env: [{name: MODE, value: offline}]\n  maxDuration: 2h\n  spotPolicy: spot\n",
    )
    .unwrap();
    let f = file.display();
    let run =
        cli::run::run_for(&parse(&format!("run -f {f} --gpu A100 --max-price 2 -e MODE=online")).unwrap(), NS).unwrap();
    assert_eq!(run.metadata.name.as_deref(), Some("finetune"));
    assert_eq!(run.spec.pool.as_deref(), Some("training"));
    assert_eq!(run.spec.resources.gpu.as_deref(), Some("A100"), "the flag replaces the manifest's gpu");
    assert_eq!(run.spec.resources.disk.as_deref(), Some("200GB.."), "the manifest's disk is kept");
    assert_eq!(run.spec.commands, vec!["python train.py".to_string()]);
    assert_eq!((run.spec.policy.max_price, run.spec.policy.max_duration.as_deref()), (Some(2.0), Some("2h")));
    assert_eq!(run.spec.policy.spot_policy, Some(kpool::api::policy::SpotPolicy::Spot));
    assert_eq!(run.spec.env.len(), 1);
    assert_eq!(run.spec.env[0].value.as_deref(), Some("online"));
    let run =
        cli::run::run_for(&parse(&format!("run -f {f} --name other --pool p --reuse -- nvidia-smi")).unwrap(), NS)
            .unwrap();
    assert_eq!((run.metadata.name.as_deref(), run.spec.pool.as_deref()), (Some("other"), Some("p")));
    assert_eq!(run.spec.commands, vec!["nvidia-smi".to_string()], "the command after -- replaces the manifest's");
    assert_eq!(run.spec.policy.creation_policy, Some(kpool::api::policy::CreationPolicy::Reuse));
    let run = cli::run::run_for(&parse("run -- true").unwrap(), NS).unwrap();
    assert_eq!((run.metadata.name, run.metadata.generate_name.as_deref()), (None, Some("run-")));

    let err = |line: &str| match parse(line) {
        Err(e) => e.to_string(),
        Ok(a) => cli::run::run_for(&a, NS).unwrap_err().to_string(),
    };
    let e = err("run --gpu A100:2:3 -- true");
    assert!(e.contains("--gpu") && e.contains("\"3\""), "{e}");
    let e = err("run --idle-duration 5min -- true");
    assert!(e.contains("--idle-duration") && e.contains("5min"), "{e}");
    let e = err("run --max-price -1 -- true");
    assert!(e.contains("--max-price") && e.contains("-1"), "{e}");
    let e = err("run --spot-policy sometimes -- true");
    assert!(e.contains("--spot-policy") && e.contains("sometimes"), "{e}");
    let e = err("run -e NOVALUE -- true");
    assert!(e.contains("--env") && e.contains("NOVALUE"), "{e}");
    let e = err("run --cpu 2..");
    assert!(e.starts_with("no command: give it after `--`"), "{e}");
    let e = err("run -f /nonexistent/run.yaml");
    assert!(e.starts_with("-f /nonexistent/run.yaml: "), "{e}");
    let e = cli::run::run_for(&parse(&format!("run -f {f}")).unwrap(), "other").unwrap_err().to_string();
    assert!(e.contains("its namespace ml is not the command's namespace other: pass -n ml"), "{e}");
    std::fs::write(&file, "apiVersion: kpool.dev/v1alpha1\nkind: Instance\nmetadata: {name: x}\nspec: {}\n").unwrap();
    let e = err(&format!("run -f {f} -- true"));
    assert!(e.contains("kind \"Instance\" is not a Run"), "{e}");
    std::fs::write(
        &file,
        "kind: Run\nmetadata: {name: bad}\nspec: {resources: {cpu: \"x..\"}, commands: [\"true\"]}\n",
    )
    .unwrap();
    let e = err(&format!("run -f {f}"));
    assert!(e.starts_with(&format!("-f {f}: ")) && e.contains("resources.cpu") && e.contains("x"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
