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
        &[r#"spec.cpus: Invalid value: "null": spec.cpus in body must be of type integer: "null""#],
    );
    check(
        schema.clone(),
        json!({"spec": {"on": "true"}}),
        &[r#"spec.on: Invalid value: "string": spec.on in body must be of type boolean: "string""#],
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
        &["spec.cpus: Invalid value: 100: spec.cpus in body should be less than or equal to 64"],
    );
    check(
        schema.clone(),
        json!({"spec": {"cpus": 0}}),
        &["spec.cpus: Invalid value: 0: spec.cpus in body should be greater than or equal to 1"],
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
        &[r#"spec.name: Invalid value: "a": spec.name in body should be at least 2 chars long"#],
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
        &[r#"spec.unique: Invalid value: "": spec.unique in body shouldn't contain duplicates"#],
    );
    check(
        schema.clone(),
        json!({"spec": {"labels": {}}}),
        &["spec.labels: Invalid value: 0: spec.labels in body should have at least 1 properties"],
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
