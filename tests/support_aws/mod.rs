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

#[allow(dead_code)] // used by the controller-level tests
/// Header of gpuhunt v2 catalogs, for the catalog rows tests write.
pub const CATALOG_HEADER: &str = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,\
                                  disk_size,gpu_vendor,flags,cpu_arch,provider_data";

impl Moto {
    /// The config of an `aws` backend on this moto (every region of [`REGIONS`], moto's
    /// AMI and access key) that talks to EC2 at `endpoint` (moto, or a proxy in front).
    #[allow(dead_code)] // used by the backend tests
    pub fn config(&self, endpoint: &str) -> kpool::backends::aws::AwsConfig {
        kpool::backends::aws::AwsConfig {
            regions: REGIONS.iter().map(|r| r.to_string()).collect(),
            endpoint: Some(endpoint.to_string()),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            image_id: Some(self.image_id.clone()),
            ..Default::default()
        }
    }

    /// An EC2 client straight to moto, for what the backend under test cannot do or see.
    pub fn ec2(&self) -> kpool::backends::aws::client::Ec2Client {
        let creds = kpool::backends::aws::sigv4::Credentials {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: None,
        };
        kpool::backends::aws::client::Ec2Client::new(creds, Some(&self.endpoint), Duration::from_secs(30))
            .expect("an EC2 client for moto")
    }

    #[allow(dead_code)] // used by the controller-level tests
    /// The objects of an `aws` Backend `name` on this moto, in `us-east-1`: the Secret
    /// `<name>-creds` with the access key, the ConfigMap `<name>-offers` with the catalog
    /// `rows` (after the header) and the Backend with `config` (its AMI set to moto's).
    pub fn backend_objects(
        &self,
        name: &str,
        rows: &str,
        config: kpool::api::backend::AwsBackendConfig,
    ) -> (k8s_openapi::api::core::v1::Secret, k8s_openapi::api::core::v1::ConfigMap, kpool::api::backend::Backend) {
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        use kpool::api::backend::{
            AwsBackendConfig, Backend, BackendSpec, BackendType, CatalogSource, ConfigMapRef, Credentials, SecretRef,
        };
        let meta = |n: String| ObjectMeta { name: Some(n), ..Default::default() };
        let secret = Secret {
            metadata: meta(format!("{name}-creds")),
            string_data: None,
            data: Some(
                [("aws_access_key_id", &self.access_key_id), ("aws_secret_access_key", &self.secret_access_key)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        };
        let catalog = ConfigMap {
            metadata: meta(format!("{name}-offers")),
            data: Some([("aws.csv".to_string(), format!("{CATALOG_HEADER}\n{rows}"))].into_iter().collect()),
            ..Default::default()
        };
        let backend = Backend::new(
            name,
            BackendSpec {
                type_: BackendType::Aws,
                regions: vec!["us-east-1".into()],
                endpoint: Some(self.endpoint.clone()),
                credentials: Some(Credentials { secret_ref: SecretRef { name: format!("{name}-creds") } }),
                catalog: Some(CatalogSource { config_map_ref: Some(ConfigMapRef { name: format!("{name}-offers") }) }),
                aws: Some(AwsBackendConfig { image_id: self.image_id.clone(), ..config }),
                ..Default::default()
            },
        );
        (secret, catalog, backend)
    }
}

/// Requirements that moto's `t3.micro` meets: 1 CPU, 0.5 GB and 1 GB of disk at least.
#[allow(dead_code)] // used by the controller-level tests
pub fn small() -> kpool::api::resources::ResourcesSpec {
    kpool::api::resources::ResourcesSpec {
        cpu: Some("1..".into()),
        memory: Some("0.5GB..".into()),
        disk: Some("1GB..".into()),
        ..Default::default()
    }
}

/// A catalog offer of the `aws` backend: 2 CPUs, 1 GB, at `price`.
#[allow(dead_code)] // used by the backend tests
pub fn offer(region: &str, instance_type: &str, spot: bool, price: f64) -> kpool::api::offer::Offer {
    kpool::api::offer::Offer {
        backend: "aws".into(),
        region: region.into(),
        instance_type: instance_type.into(),
        cpu: 2,
        memory: 1.0,
        spot,
        price,
        ..Default::default()
    }
}
