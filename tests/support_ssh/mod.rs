//! A real `sshd` on loopback for the tests of the ssh backend, the SSH job runner and runs
//! end to end: temporary host and client keys (made from fixed seeds), started as the
//! current user, killed and cleaned up on drop.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kpool::api::backend::SshHost;
use kpool::exec::ssh::{KnownHosts, SshLogin, Target};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;
pub const SSHD: &str = "/usr/sbin/sshd";
pub const CLIENT_SEED: u8 = 7;
pub const NS: &str = "ml";
/// PATH of sessions of an sshd started with [`Sshd::with_path`]: no `/usr/local/bin`
/// (where a docker CLI may live) unless the test puts a directory first.
pub const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

pub fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

pub fn key_pem(seed: u8) -> String {
    key(seed).to_openssh(LineEnding::LF).unwrap().to_string()
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The current user's home directory, as sshd sees it (from the password database).
pub fn home() -> PathBuf {
    let out = Command::new("getent").args(["passwd", &current_user()]).output().expect("getent passwd");
    let line = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(line.trim().split(':').nth(5).expect("home field"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

/// An sshd of this test, killed (and its directory removed) on drop.
pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    extra: String,
    host_key_seed: u8,
    child: Option<Child>,
}

impl Sshd {
    pub fn start() -> Sshd {
        Self::start_with("")
    }

    /// An sshd whose sessions get this PATH.
    pub fn with_path(path: &str) -> Sshd {
        Self::start_with(&format!("SetEnv PATH={path}\n"))
    }

    pub fn start_with(extra: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: run scripts/peers/sshd.sh (installs openssh-server) before these tests"
        );
        let dir = std::env::temp_dir().join(unique("kpool-exec-sshd"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let public = key(CLIENT_SEED).public_key().to_openssh().unwrap();
        fs::write(dir.join("authorized_keys"), format!("{public}\n")).unwrap();
        let mut sshd = Sshd { dir, port: free_port(), extra: extra.to_string(), host_key_seed: 31, child: None };
        sshd.run();
        sshd
    }

    pub fn run(&mut self) {
        let host_key = self.dir.join(format!("host_key_{}", self.host_key_seed));
        fs::write(&host_key, key_pem(self.host_key_seed).as_bytes()).unwrap();
        set_mode(&host_key, 0o600);
        let dir = self.dir.display();
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {key}\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             LogLevel VERBOSE\n{extra}",
            port = self.port,
            key = host_key.display(),
            extra = self.extra,
        );
        fs::write(self.dir.join("sshd_config"), config).unwrap();
        let _ = fs::create_dir_all("/run/sshd");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sshd exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "sshd did not listen within 10s: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the listening sshd (sessions already open are separate processes).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An sshd whose host key is made from this seed.
    pub fn start_with_host_key(seed: u8) -> Sshd {
        let mut sshd = Self::start();
        sshd.restart_with_host_key(seed);
        sshd
    }

    /// Stops sshd and starts it again on the same port with another host key.
    pub fn restart_with_host_key(&mut self, seed: u8) {
        self.stop();
        self.host_key_seed = seed;
        self.run();
    }

    /// Successful logins so far.
    pub fn logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    pub fn login(&self) -> SshLogin {
        SshLogin {
            target: Target { host: "127.0.0.1".into(), port: self.port, user: current_user() },
            private_key: key_pem(CLIENT_SEED),
            known_hosts: KnownHosts::default(),
            connect_timeout: Some(Duration::from_secs(5)),
            pin_as: None,
            host_key: None,
        }
    }

    pub fn host(&self, name: &str) -> SshHost {
        SshHost {
            name: Some(name.into()),
            host: "127.0.0.1".into(),
            port: Some(self.port),
            user: Some(current_user()),
            host_key: None,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

impl Sshd {
    /// An ssh `Backend` `name` with this sshd as its host `host` and the Secret
    /// `<name>-key` with the test's client key.
    #[allow(dead_code)] // used by the controller-level tests
    pub fn backend_objects(
        &self,
        name: &str,
        host: &str,
    ) -> (k8s_openapi::api::core::v1::Secret, kpool::api::backend::Backend) {
        use kpool::api::backend::{Backend, BackendSpec, BackendType, Credentials, SecretRef, SshBackendConfig};
        let secret = k8s_openapi::api::core::v1::Secret {
            metadata: kube::api::ObjectMeta { name: Some(format!("{name}-key")), ..Default::default() },
            type_: Some("kubernetes.io/ssh-auth".into()),
            data: Some(
                [("ssh-privatekey".to_string(), k8s_openapi::ByteString(key_pem(CLIENT_SEED).into_bytes()))].into(),
            ),
            ..Default::default()
        };
        let backend = Backend::new(
            name,
            BackendSpec {
                type_: BackendType::Ssh,
                credentials: Some(Credentials { secret_ref: SecretRef { name: format!("{name}-key") } }),
                ssh: Some(SshBackendConfig { hosts: vec![self.host(host)], ..Default::default() }),
                ..Default::default()
            },
        );
        (secret, backend)
    }
}
