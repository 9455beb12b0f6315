//! dstack's resource requirement grammar: `cpu`, `memory`, `disk` and `gpu` specs.
//!
//! INTERFACE (owned by the grammar work; the parser bodies are filled in there).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// Resource requirements as users write them, in dstack's syntax. Every field is
/// optional; defaults are cpu `2..`, memory `8GB..`, disk `100GB..`, no GPU.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_total_memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

impl ResourcesSpec {
    /// Parses every field and applies the defaults.
    pub fn resolve(&self) -> Result<Requirements, SpecError> {
        let _ = self;
        Err(SpecError { field: "resources".into(), token: String::new(), reason: "parser not built yet".into() })
    }
}
