//! PATCH (§5): merge patch, JSON patch and server-side apply with its field managers.

use axum::http::Method;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn merge_patch_follows_rfc_7386() {
    let h = Harness::start().await;
    let created = h
        .create_widget(
            "a",
            json!({"color": "red", "note": "n", "tags": ["a", "b"]}),
        )
        .await;
    let a = widget_path("a");
    let patched = h
        .merge_patch(
            &a,
            &json!({"spec": {"note": null, "tags": ["c"], "size": 5}}),
        )
        .await
        .expect(200);
    assert_eq!(
        patched["spec"],
        json!({"color": "red", "size": 5, "tags": ["c"]})
    );

    // A resourceVersion in the patch is a precondition.
    let status = h
        .merge_patch(
            &a,
            &json!({"metadata": {"resourceVersion": rv(&created)}, "spec": {"size": 6}}),
        )
        .await
        .expect_error(409, "Conflict");
    assert!(message(&status).contains("has been modified"));
    h.merge_patch(
        &a,
        &json!({"metadata": {"resourceVersion": rv(&patched)}, "spec": {"size": 6}}),
    )
    .await
    .expect(200);

    h.merge_patch(&widget_path("missing"), &json!({"spec": {"size": 6}}))
        .await
        .expect_error(404, "NotFound");
}

#[tokio::test]
async fn json_patch_test_of_a_missing_path_against_null_succeeds() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    let a = widget_path("a");
    // kube-runtime's finalizer(): test the list is absent, then add it.
    let first = h
        .json_patch(
            &a,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["test/one"]},
            ]),
        )
        .await
        .expect(200);
    assert_eq!(first["metadata"]["finalizers"], json!(["test/one"]));
    let second = h
        .json_patch(
            &a,
            &json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "test/two"}]),
        )
        .await
        .expect(200);
    assert_eq!(
        second["metadata"]["finalizers"],
        json!(["test/one", "test/two"])
    );
    let third = h
        .json_patch(
            &a,
            &json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": "test/one"},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ]),
        )
        .await
        .expect(200);
    assert_eq!(third["metadata"]["finalizers"], json!(["test/two"]));

    // An op that fails to apply is 422 and changes nothing; an undecodable patch is 400.
    let failing = [
        json!([{"op": "test", "path": "/spec/color", "value": "blue"}]),
        json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]),
        json!([{"op": "remove", "path": "/spec/nothing"}]),
    ];
    for patch in failing {
        h.json_patch(&a, &patch).await.expect_error(422, "Invalid");
    }
    for body in [
        json!({"op": "add"}),
        json!([{"op": "frobnicate", "path": "/x"}]),
    ] {
        h.json_patch(&a, &body)
            .await
            .expect_error(400, "BadRequest");
    }
    let reply = h
        .call(
            Method::PATCH,
            &a,
            &[("content-type", "application/json-patch+json")],
            b"[{".to_vec(),
        )
        .await;
    reply.expect_error(400, "BadRequest");
    assert_eq!(h.get(&a).await.expect(200), third);
}

#[tokio::test]
async fn apply_creates_a_missing_object_and_merges_into_an_existing_one() {
    let h = Harness::start().await;
    let a = widget_path("a");
    let created = h
        .apply_widget(
            "fieldManager=alpha",
            "a",
            json!({"color": "red", "tags": ["x"]}),
        )
        .await
        .expect(201);
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["namespace"], "default");
    assert!(created["metadata"]["uid"].is_string());
    assert_eq!(
        created["spec"]["size"], 10,
        "defaults apply to applied objects"
    );
    let entry = managed_entry(&created, "alpha", "Apply").expect("alpha's entry");
    assert_eq!(entry["apiVersion"], API_VERSION);
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert!(is_k8s_time(entry["time"].as_str().unwrap_or("")), "{entry}");
    assert!(
        entry["fieldsV1"]["f:spec"]["f:color"].is_object(),
        "{entry}"
    );
    assert!(entry.get("subresource").is_none(), "{entry}");
    assert_eq!(h.get(&a).await.expect(200), created);

    // Another manager applies another field (as YAML this time): both are kept, each owns
    // its own.
    let yaml = format!(
        "apiVersion: {API_VERSION}\nkind: Widget\nmetadata:\n  name: a\nspec:\n  note: hello\n"
    );
    let merged = h
        .call(
            Method::PATCH,
            &format!("{a}?fieldManager=beta"),
            &[("content-type", "application/apply-patch+yaml")],
            yaml.into_bytes(),
        )
        .await
        .expect(200);
    assert_eq!(merged["spec"]["color"], "red");
    assert_eq!(merged["spec"]["note"], "hello");
    assert_eq!(merged["spec"]["tags"], json!(["x"]));
    assert_eq!(generation(&merged), 2);
    let beta =
        managed_entry(&merged, "beta", "Apply").unwrap_or_else(|| panic!("beta's entry: {merged}"));
    assert!(beta["fieldsV1"]["f:spec"]["f:note"].is_object(), "{beta}");
    assert!(
        beta["fieldsV1"]["f:spec"].get("f:color").is_none(),
        "{beta}"
    );
    assert!(managed_entry(&merged, "alpha", "Apply").is_some());

    // A non-apply write is recorded as an Update by its manager.
    let updated = h
        .merge_patch(
            &format!("{a}?fieldManager=gamma"),
            &json!({"spec": {"size": 42}}),
        )
        .await
        .expect(200);
    let gamma = managed_entry(&updated, "gamma", "Update").expect("gamma's entry");
    assert!(gamma["fieldsV1"]["f:spec"]["f:size"].is_object(), "{gamma}");

    // Without fieldManager, the manager is derived from the User-Agent.
    let reply = h
        .call(
            Method::PATCH,
            &a,
            &[
                ("content-type", "application/merge-patch+json"),
                ("user-agent", "kubectl/v1.32.4 (linux/amd64) kubernetes/abc"),
            ],
            serde_json::to_vec(&json!({"metadata": {"labels": {"x": "y"}}})).unwrap(),
        )
        .await
        .expect(200);
    assert!(
        managed_entry(&reply, "kubectl", "Update").is_some(),
        "{reply}"
    );
}

#[tokio::test]
async fn apply_conflicts_between_managers_unless_forced() {
    let h = Harness::start().await;
    let a = widget_path("a");
    let first = h
        .apply_widget("fieldManager=alpha", "a", json!({"color": "red"}))
        .await
        .expect(201);
    let status = h
        .apply_widget("fieldManager=beta", "a", json!({"color": "blue"}))
        .await
        .expect_error(409, "Conflict");
    assert!(
        message(&status).starts_with("Apply failed with 1 conflict"),
        "{status}"
    );
    let conflict = causes(&status);
    assert_eq!(conflict.len(), 1, "{status}");
    assert_eq!(conflict[0]["reason"], "FieldManagerConflict");
    assert_eq!(conflict[0]["message"], "conflict with \"alpha\"");
    assert_eq!(conflict[0]["field"], ".spec.color");
    assert_eq!(
        h.get(&a).await.expect(200),
        first,
        "a conflict changes nothing"
    );

    // Applying the value the other manager already set is not a conflict.
    h.apply_widget("fieldManager=beta", "a", json!({"color": "red"}))
        .await
        .expect(200);

    // An Update manager's fields conflict too.
    h.merge_patch(
        &format!("{a}?fieldManager=gamma"),
        &json!({"spec": {"size": 50}}),
    )
    .await
    .expect(200);
    let status = h
        .apply_widget(
            "fieldManager=alpha",
            "a",
            json!({"color": "red", "size": 60}),
        )
        .await
        .expect_error(409, "Conflict");
    let conflict = causes(&status);
    assert_eq!(conflict[0]["reason"], "FieldManagerConflict");
    assert_eq!(conflict[0]["field"], ".spec.size");
    assert!(
        conflict[0]["message"]
            .as_str()
            .unwrap()
            .contains("\"gamma\""),
        "{status}"
    );

    // force=true takes the field over.
    let forced = h
        .apply_widget(
            "fieldManager=delta&force=true",
            "a",
            json!({"color": "green"}),
        )
        .await
        .expect(200);
    assert_eq!(forced["spec"]["color"], "green");
    let owns_color = |manager: &str| {
        managed_entry(&forced, manager, "Apply")
            .is_some_and(|e| e["fieldsV1"]["f:spec"].get("f:color").is_some())
    };
    assert!(owns_color("delta"), "{forced}");
    assert!(!owns_color("alpha") && !owns_color("beta"), "{forced}");
}

#[tokio::test]
async fn apply_removes_fields_the_manager_stops_sending() {
    let h = Harness::start().await;
    h.apply_widget(
        "fieldManager=alpha",
        "a",
        json!({"color": "red", "note": "n", "tags": ["t"]}),
    )
    .await
    .expect(201);
    h.apply_widget(
        "fieldManager=beta",
        "a",
        json!({"ports": [{"name": "http", "port": 80}]}),
    )
    .await
    .expect(200);
    let after = h
        .apply_widget("fieldManager=alpha", "a", json!({"color": "red"}))
        .await
        .expect(200);
    assert_eq!(
        after["spec"],
        json!({"color": "red", "size": 10, "ports": [{"name": "http", "port": 80}]}),
        "alpha's dropped fields are gone, beta's stay"
    );
    // A field another manager also applied (same value) stays when one of them lets go.
    h.apply_widget(
        "fieldManager=beta",
        "a",
        json!({"color": "red", "ports": [{"name": "http", "port": 80}]}),
    )
    .await
    .expect(200);
    alpha_lets_go_of_color(&h, json!({})).await;
}

#[tokio::test]
async fn apply_of_an_equal_value_shares_ownership() {
    // Two appliers that set a field to the same value share it (SSA docs, "Conflicts"); the
    // second apply changes only managedFields and must still be recorded.
    let h = Harness::start().await;
    let first = h
        .apply_widget(
            "fieldManager=alpha",
            "a",
            json!({"color": "red", "note": "n"}),
        )
        .await
        .expect(201);
    let shared = h
        .apply_widget("fieldManager=beta", "a", json!({"color": "red"}))
        .await
        .expect(200);
    assert!(
        managed_entry(&shared, "beta", "Apply").is_some(),
        "beta co-owns .spec.color: {shared}"
    );
    assert_ne!(rv(&shared), rv(&first), "the ownership change is written");
    alpha_lets_go_of_color(&h, json!({"note": "n"})).await;
}

/// Applies `spec` as alpha, which no longer sends color, and checks that color stays: beta
/// applied the same value, so beta still owns it.
async fn alpha_lets_go_of_color(h: &Harness, spec: Value) {
    let after = h
        .apply_widget("fieldManager=alpha", "a", spec)
        .await
        .expect(200);
    assert_eq!(
        after["spec"]["color"], "red",
        "beta still owns color: {after}"
    );
}

#[tokio::test]
async fn apply_to_the_status_of_a_missing_object_is_not_found() {
    let h = Harness::start().await;
    let mut body = widget("ghost", json!({"color": "red"}));
    body["status"] = json!({"phase": "Running"});
    h.apply(
        &format!("{}/status?fieldManager=ctl", widget_path("ghost")),
        &body,
    )
    .await
    .expect_error(404, "NotFound");
    assert!(h.is_gone(&widget_path("ghost")).await);
}

#[tokio::test]
async fn patch_requests_that_are_refused() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    let a = widget_path("a");
    struct Case {
        what: &'static str,
        path: String,
        content_type: &'static str,
        body: String,
        code: u16,
        reason: &'static str,
        message: &'static str,
    }
    let case = |what, path: String, content_type, body: String, code, reason, message| Case {
        what,
        path,
        content_type,
        body,
        code,
        reason,
        message,
    };
    let spec = widget("a", json!({"color": "red"})).to_string();
    let mut with_managed = widget("a", json!({"color": "red"}));
    with_managed["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Apply"}]);
    let cases = [
        case(
            "strategic merge patch",
            a.clone(),
            "application/strategic-merge-patch+json",
            r#"{"spec":{"size":2}}"#.into(),
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ),
        case(
            "apply without fieldManager",
            a.clone(),
            "application/apply-patch+yaml",
            spec.clone(),
            422,
            "Invalid",
            "fieldManager: Required value: is required for apply patch",
        ),
        case(
            "apply carrying managedFields",
            format!("{a}?fieldManager=m"),
            "application/apply-patch+yaml",
            with_managed.to_string(),
            400,
            "BadRequest",
            "metadata.managedFields must be nil",
        ),
        case(
            "force on a merge patch",
            format!("{a}?force=true"),
            "application/merge-patch+json",
            r#"{"spec":{"size":2}}"#.into(),
            422,
            "Invalid",
            "force",
        ),
        case(
            "merge patch that is not an object",
            a.clone(),
            "application/merge-patch+json",
            "[1]".into(),
            400,
            "BadRequest",
            "Invalid JSON Patch",
        ),
        case(
            "merge patch that is not JSON",
            a.clone(),
            "application/merge-patch+json",
            "{".into(),
            400,
            "BadRequest",
            "",
        ),
    ];
    for c in cases {
        let reply = h
            .call(
                Method::PATCH,
                &c.path,
                &[("content-type", c.content_type)],
                c.body.into_bytes(),
            )
            .await;
        assert_eq!(reply.status.as_u16(), c.code, "{}: {}", c.what, reply.body);
        assert_eq!(reply.body["reason"], c.reason, "{}", c.what);
        assert!(
            message(&reply.body).contains(c.message),
            "{}: {}",
            c.what,
            reply.body
        );
    }
    assert_eq!(generation(&h.get(&a).await.expect(200)), 1);
}

/// A write that carries managedFields replaces the stored ones (how kubectl hands fields from
/// client-side to server-side apply), and `[{}]` resets them, as in Kubernetes.
#[tokio::test]
async fn managed_fields_sent_by_the_client_replace_or_reset_the_stored_ones() {
    let h = Harness::start().await;
    h.apply_widget("fieldManager=alpha", "w", json!({"color": "red"}))
        .await
        .expect(201);

    // Replace: ownership of spec.color moves to "migrated"...
    let handed_over = json!([{
        "manager": "migrated",
        "operation": "Apply",
        "apiVersion": "test.corral.dev/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:color": {}}},
    }]);
    let patched = h
        .json_patch(
            &widget_path("w"),
            &json!([{"op": "replace", "path": "/metadata/managedFields", "value": handed_over}]),
        )
        .await
        .expect(200);
    assert!(
        managed_entry(&patched, "migrated", "Apply").is_some(),
        "{patched}"
    );
    assert!(
        managed_entry(&patched, "alpha", "Apply").is_none(),
        "{patched}"
    );
    // ...so another applier of a different color now conflicts with it.
    let conflict = h
        .apply_widget("fieldManager=beta", "w", json!({"color": "blue"}))
        .await
        .expect_error(409, "Conflict");
    assert!(message(&conflict).contains("migrated"), "{conflict}");

    // Reset: `[{}]` clears ownership; the object keeps its fields.
    let reset = h
        .merge_patch(
            &format!("{}?fieldManager=resetter", widget_path("w")),
            &json!({"metadata": {"managedFields": [{}]}}),
        )
        .await
        .expect(200);
    assert!(
        reset["metadata"]["managedFields"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{reset}"
    );
    assert_eq!(reset["spec"]["color"], "red");
    // As in Kubernetes, the first apply after a reset credits the existing fields to
    // "before-first-apply": changing them needs force.
    let conflict = h
        .apply_widget("fieldManager=beta", "w", json!({"color": "blue"}))
        .await
        .expect_error(409, "Conflict");
    assert!(
        message(&conflict).contains("before-first-apply"),
        "{conflict}"
    );
    let forced = h
        .apply_widget(
            "fieldManager=beta&force=true",
            "w",
            json!({"color": "blue"}),
        )
        .await
        .expect(200);
    assert!(
        managed_entry(&forced, "beta", "Apply").is_some(),
        "{forced}"
    );
}

/// Appliers racing to create the same object all succeed: the losers of the create apply to
/// what the winner created (equal values, so no conflict), as in Kubernetes.
#[tokio::test]
async fn concurrent_applies_to_a_missing_object_all_succeed() {
    let h = std::sync::Arc::new(Harness::start().await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let h = h.clone();
        tasks.spawn(async move {
            h.apply_widget(
                &format!("fieldManager=racer-{i}"),
                "raced",
                json!({"color": "red"}),
            )
            .await
            .status
        });
    }
    let mut codes = Vec::new();
    while let Some(code) = tasks.join_next().await {
        codes.push(code.expect("task").as_u16());
    }
    codes.sort();
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 201), "{codes:?}");
    let object = h.get(&widget_path("raced")).await.expect(200);
    for i in 0..8 {
        assert!(
            managed_entry(&object, &format!("racer-{i}"), "Apply").is_some(),
            "{object}"
        );
    }
}
