//! `kubectl pool`: dstack's pool workflow as a kubectl plugin. The binary
//! (`src/bin/kubectl-pool.rs`) only parses arguments and builds a client; every command
//! is a function of a client, a namespace and the terminal, so tests drive them against
//! the in-memory API.

pub mod cost;
pub mod flags;
pub mod instances;
pub mod logs;
pub mod offers;
pub mod output;
pub mod pools;
pub mod run;
pub mod ssh;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use self::flags::{PlanFlags, PolicyFlags, PoolFlags, ResourceFlags};

/// Pools of machines, reused across runs: add, list and remove instances, see offers.
#[derive(Parser, Debug)]
#[command(name = "kubectl-pool", bin_name = "kubectl pool", version, about)]
pub struct Cli {
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to a kubeconfig file (default: KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the best offers for the requirements, without creating anything.
    #[command(after_help = "Examples:\n  kubectl pool offers --gpu A100:80GB\n  \
        kubectl pool offers --gpu 24GB.. --spot-auto --max-price 2 -o json\n  \
        kubectl pool offers --catalog ./catalogs --gpu H100:8   # offline, gpuhunt CSV files")]
    Offers(OffersArgs),
    /// Add an instance to a pool: shows the offers, asks, creates it and follows it.
    #[command(after_help = "Examples:\n  kubectl pool add --gpu 80GB\n  \
        kubectl pool add --gpu A10G --spot --idle-duration 2h -y\n  \
        kubectl pool add --cpu 16.. --dry-run -o yaml")]
    Add(AddArgs),
    /// Run commands on a machine of a pool: shows the plan, asks, creates a Run, follows
    /// its output and exits with its exit code.
    #[command(
        after_help = "Examples:\n  kubectl pool run --gpu 24GB.. --reuse --idle-duration 30m -- python train.py\n  \
        kubectl pool run --cpu 4.. --image python:3.12 -y -- python -c 'print(1)'\n  \
        kubectl pool run -f deploy/examples/run.yaml --max-price 2 --detach\n\n\
        Ctrl-C while following asks whether to stop the run; `n` leaves it running (exit code 130)."
    )]
    Run(RunArgs),
    /// List instances: busy, idle, provisioning, …
    #[command(
        after_help = "Examples:\n  kubectl pool ps\n  kubectl pool ps --pool training -w\n  kubectl pool ps -o json"
    )]
    Ps(PsArgs),
    /// Remove instances (their machines are terminated).
    #[command(after_help = "Examples:\n  kubectl pool remove a100-1\n  kubectl pool remove a100-1 a100-2 --force -y")]
    Remove(RemoveArgs),
    /// Add a host you own, reached over SSH (creates or extends an `ssh` Backend and its key Secret).
    #[command(after_help = "Examples:\n  kubectl pool add-ssh ubuntu@10.0.0.11 -i ~/.ssh/id_ed25519\n  \
        kubectl pool add-ssh root@gpu-box.lan -p 2222 --name gpu-box --backend lab")]
    AddSsh(AddSshArgs),
    /// A run's output, following it while it runs with -f.
    #[command(after_help = "Examples:\n  kubectl pool logs finetune\n  kubectl pool logs finetune -f")]
    Logs(LogsArgs),
    /// The runs waiting in each pool's queue, in the order they will be served.
    #[command(after_help = "Examples:\n  kubectl pool queue\n  kubectl pool queue --pool training -o json")]
    Queue(QueueArgs),
    /// What the namespace's instances cost: spend, idle spend, runs served and reuse, per
    /// pool, backend and instance type.
    #[command(after_help = "Examples:\n  kubectl pool cost\n  kubectl pool cost --pool training --since 7d -o json")]
    Cost(CostArgs),
    /// List the namespace's pools.
    List,
    /// Create a pool.
    #[command(after_help = "Example:\n  kubectl pool create training --max-instances 8 --default")]
    Create(CreateArgs),
    /// Delete a pool (with --force, also its instances).
    Delete(DeleteArgs),
    /// Make a pool the namespace's default.
    SetDefault {
        /// The pool.
        name: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct OffersArgs {
    #[command(flatten)]
    pub resources: ResourceFlags,
    #[command(flatten)]
    pub policy: PolicyFlags,
    /// Read offers from gpuhunt v2 CSV files in this directory (`aws.csv`, …) instead of the
    /// cluster's backends; needs no cluster.
    #[arg(long, value_name = "DIR")]
    pub catalog: Option<PathBuf>,
    /// Show at most this many offers (default: 20 in tables, all in JSON).
    #[arg(long, value_name = "N")]
    pub max_offers: Option<usize>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub resources: ResourceFlags,
    #[command(flatten)]
    pub policy: PolicyFlags,
    #[command(flatten)]
    pub place: PoolFlags,
    /// The instance's name (default: generated from the requirements).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub plan: PlanFlags,
    /// Print the Instance that would be created and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: read offers from gpuhunt CSV files in this directory.
    #[arg(long, value_name = "DIR")]
    pub catalog: Option<PathBuf>,
    /// With --dry-run: the format of the printed Instance.
    #[arg(short = 'o', long, value_enum, default_value_t = ObjectFormat::Yaml)]
    pub output: ObjectFormat,
    /// Return once the Instance is created, without following it.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// A Run manifest (YAML); the flags given replace its fields.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub resources: ResourceFlags,
    #[command(flatten)]
    pub policy: PolicyFlags,
    /// Only reuse an idle instance of the pool; never provision (creationPolicy Reuse).
    #[arg(long)]
    pub reuse: bool,
    #[command(flatten)]
    pub place: PoolFlags,
    /// Container image to run the command in.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// An environment variable of the run (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE", value_parser = run::parse_env)]
    pub env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    /// The run's name (default: generated, `run-…`).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub plan: PlanFlags,
    /// Return once the run is placed on an instance, without following its output.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The command and its arguments, after `--`; run by a shell on the instance.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct AddSshArgs {
    /// `user@host` (user defaults to root).
    pub destination: String,
    /// Private key file; stored in the Secret `<backend>-key` (needed the first time).
    #[arg(short = 'i', long = "identity", value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// SSH port.
    #[arg(short = 'p', long, default_value_t = 22)]
    pub port: u16,
    /// Name of the host and of its Instance (default: the host, made a valid name).
    #[arg(long)]
    pub name: Option<String>,
    /// The host's public key (`ssh-ed25519 AAAA…`, e.g. from `ssh-keyscan -t ed25519 HOST`):
    /// only this key is accepted (default: the first key the host shows is trusted).
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub host_key: Option<String>,
    /// The `ssh` Backend to add the host to (created when missing).
    #[arg(long, default_value = "ssh")]
    pub backend: String,
    /// The pool (default: the namespace's default pool).
    #[arg(long)]
    pub pool: Option<String>,
    /// Return once the Instance is created, without following it.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The run.
    pub run: String,
    /// Keep printing new output until the run ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Only this pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// Keep watching and print the table again when it changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Also list terminated and failed instances.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = PsFormat::Table)]
    pub output: PsFormat,
}

#[derive(clap::Args, Debug)]
pub struct CostArgs {
    /// Only this pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// Only what was spent in this last stretch of time, e.g. `24h`, `7d`.
    #[arg(long, value_name = "DURATION", value_parser = |s: &str| crate::api::duration::parse_duration("--since", s).map_err(|e| e.to_string()))]
    pub since: Option<std::time::Duration>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// Only this pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    /// Instances to remove.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Also remove busy instances, stopping their runs.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The pool's name.
    pub name: String,
    /// The most instances the pool may hold.
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// A `Profile` whose policies the pool's instances and runs use.
    #[arg(long)]
    pub profile: Option<String>,
    /// Make it the namespace's default pool.
    #[arg(long)]
    pub default: bool,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// The pool's name.
    pub name: String,
    /// Also remove the pool's instances (terminating their machines).
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PsFormat {
    Table,
    Wide,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ObjectFormat {
    Yaml,
    Json,
}

/// A command's failure: one line for the user, saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error("cannot reach the cluster: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<crate::api::resources::SpecError> for CliError {
    fn from(e: crate::api::resources::SpecError) -> Self {
        CliError::Usage(e.to_string())
    }
}

/// The terminal: output, errors, answers to prompts, and whether a person is there.
pub struct Term<'a> {
    pub out: &'a mut dyn Write,
    pub input: &'a mut dyn BufRead,
    pub interactive: bool,
}

impl Term<'_> {
    /// Asks `question [y/n]`; without a person at the terminal, `-y` is required.
    pub fn confirm(&mut self, question: &str) -> Result<bool, CliError> {
        if !self.interactive {
            return Err(CliError::Usage(format!("{question} needs confirmation: pass -y to proceed without a prompt")));
        }
        write!(self.out, "{question} [y/n]: ")?;
        self.out.flush()?;
        let mut answer = String::new();
        self.input.read_line(&mut answer)?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
    }
}
