//! kpool: a Kubernetes operator that manages pools of cloud machines and reuses them
//! across runs.

pub mod api;
pub mod backends;
pub mod cli;
pub mod clock;
pub mod controllers;
pub mod core;
pub mod crdgen;
pub mod exec;
