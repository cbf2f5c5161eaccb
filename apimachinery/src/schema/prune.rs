//! Pruning of unknown fields, as apiextensions' `pruning.PruneWithOptions` (with unknown-field
//! paths returned) plus the `ObjectMeta` round trip that drops unknown `metadata` fields.
//!
//! Paths are rendered as strict decoding renders them: `.` between keys, `[i]` for indices.

use super::structural::{AdditionalProperties, Structural};
use serde_json::Value;

/// Fields every embedded resource (and the root) has, whatever the schema says.
const META_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// The JSON fields of `ObjectMeta`.
const OBJECT_META_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// The JSON fields of `OwnerReference`.
const OWNER_REFERENCE_FIELDS: [&str; 6] = [
    "apiVersion",
    "kind",
    "name",
    "uid",
    "controller",
    "blockOwnerDeletion",
];

/// The JSON fields of `ManagedFieldsEntry`.
const MANAGED_FIELDS_ENTRY_FIELDS: [&str; 7] = [
    "manager",
    "operation",
    "apiVersion",
    "time",
    "fieldsType",
    "fieldsV1",
    "subresource",
];

pub(super) fn prune(schema: &Structural, object: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    prune_value(object, Some(schema), true, "", &mut unknown);
    unknown.sort();
    unknown
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The schema for members that `properties` does not list: `Some(Some(s))` for a schema,
/// `Some(None)` for `additionalProperties: true` (anything is kept), `None` when unknown.
fn additional(schema: &Structural) -> Option<Option<&Structural>> {
    match &schema.additional_properties {
        Some(AdditionalProperties::Schema(s)) => Some(Some(s)),
        Some(AdditionalProperties::Allowed(true)) => Some(None),
        Some(AdditionalProperties::Allowed(false)) | None => None,
    }
}

/// `prune`: `schema` is `None` below a field the schema does not describe, where every object
/// member is unknown. `is_root` makes the node an embedded resource.
fn prune_value(
    value: &mut Value,
    schema: Option<&Structural>,
    is_root: bool,
    path: &str,
    unknown: &mut Vec<String>,
) {
    if let Some(s) = schema
        && s.preserve_unknown_fields
    {
        skip_prune(value, s, is_root, path, unknown);
        return;
    }
    match value {
        Value::Object(map) => {
            let Some(s) = schema else {
                unknown.extend(map.keys().map(|k| child(path, k)));
                map.clear();
                return;
            };
            let embedded = is_root || s.embedded_resource;
            let mut removed = Vec::new();
            for (key, member) in map.iter_mut() {
                if embedded && META_FIELDS.contains(&key.as_str()) {
                    if key == "metadata" {
                        prune_object_meta(member, &child(path, key), unknown);
                    }
                    continue;
                }
                if let Some(property) = s.property(key) {
                    prune_value(member, Some(property), false, &child(path, key), unknown);
                } else if let Some(additional) = additional(s) {
                    if let Some(additional) = additional {
                        prune_value(member, Some(additional), false, &child(path, key), unknown);
                    }
                } else {
                    unknown.push(child(path, key));
                    removed.push(key.clone());
                }
            }
            if !removed.is_empty() {
                map.retain(|key, _| !removed.contains(key));
            }
        }
        Value::Array(items) => {
            let item_schema = schema.and_then(Structural::items);
            for (i, item) in items.iter_mut().enumerate() {
                prune_value(item, item_schema, false, &index(path, i), unknown);
            }
        }
        _ => {}
    }
}

/// `skipPrune`: under `x-kubernetes-preserve-unknown-fields`, unknown members stay, but known
/// ones are still pruned inside.
fn skip_prune(
    value: &mut Value,
    schema: &Structural,
    is_root: bool,
    path: &str,
    unknown: &mut Vec<String>,
) {
    match value {
        Value::Object(map) => {
            let embedded = is_root || schema.embedded_resource;
            for (key, member) in map.iter_mut() {
                if embedded && META_FIELDS.contains(&key.as_str()) {
                    if key == "metadata" {
                        prune_object_meta(member, &child(path, key), unknown);
                    }
                    continue;
                }
                if let Some(property) = schema.property(key) {
                    prune_value(member, Some(property), false, &child(path, key), unknown);
                } else if let Some(Some(additional)) = additional(schema) {
                    prune_value(member, Some(additional), false, &child(path, key), unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.items() {
                for (i, item) in items.iter_mut().enumerate() {
                    skip_prune(item, item_schema, false, &index(path, i), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Drops the members of an embedded `metadata` that `ObjectMeta` (and its owner references and
/// managed-fields entries) does not have. Wrongly typed fields are left for validation.
fn prune_object_meta(metadata: &mut Value, path: &str, unknown: &mut Vec<String>) {
    let Value::Object(map) = metadata else {
        return;
    };
    retain_known(map, &OBJECT_META_FIELDS, path, unknown);
    for (field, known) in [
        ("ownerReferences", &OWNER_REFERENCE_FIELDS[..]),
        ("managedFields", &MANAGED_FIELDS_ENTRY_FIELDS[..]),
    ] {
        if let Some(Value::Array(items)) = map.get_mut(field) {
            for (i, item) in items.iter_mut().enumerate() {
                if let Value::Object(entry) = item {
                    retain_known(entry, known, &index(&child(path, field), i), unknown);
                }
            }
        }
    }
}

fn retain_known(
    map: &mut serde_json::Map<String, Value>,
    known: &[&str],
    path: &str,
    unknown: &mut Vec<String>,
) {
    unknown.extend(
        map.keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| child(path, k)),
    );
    map.retain(|key, _| known.contains(&key.as_str()));
}

#[cfg(test)]
mod tests {
    use super::super::Structural;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn schema() -> Structural {
        Structural::from_value(&json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "cpus": {"type": "integer"},
                        "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                   "properties": {"strict": {"type": "object", "properties": {"a": {"type": "string"}}}}},
                        "anything": {"type": "object", "additionalProperties": true},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                     "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}}},
                        "kind": {"type": "string"}
                    }
                },
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
            }
        }))
        .unwrap()
    }

    fn check(mut object: Value, expected_object: Value, expected_unknown: &[&str]) {
        let unknown = schema().prune(&mut object);
        assert_eq!(unknown, expected_unknown);
        assert_eq!(object, expected_object);
    }

    #[test]
    fn keeps_known_fields() {
        let object = json!({
            "apiVersion": "corral.dev/v1", "kind": "Instance",
            "metadata": {"name": "a", "labels": {"x": "y"}, "ownerReferences": [{"apiVersion": "v1", "kind": "K", "name": "n", "uid": "u", "controller": true}]},
            "spec": {"cpus": 2, "items": [{"name": "a"}], "labels": {"any": "thing"}, "config": {"free": {"form": 1}}, "anything": {"a": {"b": 1}}, "kind": "x"},
            "status": {"phase": "Running"}
        });
        check(object.clone(), object, &[]);
    }

    #[test]
    fn removes_and_reports_unknown_fields() {
        check(
            json!({"spec": {"cpus": 2, "bogus": 1, "items": [{"name": "a", "extra": true}, {"name": "b"}]}, "top": 1}),
            json!({"spec": {"cpus": 2, "items": [{"name": "a"}, {"name": "b"}]}}),
            &["spec.bogus", "spec.items[0].extra", "top"],
        );
    }

    #[test]
    fn apiversion_kind_and_metadata_are_known_only_at_resource_roots() {
        check(
            json!({"apiVersion": "v1", "kind": "K", "spec": {"apiVersion": "v1", "kind": "k"}}),
            json!({"apiVersion": "v1", "kind": "K", "spec": {"kind": "k"}}),
            &["spec.apiVersion"],
        );
    }

    #[test]
    fn unknown_metadata_fields_are_reported_and_dropped() {
        check(
            json!({"metadata": {"name": "a", "bogus": 1, "ownerReferences": [{"uid": "u", "extra": 1}], "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}, "x": 1}]}}),
            json!({"metadata": {"name": "a", "ownerReferences": [{"uid": "u"}], "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]}}),
            &[
                "metadata.bogus",
                "metadata.managedFields[0].x",
                "metadata.ownerReferences[0].extra",
            ],
        );
    }

    #[test]
    fn preserve_unknown_fields_still_prunes_known_subtrees() {
        check(
            json!({"spec": {"config": {"free": 1, "strict": {"a": "x", "b": "y"}}}}),
            json!({"spec": {"config": {"free": 1, "strict": {"a": "x"}}}}),
            &["spec.config.strict.b"],
        );
    }

    #[test]
    fn embedded_resources_keep_type_and_object_meta() {
        check(
            json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "oops": 1}, "spec": {"x": "1", "y": "2"}, "other": 1}}}),
            json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": "1"}}}}),
            &[
                "spec.template.metadata.oops",
                "spec.template.other",
                "spec.template.spec.y",
            ],
        );
    }

    #[test]
    fn objects_below_unknown_arrays_are_emptied() {
        let schema = Structural::from_value(
            &json!({"type": "object", "properties": {"list": {"type": "array"}}}),
        )
        .unwrap();
        let mut object = json!({"list": [{"a": 1}, 2]});
        assert_eq!(schema.prune(&mut object), ["list[0].a"]);
        assert_eq!(object, json!({"list": [{}, 2]}));
    }

    #[test]
    fn pruning_keeps_member_order() {
        let mut object = json!({"spec": {"z": 1, "cpus": 1, "a": 2, "kind": "k"}});
        schema().prune(&mut object);
        assert_eq!(object.to_string(), r#"{"spec":{"cpus":1,"kind":"k"}}"#);
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,3}".prop_map(Value::from)
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("spec".to_string()),
                        Just("items".to_string()),
                        Just("name".to_string()),
                        Just("metadata".to_string()),
                        "[a-z]{1,2}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn pruning_is_idempotent(mut object in arbitrary_json()) {
            let schema = schema();
            schema.prune(&mut object);
            let again = object.clone();
            prop_assert!(schema.prune(&mut object).is_empty());
            prop_assert_eq!(object, again);
        }
    }
}
