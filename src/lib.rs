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

/// Makes ring rustls' process-wide crypto provider (kube's TLS, the aws and lambda clients).
/// Needed when more than one provider is compiled in (rustls then refuses to pick one);
/// harmless when one is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
