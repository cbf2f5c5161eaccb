//! Validation against a structural schema, as the apiextensions-apiserver does it for a custom
//! resource (`customresource/validator.go`):
//!
//! 1. kube-openapi's schema validator (`validate.SchemaValidator`), whose errors are converted
//!    to field errors as `kubeOpenAPIResultToFieldErrors` converts them;
//! 2. list-type uniqueness (`listtype.ValidateListSetsAndMaps`);
//! 3. embedded resources (`objectmeta.Validate`): `apiVersion`, `kind` and `metadata`.
//!
//! kube-openapi names fields `spec.items[0].cpus`, and its messages repeat that name with
//! `in body` (`spec.cpus in body must be of type integer: "string"`). Errors without a field
//! (from `anyOf`, `oneOf`, `allOf`, `not`) carry the field `<nil>`, exactly as Kubernetes
//! reports them.
//!
//! Where this differs from Kubernetes, on purpose:
//! - `format: int32` / `int64` bound integers (Kubernetes strips these formats and checks
//!   nothing), reported as `maximum`/`minimum` errors.
//! - `multipleOf` on integers uses the real factor (Kubernetes truncates a fractional factor).
//! - `anyOf`/`oneOf` report the failing alternative with the fewest errors (Kubernetes picks the
//!   one with the most passing checks).

use super::{AdditionalProperties, Structural, formats, join as child};
use crate::validation::{FieldError, go_float, go_quote};
use serde_json::{Map, Number, Value};

pub(super) fn validate(schema: &Structural, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_value(schema, object, "", &mut errors);
    super::listtype::list_types(schema, object, "", &mut errors);
    super::embedded::embedded_resources(schema, object, "", &mut errors);
    errors
}

/// The field of a kube-openapi error named `name`: `<nil>` when it has none.
fn field_of(name: &str) -> String {
    if name.is_empty() || name == "." {
        "<nil>".to_string()
    } else {
        name.trim_start_matches('.').to_string()
    }
}

/// The JSON type of a value as kube-openapi's type validator names it.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `swag.IsFloat64AJSONInteger`.
fn is_float_an_integer(f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0
}

/// A number as Go decodes it: `int64` when it has no fraction and fits, else `float64`.
enum GoNumber {
    Int(i64),
    Float(f64),
}

fn go_number(n: &Number) -> GoNumber {
    match n.as_i64() {
        Some(i) => GoNumber::Int(i),
        None => GoNumber::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

fn validate_value(schema: &Structural, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        check_type(schema, value, path, errors);
        check_enum(schema, value, path, errors);
        return;
    }
    check_type(schema, value, path, errors);
    check_compositions(schema, value, path, errors);
    match value {
        Value::String(s) => {
            check_string(schema, s, path, errors);
            check_format(schema, s, path, errors);
        }
        Value::Number(n) => check_number(schema, value, n, path, errors),
        Value::Array(items) => check_array(schema, items, path, errors),
        _ => {}
    }
    check_enum(schema, value, path, errors);
    if let Value::Object(map) = value {
        check_object(schema, map, path, errors);
    }
}

fn check_type(schema: &Structural, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let types: &[&str] = match (schema.int_or_string, schema.json_type) {
        (true, _) => &["integer", "string"],
        (false, Some(t)) => &[t.as_str()],
        (false, None) => return,
    };
    let expected = types.join(",");
    let actual = type_name(value);
    let ok = match value {
        Value::Null => schema.nullable,
        Value::Number(n) => {
            types.contains(&actual)
                || (actual == "number"
                    && types.contains(&"integer")
                    && n.as_f64().is_some_and(is_float_an_integer))
                || (actual == "integer" && types.contains(&"number"))
        }
        _ => types.contains(&actual),
    };
    if !ok {
        errors.push(FieldError::type_invalid(
            field_of(path),
            actual,
            format!(
                "{path} in body must be of type {expected}: {}",
                go_quote(actual)
            ),
        ));
    }
}

/// kube-openapi validates a value against a sub-schema at the same path; the result is its
/// errors.
fn sub_result(schema: &Structural, value: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_value(schema, value, path, &mut errors);
    errors
}

fn composite_error(message: String) -> FieldError {
    FieldError::invalid("<nil>", "", message)
}

fn check_compositions(
    schema: &Structural,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let quoted = go_quote(path);
    if !schema.any_of.is_empty() {
        let results: Vec<Vec<FieldError>> = schema
            .any_of
            .iter()
            .map(|s| sub_result(s, value, path))
            .collect();
        if !results.iter().any(Vec::is_empty) {
            errors.push(composite_error(format!(
                "{quoted} must validate at least one schema (anyOf)"
            )));
            if let Some(best) = results.into_iter().min_by_key(Vec::len) {
                errors.extend(best);
            }
        }
    }
    if !schema.one_of.is_empty() {
        let results: Vec<Vec<FieldError>> = schema
            .one_of
            .iter()
            .map(|s| sub_result(s, value, path))
            .collect();
        let valid = results.iter().filter(|r| r.is_empty()).count();
        if valid != 1 {
            let detail = if valid == 0 {
                "Found none valid".to_string()
            } else {
                format!("Found {valid} valid alternatives")
            };
            errors.push(composite_error(format!(
                "{quoted} must validate one and only one schema (oneOf). {detail}"
            )));
            if valid == 0
                && let Some(best) = results.into_iter().min_by_key(Vec::len)
            {
                errors.extend(best);
            }
        }
    }
    if !schema.all_of.is_empty() {
        let mut valid = 0;
        for sub in &schema.all_of {
            let result = sub_result(sub, value, path);
            if result.is_empty() {
                valid += 1;
            }
            errors.extend(result);
        }
        if valid != schema.all_of.len() {
            let none = if valid == 0 { ". None validated" } else { "" };
            errors.push(composite_error(format!(
                "{quoted} must validate all the schemas (allOf){none}"
            )));
        }
    }
    if let Some(not) = &schema.not
        && sub_result(not, value, path).is_empty()
    {
        errors.push(composite_error(format!(
            "{quoted} must not validate the schema (not)"
        )));
    }
}

/// `maxLength`, `minLength`, `pattern`: the first that fails is reported.
fn check_string(schema: &Structural, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    let length = s.chars().count() as u64;
    if let Some(max) = schema.max_length
        && length > max
    {
        errors.push(FieldError::too_long(
            field_of(path),
            usize::try_from(max).unwrap_or(usize::MAX),
        ));
        return;
    }
    if let Some(min) = schema.min_length
        && length < min
    {
        errors.push(FieldError::invalid(
            field_of(path),
            s,
            format!("{path} in body should be at least {min} chars long"),
        ));
        return;
    }
    if let Some(pattern) = &schema.pattern
        && !pattern.regex.is_match(s)
    {
        errors.push(FieldError::invalid(
            field_of(path),
            s,
            format!("{path} in body should match '{}'", pattern.source),
        ));
    }
}

fn check_format(schema: &Structural, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    let Some(format) = &schema.format else {
        return;
    };
    if formats::check(format, s) == Some(false) {
        errors.push(FieldError::type_invalid(
            field_of(path),
            s,
            format!("{path} in body must be of type {format}: {}", go_quote(s)),
        ));
    }
}

fn check_number(
    schema: &Structural,
    value: &Value,
    n: &Number,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let number = go_number(n);
    let invalid = |detail: String| FieldError::invalid(field_of(path), value.clone(), detail);

    if let Some(factor) = schema.multiple_of {
        if factor <= 0.0 {
            errors.push(invalid(format!(
                "factor MultipleOf declared for {path} must be positive: {}",
                go_float(factor)
            )));
        } else {
            let multiple = match number {
                GoNumber::Int(i) if factor.fract() == 0.0 && factor < 9.2e18 => {
                    i % (factor as i64) == 0
                }
                GoNumber::Int(i) => is_float_an_integer(i as f64 / factor),
                GoNumber::Float(f) => is_float_an_integer(if factor < 1.0 {
                    1.0 / factor * f
                } else {
                    f / factor
                }),
            };
            if !multiple {
                let factor_text = match number {
                    GoNumber::Int(_) if factor.fract() == 0.0 => format!("{}", factor as i64),
                    _ => go_float(factor),
                };
                errors.push(invalid(format!(
                    "{path} in body should be a multiple of {factor_text}"
                )));
            }
        }
    }

    let (format_min, format_max) = match schema.format.as_deref() {
        Some("int32") => (Some(f64::from(i32::MIN)), Some(f64::from(i32::MAX))),
        Some("int64") => (Some(i64::MIN as f64), Some(i64::MAX as f64)),
        _ => (None, None),
    };
    let bounds = [
        (schema.minimum, schema.exclusive_minimum, false),
        (
            format_min.filter(|m| schema.minimum.is_none_or(|s| s < *m)),
            false,
            false,
        ),
        (schema.maximum, schema.exclusive_maximum, true),
        (
            format_max.filter(|m| schema.maximum.is_none_or(|s| s > *m)),
            false,
            true,
        ),
    ];
    for (bound, exclusive, is_max) in bounds {
        let Some(bound) = bound else {
            continue;
        };
        let (violated, bound_text) = match number {
            // Kubernetes compares integers with the bound truncated to an integer.
            GoNumber::Int(i) => {
                let b = bound as i64;
                let violated = if is_max {
                    i > b || (exclusive && i == b)
                } else {
                    i < b || (exclusive && i == b)
                };
                (violated, b.to_string())
            }
            GoNumber::Float(f) => {
                let violated = if is_max {
                    f > bound || (exclusive && f == bound)
                } else {
                    f < bound || (exclusive && f == bound)
                };
                (violated, go_float(bound))
            }
        };
        if violated {
            let relation = match (is_max, exclusive) {
                (true, false) => "less than or equal to",
                (true, true) => "less than",
                (false, false) => "greater than or equal to",
                (false, true) => "greater than",
            };
            errors.push(invalid(format!(
                "{path} in body should be {relation} {bound_text}"
            )));
        }
    }
}

fn check_array(schema: &Structural, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some(item_schema) = schema.items() {
        for (i, item) in items.iter().enumerate() {
            validate_value(item_schema, item, &format!("{path}[{i}]"), errors);
        }
    }
    let size = items.len() as u64;
    if let Some(min) = schema.min_items
        && size < min
    {
        errors.push(FieldError::invalid(
            field_of(path),
            size,
            format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = schema.max_items
        && size > max
    {
        errors.push(FieldError::too_many(
            field_of(path),
            Some(items.len()),
            usize::try_from(max).unwrap_or(usize::MAX),
        ));
    }
    if schema.unique_items
        && (1..items.len()).any(|i| {
            items[..i]
                .iter()
                .any(|earlier| json_equal(earlier, &items[i]))
        })
    {
        errors.push(FieldError::invalid(
            field_of(path),
            "",
            format!("{path} in body shouldn't contain duplicates"),
        ));
    }
}

fn check_enum(schema: &Structural, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(allowed) = &schema.enum_values else {
        return;
    };
    if allowed.is_empty()
        || allowed
            .iter()
            .any(|a| !value.is_null() && json_equal(a, value))
    {
        return;
    }
    let names: Vec<String> = allowed
        .iter()
        .map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    errors.push(FieldError::not_supported(
        field_of(path),
        value.clone(),
        &names,
    ));
}

fn check_object(
    schema: &Structural,
    map: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let size = map.len() as u64;
    if let Some(min) = schema.min_properties
        && size < min
    {
        errors.push(FieldError::invalid(
            field_of(path),
            size,
            format!("{path} in body should have at least {min} properties"),
        ));
    }
    if let Some(max) = schema.max_properties
        && size > max
    {
        errors.push(FieldError::too_many(
            field_of(path),
            Some(map.len()),
            usize::try_from(max).unwrap_or(usize::MAX),
        ));
    }
    match &schema.additional_properties {
        Some(AdditionalProperties::Allowed(false)) => {
            for key in map.keys().filter(|k| schema.property(k).is_none()) {
                errors.push(FieldError::invalid(
                    field_of(path),
                    key.as_str(),
                    format!("{path}.{key} in body is a forbidden property"),
                ));
            }
        }
        Some(AdditionalProperties::Schema(additional)) => {
            for (key, member) in map.iter().filter(|(k, _)| schema.property(k).is_none()) {
                validate_value(additional, member, &child(path, key), errors);
            }
        }
        Some(AdditionalProperties::Allowed(true)) | None => {}
    }
    for (key, member) in map {
        if let Some(property) = schema.property(key) {
            validate_value(property, member, &child(path, key), errors);
        }
    }
    for key in &schema.required {
        if !map.contains_key(key) {
            errors.push(FieldError::required(child(path, key), ""));
        }
    }
}

/// JSON equality where numbers compare by value (`1 == 1.0`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Structural;
    use super::super::test_support::{check, spec};
    use serde_json::json;

    #[test]
    fn types() {
        let schema = spec(json!({
            "cpus": {"type": "integer"}, "ratio": {"type": "number"}, "name": {"type": "string"},
            "on": {"type": "boolean"}, "list": {"type": "array"}, "map": {"type": "object"},
            "maybe": {"type": "string", "nullable": true}, "port": {"x-kubernetes-int-or-string": true}, "free": {}
        }));
        check(
            schema.clone(),
            json!({"spec": {"cpus": 2, "ratio": 1, "name": "a", "on": true, "list": [], "map": {}, "maybe": null, "port": "http", "free": [1]}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"cpus": 2.0, "ratio": 0.5, "port": 80}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"cpus": "string"}}),
            &[
                r#"spec.cpus: Invalid value: "string": spec.cpus in body must be of type integer: "string""#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"cpus": 2.5}}),
            &[
                r#"spec.cpus: Invalid value: "number": spec.cpus in body must be of type integer: "number""#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"cpus": null}}),
            &[
                r#"spec.cpus: Invalid value: "null": spec.cpus in body must be of type integer: "null""#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"on": "true"}}),
            &[
                r#"spec.on: Invalid value: "string": spec.on in body must be of type boolean: "string""#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"list": {}}}),
            &[
                r#"spec.list: Invalid value: "object": spec.list in body must be of type array: "object""#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"port": true}}),
            &[
                r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#,
            ],
        );
        check(
            schema,
            json!({"spec": 5}),
            &[r#"spec: Invalid value: "integer": spec in body must be of type object: "integer""#],
        );
    }

    #[test]
    fn enums_and_required() {
        let schema = json!({"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object", "required": ["state"], "properties": {
            "state": {"type": "string", "enum": ["A", "B"]}, "size": {"type": "integer", "enum": [1, 2]}
        }}}});
        check(
            schema.clone(),
            json!({"spec": {"state": "A", "size": 2.0}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"state": "x"}}),
            &[r#"spec.state: Unsupported value: "x": supported values: "A", "B""#],
        );
        check(
            schema.clone(),
            json!({"spec": {"state": "A", "size": 3}}),
            &[r#"spec.size: Unsupported value: 3: supported values: "1", "2""#],
        );
        check(
            schema.clone(),
            json!({"spec": {}}),
            &["spec.state: Required value"],
        );
        check(schema, json!({}), &["spec: Required value"]);
    }

    #[test]
    fn numbers() {
        let schema = spec(json!({
            "cpus": {"type": "integer", "minimum": 1, "maximum": 64},
            "load": {"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 1.5, "exclusiveMaximum": true},
            "even": {"type": "integer", "multipleOf": 2}, "step": {"type": "number", "multipleOf": 0.25},
            "small": {"type": "integer", "format": "int32"}
        }));
        check(
            schema.clone(),
            json!({"spec": {"cpus": 64, "load": 1.25, "even": 4, "step": 0.75, "small": 2147483647}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"cpus": 100}}),
            &[
                "spec.cpus: Invalid value: 100: spec.cpus in body should be less than or equal to 64",
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"cpus": 0}}),
            &[
                "spec.cpus: Invalid value: 0: spec.cpus in body should be greater than or equal to 1",
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"load": 0}}),
            &["spec.load: Invalid value: 0: spec.load in body should be greater than 0"],
        );
        check(
            schema.clone(),
            json!({"spec": {"load": 1.5}}),
            &["spec.load: Invalid value: 1.5: spec.load in body should be less than 1.5"],
        );
        check(
            schema.clone(),
            json!({"spec": {"even": 3}}),
            &["spec.even: Invalid value: 3: spec.even in body should be a multiple of 2"],
        );
        check(
            schema.clone(),
            json!({"spec": {"step": 0.3}}),
            &["spec.step: Invalid value: 0.3: spec.step in body should be a multiple of 0.25"],
        );
        check(
            schema,
            json!({"spec": {"small": 2147483648_i64}}),
            &[
                "spec.small: Invalid value: 2147483648: spec.small in body should be less than or equal to 2147483647",
            ],
        );
    }

    #[test]
    fn strings() {
        let schema = spec(json!({
            "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
            "when": {"type": "string", "format": "date-time"}, "blob": {"type": "string", "format": "byte"},
            "anything": {"type": "string", "format": "int32"}
        }));
        check(
            schema.clone(),
            json!({"spec": {"name": "abc", "when": "2024-01-01T00:00:00Z", "blob": "aGk=", "anything": "x"}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"name": "abcdef"}}),
            &["spec.name: Too long: may not be more than 5 bytes"],
        );
        check(
            schema.clone(),
            json!({"spec": {"name": "a"}}),
            &[
                r#"spec.name: Invalid value: "a": spec.name in body should be at least 2 chars long"#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"name": "ABC"}}),
            &[r#"spec.name: Invalid value: "ABC": spec.name in body should match '^[a-z]+$'"#],
        );
        check(
            schema.clone(),
            json!({"spec": {"when": "soon"}}),
            &[
                r#"spec.when: Invalid value: "soon": spec.when in body must be of type date-time: "soon""#,
            ],
        );
        check(
            schema,
            json!({"spec": {"blob": "!!"}}),
            &[r#"spec.blob: Invalid value: "!!": spec.blob in body must be of type byte: "!!""#],
        );
    }

    #[test]
    fn arrays_and_objects() {
        let schema = spec(json!({
            "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}},
            "unique": {"type": "array", "uniqueItems": true},
            "labels": {"type": "object", "minProperties": 1, "maxProperties": 2, "additionalProperties": {"type": "string"}},
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}
        }));
        check(
            schema.clone(),
            json!({"spec": {"items": [{"n": 1}], "unique": [1, 2], "labels": {"a": "b"}, "closed": {"a": "x"}}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"items": [{"n": "x"}, {}]}}),
            &[
                r#"spec.items[0].n: Invalid value: "string": spec.items[0].n in body must be of type integer: "string""#,
                "spec.items[1].n: Required value",
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"items": []}}),
            &["spec.items: Invalid value: 0: spec.items in body should have at least 1 items"],
        );
        check(
            schema.clone(),
            json!({"spec": {"items": [{"n": 1}, {"n": 2}, {"n": 3}]}}),
            &["spec.items: Too many: 3: must have at most 2 items"],
        );
        check(
            schema.clone(),
            json!({"spec": {"unique": [1, 1.0]}}),
            &[
                r#"spec.unique: Invalid value: "": spec.unique in body shouldn't contain duplicates"#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"labels": {}}}),
            &[
                "spec.labels: Invalid value: 0: spec.labels in body should have at least 1 properties",
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"labels": {"a": "1", "b": "2", "c": 3}}}),
            &[
                "spec.labels: Too many: 3: must have at most 2 items",
                r#"spec.labels.c: Invalid value: "integer": spec.labels.c in body must be of type string: "integer""#,
            ],
        );
        check(
            schema,
            json!({"spec": {"closed": {"b": 1}}}),
            &[r#"spec.closed: Invalid value: "b": spec.closed.b in body is a forbidden property"#],
        );
    }

    #[test]
    fn compositions() {
        let schema = spec(json!({
            "any": {"type": "integer", "anyOf": [{"minimum": 10}, {"maximum": 0}]},
            "one": {"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
            "all": {"type": "string", "allOf": [{"minLength": 2}, {"pattern": "^a"}]},
            "not": {"type": "string", "not": {"enum": ["forbidden"]}}
        }));
        check(
            schema.clone(),
            json!({"spec": {"any": 11, "one": {"a": 1}, "all": "ab", "not": "fine"}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"any": 5}}),
            &[
                r#"<nil>: Invalid value: "": "spec.any" must validate at least one schema (anyOf)"#,
                "spec.any: Invalid value: 5: spec.any in body should be greater than or equal to 10",
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"one": {"a": 1, "b": 2}}}),
            &[
                r#"<nil>: Invalid value: "": "spec.one" must validate one and only one schema (oneOf). Found 2 valid alternatives"#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"one": {}}}),
            &[
                r#"<nil>: Invalid value: "": "spec.one" must validate one and only one schema (oneOf). Found none valid"#,
                "spec.one.a: Required value",
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"all": "b"}}),
            &[
                r#"spec.all: Invalid value: "b": spec.all in body should be at least 2 chars long"#,
                r#"spec.all: Invalid value: "b": spec.all in body should match '^a'"#,
                r#"<nil>: Invalid value: "": "spec.all" must validate all the schemas (allOf). None validated"#,
            ],
        );
        check(
            schema,
            json!({"spec": {"not": "forbidden"}}),
            &[r#"<nil>: Invalid value: "": "spec.not" must not validate the schema (not)"#],
        );
    }
    proptest::proptest! {
        #[test]
        fn validate_never_panics(s in "\\PC{0,12}", n in proptest::num::f64::NORMAL, i in proptest::num::i64::ANY) {
            let schema = Structural::from_value(&spec(json!({
                "a": {"type": "integer", "minimum": 1, "maximum": 5, "multipleOf": 3, "format": "int32"},
                "b": {"type": "number", "multipleOf": 0.1, "minimum": -1e300},
                "c": {"type": "string", "format": "date-time", "maxLength": 3, "enum": ["x"]},
                "d": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "e": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]}
            }))).unwrap();
            for value in [json!(s), json!(n), json!(i), json!(null), json!([s, n]), json!({"k": i})] {
                let object = json!({"spec": {"a": value, "b": value, "c": value, "d": value, "e": [value, value]}});
                let _ = schema.validate(&object);
            }
        }
    }
}
