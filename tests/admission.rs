//! Admission as the API server does it, without one: every case of the shared corpus
//! (`tests/support_admission`) is checked against the committed CRDs' structural schemas
//! (types, enums, bounds, patterns) and their CEL rules (`x-kubernetes-validations`,
//! transition rules against the old object), after the changes the server makes to a body
//! (pruning, defaulting, `null`s, status). `tests/cluster_admission.rs` sends the same
//! corpus to a real kube-apiserver, which must answer alike.

mod support_admission;

use std::collections::BTreeSet;

use kpool::api::backend::Backend;
use kpool::api::instance::Instance;
use kpool::api::pool::Pool;
use kpool::api::profile::Profile;
use kpool::api::run::Run;
use serde_json::Value;
use support_admission::*;

#[test]
fn every_example_is_admitted_and_reads_back_into_its_type() {
    for (file, obj) in examples() {
        let findings = admit(&obj, None);
        assert!(findings.is_empty(), "{file}: {findings:?}");
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
        assert_eq!(numbers_as_f64(back), numbers_as_f64(obj), "{file}: fields kpool does not know would be pruned");
    }
}

/// `v` with every number as a float: `40` and `40.0` are the same JSON number to the API
/// server, and a price written `40` reads back as `40.0`.
fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().and_then(serde_json::Number::from_f64).map_or(Value::Number(n), Value::Number),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect()),
        other => other,
    }
}

#[test]
fn every_case_of_the_corpus_gets_its_expected_answer() {
    let failures: Vec<String> = cases()
        .iter()
        .filter_map(|case| {
            let findings = admit(&case.obj, case.old.as_ref());
            check(&case.expected, &findings).err().map(|e| format!("{}: {e}", case.name))
        })
        .collect();
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// Every `x-kubernetes-validations` rule of a CRD, as `(kind, field, rule)`, the field as
/// CEL errors name it (`spec.ssh.hosts`; list items as `[*]`).
fn cel_rules() -> BTreeSet<(String, String, String)> {
    fn collect(kind: &str, path: &str, schema: &Value, out: &mut BTreeSet<(String, String, String)>) {
        for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
            out.insert((kind.to_string(), path.to_string(), rule["rule"].as_str().unwrap().to_string()));
        }
        for (name, sub) in schema["properties"].as_object().into_iter().flatten() {
            let path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            collect(kind, &path, sub, out);
        }
        if schema["items"].is_object() {
            collect(kind, &format!("{path}[*]"), &schema["items"], out);
        }
        if schema["additionalProperties"].is_object() {
            collect(kind, &format!("{path}.*"), &schema["additionalProperties"], out);
        }
    }
    let mut out = BTreeSet::new();
    for kind in ["Backend", "Instance", "Pool", "Profile", "Run"] {
        collect(kind, "", &schema(kind), &mut out);
    }
    out
}

/// `spec.ssh.hosts[3]` as `spec.ssh.hosts[*]`.
fn any_index(field: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[*]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn every_cel_rule_of_the_crds_has_a_case_it_rejects() {
    let rules = cel_rules();
    assert_eq!(rules.len(), 9, "rules found: {rules:#?}");
    let mut broken = BTreeSet::new();
    for case in cases().iter().filter(|c| matches!(c.expected, Expected::Rejected { .. })) {
        let kind = case.obj["kind"].as_str().unwrap();
        let schema = schema(kind);
        let (obj, old) = prepare(&schema, &case.obj, case.old.as_ref());
        if let Err(errors) = cel(&schema, &obj, old.as_ref()) {
            broken.extend(errors.iter().map(|e| (kind.to_string(), any_index(&e.field_path), e.rule.clone())));
        }
    }
    let missing: Vec<_> = rules.difference(&broken).collect();
    assert!(missing.is_empty(), "CEL rules that no case of the corpus breaks: {missing:#?}");
}
