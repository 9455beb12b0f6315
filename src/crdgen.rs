//! Renders the CRDs as YAML, one document per kind, for `crds/` and `kpool crdgen`.

use crate::api;

/// `(file name, YAML)` for every CRD, e.g. `("instances.kpool.dev.yaml", "...")`.
pub fn render() -> Vec<(String, String)> {
    api::crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(&crd).expect("a CRD always serializes");
            (format!("{name}.yaml"), yaml)
        })
        .collect()
}

/// All CRDs in one multi-document YAML stream.
pub fn render_all() -> String {
    render().into_iter().map(|(_, y)| format!("---\n{y}")).collect::<Vec<_>>().join("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` is generated from the Rust types; this fails when it drifts.
    /// Regenerate with `cargo run --bin kpool -- crdgen --out crds`.
    #[test]
    fn committed_crds_match_the_code() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for (file, yaml) in render() {
            let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| {
                panic!("crds/{file} is missing ({e}); run `cargo run --bin kpool -- crdgen --out crds`")
            });
            assert!(
                committed == yaml,
                "crds/{file} differs from the Rust types; run `cargo run --bin kpool -- crdgen --out crds`"
            );
        }
    }
}
