//! The kpool binary: the controller (the default command) and `crdgen`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kpool::api::duration::parse_duration;
use kpool::backends::factory::DefaultFactory;
use kpool::controllers::context::{Context, SystemClock};
use kpool::controllers::gc::GcConfig;
use kpool::controllers::runtime::run_all;
use kpool::exec::HoldExecutor;
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
    /// Print the CRDs as YAML, or write one file per kind into --out.
    Crdgen {
        #[arg(long)]
        out: Option<PathBuf>,
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
    /// Log format.
    #[arg(long, env = "KPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn duration_arg(flag: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s: &str| parse_duration(flag, s).map_err(|e| e.to_string())
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crdgen { out: Some(dir) }) => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in kpool::crdgen::render() {
                std::fs::write(dir.join(file), yaml)?;
            }
            Ok(())
        }
        Some(Command::Crdgen { out: None }) => {
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
        let client = kube::Client::try_default().await.map_err(|e| {
            format!("cannot reach the Kubernetes API ({e}); check the current kube context or KUBECONFIG")
        })?;
        let ctx = Arc::new(Context::new(
            client.clone(),
            Arc::new(DefaultFactory::new(client)),
            Arc::new(HoldExecutor),
            Arc::new(SystemClock),
        ));
        let gc = GcConfig { interval: args.gc_interval, grace: args.gc_grace, report_only: args.gc_report_only };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), ?gc, "kpool controller starting");
        run_all(ctx, gc).await;
        tracing::info!("kpool controller stopped");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
