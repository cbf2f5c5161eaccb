//! The structural schema itself: [`Structural`], one node of a CRD version's
//! `openAPIV3Schema` with its value validations, parsed once by [`Structural::from_value`].
//!
//! Parsing rejects what cannot be used (wrong JSON types of keywords, `$ref`, tuple `items`,
//! invalid regexes, nesting deeper than 64 levels) and ignores keywords that do not affect
//! objects (`description`, `example`, …). A `null` keyword is absent.
//!
//! **Invariant:** a parsed schema is never changed; pruning, defaulting and validation (the
//! sibling modules, which read its fields) only read it.
//!
//! **Not responsible for:** what the schema does to objects (`prune`, `defaults`, `validate`,
//! `listtype`, `embedded`); this module depends on none of them.

use serde_json::Value;

/// How deeply schemas may nest before [`Structural::from_value`] refuses them.
const MAX_SCHEMA_DEPTH: usize = 64;

/// A schema that cannot be used; `path` names the offending keyword
/// (`properties.spec.properties.cpus.minimum`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schema at {path}: {message}")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

/// A JSON Schema `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonType {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl JsonType {
    /// The name as written in a schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Object => "object",
            Self::Array => "array",
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
        }
    }
}

/// `additionalProperties`: a boolean or a schema for every property not under `properties`.
#[derive(Debug, Clone)]
pub(crate) enum AdditionalProperties {
    Allowed(bool),
    Schema(Box<Structural>),
}

/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListType {
    Atomic,
    Set,
    Map,
}

/// A compiled `pattern`, remembering its source for messages.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pub(super) source: String,
    pub(super) regex: regex::Regex,
}

/// One node of a structural schema and the value validations on it.
#[derive(Debug, Clone, Default)]
pub struct Structural {
    pub(super) json_type: Option<JsonType>,
    pub(super) format: Option<String>,
    pub(super) nullable: bool,
    pub(super) default: Option<Value>,
    pub(super) properties: Vec<(String, Structural)>,
    pub(super) additional_properties: Option<AdditionalProperties>,
    pub(super) items: Option<Box<Structural>>,
    pub(super) required: Vec<String>,
    pub(super) enum_values: Option<Vec<Value>>,
    pub(super) maximum: Option<f64>,
    pub(super) exclusive_maximum: bool,
    pub(super) minimum: Option<f64>,
    pub(super) exclusive_minimum: bool,
    pub(super) multiple_of: Option<f64>,
    pub(super) max_length: Option<u64>,
    pub(super) min_length: Option<u64>,
    pub(super) pattern: Option<Pattern>,
    pub(super) max_items: Option<u64>,
    pub(super) min_items: Option<u64>,
    pub(super) unique_items: bool,
    pub(super) max_properties: Option<u64>,
    pub(super) min_properties: Option<u64>,
    pub(super) all_of: Vec<Structural>,
    pub(super) any_of: Vec<Structural>,
    pub(super) one_of: Vec<Structural>,
    pub(super) not: Option<Box<Structural>>,
    pub(super) preserve_unknown_fields: bool,
    pub(super) embedded_resource: bool,
    pub(super) int_or_string: bool,
    pub(super) list_type: Option<ListType>,
    pub(super) list_map_keys: Vec<String>,
    pub(super) validation_rules: bool,
}

impl Structural {
    /// Parses a CRD version's `openAPIV3Schema`.
    pub fn from_value(schema: &Value) -> Result<Self, SchemaError> {
        parse(schema, "", 0)
    }

    /// Whether the schema, anywhere, has `x-kubernetes-validations` (CEL) rules, which are not
    /// enforced here.
    pub fn uses_cel(&self) -> bool {
        self.validation_rules
            || self.properties.iter().any(|(_, p)| p.uses_cel())
            || self.items.as_ref().is_some_and(|i| i.uses_cel())
            || matches!(&self.additional_properties, Some(AdditionalProperties::Schema(s)) if s.uses_cel())
            || self
                .all_of
                .iter()
                .chain(&self.any_of)
                .chain(&self.one_of)
                .any(Structural::uses_cel)
            || self.not.as_ref().is_some_and(|n| n.uses_cel())
    }

    /// The declared `type`, if any.
    pub fn json_type(&self) -> Option<JsonType> {
        self.json_type
    }

    /// Whether the node is `x-kubernetes-int-or-string`.
    pub fn is_int_or_string(&self) -> bool {
        self.int_or_string
    }

    /// The schema of a property listed under `properties`.
    pub fn property(&self, name: &str) -> Option<&Structural> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// The schema of a nested field (`["spec", "color"]`), following `properties` and
    /// `additionalProperties` schemas.
    pub fn field(&self, path: &[&str]) -> Option<&Structural> {
        let mut node = self;
        for name in path {
            node = node.member(name)?;
        }
        Some(node)
    }

    /// The schema of the items of an array.
    pub fn items(&self) -> Option<&Structural> {
        self.items.as_deref()
    }

    /// The `default` value, if any.
    pub fn default_value(&self) -> Option<&Value> {
        self.default.as_ref()
    }

    /// The schema for a member `name` of an object of this schema: its property, else the
    /// `additionalProperties` schema.
    pub(super) fn member(&self, name: &str) -> Option<&Structural> {
        self.property(name).or(match &self.additional_properties {
            Some(AdditionalProperties::Schema(s)) => Some(s),
            _ => None,
        })
    }
}

fn schema_error<T>(path: &str, message: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError {
        path: if path.is_empty() {
            "<root>".to_string()
        } else {
            path.to_string()
        },
        message: message.into(),
    })
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn parse(value: &Value, path: &str, depth: usize) -> Result<Structural, SchemaError> {
    if depth > MAX_SCHEMA_DEPTH {
        return schema_error(
            path,
            format!("schemas may nest at most {MAX_SCHEMA_DEPTH} levels deep"),
        );
    }
    let Value::Object(map) = value else {
        return schema_error(path, "must be an object");
    };
    let mut node = Structural::default();
    for (key, value) in map {
        if value.is_null() {
            continue;
        }
        let at = join(path, key);
        match key.as_str() {
            "type" => node.json_type = parse_type(value, &at)?,
            "format" => node.format = Some(string(value, &at)?).filter(|f| !f.is_empty()),
            "nullable" => node.nullable = boolean(value, &at)?,
            "default" => node.default = Some(value.clone()),
            "properties" => {
                let Value::Object(properties) = value else {
                    return schema_error(&at, "must be an object");
                };
                for (name, schema) in properties {
                    node.properties
                        .push((name.clone(), parse(schema, &join(&at, name), depth + 1)?));
                }
            }
            "additionalProperties" => {
                node.additional_properties = Some(match value {
                    Value::Bool(allowed) => AdditionalProperties::Allowed(*allowed),
                    schema => {
                        AdditionalProperties::Schema(Box::new(parse(schema, &at, depth + 1)?))
                    }
                });
            }
            "items" => {
                if value.is_array() {
                    return schema_error(&at, "must be a single schema; tuples are not supported");
                }
                node.items = Some(Box::new(parse(value, &at, depth + 1)?));
            }
            "required" => node.required = strings(value, &at)?,
            "enum" => {
                let Value::Array(values) = value else {
                    return schema_error(&at, "must be an array");
                };
                node.enum_values = Some(values.clone());
            }
            "maximum" => node.maximum = Some(number(value, &at)?),
            "minimum" => node.minimum = Some(number(value, &at)?),
            "multipleOf" => node.multiple_of = Some(number(value, &at)?),
            "exclusiveMaximum" => node.exclusive_maximum = boolean(value, &at)?,
            "exclusiveMinimum" => node.exclusive_minimum = boolean(value, &at)?,
            "maxLength" => node.max_length = Some(count(value, &at)?),
            "minLength" => node.min_length = Some(count(value, &at)?),
            "maxItems" => node.max_items = Some(count(value, &at)?),
            "minItems" => node.min_items = Some(count(value, &at)?),
            "maxProperties" => node.max_properties = Some(count(value, &at)?),
            "minProperties" => node.min_properties = Some(count(value, &at)?),
            "uniqueItems" => node.unique_items = boolean(value, &at)?,
            "pattern" => {
                let source = string(value, &at)?;
                match regex::Regex::new(&source) {
                    Ok(regex) => node.pattern = Some(Pattern { source, regex }),
                    Err(e) => return schema_error(&at, format!("invalid regular expression: {e}")),
                }
            }
            "allOf" => node.all_of = schemas(value, &at, depth)?,
            "anyOf" => node.any_of = schemas(value, &at, depth)?,
            "oneOf" => node.one_of = schemas(value, &at, depth)?,
            "not" => node.not = Some(Box::new(parse(value, &at, depth + 1)?)),
            "x-kubernetes-preserve-unknown-fields" => {
                node.preserve_unknown_fields = boolean(value, &at)?
            }
            "x-kubernetes-embedded-resource" => node.embedded_resource = boolean(value, &at)?,
            "x-kubernetes-int-or-string" => node.int_or_string = boolean(value, &at)?,
            "x-kubernetes-list-type" => {
                node.list_type = Some(match string(value, &at)?.as_str() {
                    "atomic" => ListType::Atomic,
                    "set" => ListType::Set,
                    "map" => ListType::Map,
                    other => return schema_error(&at, format!("unsupported list type {other:?}")),
                });
            }
            "x-kubernetes-list-map-keys" => node.list_map_keys = strings(value, &at)?,
            "x-kubernetes-validations" => {
                let Value::Array(rules) = value else {
                    return schema_error(&at, "must be an array");
                };
                node.validation_rules = !rules.is_empty();
            }
            "$ref" => {
                return schema_error(
                    &at,
                    "$ref is not supported in CustomResourceDefinition schemas",
                );
            }
            _ => {}
        }
    }
    Ok(node)
}

fn parse_type(value: &Value, path: &str) -> Result<Option<JsonType>, SchemaError> {
    Ok(Some(match string(value, path)?.as_str() {
        "" => return Ok(None),
        "object" => JsonType::Object,
        "array" => JsonType::Array,
        "string" => JsonType::String,
        "integer" => JsonType::Integer,
        "number" => JsonType::Number,
        "boolean" => JsonType::Boolean,
        other => return schema_error(path, format!("unsupported type {other:?}")),
    }))
}

fn string(value: &Value, path: &str) -> Result<String, SchemaError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        _ => schema_error(path, "must be a string"),
    }
}

fn boolean(value: &Value, path: &str) -> Result<bool, SchemaError> {
    match value {
        Value::Bool(b) => Ok(*b),
        _ => schema_error(path, "must be a boolean"),
    }
}

fn number(value: &Value, path: &str) -> Result<f64, SchemaError> {
    match value.as_f64() {
        Some(n) => Ok(n),
        None => schema_error(path, "must be a number"),
    }
}

fn count(value: &Value, path: &str) -> Result<u64, SchemaError> {
    match value {
        Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or(0)),
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f >= 0.0 && f.fract() == 0.0 && f < 1.8e19) =>
        {
            Ok(n.as_f64().map_or(0, |f| f as u64))
        }
        _ => schema_error(path, "must be a non-negative integer"),
    }
}

fn strings(value: &Value, path: &str) -> Result<Vec<String>, SchemaError> {
    let Value::Array(items) = value else {
        return schema_error(path, "must be an array of strings");
    };
    items.iter().map(|item| string(item, path)).collect()
}

fn schemas(value: &Value, path: &str, depth: usize) -> Result<Vec<Structural>, SchemaError> {
    let Value::Array(items) = value else {
        return schema_error(path, "must be an array of schemas");
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse(item, &format!("{path}[{i}]"), depth + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_typical_crd_schema() {
        let schema = Structural::from_value(&json!({
            "type": "object",
            "description": "ignored",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["cpus"],
                    "properties": {
                        "cpus": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 64},
                        "image": {"type": "string", "pattern": "^[a-z]+$", "default": "debian"},
                        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                },
                "status": {"type": "object", "additionalProperties": {"type": "string"}, "x-kubernetes-validations": [{"rule": "true"}]}
            }
        }))
        .unwrap();
        assert_eq!(schema.json_type(), Some(JsonType::Object));
        assert_eq!(
            schema
                .field(&["spec", "cpus"])
                .and_then(Structural::json_type),
            Some(JsonType::Integer)
        );
        assert_eq!(
            schema
                .field(&["status", "anything"])
                .and_then(Structural::json_type),
            Some(JsonType::String)
        );
        assert_eq!(
            schema
                .field(&["spec", "image"])
                .and_then(Structural::default_value),
            Some(&json!("debian"))
        );
        assert!(
            schema
                .field(&["spec", "port"])
                .is_some_and(Structural::is_int_or_string)
        );
        assert!(schema.field(&["spec", "missing"]).is_none());
        assert!(schema.uses_cel());
        assert!(!schema.field(&["spec"]).is_some_and(Structural::uses_cel));
    }

    #[test]
    fn rejects_unusable_schemas() {
        let cases = [
            (
                json!("object"),
                "invalid schema at <root>: must be an object",
            ),
            (
                json!({"type": 1}),
                "invalid schema at type: must be a string",
            ),
            (
                json!({"type": "null"}),
                "invalid schema at type: unsupported type \"null\"",
            ),
            (
                json!({"properties": {"a": {"minimum": "1"}}}),
                "invalid schema at properties.a.minimum: must be a number",
            ),
            (
                json!({"properties": {"a": {"maxLength": -1}}}),
                "invalid schema at properties.a.maxLength: must be a non-negative integer",
            ),
            (
                json!({"items": [{"type": "string"}]}),
                "invalid schema at items: must be a single schema; tuples are not supported",
            ),
            (
                json!({"$ref": "#/definitions/x"}),
                "invalid schema at $ref: $ref is not supported in CustomResourceDefinition schemas",
            ),
            (
                json!({"x-kubernetes-list-type": "bag"}),
                "invalid schema at x-kubernetes-list-type: unsupported list type \"bag\"",
            ),
            (
                json!({"anyOf": {}}),
                "invalid schema at anyOf: must be an array of schemas",
            ),
            (
                json!({"required": ["a", 1]}),
                "invalid schema at required: must be a string",
            ),
        ];
        for (schema, expected) in cases {
            assert_eq!(
                Structural::from_value(&schema)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(expected.to_string()),
                "{schema}"
            );
        }
        let bad_pattern = Structural::from_value(&json!({"pattern": "("})).unwrap_err();
        assert_eq!(bad_pattern.path, "pattern");
    }

    #[test]
    fn refuses_absurd_nesting() {
        let mut schema = json!({"type": "string"});
        for _ in 0..100 {
            schema = json!({"type": "object", "properties": {"a": schema}});
        }
        assert!(Structural::from_value(&schema).is_err());
    }

    #[test]
    fn null_keywords_are_absent() {
        let schema = Structural::from_value(
            &json!({"type": "object", "nullable": null, "default": null, "properties": null}),
        )
        .unwrap();
        assert!(schema.default_value().is_none());
    }

    proptest::proptest! {
        #[test]
        fn from_value_never_panics(s in "\\PC{0,40}") {
            let _ = Structural::from_value(&json!({"type": s, "pattern": s, "format": s, "properties": {s.clone(): {"type": s}}}));
        }
    }
}
