//! Admission as the API server does it, without one: manifests are checked against the
//! committed CRDs' structural schemas (types, enums, minimums, patterns) and their CEL
//! rules (`x-kubernetes-validations`, including transition rules against the old object).
//! The examples under `deploy/examples` must be admitted; obviously wrong objects must
//! be rejected with a message that names the field and the value.

use std::path::Path;

use kpool::api::backend::Backend;
use kpool::api::instance::Instance;
use kpool::api::pool::Pool;
use kpool::api::profile::Profile;
use kpool::api::run::Run;
use kube::core::cel::Validator;
use serde_json::{json, Value};

fn schema(kind: &str) -> Value {
    let plural = format!("{}s", kind.to_lowercase());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("crds/{plural}.kpool.dev.yaml"));
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Every error the API server would report for creating `obj` (or updating `old` to it).
fn admit(obj: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema(obj["kind"].as_str().expect("kind"));
    let structural =
        jsonschema::options().with_draft(jsonschema::Draft::Draft4).build(&schema).expect("schema compiles");
    let mut errors: Vec<String> =
        structural.iter_errors(obj).map(|e| format!("{}: {}", e.instance_path(), e)).collect();
    if let Err(cel) = Validator::new().validate(&schema, obj, old) {
        errors.extend(cel.iter().map(|e| format!("{}: {}", e.field_path, e.message)));
    }
    errors
}

fn examples() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    assert!(out.len() >= 5, "examples found: {}", out.len());
    out
}

#[test]
fn every_example_is_admitted_and_reads_back_into_its_type() {
    for (file, obj) in examples() {
        let errors = admit(&obj, None);
        assert!(errors.is_empty(), "{file}: {errors:?}");
        // The API server prunes unknown fields silently; an example must not carry any,
        // so it reads back into kpool's type and serialises to itself.
        let kind = obj["kind"].as_str().unwrap().to_string();
        let back = match kind.as_str() {
            "Run" => {
                let run: Run = serde_json::from_value(obj.clone()).unwrap();
                run.spec.resources.resolve().unwrap_or_else(|e| panic!("{file}: {e}"));
                serde_json::to_value(run).unwrap()
            }
            "Instance" => {
                let inst: Instance = serde_json::from_value(obj.clone()).unwrap();
                inst.spec.resources.resolve().unwrap_or_else(|e| panic!("{file}: {e}"));
                serde_json::to_value(inst).unwrap()
            }
            "Pool" => serde_json::to_value(serde_json::from_value::<Pool>(obj.clone()).unwrap()).unwrap(),
            "Profile" => serde_json::to_value(serde_json::from_value::<Profile>(obj.clone()).unwrap()).unwrap(),
            "Backend" => serde_json::to_value(serde_json::from_value::<Backend>(obj.clone()).unwrap()).unwrap(),
            other => panic!("{file}: unexpected kind {other}"),
        };
        assert_eq!(back, obj, "{file}: fields kpool does not know would be pruned");
    }
}

fn run(spec: Value) -> Value {
    json!({"apiVersion": "kpool.dev/v1alpha1", "kind": "Run", "metadata": {"name": "r", "namespace": "ml"}, "spec": spec})
}

fn instance(spec: Value) -> Value {
    json!({"apiVersion": "kpool.dev/v1alpha1", "kind": "Instance", "metadata": {"name": "i", "namespace": "ml"}, "spec": spec})
}

/// Asserts exactly one error, at `path`, whose message mentions every one of `words`.
fn rejected(obj: Value, old: Option<&Value>, path: &str, words: &[&str]) {
    let errors = admit(&obj, old);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with(path), "{errors:?} not at {path}");
    for w in words {
        assert!(errors[0].contains(w), "{errors:?} does not mention {w:?}");
    }
}

#[test]
fn wrong_values_are_rejected_naming_the_field_and_the_value() {
    rejected(run(json!({"maxPrice": -1.5})), None, "/spec/maxPrice", &["-1.5", "minimum"]);
    rejected(run(json!({"spotPolicy": "sometimes"})), None, "/spec/spotPolicy", &["sometimes"]);
    rejected(run(json!({"idleDuration": "5 minutes"})), None, "/spec/idleDuration", &["5 minutes"]);
    rejected(run(json!({"maxDuration": "2 hours"})), None, "/spec/maxDuration", &["2 hours"]);
    rejected(run(json!({"retry": {"on": ["never"]}})), None, "/spec/retry/on/0", &["never"]);
    rejected(run(json!({"creationPolicy": "Always"})), None, "/spec/creationPolicy", &["Always"]);
    rejected(instance(json!({"terminationPolicy": "Never"})), None, "/spec/terminationPolicy", &["Never"]);
    let pool = json!({"apiVersion": "kpool.dev/v1alpha1", "kind": "Pool", "metadata": {"name": "p"}, "spec": {"maxInstances": -1}});
    rejected(pool, None, "/spec/maxInstances", &["-1"]);
    let backend = json!({"apiVersion": "kpool.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "b"}, "spec": {"type": "gcp"}});
    rejected(backend, None, "/spec/type", &["gcp"]);
}

#[test]
fn the_policy_values_users_write_are_accepted() {
    for spec in [
        json!({"spotPolicy": "auto", "maxPrice": 0, "idleDuration": "off"}),
        json!({"spotPolicy": "on-demand", "idleDuration": "90s", "maxDuration": "1d"}),
        json!({"spotPolicy": "spot", "idleDuration": "-1", "retry": {"on": ["no-capacity", "interruption", "error"], "duration": "2h"}}),
        json!({"creationPolicy": "Reuse", "terminationPolicy": "DontDestroy", "regions": ["us-east-1"], "backends": ["aws"]}),
    ] {
        let errors = admit(&run(spec.clone()), None);
        assert!(errors.is_empty(), "{spec}: {errors:?}");
    }
}

#[test]
fn an_instance_s_requirements_and_pool_cannot_change_after_creation() {
    let old = instance(json!({"pool": "training", "resources": {"gpu": "A100:1"}}));
    assert!(admit(&old, Some(&old)).is_empty(), "an unchanged update is admitted");
    let policy_change = instance(json!({"pool": "training", "resources": {"gpu": "A100:1"}, "idleDuration": "1h"}));
    assert!(admit(&policy_change, Some(&old)).is_empty(), "policies may change");
    let resized = instance(json!({"pool": "training", "resources": {"gpu": "H100:1"}}));
    rejected(resized, Some(&old), "spec.resources", &["immutable"]);
    let moved = instance(json!({"pool": "other", "resources": {"gpu": "A100:1"}}));
    rejected(moved, Some(&old), "spec.pool", &["immutable"]);
}

#[test]
fn a_run_s_requirements_cannot_change_after_creation() {
    let old = run(json!({"resources": {"cpu": "8.."}, "commands": ["make"]}));
    let stopped = run(json!({"resources": {"cpu": "8.."}, "commands": ["make"], "stop": true}));
    assert!(admit(&stopped, Some(&old)).is_empty(), "stopping a run is an update users make");
    let resized = run(json!({"resources": {"cpu": "16.."}, "commands": ["make"]}));
    rejected(resized, Some(&old), "spec.resources", &["immutable"]);
}

#[test]
fn the_spot_price_refresh_of_an_aws_backend_is_bounded() {
    let backend = |seconds: i64| {
        json!({"apiVersion": "kpool.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "ec2", "namespace": "ml"},
               "spec": {"type": "aws", "regions": ["us-east-1"], "credentials": {"secretRef": {"name": "aws"}},
                        "catalog": {"configMapRef": {"name": "offers"}},
                        "aws": {"imageId": "ami-0123456789abcdef0", "spotPriceRefreshSeconds": seconds}}})
    };
    for ok in [60, 600, 86400] {
        let errors = admit(&backend(ok), None);
        assert!(errors.is_empty(), "{ok}: {errors:?}");
    }
    rejected(backend(30), None, "/spec/aws/spotPriceRefreshSeconds", &["30", "minimum"]);
    rejected(backend(86401), None, "/spec/aws/spotPriceRefreshSeconds", &["86401", "maximum"]);
}
