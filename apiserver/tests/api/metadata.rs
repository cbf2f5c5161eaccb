//! Object metadata (§4): server-owned fields, generateName, generation and no-op writes.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn create_sets_server_owned_metadata() {
    let h = Harness::start().await;
    let before = h.current_revision().await;
    let created = h.create_widget("a", json!({"color": "red"})).await;
    assert_eq!(created["apiVersion"], API_VERSION);
    assert_eq!(created["kind"], "Widget");
    let meta = &created["metadata"];
    assert_eq!(meta["name"], "a");
    assert_eq!(meta["namespace"], "default", "namespace comes from the URL");
    let uid = meta["uid"].as_str().expect("uid");
    assert!(uuid::Uuid::parse_str(uid).is_ok(), "uid is a UUID: {uid}");
    let created_at = meta["creationTimestamp"]
        .as_str()
        .expect("creationTimestamp");
    assert!(is_k8s_time(created_at), "creationTimestamp: {created_at}");
    assert_eq!(meta["generation"], 1);
    assert!(rv_num(&created) > before, "a create advances the revision");
    let read = h.get(&widget_path("a")).await.expect(200);
    assert_eq!(read, created, "GET returns what the create returned");

    // Cluster-scoped kinds drop a namespace sent in the body.
    let mut body = gadget("g", json!({}));
    body["metadata"]["namespace"] = json!("default");
    let g = h.create(GADGETS, body).await;
    assert!(g["metadata"].get("namespace").is_none(), "{g}");

    // The global revision only rises.
    let second = h.create_widget("b", json!({"color": "red"})).await;
    assert!(rv_num(&second) > rv_num(&g) && rv_num(&g) > rv_num(&created));
}

#[tokio::test]
async fn create_drops_client_sent_server_fields_and_status() {
    let h = Harness::start().await;
    let sent_uid = "00000000-0000-0000-0000-000000000001";
    let mut body = widget_with(
        "a",
        json!({"color": "red"}),
        json!({
            "uid": sent_uid,
            "creationTimestamp": "2001-01-01T00:00:00Z",
            "deletionTimestamp": "2001-01-01T00:00:00Z",
            "deletionGracePeriodSeconds": 30,
            "selfLink": "/somewhere",
            "generation": 7,
            "resourceVersion": "12345",
        }),
    );
    body["status"] = json!({"phase": "Running"});
    let created = h.create(WIDGETS, body).await;
    let meta = &created["metadata"];
    assert_ne!(meta["uid"], sent_uid);
    assert_ne!(meta["creationTimestamp"], "2001-01-01T00:00:00Z");
    assert!(meta.get("deletionTimestamp").is_none(), "{created}");
    assert!(
        meta.get("deletionGracePeriodSeconds").is_none(),
        "{created}"
    );
    assert!(meta.get("selfLink").is_none(), "{created}");
    assert_eq!(meta["generation"], 1);
    assert!(
        created.get("status").is_none(),
        "status is dropped when the status subresource is on: {created}"
    );
    let read = h.get(&widget_path("a")).await.expect(200);
    assert!(read.get("status").is_none() && read["metadata"].get("deletionTimestamp").is_none());

    // Without the status subresource, status is an ordinary field and is kept.
    let mut body = gadget("g", json!({}));
    body["status"] = json!({"phase": "Running"});
    let g = h.create(GADGETS, body).await;
    assert_eq!(g["status"]["phase"], "Running");
}

#[tokio::test]
async fn generate_name_appends_a_random_suffix() {
    let h = Harness::start().await;
    let body = json!({
        "apiVersion": API_VERSION, "kind": "Widget",
        "metadata": {"generateName": "w-"}, "spec": {"color": "red"},
    });
    let first = h.create(WIDGETS, body.clone()).await;
    let second = h.create(WIDGETS, body).await;
    for object in [&first, &second] {
        let name = object["metadata"]["name"].as_str().expect("name");
        assert!(name.starts_with("w-") && name.len() == 7, "{name}");
        assert_eq!(object["metadata"]["generateName"], "w-");
        h.get(&widget_path(name)).await.expect(200);
    }
    assert_ne!(first["metadata"]["name"], second["metadata"]["name"]);

    // Neither name nor generateName: 422 naming metadata.name.
    let status = h
        .post(
            WIDGETS,
            &json!({"apiVersion": API_VERSION, "kind": "Widget", "metadata": {}, "spec": {"color": "red"}}),
        )
        .await
        .expect_error(422, "Invalid");
    assert!(cause_fields(&status).contains(&"metadata.name".to_string()));
}

#[tokio::test]
async fn generation_rises_only_on_spec_changes() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    h.create(GADGETS, gadget("g", json!({"x": 1}))).await;
    let a = &widget_path("a");
    let a_status = &format!("{a}/status");
    let g = &gadget_path("g");
    /// What a write does to the object.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Effect {
        /// A new revision and generation.
        Bumps,
        /// A new revision, the same generation.
        Keeps,
        /// Nothing at all.
        NoOp,
    }
    use Effect::*;
    #[rustfmt::skip]
    let steps = [
        ("a label", a, json!({"metadata": {"labels": {"k": "v"}}}), Keeps),
        ("an annotation", a, json!({"metadata": {"annotations": {"k": "v"}}}), Keeps),
        ("a finalizer", a, json!({"metadata": {"finalizers": ["test/hold"]}}), Keeps),
        ("status via the main resource", a, json!({"status": {"phase": "X"}}), NoOp),
        ("status via /status", a_status, json!({"status": {"phase": "Running"}}), Keeps),
        ("a spec field", a, json!({"spec": {"size": 20}}), Bumps),
        ("the same spec value", a, json!({"spec": {"size": 20}}), NoOp),
        ("another spec field", a, json!({"spec": {"note": "n"}}), Bumps),
        ("removing the finalizer", a, json!({"metadata": {"finalizers": null}}), Keeps),
        ("status without the subresource", g, json!({"status": {"phase": "Y"}}), Bumps),
        ("a label of that kind", g, json!({"metadata": {"labels": {"k": "v"}}}), Keeps),
    ];
    for (what, path, patch, effect) in steps {
        let before = h.get(path).await.expect(200);
        let after = h.merge_patch(path, &patch).await.expect(200);
        let bumped = generation(&after) - generation(&before);
        assert_eq!(bumped, i64::from(effect == Bumps), "{what}: generation");
        assert_eq!(
            rv(&after) != rv(&before),
            effect != NoOp,
            "{what}: resourceVersion"
        );
        assert_eq!(h.get(path).await.expect(200), after, "{what}: stored");
    }

    // PUT of a spec change bumps it too; PUT of a label change does not.
    let mut current = h.get(a).await.expect(200);
    current["spec"]["size"] = json!(30);
    let put = h.put(a, &current).await.expect(200);
    assert_eq!(generation(&put), generation(&current) + 1);
    let mut current = put;
    current["metadata"]["labels"]["other"] = json!("x");
    let put = h.put(a, &current).await.expect(200);
    assert_eq!(generation(&put), generation(&current));
}

#[tokio::test]
async fn noop_writes_keep_the_resource_version_and_emit_no_event() {
    let h = Harness::start().await;
    let created = h
        .create_widget_with(
            "a",
            json!({"color": "red", "tags": ["x"]}),
            json!({"labels": {"k": "v"}}),
        )
        .await;
    let a = widget_path("a");
    let applied = h
        .apply_widget(
            "fieldManager=alpha",
            "a",
            json!({"color": "red", "note": "n"}),
        )
        .await
        .expect(200);
    let mut watch = h.watch_widgets_from(&applied).await;
    let revision = h.current_revision().await;
    let current = h.get(&a).await.expect(200);
    let same = rv(&current);
    assert_ne!(same, rv(&created));

    let noops: Vec<(&str, Reply)> = vec![
        ("PUT of the object as read", h.put(&a, &current).await),
        ("empty merge patch", h.merge_patch(&a, &json!({})).await),
        (
            "merge patch of equal values",
            h.merge_patch(
                &a,
                &json!({"spec": {"color": "red"}, "metadata": {"labels": {"k": "v"}}}),
            )
            .await,
        ),
        ("empty JSON patch", h.json_patch(&a, &json!([])).await),
        (
            "JSON patch with only a test",
            h.json_patch(
                &a,
                &json!([{"op": "test", "path": "/spec/color", "value": "red"}]),
            )
            .await,
        ),
        (
            "JSON patch replacing a value with itself",
            h.json_patch(
                &a,
                &json!([{"op": "replace", "path": "/spec/tags/0", "value": "x"}]),
            )
            .await,
        ),
        (
            "apply of the same configuration",
            h.apply_widget(
                "fieldManager=alpha",
                "a",
                json!({"color": "red", "note": "n"}),
            )
            .await,
        ),
        (
            "status PUT of the same status",
            h.put(&format!("{a}/status"), &current).await,
        ),
    ];
    for (what, reply) in noops {
        let body = reply.expect(200);
        assert_eq!(
            rv(&body),
            same,
            "{what}: the resourceVersion must not change"
        );
        assert_eq!(body, current, "{what}: the object comes back unchanged");
    }
    assert_eq!(h.current_revision().await, revision, "no-ops write nothing");

    // The next event the watch sees is the next real change.
    let changed = h
        .merge_patch(&a, &json!({"spec": {"size": 11}}))
        .await
        .expect(200);
    let event = watch.next_change().await;
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(
        rv(&event["object"]),
        rv(&changed),
        "no event came from the no-ops"
    );
}
