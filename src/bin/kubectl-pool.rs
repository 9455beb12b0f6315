//! `kubectl pool`: the kpool kubectl plugin. Put this binary on the PATH as `kubectl-pool`.

use std::io::IsTerminal;

use clap::Parser;
use kpool::cli::{self, Cli, CliError, Command, Term};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

async fn connect(cli: &Cli) -> Result<(Client, String), CliError> {
    let options = KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = match &cli.kubeconfig {
        Some(path) => match Kubeconfig::read_from(path) {
            Ok(kc) => Config::from_custom_kubeconfig(kc, &options).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("--kubeconfig {}: {e}", path.display())),
        },
        None if cli.context.is_some() => Config::from_kubeconfig(&options).await.map_err(|e| e.to_string()),
        None => Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| CliError::Failed(format!("no usable kube context ({e}); set KUBECONFIG or pass --context")))?;
    let namespace = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    Ok((client, namespace))
}

/// `kubectl pool run`, with the job output read as `kubectl pool logs` reads it and
/// Ctrl-C (SIGINT) heard from the moment the Run exists.
async fn pool_run(a: &cli::RunArgs, client: &Client, ns: &str, term: &mut Term<'_>) -> Result<i32, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let logs = cli::logs::executor(client);
    // Registered at the first poll, once the Run exists: until then Ctrl-C ends the
    // command as usual.
    let interrupt = async {
        match signal(SignalKind::interrupt()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let interrupt = std::pin::pin!(interrupt);
    let follow = cli::run::Follow { logs: &logs, interrupt, poll: std::time::Duration::from_secs(1) };
    cli::run::run(a, client, ns, term, follow).await
}

async fn run(cli: Cli) -> Result<i32, CliError> {
    let stdout = std::io::stdout();
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal() && stdout.is_terminal();
    let mut out = stdout.lock();
    let mut input = stdin.lock();
    let mut term = Term { out: &mut out, input: &mut input, interactive };
    // Offline commands need no cluster.
    let offline = match &cli.command {
        Command::Offers(a) => a.catalog.is_some(),
        Command::Add(a) => a.dry_run && a.catalog.is_some(),
        _ => false,
    };
    let (client, namespace) = if offline {
        (None, cli.namespace.clone().unwrap_or_else(|| "default".into()))
    } else {
        let (c, ns) = connect(&cli).await?;
        (Some(c), ns)
    };
    let ns = namespace.as_str();
    let need = || client.as_ref().ok_or_else(|| CliError::Usage("this command needs a cluster".into()));
    let done = match &cli.command {
        Command::Run(a) => return pool_run(a, need()?, ns, &mut term).await,
        Command::Offers(a) => cli::offers::run(a, client.as_ref(), ns, &mut term).await,
        Command::Add(a) => cli::instances::add(a, client.as_ref(), ns, &mut term).await,
        Command::Ps(a) => cli::instances::ps(a, need()?, ns, &mut term).await,
        Command::Remove(a) => cli::instances::remove(a, need()?, ns, &mut term).await,
        Command::AddSsh(a) => cli::ssh::add_ssh(a, need()?, ns, &mut term).await,
        Command::Logs(a) => cli::logs::logs(a, need()?, ns, &mut term).await,
        Command::Queue(a) => cli::pools::queue(a, need()?, ns, &mut term).await,
        Command::Cost(a) => cli::cost::cost(a, need()?, ns, &mut term).await,
        Command::List => cli::pools::list(need()?, ns, &mut term).await,
        Command::Create(a) => cli::pools::create(a, need()?, ns, &mut term).await,
        Command::Delete(a) => cli::pools::delete(a, need()?, ns, &mut term).await,
        Command::SetDefault { name } => cli::pools::set_default(name, need()?, ns, &mut term).await,
    };
    done.map(|()| 0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    kpool::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(match e {
                CliError::Usage(_) => 2,
                _ => 1,
            });
        }
    }
}
