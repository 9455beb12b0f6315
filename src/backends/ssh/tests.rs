//! Unit tests of the `ssh` backend without a host: probe-output parsers, the offer of a
//! probe, the claim table and configuration errors. tests/backend_ssh.rs runs the
//! backend against a real `sshd`.

use std::collections::BTreeMap;
use std::sync::Arc;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use super::claims::ClaimTable;
use super::probe::{parse_arch, parse_df, parse_meminfo, parse_nvidia_smi, parse_probe, Gpu, HostProbe};
use super::{MemoryClaims, SshBackend};
use crate::api::backend::{SshBackendConfig, SshHost};
use crate::api::resources::{CpuArch, GpuVendor};
use crate::backends::{Backend, BackendError};

fn key_pem(seed: u8) -> String {
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]));
    key.to_openssh(LineEnding::LF).unwrap().to_string()
}

fn host(host: &str) -> SshHost {
    SshHost { host: host.into(), ..SshHost::default() }
}

fn config(hosts: Vec<SshHost>) -> SshBackendConfig {
    SshBackendConfig { hosts, ..SshBackendConfig::default() }
}

fn build(cfg: SshBackendConfig, key: &str) -> Result<SshBackend, BackendError> {
    SshBackend::new("byo", cfg, key, Arc::new(MemoryClaims::new()))
}

fn invalid_message(r: Result<SshBackend, BackendError>) -> String {
    match r {
        Err(BackendError::InvalidConfig(m)) => m,
        Err(e) => panic!("expected InvalidConfig, got {e:?}"),
        Ok(_) => panic!("expected InvalidConfig, got a backend"),
    }
}

#[test]
fn nvidia_smi_lines_become_gpus() {
    let out = "NVIDIA A100-SXM4-80GB, 81920\nNVIDIA A100-SXM4-80GB, 81920\n";
    let gpus = parse_nvidia_smi(out);
    assert_eq!(gpus, vec![Gpu { name: "A100".into(), memory_gb: 80.0 }; 2]);
    assert_eq!(parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559"), vec![Gpu { name: "H100".into(), memory_gb: 80.0 }]);
    assert_eq!(parse_nvidia_smi("Tesla T4, 15360")[0].name, "T4");
    assert_eq!(parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564")[0], Gpu { name: "RTX4090".into(), memory_gb: 24.0 });
    assert_eq!(parse_nvidia_smi("NVIDIA RTX A6000, 49140")[0].name, "A6000");
    assert_eq!(parse_nvidia_smi("NVIDIA L4, 23034")[0], Gpu { name: "L4".into(), memory_gb: 22.0 });
}

#[test]
fn nvidia_smi_noise_is_skipped() {
    let out = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n\
               NVIDIA A10G, [N/A]\n\n, 1024\nNVIDIA A10G, 23028\n";
    assert_eq!(parse_nvidia_smi(out), vec![Gpu { name: "A10G".into(), memory_gb: 22.0 }]);
    assert!(parse_nvidia_smi("").is_empty());
}

#[test]
fn meminfo_total_in_gb() {
    let text = "MemTotal:       24684084 kB\nMemFree:         1000000 kB\n";
    assert!((parse_meminfo(text).unwrap() - 24684084.0 / 1048576.0).abs() < 1e-9);
    assert_eq!(parse_meminfo("MemTotal: 16777216 kB"), Some(16.0));
    assert_eq!(parse_meminfo("MemFree: 1 kB"), None);
    assert_eq!(parse_meminfo("MemTotal: lots kB"), None);
}

#[test]
fn df_size_of_the_root_filesystem() {
    let gnu = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
               /dev/vda         264212084 20011108  75274780      22% /\n";
    assert!((parse_df(gnu).unwrap() - 264212084.0 / 1048576.0).abs() < 1e-9);
    let spaced = "Filesystem 1024-blocks Used Available Capacity Mounted on\nmy disk 104857600 1 2 1% /\n";
    assert_eq!(parse_df(spaced), Some(100.0));
    assert_eq!(parse_df("df: /: No such file or directory\n"), None);
    assert_eq!(parse_df(""), None);
}

#[test]
fn uname_machine_to_arch() {
    assert_eq!(parse_arch("x86_64\n"), Some(CpuArch::X86));
    assert_eq!(parse_arch("aarch64"), Some(CpuArch::Arm));
    assert_eq!(parse_arch("armv7l"), Some(CpuArch::Arm));
    assert_eq!(parse_arch("riscv64"), None);
}

#[test]
fn whole_probe_output() {
    let out = "@@kpool:nproc\n96\n@@kpool:meminfo\nMemTotal: 1056964608 kB\n@@kpool:df\n\
               Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/nvme0n1p1 209715200 1 2 1% /\n\
               @@kpool:arch\nx86_64\n@@kpool:gpus\nNVIDIA A100-SXM4-80GB, 81920\nNVIDIA A100-SXM4-80GB, 81920\n";
    let probe = parse_probe(out).unwrap();
    assert_eq!(probe.cpus, 96);
    assert_eq!(probe.memory_gb, 1008.0);
    assert_eq!(probe.disk_gb, Some(200.0));
    assert_eq!(probe.arch, Some(CpuArch::X86));
    assert_eq!(probe.gpus.len(), 2);

    let offer = probe.offer("byo", "gpu-box", 1.5);
    assert_eq!(
        (offer.backend.as_str(), offer.region.as_str(), offer.instance_type.as_str()),
        ("byo", "ssh", "gpu-box")
    );
    assert_eq!((offer.cpu, offer.memory, offer.disk, offer.gpu_count), (96, 1008.0, Some(200.0), 2));
    assert_eq!((offer.gpu_name.as_deref(), offer.gpu_memory), (Some("A100"), 80.0));
    assert_eq!(offer.gpu_vendor, Some(GpuVendor::Nvidia));
    assert_eq!((offer.spot, offer.price), (false, 1.5));
    assert!(probe.still_meets(&offer));
    let smaller = HostProbe { gpus: vec![probe.gpus[0].clone()], ..probe.clone() };
    assert!(!smaller.still_meets(&offer));

    assert!(parse_probe("@@kpool:nproc\n\n@@kpool:meminfo\nMemTotal: 1 kB\n").unwrap_err().contains("nproc"));
    assert!(parse_probe("@@kpool:nproc\n4\n").unwrap_err().contains("MemTotal"));
    let cpu_only = parse_probe("@@kpool:nproc\n4\n@@kpool:meminfo\nMemTotal: 8388608 kB\n@@kpool:gpus\n").unwrap();
    let offer = cpu_only.offer("byo", "small", 0.0);
    assert_eq!((offer.gpu_count, offer.gpu_name, offer.gpu_vendor, offer.disk), (0, None, None, None));
}

#[test]
fn claim_table_reserve_commit_cancel_release() {
    let mut t = ClaimTable::default();
    t.reserve("h1", "m1", BTreeMap::new()).unwrap();
    assert_eq!(t.reserve("h1", "m2", BTreeMap::new()), Err("m1".to_string()));
    t.cancel("h1", "m1");
    assert!(t.holder("h1").is_none(), "an unready reservation is cancelled");

    t.reserve("h1", "m1", BTreeMap::new()).unwrap();
    assert!(t.commit("h1", "m1"));
    t.cancel("h1", "m1");
    assert!(t.holder("h1").is_some_and(|c| c.ready), "a committed claim survives cancel");
    assert_eq!(t.host_of("m1").map(|(h, _)| h), Some("h1"));

    assert_eq!(t.release("m1"), Some("h1".to_string()));
    assert!(t.was_released("m1"));
    assert_eq!(t.release("m1"), None);
    assert!(!t.adopt("h1", "m1", BTreeMap::new()), "a released machine is not taken over again");
    assert!(t.adopt("h1", "m3", BTreeMap::new()));
    assert!(!t.commit("h2", "m3"));

    t.reserve("h2", "m1", BTreeMap::new()).unwrap();
    assert!(!t.was_released("m1"), "creating again forgets the release");
}

#[test]
fn config_errors_name_the_field() {
    assert!(invalid_message(build(config(vec![]), &key_pem(1))).starts_with("spec.ssh.hosts:"));
    let dup = config(vec![host("10.0.0.1"), SshHost { name: Some("10.0.0.1".into()), ..host("10.0.0.2") }]);
    assert!(invalid_message(build(dup, &key_pem(1))).starts_with("spec.ssh.hosts[1].name: duplicate"));
    let port = config(vec![SshHost { port: Some(0), ..host("a") }]);
    assert!(invalid_message(build(port, &key_pem(1))).starts_with("spec.ssh.hosts[0].port:"));
    let user = config(vec![SshHost { user: Some(String::new()), ..host("a") }]);
    assert!(invalid_message(build(user, &key_pem(1))).starts_with("spec.ssh.hosts[0].user:"));
    assert!(invalid_message(build(config(vec![host(" ")]), &key_pem(1))).starts_with("spec.ssh.hosts[0].host:"));
    let timeout = SshBackendConfig { connect_timeout_seconds: Some(0), ..config(vec![host("a")]) };
    assert!(invalid_message(build(timeout, &key_pem(1))).starts_with("spec.ssh.connectTimeoutSeconds:"));
    let price = SshBackendConfig { price_per_hour: Some(-1.0), ..config(vec![host("a")]) };
    assert!(invalid_message(build(price, &key_pem(1))).starts_with("spec.ssh.pricePerHour:"));
    let garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n";
    let msg = invalid_message(build(config(vec![host("a")]), garbage));
    assert!(msg.starts_with("spec.credentials.secretRef:"), "{msg}");
    assert!(!msg.contains("bm90IGEga2V5"), "the key's text is not echoed: {msg}");
    assert!(invalid_message(build(config(vec![host("a")]), "")).starts_with("spec.credentials.secretRef:"));
}

#[tokio::test]
async fn machines_without_a_claim_are_not_found() {
    let claims = MemoryClaims::new();
    let backend = SshBackend::new("byo", config(vec![host("a")]), &key_pem(2), Arc::new(claims.clone())).unwrap();
    assert_eq!(backend.name(), "byo");
    assert!(matches!(backend.get("kpool-x").await, Err(BackendError::NotFound(_))));
    assert!(matches!(backend.delete("kpool-x").await, Err(BackendError::NotFound(_))));
    assert!(backend.list_owned().await.unwrap().is_empty());
    claims.fail_with(Some(BackendError::Other("api down".into())));
    assert_eq!(backend.get("kpool-x").await, Err(BackendError::Other("api down".into())));
}

#[tokio::test]
async fn a_claim_held_per_the_api_is_released_once() {
    let claims = MemoryClaims::new();
    let backend = SshBackend::new("byo", config(vec![host("a")]), &key_pem(3), Arc::new(claims.clone())).unwrap();
    claims.hold("a", "kpool-1");
    // Nothing to connect to for "a": taking the claim over and releasing it needs no host.
    backend.delete("kpool-1").await.unwrap();
    assert!(matches!(backend.get("kpool-1").await, Err(BackendError::NotFound(_))));
    assert!(matches!(backend.delete("kpool-1").await, Err(BackendError::NotFound(_))));
}
