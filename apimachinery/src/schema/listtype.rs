//! List-type validation, as apiextensions' `listtype.ValidateListSetsAndMaps`: the items of an
//! `x-kubernetes-list-type: set` array are unique, and so are the keys
//! (`x-kubernetes-list-map-keys`) of the items of a `map` list.
//!
//! The second occurrence of each duplicated value is reported, once, as a `Duplicate value`;
//! for map lists the value shown is the item's key fields, Go-printed.

use super::structural::{AdditionalProperties, ListType, Structural, join as child};
use crate::validation::FieldError;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A canonical text for a value (object keys sorted), so equal values hash alike.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), canonical(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// `validateListSet`: the index of the second occurrence of each duplicated value.
fn second_occurrences<'a>(values: impl Iterator<Item = String> + 'a) -> Vec<usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut duplicates = Vec::new();
    for (i, key) in values.enumerate() {
        let times = seen.entry(key).or_insert(0);
        *times += 1;
        if *times == 2 {
            duplicates.push(i);
        }
    }
    duplicates
}

/// `ValidateListSetsAndMaps`: set items and map keys must be unique.
pub(super) fn list_types(
    schema: &Structural,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::Object(map) => {
            for (key, member) in map {
                if let Some(property) = schema.property(key) {
                    list_types(property, member, &child(path, key), errors);
                } else if let Some(AdditionalProperties::Schema(additional)) =
                    &schema.additional_properties
                {
                    list_types(additional, member, &format!("{path}[{key}]"), errors);
                }
            }
        }
        Value::Array(items) => {
            match schema.list_type {
                Some(ListType::Set) => {
                    for i in second_occurrences(items.iter().map(canonical)) {
                        errors.push(FieldError::duplicate(
                            format!("{path}[{i}]"),
                            items[i].clone(),
                        ));
                    }
                }
                Some(ListType::Map) => list_map(schema, items, path, errors),
                Some(ListType::Atomic) | None => {}
            }
            if let Some(item_schema) = schema.items() {
                for (i, item) in items.iter().enumerate() {
                    list_types(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn list_map(schema: &Structural, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some((i, item)) = items
        .iter()
        .enumerate()
        .find(|(_, item)| !item.is_null() && !item.is_object())
    {
        errors.push(FieldError::invalid(
            format!("{path}[{i}]"),
            item.clone(),
            "must be an object for an array of list-type map",
        ));
        return;
    }
    // The key of each item: its map-key fields that are present (a missing field differs from
    // a null one).
    let keys: Vec<Map<String, Value>> = items
        .iter()
        .map(|item| {
            let fields = item.as_object();
            schema
                .list_map_keys
                .iter()
                .filter_map(|k| {
                    fields
                        .and_then(|f| f.get(k))
                        .map(|v| (k.clone(), v.clone()))
                })
                .collect()
        })
        .collect();
    for i in second_occurrences(keys.iter().map(|k| canonical(&Value::Object(k.clone())))) {
        errors.push(FieldError::duplicate(
            format!("{path}[{i}]"),
            Value::Object(keys[i].clone()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{check, spec};
    use serde_json::json;

    #[test]
    fn list_types() {
        let schema = spec(json!({
            "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port", "protocol"],
                      "items": {"type": "object", "properties": {"port": {"type": "integer"}, "protocol": {"type": "string"}}}},
            "disks": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "properties": {"name": {"type": "string"}}}}
        }));
        check(
            schema.clone(),
            json!({"spec": {"tags": ["a", "b"], "ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}], "disks": [{"name": "a"}, {"name": "b"}]}}),
            &[],
        );
        check(
            schema.clone(),
            json!({"spec": {"tags": ["a", "b", "a", "a"]}}),
            &[r#"spec.tags[2]: Duplicate value: "a""#],
        );
        check(
            schema.clone(),
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"protocol": "TCP", "port": 80}]}}),
            &[
                r#"spec.ports[1]: Duplicate value: map[string]interface {}{"port":80, "protocol":"TCP"}"#,
            ],
        );
        check(
            schema.clone(),
            json!({"spec": {"disks": [{"name": "a"}, {"name": "a"}, {}, {}]}}),
            &[
                r#"spec.disks[1]: Duplicate value: map[string]interface {}{"name":"a"}"#,
                "spec.disks[3]: Duplicate value: map[string]interface {}{}",
            ],
        );
    }
}
