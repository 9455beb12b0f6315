//! kpool: a Kubernetes operator that manages pools of cloud machines and reuses them
//! across runs.

pub mod api;
pub mod core;
pub mod crdgen;
