//! A small SSH client for the executor: log in, run a command with optional standard
//! input, collect its output and exit status; everything within a timeout.
//!
//! Host keys: the backend's record ([`KnownHosts`], filled when the backend probed the
//! host) is authoritative for the hosts it has seen; a host it has not seen is trusted on
//! first use and remembered in the executor's own record ([`Tofu`]), by `host:port`, or
//! by [`SshLogin::pin_as`] and `host:port` when the login says (cloud instances: their
//! UID, so a new machine that reuses an address is not refused, while the machine of one
//! instance showing another key is). A fingerprint recorded durably
//! ([`SshLogin::host_key`], cloud instances after first contact) wins over both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

use super::{SshLogin, Target};
use crate::backends::ssh::KnownHosts;
use crate::exec::ExecError;

/// Host key fingerprints seen by the executor, by `host:port`, for hosts the backend's
/// record does not have.
#[derive(Clone, Default)]
pub(crate) struct Tofu(Arc<Mutex<HashMap<String, String>>>);

/// What a command left.
pub(crate) struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// The start of standard error, for messages.
    pub fn stderr_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        match text.char_indices().nth(300) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("host key changed (now {0}); possible man-in-the-middle, refusing to connect")]
    HostKeyChanged(String),
    #[error("{0}")]
    Ssh(#[from] russh::Error),
}

struct Handler {
    id: String,
    known: KnownHosts,
    /// A durably recorded fingerprint; wins over `known` and `tofu`.
    pinned: Option<String>,
    tofu: Tofu,
    host: String,
    port: u16,
    /// The fingerprint the host offered.
    seen: Arc<Mutex<String>>,
}

impl client::Handler for Handler {
    type Error = ConnError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let data = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key(),
        };
        let offered = russh::keys::PublicKey::from(data.clone()).fingerprint(HashAlg::Sha256).to_string();
        *self.seen.lock().expect("seen") = offered.clone();
        let recorded = match (self.pinned.clone(), self.known.fingerprint(&self.host, self.port)) {
            (Some(fp), _) | (None, Some(fp)) => fp,
            (None, None) => {
                self.tofu.0.lock().expect("tofu").entry(self.id.clone()).or_insert_with(|| offered.clone()).clone()
            }
        };
        if recorded != offered {
            return Err(ConnError::HostKeyChanged(offered));
        }
        Ok(true)
    }
}

/// A logged-in connection.
pub(crate) struct Conn {
    handle: Handle<Handler>,
    target: Target,
    host_key: String,
}

fn endpoint(t: &Target) -> String {
    format!("{}@{}:{}", t.user, t.host, t.port)
}

/// Logs in within `timeout`. A host that cannot be reached, or does not answer in time, is
/// [`ExecError::Unreachable`]; a refused key or a changed host key is [`ExecError::Other`].
pub(crate) async fn connect(login: &SshLogin, tofu: &Tofu, timeout: Duration) -> Result<Conn, ExecError> {
    let t = &login.target;
    // The decoder's error says nothing about the key's content; keep it that way.
    let key = russh::keys::decode_secret_key(&login.private_key, None).map_err(|e| {
        ExecError::Other(format!(
            "failed to read the private key for {} ({e}); an unencrypted OpenSSH or PEM key is needed",
            endpoint(t)
        ))
    })?;
    let key = Arc::new(key);
    let seen = Arc::new(Mutex::new(String::new()));
    let attempt = async {
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(timeout.max(Duration::from_secs(30))),
            nodelay: true,
            ..client::Config::default()
        });
        let handler = Handler {
            id: match &login.pin_as {
                Some(scope) => format!("{scope}@{}:{}", t.host, t.port),
                None => format!("{}:{}", t.host, t.port),
            },
            known: login.known_hosts.clone(),
            pinned: login.host_key.clone(),
            tofu: tofu.clone(),
            host: t.host.clone(),
            port: t.port,
            seen: seen.clone(),
        };
        let mut handle = client::connect(config, (t.host.as_str(), t.port), handler).await?;
        let hash = if key.algorithm().is_rsa() { handle.best_supported_rsa_hash().await?.flatten() } else { None };
        let auth = handle.authenticate_publickey(&t.user, PrivateKeyWithHashAlg::new(key.clone(), hash)).await?;
        Ok::<_, ConnError>((handle, auth.success()))
    };
    let (handle, authenticated) = match tokio::time::timeout(timeout, attempt).await {
        Err(_) => return Err(ExecError::Unreachable(format!("{}: no login within {timeout:?}", endpoint(t)))),
        Ok(Err(ConnError::HostKeyChanged(fp))) => {
            return Err(ExecError::Other(format!("{}: {}", endpoint(t), ConnError::HostKeyChanged(fp))))
        }
        Ok(Err(ConnError::Ssh(e))) => return Err(ExecError::Unreachable(format!("{}: {e}", endpoint(t)))),
        Ok(Ok(done)) => done,
    };
    if !authenticated {
        return Err(ExecError::Other(format!("{}: the host refused the key for user {:?}", endpoint(t), t.user)));
    }
    let host_key = seen.lock().expect("seen").clone();
    Ok(Conn { handle, target: t.clone(), host_key })
}

impl Conn {
    /// SHA-256 fingerprint of the host key the host showed.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// Runs `command` through the login shell, feeding it `stdin` (then end of file), and
    /// keeps at most `max_output` bytes of each output stream. The exit status is in the
    /// answer; a lost connection or `timeout` is [`ExecError::Unreachable`].
    pub async fn run(
        &self,
        command: &str,
        stdin: &[u8],
        timeout: Duration,
        max_output: usize,
    ) -> Result<Output, ExecError> {
        let attempt = async {
            let mut channel = self.handle.channel_open_session().await?;
            channel.exec(true, command).await?;
            if !stdin.is_empty() {
                channel.data(stdin).await?;
            }
            channel.eof().await?;
            let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => append(&mut stdout, &data, max_output),
                    ChannelMsg::ExtendedData { data, .. } => append(&mut stderr, &data, max_output),
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::ExitSignal { .. } => status = status.or(Some(255)),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            Ok::<_, russh::Error>((status, stdout, stderr))
        };
        let where_ = endpoint(&self.target);
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(ExecError::Unreachable(format!("{where_}: a command did not finish within {timeout:?}"))),
            Ok(Err(e)) => Err(ExecError::Unreachable(format!("{where_}: {e}"))),
            Ok(Ok((None, ..))) => {
                Err(ExecError::Unreachable(format!("{where_}: the connection closed before the command ended")))
            }
            Ok(Ok((Some(status), stdout, stderr))) => Ok(Output { status, stdout, stderr }),
        }
    }

    /// Says goodbye, within a second; errors are ignored (the connection is dropped either way).
    pub async fn close(self) {
        let bye = self.handle.disconnect(Disconnect::ByApplication, "", "en");
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
    }
}

fn append(buf: &mut Vec<u8>, data: &[u8], max: usize) {
    let room = max.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}
