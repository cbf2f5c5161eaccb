//! Embedded-resource validation, as apiextensions' `objectmeta.Validate` below the root: every
//! `x-kubernetes-embedded-resource` object needs a well-formed `apiVersion` and `kind`, and its
//! `metadata` follows the rules of embedded object metadata (path-segment names, optional
//! namespace).

use super::structural::{AdditionalProperties, Structural, join as child};
use crate::validation::{FieldError, is_dns1035_label, validate_embedded_object_meta};
use serde_json::{Map, Value};

/// `objectmeta.Validate` below the root: every `x-kubernetes-embedded-resource` object needs a
/// well-formed `apiVersion`, `kind` and `metadata`.
pub(super) fn embedded_resources(
    schema: &Structural,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::Object(map) => {
            if schema.embedded_resource {
                validate_embedded_resource(map, path, errors);
            }
            for (key, member) in map {
                if let Some(property) = schema.property(key) {
                    embedded_resources(property, member, &child(path, key), errors);
                } else if let Some(AdditionalProperties::Schema(additional)) =
                    &schema.additional_properties
                {
                    embedded_resources(additional, member, &format!("{path}[{key}]"), errors);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.items() {
                for (i, item) in items.iter().enumerate() {
                    embedded_resources(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn validate_embedded_resource(map: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    for key in ["apiVersion", "kind"] {
        if !map.contains_key(key) {
            errors.push(FieldError::required(child(path, key), "must not be empty"));
        }
    }
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" => match value {
                Value::String(v) if v.is_empty() => {
                    errors.push(FieldError::invalid(
                        child(path, key),
                        "",
                        "must not be empty",
                    ));
                }
                Value::String(v) if v.matches('/').count() > 1 => {
                    errors.push(FieldError::invalid(
                        child(path, key),
                        v.as_str(),
                        format!("unexpected GroupVersion string: {v}"),
                    ));
                }
                Value::String(_) => {}
                other => errors.push(FieldError::invalid(
                    child(path, key),
                    other.clone(),
                    "must be a string",
                )),
            },
            "kind" => match value {
                Value::String(v) if v.is_empty() => {
                    errors.push(FieldError::invalid(
                        child(path, key),
                        "",
                        "must not be empty",
                    ));
                }
                Value::String(v) => {
                    let problems = is_dns1035_label(&v.to_lowercase());
                    if !problems.is_empty() {
                        errors.push(FieldError::invalid(
                            child(path, key),
                            v.as_str(),
                            format!(
                                "may have mixed case, but should otherwise match: {}",
                                problems.join(",")
                            ),
                        ));
                    }
                }
                other => errors.push(FieldError::invalid(
                    child(path, key),
                    other.clone(),
                    "must be a string",
                )),
            },
            "metadata" => errors.extend(validate_embedded_object_meta(&child(path, key), value)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{check, spec};
    use serde_json::json;

    #[test]
    fn embedded_resources() {
        let schema = spec(
            json!({"template": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}}),
        );
        check(
            schema.clone(),
            json!({"spec": {"template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"template": {}}}),
            &[
                "spec.template.apiVersion: Required value: must not be empty",
                "spec.template.kind: Required value: must not be empty",
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"template": {"apiVersion": "a/b/c", "kind": "Bad_Kind", "metadata": {"name": "a/b"}}}}),
            &[
                r#"spec.template.apiVersion: Invalid value: "a/b/c": unexpected GroupVersion string: a/b/c"#,
                r#"spec.template.kind: Invalid value: "Bad_Kind": may have mixed case, but should otherwise match: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"#,
                r#"spec.template.metadata.name: Invalid value: "a/b": may not contain '/'"#,
            ],
        );
    }
}
