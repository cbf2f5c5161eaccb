//! Validation and defaulting (§4): schema defaults, field causes and `fieldValidation`.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn defaults_are_applied_on_every_write() {
    let h = Harness::start().await;
    let created = h.create_widget("a", json!({"color": "red"})).await;
    assert_eq!(created["spec"]["size"], 10);
    let a = widget_path("a");
    let cleared = h
        .merge_patch(&a, &json!({"spec": {"size": null, "note": "x"}}))
        .await
        .expect(200);
    assert_eq!(
        cleared["spec"]["size"], 10,
        "a removed defaulted field comes back"
    );
    let mut body = cleared;
    body["spec"] = json!({"color": "blue"});
    let put = h.put(&a, &body).await.expect(200);
    assert_eq!(put["spec"], json!({"color": "blue", "size": 10}));
}

#[tokio::test]
async fn schema_violations_are_invalid_with_field_causes() {
    let h = Harness::start().await;
    let cases = [
        ("bad-enum", json!({"color": "purple"}), "spec.color"),
        ("too-small", json!({"color": "red", "size": 0}), "spec.size"),
        ("too-big", json!({"color": "red", "size": 101}), "spec.size"),
        (
            "wrong-type",
            json!({"color": "red", "size": "big"}),
            "spec.size",
        ),
        ("missing-required", json!({"size": 3}), "spec.color"),
        (
            "too-long",
            json!({"color": "red", "note": "x".repeat(17)}),
            "spec.note",
        ),
        (
            "list-key-missing",
            json!({"color": "red", "ports": [{"port": 1}]}),
            "spec.ports[0].name",
        ),
        ("Bad_Name", json!({"color": "red"}), "metadata.name"),
    ];
    for (name, spec, field) in cases {
        let status = h
            .post(WIDGETS, &widget(name, spec))
            .await
            .expect_error(422, "Invalid");
        let message = message(&status);
        assert!(
            message.starts_with(&format!("Widget.test.corral.dev \"{name}\" is invalid: ")),
            "{message}"
        );
        assert!(
            cause_fields(&status).contains(&field.to_string()),
            "{name}: expected a cause for {field}: {status}"
        );
        for cause in causes(&status) {
            assert!(
                cause["reason"].is_string() && cause["message"].is_string(),
                "{cause}"
            );
        }
        assert!(h.is_gone(&widget_path(name)).await, "{name} was not stored");
    }
    // Updates are validated the same way.
    h.create_widget("a", json!({"color": "red"})).await;
    let status = h
        .merge_patch(&widget_path("a"), &json!({"spec": {"color": "purple"}}))
        .await
        .expect_error(422, "Invalid");
    assert_eq!(cause_fields(&status), ["spec.color"]);
    assert_eq!(
        h.get(&widget_path("a")).await.expect(200)["spec"]["color"],
        "red"
    );
}

#[tokio::test]
async fn unknown_fields_follow_field_validation() {
    let h = Harness::start().await;
    let body = |name: &str| widget(name, json!({"color": "red", "bogus": 1}));
    // (query, name, status, warned)
    let cases = [
        ("?fieldValidation=Strict", "strict", 400, false),
        ("", "default", 201, true),
        ("?fieldValidation=Warn", "warn", 201, true),
        ("?fieldValidation=Ignore", "ignore", 201, false),
    ];
    for (query, name, code, warned) in cases {
        let reply = h.post(&format!("{WIDGETS}{query}"), &body(name)).await;
        let warnings = reply.warnings();
        let result = reply.expect(code);
        if code == 400 {
            assert_eq!(result["reason"], "BadRequest");
            assert!(
                message(&result).contains("unknown field \"spec.bogus\""),
                "{result}"
            );
            assert!(h.is_gone(&widget_path(name)).await);
            continue;
        }
        assert!(
            result["spec"].get("bogus").is_none(),
            "{name}: pruned: {result}"
        );
        let stored = h.get(&widget_path(name)).await.expect(200);
        assert!(stored["spec"].get("bogus").is_none());
        if warned {
            assert!(
                warnings.iter().any(
                    |w| w.starts_with("299 ") && w.contains("unknown field \\\"spec.bogus\\\"")
                ),
                "{name}: warnings {warnings:?}"
            );
        } else {
            assert!(warnings.is_empty(), "{name}: warnings {warnings:?}");
        }
    }

    // Strict applies to every write: PUT, merge patch and apply.
    let a = widget_path("default");
    let mut put = h.get(&a).await.expect(200);
    put["spec"]["bogus"] = json!(1);
    h.put(&format!("{a}?fieldValidation=Strict"), &put)
        .await
        .expect_error(400, "BadRequest");
    h.merge_patch(
        &format!("{a}?fieldValidation=Strict"),
        &json!({"spec": {"bogus": 1}}),
    )
    .await
    .expect_error(400, "BadRequest");
    h.apply(
        &format!("{a}?fieldManager=m&fieldValidation=Strict"),
        &body("default"),
    )
    .await
    .expect_error(400, "BadRequest");
    let reply = h
        .merge_patch(&a, &json!({"spec": {"bogus": 1, "size": 3}}))
        .await;
    assert!(!reply.warnings().is_empty());
    assert_eq!(
        reply.expect(200)["spec"],
        json!({"color": "red", "size": 3})
    );
}
