//! The two patch formats custom resources accept besides apply: JSON merge patch (RFC 7386)
//! and JSON patch (RFC 6902), with the semantics of the evanphx/json-patch v4 library that the
//! Kubernetes apiserver uses.
//!
//! - [`merge_patch`]: the patch must be a JSON object, else [`PatchError::NotAnObject`] (400
//!   `Invalid JSON Patch`). `null` members delete, objects merge recursively, anything else
//!   replaces.
//! - [`json_patch()`]: the patch must decode as an array of operations, else
//!   [`PatchError::Decode`] (400); more than 10,000 operations is
//!   [`PatchError::TooManyOperations`] (413, as Kubernetes); an operation that cannot be
//!   applied is [`PatchError::Apply`] (422) naming the operation and its path; one that would
//!   take the document past its [`JsonPatchLimits`] is [`PatchError::TooLarge`] or
//!   [`PatchError::TooDeep`] (422), and nothing of it is built.
//!
//! # Why JSON patches are bounded
//!
//! Each `copy` can double the document (`copy / to /a`, then `/a` to `/b`, …): 10,000
//! operations of a tiny patch would build an object of 2^10000 bytes (Kubernetes'
//! CVE-2019-1002100). So a patch may *create* at most [`JsonPatchLimits::max_created_bytes`]:
//! the compact JSON of every value an `add`, `replace` or `copy` puts in, summed over the patch.
//! Removals are never credited back: that bounds the work of the whole patch (each copy costs
//! what it creates), not only its result. Kubernetes counts copies only, against 3 MiB
//! (`JSONPatchMaxCopyBytes`, evanphx `AccumulatedCopySizeLimit`), and answers 422; the values
//! an `add` or `replace` brings are in the body, so counting them too changes little. And
//! since each `copy` (or `move`) into a child of what it copies can double the nesting, no
//! operation may put a value deeper than [`JsonPatchLimits::max_depth`]: the document never
//! grows deeper than the limit, so nothing that walks it later can run out of stack.
//!
//! **Invariants:**
//! - Neither function modifies its inputs; a failed JSON patch leaves nothing half-applied.
//! - A JSON patch creates at most `max_created_bytes` and never nests the document deeper than
//!   `max_depth` levels (unless the target already was).
//! - `merge_patch(x, {}) == x`.
//! - A `test` whose value is `null` succeeds on a path whose parent object exists but lacks the
//!   key, as in evanphx/json-patch v4 (`patch.go` `test`). kube-runtime's finalizer helper sends
//!   `test /metadata/finalizers == null` on objects without finalizers and relies on this. The
//!   `json-patch` crate alone would fail it.
//! - Nothing here panics on any input.

use serde_json::Value;

use crate::limits;

/// Kubernetes' `maxJSONPatchOperations`.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// What one JSON patch may build (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonPatchLimits {
    /// The most bytes (compact JSON) the values of the patch's `add`, `replace` and `copy`
    /// operations may add up to.
    pub max_created_bytes: usize,
    /// The deepest nesting any operation may give the document (the document is level 1).
    pub max_depth: usize,
}

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// A merge patch that is not a JSON object. Kubernetes answers 400 with this message.
    #[error("Invalid JSON Patch")]
    NotAnObject,
    /// A JSON patch that is not an array of well-formed operations (400).
    #[error("invalid JSON patch document: {detail}")]
    Decode { detail: String },
    /// A JSON patch with more operations than Kubernetes allows (413).
    #[error("The allowed count of operations in the patch document is {max}, got {count}")]
    TooManyOperations { count: usize, max: usize },
    /// An operation that does not apply to the document (422).
    #[error("the \"{op}\" operation at index {index} on path \"{path}\" failed: {reason}")]
    Apply {
        index: usize,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// An operation that would take the bytes the patch creates past the limit (422).
    #[error(
        "the \"{op}\" operation at index {index} on path \"{path}\" failed: the patch would create more than {max} bytes"
    )]
    TooLarge {
        index: usize,
        op: &'static str,
        path: String,
        max: usize,
    },
    /// An operation that would nest the document deeper than the limit (422).
    #[error(
        "the \"{op}\" operation at index {index} on path \"{path}\" failed: the value would be nested {depth} levels deep, more than the limit of {max}"
    )]
    TooDeep {
        index: usize,
        op: &'static str,
        path: String,
        depth: usize,
        max: usize,
    },
}

/// Applies an RFC 7386 merge patch to `target` and returns the result.
pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::NotAnObject);
    }
    let mut result = target.clone();
    merge_into(&mut result, patch);
    Ok(result)
}

fn merge_into(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.shift_remove(key);
        } else {
            merge_into(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies an RFC 6902 JSON patch to `target` within `limits` and returns the result.
pub fn json_patch(
    target: &Value,
    patch: &Value,
    limits: JsonPatchLimits,
) -> Result<Value, PatchError> {
    if let Value::Array(ops) = patch
        && ops.len() > MAX_JSON_PATCH_OPERATIONS
    {
        return Err(PatchError::TooManyOperations {
            count: ops.len(),
            max: MAX_JSON_PATCH_OPERATIONS,
        });
    }
    let operations: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Decode {
            detail: e.to_string(),
        })?;
    let mut document = target.clone();
    let mut created = 0usize;
    for (index, operation) in operations.0.iter().enumerate() {
        created = check_growth(&document, index, operation, created, limits)?;
        if let json_patch::PatchOperation::Test(test) = operation
            && test.value.is_null()
            && is_missing_key_of_existing_object(&document, test.path.as_str())
        {
            continue;
        }
        // One operation at a time on our own copy: a failure needs no undo, so the crate's
        // rollback path (which asserts it cannot fail) is never entered.
        json_patch::patch_unsafe(&mut document, std::slice::from_ref(operation)).map_err(|e| {
            PatchError::Apply {
                index,
                op: op_name(operation),
                path: operation.path().to_string(),
                reason: e.kind.to_string(),
            }
        })?;
    }
    Ok(document)
}

/// Checks what `operation` would put into `document` against `limits`, before it is applied;
/// returns the bytes the patch has created with it. An operation whose source is missing is let
/// through: applying it fails.
fn check_growth(
    document: &Value,
    index: usize,
    operation: &json_patch::PatchOperation,
    created: usize,
    limits: JsonPatchLimits,
) -> Result<usize, PatchError> {
    use json_patch::PatchOperation as Op;
    let (value, creates) = match operation {
        Op::Add(add) => (Some(&add.value), true),
        Op::Replace(replace) => (Some(&replace.value), true),
        Op::Copy(copy) => (document.pointer(copy.from.as_str()), true),
        Op::Move(moved) => (document.pointer(moved.from.as_str()), false),
        Op::Remove(_) | Op::Test(_) => (None, false),
    };
    let Some(value) = value else {
        return Ok(created);
    };
    let path = operation.path().as_str();
    // The value lies under as many containers as the path has segments.
    let depth = path.matches('/').count() + limits::depth(value);
    if depth > limits.max_depth {
        return Err(PatchError::TooDeep {
            index,
            op: op_name(operation),
            path: path.to_string(),
            depth,
            max: limits.max_depth,
        });
    }
    if !creates {
        return Ok(created);
    }
    let created = created.saturating_add(limits::serialized_len(value));
    if created > limits.max_created_bytes {
        return Err(PatchError::TooLarge {
            index,
            op: op_name(operation),
            path: path.to_string(),
            max: limits.max_created_bytes,
        });
    }
    Ok(created)
}

/// Whether `pointer` names a key that its parent object lacks (evanphx v4 reads it as `null`).
fn is_missing_key_of_existing_object(document: &Value, pointer: &str) -> bool {
    let Some((parent, _)) = pointer.rsplit_once('/') else {
        return false;
    };
    document.pointer(parent).is_some_and(Value::is_object) && document.pointer(pointer).is_none()
}

fn op_name(operation: &json_patch::PatchOperation) -> &'static str {
    match operation {
        json_patch::PatchOperation::Add(_) => "add",
        json_patch::PatchOperation::Remove(_) => "remove",
        json_patch::PatchOperation::Replace(_) => "replace",
        json_patch::PatchOperation::Move(_) => "move",
        json_patch::PatchOperation::Copy(_) => "copy",
        json_patch::PatchOperation::Test(_) => "test",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Generous limits, for the tests of everything else.
    const LIMITS: JsonPatchLimits = JsonPatchLimits {
        max_created_bytes: 1 << 20,
        max_depth: 100,
    };

    fn check_merge(target: Value, patch: Value, expected: Result<Value, PatchError>) {
        assert_eq!(merge_patch(&target, &patch), expected, "{target} + {patch}");
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386 appendix A, with an object patch.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
            (
                json!({"metadata": {"labels": {"a": "1"}}}),
                json!({"metadata": {"labels": {"b": "2"}}}),
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            check_merge(target, patch, Ok(expected));
        }
    }

    #[test]
    fn merge_patch_keeps_member_order() {
        let target = json!({"a": 1, "b": 2, "c": 3, "d": 4});
        let patched = merge_patch(&target, &json!({"b": null, "e": 5, "a": 0})).unwrap();
        assert_eq!(patched.to_string(), r#"{"a":0,"c":3,"d":4,"e":5}"#);
    }

    #[test]
    fn merge_patch_that_is_not_an_object_is_rejected() {
        for patch in [
            json!([]),
            json!([{"op": "add"}]),
            json!("x"),
            json!(1),
            json!(null),
            json!(true),
        ] {
            check_merge(json!({}), patch, Err(PatchError::NotAnObject));
        }
        assert_eq!(PatchError::NotAnObject.to_string(), "Invalid JSON Patch");
    }

    fn check_json(target: Value, patch: Value, expected: Result<Value, &str>) {
        let actual = json_patch(&target, &patch, LIMITS).map_err(|e| e.to_string());
        assert_eq!(
            actual,
            expected.map_err(str::to_string),
            "{target} + {patch}"
        );
    }

    #[test]
    fn json_patch_applies_operations() {
        let cases = [
            (json!({}), json!([]), json!({})),
            (
                json!({"a": 1}),
                json!([{"op": "add", "path": "/b", "value": 2}]),
                json!({"a": 1, "b": 2}),
            ),
            (
                json!({"a": [1, 2]}),
                json!([{"op": "add", "path": "/a/-", "value": 3}]),
                json!({"a": [1, 2, 3]}),
            ),
            (
                json!({"a": [1, 2]}),
                json!([{"op": "add", "path": "/a/0", "value": 0}]),
                json!({"a": [0, 1, 2]}),
            ),
            (
                json!({"a": [1, 2]}),
                json!([{"op": "remove", "path": "/a/0"}]),
                json!({"a": [2]}),
            ),
            (
                json!({"a": 1}),
                json!([{"op": "replace", "path": "/a", "value": 5}]),
                json!({"a": 5}),
            ),
            (
                json!({"a": 1}),
                json!([{"op": "move", "from": "/a", "path": "/b"}]),
                json!({"b": 1}),
            ),
            (
                json!({"a": 1}),
                json!([{"op": "copy", "from": "/a", "path": "/b"}]),
                json!({"a": 1, "b": 1}),
            ),
            (
                json!({"a": 1}),
                json!([{"op": "test", "path": "/a", "value": 1}]),
                json!({"a": 1}),
            ),
            (
                json!({"a/b": 1, "c~d": 2}),
                json!([{"op": "remove", "path": "/a~1b"}, {"op": "remove", "path": "/c~0d"}]),
                json!({}),
            ),
        ];
        for (target, patch, expected) in cases {
            check_json(target, patch, Ok(expected));
        }
    }

    #[test]
    fn test_of_missing_key_against_null_succeeds_like_evanphx_v4() {
        // kube-runtime's finalizer helper on an object without finalizers.
        let object = json!({"metadata": {"name": "x"}});
        let patch = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["corral.dev/cleanup"]}
        ]);
        check_json(
            object,
            patch,
            Ok(json!({"metadata": {"name": "x", "finalizers": ["corral.dev/cleanup"]}})),
        );
        // A present null is null too.
        check_json(
            json!({"a": null}),
            json!([{"op": "test", "path": "/a", "value": null}]),
            Ok(json!({"a": null})),
        );
    }

    #[test]
    fn test_of_null_still_fails_where_evanphx_fails() {
        check_json(
            json!({"a": 1}),
            json!([{"op": "test", "path": "/a", "value": null}]),
            Err(r#"the "test" operation at index 0 on path "/a" failed: value did not match"#),
        );
        check_json(
            json!({}),
            json!([{"op": "test", "path": "/missing/child", "value": null}]),
            Err(
                r#"the "test" operation at index 0 on path "/missing/child" failed: path is invalid"#,
            ),
        );
        check_json(
            json!({"a": []}),
            json!([{"op": "test", "path": "/a/0", "value": null}]),
            Err(r#"the "test" operation at index 0 on path "/a/0" failed: path is invalid"#),
        );
    }

    #[test]
    fn failed_operations_name_op_and_path() {
        check_json(
            json!({"a": 1}),
            json!([{"op": "add", "path": "/b", "value": 1}, {"op": "remove", "path": "/missing"}]),
            Err(r#"the "remove" operation at index 1 on path "/missing" failed: path is invalid"#),
        );
        check_json(
            json!({"a": 1}),
            json!([{"op": "test", "path": "/a", "value": 2}]),
            Err(r#"the "test" operation at index 0 on path "/a" failed: value did not match"#),
        );
        check_json(
            json!({}),
            json!([{"op": "replace", "path": "/x", "value": 1}]),
            Err(r#"the "replace" operation at index 0 on path "/x" failed: path is invalid"#),
        );
    }

    #[test]
    fn undecodable_patches_are_decode_errors() {
        for patch in [
            json!({}),
            json!("x"),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add"}]),
            json!([{"op": "add", "path": "a", "value": 1}]),
        ] {
            assert!(
                matches!(
                    json_patch(&json!({}), &patch, LIMITS),
                    Err(PatchError::Decode { .. })
                ),
                "{patch}"
            );
        }
    }

    #[test]
    fn too_many_operations_are_refused() {
        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "", "value": {}}))
            .collect();
        assert_eq!(
            json_patch(&json!({}), &Value::Array(ops), LIMITS),
            Err(PatchError::TooManyOperations {
                count: 10_001,
                max: 10_000
            })
        );
    }

    #[test]
    fn a_copy_bomb_is_refused_before_it_grows() {
        // Each copy doubles the document: 64 of them would build 2^64 copies of the leaf.
        let mut ops = vec![json!({"op": "add", "path": "/a", "value": ["0123456789"]})];
        for _ in 0..64 {
            ops.push(json!({"op": "copy", "from": "/a", "path": "/b"}));
            ops.push(json!({"op": "add", "path": "/a/-", "value": null}));
            ops.push(json!({"op": "move", "from": "/b", "path": "/a/-"}));
        }
        let limits = JsonPatchLimits {
            max_created_bytes: 100_000,
            max_depth: 100,
        };
        let error = json_patch(&json!({}), &Value::Array(ops), limits).unwrap_err();
        let PatchError::TooLarge { op, max, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!((*op, *max), ("copy", 100_000));
        assert!(
            error
                .to_string()
                .ends_with("failed: the patch would create more than 100000 bytes"),
            "{error}"
        );
    }

    #[test]
    fn created_bytes_count_adds_replaces_and_copies_never_removals() {
        let value = json!("x".repeat(98)); // 100 bytes as JSON
        let limits = JsonPatchLimits {
            max_created_bytes: 300,
            max_depth: 100,
        };
        let op = |op: &str, path: &str| json!({"op": op, "path": path, "value": value});
        let copy = json!({"op": "copy", "from": "/a", "path": "/c"});
        let remove = json!({"op": "remove", "path": "/a"});
        // add + replace + copy: exactly 300.
        let fits = json!([op("add", "/a"), op("replace", "/a"), copy]);
        assert!(json_patch(&json!({}), &fits, limits).is_ok());
        // A removal in between gives nothing back.
        let over = json!([
            op("add", "/a"),
            remove,
            op("add", "/a"),
            op("add", "/b"),
            op("add", "/c")
        ]);
        assert!(matches!(
            json_patch(&json!({}), &over, limits),
            Err(PatchError::TooLarge { index: 4, .. })
        ));
        // The target's own size does not count.
        let big = json!({"big": "y".repeat(10_000)});
        assert!(json_patch(&big, &json!([op("add", "/a")]), limits).is_ok());
    }

    #[test]
    fn no_operation_may_nest_the_document_deeper_than_the_limit() {
        let limits = JsonPatchLimits {
            max_created_bytes: 1 << 20,
            max_depth: 4,
        };
        // `/a/b` is under 2 containers; a value of depth 2 reaches level 4.
        let at_limit = json!([{"op": "add", "path": "/a", "value": {"b": null}},
                              {"op": "add", "path": "/a/b", "value": {"c": []}}]);
        assert!(json_patch(&json!({}), &at_limit, limits).is_ok());
        let too_deep = json!([{"op": "add", "path": "/a", "value": {"b": {"c": {"d": []}}}}]);
        let error = json_patch(&json!({}), &too_deep, limits).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"the "add" operation at index 0 on path "/a" failed: the value would be nested 5 levels deep, more than the limit of 4"#
        );
        // Copying or moving a value under itself doubles its nesting.
        let nest = |op: &str| {
            json!([{"op": "add", "path": "/a", "value": {"b": {}}},
                   {"op": op, "from": "/a", "path": "/a/b/c"}])
        };
        for op in ["copy", "move"] {
            assert!(
                matches!(
                    json_patch(&json!({}), &nest(op), limits),
                    Err(PatchError::TooDeep {
                        index: 1,
                        depth: 5,
                        ..
                    })
                ),
                "{op}"
            );
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn empty_merge_patch_is_identity(inner in arbitrary_json()) {
            // Objects are what the server patches; RFC 7386 turns any other target into `{}`.
            let target = json!({"metadata": {}, "spec": inner});
            prop_assert_eq!(merge_patch(&target, &json!({})), Ok(target));
        }

        #[test]
        fn merge_patch_is_idempotent(target in arbitrary_json(), patch in arbitrary_json()) {
            if let Ok(once) = merge_patch(&target, &patch) {
                prop_assert_eq!(merge_patch(&once, &patch), Ok(once));
            }
        }

        #[test]
        fn json_patch_never_panics(target in arbitrary_json(), patch in arbitrary_json()) {
            let _ = json_patch(&target, &patch, LIMITS);
        }

        #[test]
        fn json_patch_never_panics_on_operations(
            target in arbitrary_json(),
            ops in proptest::collection::vec(
                (prop_oneof![Just("add"), Just("remove"), Just("replace"), Just("move"), Just("copy"), Just("test")],
                 "(/([a-c]|[0-2]|-)){0,3}", "(/([a-c]|[0-2]|-)){0,3}", arbitrary_json()),
                0..4)
        ) {
            let patch: Vec<Value> = ops
                .into_iter()
                .map(|(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}))
                .collect();
            let _ = json_patch(&target, &Value::Array(patch), LIMITS);
        }
    }
}
