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

use super::formats;
use super::structural::{AdditionalProperties, Structural, join as child};
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
#[path = "validate_tests.rs"]
mod tests;
