//! The SSH client side of the `ssh` backend: log in with the backend's key, check the
//! host key (trust on first use), run one command and collect its output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

/// Most output kept from one command; the probe prints a few hundred bytes.
const MAX_OUTPUT: usize = 64 * 1024;

/// Host keys seen so far, by `host:port`: the first key a host shows is recorded, and a
/// different key later is refused (trust on first use). Cloning shares the record, so a
/// factory that keeps one per `Backend` object carries it across rebuilds of the backend.
#[derive(Clone, Default)]
pub struct KnownHosts {
    keys: Arc<Mutex<HashMap<String, KeyData>>>,
}

impl KnownHosts {
    /// The SHA-256 fingerprint of the key recorded for `host:port`, if any.
    pub fn fingerprint(&self, host: &str, port: u16) -> Option<String> {
        let keys = self.keys.lock().expect("known hosts");
        keys.get(&endpoint(host, port))
            .map(|k| russh::keys::PublicKey::from(k.clone()).fingerprint(HashAlg::Sha256).to_string())
    }

    /// Makes `public_key` (an OpenSSH public key line, `ssh-ed25519 AAAA… [comment]`) the
    /// only key accepted from `host:port`, replacing whatever was seen before.
    pub fn pin(&self, host: &str, port: u16, public_key: &str) -> Result<(), String> {
        let key = parse_host_key(public_key)?;
        self.keys.lock().expect("known hosts").insert(endpoint(host, port), key);
        Ok(())
    }

    /// Records `key` for `id` on first contact; `Ok` when it matches the record, else the
    /// fingerprint of the key that was offered.
    fn check(&self, id: &str, key: &KeyData) -> Result<(), String> {
        let mut keys = self.keys.lock().expect("known hosts");
        match keys.get(id) {
            None => {
                keys.insert(id.to_string(), key.clone());
                Ok(())
            }
            Some(known) if known == key => Ok(()),
            Some(_) => Err(russh::keys::PublicKey::from(key.clone()).fingerprint(HashAlg::Sha256).to_string()),
        }
    }
}

/// Why a host could not be used. Messages never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// TCP connection, handshake or login did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed.
    #[error("failed to connect: {0}")]
    Connect(String),
    /// The host showed a different key than on first contact.
    #[error("host key changed (now {0}); possible man-in-the-middle, refusing to connect")]
    HostKeyChanged(String),
    /// The host refused the backend's key for this user.
    #[error("the host refused the key for user {0:?}")]
    AuthRejected(String),
    /// The command ran and failed.
    #[error("command failed with exit status {status}: {stderr}")]
    Command { status: u32, stderr: String },
    /// Any other protocol error.
    #[error("ssh: {0}")]
    Protocol(String),
}

impl From<russh::Error> for SshError {
    fn from(e: russh::Error) -> Self {
        match e {
            russh::Error::IO(io) => SshError::Connect(io.to_string()),
            other => SshError::Protocol(other.to_string()),
        }
    }
}

/// Where and as whom to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// What the session handler needs: the host's identity and the record of keys.
struct Handler {
    id: String,
    known: KnownHosts,
}

impl client::Handler for Handler {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let data = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key(),
        };
        self.known.check(&self.id, data).map_err(SshError::HostKeyChanged)?;
        Ok(true)
    }
}

/// A logged-in connection to one host.
pub struct Session {
    handle: Handle<Handler>,
}

/// Connects to `target`, checks its host key against `known` and logs in with `key`, all
/// within `timeout`.
pub async fn connect(
    target: &Target,
    key: &Arc<PrivateKey>,
    known: &KnownHosts,
    timeout: Duration,
) -> Result<Session, SshError> {
    let login = async {
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(timeout.max(Duration::from_secs(30))),
            nodelay: true,
            ..client::Config::default()
        });
        let handler = Handler { id: endpoint(&target.host, target.port), known: known.clone() };
        let mut handle = client::connect(config, (target.host.as_str(), target.port), handler).await?;
        let hash = if key.algorithm().is_rsa() { handle.best_supported_rsa_hash().await?.flatten() } else { None };
        let auth = handle.authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(key.clone(), hash)).await?;
        if !auth.success() {
            return Err(SshError::AuthRejected(target.user.clone()));
        }
        Ok(Session { handle })
    };
    tokio::time::timeout(timeout, login).await.map_err(|_| SshError::Timeout(timeout))?
}

impl Session {
    /// Runs `command` (through the user's login shell) and returns its standard output;
    /// a non-zero exit status is an error carrying the start of its standard error.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<String, SshError> {
        let run = async {
            let mut channel = self.handle.channel_open_session().await?;
            channel.exec(true, command).await?;
            let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => append(&mut stdout, &data),
                    ChannelMsg::ExtendedData { data, .. } => append(&mut stderr, &data),
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            match status {
                Some(0) => Ok(String::from_utf8_lossy(&stdout).into_owned()),
                Some(status) => Err(SshError::Command { status, stderr: truncate(&stderr) }),
                None => Err(SshError::Protocol("the command ended without an exit status".into())),
            }
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| SshError::Timeout(timeout))?
    }

    /// Says goodbye; errors are ignored (the connection is dropped either way).
    pub async fn close(self) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
    }
}

/// The key of an OpenSSH public key line (`TYPE BASE64 [comment]`).
pub fn parse_host_key(line: &str) -> Result<KeyData, String> {
    russh::keys::PublicKey::from_openssh(line.trim())
        .map(|k| k.key_data().clone())
        .map_err(|e| format!("not an OpenSSH public key line ({e}); expected e.g. \"ssh-ed25519 AAAA…\""))
}

fn endpoint(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

fn append(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

fn truncate(stderr: &[u8]) -> String {
    crate::backends::http::truncate(String::from_utf8_lossy(stderr).trim(), 200)
}
