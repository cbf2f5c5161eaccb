//! PUT (§4) and dryRun (§5): optimistic concurrency, immutable metadata, writes that persist nothing.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn put_requires_a_resource_version() {
    let h = Harness::start().await;
    let mut body = h.create_widget("a", json!({"color": "red"})).await;
    body["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    body["spec"]["size"] = json!(20);
    let status = h
        .put(&widget_path("a"), &body)
        .await
        .expect_error(422, "Invalid");
    assert_eq!(cause_fields(&status), ["metadata.resourceVersion"]);
    assert!(
        message(&status).contains("must be specified for an update"),
        "{status}"
    );
    assert_eq!(
        h.get(&widget_path("a")).await.expect(200)["spec"]["size"],
        10
    );
}

#[tokio::test]
async fn put_with_a_stale_resource_version_conflicts() {
    let h = Harness::start().await;
    let stale = h.create_widget("a", json!({"color": "red"})).await;
    h.merge_patch(&widget_path("a"), &json!({"spec": {"size": 20}}))
        .await
        .expect(200);
    let mut body = stale;
    body["spec"]["note"] = json!("late");
    let status = h
        .put(&widget_path("a"), &body)
        .await
        .expect_error(409, "Conflict");
    assert_eq!(
        status["message"],
        "Operation cannot be fulfilled on widgets.test.corral.dev \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(status["details"]["name"], "a");
    assert_eq!(status["details"]["group"], GROUP);
    assert_eq!(status["details"]["kind"], "widgets");
    let now = h.get(&widget_path("a")).await.expect(200);
    assert!(now["spec"].get("note").is_none());
}

#[tokio::test]
async fn put_to_a_missing_object_is_not_found() {
    let h = Harness::start().await;
    let mut body = widget("ghost", json!({"color": "red"}));
    body["metadata"]["resourceVersion"] = json!("1");
    let status = h
        .put(&widget_path("ghost"), &body)
        .await
        .expect_error(404, "NotFound");
    assert_eq!(
        status["message"],
        "widgets.test.corral.dev \"ghost\" not found"
    );
    assert!(
        h.is_gone(&widget_path("ghost")).await,
        "PUT does not create"
    );
}

#[tokio::test]
async fn put_cannot_change_immutable_metadata() {
    let h = Harness::start().await;
    let created = h.create_widget("a", json!({"color": "red"})).await;
    let a = widget_path("a");

    // A different uid is refused, as by ValidateObjectMetaUpdate.
    let mut body = created.clone();
    body["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000001");
    let status = h.put(&a, &body).await.expect_error(422, "Invalid");
    assert_eq!(cause_fields(&status), ["metadata.uid"]);

    // creationTimestamp and deletionTimestamp are kept from the stored object.
    let mut body = created.clone();
    body["metadata"]["creationTimestamp"] = json!("2001-01-01T00:00:00Z");
    body["metadata"]["deletionTimestamp"] = json!("2001-01-01T00:00:00Z");
    body["spec"]["size"] = json!(20);
    let put = h.put(&a, &body).await.expect(200);
    assert_eq!(put["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(
        put["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );
    assert!(put["metadata"].get("deletionTimestamp").is_none(), "{put}");

    // The body's name must be the URL's.
    let mut body = put.clone();
    body["metadata"]["name"] = json!("b");
    h.put(&a, &body).await.expect_error(400, "BadRequest");

    // A merge patch cannot change the uid either.
    h.merge_patch(
        &a,
        &json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000002"}}),
    )
    .await
    .expect_error(422, "Invalid");
    assert_eq!(
        h.get(&a).await.expect(200)["metadata"]["uid"],
        created["metadata"]["uid"]
    );
}

#[tokio::test]
async fn dry_run_persists_nothing() {
    let h = Harness::start().await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    h.create_widget_with(
        "held",
        json!({"color": "red"}),
        json!({"finalizers": ["test/hold"]}),
    )
    .await;
    let a_path = widget_path("a");
    let revision = h.current_revision().await;

    let created = h
        .post(
            &format!("{WIDGETS}?dryRun=All"),
            &widget("b", json!({"color": "red"})),
        )
        .await
        .expect(201);
    assert_eq!(created["metadata"]["name"], "b");
    assert!(created["metadata"]["uid"].is_string());

    let mut body = a.clone();
    body["spec"]["size"] = json!(50);
    let put = h
        .put(&format!("{a_path}?dryRun=All"), &body)
        .await
        .expect(200);
    assert_eq!(
        put["spec"]["size"], 50,
        "a dry run returns the would-be object"
    );
    let merged = h
        .merge_patch(
            &format!("{a_path}?dryRun=All"),
            &json!({"spec": {"size": 51}}),
        )
        .await
        .expect(200);
    assert_eq!(merged["spec"]["size"], 51);
    let patched = h
        .json_patch(
            &format!("{a_path}?dryRun=All"),
            &json!([{"op": "replace", "path": "/spec/size", "value": 52}]),
        )
        .await
        .expect(200);
    assert_eq!(patched["spec"]["size"], 52);
    let applied = h
        .apply_widget(
            "dryRun=All&fieldManager=m&force=true",
            "a",
            json!({"color": "blue"}),
        )
        .await
        .expect(200);
    assert_eq!(applied["spec"]["color"], "blue");
    h.apply_widget("dryRun=All&fieldManager=m", "c", json!({"color": "blue"}))
        .await
        .expect(201);
    h.merge_patch(
        &format!("{}/status?dryRun=All", a_path),
        &json!({"status": {"phase": "Dry"}}),
    )
    .await
    .expect(200);

    let deleted = h
        .delete(&format!("{a_path}?dryRun=All"), None)
        .await
        .expect(200);
    assert_eq!(deleted["status"], "Success");
    h.delete(&a_path, Some(&json!({"dryRun": ["All"]})))
        .await
        .expect(200);
    let pending = h
        .delete(&format!("{}?dryRun=All", widget_path("held")), None)
        .await
        .expect(200);
    assert!(pending["metadata"]["deletionTimestamp"].is_string());
    h.delete(&format!("{WIDGETS}?dryRun=All"), None)
        .await
        .expect(200);

    assert_eq!(
        h.current_revision().await,
        revision,
        "no dry run wrote anything"
    );
    assert_eq!(h.get(&a_path).await.expect(200), a);
    assert!(h.is_gone(&widget_path("b")).await);
    assert!(h.is_gone(&widget_path("c")).await);
    let held = h.get(&widget_path("held")).await.expect(200);
    assert!(held["metadata"].get("deletionTimestamp").is_none());

    h.post(
        &format!("{WIDGETS}?dryRun=Some"),
        &widget("d", json!({"color": "red"})),
    )
    .await
    .expect_error(422, "Invalid");
}

#[tokio::test]
async fn a_zero_request_timeout_means_none() {
    let h = Harness::start_with(corral_apiserver::Config {
        request_timeout: std::time::Duration::ZERO,
        ..test_config()
    })
    .await;
    let created = h
        .post(WIDGETS, &widget("untimed", json!({"color": "red"})))
        .await
        .expect(201);
    assert_eq!(created["metadata"]["name"], "untimed");
    h.get(&widget_path("untimed")).await.expect(200);
}
