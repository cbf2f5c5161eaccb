use serde_json::json;

use super::*;

/// `{"a":{"a":…{"a":leaf}}}` with `levels` objects.
fn nested(levels: usize, leaf: Value) -> Value {
    (0..levels).fold(leaf, |inner, _| json!({ "a": inner }))
}

#[test]
fn depth_counts_containers() {
    let cases = [
        (json!(1), 0),
        (json!({}), 1),
        (json!([]), 1),
        (json!({"a": 1}), 1),
        (json!({"a": {"b": [1, {"c": []}]}}), 5),
        (nested(200, json!(null)), 200),
    ];
    for (value, expected) in cases {
        assert_eq!(depth(&value), expected, "{value}");
    }
}

#[test]
fn depth_of_a_very_deep_value_does_not_exhaust_the_stack() {
    let mut value = json!(null);
    for _ in 0..100_000 {
        value = Value::Array(vec![value]);
    }
    assert_eq!(depth(&value), 100_000);
    assert!(depth_violation(&value, 100).is_some());
    // Dropping the value recurses (serde_json's own Drop); take it apart iteratively.
    let mut current = value;
    while let Value::Array(mut items) = current {
        current = items.pop().unwrap_or(Value::Null);
    }
}

#[test]
fn serialized_len_is_the_compact_json_length() {
    for value in [
        json!(null),
        json!({"a": [1, 2, "three"], "b": {"c": "é\n"}}),
        nested(50, json!("x")),
    ] {
        assert_eq!(serialized_len(&value), value.to_string().len(), "{value}");
    }
}

#[test]
fn objects_nested_deeper_than_the_limit_are_refused_naming_the_field() {
    let object = |spec: Value| json!({"metadata": {"name": "x"}, "spec": spec});
    // The object is level 1, spec level 2: spec may hold 9 levels under a limit of 10.
    assert_eq!(depth_violation(&object(nested(9, json!(1))), 10), None);
    let error = depth_violation(&object(nested(10, json!(1))), 10).expect("a violation");
    assert_eq!(error.kind, FieldErrorKind::Forbidden);
    assert_eq!(error.field, format!("spec{}", ".a".repeat(9)));
    assert_eq!(
        error.to_string(),
        format!(
            "spec{}: Forbidden: nested too deeply: an object may nest at most 10 levels",
            ".a".repeat(9)
        )
    );
    let in_a_list = json!({"spec": {"items": [{"x": 1}, {"y": [[[]]]}]}});
    assert_eq!(
        depth_violation(&in_a_list, 5).expect("a violation").field,
        "spec.items[1].y[0]"
    );
}

#[test]
fn managed_fields_may_nest_a_few_levels_more() {
    let with_managed = |fields: Value| json!({"metadata": {"name": "x", "managedFields": [{"manager": "m", "fieldsV1": fields}]}});
    // The root of fieldsV1 is level 5; under a limit of 10, managedFields may reach 15.
    assert_eq!(
        depth_violation(&with_managed(nested(10, json!({}))), 10),
        None
    );
    let error = depth_violation(&with_managed(nested(11, json!({}))), 10).expect("a violation");
    assert!(
        error
            .field
            .starts_with("metadata.managedFields[0].fieldsV1.a.a"),
        "{}",
        error.field
    );
    assert!(error.to_string().ends_with("at most 15 levels"), "{error}");
    // The rest of the object is held to the limit itself.
    let mut deep_spec = with_managed(json!({}));
    deep_spec["spec"] = nested(10, json!(1));
    assert_eq!(
        depth_violation(&deep_spec, 10).expect("a violation").field,
        format!("spec{}", ".a".repeat(9))
    );
}

#[test]
fn objects_larger_than_the_limit_are_refused_naming_their_largest_field() {
    let object = json!({"metadata": {"name": "x"}, "spec": {"note": "y".repeat(1000)}});
    let size = serialized_len(&object);
    assert_eq!(size_violation(&object, size), None);
    let error = size_violation(&object, size - 1).expect("a violation");
    assert_eq!(error.kind, FieldErrorKind::TooLong);
    assert_eq!(error.field, "spec");
    assert!(
        error.to_string().contains(&format!(
            "the object would take {size} bytes, more than the limit of {}",
            size - 1
        )),
        "{error}"
    );
}

#[test]
fn what_the_default_limits_admit_every_serde_json_reader_reads_back() {
    let limits = ObjectLimits::DEFAULT;
    // The deepest object the limits admit: fields to the limit, managedFields beyond them
    // (the root of `fieldsV1` is level 5).
    let object = json!({
        "metadata": {"name": "x", "managedFields": [{
            "fieldsV1": nested(limits.max_depth, json!({}))
        }]},
        "spec": nested(limits.max_depth - 1, json!(1)),
    });
    assert_eq!(object_violation(&object, limits), None);
    assert_eq!(
        depth(&object),
        limits.max_depth + MANAGED_FIELDS_EXTRA_DEPTH
    );
    // As a watch event of a Table row with the whole object, the deepest reply there is.
    let row = json!({"kind": "Table", "rows": [{"cells": [], "object": object}]});
    let event = json!({"type": "ADDED", "object": row});
    assert_eq!(depth(&event), depth(&object) + WRAPPING_DEPTH);
    let text = event.to_string();
    assert!(serde_json::from_str::<Value>(&text).is_ok());
    // And the decoder's limit is where this module says it is.
    assert!(serde_json::from_str::<Value>(&nested(DECODER_DEPTH, json!(1)).to_string()).is_ok());
    assert!(
        serde_json::from_str::<Value>(&nested(DECODER_DEPTH + 1, json!(1)).to_string()).is_err()
    );
}
