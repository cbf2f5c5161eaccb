//! Defaulting, as apiextensions' `PruneNonNullableNullsWithoutDefaults` followed by `Default`.

use super::structural::{AdditionalProperties, Structural};
use serde_json::Value;

pub(super) fn apply_defaults(schema: &Structural, object: &mut Value) {
    prune_non_nullable_nulls(object, Some(schema));
    default(object, schema);
}

/// Whether a `null` at a field of this schema is removed: the schema neither allows `null`
/// nor has a default to replace it with.
fn is_unwanted_null(value: &Value, schema: Option<&Structural>) -> bool {
    value.is_null() && schema.is_some_and(|s| !s.nullable && s.default.is_none())
}

fn prune_non_nullable_nulls(value: &mut Value, schema: Option<&Structural>) {
    match value {
        Value::Object(map) => {
            map.retain(|key, member| !is_unwanted_null(member, schema.and_then(|s| s.member(key))));
            for (key, member) in map.iter_mut() {
                prune_non_nullable_nulls(member, schema.and_then(|s| s.member(key)));
            }
        }
        Value::Array(items) => {
            let item_schema = schema.and_then(Structural::items);
            for item in items {
                prune_non_nullable_nulls(item, item_schema);
            }
        }
        _ => {}
    }
}

/// Whether a value at a field of this schema is replaced by the schema's default.
fn wants_default(value: Option<&Value>, schema: &Structural) -> bool {
    schema.default.is_some() && value.is_none_or(|v| v.is_null() && !schema.nullable)
}

fn default(value: &mut Value, schema: &Structural) {
    match value {
        Value::Object(map) => {
            for (name, property) in &schema.properties {
                if let Some(default) = &property.default
                    && wants_default(map.get(name), property)
                {
                    map.insert(name.clone(), default.clone());
                }
            }
            for (key, member) in map.iter_mut() {
                if let Some(property) = schema.property(key) {
                    default(member, property);
                } else if let Some(AdditionalProperties::Schema(additional)) =
                    &schema.additional_properties
                {
                    if let Some(default_value) = &additional.default
                        && wants_default(Some(member), additional)
                    {
                        *member = default_value.clone();
                    }
                    default(member, additional);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.items() {
                for item in items {
                    if let Some(default_value) = &item_schema.default
                        && wants_default(Some(item), item_schema)
                    {
                        *item = default_value.clone();
                    }
                    default(item, item_schema);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::Structural;
    use serde_json::{Value, json};

    fn schema() -> Structural {
        Structural::from_value(&json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "default": {},
                    "properties": {
                        "cpus": {"type": "integer", "default": 1},
                        "image": {"type": "string", "default": "debian"},
                        "note": {"type": "string"},
                        "maybe": {"type": "string", "nullable": true, "default": "d"},
                        "disks": {"type": "array", "items": {"type": "object", "default": {"size": 10},
                                  "properties": {"size": {"type": "integer", "default": 5}, "kind": {"type": "string", "default": "ssd"}}}},
                        "env": {"type": "object", "additionalProperties": {"type": "object", "properties": {"value": {"type": "string", "default": "x"}}}},
                        "nested": {"type": "object", "properties": {"deep": {"type": "integer", "default": 7}}}
                    }
                }
            }
        }))
        .unwrap()
    }

    fn check(mut object: Value, expected: Value) {
        schema().apply_defaults(&mut object);
        assert_eq!(object, expected);
    }

    #[test]
    fn defaults_apply_to_missing_fields_recursively() {
        check(
            json!({}),
            json!({"spec": {"cpus": 1, "image": "debian", "maybe": "d"}}),
        );
        check(
            json!({"spec": {"cpus": 4}}),
            json!({"spec": {"cpus": 4, "image": "debian", "maybe": "d"}}),
        );
    }

    #[test]
    fn defaults_reach_into_items_and_additional_properties() {
        check(
            json!({"spec": {"disks": [{}, {"size": 3}, null], "env": {"A": {}, "B": {"value": "y"}}, "nested": {}}}),
            json!({"spec": {"cpus": 1, "image": "debian", "maybe": "d",
                   "disks": [{"size": 5, "kind": "ssd"}, {"size": 3, "kind": "ssd"}, {"size": 10, "kind": "ssd"}],
                   "env": {"A": {"value": "x"}, "B": {"value": "y"}}, "nested": {"deep": 7}}}),
        );
    }

    #[test]
    fn nulls_are_dropped_or_defaulted_unless_nullable() {
        check(
            json!({"spec": {"cpus": null, "note": null, "maybe": null, "unknown": null}}),
            json!({"spec": {"cpus": 1, "maybe": null, "unknown": null, "image": "debian"}}),
        );
    }

    #[test]
    fn defaulting_twice_changes_nothing() {
        let mut once = json!({"spec": {"disks": [{}], "env": {"A": {}}}});
        let schema = schema();
        schema.apply_defaults(&mut once);
        let mut twice = once.clone();
        schema.apply_defaults(&mut twice);
        assert_eq!(once, twice);
    }
}
