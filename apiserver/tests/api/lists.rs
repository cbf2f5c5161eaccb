//! Lists (§6): selectors, pagination, resourceVersion semantics and namespaces.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn label_selectors_support_every_operator() {
    let h = Harness::start().await;
    for (name, labels) in [
        ("a", json!({"env": "prod", "tier": "web"})),
        ("b", json!({"env": "dev", "tier": "web"})),
        ("c", json!({"env": "prod"})),
        ("d", json!({})),
    ] {
        h.create_widget_with(name, json!({"color": "red"}), json!({"labels": labels}))
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
        message(&status).contains("field label not supported: spec.size"),
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
