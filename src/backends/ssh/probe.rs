//! What a host has, read over SSH by one shell command, and the offer it makes.
//!
//! The command prints sections, each after a `@@kpool:<section>` marker line: `nproc`,
//! `MemTotal` of `/proc/meminfo`, `df -Pk /` (POSIX output in KiB, so GNU, BusyBox and BSD
//! `df` agree), `uname -m`, and `nvidia-smi --query-gpu=name,memory.total
//! --format=csv,noheader,nounits` when `nvidia-smi` is on the `PATH`. It only reads.

use crate::api::offer::Offer;
use crate::api::resources::{CpuArch, GpuVendor};
use crate::backends::kubernetes::gpu_name_from_product;

/// The probe, for a POSIX shell (`sh -c` is explicit so that other login shells work).
pub const PROBE_COMMAND: &str = "sh -c 'echo @@kpool:nproc; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; \
echo @@kpool:meminfo; grep MemTotal /proc/meminfo; \
echo @@kpool:df; df -Pk /; \
echo @@kpool:arch; uname -m; \
echo @@kpool:gpus; if command -v nvidia-smi >/dev/null 2>&1; then \
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null; fi; true'";

const KIB_PER_GB: f64 = 1024.0 * 1024.0;

/// One GPU as `nvidia-smi` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    /// Normalised model name (`NVIDIA A100-SXM4-80GB` -> `A100`).
    pub name: String,
    /// Memory in (binary) GB, rounded to whole GB.
    pub memory_gb: f64,
}

/// What a host has. Sizes are binary GB, like the rest of kpool.
#[derive(Clone, Debug, PartialEq)]
pub struct HostProbe {
    pub cpus: u32,
    pub memory_gb: f64,
    /// Size of the root filesystem.
    pub disk_gb: Option<f64>,
    pub arch: Option<CpuArch>,
    pub gpus: Vec<Gpu>,
}

impl HostProbe {
    /// The offer of the whole host: `instance_type` is the host's name, `region` `ssh`.
    /// Several GPU models on one host are reported as the first one's name and the
    /// smallest memory.
    pub fn offer(&self, backend: &str, host_name: &str, price: f64) -> Offer {
        let first = self.gpus.first();
        Offer {
            backend: backend.to_string(),
            region: super::REGION.to_string(),
            instance_type: host_name.to_string(),
            cpu: self.cpus,
            cpu_arch: self.arch,
            memory: self.memory_gb,
            disk: self.disk_gb,
            gpu_count: self.gpus.len() as u32,
            gpu_name: first.map(|g| g.name.clone()),
            gpu_memory: self.gpus.iter().map(|g| g.memory_gb).reduce(f64::min).unwrap_or(0.0),
            gpu_vendor: first.map(|_| GpuVendor::Nvidia),
            compute_capability: None,
            spot: false,
            price,
        }
    }

    /// Whether this host still has what `offer` promised (CPU, memory, GPUs; disk may
    /// shrink by 1GB before it counts: the root filesystem's size wobbles with metadata).
    pub fn still_meets(&self, offer: &Offer) -> bool {
        let memory_ok = self.memory_gb + 0.01 >= offer.memory;
        let disk_ok = match (offer.disk, self.disk_gb) {
            (Some(want), Some(have)) => have + 1.0 >= want,
            (Some(_), None) => false,
            (None, _) => true,
        };
        self.cpus >= offer.cpu
            && memory_ok
            && disk_ok
            && self.gpus.len() as u32 >= offer.gpu_count
            && (offer.cpu_arch.is_none() || offer.cpu_arch == self.arch)
            && (offer.gpu_count == 0 || offer.gpu_name == self.gpus.first().map(|g| g.name.clone()))
    }
}

/// Parses the output of [`PROBE_COMMAND`]. CPU count and memory are required; the rest
/// is best-effort.
pub fn parse_probe(output: &str) -> Result<HostProbe, String> {
    let section = |name: &str| -> String {
        let marker = format!("@@kpool:{name}");
        let mut lines = output.lines().skip_while(|l| l.trim() != marker).skip(1);
        let mut body = String::new();
        for l in lines.by_ref().take_while(|l| !l.starts_with("@@kpool:")) {
            body.push_str(l);
            body.push('\n');
        }
        body
    };
    let cpus = section("nproc")
        .lines()
        .find_map(|l| l.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .ok_or("no CPU count in the probe output (nproc)")?;
    let memory_gb = parse_meminfo(&section("meminfo")).ok_or("no MemTotal in the probe output (/proc/meminfo)")?;
    Ok(HostProbe {
        cpus,
        memory_gb,
        disk_gb: parse_df(&section("df")),
        arch: parse_arch(&section("arch")),
        gpus: parse_nvidia_smi(&section("gpus")),
    })
}

/// `MemTotal:       24684084 kB` -> GB.
pub fn parse_meminfo(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: f64 = parts.next()?.parse().ok()?;
    let factor = match parts.next().map(str::to_ascii_lowercase).as_deref() {
        Some("kb") | None => 1.0,
        Some("mb") => 1024.0,
        Some("gb") => 1024.0 * 1024.0,
        Some(_) => return None,
    };
    Some(value * factor / KIB_PER_GB)
}

/// Size of the filesystem in the last line of `df -Pk` output, in GB: the field three
/// before the `Capacity` percentage (so file system names with spaces still parse).
pub fn parse_df(text: &str) -> Option<f64> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let pct = fields.iter().rposition(|f| f.ends_with('%') && f[..f.len() - 1].parse::<u32>().is_ok())?;
    let kib: f64 = fields.get(pct.checked_sub(3)?)?.parse().ok()?;
    Some(kib / KIB_PER_GB)
}

/// `uname -m` -> architecture; unknown machines give `None`.
pub fn parse_arch(text: &str) -> Option<CpuArch> {
    match text.trim() {
        "x86_64" | "amd64" | "i386" | "i486" | "i586" | "i686" => Some(CpuArch::X86),
        m if m.starts_with("aarch64") || m.starts_with("arm") => Some(CpuArch::Arm),
        _ => None,
    }
}

/// Lines of `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`
/// (`NVIDIA A100-SXM4-80GB, 81920`) -> GPUs. Lines that do not parse (driver errors,
/// `[N/A]` memory) are skipped.
pub fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let (name, memory) = line.rsplit_once(',')?;
            let mib: f64 = memory.trim().parse().ok()?;
            let name = name.trim();
            (!name.is_empty() && mib > 0.0)
                .then(|| Gpu { name: gpu_name_from_product(name), memory_gb: (mib / 1024.0).round() })
        })
        .collect()
}
