//! dstack's resource requirement grammar: `cpu`, `memory`, `disk` and `gpu` specs.
//!
//! The reference is dstack's parser (`dstack/_internal/core/models/resources.py`, dstack
//! 0.22.5 on PyPI) plus its GPU vendor inference (`server/services/resources.py`,
//! `utils/gpu.py`) and gpuhunt's lists of known accelerators (gpuhunt 0.1.34).
//!
//! What is read the same way as dstack:
//! - Whitespace anywhere is ignored (`4 .. 8`, `A100 : 80 GB`).
//! - Ranges are `a..b`, `a..`, `..b`; a single value `a` means exactly `a`; `..` alone and
//!   `min > max` are errors.
//! - Sizes are in GB; units `MB`, `GB`, `TB` are case-insensitive and binary
//!   (`1TB` = 1024GB, `512MB` = 0.5GB); a bare number is GB.
//! - CPU: `:`-separated tokens in any order, at most one count and one architecture; a
//!   spec with only an architecture keeps the default count `2..`.
//! - GPU: `:`-separated tokens in any order, each kind at most once. A token is a vendor
//!   (`nvidia`, `amd`, `intel`, `google` or `tpu`, `tenstorrent` or `tt`; any case), else a
//!   list of names when it starts with a letter, else a memory size when it holds a letter
//!   (GPU memory always needs a unit: `24` is a count, `24GB` a size), else a count.
//!   Without a count, `1..` is meant. Names are kept as written (compare them
//!   case-insensitively); a `tpu-` prefix is dropped (`tpu-v5p-8` -> `v5p-8`).
//! - Vendor inference: when no vendor is given and every name is a known model of one
//!   single vendor (gpuhunt's lists; TPUs as `VERSION-CORES`, e.g. `v5litepod-8`), that
//!   vendor is set. Unknown names are accepted and leave the vendor unset. Nothing is
//!   inferred when the count allows no GPU at all (`0`, `..0`).
//! - Compute capability is `MAJOR.MINOR` (`8.0`, `12.0`), a minimum.
//!
//! Deliberate differences from dstack:
//! - CPU architecture also accepts `x86_64`, `amd64` (x86) and `arm64`, `aarch64` (arm);
//!   dstack accepts only `x86` and `arm`.
//! - Numbers are plain decimals: no sign, no exponent, no `inf`/`nan`, no `.5` or `8.`
//!   (dstack passes sizes to Python's `float()` and accepts `-8GB`, `1e3`, `inf`).
//!   Negative counts (dstack accepts `gpu: -1`) are rejected.
//! - GPU names must start with a letter and use only letters, digits, `-` and `_`
//!   (dstack accepts any text after a first letter, e.g. `A100..` or `H100;x`).
//! - A `tpu-` name prefix always sets the vendor to TPU; dstack only infers it for known
//!   TPU versions (so dstack reads `tpu-foo` as the name `foo` of no vendor).
//! - dstack defaults the vendor to NVIDIA when a GPU is requested without names and the
//!   default image is used; the grammar has no image, so the vendor stays unset.
//! - Without a `gpu` field there is no GPU requirement (`Requirements::gpu` is `None`);
//!   dstack's equivalent is a GPU count of `0..`. `gpu: "0"` asks for zero GPUs.
//! - `gpuTotalMemory` and `computeCapability` are separate fields (dstack only has them in
//!   the mapping form of `gpu`); either implies a GPU requirement, count `1..` by default.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// An inclusive range; `None` on a side means unbounded on that side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Range<T> {
    pub min: Option<T>,
    pub max: Option<T>,
}

impl<T: PartialOrd + Copy> Range<T> {
    pub fn exact(v: T) -> Self {
        Range { min: Some(v), max: Some(v) }
    }
    pub fn at_least(v: T) -> Self {
        Range { min: Some(v), max: None }
    }
    pub fn any() -> Self {
        Range { min: None, max: None }
    }
    pub fn contains(&self, v: T) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CpuArch {
    X86,
    Arm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Nvidia,
    Amd,
    /// Google TPUs (`tpu` in specs).
    Tpu,
    Intel,
    Tenstorrent,
}

/// Parsed CPU requirement.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuSpec {
    pub arch: Option<CpuArch>,
    pub count: Range<u32>,
}

/// Parsed GPU requirement. Memory values are GB.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSpec {
    pub vendor: Option<GpuVendor>,
    /// Accepted GPU model names, as written (compare case-insensitively).
    pub names: Vec<String>,
    pub count: Range<u32>,
    pub memory: Option<Range<f64>>,
    pub total_memory: Option<Range<f64>>,
    /// Minimum compute capability (major, minor).
    pub compute_capability: Option<(u32, u32)>,
}

/// Fully resolved requirements (defaults applied). Memory and disk are GB.
#[derive(Clone, Debug, PartialEq)]
pub struct Requirements {
    pub cpu: CpuSpec,
    pub memory: Range<f64>,
    pub disk: Option<Range<f64>>,
    /// `None`: no GPU requirement.
    pub gpu: Option<GpuSpec>,
}

/// Resource requirements of a machine, in dstack's syntax. Every field is optional and
/// is a string; defaults are cpu `2..`, memory `8GB..`, disk `100GB..` and no GPU.
/// A range is written `MIN..MAX`, `MIN..` (at least) or `..MAX` (at most); a single
/// value means exactly that value. Quote plain numbers in YAML (`cpu: "8"`).
/// Example: `{gpu: "A100:80GB:2", memory: "64GB.."}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// Number of CPU cores, optionally with the CPU architecture: `COUNT` or `ARCH:COUNT`.
    /// COUNT is a number or a range: `8` (exactly 8), `2..` (at least 2), `..16` (at most
    /// 16), `4..8`. ARCH is `x86` or `arm` (also `x86_64`, `amd64`, `arm64`, `aarch64`).
    /// Examples: "16..", "arm:4..8". Default: "2..".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\sA-Za-z0-9_.:]+$"))]
    pub cpu: Option<String>,
    /// Memory (RAM) of the machine: a size or a range of sizes. Units are `MB`, `GB` and
    /// `TB` (any case, 1TB = 1024GB); a number without a unit is in GB. Examples: "64GB"
    /// (exactly), "64GB.." (at least), "64GB..256GB", "..1TB". Default: "8GB..".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\sA-Za-z0-9.]+$"))]
    pub memory: Option<String>,
    /// Size of the machine's disk: a size or a range of sizes, written like `memory`.
    /// Examples: "200GB", "500GB..", "1TB..2TB". Default: "100GB..".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\sA-Za-z0-9.]+$"))]
    pub disk: Option<String>,
    /// GPUs of the machine: up to four parts separated by `:`, in any order, each at most
    /// once. NAMES: GPU models, comma-separated alternatives, e.g. `A100,H100` (TPUs as
    /// `v5p-8`). VENDOR: `nvidia`, `amd`, `intel`, `tpu` (or `google`), `tenstorrent`.
    /// COUNT: a number or a range, e.g. `2` or `1..4`; `1..` when not given. MEMORY per
    /// GPU: a size with a unit or a range of sizes, e.g. `80GB` or `24GB..`.
    /// Examples: "A100:2", "24GB..", "A100,H100:80GB:1..2", "nvidia:24GB..", "H100:8".
    /// Unset: no GPU is required. "0": no GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\sA-Za-z0-9_.,:-]+$"))]
    pub gpu: Option<String>,
    /// Total memory of all GPUs of the machine together: a size or a range of sizes,
    /// written like `memory`, e.g. "160GB..". Implies a GPU requirement (count `1..`
    /// unless `gpu` gives one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\sA-Za-z0-9.]+$"))]
    pub gpu_total_memory: Option<String>,
    /// Minimum CUDA compute capability of the GPUs as `MAJOR.MINOR`, e.g. "8.0" (quote it
    /// in YAML). Only NVIDIA GPUs have one. Implies a GPU requirement (count `1..` unless
    /// `gpu` gives one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\s*[0-9]+\s*\.\s*[0-9]+\s*$"))]
    pub compute_capability: Option<String>,
}

/// A requirement that could not be parsed: names the field and the offending token.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid {field} {token:?}: {reason}")]
pub struct SpecError {
    /// e.g. `resources.gpu`
    pub field: String,
    pub token: String,
    pub reason: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, token: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError { field: field.into(), token: token.into(), reason: reason.into() }
    }
}

/// Default CPU count: `2..`.
pub const DEFAULT_CPU_COUNT: Range<u32> = Range { min: Some(2), max: None };
/// Default memory: `8GB..`.
pub const DEFAULT_MEMORY: Range<f64> = Range { min: Some(8.0), max: None };
/// Default disk: `100GB..`.
pub const DEFAULT_DISK: Range<f64> = Range { min: Some(100.0), max: None };
/// GPU count when a GPU is asked for without a count: `1..`.
pub const DEFAULT_GPU_COUNT: Range<u32> = Range { min: Some(1), max: None };

impl ResourcesSpec {
    /// Parses every field and applies the defaults.
    pub fn resolve(&self) -> Result<Requirements, SpecError> {
        self.resolve_stripped().map_err(|e| self.as_written(e))
    }

    /// `e` naming what the user wrote: the parsers drop whitespace inside a value, so a
    /// token they name may not appear in it (`", 0"` parses as `",0"`); then the error
    /// names the whole value as written.
    fn as_written(&self, mut e: SpecError) -> SpecError {
        let written = match e.field.as_str() {
            "resources.cpu" => &self.cpu,
            "resources.memory" => &self.memory,
            "resources.disk" => &self.disk,
            "resources.gpu" => &self.gpu,
            "resources.gpuTotalMemory" => &self.gpu_total_memory,
            "resources.computeCapability" => &self.compute_capability,
            _ => return e,
        };
        if let Some(w) = written.as_deref().filter(|w| !w.contains(e.token.as_str())) {
            e.token = w.trim_matches(|c: char| c.is_ascii_whitespace()).to_string();
        }
        e
    }

    fn resolve_stripped(&self) -> Result<Requirements, SpecError> {
        let cpu = match &self.cpu {
            Some(s) => parse_cpu("resources.cpu", s)?,
            None => CpuSpec { arch: None, count: DEFAULT_CPU_COUNT },
        };
        let memory = match &self.memory {
            Some(s) => parse_memory("resources.memory", s)?,
            None => DEFAULT_MEMORY,
        };
        let disk = match &self.disk {
            Some(s) => parse_memory("resources.disk", s)?,
            None => DEFAULT_DISK,
        };
        let mut gpu = self.gpu.as_deref().map(|s| parse_gpu("resources.gpu", s)).transpose()?;
        let total_memory =
            self.gpu_total_memory.as_deref().map(|s| parse_memory("resources.gpuTotalMemory", s)).transpose()?;
        let compute_capability = self
            .compute_capability
            .as_deref()
            .map(|s| parse_compute_capability("resources.computeCapability", s))
            .transpose()?;
        if total_memory.is_some() || compute_capability.is_some() {
            let g = gpu.get_or_insert_with(|| GpuSpec {
                vendor: None,
                names: vec![],
                count: DEFAULT_GPU_COUNT,
                memory: None,
                total_memory: None,
                compute_capability: None,
            });
            g.total_memory = total_memory;
            g.compute_capability = compute_capability;
        }
        Ok(Requirements { cpu, memory, disk: Some(disk), gpu })
    }
}

impl Requirements {
    /// One line for humans, in the spirit of dstack's output:
    /// `cpu=2.. mem=8GB.. disk=100GB.. gpu=A100:80GB:1..`, followed by
    /// `gpuTotalMemory=…` and `computeCapability=…` when set.
    pub fn render(&self) -> String {
        let mut out = format!("cpu={} mem={}", self.cpu, self.memory);
        if let Some(disk) = &self.disk {
            out.push_str(&format!(" disk={disk}"));
        }
        if let Some(gpu) = &self.gpu {
            out.push_str(&format!(" gpu={gpu}"));
            if let Some(total) = &gpu.total_memory {
                out.push_str(&format!(" gpuTotalMemory={total}"));
            }
            if let Some((major, minor)) = gpu.compute_capability {
                out.push_str(&format!(" computeCapability={major}.{minor}"));
            }
        }
        out
    }
}

impl fmt::Display for Requirements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

// ---------------------------------------------------------------------------------------
// Parsers
// ---------------------------------------------------------------------------------------

/// Parses a CPU spec `[ARCH:]COUNT` (tokens in any order), e.g. `8`, `2..`, `arm:4..8`.
/// Without a count the default `2..` is used.
pub fn parse_cpu(field: &str, s: &str) -> Result<CpuSpec, SpecError> {
    let spec = strip_ws(s);
    if spec.is_empty() {
        return Err(SpecError::new(field, spec, "empty CPU spec: give a count such as `2..`"));
    }
    let mut arch = None;
    let mut count = None;
    for token in spec.split(':') {
        if token.is_empty() {
            return Err(empty_part(field, &spec));
        }
        if token.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '.' | '-' | '+')) {
            if count.is_some() {
                return Err(SpecError::new(field, token, "more than one CPU count"));
            }
            count = Some(parse_count_range(field, token)?);
        } else {
            let a = parse_arch(token)
                .ok_or_else(|| SpecError::new(field, token, "unknown CPU architecture: use `x86` or `arm`"))?;
            if arch.is_some() {
                return Err(SpecError::new(field, token, "more than one CPU architecture"));
            }
            arch = Some(a);
        }
    }
    Ok(CpuSpec { arch, count: count.unwrap_or(DEFAULT_CPU_COUNT) })
}

/// Parses a size or a range of sizes in GB: `8GB`, `512MB..`, `..1TB`, `64..128`
/// (a bare number is GB).
pub fn parse_memory(field: &str, s: &str) -> Result<Range<f64>, SpecError> {
    let spec = strip_ws(s);
    if spec.is_empty() {
        return Err(SpecError::new(field, spec, "empty size: give a size such as `16GB` or `16GB..`"));
    }
    parse_range(field, &spec, size_value, show_gb)
}

/// Parses a count or a range of counts: `8`, `2..`, `..16`, `4..8`.
pub fn parse_count_range(field: &str, s: &str) -> Result<Range<u32>, SpecError> {
    let spec = strip_ws(s);
    if spec.is_empty() {
        return Err(SpecError::new(field, spec, "empty count: give a number such as `2` or `2..`"));
    }
    parse_range(field, &spec, count_value, |v| v.to_string())
}

/// Parses a GPU spec: `:`-separated names, vendor, count and memory, in any order, e.g.
/// `A100:2`, `24GB..`, `A100,H100:80GB:1..2`, `nvidia:24GB..`. Count defaults to `1..`.
pub fn parse_gpu(field: &str, s: &str) -> Result<GpuSpec, SpecError> {
    let spec = strip_ws(s);
    if spec.is_empty() {
        return Err(SpecError::new(field, spec, "empty GPU spec: give a name, count or memory such as `A100:2`"));
    }
    let mut vendor = None;
    let mut names: Option<Vec<String>> = None;
    // Per name: the vendor it implies (a `tpu-` prefix, or a known model).
    let mut implied: Vec<Option<GpuVendor>> = Vec::new();
    let mut count = None;
    let mut memory = None;
    for token in spec.split(':') {
        if token.is_empty() {
            return Err(empty_part(field, &spec));
        }
        let dup = |what: &str| SpecError::new(field, token, format!("more than one GPU {what} in the spec"));
        if let Some(v) = parse_vendor(token) {
            if vendor.is_some() {
                return Err(dup("vendor"));
            }
            vendor = Some(v);
        } else if token.starts_with(|c: char| c.is_ascii_alphabetic()) {
            if names.is_some() {
                return Err(SpecError::new(
                    field,
                    token,
                    "more than one list of GPU names (separate alternatives with `,`)",
                ));
            }
            let mut list = Vec::new();
            for name in token.split(',') {
                let (name, tpu) = parse_gpu_name(field, token, name)?;
                implied.push(if tpu { Some(GpuVendor::Tpu) } else { known_vendor(name) });
                list.push(name.to_string());
            }
            names = Some(list);
        } else if token.contains(|c: char| c.is_ascii_alphabetic()) {
            if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                return Err(SpecError::new(field, token, "unknown GPU token"));
            }
            if memory.is_some() {
                return Err(dup("memory"));
            }
            memory = Some(parse_range(field, token, size_value, show_gb)?);
        } else if token.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+')) {
            if count.is_some() {
                return Err(dup("count"));
            }
            let gpu_count = |v: &str| {
                count_value(v).map_err(|reason| {
                    if v.contains('.') {
                        format!("{reason} (GPU memory needs a unit, e.g. `24GB`)")
                    } else {
                        reason
                    }
                })
            };
            count = Some(parse_range(field, token, gpu_count, |v| v.to_string())?);
        } else {
            return Err(SpecError::new(field, token, "unknown GPU token"));
        }
    }
    let names = names.unwrap_or_default();
    let count = count.unwrap_or(DEFAULT_GPU_COUNT);
    // As dstack: no inference when no GPU is asked for (`0`).
    let vendor = vendor.or_else(|| if count.max == Some(0) { None } else { single_vendor(implied) });
    Ok(GpuSpec { vendor, names, count, memory, total_memory: None, compute_capability: None })
}

/// Parses a compute capability `MAJOR.MINOR`, e.g. `8.0`, `9.0`, `12.0`.
pub fn parse_compute_capability(field: &str, s: &str) -> Result<(u32, u32), SpecError> {
    let spec = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let bad = |reason: &str| SpecError::new(field, spec, reason);
    let Some((major, minor)) = spec.split_once('.') else {
        return Err(bad("expected MAJOR.MINOR, e.g. `8.0`"));
    };
    let part = |p: &str| -> Result<u32, SpecError> {
        let p = p.trim_matches(|c: char| c.is_ascii_whitespace());
        if p.starts_with('-') {
            return Err(bad("negative numbers are not allowed"));
        }
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected MAJOR.MINOR, e.g. `8.0`"));
        }
        p.parse().map_err(|_| bad("number is too large"))
    };
    Ok((part(major)?, part(minor)?))
}

/// Removes ASCII whitespace everywhere, as dstack does with spaces.
fn strip_ws(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}

fn empty_part(field: &str, spec: &str) -> SpecError {
    SpecError::new(field, spec, "empty part: check the `:` separators")
}

/// Parses `a..b`, `a..`, `..b`, or `a` (exactly `a`). `token` has no whitespace.
fn parse_range<T: PartialOrd + Copy>(
    field: &str,
    token: &str,
    value: impl Fn(&str) -> Result<T, String>,
    show: impl Fn(T) -> String,
) -> Result<Range<T>, SpecError> {
    let side = |s: &str| -> Result<Option<T>, SpecError> {
        if s.is_empty() {
            Ok(None)
        } else {
            value(s).map(Some).map_err(|reason| SpecError::new(field, s, reason))
        }
    };
    let Some((lo, hi)) = token.split_once("..") else {
        let v = value(token).map_err(|reason| SpecError::new(field, token, reason))?;
        return Ok(Range::exact(v));
    };
    if hi.contains("..") {
        return Err(SpecError::new(field, token, "more than one `..` in a range"));
    }
    if lo.is_empty() && hi.is_empty() {
        return Err(SpecError::new(field, token, "empty range: give a minimum, a maximum or both, e.g. `2..`"));
    }
    let (min, max) = (side(lo)?, side(hi)?);
    if let (Some(a), Some(b)) = (min, max) {
        if a > b {
            return Err(SpecError::new(field, token, format!("min {} is greater than max {}", show(a), show(b))));
        }
    }
    Ok(Range { min, max })
}

/// A whole number (no sign).
fn count_value(s: &str) -> Result<u32, String> {
    if s.starts_with('-') {
        return Err("negative numbers are not allowed".into());
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| "number is too large".into());
    }
    if is_decimal(s) {
        return Err("not a whole number".into());
    }
    Err("not a number".into())
}

/// A size in GB: a decimal number with an optional unit `MB`, `GB` or `TB` (any case).
fn size_value(s: &str) -> Result<f64, String> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.starts_with('-') {
        return Err("negative sizes are not allowed".into());
    }
    if num.is_empty() {
        return Err("expected a number with an optional unit, e.g. `16GB`".into());
    }
    if !is_decimal(num) {
        return Err(format!("`{num}` is not a number"));
    }
    let value: f64 = num.parse().map_err(|_| format!("`{num}` is not a number"))?;
    let value = match unit.to_ascii_lowercase().as_str() {
        "" | "gb" => value,
        "mb" => value / 1024.0,
        "tb" => value * 1024.0,
        _ => return Err(format!("unknown unit `{unit}`: use MB, GB or TB")),
    };
    if !value.is_finite() {
        return Err("number is too large".into());
    }
    Ok(value)
}

/// `DIGITS` or `DIGITS.DIGITS`.
fn is_decimal(s: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(s),
    }
}

fn show_gb(v: f64) -> String {
    format!("{v}GB")
}

fn parse_arch(token: &str) -> Option<CpuArch> {
    match token.to_ascii_lowercase().as_str() {
        "x86" | "x86_64" | "amd64" => Some(CpuArch::X86),
        "arm" | "arm64" | "aarch64" => Some(CpuArch::Arm),
        _ => None,
    }
}

fn parse_vendor(token: &str) -> Option<GpuVendor> {
    match token.to_ascii_lowercase().as_str() {
        "nvidia" => Some(GpuVendor::Nvidia),
        "amd" => Some(GpuVendor::Amd),
        "tpu" | "google" => Some(GpuVendor::Tpu),
        "intel" => Some(GpuVendor::Intel),
        "tenstorrent" | "tt" => Some(GpuVendor::Tenstorrent),
        _ => None,
    }
}

/// Checks one name of a names list; returns it without a `tpu-` prefix and whether it
/// had one.
fn parse_gpu_name<'a>(field: &str, token: &str, name: &'a str) -> Result<(&'a str, bool), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new(field, token, "empty GPU name: check the `,` separators"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(SpecError::new(field, name, "invalid GPU name: use letters, digits, `-` and `_`"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(SpecError::new(field, name, "invalid GPU name: names start with a letter"));
    }
    // The name is ASCII from here on.
    if name.len() >= 4 && name[..4].eq_ignore_ascii_case("tpu-") {
        let rest = &name[4..];
        if rest.is_empty() {
            return Err(SpecError::new(field, name, "empty TPU name after `tpu-`"));
        }
        return Ok((rest, true));
    }
    Ok((name, false))
}

/// The vendor of a set of names, as dstack infers it: set only when every name is a known
/// model and they all belong to the same vendor.
pub fn infer_vendor(names: &[String]) -> Option<GpuVendor> {
    single_vendor(names.iter().map(|n| known_vendor(n)))
}

/// `Some(v)` when every item is `Some(v)` for one `v`.
fn single_vendor(vendors: impl IntoIterator<Item = Option<GpuVendor>>) -> Option<GpuVendor> {
    let mut found = None;
    for v in vendors {
        let v = v?;
        if found.is_some_and(|f| f != v) {
            return None;
        }
        found = Some(v);
    }
    found
}

/// The vendor of a known accelerator model (case-insensitive), from gpuhunt's lists.
pub fn known_vendor(name: &str) -> Option<GpuVendor> {
    let name = name.to_ascii_lowercase();
    let n = name.as_str();
    if KNOWN_NVIDIA.contains(&n) {
        return Some(GpuVendor::Nvidia);
    }
    if KNOWN_AMD.contains(&n) {
        return Some(GpuVendor::Amd);
    }
    if KNOWN_INTEL.contains(&n) {
        return Some(GpuVendor::Intel);
    }
    if KNOWN_TENSTORRENT.contains(&n) {
        return Some(GpuVendor::Tenstorrent);
    }
    // TPUs are named VERSION-CORES, e.g. `v5p-8`.
    if let Some((version, cores)) = n.split_once('-') {
        if KNOWN_TPU_VERSIONS.contains(&version) && !cores.is_empty() && cores.bytes().all(|b| b.is_ascii_digit()) {
            return Some(GpuVendor::Tpu);
        }
    }
    None
}

// gpuhunt 0.1.34 `KNOWN_*` lists, lower-cased.
#[rustfmt::skip]
const KNOWN_NVIDIA: &[&str] = &[
    "a10", "a16", "a40", "a100", "a10g", "a4000", "a4500", "a5000", "a6000", "h100", "h100nvl",
    "h200", "h200nvl", "b200", "gb200", "b300", "gb300", "l4", "l40", "l40s", "p100", "rtx2060",
    "rtx2060super", "rtx2070", "rtx2070super", "rtx2080", "rtx2080super", "rtx2080ti", "rtx3050",
    "rtx3060", "rtx3060ti", "rtx3070", "rtx3070ti", "rtx3080", "rtx3080ti", "rtx3090", "rtx3090ti",
    "rtx4060", "rtx4060ti", "rtx4070", "rtx4070super", "rtx4070ti", "rtx4070tisuper", "rtx4080",
    "rtx4080super", "rtx4090", "rtx5060", "rtx5060ti", "rtx5070", "rtx5070ti", "rtx5080", "rtx5090",
    "rtx6000", "rtx2000ada", "rtx4000ada", "rtx6000ada", "rtxpro4500", "rtxpro6000", "t4", "v100",
    "gh200",
];
#[rustfmt::skip]
const KNOWN_AMD: &[&str] = &[
    "mi100", "mi210", "mi250", "mi250x", "mi300a", "mi300x", "mi308x", "mi325x", "mi350x", "mi355x",
];
#[rustfmt::skip]
const KNOWN_INTEL: &[&str] = &["gaudi", "gaudi2", "gaudi3"];
#[rustfmt::skip]
const KNOWN_TENSTORRENT: &[&str] = &[
    "n150", "n300", "tt-galaxy-wh", "p100a", "p150", "p300", "tt-galaxy-bh",
];
#[rustfmt::skip]
const KNOWN_TPU_VERSIONS: &[&str] = &["v2", "v3", "v4", "v5p", "v5litepod", "v6e"];

// ---------------------------------------------------------------------------------------
// Display: back into the grammar
// ---------------------------------------------------------------------------------------

fn fmt_range<T: PartialEq + Copy>(r: &Range<T>, f: &mut fmt::Formatter<'_>, show: impl Fn(T) -> String) -> fmt::Result {
    match (r.min, r.max) {
        (Some(a), Some(b)) if a == b => f.write_str(&show(a)),
        (min, max) => write!(f, "{}..{}", min.map(&show).unwrap_or_default(), max.map(&show).unwrap_or_default()),
    }
}

/// `8`, `2..`, `..16`, `4..8`; `..` for an unbounded range (which does not parse).
impl fmt::Display for Range<u32> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_range(self, f, |v| v.to_string())
    }
}

/// Sizes in GB: `8GB`, `8GB..`, `..0.5GB`, `64GB..128GB`; `..` for an unbounded range.
impl fmt::Display for Range<f64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_range(self, f, show_gb)
    }
}

impl CpuArch {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuArch::X86 => "x86",
            CpuArch::Arm => "arm",
        }
    }
}

impl fmt::Display for CpuArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GpuVendor {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuVendor::Nvidia => "nvidia",
            GpuVendor::Amd => "amd",
            GpuVendor::Tpu => "tpu",
            GpuVendor::Intel => "intel",
            GpuVendor::Tenstorrent => "tenstorrent",
        }
    }
}

impl fmt::Display for GpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[ARCH:]COUNT`, e.g. `arm:4..8`; parses back to the same spec.
impl fmt::Display for CpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(arch) = self.arch {
            write!(f, "{arch}:")?;
        }
        write!(f, "{}", self.count)
    }
}

/// The `gpu` field grammar: `[VENDOR:][NAMES:][MEMORY:]COUNT`, e.g. `A100,H100:80GB:1..2`.
/// The vendor is left out when the names imply it. Total memory and compute capability
/// are not part of it (see [`Requirements::render`]). Parses back to the same spec when
/// those two are unset.
impl fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(vendor) = self.vendor {
            let implied = if self.count.max == Some(0) { None } else { infer_vendor(&self.names) };
            if self.names.is_empty() || implied != Some(vendor) {
                write!(f, "{vendor}:")?;
            }
        }
        if !self.names.is_empty() {
            write!(f, "{}:", self.names.join(","))?;
        }
        if let Some(memory) = &self.memory {
            write!(f, "{memory}:")?;
        }
        write!(f, "{}", self.count)
    }
}
