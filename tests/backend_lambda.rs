//! The `lambda` backend against its HTTP contract: Lambda Cloud's OpenAPI document
//! (tests/contracts/lambda-openapi.json) served by Prism in mock mode on loopback.
//!
//! Every request goes through a small recording proxy in front of Prism, which adds the
//! `Prefer` header a test asks for (to pick an error answer or a named example) and keeps
//! each exchange, so the tests assert that Prism found no contract violation
//! (`sl-violations` header) in any request kpool sent. Answers the document does not
//! describe (429, 5xx) come from the proxy itself (`stub`).
//!
//! Needs Prism: run `scripts/peers/prism.sh` once (installs it into `.peers/prism`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kpool::api::offer::Offer;
use kpool::api::resources::{Requirements, ResourcesSpec};
use kpool::backends::lambda::{LambdaBackend, LambdaConfig};
use kpool::backends::{Backend, BackendError, MachineSpec, MachineState, Owner, TAG_INSTALLATION, TAG_NAMESPACE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "test-key-4f1c2b9e";
/// The installation of the backends under test (the `mixed` example's kpool instances
/// carry it, and the namespace `ml`, in their tags).
const INSTALLATION: &str = "kpool-test";

/// Port of the Prism started for this test binary.
fn prism_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let prism = root.join(".peers/prism/node_modules/.bin/prism");
        assert!(prism.exists(), "Prism is not installed at {}: run scripts/peers/prism.sh", prism.display());
        let spec = root.join("tests/contracts/lambda-openapi.json");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Prism lives as long as this test process: a shell watches our pid and stops it.
        let script = format!(
            "\"$0\" mock --errors -h 127.0.0.1 -p {port} \"$1\" >/dev/null 2>&1 & p=$!; \
             while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $p",
            pid = std::process::id()
        );
        // The watcher shell outlives this call on purpose; it exits with the test process.
        #[allow(clippy::zombie_processes)]
        let _watcher = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&prism)
            .arg(&spec)
            .stdin(Stdio::null())
            .spawn()
            .expect("failed to start prism (scripts/peers/prism.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "prism did not start on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        port
    })
}

/// One request kpool sent and what it got.
#[derive(Clone, Debug)]
#[allow(dead_code)] // `response` shows in assertion messages
struct Exchange {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    status: u16,
    violations: Option<String>,
    response: String,
}

impl Exchange {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Rules {
    /// (method, path, Prefer value)
    prefer: Vec<(String, String, String)>,
    /// (status, extra headers, body) answered without Prism.
    stub: Option<(u16, String, String)>,
}

struct Contract {
    port: u16,
    rules: Arc<Mutex<Rules>>,
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl Contract {
    async fn start() -> Contract {
        let prism = prism_port();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules: Arc<Mutex<Rules>> = Arc::default();
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let (r, l) = (rules.clone(), log.clone());
        tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                let (r, l) = (r.clone(), l.clone());
                tokio::spawn(async move { proxy(sock, prism, r, l).await });
            }
        });
        Contract { port, rules, log }
    }

    fn prefer(&self, method: &str, path: &str, prefer: &str) {
        self.rules.lock().unwrap().prefer.push((method.into(), path.into(), prefer.into()));
    }

    fn stub(&self, status: u16, headers: &str, body: &str) {
        self.rules.lock().unwrap().stub = Some((status, headers.into(), body.into()));
    }

    fn backend(&self, regions: &[&str]) -> LambdaBackend {
        let owner = Owner { installation: INSTALLATION.into(), namespace: "ml".into() };
        self.unowned_backend(regions).with_owner(owner)
    }

    /// A backend without an installation identity, as kpool's were before machines carried one.
    fn unowned_backend(&self, regions: &[&str]) -> LambdaBackend {
        let config = LambdaConfig {
            api_key: KEY.into(),
            endpoint: Some(format!("http://127.0.0.1:{}/api/v1", self.port)),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            ssh_key_names: vec!["kpool".into()],
        };
        LambdaBackend::new("lambda", config).unwrap().with_timeout(Duration::from_secs(20))
    }

    /// The exchanges so far; fails on any contract violation Prism reported.
    fn exchanges(&self) -> Vec<Exchange> {
        let log = self.log.lock().unwrap().clone();
        for e in &log {
            assert!(e.violations.is_none(), "Prism found a contract violation in {} {}: {:?}", e.method, e.path, e);
            let auth = e.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.as_str());
            assert_eq!(auth, Some(format!("Bearer {KEY}").as_str()), "{e:?}");
        }
        log
    }
}

async fn proxy(mut sock: TcpStream, prism: u16, rules: Arc<Mutex<Rules>>, log: Arc<Mutex<Vec<Exchange>>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_string();
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize =
        headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.parse().unwrap()).unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    let (prefer, stub) = {
        let r = rules.lock().unwrap();
        let prefer = r.prefer.iter().find(|(m, p, _)| *m == method && path.ends_with(p.as_str())).map(|x| x.2.clone());
        (prefer, r.stub.clone())
    };
    let (status, violations, response_head, response) = if let Some((status, extra, body)) = stub {
        (status, None, format!("HTTP/1.1 {status} Stub\r\ncontent-type: application/json\r\n{extra}"), body)
    } else {
        let mut upstream = TcpStream::connect(("127.0.0.1", prism)).await.unwrap();
        let mut out = format!("{request_line}\r\n");
        for (k, v) in &headers {
            if k != "connection" {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        if let Some(p) = &prefer {
            out.push_str(&format!("prefer: {p}\r\n"));
        }
        out.push_str("connection: close\r\n\r\n");
        out.push_str(&body);
        upstream.write_all(out.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        upstream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8_lossy(&raw).to_string();
        let (rhead, rbody) = raw.split_once("\r\n\r\n").unwrap();
        let mut rlines = rhead.split("\r\n");
        let status_line = rlines.next().unwrap().to_string();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut kept = format!("{status_line}\r\n");
        let mut violations = None;
        for l in rlines {
            let (k, v) = l.split_once(':').unwrap();
            let k = k.trim().to_ascii_lowercase();
            match k.as_str() {
                "sl-violations" => violations = Some(v.trim().to_string()),
                "connection" | "keep-alive" | "content-length" | "transfer-encoding" => {}
                _ => kept.push_str(&format!("{l}\r\n")),
            }
        }
        (status, violations, kept, rbody.to_string())
    };
    log.lock().unwrap().push(Exchange { method, path, headers, body, status, violations, response: response.clone() });
    let out = format!("{response_head}content-length: {}\r\nconnection: close\r\n\r\n{response}", response.len());
    let _ = sock.write_all(out.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Requirements with the defaults only (the backend does not pre-filter).
fn any() -> Requirements {
    ResourcesSpec::default().resolve().expect("default requirements")
}

fn spec(name: &str, region: &str, instance_type: &str) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        offer: Offer {
            backend: "lambda".into(),
            region: region.into(),
            instance_type: instance_type.into(),
            ..Default::default()
        },
        tags: BTreeMap::from([("kpool.dev/pool".to_string(), "p".to_string())]),
        ssh_public_key: None,
    }
}

#[tokio::test]
async fn offers_map_regions_prices_and_gpus() {
    let c = Contract::start().await;
    c.prefer("GET", "/instance-types", "example=catalog");
    let offers = c.backend(&[]).offers(&any()).await.unwrap();
    let keys: Vec<(&str, &str)> = offers.iter().map(|o| (o.instance_type.as_str(), o.region.as_str())).collect();
    assert_eq!(
        keys,
        [
            ("cpu_4x_general", "us-west-1"),
            ("gpu_1x_a10", "us-east-1"),
            ("gpu_8x_h100_sxm5", "us-east-1"),
            ("gpu_8x_h100_sxm5", "us-west-1")
        ]
    );
    let h100 = &offers[2];
    assert_eq!((h100.cpu, h100.memory, h100.disk), (208, 1800.0, Some(24780.0)));
    assert_eq!((h100.gpu_count, h100.gpu_name.as_deref(), h100.gpu_memory), (8, Some("H100"), 80.0));
    assert!((h100.price - 23.92).abs() < 1e-9 && !h100.spot && h100.backend == "lambda");
    assert_eq!((offers[1].gpu_name.as_deref(), offers[1].gpu_memory, offers[1].price), (Some("A10"), 24.0, 0.75));
    assert_eq!((offers[0].gpu_count, offers[0].gpu_name.as_deref()), (0, None));

    let east = c.backend(&["us-east-1"]).offers(&any()).await.unwrap();
    assert!(east.len() == 2 && east.iter().all(|o| o.region == "us-east-1"), "{east:?}");
    assert_eq!(c.exchanges().len(), 2);
}

#[tokio::test]
async fn launch_request_matches_the_contract() {
    let c = Contract::start().await;
    let m = c.backend(&["us-east-1"]).create(&spec("kpool-new", "us-east-1", "gpu_1x_a10")).await.unwrap();
    assert_eq!((m.name.as_str(), m.state, m.address.as_deref()), ("kpool-new", MachineState::Pending, None));
    assert_eq!(m.provider_id, "0920582c7ff041399e34823a0be62549");
    let log = c.exchanges();
    assert_eq!(
        log.iter().map(|e| (e.method.as_str(), e.path.as_str())).collect::<Vec<_>>(),
        [("GET", "/api/v1/instances"), ("POST", "/api/v1/instance-operations/launch")]
    );
    assert_eq!(
        log[1].json(),
        serde_json::json!({"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10", "ssh_key_names": ["kpool"],
                           "file_system_names": [], "quantity": 1, "name": "kpool-new",
                           "tags": [{"key": "kpool-installation", "value": INSTALLATION},
                                    {"key": "kpool-namespace", "value": "ml"}]})
    );
    assert_eq!(m.tags.get(TAG_INSTALLATION).map(String::as_str), Some(INSTALLATION));
    assert_eq!(m.tags.get(TAG_NAMESPACE).map(String::as_str), Some("ml"));
    assert!(log[1].headers.iter().any(|(k, v)| k == "content-type" && v == "application/json"));
}

#[tokio::test]
async fn create_returns_the_live_instance_with_that_name() {
    let c = Contract::start().await;
    c.prefer("GET", "/instances", "example=mixed");
    let m = c.backend(&[]).create(&spec("kpool-active", "us-east-1", "gpu_1x_a10")).await.unwrap();
    assert_eq!((m.provider_id.as_str(), m.state), ("0920582c7ff041399e34823a0be62549", MachineState::Running));
    assert_eq!(m.address.as_deref(), Some("198.51.100.2"));
    assert_eq!(c.exchanges().len(), 1, "no launch");
}

#[tokio::test]
async fn get_maps_states_and_list_owned_filters_by_owner() {
    let c = Contract::start().await;
    c.prefer("GET", "/instances", "example=mixed");
    let b = c.backend(&[]);
    let cases = [
        ("kpool-active", MachineState::Running, Some("198.51.100.2")),
        ("kpool-booting", MachineState::Pending, None),
        ("kpool-unhealthy", MachineState::Running, Some("198.51.100.3")),
        ("kpool-terminating", MachineState::Stopping, None),
        ("kpool-terminated", MachineState::Terminated, None),
        ("kpool-preempted", MachineState::Terminated, None),
    ];
    for (name, state, address) in cases {
        let m = b.get(name).await.unwrap();
        assert_eq!((m.state, m.address.as_deref()), (state, address), "{name}");
    }
    assert!(matches!(b.get("kpool-missing").await, Err(BackendError::NotFound(_))));
    let mut owned: Vec<String> = b.list_owned().await.unwrap().into_iter().map(|m| m.name).collect();
    owned.sort();
    // Not kpool-other-cluster (another installation's) nor kpool-team-b (another namespace's).
    assert_eq!(owned, ["kpool-active", "kpool-booting", "kpool-terminating", "kpool-unhealthy"]);
    let unattributed: Vec<String> = b.list_unattributed().await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(unattributed, ["kpool-before"], "launched before instances carried an installation");
    assert_eq!(b.get("kpool-team-b").await.unwrap().tags.get(TAG_NAMESPACE).map(String::as_str), Some("team-b"));
    let err = c.unowned_backend(&[]).list_owned().await.unwrap_err();
    assert_eq!(err.category(), "InvalidConfig", "no owner, no list: {err}");
    c.exchanges();
}

#[tokio::test]
async fn delete_terminates_by_id_and_reports_not_found() {
    let c = Contract::start().await;
    c.prefer("GET", "/instances", "example=mixed");
    let b = c.backend(&[]);
    b.delete("kpool-active").await.unwrap();
    b.delete("kpool-terminating").await.unwrap(); // already going: nothing to send
    assert!(matches!(b.delete("kpool-missing").await, Err(BackendError::NotFound(_))));
    c.prefer("POST", "/instance-operations/terminate", "code=404");
    assert!(matches!(b.delete("kpool-booting").await, Err(BackendError::NotFound(_))));
    let log = c.exchanges();
    let terminates: Vec<_> = log.iter().filter(|e| e.path.ends_with("/terminate")).collect();
    assert_eq!(terminates.len(), 2);
    assert_eq!(terminates[0].json(), serde_json::json!({"instance_ids": ["0920582c7ff041399e34823a0be62549"]}));
    assert_eq!(terminates[1].status, 404);
}

#[tokio::test]
async fn launch_errors_map_by_code() {
    let cases = [
        ("code=400, example=insufficient-capacity", "InsufficientCapacity"),
        ("code=400, example=quota-exceeded", "InsufficientCapacity"),
        ("code=400, example=invalid-parameters", "InvalidConfig"),
        ("code=400, example=launch-resource-not-found", "InvalidConfig"),
        ("code=400, example=file-system-in-wrong-region", "InvalidConfig"),
        ("code=403, example=account-inactive", "InvalidConfig"),
        ("code=401", "InvalidConfig"),
        ("code=404", "InvalidConfig"),
    ];
    for (prefer, category) in cases {
        let c = Contract::start().await;
        c.prefer("POST", "/instance-operations/launch", prefer);
        let err = c.backend(&[]).create(&spec("kpool-new", "us-west-1", "gpu_1x_a10")).await.unwrap_err();
        assert_eq!(err.category(), category, "{prefer}: {err}");
        assert!(!err.to_string().contains(KEY) && !format!("{err:?}").contains(KEY));
        let log = c.exchanges();
        assert!(log[1].status >= 400, "{prefer}: {:?}", log[1]);
    }
}

#[tokio::test]
async fn unauthorized_is_invalid_config_without_the_key() {
    let c = Contract::start().await;
    c.prefer("GET", "/instance-types", "code=401");
    let err = c.backend(&[]).offers(&any()).await.unwrap_err();
    assert_eq!(err.category(), "InvalidConfig", "{err}");
    assert!(err.to_string().contains("global/invalid-api-key"), "{err}");
    assert!(!err.to_string().contains(KEY) && !format!("{err:?}").contains(KEY));
    c.prefer("GET", "/instances", "code=403");
    assert_eq!(c.backend(&[]).list_owned().await.unwrap_err().category(), "InvalidConfig");
    assert!(!format!("{:?}", c.backend(&[])).contains(KEY));
    c.exchanges();
}

#[tokio::test]
async fn answers_outside_the_document_rate_limits_and_server_errors() {
    let c = Contract::start().await;
    c.stub(429, "retry-after: 7\r\n", r#"{"error":{"code":"global/too-many-requests","message":"slow down"}}"#);
    let err = c.backend(&[]).list_owned().await.unwrap_err();
    assert!(
        matches!(err, BackendError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(7)),
        "{err}"
    );
    c.stub(503, "", "<html>unavailable</html>");
    assert_eq!(c.backend(&[]).get("kpool-x").await.unwrap_err().category(), "Unanswered");
    c.stub(500, "", r#"{"error":{"code":"global/internal-error","message":"boom","suggestion":"later"}}"#);
    assert_eq!(c.backend(&[]).offers(&any()).await.unwrap_err().category(), "Unanswered");
}

/// The public key of the `kpool-keys` example (Lambda's own sample key).
const REGISTERED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICN+lJwsONkwrdsSnQsu1ydUkIuIg5oOC+Eslvmtt60T noname";
/// An instance's own key, as kpool generates it.
const OWN_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGkpoolOwnKeyOfTheInstanceXXXXXXXXXXXXXXXXXX kpool:ml/a10";

fn with_key(mut spec: MachineSpec, key: &str) -> MachineSpec {
    spec.ssh_public_key = Some(key.into());
    spec
}

fn calls(log: &[Exchange]) -> Vec<(&str, &str)> {
    log.iter().map(|e| (e.method.as_str(), e.path.as_str())).collect()
}

#[tokio::test]
async fn the_instance_key_is_registered_under_the_machine_name_and_launched_with() {
    let c = Contract::start().await;
    c.prefer("GET", "/ssh-keys", "example=none");
    let spec = with_key(spec("kpool-new", "us-east-1", "gpu_1x_a10"), OWN_KEY);
    let m = c.backend(&[]).create(&spec).await.unwrap();
    assert_eq!(m.state, MachineState::Pending);
    let log = c.exchanges();
    assert_eq!(
        calls(&log),
        [
            ("GET", "/api/v1/instances"),
            ("GET", "/api/v1/ssh-keys"),
            ("POST", "/api/v1/ssh-keys"),
            ("POST", "/api/v1/instance-operations/launch")
        ]
    );
    assert_eq!(log[2].json(), serde_json::json!({"name": "kpool-new", "public_key": OWN_KEY}));
    // Lambda takes one key per launch: the instance's own, not the backend's `kpool`.
    assert_eq!(log[3].json()["ssh_key_names"], serde_json::json!(["kpool-new"]));
    assert!(log.iter().all(|e| e.status == 200), "{log:?}");
}

#[tokio::test]
async fn a_registered_key_is_reused_and_a_stale_one_replaced() {
    // `kpool-keys` lists `kpool-new` with REGISTERED.
    let c = Contract::start().await;
    c.backend(&[]).create(&with_key(spec("kpool-new", "us-east-1", "gpu_1x_a10"), REGISTERED)).await.unwrap();
    let log = c.exchanges();
    assert_eq!(
        calls(&log),
        [("GET", "/api/v1/instances"), ("GET", "/api/v1/ssh-keys"), ("POST", "/api/v1/instance-operations/launch")]
    );
    assert_eq!(log[2].json()["ssh_key_names"], serde_json::json!(["kpool-new"]));

    let c = Contract::start().await;
    c.backend(&[]).create(&with_key(spec("kpool-new", "us-east-1", "gpu_1x_a10"), OWN_KEY)).await.unwrap();
    let log = c.exchanges();
    assert_eq!(
        calls(&log),
        [
            ("GET", "/api/v1/instances"),
            ("GET", "/api/v1/ssh-keys"),
            ("DELETE", "/api/v1/ssh-keys/7e57ab1e00aa11bb22cc33dd44ee55ff"),
            ("POST", "/api/v1/ssh-keys"),
            ("POST", "/api/v1/instance-operations/launch")
        ]
    );
}

#[tokio::test]
async fn terminating_deletes_the_registered_key_and_so_does_a_failed_launch() {
    let c = Contract::start().await;
    c.backend(&[]).delete("kpool-active").await.unwrap();
    let log = c.exchanges();
    assert_eq!(
        calls(&log),
        [
            ("GET", "/api/v1/instances"),
            ("POST", "/api/v1/instance-operations/terminate"),
            ("GET", "/api/v1/ssh-keys"),
            ("DELETE", "/api/v1/ssh-keys/5c0ffee0aa11bb22cc33dd44ee55ff66")
        ]
    );
    assert!(log.iter().all(|e| e.status == 200), "{log:?}");

    let c = Contract::start().await;
    c.prefer("POST", "/instance-operations/launch", "code=400, example=insufficient-capacity");
    let err =
        c.backend(&[]).create(&with_key(spec("kpool-new", "us-east-1", "gpu_1x_a10"), REGISTERED)).await.unwrap_err();
    assert_eq!(err.category(), "InsufficientCapacity", "{err}");
    let log = c.exchanges();
    assert_eq!(
        calls(&log)[2..],
        [
            ("POST", "/api/v1/instance-operations/launch"),
            ("GET", "/api/v1/ssh-keys"),
            ("DELETE", "/api/v1/ssh-keys/7e57ab1e00aa11bb22cc33dd44ee55ff")
        ]
    );
}

#[tokio::test]
async fn deleting_a_machine_that_went_without_kpool_still_deletes_its_key() {
    let c = Contract::start().await;
    // `kpool-new` has a registered key (the `kpool-keys` example) but no instance.
    let err = c.backend(&[]).delete("kpool-new").await.unwrap_err();
    assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
    let log = c.exchanges();
    assert_eq!(
        calls(&log),
        [
            ("GET", "/api/v1/instances"),
            ("GET", "/api/v1/ssh-keys"),
            ("DELETE", "/api/v1/ssh-keys/7e57ab1e00aa11bb22cc33dd44ee55ff")
        ]
    );
}
