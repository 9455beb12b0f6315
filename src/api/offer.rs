//! An offer: one machine shape a backend can launch in one region, at one price.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::resources::{CpuArch, GpuVendor};

/// A machine type that a backend can launch, as listed by its offer catalog.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    /// Name of the `Backend` object that provides this offer.
    pub backend: String,
    /// Region (or location) the machine runs in.
    pub region: String,
    /// The provider's name for the machine type, e.g. `p4d.24xlarge`.
    pub instance_type: String,
    /// Number of virtual CPUs.
    pub cpu: u32,
    /// CPU architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_arch: Option<CpuArch>,
    /// Memory in GB.
    pub memory: f64,
    /// Boot disk size in GB; absent when the disk size is chosen at launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<f64>,
    /// Number of GPUs.
    #[serde(default)]
    pub gpu_count: u32,
    /// GPU model, e.g. `A100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_name: Option<String>,
    /// Memory of one GPU in GB.
    #[serde(default)]
    pub gpu_memory: f64,
    /// GPU vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vendor: Option<GpuVendor>,
    /// GPU compute capability as `MAJOR.MINOR` (NVIDIA only), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// Whether this is a spot (interruptible) machine.
    #[serde(default)]
    pub spot: bool,
    /// Price in US dollars per hour.
    pub price: f64,
}

impl Offer {
    /// A short human description, e.g. `24xCPU, 220GB, 1xA100 (80GB), 100GB (disk)`.
    pub fn resources_summary(&self) -> String {
        let mut s = format!("{}xCPU, {}GB", self.cpu, fmt_num(self.memory));
        if self.gpu_count > 0 {
            s.push_str(&format!(
                ", {}x{} ({}GB)",
                self.gpu_count,
                self.gpu_name.as_deref().unwrap_or("GPU"),
                fmt_num(self.gpu_memory)
            ));
        }
        if let Some(disk) = self.disk {
            s.push_str(&format!(", {}GB (disk)", fmt_num(disk)));
        }
        s
    }
}

/// Formats a number without a trailing `.0` for whole values.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}
