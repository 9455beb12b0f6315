//! `kubectl pool add-ssh user@host`: a host you own joins a pool. The host goes into an
//! `ssh` Backend's `spec.ssh.hosts` (the Backend is created when missing), the key into the
//! Secret `<backend>-key`, and an Instance pinned to the host (`backends: [B]`,
//! `instanceTypes: [host name]`, kept until removed) takes it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;

use super::instances::follow;
use super::{AddSshArgs, CliError, Term};
use crate::api::backend::{Backend, BackendSpec, BackendType, Credentials, SecretRef, SshBackendConfig, SshHost};
use crate::api::instance::{Instance, InstanceSpec};
use crate::api::policy::PolicySpec;

/// `user@host` → (user, host); the user defaults to root.
pub fn parse_destination(d: &str) -> Result<(String, String), CliError> {
    let (user, host) = match d.split_once('@') {
        Some((u, h)) => (u.to_string(), h.to_string()),
        None => ("root".to_string(), d.to_string()),
    };
    let ok = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('@');
    if !ok(&user) || !ok(&host) {
        return Err(CliError::Usage(format!("invalid destination {d:?}: write it as user@host")));
    }
    Ok((user, host))
}

/// A valid object name from a host: lowercase, `[a-z0-9-.]`, at most 63 characters.
pub fn name_for(host: &str) -> String {
    let s: String = host
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .collect();
    let s = s.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    s.chars().take(63).collect::<String>().trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

pub async fn add_ssh(args: &AddSshArgs, client: &Client, namespace: &str, term: &mut Term<'_>) -> Result<(), CliError> {
    let (user, host) = parse_destination(&args.destination)?;
    let name = args.name.clone().unwrap_or_else(|| name_for(&host));
    if name.is_empty() {
        return Err(CliError::Usage(format!("cannot make a name from host {host:?}: pass --name")));
    }
    let secret_name = format!("{}-key", args.backend);
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    match &args.identity {
        Some(path) => {
            let key = std::fs::read(path).map_err(|e| CliError::Usage(format!("-i {}: {e}", path.display())))?;
            let secret = Secret {
                metadata: ObjectMeta { name: Some(secret_name.clone()), ..Default::default() },
                type_: Some("kubernetes.io/ssh-auth".into()),
                data: Some(BTreeMap::from([("ssh-privatekey".to_string(), ByteString(key))])),
                ..Default::default()
            };
            if secrets.get_opt(&secret_name).await?.is_some() {
                secrets.replace(&secret_name, &PostParams::default(), &secret).await?;
            } else {
                secrets.create(&PostParams::default(), &secret).await?;
            }
        }
        None if secrets.get_opt(&secret_name).await?.is_none() => {
            return Err(CliError::Usage(format!(
                "no key for backend {}: pass -i KEY (it is stored in Secret {secret_name})",
                args.backend
            )));
        }
        None => {}
    }

    let host_key = match &args.host_key {
        Some(line) => Some(
            crate::backends::ssh::parse_host_key(line)
                .map(|_| line.trim().to_string())
                .map_err(|e| CliError::Usage(format!("--host-key: {e}")))?,
        ),
        None => None,
    };
    let entry =
        SshHost { name: Some(name.clone()), host: host.clone(), port: Some(args.port), user: Some(user), host_key };
    let backends = Api::<Backend>::namespaced(client.clone(), namespace);
    match backends.get_opt(&args.backend).await? {
        None => {
            let b = Backend::new(
                &args.backend,
                BackendSpec {
                    type_: BackendType::Ssh,
                    credentials: Some(Credentials { secret_ref: SecretRef { name: secret_name } }),
                    ssh: Some(SshBackendConfig { hosts: vec![entry], ..Default::default() }),
                    ..Default::default()
                },
            );
            backends.create(&PostParams::default(), &b).await?;
            writeln!(term.out, "backend {} created", args.backend)?;
        }
        Some(b) if b.spec.type_ != BackendType::Ssh => {
            return Err(CliError::Usage(format!(
                "backend {} is of type {}, not ssh: pass --backend with another name",
                args.backend,
                b.spec.type_.as_str()
            )));
        }
        Some(b) => {
            let mut hosts = b.spec.ssh.map(|s| s.hosts).unwrap_or_default();
            let named = |h: &SshHost| h.name.clone().unwrap_or_else(|| h.host.clone());
            match hosts.iter().position(|h| named(h) == name) {
                Some(i) if hosts[i] == entry => {}
                Some(_) => {
                    return Err(CliError::Usage(format!(
                        "backend {} already has a different host named {name}: pass --name",
                        args.backend
                    )))
                }
                None => hosts.push(entry),
            }
            let patch = serde_json::json!({"spec": {"ssh": {"hosts": hosts}}});
            backends.patch(&args.backend, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            writeln!(term.out, "host {name} added to backend {}", args.backend)?;
        }
    }

    let spec = InstanceSpec {
        pool: args.pool.clone(),
        policy: PolicySpec {
            backends: Some(vec![args.backend.clone()]),
            instance_types: Some(vec![name.clone()]),
            idle_duration: Some("off".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let instances = Api::<Instance>::namespaced(client.clone(), namespace);
    instances.create(&PostParams::default(), &Instance::new(&name, spec)).await?;
    writeln!(term.out, "instance {name} created")?;
    if args.no_wait {
        return Ok(());
    }
    follow(&instances, &name, term).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_and_names() {
        assert_eq!(parse_destination("ubuntu@10.0.0.1").unwrap(), ("ubuntu".into(), "10.0.0.1".into()));
        assert_eq!(parse_destination("box.lan").unwrap(), ("root".into(), "box.lan".into()));
        assert!(parse_destination("@box").is_err());
        assert!(parse_destination("a@b@c").is_err());
        assert_eq!(name_for("GPU_Box.lan"), "gpu-box.lan");
        assert_eq!(name_for("10.0.0.1"), "10.0.0.1");
        assert_eq!(name_for("[::1]"), "1");
    }
}
