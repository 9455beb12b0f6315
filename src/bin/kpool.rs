//! The kpool binary: the controller (the default command) and `crdgen`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures::FutureExt;
use kpool::api::duration::parse_duration;
use kpool::backends::allow::Allowances;
use kpool::backends::factory::DefaultFactory;
use kpool::controllers::chain;
use kpool::controllers::context::{Context, HealthConfig, SystemClock};
use kpool::controllers::gc::GcConfig;
use kpool::controllers::installation::resolve as resolve_installation;
use kpool::controllers::leader::{Elector, LeaderConfig};
use kpool::controllers::metrics::serve;
use kpool::controllers::runtime::run_all;
use kpool::exec::DispatchExecutor;
use tracing_subscriber::EnvFilter;

/// kpool: pools of machines, reused across runs.
///
/// Without a subcommand, runs the controller against the current kube context
/// (in a cluster: the Pod's service account; outside: KUBECONFIG / ~/.kube/config).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    controller: ControllerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers and the garbage collector (the default).
    Controller,
    /// Print the CRDs as YAML, or write one file per kind into each --out directory.
    Crdgen {
        #[arg(long)]
        out: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Time between garbage-collector passes over the backends' machines.
    #[arg(long, env = "KPOOL_GC_INTERVAL", default_value = "5m", value_parser = duration_arg("--gc-interval"), global = true)]
    gc_interval: Duration,
    /// How long a machine must stay without an owning Instance before it is deleted.
    #[arg(long, env = "KPOOL_GC_GRACE", default_value = "15m", value_parser = duration_arg("--gc-grace"), global = true)]
    gc_grace: Duration,
    /// Only report orphaned machines (Warning Events on the Backend); never delete them.
    #[arg(long, env = "KPOOL_GC_REPORT_ONLY", global = true)]
    gc_report_only: bool,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, env = "KPOOL_METRICS_ADDR", default_value = "0.0.0.0:8080", global = true)]
    metrics_addr: std::net::SocketAddr,
    /// Elect a leader with a Lease so that only one replica acts (needed for replicas > 1).
    ///
    /// The leader renews the Lease every 2 s, each Lease call giving up after 4 s; when it
    /// has not renewed for 10 s (the renew deadline) it stops acting and exits. A standby
    /// takes over once it has seen the Lease unchanged for 15 s (the lease duration) by its
    /// own clock, so the leader has stopped 5 s before; replicas' clocks need not agree.
    /// On SIGTERM or SIGINT a standby exits at once; the leader lets in-flight reconciles
    /// finish (up to 20 s) and releases the Lease, so a standby takes over at once.
    #[arg(long, env = "KPOOL_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the Pod's namespace, else kpool-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kpool-system", global = true)]
    leader_election_namespace: String,
    /// Idle duration of instances runs provision, unless a pool or profile says otherwise
    /// (built-in: 5m; `off` keeps them; `auto` learns it from each pool's idle gaps).
    #[arg(long, env = "KPOOL_DEFAULT_IDLE_RUN", value_parser = idle_arg("--default-idle-duration-run"), global = true)]
    default_idle_duration_run: Option<String>,
    /// Idle duration of instances added by hand (built-in: 72h; `off` keeps them; `auto`
    /// learns it from each pool's idle gaps).
    #[arg(long, env = "KPOOL_DEFAULT_IDLE_MANUAL", value_parser = idle_arg("--default-idle-duration-manual"), global = true)]
    default_idle_duration_manual: Option<String>,
    /// How often the provider is asked about each idle or busy instance's machine (spot
    /// reclaims, machines deleted outside kpool, hosts that stop answering).
    #[arg(long, env = "KPOOL_HEALTH_CHECK_INTERVAL", default_value = "1m", value_parser = duration_arg("--health-check-interval"), global = true)]
    health_check_interval: Duration,
    /// How long an instance may stay unreachable before it is terminated and its run
    /// interrupted (retried when the run's retry policy covers interruptions).
    #[arg(long, env = "KPOOL_UNREACHABLE_GRACE", default_value = "5m", value_parser = duration_arg("--unreachable-grace"), global = true)]
    unreachable_grace: Duration,
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "KPOOL_WATCH_NAMESPACE", global = true)]
    watch_namespace: Option<String>,
    /// This installation's name, which every machine it launches is tagged with and by
    /// which the garbage collector tells its machines from other clusters' in a shared
    /// cloud account (default: the UID of the cluster's kube-system Namespace).
    #[arg(long, env = "KPOOL_CLUSTER_NAME", value_parser = cluster_name_arg, global = true)]
    cluster_name: Option<String>,
    /// Namespaces, besides its own, where a kubernetes Backend may place its Pods (and so
    /// run images and the Secrets of resolved environment values); comma-separated, `*`
    /// allows any. A Backend whose spec.kubernetes.namespace names another is not Ready.
    #[arg(long, env = "KPOOL_KUBERNETES_BACKEND_NAMESPACES", value_delimiter = ',', global = true)]
    kubernetes_backend_namespaces: Vec<String>,
    /// An endpoint URL, besides the providers' official ones, that aws and lambda Backends
    /// may send their credentials (or requests signed with them) to in spec.endpoint, e.g. a
    /// VPC endpoint or an emulator. Repeat the flag, or separate with commas.
    #[arg(long = "allow-endpoint", env = "KPOOL_ALLOW_ENDPOINTS", value_delimiter = ',', value_parser = endpoint_arg, global = true)]
    allow_endpoints: Vec<String>,
    /// Log format.
    #[arg(long, env = "KPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn idle_arg(flag: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s: &str| match s {
        "off" | "auto" => Ok(s.to_string()),
        _ => parse_duration(flag, s).map(|_| s.to_string()).map_err(|e| e.to_string()),
    }
}

fn cluster_name_arg(s: &str) -> Result<String, String> {
    kpool::backends::installation_id(s)
}

fn endpoint_arg(s: &str) -> Result<String, String> {
    match s.trim() {
        "" => Ok(String::new()),
        url => kpool::backends::allow::normalize(url).map(|_| url.to_string()),
    }
}

/// The User-Agent of every API call of replica `identity`: `kpool/VERSION (IDENTITY)`, so
/// the API server's audit log tells which replica made each write (they share one field
/// manager and, in a Deployment, one ServiceAccount).
fn user_agent(identity: &str) -> String {
    format!("kpool/{} ({identity})", env!("CARGO_PKG_VERSION"))
}

/// A client for the current kube context whose calls carry [`user_agent`].
async fn client_as(identity: &str) -> Result<kube::Client, String> {
    let unreachable = |e: &dyn std::fmt::Display| {
        format!("cannot reach the Kubernetes API ({e}); check the current kube context or KUBECONFIG")
    };
    let mut config = kube::Config::infer().await.map_err(|e| unreachable(&e))?;
    let agent = hyper::header::HeaderValue::from_str(&user_agent(identity))
        .map_err(|e| format!("POD_NAME {identity:?} cannot be part of a User-Agent header: {e}"))?;
    config.headers.push((hyper::header::USER_AGENT, agent));
    kube::Client::try_from(config).map_err(|e| unreachable(&e))
}

fn duration_arg(flag: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s: &str| parse_duration(flag, s).map_err(|e| e.to_string())
}

/// How long the leader waits, after SIGTERM/SIGINT, for in-flight reconciles (under the
/// Pod's default 30 s termination grace period).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How the leader stopped.
enum Stopped {
    Gracefully,
    Lost,
    Forced,
}

/// SIGTERM (what Kubernetes sends a Pod's process) and SIGINT (Ctrl-C), listened for from
/// the moment this is made, so that one arriving between two awaits is not lost.
struct StopSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignal { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(StopSignal {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() {
    kpool::install_crypto_provider();
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crdgen { out }) if !out.is_empty() => {
            for dir in out {
                std::fs::create_dir_all(&dir)?;
                for (file, yaml) in kpool::crdgen::render() {
                    std::fs::write(dir.join(file), yaml)?;
                }
            }
            Ok(())
        }
        Some(Command::Crdgen { .. }) => {
            print!("{}", kpool::crdgen::render_all());
            Ok(())
        }
        Some(Command::Controller) | None => controller(cli.controller),
    }
}

fn controller(args: ControllerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let filter = EnvFilter::try_from_env("KPOOL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("kpool-{}", std::process::id()));
        let client = client_as(&identity).await?;
        let installation = resolve_installation(&client, args.cluster_name.as_deref()).await.map_err(|e| {
            match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
        tracing::info!(%installation, "machines are tagged with this installation's identity");
        let nonempty = |v: &[String]| v.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>();
        let allowances = Allowances::default()
            .with_kubernetes_namespaces(nonempty(&args.kubernetes_backend_namespaces))
            .with_endpoints(nonempty(&args.allow_endpoints));
        tracing::info!(?allowances, "backends may go beyond their namespace and official endpoints only as allowed");
        let factory =
            Arc::new(DefaultFactory::new(client.clone()).with_installation(installation).with_allowances(allowances));
        let executor = Arc::new(DispatchExecutor::new(client.clone(), factory.clone()));
        let mut ctx = Context::new(client, factory, executor, Arc::new(SystemClock));
        ctx.site_defaults.run.idle_duration = args.default_idle_duration_run.clone();
        ctx.site_defaults.manual.idle_duration = args.default_idle_duration_manual.clone();
        ctx.health = HealthConfig { interval: args.health_check_interval, unreachable_grace: args.unreachable_grace };
        let ctx = Arc::new(ctx);
        let gc = GcConfig { interval: args.gc_interval, grace: args.gc_grace, report_only: args.gc_report_only };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), ?gc, "kpool controller starting");
        let listener = tokio::net::TcpListener::bind(args.metrics_addr)
            .await
            .map_err(|e| format!("--metrics-addr {}: {e}", args.metrics_addr))?;
        tokio::spawn(serve(listener, ctx.metrics.clone()));
        ctx.metrics.set_ready(true);
        if !args.leader_elect {
            ctx.metrics.set_leader(true);
            run_all(ctx, gc, args.watch_namespace.clone()).await;
            tracing::info!("kpool controller stopped");
            return Ok(());
        }
        let elector = Elector::new(ctx.client.clone(), LeaderConfig::new(&args.leader_election_namespace, &identity))
            .with_clock(ctx.clock.clone());
        let mut stop = StopSignal::listen().map_err(|e| format!("cannot listen for SIGTERM/SIGINT: {e}"))?;
        tokio::select! {
            _ = elector.acquire() => {}
            _ = stop.recv() => {
                tracing::info!("kpool controller stopped while standing by");
                return Ok(());
            }
        }
        // The controllers stop on SIGTERM/SIGINT themselves, finishing in-flight reconciles;
        // `keep` renews meanwhile and ends everything once leadership is lost.
        let controllers = run_all(ctx.clone(), gc, args.watch_namespace.clone());
        let keep = elector.keep();
        tokio::pin!(controllers, keep);
        // A signal that came with the lease: give it back before acting at all.
        let stopped = if stop.recv().now_or_never().is_some() {
            Stopped::Gracefully
        } else {
            tracing::info!(%identity, "leading: this replica now provisions and deletes machines");
            ctx.metrics.set_leader(true);
            tokio::select! {
                _ = &mut controllers => Stopped::Gracefully,
                _ = &mut keep => Stopped::Lost,
                _ = stop.recv() => tokio::select! {
                    _ = &mut controllers => Stopped::Gracefully,
                    _ = &mut keep => Stopped::Lost,
                    _ = tokio::time::sleep(SHUTDOWN_GRACE) => Stopped::Forced,
                },
            }
        };
        ctx.metrics.set_leader(false);
        match stopped {
            Stopped::Gracefully => {}
            // Another replica may lead now: stop acting at once; Kubernetes restarts us.
            Stopped::Lost => return Err("lost the leader lease; exiting so that only one replica acts".into()),
            // Work may still be under way until the process ends: let the lease expire.
            Stopped::Forced => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "the controllers did not stop in time; exiting without releasing the leader lease");
                return Ok(());
            }
        }
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %chain(&e), "could not release the leader lease; a standby takes over when it expires");
        }
        tracing::info!("kpool controller stopped; leader lease released");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
