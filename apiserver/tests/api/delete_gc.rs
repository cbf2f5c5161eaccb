//! Delete (§9): finalizers, preconditions, ownerReferences and the garbage collector's policies.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn delete_without_finalizers_returns_a_success_status() {
    let h = Harness::start().await;
    let a = h.create_widget("a", json!({"color": "red"})).await;
    let mut watch = h.watch_widgets_from(&a).await;
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
        .create_widget_with(
            "a",
            json!({"color": "red"}),
            json!({"finalizers": ["test/one", "test/two"]}),
        )
        .await;
    let a = widget_path("a");
    let mut watch = h.watch_widgets_from(&created).await;
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
        message(&status).contains("no new finalizers can be added if the object is being deleted"),
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
    h.remove_finalizers(&a).await;
    let deleted = watch.expect("DELETED", "a").await;
    assert!(rv_num(&deleted) > rv_num(&one_left));
    assert!(h.is_gone(&a).await);

    // orphanDependents=false asks for 202 Accepted while finalizers remain.
    h.create_widget_with(
        "b",
        json!({"color": "red"}),
        json!({"finalizers": ["test/one"]}),
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
        message(&status).contains("Precondition failed: UID"),
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
        message(&status).contains("Precondition failed: ResourceVersion"),
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
        h.create_widget_with(
            name,
            json!({"color": "red"}),
            json!({"ownerReferences": [owner_ref(&owner, false)]}),
        )
        .await;
    }
    h.create_widget_with(
        "shared",
        json!({"color": "red"}),
        json!({"ownerReferences": [owner_ref(&owner, false), owner_ref(&keeper, false)]}),
    )
    .await;
    // A namespaced dependent of a cluster-scoped owner.
    let cluster_owner = h.create(GADGETS, gadget("cluster-owner", json!({}))).await;
    h.create_widget_with(
        "d3",
        json!({"color": "red"}),
        json!({"ownerReferences": [owner_ref(&cluster_owner, false)]}),
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
    h.create_widget_with(
        "blocker",
        json!({"color": "red"}),
        json!({"ownerReferences": [owner_ref(&owner, true)], "finalizers": ["test/hold"]}),
    )
    .await;
    h.create_widget_with(
        "free",
        json!({"color": "red"}),
        json!({"ownerReferences": [owner_ref(&owner, false)]}),
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

    h.remove_finalizers(&widget_path("blocker")).await;
    h.wait_gone(&widget_path("blocker"), "the blocker to go")
        .await;
    h.wait_gone(&widget_path("owner"), "the owner to go").await;
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents_without_the_reference() {
    let h = Harness::start().await;
    let owner = h.create_widget("owner", json!({"color": "red"})).await;
    for name in ["d1", "d2"] {
        h.create_widget_with(
            name,
            json!({"color": "red"}),
            json!({"ownerReferences": [owner_ref(&owner, true)]}),
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
        h.create_widget_with(
            name,
            json!({"color": "red"}),
            json!({"labels": {"app": app}}),
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

/// A cluster-scoped dependent cannot name a namespaced owner; as in Kubernetes the reference is
/// unresolvable and the dependent is not collected because of it. (A gadget whose gadget owner
/// is gone is collected in the same passes, which shows the collector ran.)
#[tokio::test]
async fn cluster_scoped_dependents_of_namespaced_owners_are_left_alone() {
    let h = Harness::start().await;
    let missing_widget = json!({
        "apiVersion": "test.corral.dev/v1", "kind": "Widget", "name": "nowhere",
        "uid": "00000000-0000-0000-0000-0000000000aa",
    });
    let missing_gadget = json!({
        "apiVersion": "test.corral.dev/v1", "kind": "Gadget", "name": "gone",
        "uid": "00000000-0000-0000-0000-0000000000bb",
    });
    let mut unresolvable = gadget("unresolvable", json!({}));
    unresolvable["metadata"]["ownerReferences"] = json!([missing_widget]);
    h.create(GADGETS, unresolvable).await;
    let mut orphaned = gadget("orphaned", json!({}));
    orphaned["metadata"]["ownerReferences"] = json!([missing_gadget]);
    h.create(GADGETS, orphaned).await;
    h.wait_gone(&gadget_path("orphaned"), "the gadget whose owner is gone")
        .await;
    h.get(&gadget_path("unresolvable")).await.expect(200);
}
