use super::*;
use serde_json::json;

fn messages(errors: &[FieldError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

fn check(meta: Value, namespaced: bool, expected: &[&str]) {
    assert_eq!(
        messages(&validate_object_meta(&meta, namespaced)),
        expected,
        "meta {meta}"
    );
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

#[test]
fn valid_metadata_has_no_errors() {
    check(
        json!({
            "name": "web-1", "namespace": "default", "generation": 3, "uid": "u",
            "creationTimestamp": "2024-01-02T03:04:05Z", "deletionTimestamp": null,
            "labels": {"app": "web", "example.com/tier": ""},
            "annotations": {"Example.com/Note": "anything at all"},
            "finalizers": ["kubernetes", "foregroundDeletion", "corral.dev/cleanup"],
            "ownerReferences": [{"apiVersion": "corral.dev/v1", "kind": "Sled", "name": "s", "uid": "1", "controller": true}],
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {}}]
        }),
        true,
        &[],
    );
}

#[test]
fn name_rules() {
    check(
        json!({}),
        false,
        &["metadata.name: Required value: name or generateName is required"],
    );
    check(
        json!(null),
        false,
        &["metadata.name: Required value: name or generateName is required"],
    );
    check(json!({"generateName": "web-"}), false, &[]);
    check(
        json!({"name": "Web"}),
        false,
        &[&format!(
            "metadata.name: Invalid value: \"Web\": {SUBDOMAIN_MSG}"
        )],
    );
    check(
        json!({"generateName": "Web-"}),
        false,
        &[&format!(
            "metadata.generateName: Invalid value: \"Web-\": {SUBDOMAIN_MSG}"
        )],
    );
}

#[test]
fn namespace_rules() {
    check(
        json!({"name": "a"}),
        true,
        &["metadata.namespace: Required value"],
    );
    check(
        json!({"name": "a", "namespace": "x"}),
        false,
        &["metadata.namespace: Forbidden: not allowed on this type"],
    );
    check(
        json!({"name": "a", "namespace": "a.b"}),
        true,
        &[r#"metadata.namespace: Invalid value: "a.b": must not contain dots"#],
    );
}

#[test]
fn wrong_json_types_are_type_errors() {
    check(
        json!("x"),
        false,
        &[r#"metadata: Invalid value: "x": must be of type object"#],
    );
    check(
        json!({"name": 5}),
        false,
        &[
            "metadata.name: Invalid value: 5: must be of type string",
            "metadata.name: Required value: name or generateName is required",
        ],
    );
    check(
        json!({"name": "a", "labels": "x"}),
        false,
        &[r#"metadata.labels: Invalid value: "x": must be of type object"#],
    );
    check(
        json!({"name": "a", "labels": {"a": 1}}),
        false,
        &["metadata.labels[a]: Invalid value: 1: must be of type string"],
    );
    check(
        json!({"name": "a", "finalizers": [1]}),
        false,
        &["metadata.finalizers[0]: Invalid value: 1: must be of type string"],
    );
    check(
        json!({"name": "a", "finalizers": "f"}),
        false,
        &[r#"metadata.finalizers: Invalid value: "f": must be of type array"#],
    );
    check(
        json!({"name": "a", "generation": "1"}),
        false,
        &[r#"metadata.generation: Invalid value: "1": must be of type integer"#],
    );
    check(
        json!({"name": "a", "ownerReferences": ["x"]}),
        false,
        &[r#"metadata.ownerReferences[0]: Invalid value: "x": must be of type object"#],
    );
    check(
        json!({"name": "a", "creationTimestamp": "yesterday"}),
        false,
        &[
            r#"metadata.creationTimestamp: Invalid value: "yesterday": must be an RFC 3339 date-time"#,
        ],
    );
}

#[test]
fn labels_and_annotations() {
    let errors = validate_object_meta(&json!({"name": "a", "labels": {"a b": "c d"}}), false);
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0]
            .to_string()
            .starts_with(r#"metadata.labels: Invalid value: "a b": name part must consist"#)
    );
    assert!(
        errors[1]
            .to_string()
            .starts_with(r#"metadata.labels: Invalid value: "c d": a valid label must be"#)
    );
    let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT_BYTES);
    check(
        json!({"name": "a", "annotations": {"k": big}}),
        false,
        &["metadata.annotations: Too long: may not be more than 262144 bytes"],
    );
}

#[test]
fn finalizers() {
    check(
        json!({"name": "a", "finalizers": ["orphan", "foregroundDeletion"]}),
        false,
        &[
            r#"metadata.finalizers: Invalid value: []interface {}{"orphan", "foregroundDeletion"}: finalizer orphan and foregroundDeletion cannot be both set"#,
        ],
    );
    let errors = validate_object_meta(&json!({"name": "a", "finalizers": ["a/b/c"]}), false);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .starts_with(r#"metadata.finalizers: Invalid value: "a/b/c": a qualified name"#)
    );
}

#[test]
fn owner_references() {
    check(
        json!({"name": "a", "ownerReferences": [{}]}),
        false,
        &[
            r#"metadata.ownerReferences.apiVersion: Invalid value: "": version must not be empty"#,
            r#"metadata.ownerReferences.kind: Invalid value: "": kind must not be empty"#,
            r#"metadata.ownerReferences.name: Invalid value: "": name must not be empty"#,
            r#"metadata.ownerReferences.uid: Invalid value: "": uid must not be empty"#,
        ],
    );
    let two_controllers = json!({"name": "a", "ownerReferences": [
        {"apiVersion": "v1", "kind": "A", "name": "x", "uid": "1", "controller": true},
        {"apiVersion": "v1", "kind": "B", "name": "y", "uid": "2", "controller": true}
    ]});
    let errors = validate_object_meta(&two_controllers, false);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .detail
            .ends_with(r#"Found "true" in references for A/x and B/y"#)
    );
    let bad_controller = json!({"name": "a", "ownerReferences": [{"apiVersion": "v1", "kind": "A", "name": "x", "uid": "1", "controller": "yes"}]});
    check(
        bad_controller,
        false,
        &[
            r#"metadata.ownerReferences[0].controller: Invalid value: "yes": must be of type boolean"#,
        ],
    );
}

#[test]
fn managed_fields() {
    check(
        json!({"name": "a", "managedFields": [{"manager": "m", "operation": "Patch", "fieldsType": "FieldsV2"}]}),
        false,
        &[
            "metadata.managedFields[0].operation: Invalid value: \"Patch\": must be `Apply` or `Update`",
            "metadata.managedFields[0].fieldsType: Invalid value: \"FieldsV2\": must be `FieldsV1`",
        ],
    );
}

#[test]
fn update_rules() {
    let old = json!({"name": "a", "uid": "1", "generation": 2, "deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["x"]});
    let new = json!({"name": "a", "uid": "2", "generation": 1, "deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["x", "y"]});
    assert_eq!(
        messages(&validate_object_meta_update(&new, &old, false)),
        [
            r#"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{"y"}"#,
            "metadata.generation: Invalid value: 1: must not be decremented",
            r#"metadata.uid: Invalid value: "2": field is immutable"#,
        ]
    );
    assert!(validate_object_meta_update(&old, &old, false).is_empty());
}

#[test]
fn embedded_metadata_uses_path_segment_names() {
    assert!(
        validate_embedded_object_meta("spec.template.metadata", &json!({"name": "Web_1"}))
            .is_empty()
    );
    assert!(validate_embedded_object_meta("spec.template.metadata", &json!({})).is_empty());
    assert_eq!(
        messages(&validate_embedded_object_meta(
            "spec.template.metadata",
            &json!({"name": "a/b"})
        )),
        [r#"spec.template.metadata.name: Invalid value: "a/b": may not contain '/'"#]
    );
}

#[test]
fn mask_trailing_dash_matches_kubernetes() {
    assert_eq!(mask_trailing_dash("web-"), "wea");
    assert_eq!(mask_trailing_dash("-"), "-");
    assert_eq!(mask_trailing_dash("é-"), "é-");
}

proptest::proptest! {
    #[test]
    fn never_panics_on_arbitrary_json(s in "\\PC{0,40}", n in proptest::num::i64::ANY) {
        let candidates = [
            json!({"name": s, "labels": {s.clone(): s.clone()}, "generation": n}),
            json!({"generateName": s, "finalizers": [s.clone(), n], "ownerReferences": [{"apiVersion": s}]}),
            json!({"annotations": {"a": n}, "managedFields": [{"manager": s}]}),
            json!(s),
        ];
        for meta in candidates {
            let _ = validate_object_meta(&meta, true);
            let _ = validate_object_meta_update(&meta, &json!({"deletionTimestamp": "x"}), false);
        }
    }
}
