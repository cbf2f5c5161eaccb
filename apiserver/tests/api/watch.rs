//! Watch (§7): initial events, resume from a revision, selectors, bookmarks, timeouts and expiry.

use std::time::Duration;

use corral_apiserver::cache::{Cacher, Since};
use serde_json::{Value, json};

use crate::support::*;

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

    let mut watch = h.watch_widgets_from(&start).await;
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
    let mut watch = h.watch_widgets_from(&a2).await;
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
    h.create_widget_with(
        "a",
        json!({"color": "red"}),
        json!({"labels": {"app": "x"}}),
    )
    .await;
    watch.expect("ADDED", "a").await;
    h.create_widget_with(
        "b",
        json!({"color": "red"}),
        json!({"labels": {"app": "y"}}),
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
    let mut watch = h.watch_widgets_from(&a).await;
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
        message(status).starts_with("too old resource version: "),
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

    let mut watch = h.watch_widgets_from(&a).await;
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
        message(&status).contains("The resourceVersion for the provided list is too old"),
        "{status}"
    );
    h.get(&format!("{WIDGETS}?limit=1&continue={}", enc(&token)))
        .await
        .expect_error(410, "Expired");
    // A watch from the current revision still works.
    let mut watch = h.watch_widgets_from(&last).await;
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
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
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
    h.create_widget_with(
        "a",
        json!({"color": "red"}),
        json!({"finalizers": ["test/hold"]}),
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
    h.remove_finalizers(&widget_path("a")).await;
    watch.expect("DELETED", "a").await;
}
