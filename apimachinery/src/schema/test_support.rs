//! The helpers the schema's unit tests share: a table-style `check` of validation messages and
//! a `spec` wrapper that places properties under `.spec` of an object schema.

use serde_json::{Value, json};

use super::Structural;

/// Validates `object` against `schema` and asserts the messages, in order.
pub(super) fn check(schema: Value, object: Value, expected: &[&str]) {
    let schema = Structural::from_value(&schema).unwrap_or_else(|e| panic!("{e}"));
    let actual: Vec<String> = schema
        .validate(&object)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(actual, expected, "object {object}");
}

/// An object schema whose `spec` is an object with these `properties`.
pub(super) fn spec(properties: Value) -> Value {
    json!({"type": "object", "properties": {"spec": {"type": "object", "properties": properties}}})
}
