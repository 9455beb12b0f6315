//! A run's environment: `spec.env` resolved to name/value pairs.
//!
//! Values are taken literally (no `$(VAR)` expansion as in Pods). `valueFrom` may name a
//! key of a `Secret` (`secretKeyRef`) or a `ConfigMap` (`configMapKeyRef`) of the run's
//! own namespace; `fieldRef` and `resourceFieldRef` have no meaning outside a Pod and are
//! refused. Names must be shell variable names, since the job is a shell script.
//!
//! Errors: an invalid name, an unsupported source or a value no process environment can
//! hold (a NUL byte, non-UTF-8 data) is [`ExecError::Unsupported`]: the run cannot start
//! as written. A missing `Secret`, `ConfigMap` or key (unless `optional: true`, which
//! leaves the variable out) or a failed API call is [`ExecError::Other`], retried: the
//! object may be created later, as for a Pod.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::ResourceExt;

use super::ExecError;
use crate::api::run::Run;

/// Gives the environment of a run's job.
#[async_trait]
pub trait RunEnv: Send + Sync {
    /// The variables of the run's job, in `spec.env` order (a later one wins on a repeated name).
    async fn env(&self, run: &Run) -> Result<Vec<(String, String)>, ExecError>;
}

/// [`RunEnv`] from the API: [`resolve_env`] with this client.
#[derive(Clone)]
pub struct ApiEnv {
    pub client: kube::Client,
}

impl ApiEnv {
    pub fn new(client: kube::Client) -> Self {
        ApiEnv { client }
    }
}

#[async_trait]
impl RunEnv for ApiEnv {
    async fn env(&self, run: &Run) -> Result<Vec<(String, String)>, ExecError> {
        resolve_env(&self.client, run).await
    }
}

/// Whether `name` is a shell variable name: ASCII letters, digits and `_`, not starting
/// with a digit.
pub fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Resolves `spec.env` of `run`: literal values as they are, `secretKeyRef`s and
/// `configMapKeyRef`s from objects of the run's namespace. See the module docs for errors.
pub async fn resolve_env(client: &kube::Client, run: &Run) -> Result<Vec<(String, String)>, ExecError> {
    let ns = run.namespace().unwrap_or_default();
    let mut out = Vec::with_capacity(run.spec.env.len());
    for (i, var) in run.spec.env.iter().enumerate() {
        let field = format!("spec.env[{i}]");
        if !is_shell_name(&var.name) {
            return Err(ExecError::Unsupported(format!(
                "{field}.name: {:?} is not a valid shell variable name (ASCII letters, digits and _, not starting with a digit)",
                var.name
            )));
        }
        let value = match &var.value_from {
            None => Some(var.value.clone().unwrap_or_default()),
            Some(from) => {
                if let Some(r) = &from.secret_key_ref {
                    let data = secret_data(client, &ns, &r.name, &field).await?;
                    lookup(data, "Secret", &r.name, &r.key, r.optional, &ns, &field)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let data = config_map_data(client, &ns, &r.name, &field).await?;
                    lookup(data, "ConfigMap", &r.name, &r.key, r.optional, &ns, &field)?
                } else {
                    return Err(ExecError::Unsupported(format!(
                        "{field}.valueFrom: only secretKeyRef and configMapKeyRef can be used outside a Pod"
                    )));
                }
            }
        };
        let Some(value) = value else { continue };
        if value.contains('\0') {
            return Err(ExecError::Unsupported(format!(
                "{field}: the value of {} contains a NUL byte, which no environment variable can hold",
                var.name
            )));
        }
        out.push((var.name.clone(), value));
    }
    Ok(out)
}

/// The object's data, `None` when it does not exist.
type Data = Option<BTreeMap<String, Vec<u8>>>;

async fn secret_data(client: &kube::Client, ns: &str, name: &str, field: &str) -> Result<Data, ExecError> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await.map_err(|e| {
        ExecError::Other(format!("failed to read Secret {name} of {field}.valueFrom.secretKeyRef: {e}"))
    })?;
    Ok(secret.map(|s| {
        let mut data: BTreeMap<String, Vec<u8>> =
            s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        // `stringData` is write-only on a real API server; an object built by hand may carry it.
        for (k, v) in s.string_data.unwrap_or_default() {
            data.entry(k).or_insert_with(|| v.into_bytes());
        }
        data
    }))
}

async fn config_map_data(client: &kube::Client, ns: &str, name: &str, field: &str) -> Result<Data, ExecError> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await.map_err(|e| {
        ExecError::Other(format!("failed to read ConfigMap {name} of {field}.valueFrom.configMapKeyRef: {e}"))
    })?;
    Ok(cm.map(|c| {
        let mut data: BTreeMap<String, Vec<u8>> =
            c.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        data.extend(c.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
        data
    }))
}

/// The value under `key`; `None` when it is missing and optional.
fn lookup(
    data: Data,
    kind: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
    ns: &str,
    field: &str,
) -> Result<Option<String>, ExecError> {
    let optional = optional.unwrap_or(false);
    let Some(data) = data else {
        return if optional {
            Ok(None)
        } else {
            Err(ExecError::Other(format!("{field}.valueFrom: {kind} {name} not found in namespace {ns}")))
        };
    };
    let Some(bytes) = data.get(key) else {
        return if optional {
            Ok(None)
        } else {
            Err(ExecError::Other(format!("{field}.valueFrom: {kind} {name} has no key {key:?}")))
        };
    };
    String::from_utf8(bytes.clone()).map(Some).map_err(|_| {
        ExecError::Unsupported(format!("{field}.valueFrom: key {key:?} of {kind} {name} is not UTF-8 text"))
    })
}

#[cfg(test)]
mod tests {
    use super::is_shell_name;

    #[test]
    fn shell_names() {
        for ok in ["A", "_", "a_b", "WANDB_KEY", "x1", "_9"] {
            assert!(is_shell_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "$A", "é", "A.B", "A\n"] {
            assert!(!is_shell_name(bad), "{bad:?}");
        }
    }
}
