//! What kube-apiserver does to a custom resource's body before and around validation, as
//! the in-memory admission reproduces it (each observed on the real server by
//! `tests/cluster_admission.rs`; apiextensions-apiserver's `customResourceStrategy`):
//!
//! 1. Unknown fields are pruned (no `x-kubernetes-preserve-unknown-fields` here).
//! 2. A `null` in a field that is not `nullable` is dropped, or replaced by the field's
//!    default when it has one; absent fields with a default get it (also in the stored
//!    old object, which was defaulted when it was written).
//! 3. The main resource cannot write `status` (a status subresource is enabled): a create
//!    drops it, an update keeps the stored one.
//! 4. A `null` in a `nullable` field passes every schema check; the CEL rules see the
//!    field as absent (`has()` is false, the field's own rules, transition rules
//!    included, do not run).
//! 5. CEL rules run only when the schema checks found no error of a blocking kind (wrong
//!    type, unsupported enum value, missing required field, too long, too many items);
//!    then the server adds a note (field `<nil>`) that some rules were not checked.

use serde_json::{Map, Value};

/// The body the server validates, and the stored old object, for creating `obj` (or
/// updating `old` to it).
pub fn prepare(schema: &Value, obj: &Value, old: Option<&Value>) -> (Value, Option<Value>) {
    let mut obj = obj.clone();
    normalise(schema, &mut obj);
    obj.as_object_mut().unwrap().remove("status");
    // The old object of a case was created through the main resource too: it has no
    // status, which the update keeps.
    let old = old.map(|old| {
        let mut old = old.clone();
        normalise(schema, &mut old);
        old.as_object_mut().unwrap().remove("status");
        old
    });
    (obj, old)
}

/// Steps 1 and 2 (pruning and defaulting), in place: what the server stores for a body.
pub fn normalise(schema: &Value, value: &mut Value) {
    walk(schema, value, true);
}

fn walk(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
                if !preserve {
                    let kept = |k: &String| props.contains_key(k) || (root && is_type_meta(k));
                    map.retain(|k, _| kept(k));
                }
                for (key, sub) in props {
                    fill(map, key, sub);
                    if let Some(child) = map.get_mut(key) {
                        walk(sub, child, false);
                    }
                }
            } else if let Some(sub) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for child in map.values_mut() {
                    walk(sub, child, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for item in items {
                    walk(sub, item, false);
                }
            }
        }
        _ => {}
    }
}

fn is_type_meta(key: &str) -> bool {
    matches!(key, "apiVersion" | "kind" | "metadata")
}

/// Drops or defaults a non-nullable `null`, defaults an absent field.
fn fill(map: &mut Map<String, Value>, key: &str, schema: &Value) {
    let nullable = schema.get("nullable") == Some(&Value::Bool(true));
    let default = schema.get("default");
    match (map.get(key), default) {
        (Some(Value::Null), _) if nullable => {}
        (Some(Value::Null), None) => {
            map.remove(key);
        }
        (Some(Value::Null) | None, Some(d)) => {
            map.insert(key.to_string(), d.clone());
        }
        _ => {}
    }
}

/// The body as the structural checks and the CEL rules see it: `null`s left after
/// `normalise` are in nullable fields, which pass the schema and are absent for CEL
/// (step 4).
pub fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Whether a schema error of this keyword stops the server from running the CEL rules
/// (apiextensions-apiserver's `hasBlockingErr`).
pub fn blocks_cel(keyword: &str) -> bool {
    matches!(keyword, "type" | "enum" | "required" | "maxLength" | "maxItems")
}

/// Whether `schema` has a CEL rule anywhere (the server runs none, and adds no note about
/// them, for a kind without).
pub fn has_cel_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map.contains_key("x-kubernetes-validations") || map.values().any(has_cel_rules),
        Value::Array(items) => items.iter().any(has_cel_rules),
        _ => false,
    }
}
