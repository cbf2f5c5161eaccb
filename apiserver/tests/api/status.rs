//! The status subresource (§4): what main-resource and `/status` writes may change.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn main_resource_writes_keep_the_old_status() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    let a = widget_path("a");
    h.patch_status(&a, json!({"phase": "Running"})).await;

    let mut body = h.get(&a).await.expect(200);
    body["status"] = json!({"phase": "Broken"});
    body["spec"]["size"] = json!(20);
    let put = h.put(&a, &body).await.expect(200);
    assert_eq!(
        put["status"],
        json!({"phase": "Running"}),
        "PUT keeps status"
    );
    assert_eq!(put["spec"]["size"], 20, "PUT still changes spec");

    let merged = h
        .merge_patch(&a, &json!({"status": {"phase": "Broken"}}))
        .await
        .expect(200);
    assert_eq!(merged["status"]["phase"], "Running");
    assert_eq!(rv(&merged), rv(&put), "a status-only main write is a no-op");

    let patched = h
        .json_patch(
            &a,
            &json!([{"op": "replace", "path": "/status/phase", "value": "Broken"}]),
        )
        .await
        .expect(200);
    assert_eq!(patched["status"]["phase"], "Running");

    let mut apply = widget("a", json!({"color": "red"}));
    apply["status"] = json!({"phase": "Broken"});
    let applied = h
        .apply(&format!("{a}?fieldManager=alpha"), &apply)
        .await
        .expect(200);
    assert_eq!(applied["status"]["phase"], "Running");
    assert_eq!(h.get(&a).await.expect(200)["status"]["phase"], "Running");
}

#[tokio::test]
async fn status_writes_change_only_status() {
    let h = Harness::start().await;
    let created = h
        .create_widget_with(
            "a",
            json!({"color": "red"}),
            json!({"labels": {"app": "x"}}),
        )
        .await;
    let a = widget_path("a");
    let status_path = format!("{a}/status");

    // PUT /status: labels, finalizers and spec in the body are ignored.
    let mut body = created.clone();
    body["metadata"]["labels"] = json!({"app": "y"});
    body["metadata"]["finalizers"] = json!(["test/hold"]);
    body["metadata"]["annotations"] = json!({"a": "b"});
    body["spec"]["color"] = json!("blue");
    body["status"] = json!({"phase": "Running"});
    let put = h.put(&status_path, &body).await.expect(200);
    assert_eq!(put["status"], json!({"phase": "Running"}));
    assert_eq!(put["metadata"]["labels"], json!({"app": "x"}));
    assert!(put["metadata"].get("finalizers").is_none(), "{put}");
    assert!(put["metadata"].get("annotations").is_none(), "{put}");
    assert_eq!(put["spec"]["color"], "red");
    assert_eq!(generation(&put), 1, "status writes never bump generation");
    assert_ne!(rv(&put), rv(&created));

    // Merge patch of /status.
    let merged = h
        .merge_patch(
            &status_path,
            &json!({"metadata": {"labels": {"app": "z"}}, "spec": {"color": "green"}, "status": {"phase": "Done"}}),
        )
        .await
        .expect(200);
    assert_eq!(merged["status"]["phase"], "Done");
    assert_eq!(merged["metadata"]["labels"], json!({"app": "x"}));
    assert_eq!(merged["spec"]["color"], "red");

    // JSON patch of /status.
    let patched = h
        .json_patch(
            &status_path,
            &json!([
                {"op": "add", "path": "/status/observedGeneration", "value": 1},
                {"op": "replace", "path": "/spec/color", "value": "blue"},
            ]),
        )
        .await
        .expect(200);
    assert_eq!(patched["status"]["observedGeneration"], 1);
    assert_eq!(patched["spec"]["color"], "red");

    // Apply to /status is recorded against the status subresource.
    let mut apply = widget("a", json!({"color": "blue"}));
    apply["status"] = json!({"phase": "Applied"});
    let applied = h
        .apply(
            &format!("{status_path}?fieldManager=ctl&force=true"),
            &apply,
        )
        .await
        .expect(200);
    assert_eq!(applied["status"]["phase"], "Applied");
    assert_eq!(applied["spec"]["color"], "red");
    let entry = managed_entry(&applied, "ctl", "Apply").expect("ctl's entry");
    assert_eq!(entry["subresource"], "status");
    assert_eq!(generation(&applied), 1);

    assert_eq!(h.get(&a).await.expect(200), applied);
}

#[tokio::test]
async fn get_status_returns_the_whole_object() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    let a = widget_path("a");
    h.patch_status(&a, json!({"phase": "Running"})).await;
    let whole = h.get(&a).await.expect(200);
    let status = h.get(&format!("{a}/status")).await.expect(200);
    assert_eq!(status, whole);
    assert_eq!(status["spec"]["color"], "red");
    h.get(&format!("{}/status", widget_path("missing")))
        .await
        .expect_error(404, "NotFound");
}

#[tokio::test]
async fn status_of_a_kind_without_the_subresource_is_not_found() {
    let h = Harness::start().await;
    let g = h.create(GADGETS, gadget("g", json!({}))).await;
    let path = format!("{}/status", gadget_path("g"));
    h.get(&path).await.expect_error(404, "NotFound");
    h.put(&path, &g).await.expect_error(404, "NotFound");
    h.merge_patch(&path, &json!({"status": {"x": 1}}))
        .await
        .expect_error(404, "NotFound");
    // An unknown subresource of a kind that has status is not found either.
    h.create_widget("a", json!({"color": "red"})).await;
    h.get(&format!("{}/scale", widget_path("a")))
        .await
        .expect_error(404, "NotFound");
}
