//! The admission corpus, shared by `tests/admission.rs` (checked in memory: the committed
//! CRDs' structural schemas with `jsonschema`, their CEL rules with kube's `cel` Validator)
//! and `tests/cluster_admission.rs` (sent to a real kube-apiserver). Both must give every
//! case its expected answer, so the in-memory checks and the server cannot drift apart.
//!
//! Fields are named as the API server names them in `Status.details.causes[].field`:
//! `spec.retry.onEvents[0]`, `spec.ssh.hosts`. The in-memory side first changes a body as
//! the server does (`server_semantics`: pruning, defaulting, `null`s, status).
#![allow(dead_code)] // each test binary uses its own part

pub mod cases;
mod server_semantics;

use std::path::Path;

use kube::core::cel::{ValidationErrors, Validator};
use serde_json::Value;

pub use cases::cases;
#[allow(unused_imports)] // each test binary uses its own part
pub use server_semantics::{normalise, prepare};

/// What the API server answers to a case.
#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    Admitted,
    /// Rejected with exactly one error, at `field`, whose message contains every one of
    /// `words`. The server and jsonschema word their messages differently, so the words are
    /// ones both say: the value, or the CEL rule's message (none for a missing field: the
    /// server only says "Required value").
    Rejected {
        field: &'static str,
        words: &'static [&'static str],
    },
}

/// One object to admit: created, or, with `old`, an update of `old` to `obj`.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub obj: Value,
    pub old: Option<Value>,
    pub expected: Expected,
}

/// One error of an admission: the field, named as the API server names it, and the message.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub field: String,
    pub message: String,
}

/// The field of the note the server adds when a schema error kept it from running the CEL
/// rules (not an error of its own: `check` skips it).
pub const NOT_CHECKED: &str = "<nil>";
const NOT_CHECKED_MESSAGE: &str = "some validation rules were not checked because the object was invalid";

/// Whether `findings` are what `expected` says, or why not.
pub fn check(expected: &Expected, findings: &[Finding]) -> Result<(), String> {
    let findings: Vec<&Finding> = findings.iter().filter(|f| f.field != NOT_CHECKED).collect();
    match expected {
        Expected::Admitted if findings.is_empty() => Ok(()),
        Expected::Admitted => Err(format!("expected admitted, got {findings:?}")),
        Expected::Rejected { field, words } => {
            let [finding] = findings[..] else {
                return Err(format!("expected one error at {field}, got {findings:?}"));
            };
            if finding.field != *field {
                return Err(format!("expected the error at {field}, got {finding:?}"));
            }
            match words.iter().find(|w| !finding.message.contains(*w)) {
                Some(w) => Err(format!("expected the message to mention {w:?}, got {finding:?}")),
                None => Ok(()),
            }
        }
    }
}

/// The `openAPIV3Schema` of `kind` in the committed CRD.
pub fn schema(kind: &str) -> Value {
    let plural = format!("{}s", kind.to_lowercase());
    let crd: Value = serde_yaml::from_str(&read(&format!("crds/{plural}.kpool.dev.yaml"))).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Every error the API server reports for creating `obj` (or updating `old` to it), found
/// without one: the body is first changed as the server changes it (`prepare`), then
/// checked against the structural schema and, when that finds no error that blocks them,
/// the CEL rules.
pub fn admit(obj: &Value, old: Option<&Value>) -> Vec<Finding> {
    let schema = schema(obj["kind"].as_str().expect("kind"));
    let (obj, old) = prepare(&schema, obj, old);
    let structural =
        jsonschema::options().with_draft(jsonschema::Draft::Draft4).build(&schema).expect("schema compiles");
    let mut findings = Vec::new();
    let mut blocking = false;
    for e in structural.iter_errors(&server_semantics::without_nulls(&obj)) {
        let mut field = dotted(&e.instance_path().to_string());
        if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
            // The server names the missing field; jsonschema names the object that lacks it.
            let property = property.as_str().unwrap_or_default();
            field = if field.is_empty() { property.to_string() } else { format!("{field}.{property}") };
        }
        blocking |= server_semantics::blocks_cel(e.kind().keyword());
        findings.push(Finding { field, message: e.to_string() });
    }
    if blocking {
        if server_semantics::has_cel_rules(&schema) {
            findings.push(Finding { field: NOT_CHECKED.into(), message: NOT_CHECKED_MESSAGE.into() });
        }
        return findings;
    }
    if let Err(cel) = cel(&schema, &obj, old.as_ref()) {
        findings.extend(cel.iter().map(|e| Finding { field: e.field_path.clone(), message: e.message.clone() }));
    }
    findings
}

/// The CEL rules of `schema` on a body `prepare`d for them. They see a `null` field as
/// absent: `has()` is false and the field's own rules do not run.
pub fn cel(schema: &Value, obj: &Value, old: Option<&Value>) -> Result<(), ValidationErrors> {
    let old = old.map(server_semantics::without_nulls);
    Validator::new().validate(schema, &server_semantics::without_nulls(obj), old.as_ref())
}

/// A JSON pointer (`/spec/retry/on/0`) as the API server writes a field (`spec.retry.on[0]`).
pub fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

/// Every object of `deploy/examples/`, with its file name.
pub fn examples() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    assert!(out.len() >= 5, "examples found: {}", out.len());
    out
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}
