//! Namespaces: the default namespace, creation in missing namespaces, namespace deletion.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn the_default_namespace_exists_at_start() {
    let h = Harness::start().await;
    let ns = h.get(&format!("{NAMESPACES}/default")).await.expect(200);
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(ns["apiVersion"], "v1");
    assert_eq!(ns["status"]["phase"], "Active");
    assert!(ns["metadata"]["uid"].is_string());
    let list = h.get(NAMESPACES).await.expect(200);
    assert_eq!(list["kind"], "NamespaceList");
    assert!(names(&list).contains(&"default".to_string()));
}

#[tokio::test]
async fn the_default_namespace_cannot_be_deleted() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    let status = h
        .delete(&format!("{NAMESPACES}/default"), None)
        .await
        .expect_error(403, "Forbidden");
    assert_eq!(
        status["message"],
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
    let ns = h.get(&format!("{NAMESPACES}/default")).await.expect(200);
    assert!(ns["metadata"].get("deletionTimestamp").is_none());
    h.create_widget("b", json!({"color": "red"})).await;
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_not_found() {
    let h = Harness::start().await;
    let status = h
        .post(
            &widgets_in("nowhere"),
            &widget("a", json!({"color": "red"})),
        )
        .await
        .expect_error(404, "NotFound");
    assert_eq!(status["message"], "namespaces \"nowhere\" not found");
    h.apply(
        &format!("{}/a?fieldManager=m", widgets_in("nowhere")),
        &widget("a", json!({"color": "red"})),
    )
    .await
    .expect_error(404, "NotFound");
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_content_first() {
    let h = Harness::start().await;
    h.create_namespace("doomed").await;
    let doomed = widgets_in("doomed");
    h.post(
        &doomed,
        &widget_with(
            "held",
            json!({"color": "red"}),
            json!({"finalizers": ["test/hold"]}),
        ),
    )
    .await
    .expect(201);
    h.post(&doomed, &widget("free", json!({"color": "red"})))
        .await
        .expect(201);
    let ns_path = format!("{NAMESPACES}/doomed");
    let deleting = h.delete(&ns_path, None).await.expect(200);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(deleting["status"]["phase"], "Terminating");

    // Creation checks the namespace in the watch cache (as NamespaceLifecycle admission does),
    // which may lag the DELETE by a moment; probe with dry runs until it has caught up.
    let late = widget("late", json!({"color": "red"}));
    wait_until("creation in the namespace to be forbidden", || async {
        h.post(&format!("{doomed}?dryRun=All"), &late).await.status == 403
    })
    .await;
    let status = h.post(&doomed, &late).await.expect_error(403, "Forbidden");
    assert!(message(&status).contains("being terminated"), "{status}");

    h.wait_gone(&format!("{doomed}/free"), "unheld content to go")
        .await;
    wait_until("held content to be deleting", || async {
        h.get(&format!("{doomed}/held")).await.expect(200)["metadata"]["deletionTimestamp"]
            .is_string()
    })
    .await;
    let ns = h.get(&ns_path).await.expect(200);
    assert_eq!(
        ns["status"]["phase"], "Terminating",
        "the namespace waits for its content"
    );

    h.remove_finalizers(&format!("{doomed}/held")).await;
    h.wait_gone(&ns_path, "the namespace to go").await;
}

/// An object that landed in a namespace which no longer exists (a create racing the end of a
/// namespace deletion) is collected. The object is written straight to the store to stage it.
#[tokio::test]
async fn objects_whose_namespace_is_gone_are_collected() {
    let h = Harness::start().await;
    let mut orphan = widget("stray", json!({"color": "red"}));
    orphan["metadata"]["namespace"] = json!("vanished");
    orphan["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000001");
    let key = "/registry/test.corral.dev/widgets/vanished/stray";
    h.store
        .create(key, serde_json::to_vec(&orphan).unwrap().into())
        .await
        .expect("staging the orphan");
    let kept = h
        .create_widget_with("kept", json!({"color": "red"}), json!({}))
        .await;
    wait_until("the orphan to be collected", || async {
        h.store.get(key).await.expect("store read").is_none()
    })
    .await;
    // Objects in namespaces that exist are left alone.
    let still = h.get(&widget_path("kept")).await.expect(200);
    assert_eq!(still["metadata"]["uid"], kept["metadata"]["uid"]);
}

/// Built-in kinds take a missing apiVersion/kind from the URL, as Kubernetes' typed decoders do
/// (the Python client sends core objects without them); custom resources must carry both.
#[tokio::test]
async fn builtin_bodies_may_omit_type_meta_but_custom_resources_may_not() {
    let h = Harness::start().await;
    let created = h
        .post(NAMESPACES, &json!({"metadata": {"name": "bare"}}))
        .await
        .expect(201);
    assert_eq!(
        (created["apiVersion"].as_str(), created["kind"].as_str()),
        (Some("v1"), Some("Namespace"))
    );
    let status = h
        .post(
            &widgets_in("default"),
            &json!({"metadata": {"name": "bare"}, "spec": {"color": "red"}}),
        )
        .await
        .expect_error(400, "BadRequest");
    assert!(message(&status).contains("apiVersion"), "{status}");
}

/// As in Kubernetes, namespaces have no deletecollection: not advertised, and refused.
#[tokio::test]
async fn namespaces_cannot_be_deleted_as_a_collection() {
    let h = Harness::start().await;
    let resources = h.get("/api/v1").await.expect(200);
    let namespaces = resources["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "namespaces"))
        .cloned()
        .expect("namespaces in discovery");
    assert!(
        !namespaces["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("deletecollection"))
    );
    h.create_namespace("keep").await;
    h.delete(NAMESPACES, None)
        .await
        .expect_error(405, "MethodNotAllowed");
    h.get(&format!("{NAMESPACES}/keep")).await.expect(200);
}
