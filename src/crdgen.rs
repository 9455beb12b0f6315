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

    /// `crds/` and the Helm chart's `charts/kpool/crds/` are generated from the Rust
    /// types; this fails when either drifts. Regenerate both with
    /// `cargo run --bin kpool -- crdgen --out crds --out charts/kpool/crds`.
    #[test]
    fn committed_crds_match_the_code() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fix = "run `cargo run --bin kpool -- crdgen --out crds --out charts/kpool/crds`";
        for dir in ["crds", "charts/kpool/crds"] {
            for (file, yaml) in render() {
                let committed = std::fs::read_to_string(root.join(dir).join(&file))
                    .unwrap_or_else(|e| panic!("{dir}/{file} is missing ({e}); {fix}"));
                assert!(committed == yaml, "{dir}/{file} differs from the Rust types; {fix}");
            }
        }
    }
}
