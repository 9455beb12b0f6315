//! `kubectl pool logs RUN [-f]`: the job's output as kept on its instance
//! (`~/.kpool/runs/<run uid>/output.log` on SSH hosts), read by byte offset.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::Client;

use super::{CliError, LogsArgs, Term};
use crate::api::instance::Instance;
use crate::api::run::Run;
use crate::backends::factory::DefaultFactory;
use crate::exec::{DispatchExecutor, JobLogs};

/// Where the plugin reads a job's output from: as the controller's executor would.
pub fn executor(client: &Client) -> DispatchExecutor {
    DispatchExecutor::new(client.clone(), Arc::new(DefaultFactory::new(client.clone())))
}

pub async fn logs(args: &LogsArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let runs = Api::<Run>::namespaced(client.clone(), namespace);
    let instances = Api::<Instance>::namespaced(client.clone(), namespace);
    let executor = executor(client);
    let mut offset = 0;
    loop {
        let run = runs
            .get_opt(&args.run)
            .await?
            .ok_or_else(|| CliError::Failed(format!("run {} not found in namespace {namespace}", args.run)))?;
        let st = run.status.clone().unwrap_or_default();
        let Some(name) = st.instance.clone() else {
            if args.follow && !st.phase.is_finished() {
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            return Err(CliError::Failed(format!("run {} has not started on an instance yet", args.run)));
        };
        let instance = instances.get_opt(&name).await?.ok_or_else(|| {
            CliError::Failed(format!("instance {name} of run {} is gone, and its logs with it", args.run))
        })?;
        let (text, next) = executor
            .logs(&run, &instance, offset)
            .await
            .map_err(|e| CliError::Failed(format!("logs of {}: {e}", args.run)))?;
        write!(term.out, "{text}")?;
        term.out.flush()?;
        offset = next;
        if !args.follow || st.phase.is_finished() {
            return Ok(());
        }
        if text.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
