//! The semantic suite of the API server: each test checks one rule of the wire contract
//! (`shared/k8s-api.md`, cited by section) against a real server on a real SQLite file, driven
//! in-process through the router. The harness (`support`) checks the rules every reply obeys:
//! JSON bodies, a `Status` for every non-2xx reply, and compact one-line watch events.

mod support;

use std::time::Duration;

use axum::http::Method;
use corral_apiserver::cache::{Cacher, Since};
use serde_json::{Value, json};
use support::*;

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `metav1.Time` as Kubernetes writes it: RFC 3339, UTC, whole seconds.
fn is_k8s_time(text: &str) -> bool {
    text.len() == 20
        && text.ends_with('Z')
        && text.as_bytes()[10] == b'T'
        && text.parse::<jiff::Timestamp>().is_ok()
}

fn causes(status: &Value) -> Vec<Value> {
    status["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn cause_fields(status: &Value) -> Vec<String> {
    causes(status)
        .iter()
        .map(|c| c["field"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The managedFields entry of a manager, if any.
fn managed_entry(object: &Value, manager: &str, operation: &str) -> Option<Value> {
    object["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
        .cloned()
}

fn owner_ref(owner: &Value, block: bool) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": block,
    })
}

/// A widget body with extra metadata merged in.
fn widget_with(name: &str, spec: Value, metadata: Value) -> Value {
    let mut body = widget(name, spec);
    for (k, v) in metadata.as_object().expect("metadata object") {
        body["metadata"][k] = v.clone();
    }
    body
}

// ---------------------------------------------------------------------------------------------
// §4 Object metadata
// ---------------------------------------------------------------------------------------------

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
        .create(
            WIDGETS,
            widget_with(
                "a",
                json!({"color": "red", "tags": ["x"]}),
                json!({"labels": {"k": "v"}}),
            ),
        )
        .await;
    let a = widget_path("a");
    let applied = h
        .apply(
            &format!("{a}?fieldManager=alpha"),
            &widget("a", json!({"color": "red", "note": "n"})),
        )
        .await
        .expect(200);
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&resourceVersion={}",
            rv(&applied)
        ))
        .await;
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
            h.apply(
                &format!("{a}?fieldManager=alpha"),
                &widget("a", json!({"color": "red", "note": "n"})),
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

// ---------------------------------------------------------------------------------------------
// §4 Status subresource
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn main_resource_writes_keep_the_old_status() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    let a = widget_path("a");
    h.merge_patch(
        &format!("{a}/status"),
        &json!({"status": {"phase": "Running"}}),
    )
    .await
    .expect(200);

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
        .create(
            WIDGETS,
            widget_with(
                "a",
                json!({"color": "red"}),
                json!({"labels": {"app": "x"}}),
            ),
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
    h.merge_patch(
        &format!("{a}/status"),
        &json!({"status": {"phase": "Running"}}),
    )
    .await
    .expect(200);
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

// ---------------------------------------------------------------------------------------------
// §4 PUT
// ---------------------------------------------------------------------------------------------

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
        status["message"]
            .as_str()
            .unwrap()
            .contains("must be specified for an update"),
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

// ---------------------------------------------------------------------------------------------
// §5 PATCH
// ---------------------------------------------------------------------------------------------

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
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("has been modified")
    );
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
        .apply(
            &format!("{a}?fieldManager=alpha"),
            &widget("a", json!({"color": "red", "tags": ["x"]})),
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
        .apply(
            &format!("{a}?fieldManager=alpha"),
            &widget("a", json!({"color": "red"})),
        )
        .await
        .expect(201);
    let status = h
        .apply(
            &format!("{a}?fieldManager=beta"),
            &widget("a", json!({"color": "blue"})),
        )
        .await
        .expect_error(409, "Conflict");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("Apply failed with 1 conflict"),
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
    h.apply(
        &format!("{a}?fieldManager=beta"),
        &widget("a", json!({"color": "red"})),
    )
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
        .apply(
            &format!("{a}?fieldManager=alpha"),
            &widget("a", json!({"color": "red", "size": 60})),
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
        .apply(
            &format!("{a}?fieldManager=delta&force=true"),
            &widget("a", json!({"color": "green"})),
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
    let a = widget_path("a");
    let alpha = format!("{a}?fieldManager=alpha");
    h.apply(
        &alpha,
        &widget("a", json!({"color": "red", "note": "n", "tags": ["t"]})),
    )
    .await
    .expect(201);
    h.apply(
        &format!("{a}?fieldManager=beta"),
        &widget("a", json!({"ports": [{"name": "http", "port": 80}]})),
    )
    .await
    .expect(200);
    let after = h
        .apply(&alpha, &widget("a", json!({"color": "red"})))
        .await
        .expect(200);
    assert_eq!(
        after["spec"],
        json!({"color": "red", "size": 10, "ports": [{"name": "http", "port": 80}]}),
        "alpha's dropped fields are gone, beta's stay"
    );
    // A field another manager also applied (same value) stays when one of them lets go.
    h.apply(
        &format!("{a}?fieldManager=beta"),
        &widget(
            "a",
            json!({"color": "red", "ports": [{"name": "http", "port": 80}]}),
        ),
    )
    .await
    .expect(200);
    let after = h.apply(&alpha, &widget("a", json!({}))).await.expect(200);
    assert_eq!(
        after["spec"]["color"], "red",
        "beta still owns color: {after}"
    );
}

#[tokio::test]
async fn apply_of_an_equal_value_shares_ownership() {
    // Two appliers that set a field to the same value share it (SSA docs, "Conflicts"); the
    // second apply changes only managedFields and must still be recorded.
    let h = Harness::start().await;
    let a = widget_path("a");
    let alpha = format!("{a}?fieldManager=alpha");
    let first = h
        .apply(&alpha, &widget("a", json!({"color": "red", "note": "n"})))
        .await
        .expect(201);
    let shared = h
        .apply(
            &format!("{a}?fieldManager=beta"),
            &widget("a", json!({"color": "red"})),
        )
        .await
        .expect(200);
    assert!(
        managed_entry(&shared, "beta", "Apply").is_some(),
        "beta co-owns .spec.color: {shared}"
    );
    assert_ne!(rv(&shared), rv(&first), "the ownership change is written");
    let after = h
        .apply(&alpha, &widget("a", json!({"note": "n"})))
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
            reply.body["message"].as_str().unwrap().contains(c.message),
            "{}: {}",
            c.what,
            reply.body
        );
    }
    assert_eq!(generation(&h.get(&a).await.expect(200)), 1);
}

// ---------------------------------------------------------------------------------------------
// §4 Validation and defaulting
// ---------------------------------------------------------------------------------------------

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
        let message = status["message"].as_str().unwrap();
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
                result["message"]
                    .as_str()
                    .unwrap()
                    .contains("unknown field \"spec.bogus\""),
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

// ---------------------------------------------------------------------------------------------
// §5 dryRun
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dry_run_persists_nothing() {
    let h = Harness::start().await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    h.create(
        WIDGETS,
        widget_with(
            "held",
            json!({"color": "red"}),
            json!({"finalizers": ["test/hold"]}),
        ),
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
        .apply(
            &format!("{a_path}?dryRun=All&fieldManager=m&force=true"),
            &widget("a", json!({"color": "blue"})),
        )
        .await
        .expect(200);
    assert_eq!(applied["spec"]["color"], "blue");
    h.apply(
        &format!("{}?dryRun=All&fieldManager=m", widget_path("c")),
        &widget("c", json!({"color": "blue"})),
    )
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

// ---------------------------------------------------------------------------------------------
// §6 Lists
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn label_selectors_support_every_operator() {
    let h = Harness::start().await;
    for (name, labels) in [
        ("a", json!({"env": "prod", "tier": "web"})),
        ("b", json!({"env": "dev", "tier": "web"})),
        ("c", json!({"env": "prod"})),
        ("d", json!({})),
    ] {
        h.create(
            WIDGETS,
            widget_with(name, json!({"color": "red"}), json!({"labels": labels})),
        )
        .await;
    }
    let cases: [(&str, &[&str]); 11] = [
        ("env=prod", &["a", "c"]),
        ("env==prod", &["a", "c"]),
        ("env!=prod", &["b", "d"]),
        ("env in (prod,dev)", &["a", "b", "c"]),
        ("env in (qa)", &[]),
        ("env notin (prod)", &["b", "d"]),
        ("tier", &["a", "b"]),
        ("!tier", &["c", "d"]),
        ("env=prod,tier=web", &["a"]),
        ("env=prod,!tier", &["c"]),
        ("env, tier notin (web)", &["c"]),
    ];
    for (selector, expected) in cases {
        let list = h
            .get(&format!("{WIDGETS}?labelSelector={}", enc(selector)))
            .await
            .expect(200);
        assert_eq!(names(&list), expected, "labelSelector {selector:?}");
    }
    for bad in ["env in prod", "=x", "env in (a", "k=v=w"] {
        h.get(&format!("{WIDGETS}?labelSelector={}", enc(bad)))
            .await
            .expect_error(400, "BadRequest");
    }
}

#[tokio::test]
async fn field_selectors_on_name_namespace_and_selectable_fields() {
    let h = Harness::start().await;
    h.create_namespace("other").await;
    h.create_widget("a", json!({"color": "red"})).await;
    h.create_widget("b", json!({"color": "blue"})).await;
    h.post(&widgets_in("other"), &widget("c", json!({"color": "red"})))
        .await
        .expect(201);
    let cases: [(&str, &[&str]); 8] = [
        ("metadata.name=a", &["a"]),
        ("metadata.name==a", &["a"]),
        ("metadata.name!=a", &["b", "c"]),
        ("metadata.namespace=other", &["c"]),
        ("metadata.namespace!=other", &["a", "b"]),
        ("spec.color=red", &["a", "c"]),
        ("spec.color!=red", &["b"]),
        ("spec.color=red,metadata.namespace=default", &["a"]),
    ];
    for (selector, expected) in cases {
        let list = h
            .get(&format!("{ALL_WIDGETS}?fieldSelector={}", enc(selector)))
            .await
            .expect(200);
        assert_eq!(names(&list), expected, "fieldSelector {selector:?}");
    }
    let status = h
        .get(&format!("{WIDGETS}?fieldSelector={}", enc("spec.size=10")))
        .await
        .expect_error(400, "BadRequest");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("field label not supported: spec.size"),
        "{status}"
    );
    h.get(&format!(
        "{GADGETS}?fieldSelector={}",
        enc("metadata.namespace=x")
    ))
    .await
    .expect_error(400, "BadRequest");
    h.get(&format!(
        "{WIDGETS}?fieldSelector={}",
        enc("metadata.name in (a)")
    ))
    .await
    .expect_error(400, "BadRequest");
}

#[tokio::test]
async fn pagination_serves_every_page_at_one_revision() {
    let h = Harness::start().await;
    for i in 0..7 {
        h.create_widget(&format!("w{i}"), json!({"color": "red"}))
            .await;
    }
    let first = h.get(&format!("{WIDGETS}?limit=3")).await.expect(200);
    assert_eq!(names(&first), ["w0", "w1", "w2"]);
    let revision = rv(&first);
    assert_eq!(first["metadata"]["remainingItemCount"], 4);
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();

    // Writes between pages are not seen by the pages that follow.
    h.delete(&widget_path("w4"), None).await.expect(200);
    h.create_widget("w7", json!({"color": "red"})).await;
    h.merge_patch(&widget_path("w5"), &json!({"spec": {"size": 99}}))
        .await
        .expect(200);

    let second = h
        .get(&format!("{WIDGETS}?limit=3&continue={}", enc(&token)))
        .await
        .expect(200);
    assert_eq!(names(&second), ["w3", "w4", "w5"]);
    assert_eq!(second["items"][2]["spec"]["size"], 10, "w5 as it was");
    assert_eq!(
        rv(&second),
        revision,
        "every page is at the first page's revision"
    );
    assert_eq!(second["metadata"]["remainingItemCount"], 1);
    let token = second["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    let third = h
        .get(&format!("{WIDGETS}?limit=3&continue={}", enc(&token)))
        .await
        .expect(200);
    assert_eq!(names(&third), ["w6"]);
    assert_eq!(rv(&third), revision);
    assert!(third["metadata"].get("continue").is_none(), "{third}");
    assert!(
        third["metadata"].get("remainingItemCount").is_none(),
        "{third}"
    );

    // A fresh list sees the writes; a limit above the count gives no token.
    let fresh = h.get(&format!("{WIDGETS}?limit=100")).await.expect(200);
    assert_eq!(names(&fresh), ["w0", "w1", "w2", "w3", "w5", "w6", "w7"]);
    assert!(fresh["metadata"].get("continue").is_none());

    // Pagination with a selector.
    let selected = h
        .get(&format!(
            "{WIDGETS}?limit=2&fieldSelector={}",
            enc("metadata.name!=w0")
        ))
        .await
        .expect(200);
    assert_eq!(names(&selected), ["w1", "w2"]);
    assert!(selected["metadata"]["continue"].is_string());

    h.get(&format!("{WIDGETS}?limit=3&continue=garbage"))
        .await
        .expect_error(400, "BadRequest");
    h.get(&format!(
        "{WIDGETS}?limit=3&continue={}&resourceVersion={revision}",
        enc(&token)
    ))
    .await
    .expect_error(400, "BadRequest");
    h.get(&format!(
        "{WIDGETS}?limit=3&continue={}&resourceVersionMatch=NotOlderThan",
        enc(&token)
    ))
    .await
    .expect_error(422, "Invalid");
}

#[tokio::test]
async fn resource_version_zero_lists_from_the_cache() {
    let h = Harness::start().await;
    for name in ["a", "b", "c"] {
        h.create_widget(name, json!({"color": "red"})).await;
    }
    let latest = h.create_widget("d", json!({"color": "red"})).await;
    // The cache may lag by a little; it catches up.
    wait_until("the cache to hold every widget", || async {
        names(
            &h.get(&format!("{WIDGETS}?resourceVersion=0"))
                .await
                .expect(200),
        )
        .len()
            == 4
    })
    .await;
    let list = h
        .get(&format!("{WIDGETS}?resourceVersion=0&limit=1"))
        .await
        .expect(200);
    assert_eq!(
        names(&list),
        ["a", "b", "c", "d"],
        "the cache ignores limit"
    );
    assert!(list["metadata"].get("continue").is_none());
    assert!(rv_num(&list) >= rv_num(&latest));
    // NotOlderThan waits for the cache to reach the revision.
    let e = h.create_widget("e", json!({"color": "red"})).await;
    let list = h
        .get(&format!(
            "{WIDGETS}?resourceVersion={}&resourceVersionMatch=NotOlderThan",
            rv(&e)
        ))
        .await
        .expect(200);
    assert!(names(&list).contains(&"e".to_string()));
    assert!(rv_num(&list) >= rv_num(&e));
    let selected = h
        .get(&format!(
            "{WIDGETS}?resourceVersion=0&fieldSelector={}",
            enc("metadata.name=b")
        ))
        .await
        .expect(200);
    assert_eq!(names(&selected), ["b"], "selectors apply to cached lists");
    let one = h
        .get(&format!("{}?resourceVersion=0", widget_path("e")))
        .await
        .expect(200);
    assert_eq!(one["metadata"]["name"], "e");
}

#[tokio::test]
async fn exact_resource_version_lists_an_old_revision() {
    let h = Harness::start().await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    h.create_widget("b", json!({"color": "red"})).await;
    h.merge_patch(&widget_path("a"), &json!({"spec": {"size": 20}}))
        .await
        .expect(200);
    let old = h
        .get(&format!(
            "{WIDGETS}?resourceVersion={}&resourceVersionMatch=Exact",
            rv(&a)
        ))
        .await
        .expect(200);
    assert_eq!(names(&old), ["a"]);
    assert_eq!(old["items"][0]["spec"]["size"], 10);
    assert_eq!(rv(&old), rv(&a));

    h.get(&format!(
        "{WIDGETS}?resourceVersion=0&resourceVersionMatch=Exact"
    ))
    .await
    .expect_error(422, "Invalid");
    h.get(&format!("{WIDGETS}?resourceVersionMatch=Exact"))
        .await
        .expect_error(422, "Invalid");
    h.get(&format!(
        "{WIDGETS}?resourceVersion=1&resourceVersionMatch=Sometimes"
    ))
    .await
    .expect_error(422, "Invalid");
}

#[tokio::test]
async fn lists_span_all_namespaces_and_are_never_null() {
    let h = Harness::start().await;
    h.create_namespace("other").await;
    h.create_namespace("empty").await;
    h.create_widget("a", json!({"color": "red"})).await;
    h.post(&widgets_in("other"), &widget("b", json!({"color": "red"})))
        .await
        .expect(201);
    let all = h.get(ALL_WIDGETS).await.expect(200);
    assert_eq!(all["kind"], "WidgetList");
    assert_eq!(all["apiVersion"], API_VERSION);
    assert_eq!(names(&all), ["a", "b"]);
    assert_eq!(all["items"][0]["metadata"]["namespace"], "default");
    assert_eq!(all["items"][1]["metadata"]["namespace"], "other");
    for item in all["items"].as_array().unwrap() {
        assert_eq!(item["kind"], "Widget");
        assert_eq!(item["apiVersion"], API_VERSION);
    }
    assert_eq!(names(&h.get(WIDGETS).await.expect(200)), ["a"]);
    let empty = h.get(&widgets_in("empty")).await.expect(200);
    assert_eq!(empty["items"], json!([]));
    assert!(
        !rv(&empty).is_empty(),
        "the list resourceVersion is never empty"
    );

    // Empty query pairs, a bare `?` and unknown parameters are accepted.
    for query in [
        "?&limit=1",
        "?",
        "?timeout=32s&pretty=true",
        "?fieldManager=x",
    ] {
        h.get(&format!("{WIDGETS}{query}")).await.expect(200);
    }
    // A cluster-scoped kind under namespaces/ is not found; so is an object without one.
    h.get("/apis/test.corral.dev/v1/namespaces/default/gadgets")
        .await
        .expect_error(404, "NotFound");
    h.get(&format!("{ALL_WIDGETS}/a"))
        .await
        .expect_error(404, "NotFound");
}

#[tokio::test]
async fn tables_render_printer_columns() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red", "note": "hi"}))
        .await;
    h.create_widget("b", json!({"color": "blue", "size": 3}))
        .await;
    h.merge_patch(
        &format!("{}/status", widget_path("a")),
        &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await
    .expect(200);

    let table = h.get_table(WIDGETS).await.expect(200);
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
    assert!(!rv(&table).is_empty());
    let columns = table["columnDefinitions"].as_array().expect("columns");
    let column_names: Vec<&str> = columns
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        column_names,
        ["Name", "Color", "Size", "Ready", "Age", "Note"]
    );
    assert_eq!(columns[0]["format"], "name");
    assert_eq!(columns[2]["type"], "integer");
    assert_eq!(columns[4]["type"], "date");
    assert_eq!(columns[5]["priority"], 1);
    assert_eq!(columns[1]["priority"], 0);
    let rows = table["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    let cells = &rows[0]["cells"];
    assert_eq!(cells[0], "a");
    assert_eq!(cells[1], "red");
    assert_eq!(cells[2], 10, "integer cells are JSON numbers");
    assert_eq!(cells[3], "True");
    let age = cells[4].as_str().expect("date cells are ages");
    assert!(
        age.len() >= 2 && age.ends_with('s') && age[..age.len() - 1].parse::<u32>().is_ok(),
        "age {age:?}"
    );
    assert_eq!(cells[5], "hi");
    assert_eq!(rows[1]["cells"][3], Value::Null, "a missing value is null");
    assert_eq!(rows[1]["cells"][5], Value::Null);
    // includeObject: Metadata by default, then None and Object.
    assert_eq!(rows[0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(rows[0]["object"]["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(rows[0]["object"]["metadata"]["namespace"], "default");
    assert!(rows[0]["object"].get("spec").is_none());
    let none = h
        .get_table(&format!("{WIDGETS}?includeObject=None"))
        .await
        .expect(200);
    assert_eq!(none["rows"][0]["object"], Value::Null);
    let full = h
        .get_table(&format!("{WIDGETS}?includeObject=Object"))
        .await
        .expect(200);
    assert_eq!(full["rows"][0]["object"]["kind"], "Widget");
    assert_eq!(full["rows"][0]["object"]["spec"]["color"], "red");
    let meta = h
        .get_table(&format!("{WIDGETS}?includeObject=Metadata"))
        .await
        .expect(200);
    assert_eq!(meta["rows"][0]["object"]["kind"], "PartialObjectMetadata");

    // Pages of a Table carry the continue token; one object is a one-row Table.
    let page = h.get_table(&format!("{WIDGETS}?limit=1")).await.expect(200);
    assert_eq!(page["rows"].as_array().unwrap().len(), 1);
    assert!(page["metadata"]["continue"].is_string());
    let one = h.get_table(&widget_path("b")).await.expect(200);
    assert_eq!(one["kind"], "Table");
    assert_eq!(one["rows"][0]["cells"][0], "b");
    assert_eq!(one["rows"][0]["cells"][2], 3);
    assert!(!rv(&one).is_empty());
}

#[tokio::test]
async fn tables_without_printer_columns_get_an_age_column() {
    let h = Harness::start().await;
    h.create(GADGETS, gadget("g", json!({}))).await;
    let table = h.get_table(GADGETS).await.expect(200);
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Age"]);
    assert_eq!(table["columnDefinitions"][1]["type"], "date");
    assert_eq!(table["rows"][0]["cells"][0], "g");
    assert!(
        table["rows"][0]["cells"][1]
            .as_str()
            .unwrap()
            .ends_with('s')
    );
}

// ---------------------------------------------------------------------------------------------
// §7 Watch
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn watch_without_a_resource_version_starts_with_synthetic_added_events() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    let b = h.create_widget("b", json!({"color": "red"})).await;
    // Unset, 0, and the Python client's `watch=True`.
    for (round, query) in ["watch=true", "watch=1&resourceVersion=0", "watch=True"]
        .into_iter()
        .enumerate()
    {
        let mut watch = h.watch(&format!("{WIDGETS}?{query}")).await;
        let first = watch.expect("ADDED", "a").await;
        assert_eq!(first["kind"], "Widget");
        assert_eq!(first["apiVersion"], API_VERSION);
        let second = watch.expect("ADDED", "b").await;
        assert!(rv_num(&second) >= rv_num(&b));
        let changed = h
            .merge_patch(
                &widget_path("a"),
                &json!({"metadata": {"labels": {"round": round.to_string()}}}),
            )
            .await
            .expect(200);
        let event = watch.expect("MODIFIED", "a").await;
        assert_eq!(rv(&event), rv(&changed));
        assert_eq!(event, changed, "the event carries the new state");
    }
    // `watch=false` is a list.
    let list = h.get(&format!("{WIDGETS}?watch=false")).await.expect(200);
    assert_eq!(list["kind"], "WidgetList");
}

#[tokio::test]
async fn watch_from_a_resource_version_sends_exactly_the_later_events() {
    let h = Harness::start().await;
    let start = h.create_widget("z", json!({"color": "red"})).await;
    let a1 = h.create_widget("a", json!({"color": "red"})).await;
    let a2 = h
        .merge_patch(&widget_path("a"), &json!({"spec": {"size": 20}}))
        .await
        .expect(200);
    let b1 = h.create_widget("b", json!({"color": "red"})).await;
    h.delete(&widget_path("a"), None).await.expect(200);

    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&resourceVersion={}",
            rv(&start)
        ))
        .await;
    let added = watch.expect("ADDED", "a").await;
    assert_eq!(rv(&added), rv(&a1));
    let modified = watch.expect("MODIFIED", "a").await;
    assert_eq!(modified, a2);
    let added_b = watch.expect("ADDED", "b").await;
    assert_eq!(added_b, b1);
    let deleted = watch.expect("DELETED", "a").await;
    assert_eq!(
        deleted["spec"]["size"], 20,
        "DELETED carries the last state"
    );
    assert!(
        rv_num(&deleted) > rv_num(&b1),
        "with the deletion's newer revision"
    );
    // Nothing else was queued: the next event is the next write.
    let c = h.create_widget("c", json!({"color": "red"})).await;
    assert_eq!(watch.expect("ADDED", "c").await, c);

    // From a middle revision: only what follows it.
    let mut watch = h
        .watch(&format!("{WIDGETS}?watch=true&resourceVersion={}", rv(&a2)))
        .await;
    watch.expect("ADDED", "b").await;
    watch.expect("DELETED", "a").await;
    watch.expect("ADDED", "c").await;
    // Events arrive in revision order.
    let d = h.create_widget("d", json!({"color": "red"})).await;
    assert_eq!(watch.expect("ADDED", "d").await, d);
}

#[tokio::test]
async fn watch_selector_transitions_become_deleted_and_added() {
    let h = Harness::start().await;
    let list = h.get(WIDGETS).await.expect(200);
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&resourceVersion={}&labelSelector={}",
            rv(&list),
            enc("app=x")
        ))
        .await;
    h.create(
        WIDGETS,
        widget_with(
            "a",
            json!({"color": "red"}),
            json!({"labels": {"app": "x"}}),
        ),
    )
    .await;
    watch.expect("ADDED", "a").await;
    h.create(
        WIDGETS,
        widget_with(
            "b",
            json!({"color": "red"}),
            json!({"labels": {"app": "y"}}),
        ),
    )
    .await;
    let left = h
        .merge_patch(
            &widget_path("a"),
            &json!({"metadata": {"labels": {"app": "y"}}}),
        )
        .await
        .expect(200);
    let gone = watch.expect("DELETED", "a").await;
    assert_eq!(
        gone["metadata"]["labels"]["app"], "x",
        "the last matching state"
    );
    assert_eq!(rv(&gone), rv(&left), "at the revision of the change");
    // Changes to non-matching objects are not seen; b starting to match is an ADDED.
    h.merge_patch(&widget_path("a"), &json!({"spec": {"size": 2}}))
        .await
        .expect(200);
    let joined = h
        .merge_patch(
            &widget_path("b"),
            &json!({"metadata": {"labels": {"app": "x"}}}),
        )
        .await
        .expect(200);
    assert_eq!(watch.expect("ADDED", "b").await, joined);
    h.delete(&widget_path("b"), None).await.expect(200);
    watch.expect("DELETED", "b").await;

    // Field selectors on a selectable field transition the same way (list, then watch from
    // the list's revision, as clients do).
    let red = enc("spec.color=red");
    let list = h
        .get(&format!("{WIDGETS}?fieldSelector={red}"))
        .await
        .expect(200);
    assert_eq!(names(&list), ["a"]);
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&fieldSelector={red}&resourceVersion={}",
            rv(&list)
        ))
        .await;
    h.merge_patch(&widget_path("a"), &json!({"spec": {"color": "blue"}}))
        .await
        .expect(200);
    watch.expect("DELETED", "a").await;
    h.merge_patch(&widget_path("a"), &json!({"spec": {"color": "red"}}))
        .await
        .expect(200);
    watch.expect("ADDED", "a").await;
}

#[tokio::test]
async fn bookmarks_are_sent_only_when_asked_for() {
    let h = Harness::start().await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&allowWatchBookmarks=true&resourceVersion={}",
            rv(&a)
        ))
        .await;
    let bookmark = watch.next().await;
    assert_eq!(bookmark["type"], "BOOKMARK", "{bookmark}");
    let object = &bookmark["object"];
    assert_eq!(object["kind"], "Widget");
    assert_eq!(object["apiVersion"], API_VERSION);
    assert!(rv_num(object) >= rv_num(&a));
    assert!(object["metadata"].get("annotations").is_none());
    // Bookmarks keep coming and never go backwards.
    let next = watch.next().await;
    assert_eq!(next["type"], "BOOKMARK");
    assert!(rv_num(&next["object"]) >= rv_num(object));

    // Without allowWatchBookmarks (or with it false) none arrive, over several intervals.
    for query in ["", "&allowWatchBookmarks=false"] {
        let mut watch = h
            .watch(&format!(
                "{WIDGETS}?watch=true&timeoutSeconds=2&resourceVersion={}{query}",
                rv(&a)
            ))
            .await;
        match watch.next_within(PATIENCE).await {
            Next::End => {}
            Next::Event(e) => panic!("unexpected event {e}"),
            Next::Quiet => panic!("the watch did not end at its timeout"),
        }
    }
}

#[tokio::test]
async fn watch_ends_cleanly_at_timeout_seconds() {
    let h = Harness::start().await;
    let list = h.get(WIDGETS).await.expect(200);
    let started = tokio::time::Instant::now();
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&timeoutSeconds=1&resourceVersion={}",
            rv(&list)
        ))
        .await;
    watch.expect_end(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn watch_from_outside_the_cache_window_gets_an_in_stream_410() {
    let mut config = test_config();
    config.cache.capacity = 3;
    let h = Harness::start_with(config).await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    let mut last = a.clone();
    for size in 2..10 {
        last = h
            .merge_patch(&widget_path("a"), &json!({"spec": {"size": size}}))
            .await
            .expect(200);
    }
    let cache = widget_cache(&h);
    wait_until("the cache to see the last write", || {
        let cache = cache.clone();
        let target = rv_num(&last);
        async move { cache.revision() >= target }
    })
    .await;
    let mut watch = h
        .watch(&format!("{WIDGETS}?watch=true&resourceVersion={}", rv(&a)))
        .await;
    let event = watch.next().await;
    assert_expired(&event);
    watch.expect_end(PATIENCE).await;
    // The window's recent part is still served.
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&resourceVersion={}",
            rv_num(&last) - 1
        ))
        .await;
    assert_eq!(watch.expect("MODIFIED", "a").await, last);
}

fn widget_cache(h: &Harness) -> std::sync::Arc<Cacher> {
    h.server()
        .caches()
        .iter()
        .find(|c| c.resource.plural == "widgets")
        .expect("the widgets cache")
        .clone()
}

fn assert_expired(event: &Value) {
    assert_eq!(event["type"], "ERROR", "{event}");
    let status = &event["object"];
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "Expired");
    assert_eq!(status["code"], 410);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version: "),
        "{status}"
    );
}

#[tokio::test]
async fn compacted_revisions_are_expired_for_watches_lists_and_continues() {
    let mut config = test_config();
    config.compaction_interval = Duration::from_millis(200);
    let h = Harness::start_with(config).await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    h.create_widget("b", json!({"color": "red"})).await;
    let page = h.get(&format!("{WIDGETS}?limit=1")).await.expect(200);
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    let last = h
        .merge_patch(&widget_path("a"), &json!({"spec": {"size": 2}}))
        .await
        .expect(200);
    let store = h.store.clone();
    let cache = widget_cache(&h);
    wait_until("the compactor to pass the page's revision", || {
        let (store, cache) = (store.clone(), cache.clone());
        let (target, old) = (rv_num(&last), rv_num(&a));
        async move {
            // The compactor tells the caches right after the store; wait for both.
            store.compacted_revision().await.unwrap() >= target
                && matches!(cache.since(old), Since::Expired { .. })
        }
    })
    .await;

    let mut watch = h
        .watch(&format!("{WIDGETS}?watch=true&resourceVersion={}", rv(&a)))
        .await;
    assert_expired(&watch.next().await);
    watch.expect_end(PATIENCE).await;

    let status = h
        .get(&format!(
            "{WIDGETS}?resourceVersion={}&resourceVersionMatch=Exact",
            rv(&a)
        ))
        .await
        .expect_error(410, "Expired");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("The resourceVersion for the provided list is too old"),
        "{status}"
    );
    h.get(&format!("{WIDGETS}?limit=1&continue={}", enc(&token)))
        .await
        .expect_error(410, "Expired");
    // A watch from the current revision still works.
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&resourceVersion={}",
            rv(&last)
        ))
        .await;
    let c = h.create_widget("c", json!({"color": "red"})).await;
    assert_eq!(watch.expect("ADDED", "c").await, c);
}

#[tokio::test]
async fn send_initial_events_ends_with_an_annotated_bookmark() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    let b = h.create_widget("b", json!({"color": "red"})).await;
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion={}",
            rv(&b)
        ))
        .await;
    watch.expect("ADDED", "a").await;
    watch.expect("ADDED", "b").await;
    let bookmark = watch.next().await;
    assert_eq!(bookmark["type"], "BOOKMARK", "{bookmark}");
    assert_eq!(bookmark["object"]["kind"], "Widget");
    assert_eq!(bookmark["object"]["apiVersion"], API_VERSION);
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert!(rv_num(&bookmark["object"]) >= rv_num(&b));
    let c = h.create_widget("c", json!({"color": "red"})).await;
    assert_eq!(watch.expect("ADDED", "c").await, c);

    h.get(&format!(
        "{WIDGETS}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true"
    ))
    .await
    .expect_error(422, "Invalid");
}

#[tokio::test]
async fn table_watches_send_column_definitions_only_first() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    h.create_widget("b", json!({"color": "blue"})).await;
    let mut watch = h
        .watch_with(
            &format!("{WIDGETS}?watch=true"),
            &[("accept", TABLE_ACCEPT)],
        )
        .await;
    let first = watch.next().await;
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["kind"], "Table");
    assert_eq!(
        first["object"]["columnDefinitions"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(first["object"]["rows"][0]["cells"][0], "a");
    let no_columns = |event: &Value| {
        event["object"]["columnDefinitions"]
            .as_array()
            .is_none_or(|c| c.is_empty())
    };
    let second = watch.next().await;
    assert_eq!(second["object"]["rows"][0]["cells"][0], "b");
    assert!(no_columns(&second), "{second}");
    let changed = h
        .merge_patch(&widget_path("a"), &json!({"spec": {"size": 7}}))
        .await
        .expect(200);
    let third = watch.next().await;
    assert_eq!(third["type"], "MODIFIED");
    assert!(no_columns(&third), "{third}");
    assert_eq!(third["object"]["rows"][0]["cells"][2], 7);
    assert_eq!(rv(&third["object"]), rv(&changed));
}

#[tokio::test]
async fn watch_events_are_one_compact_json_object_per_line() {
    use http_body_util::BodyExt;
    let h = Harness::start().await;
    for name in ["a", "b", "c"] {
        h.create_widget(name, json!({"color": "red", "tags": ["x", "y"]}))
            .await;
    }
    let response = tower::ServiceExt::oneshot(
        h.app.clone(),
        axum::http::Request::get(format!("{WIDGETS}?watch=true&timeoutSeconds=1"))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("the stream ends at its timeout")
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.ends_with('\n'), "every event ends with a newline");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for line in lines {
        let event: Value = serde_json::from_str(line).expect("one JSON object per line");
        assert_eq!(serde_json::to_string(&event).unwrap(), line, "compact");
        assert_eq!(event["type"], "ADDED");
        assert_eq!(event.as_object().unwrap().len(), 2, "{{type, object}}");
    }
}

#[tokio::test]
async fn watch_is_scoped_to_its_namespace() {
    let h = Harness::start().await;
    h.create_namespace("other").await;
    let list = h.get(ALL_WIDGETS).await.expect(200);
    let from = rv(&list);
    let mut other = h
        .watch(&format!(
            "{}?watch=true&resourceVersion={from}",
            widgets_in("other")
        ))
        .await;
    let mut all = h
        .watch(&format!("{ALL_WIDGETS}?watch=true&resourceVersion={from}"))
        .await;
    h.create_widget("in-default", json!({"color": "red"})).await;
    h.post(
        &widgets_in("other"),
        &widget("in-other", json!({"color": "red"})),
    )
    .await
    .expect(201);
    let seen = other.expect("ADDED", "in-other").await;
    assert_eq!(seen["metadata"]["namespace"], "other");
    all.expect("ADDED", "in-default").await;
    all.expect("ADDED", "in-other").await;
}

#[tokio::test]
async fn kubectl_wait_for_delete_sees_the_deletion() {
    // §11: `kubectl wait --for=delete` lists by name from the cache, then watches from the
    // list's revision with bookmarks and a timeout.
    let h = Harness::start().await;
    h.create(
        WIDGETS,
        widget_with(
            "a",
            json!({"color": "red"}),
            json!({"finalizers": ["test/hold"]}),
        ),
    )
    .await;
    h.create_widget("b", json!({"color": "red"})).await;
    let selector = enc("metadata.name=a");
    let by_name = format!("{WIDGETS}?fieldSelector={selector}&limit=500&resourceVersion=0");
    // `resourceVersion=0` is served by the cache, which may lag the create by a moment.
    wait_until("the cache to hold a", || async {
        names(&h.get(&by_name).await.expect(200)) == ["a"]
    })
    .await;
    let list = h.get(&by_name).await.expect(200);
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?allowWatchBookmarks=true&fieldSelector={selector}&resourceVersion={}&timeoutSeconds=30&watch=true",
            rv(&list)
        ))
        .await;
    h.delete(&widget_path("b"), None).await.expect(200);
    h.delete(&widget_path("a"), None).await.expect(200);
    let marked = watch.expect("MODIFIED", "a").await;
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    h.merge_patch(
        &widget_path("a"),
        &json!({"metadata": {"finalizers": null}}),
    )
    .await
    .expect(200);
    watch.expect("DELETED", "a").await;
}

// ---------------------------------------------------------------------------------------------
// §9 Delete, finalizers, ownerReferences
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_without_finalizers_returns_a_success_status() {
    let h = Harness::start().await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    let mut watch = h
        .watch(&format!("{WIDGETS}?watch=true&resourceVersion={}", rv(&a)))
        .await;
    let status = h
        .delete(&widget_path("a"), Some(&json!({})))
        .await
        .expect(200);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Success");
    assert_eq!(status["details"]["name"], "a");
    assert_eq!(status["details"]["group"], GROUP);
    assert_eq!(status["details"]["kind"], "widgets");
    assert_eq!(status["details"]["uid"], a["metadata"]["uid"]);
    let deleted = watch.expect("DELETED", "a").await;
    assert!(rv_num(&deleted) > rv_num(&a));
    assert!(h.is_gone(&widget_path("a")).await);
    h.delete(&widget_path("a"), None)
        .await
        .expect_error(404, "NotFound");

    // kubectl's body, and a cluster-scoped kind.
    h.create(GADGETS, gadget("g", json!({}))).await;
    let status = h
        .delete(
            &gadget_path("g"),
            Some(&json!({"propagationPolicy": "Background"})),
        )
        .await
        .expect(200);
    assert_eq!(status["details"]["kind"], "gadgets");
    assert!(h.is_gone(&gadget_path("g")).await);
}

#[tokio::test]
async fn delete_with_finalizers_waits_for_them() {
    let h = Harness::start().await;
    let created = h
        .create(
            WIDGETS,
            widget_with(
                "a",
                json!({"color": "red"}),
                json!({"finalizers": ["test/one", "test/two"]}),
            ),
        )
        .await;
    let a = widget_path("a");
    let mut watch = h
        .watch(&format!(
            "{WIDGETS}?watch=true&resourceVersion={}",
            rv(&created)
        ))
        .await;
    let deleting = h.delete(&a, None).await.expect(200);
    assert_eq!(deleting["kind"], "Widget", "the object comes back");
    assert!(is_k8s_time(
        deleting["metadata"]["deletionTimestamp"].as_str().unwrap()
    ));
    assert_eq!(deleting["metadata"]["deletionGracePeriodSeconds"], 0);
    assert_eq!(generation(&deleting), 2, "deletion bumps generation once");
    assert_eq!(
        deleting["metadata"]["finalizers"],
        json!(["test/one", "test/two"])
    );
    assert_eq!(watch.expect("MODIFIED", "a").await, deleting);

    // A repeated DELETE changes nothing.
    let again = h.delete(&a, None).await.expect(200);
    assert_eq!(again, deleting);

    // No new finalizers while deleting.
    let status = h
        .merge_patch(
            &a,
            &json!({"metadata": {"finalizers": ["test/one", "test/two", "test/three"]}}),
        )
        .await
        .expect_error(422, "Invalid");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("no new finalizers can be added if the object is being deleted"),
        "{status}"
    );
    assert_eq!(cause_fields(&status), ["metadata.finalizers"]);

    // Removing one finalizer keeps the object; removing the last deletes it.
    let one_left = h
        .json_patch(
            &a,
            &json!([{"op": "remove", "path": "/metadata/finalizers/0"}]),
        )
        .await
        .expect(200);
    assert_eq!(one_left["metadata"]["finalizers"], json!(["test/two"]));
    assert_eq!(generation(&one_left), 2);
    assert_eq!(watch.expect("MODIFIED", "a").await, one_left);
    h.merge_patch(&a, &json!({"metadata": {"finalizers": null}}))
        .await
        .expect(200);
    let deleted = watch.expect("DELETED", "a").await;
    assert!(rv_num(&deleted) > rv_num(&one_left));
    assert!(h.is_gone(&a).await);

    // orphanDependents=false asks for 202 Accepted while finalizers remain.
    h.create(
        WIDGETS,
        widget_with(
            "b",
            json!({"color": "red"}),
            json!({"finalizers": ["test/one"]}),
        ),
    )
    .await;
    let accepted = h
        .delete(&widget_path("b"), Some(&json!({"orphanDependents": false})))
        .await
        .expect(202);
    assert!(accepted["metadata"]["deletionTimestamp"].is_string());
}

#[tokio::test]
async fn delete_preconditions_must_match() {
    let h = Harness::start().await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    let path = widget_path("a");
    let status = h
        .delete(
            &path,
            Some(&json!({"preconditions": {"uid": "not-the-uid"}})),
        )
        .await
        .expect_error(409, "Conflict");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("Precondition failed: UID"),
        "{status}"
    );
    let status = h
        .delete(
            &path,
            Some(&json!({"preconditions": {"resourceVersion": "1"}})),
        )
        .await
        .expect_error(409, "Conflict");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("Precondition failed: ResourceVersion"),
        "{status}"
    );
    h.get(&path).await.expect(200);
    h.delete(
        &path,
        Some(&json!({"preconditions": {"uid": a["metadata"]["uid"], "resourceVersion": rv(&a)}})),
    )
    .await
    .expect(200);
    assert!(h.is_gone(&path).await);
}

#[tokio::test]
async fn background_deletion_collects_dependents() {
    let h = Harness::start().await;
    let owner = h.create_widget("owner", json!({"color": "red"})).await;
    let keeper = h.create_widget("keeper", json!({"color": "red"})).await;
    for name in ["d1", "d2"] {
        h.create(
            WIDGETS,
            widget_with(
                name,
                json!({"color": "red"}),
                json!({"ownerReferences": [owner_ref(&owner, false)]}),
            ),
        )
        .await;
    }
    h.create(
        WIDGETS,
        widget_with(
            "shared",
            json!({"color": "red"}),
            json!({"ownerReferences": [owner_ref(&owner, false), owner_ref(&keeper, false)]}),
        ),
    )
    .await;
    // A namespaced dependent of a cluster-scoped owner.
    let cluster_owner = h.create(GADGETS, gadget("cluster-owner", json!({}))).await;
    h.create(
        WIDGETS,
        widget_with(
            "d3",
            json!({"color": "red"}),
            json!({"ownerReferences": [owner_ref(&cluster_owner, false)]}),
        ),
    )
    .await;
    // The default policy for custom resources is background.
    h.delete(&widget_path("owner"), Some(&json!({})))
        .await
        .expect(200);
    h.delete(&gadget_path("cluster-owner"), None)
        .await
        .expect(200);
    h.wait_gone(
        &widget_path("d3"),
        "the cluster-scoped owner's dependent to be collected",
    )
    .await;
    for name in ["d1", "d2"] {
        h.wait_gone(&widget_path(name), &format!("{name} to be collected"))
            .await;
    }
    // A dependent with another live owner stays and loses the dangling reference.
    wait_until("the dangling reference to go", || async {
        let shared = h.get(&widget_path("shared")).await.expect(200);
        shared["metadata"]["ownerReferences"] == json!([owner_ref(&keeper, false)])
    })
    .await;
}

#[tokio::test]
async fn foreground_deletion_waits_for_blocking_dependents() {
    let h = Harness::start().await;
    let owner = h.create_widget("owner", json!({"color": "red"})).await;
    h.create(
        WIDGETS,
        widget_with(
            "blocker",
            json!({"color": "red"}),
            json!({"ownerReferences": [owner_ref(&owner, true)], "finalizers": ["test/hold"]}),
        ),
    )
    .await;
    h.create(
        WIDGETS,
        widget_with(
            "free",
            json!({"color": "red"}),
            json!({"ownerReferences": [owner_ref(&owner, false)]}),
        ),
    )
    .await;
    let deleting = h
        .delete(
            &widget_path("owner"),
            Some(&json!({"propagationPolicy": "Foreground"})),
        )
        .await
        .expect(200);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        deleting["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );

    h.wait_gone(&widget_path("free"), "the non-blocking dependent to go")
        .await;
    wait_until("the blocking dependent to be deleting", || async {
        h.get(&widget_path("blocker")).await.expect(200)["metadata"]["deletionTimestamp"]
            .is_string()
    })
    .await;
    // The blocker is held by its own finalizer, so the owner must still be waiting.
    let waiting = h.get(&widget_path("owner")).await.expect(200);
    assert_eq!(
        waiting["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );

    h.merge_patch(
        &widget_path("blocker"),
        &json!({"metadata": {"finalizers": null}}),
    )
    .await
    .expect(200);
    h.wait_gone(&widget_path("blocker"), "the blocker to go")
        .await;
    h.wait_gone(&widget_path("owner"), "the owner to go").await;
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents_without_the_reference() {
    let h = Harness::start().await;
    let owner = h.create_widget("owner", json!({"color": "red"})).await;
    for name in ["d1", "d2"] {
        h.create(
            WIDGETS,
            widget_with(
                name,
                json!({"color": "red"}),
                json!({"ownerReferences": [owner_ref(&owner, true)]}),
            ),
        )
        .await;
    }
    let deleting = h
        .delete(
            &widget_path("owner"),
            Some(&json!({"propagationPolicy": "Orphan"})),
        )
        .await
        .expect(200);
    assert_eq!(deleting["metadata"]["finalizers"], json!(["orphan"]));
    h.wait_gone(&widget_path("owner"), "the owner to go").await;
    for name in ["d1", "d2"] {
        let dependent = h.get(&widget_path(name)).await.expect(200);
        assert!(
            dependent["metadata"].get("ownerReferences").is_none(),
            "{name} keeps no reference to the orphaning owner: {dependent}"
        );
        assert!(dependent["metadata"].get("deletionTimestamp").is_none());
    }
}

#[tokio::test]
async fn delete_collection_deletes_what_the_selector_matches() {
    let h = Harness::start().await;
    for (name, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
        h.create(
            WIDGETS,
            widget_with(
                name,
                json!({"color": "red"}),
                json!({"labels": {"app": app}}),
            ),
        )
        .await;
    }
    let deleted = h
        .delete(&format!("{WIDGETS}?labelSelector={}", enc("app=x")), None)
        .await
        .expect(200);
    assert_eq!(deleted["kind"], "WidgetList");
    assert_eq!(names(&deleted), ["a", "b"]);
    assert_eq!(names(&h.get(WIDGETS).await.expect(200)), ["c"]);
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

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
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("being terminated"),
        "{status}"
    );

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

    h.merge_patch(
        &format!("{doomed}/held"),
        &json!({"metadata": {"finalizers": null}}),
    )
    .await
    .expect(200);
    h.wait_gone(&ns_path, "the namespace to go").await;
}

// ---------------------------------------------------------------------------------------------
// §1-3 Discovery and OpenAPI
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn version_reports_minor_32() {
    let h = Harness::start().await;
    let version = h.get("/version?timeout=5s").await.expect(200);
    assert_eq!(version["major"], "1");
    assert_eq!(version["minor"], "32");
    assert!(
        version["gitVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.32.")
    );
}

#[tokio::test]
async fn discovery_describes_groups_versions_and_resources() {
    let h = Harness::start().await;
    let api = h.get("/api").await.expect(200);
    assert_eq!(api["kind"], "APIVersions");
    assert_eq!(api["versions"], json!(["v1"]));
    let core = h.get("/api/v1").await.expect(200);
    assert_eq!(core["kind"], "APIResourceList");
    assert_eq!(core["groupVersion"], "v1");
    assert!(
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "namespaces" && r["namespaced"] == false),
        "{core}"
    );

    let apis = h.get("/apis").await.expect(200);
    assert_eq!(apis["kind"], "APIGroupList");
    assert_eq!(apis["apiVersion"], "v1");
    let group = apis["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == GROUP)
        .expect("the test group")
        .clone();
    let gv = json!({"groupVersion": API_VERSION, "version": "v1"});
    assert_eq!(group["versions"], json!([gv]));
    assert_eq!(group["preferredVersion"], gv);
    let group_doc = h.get(&format!("/apis/{GROUP}")).await.expect(200);
    assert_eq!(group_doc["kind"], "APIGroup");

    let list = h.get(&format!("/apis/{API_VERSION}")).await.expect(200);
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["groupVersion"], API_VERSION);
    let resources = list["resources"].as_array().unwrap();
    let find = |name: &str| {
        resources
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .clone()
    };
    let widgets = find("widgets");
    assert_eq!(widgets["singularName"], "widget");
    assert_eq!(widgets["namespaced"], true);
    assert_eq!(widgets["kind"], "Widget");
    assert_eq!(widgets["shortNames"], json!(["wg"]));
    assert_eq!(widgets["categories"], json!(["all"]));
    assert_eq!(
        widgets["verbs"],
        json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ])
    );
    let status = find("widgets/status");
    assert_eq!(status["kind"], "Widget");
    assert_eq!(status["singularName"], "");
    assert_eq!(status["namespaced"], true);
    assert_eq!(status["verbs"], json!(["get", "patch", "update"]));
    let gadgets = find("gadgets");
    assert_eq!(gadgets["namespaced"], false);
    assert!(!resources.iter().any(|r| r["name"] == "gadgets/status"));

    h.get("/apis/nope.example.com/v1")
        .await
        .expect_error(404, "NotFound");
    h.get(&format!("/apis/{GROUP}/v9"))
        .await
        .expect_error(404, "NotFound");
}

#[tokio::test]
async fn openapi_v3_lets_kubectl_validate_on_the_server() {
    let h = Harness::start().await;
    let index = h.get("/openapi/v3").await.expect(200);
    let url = index["paths"][format!("apis/{API_VERSION}")]["serverRelativeURL"]
        .as_str()
        .expect("the group version is indexed")
        .to_string();
    let prefix = format!("/openapi/v3/apis/{API_VERSION}?hash=");
    assert!(
        url.starts_with(&prefix) && url.len() > prefix.len(),
        "{url}"
    );
    let document = h.get(&url).await.expect(200);
    assert_eq!(
        document,
        h.get(&format!("/openapi/v3/apis/{API_VERSION}"))
            .await
            .expect(200)
    );
    assert!(
        !document.to_string().contains("strategic-merge-patch"),
        "strategic merge patch must never be offered"
    );
    let object_paths = [
        (
            format!("/apis/{API_VERSION}/namespaces/{{namespace}}/widgets/{{name}}"),
            "Widget",
        ),
        (
            format!("/apis/{API_VERSION}/namespaces/{{namespace}}/widgets/{{name}}/status"),
            "Widget",
        ),
        (format!("/apis/{API_VERSION}/gadgets/{{name}}"), "Gadget"),
    ];
    for (path, kind) in object_paths {
        let patch = &document["paths"][&path]["patch"];
        assert!(patch.is_object(), "no PATCH at {path}");
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": GROUP, "version": "v1", "kind": kind})
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"),
            "{path}: fieldValidation parameter"
        );
        let mut types: Vec<&str> = patch["requestBody"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        types.sort();
        assert_eq!(
            types,
            [
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json"
            ],
            "{path}"
        );
    }
    let schemas = document["components"]["schemas"].as_object().unwrap();
    let widget_schema = schemas
        .values()
        .find(|s| {
            s["x-kubernetes-group-version-kind"]
                == json!([{"group": GROUP, "version": "v1", "kind": "Widget"}])
        })
        .expect("a schema tagged with Widget's GVK");
    assert_eq!(
        widget_schema["properties"]["spec"]["properties"]["color"]["enum"],
        json!(["red", "green", "blue"])
    );

    // The hash is stable for one schema and changes with it.
    let hash_of = |index: &Value| {
        index["paths"][format!("apis/{API_VERSION}")]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let same = Harness::start().await;
    assert_eq!(hash_of(&same.get("/openapi/v3").await.expect(200)), url);
    let changed_dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture_crds().join("test.corral.dev.yaml")).unwrap();
    let changed_text = text.replace("maxLength: 16", "maxLength: 17");
    assert_ne!(changed_text, text);
    std::fs::write(changed_dir.path().join("crds.yaml"), changed_text).unwrap();
    let changed = Harness::start_with_crds(changed_dir.path(), test_config()).await;
    assert_ne!(hash_of(&changed.get("/openapi/v3").await.expect(200)), url);

    h.get("/openapi/v3/apis/nope.example.com/v1")
        .await
        .expect_error(404, "NotFound");
    h.call(
        Method::GET,
        "/openapi/v2",
        &[(
            "accept",
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        )],
        Vec::new(),
    )
    .await
    .expect_error(404, "NotFound");
}

// ---------------------------------------------------------------------------------------------
// §10 Errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_error_reply_is_a_status() {
    // Every reply this suite receives is checked by the harness: a non-2xx body must be a
    // Status whose code is the HTTP status. This table covers each row of §10's table.
    let h = Harness::start().await;
    let existing = h.create_widget("a", json!({"color": "red"})).await;
    let a = &widget_path("a");
    let mut stale = existing.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    let json = "application/json";
    let smp = "application/strategic-merge-patch+json";
    let protobuf = "application/vnd.kubernetes.protobuf";
    let not_ns = widget_with("n", json!({"color": "red"}), json!({"namespace": "other"}));
    let huge = vec![b' '; 4 * 1024 * 1024];
    let nopes = &format!("/apis/{API_VERSION}/namespaces/default/nopes");
    let ghost = &widget_path("ghost");
    let status = &format!("{a}/status");
    let bad_selector = &format!("{WIDGETS}?labelSelector=%3D%3D");
    let bad_limit = &format!("{WIDGETS}?limit=ten");
    let (get, post, put, patch, delete) = (
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    );
    // (what, method, path, (header, value), body, code, reason, details.name)
    #[rustfmt::skip]
    let cases = [
        ("unknown path", get.clone(), "/nothing/here", None, vec![], 404, "NotFound", None),
        ("unknown resource", get.clone(), nopes, None, vec![], 404, "NotFound", None),
        ("missing object", get.clone(), ghost, None, vec![], 404, "NotFound", Some("ghost")),
        ("duplicate", post.clone(), WIDGETS, Some(("content-type", json)), body(widget("a", json!({"color": "red"}))), 409, "AlreadyExists", Some("a")),
        ("stale update", put, a, Some(("content-type", json)), body(stale), 409, "Conflict", Some("a")),
        ("invalid object", post.clone(), WIDGETS, Some(("content-type", json)), body(widget("b", json!({"color": "purple"}))), 422, "Invalid", Some("b")),
        ("bad JSON", post.clone(), WIDGETS, Some(("content-type", json)), b"{".to_vec(), 400, "BadRequest", None),
        ("namespace differs from the URL", post.clone(), WIDGETS, Some(("content-type", json)), body(not_ns), 400, "BadRequest", None),
        ("wrong kind", post.clone(), WIDGETS, Some(("content-type", json)), body(gadget("g", json!({}))), 400, "BadRequest", None),
        ("bad selector", get.clone(), bad_selector, None, vec![], 400, "BadRequest", None),
        ("bad limit", get.clone(), bad_limit, None, vec![], 400, "BadRequest", None),
        ("strategic merge patch", patch, a, Some(("content-type", smp)), b"{}".to_vec(), 415, "UnsupportedMediaType", None),
        ("protobuf only", get.clone(), a, Some(("accept", protobuf)), vec![], 406, "NotAcceptable", None),
        ("POST to an object", post.clone(), a, Some(("content-type", json)), b"{}".to_vec(), 405, "MethodNotAllowed", None),
        ("DELETE of status", delete, status, None, vec![], 405, "MethodNotAllowed", None),
        ("too large", post, WIDGETS, Some(("content-type", json)), huge, 413, "RequestEntityTooLarge", None),
    ];
    for (what, method, path, header, body, code, reason, name) in cases {
        let headers: Vec<(&str, &str)> = header.into_iter().collect();
        let reply = h.call(method, path, &headers, body).await;
        assert_eq!(reply.status.as_u16(), code, "{what}: {}", reply.body);
        assert_eq!(reply.body["reason"], reason, "{what}");
        if let Some(name) = name {
            let details = &reply.body["details"];
            assert_eq!(details["name"], name, "{what}: {details}");
            assert_eq!(details["group"], GROUP, "{what}");
            assert_eq!(details["kind"], "widgets", "{what}");
        }
    }
}
