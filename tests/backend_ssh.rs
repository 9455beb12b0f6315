//! The `ssh` backend against a real OpenSSH server on loopback.
//!
//! Each test starts its own `sshd` (`/usr/sbin/sshd -D -e`) on 127.0.0.1 and a free high
//! port, as the current user, with a throwaway host key and a throwaway client key in
//! `authorized_keys` (keys are made in-process from fixed seeds), `UsePAM no`,
//! `StrictModes no`, `PasswordAuthentication no`, and kills it at the end. sshd's log
//! (`LogLevel VERBOSE`) shows every login, which is how the tests see that `delete`
//! runs nothing on the host. Install sshd with `scripts/peers/sshd.sh`.

mod support_ssh;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kpool::api::backend::{Backend as BackendObject, BackendType, SshBackendConfig, SshHost};
use kpool::api::offer::Offer;
use kpool::api::resources::{CpuArch, CpuSpec, Range, Requirements, ResourcesSpec};
use kpool::backends::ssh::{MemoryClaims, SshBackend};
use kpool::backends::{Backend, BackendError, MachineSpec, MachineState};
use serde_json::json;
use support_ssh::*;

fn backend_with(hosts: Vec<SshHost>, key_seed: u8, claims: &MemoryClaims) -> SshBackend {
    let config = SshBackendConfig { hosts, connect_timeout_seconds: Some(5), price_per_hour: Some(0.25) };
    SshBackend::new("byo", config, &key_pem(key_seed), Arc::new(claims.clone())).unwrap()
}

fn backend(hosts: Vec<SshHost>) -> SshBackend {
    backend_with(hosts, CLIENT_SEED, &MemoryClaims::new())
}

/// Requirements anything meets.
fn anything() -> Requirements {
    Requirements { cpu: CpuSpec { arch: None, count: Range::any() }, memory: Range::any(), disk: None, gpu: None }
}

fn requirements(spec: ResourcesSpec) -> Requirements {
    spec.resolve().unwrap()
}

fn spec(name: &str, offer: &Offer) -> MachineSpec {
    MachineSpec { name: name.into(), offer: offer.clone(), tags: Default::default(), ssh_public_key: None }
}

fn this_machine_cpus() -> u32 {
    let out = Command::new("nproc").output().expect("nproc");
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

fn this_machine_memory_gb() -> f64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0 / 1024.0
}

#[tokio::test]
async fn a_reachable_host_offers_what_it_has() {
    let sshd = Sshd::start_with_host_key(21);
    let b = backend(vec![sshd.host("box-1")]);
    let offers = b.offers(&anything()).await.unwrap();
    assert_eq!(offers.len(), 1, "{offers:?}\n{}", sshd.log());
    let o = &offers[0];
    assert_eq!((o.backend.as_str(), o.region.as_str(), o.instance_type.as_str()), ("byo", "ssh", "box-1"));
    assert_eq!(o.cpu, this_machine_cpus());
    assert!((o.memory - this_machine_memory_gb()).abs() < 1e-6, "{} vs {}", o.memory, this_machine_memory_gb());
    assert!(o.disk.is_some_and(|d| d > 0.0), "{o:?}");
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(o.cpu_arch, Some(CpuArch::X86));
    }
    assert_eq!((o.spot, o.price), (false, 0.25));
    if Command::new("sh").args(["-c", "command -v nvidia-smi"]).output().unwrap().stdout.is_empty() {
        assert_eq!((o.gpu_count, o.gpu_name.as_deref()), (0, None));
    }

    // A second look within the cache's lifetime logs in no more.
    let logins = sshd.logins();
    assert_eq!(b.offers(&anything()).await.unwrap(), offers);
    assert_eq!(sshd.logins(), logins);
}

#[tokio::test]
async fn an_unreachable_host_gives_no_offer_and_no_error() {
    let sshd = Sshd::start_with_host_key(22);
    let closed = SshHost { port: Some(free_port()), ..sshd.host("closed") };
    let b = backend(vec![closed, sshd.host("open")]);
    let offers = b.offers(&anything()).await.unwrap();
    let names: Vec<&str> = offers.iter().map(|o| o.instance_type.as_str()).collect();
    assert_eq!(names, ["open"]);
}

#[tokio::test]
async fn a_key_the_host_refuses_gives_no_offer_and_cannot_create() {
    let sshd = Sshd::start_with_host_key(23);
    let good = backend(vec![sshd.host("box")]);
    let offer = good.offers(&anything()).await.unwrap().remove(0);

    let wrong = backend_with(vec![sshd.host("box")], CLIENT_SEED + 1, &MemoryClaims::new());
    assert!(wrong.offers(&anything()).await.unwrap().is_empty());
    match wrong.create(&spec("kpool-a", &offer)).await {
        Err(BackendError::InvalidConfig(m)) => assert!(m.contains("refused the key"), "{m}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(matches!(wrong.get("kpool-a").await, Err(BackendError::NotFound(_))), "a failed create claims nothing");
}

#[tokio::test]
async fn create_claims_a_host_for_one_machine_only() {
    let sshd = Sshd::start_with_host_key(24);
    let b = backend(vec![sshd.host("box")]);
    let offer = b.offers(&anything()).await.unwrap().remove(0);

    let m = b.create(&spec("kpool-a", &offer)).await.unwrap();
    assert_eq!(m.state, MachineState::Running);
    assert_eq!(m.provider_id, format!("ssh://{}@127.0.0.1:{}", current_user(), sshd.port));
    assert_eq!(m.address.as_deref(), Some("127.0.0.1"));

    match b.create(&spec("kpool-b", &offer)).await {
        Err(BackendError::InsufficientCapacity(msg)) => assert!(msg.contains("kpool-a"), "{msg}"),
        other => panic!("expected InsufficientCapacity, got {other:?}"),
    }
    assert_eq!(b.create(&spec("kpool-a", &offer)).await.unwrap(), m, "the same name gets the same machine");
    assert_eq!(b.get("kpool-a").await.unwrap(), m);
    assert_eq!(b.list_owned().await.unwrap(), vec![m]);
    assert!(b.offers(&anything()).await.unwrap().is_empty(), "a claimed host is not offered");
    assert!(matches!(b.get("kpool-unknown").await, Err(BackendError::NotFound(_))));
}

#[tokio::test]
async fn concurrent_creates_for_one_host_claim_it_once() {
    let sshd = Sshd::start_with_host_key(25);
    let b = backend(vec![sshd.host("box")]);
    let offer = b.offers(&anything()).await.unwrap().remove(0);
    let (sx, sy) = (spec("kpool-x", &offer), spec("kpool-y", &offer));
    let (x, y) = tokio::join!(b.create(&sx), b.create(&sy));
    assert_eq!([&x, &y].iter().filter(|r| r.is_ok()).count(), 1, "{x:?} {y:?}");
    let loser = if x.is_ok() { y } else { x };
    assert!(matches!(loser, Err(BackendError::InsufficientCapacity(_))), "{loser:?}");
}

#[tokio::test]
async fn delete_releases_the_host_without_running_anything_on_it() {
    let sshd = Sshd::start_with_host_key(26);
    let b = backend(vec![sshd.host("box")]);
    let offer = b.offers(&anything()).await.unwrap().remove(0);
    b.create(&spec("kpool-a", &offer)).await.unwrap();

    let logins = sshd.logins();
    assert!(logins >= 2, "the offer's probe and create's check log in:\n{}", sshd.log());
    b.delete("kpool-a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sshd.logins(), logins, "delete logged into the host:\n{}", sshd.log());

    assert!(matches!(b.get("kpool-a").await, Err(BackendError::NotFound(_))));
    assert!(matches!(b.delete("kpool-a").await, Err(BackendError::NotFound(_))));
    assert!(b.list_owned().await.unwrap().is_empty());
    let m = b.create(&spec("kpool-b", &offer)).await.unwrap();
    assert_eq!((m.name.as_str(), m.state), ("kpool-b", MachineState::Running));
}

#[tokio::test]
async fn a_host_an_instance_holds_is_neither_offered_nor_claimed() {
    let sshd = Sshd::start_with_host_key(27);
    let claims = MemoryClaims::new();
    let b = backend_with(vec![sshd.host("box")], CLIENT_SEED, &claims);
    let offer = b.offers(&anything()).await.unwrap().remove(0);

    claims.hold("box", "kpool-owner");
    assert!(b.offers(&anything()).await.unwrap().is_empty());
    assert!(matches!(b.create(&spec("kpool-other", &offer)).await, Err(BackendError::InsufficientCapacity(_))));
    // After a restart the holder finds its machine again.
    let m = b.create(&spec("kpool-owner", &offer)).await.unwrap();
    assert_eq!(m.state, MachineState::Running);
    let fresh = backend_with(vec![sshd.host("box")], CLIENT_SEED, &claims);
    assert_eq!(fresh.get("kpool-owner").await.unwrap().state, MachineState::Running);
}

#[tokio::test]
async fn a_changed_host_key_is_refused() {
    let mut sshd = Sshd::start_with_host_key(28);
    let b = backend(vec![sshd.host("box")]).with_probe_ttl(Duration::ZERO);
    let offer = b.offers(&anything()).await.unwrap().remove(0);
    b.create(&spec("kpool-a", &offer)).await.unwrap();
    let first = b.known_hosts().fingerprint("127.0.0.1", sshd.port).expect("host key recorded");

    sshd.restart_with_host_key(29);
    assert_eq!(b.get("kpool-a").await.unwrap().state, MachineState::Pending, "an impostor is not the host");
    b.delete("kpool-a").await.unwrap();
    assert!(b.offers(&anything()).await.unwrap().is_empty());
    match b.create(&spec("kpool-b", &offer)).await {
        Err(BackendError::InvalidConfig(m)) => assert!(m.contains("host key changed"), "{m}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert_eq!(b.known_hosts().fingerprint("127.0.0.1", sshd.port), Some(first), "the first key stays trusted");

    // A new record of host keys trusts the new key on first use.
    let fresh = backend(vec![sshd.host("box")]);
    assert_eq!(fresh.offers(&anything()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unreachable_claimed_host_is_pending() {
    let mut sshd = Sshd::start_with_host_key(30);
    let b = backend(vec![sshd.host("box")]);
    let offer = b.offers(&anything()).await.unwrap().remove(0);
    b.create(&spec("kpool-a", &offer)).await.unwrap();
    sshd.stop();
    assert_eq!(b.get("kpool-a").await.unwrap().state, MachineState::Pending);
    match b.create(&spec("kpool-b", &offer)).await {
        Err(BackendError::InsufficientCapacity(_)) => {}
        other => panic!("the host stays claimed while unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn requirements_the_host_does_not_meet_give_no_offer() {
    let sshd = Sshd::start_with_host_key(31);
    let b = backend(vec![sshd.host("box")]);
    let cpus = this_machine_cpus();
    let too_many_cpus = Requirements { cpu: CpuSpec { arch: None, count: Range::at_least(cpus + 1) }, ..anything() };
    assert!(b.offers(&too_many_cpus).await.unwrap().is_empty());
    let too_much_memory = Requirements { memory: Range::at_least(this_machine_memory_gb() + 1.0), ..anything() };
    assert!(b.offers(&too_much_memory).await.unwrap().is_empty());
    let a100 = requirements(ResourcesSpec { gpu: Some("A100:80GB:1".into()), ..ResourcesSpec::default() });
    assert!(b.offers(&a100).await.unwrap().is_empty());
    let fits = Requirements { cpu: CpuSpec { arch: None, count: Range::exact(cpus) }, ..anything() };
    assert_eq!(b.offers(&fits).await.unwrap().len(), 1);
}

#[tokio::test]
async fn create_checks_the_host_still_meets_the_offer() {
    let sshd = Sshd::start_with_host_key(32);
    let b = backend(vec![sshd.host("box")]);
    let mut offer = b.offers(&anything()).await.unwrap().remove(0);
    offer.cpu += 64;
    assert!(matches!(b.create(&spec("kpool-a", &offer)).await, Err(BackendError::InsufficientCapacity(_))));
    offer.cpu -= 64;
    offer.instance_type = "not-a-host".into();
    assert!(matches!(b.create(&spec("kpool-a", &offer)).await, Err(BackendError::InsufficientCapacity(_))));
    assert!(b.list_owned().await.unwrap().is_empty(), "failed creates claim nothing");
}

/// Admission of `spec.ssh` by the committed CRD: schema and CEL rules.
#[test]
fn the_crd_checks_ssh_settings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/backends.kpool.dev.yaml");
    let crd: serde_json::Value = serde_yaml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let admit = |spec: serde_json::Value| -> Vec<String> {
        let obj = json!({"apiVersion": "kpool.dev/v1alpha1", "kind": "Backend",
                         "metadata": {"name": "byo", "namespace": "ml"}, "spec": spec});
        let structural = jsonschema::options().with_draft(jsonschema::Draft::Draft4).build(&schema).unwrap();
        let mut errors: Vec<String> = structural.iter_errors(&obj).map(|e| e.to_string()).collect();
        if let Err(cel) = kube::core::cel::Validator::new().validate(&schema, &obj, None) {
            errors.extend(cel.iter().map(|e| format!("{}: {}", e.field_path, e.message)));
        }
        errors
    };
    let creds = json!({"secretRef": {"name": "ssh-key"}});
    let good = json!({"type": "ssh", "credentials": creds,
                      "ssh": {"hosts": [{"host": "10.0.0.1"}, {"name": "gpu-2", "host": "10.0.0.2", "port": 2222,
                                         "user": "ubuntu"}],
                              "connectTimeoutSeconds": 5, "pricePerHour": 1.5}});
    assert_eq!(admit(good.clone()), Vec::<String>::new());
    let back: BackendObject = serde_json::from_value(json!({"apiVersion": "kpool.dev/v1alpha1", "kind": "Backend",
        "metadata": {"name": "byo"}, "spec": good}))
    .unwrap();
    assert_eq!(back.spec.type_, BackendType::Ssh);
    assert_eq!(back.spec.ssh.as_ref().unwrap().hosts[1].port, Some(2222));

    let dup = admit(json!({"type": "ssh", "credentials": creds,
                           "ssh": {"hosts": [{"host": "10.0.0.1"}, {"name": "10.0.0.1", "host": "10.0.0.9"}]}}));
    assert!(dup.iter().any(|e| e.contains("host names must be unique")), "{dup:?}");
    let port = admit(json!({"type": "ssh", "credentials": creds, "ssh": {"hosts": [{"host": "a", "port": 0}]}}));
    assert!(!port.is_empty());
    let empty = admit(json!({"type": "ssh", "credentials": creds, "ssh": {"hosts": []}}));
    assert!(!empty.is_empty());
    let missing = admit(json!({"type": "ssh", "ssh": {"hosts": [{"host": "a"}]}}));
    assert!(missing.iter().any(|e| e.contains("an ssh backend needs")), "{missing:?}");
    assert_eq!(admit(json!({"type": "kubernetes"})), Vec::<String>::new());
}

#[tokio::test]
async fn a_declared_host_key_is_the_only_one_accepted() {
    let sshd = Sshd::start_with_host_key(28);
    let line = |seed: u8| key(seed).public_key().to_openssh().unwrap();
    let known = kpool::backends::ssh::KnownHosts::default();
    known.pin("127.0.0.1", sshd.port, &line(28)).unwrap();
    let b = backend(vec![sshd.host("box")]).with_known_hosts(known).with_probe_ttl(Duration::ZERO);
    assert_eq!(b.offers(&anything()).await.unwrap().len(), 1, "the declared key matches");

    // Declared differently: the host is refused from the first contact on.
    let known = kpool::backends::ssh::KnownHosts::default();
    known.pin("127.0.0.1", sshd.port, &line(29)).unwrap();
    let b = backend(vec![sshd.host("box")]).with_known_hosts(known).with_probe_ttl(Duration::ZERO);
    assert!(b.offers(&anything()).await.unwrap().is_empty());
    let offer = backend(vec![sshd.host("box")]).offers(&anything()).await.unwrap().remove(0);
    match b.create(&spec("kpool-a", &offer)).await {
        Err(BackendError::InvalidConfig(m)) => assert!(m.contains("host key changed"), "{m}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test]
async fn a_host_key_that_is_not_a_public_key_names_the_field() {
    let mut host = SshHost { host: "127.0.0.1".into(), ..Default::default() };
    host.host_key = Some("ssh-ed25519 not-base64!".into());
    let config = SshBackendConfig { hosts: vec![host], connect_timeout_seconds: None, price_per_hour: None };
    match SshBackend::new("byo", config, &key_pem(CLIENT_SEED), Arc::new(MemoryClaims::new())) {
        Err(BackendError::InvalidConfig(m)) => assert!(m.starts_with("spec.ssh.hosts[0].hostKey"), "{m}"),
        Err(e) => panic!("expected InvalidConfig, got {e}"),
        Ok(_) => panic!("expected InvalidConfig, got a backend"),
    }
}
