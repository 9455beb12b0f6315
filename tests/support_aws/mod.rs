//! Peers of tests/backend_aws.rs: one moto server per test binary (see moto_server.py)
//! and a fault-injecting HTTP proxy in front of it, one per test.

pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Regions the tests use (moto serves them all on one port).
pub const REGIONS: [&str; 2] = ["us-east-1", "us-west-2"];

/// A running moto server and the IAM access key made for the tests.
#[derive(Debug, Deserialize)]
pub struct Moto {
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// An AMI moto knows in every region of [`REGIONS`].
    pub image_id: String,
    /// How long starting moto and setting it up took.
    #[serde(skip)]
    pub startup: Duration,
    /// The server runs until this pipe closes, which happens when the test process exits.
    #[serde(skip)]
    _keepalive: Option<Mutex<(Child, ChildStdin)>>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The moto server of this test binary, started on first use.
///
/// Panics (the tests fail, they are not skipped) when the venv of scripts/peers/moto.sh
/// is missing.
pub fn moto() -> &'static Moto {
    MOTO.get_or_init(start_moto)
}

fn start_moto() -> Moto {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-moto/bin/python");
    assert!(
        python.exists(),
        "moto is not installed: run scripts/peers/moto.sh (it creates {}), then run the tests again",
        root.join(".venv-moto").display()
    );
    let log_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("moto-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("create the moto log");
    let started = Instant::now();
    let mut child = Command::new(&python)
        .arg(root.join("tests/support_aws/moto_server.py"))
        .args(REGIONS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start moto_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read moto's address");
    let mut moto: Moto = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!("moto did not start ({e}); its log is {}: {:?}", log_path.display(), std::fs::read_to_string(&log_path))
    });
    moto.startup = started.elapsed();
    eprintln!("moto at {} ready in {:?} (log: {})", moto.endpoint, moto.startup, log_path.display());
    let stdin = child.stdin.take().expect("stdin");
    moto._keepalive = Some(Mutex::new((child, stdin)));
    moto
}
