//! Lists: prefixes, pagination, past revisions, compaction.

use super::*;

pub async fn list_isolates_prefixes(harness: Harness) {
    let store = harness.store();
    for key in ["/p/b", "/p/a", "/pq/c", "/q/d", "/p", "/p/a/deep"] {
        create(&store, key, key).await;
    }
    let now = current(&store).await;
    let p = list(&store, "/p/", None).await;
    assert_eq!(keys(&p), ["/p/a", "/p/a/deep", "/p/b"]);
    assert_eq!((p.count, p.more, p.revision), (3, false, now));
    assert_eq!(p.items[0].value, value("/p/a"));
    assert_eq!(keys(&list(&store, "/pq/", None).await), ["/pq/c"]);
    assert_eq!(
        keys(&list(&store, "/p", None).await),
        ["/p", "/p/a", "/p/a/deep", "/p/b", "/pq/c"]
    );
    assert_eq!(
        keys(&list(&store, "", None).await),
        ["/p", "/p/a", "/p/a/deep", "/p/b", "/pq/c", "/q/d"]
    );
    let none = list(&store, "/none/", None).await;
    assert!(none.items.is_empty());
    assert_eq!((none.count, none.more, none.revision), (0, false, now));
}

pub async fn list_paginates_with_count_and_more(harness: Harness) {
    let store = harness.store();
    let mut all = Vec::new();
    for i in 0..10 {
        all.push(create(&store, &format!("/pg/{i:02}"), &format!("v{i}")).await);
    }
    create(&store, "/pg0", "outside").await;
    create(&store, "/pf/x", "outside").await;

    let unlimited = list(&store, "/pg/", None).await;
    assert_eq!(unlimited.items, all);
    assert_eq!((unlimited.count, unlimited.more), (10, false));
    let zero = store
        .list(ListRequest {
            prefix: "/pg/".into(),
            limit: Some(0),
            ..ListRequest::default()
        })
        .await
        .expect("list with limit 0");
    assert_eq!(zero.items.len(), 10, "limit 0 means no limit");

    // Page through at the first page's revision while the data changes underneath.
    let mut pages = Vec::new();
    let mut request = ListRequest {
        prefix: "/pg/".into(),
        limit: Some(3),
        ..ListRequest::default()
    };
    let first = store.list(request.clone()).await.expect("first page");
    let snapshot = first.revision;
    let modified = update(&store, &all[7], "changed").await;
    delete(&store, &modified).await;
    create(&store, "/pg/05a", "inserted").await;
    let mut page = first;
    loop {
        let remaining = 10 - pages.iter().map(Vec::len).sum::<usize>();
        assert_eq!(
            page.count as usize, remaining,
            "count covers start to end of prefix"
        );
        assert_eq!(page.revision, snapshot);
        pages.push(page.items.clone());
        if !page.more {
            break;
        }
        assert_eq!(page.items.len(), 3);
        let last = page
            .items
            .last()
            .map(|kv| kv.key.clone())
            .unwrap_or_default();
        request.start = Some(format!("{last}\0"));
        request.revision = Some(snapshot);
        page = store.list(request.clone()).await.expect("next page");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
    assert_eq!(
        pages.concat(),
        all,
        "pages at one revision add up to that revision's list"
    );

    // At the latest revision the changes show.
    let latest = list(&store, "/pg/", None).await;
    assert_eq!(latest.count, 10);
    assert!(keys(&latest).contains(&"/pg/05a"));
    assert!(!keys(&latest).contains(&"/pg/07"));

    // A start before the prefix is the prefix; a start past it is empty.
    let early = store
        .list(ListRequest {
            prefix: "/pg/".into(),
            start: Some("/a".into()),
            ..ListRequest::default()
        })
        .await
        .expect("list from before the prefix");
    assert_eq!(early.count, 10);
    let late = store
        .list(ListRequest {
            prefix: "/pg/".into(),
            start: Some("/ph".into()),
            ..ListRequest::default()
        })
        .await
        .expect("list from past the prefix");
    assert!(late.items.is_empty());
    assert_eq!((late.count, late.more), (0, false));
}

pub async fn list_at_older_revision_sees_old_state(harness: Harness) {
    let store = harness.store();
    let a1 = create(&store, "/o/a", "a1").await;
    let b1 = create(&store, "/o/b", "b1").await;
    let a2 = update(&store, &a1, "a2").await;
    let b_gone = delete(&store, &b1).await;
    let c1 = create(&store, "/o/c", "c1").await;

    let at = |revision| list(&store, "/o/", Some(revision));
    assert_eq!(at(a1.mod_revision).await.items, vec![a1.clone()]);
    assert_eq!(at(b1.mod_revision).await.items, [a1.clone(), b1.clone()]);
    assert_eq!(at(a2.mod_revision).await.items, [a2.clone(), b1.clone()]);
    assert_eq!(at(b_gone.mod_revision).await.items, vec![a2.clone()]);
    let now = at(c1.mod_revision).await;
    assert_eq!(now.items, [a2.clone(), c1.clone()]);
    assert_eq!(now.revision, c1.mod_revision);
    assert_eq!(list(&store, "/o/", None).await.items, now.items);
    if a1.mod_revision > 1 {
        assert!(at(a1.mod_revision - 1).await.items.is_empty());
    }

    let future = c1.mod_revision + 10;
    match store
        .list(ListRequest {
            prefix: "/o/".into(),
            revision: Some(future),
            ..ListRequest::default()
        })
        .await
    {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!(requested, future);
            assert_eq!(current, c1.mod_revision);
        }
        other => panic!("list at a future revision: expected FutureRevision, got {other:?}"),
    }
}

pub async fn list_at_compacted_revision_fails(harness: Harness) {
    let store = harness.store();
    assert_eq!(
        store
            .compacted_revision()
            .await
            .expect("compacted_revision"),
        0
    );
    let v1 = create(&store, "/c/a", "1").await;
    let v2 = update(&store, &v1, "2").await;
    let v3 = update(&store, &v2, "3").await;
    let b = create(&store, "/c/b", "b").await;

    store.compact(v3.mod_revision).await.expect("compact");
    assert_eq!(
        store
            .compacted_revision()
            .await
            .expect("compacted_revision"),
        v3.mod_revision
    );
    for old in [v1.mod_revision, v2.mod_revision] {
        match store
            .list(ListRequest {
                prefix: "/c/".into(),
                revision: Some(old),
                ..ListRequest::default()
            })
            .await
        {
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!(requested, old);
                assert_eq!(compacted, v3.mod_revision);
            }
            other => panic!("list at compacted {old}: expected Compacted, got {other:?}"),
        }
    }
    assert_eq!(
        list(&store, "/c/", Some(v3.mod_revision)).await.items,
        vec![v3.clone()]
    );
    assert_eq!(
        list(&store, "/c/", Some(b.mod_revision)).await.items,
        [v3.clone(), b.clone()]
    );

    // Compacting again at or below the compacted revision is a no-op; past the end fails.
    store
        .compact(v2.mod_revision)
        .await
        .expect("compact below the compacted revision");
    store
        .compact(v3.mod_revision)
        .await
        .expect("compact at the compacted revision");
    assert_eq!(
        store
            .compacted_revision()
            .await
            .expect("compacted_revision"),
        v3.mod_revision
    );
    match store.compact(b.mod_revision + 100).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => panic!("compact in the future: expected FutureRevision, got {other:?}"),
    }
}

pub async fn compaction_keeps_current_values(harness: Harness) {
    let store = harness.store();
    let mut latest = BTreeMap::new();
    for i in 0..20 {
        let key = format!("/k/{i:02}");
        let mut kv = create(&store, &key, "v0").await;
        for round in 1..=3 {
            kv = update(&store, &kv, &format!("v{round}")).await;
        }
        latest.insert(key, kv);
    }
    for i in 0..5 {
        let key = format!("/k/{i:02}");
        if let Some(kv) = latest.remove(&key) {
            delete(&store, &kv).await;
        }
    }
    let compacted = current(&store).await;
    store.compact(compacted).await.expect("compact");

    let expected: Vec<KeyValue> = latest.values().cloned().collect();
    assert_eq!(list(&store, "/k/", None).await.items, expected);
    assert_eq!(list(&store, "/k/", Some(compacted)).await.items, expected);
    for (key, kv) in &latest {
        assert_eq!(store.get(key).await.expect("get").as_ref(), Some(kv));
    }
    assert_eq!(store.get("/k/00").await.expect("get"), None);

    // Events after the compacted revision still carry values written before it.
    let mut stream = watch(&store, "/k/", compacted).await;
    let before = latest.get("/k/10").cloned().expect("key 10 is live");
    let after = update(&store, &before, "v4").await;
    let doomed = latest.get("/k/11").cloned().expect("key 11 is live");
    let gone = delete(&store, &doomed).await;
    let events = events_until(&mut stream, gone.mod_revision).await;
    assert_eq!(
        events,
        [
            Event {
                kind: EventKind::Update,
                kv: after,
                prev: Some(before)
            },
            Event {
                kind: EventKind::Delete,
                kv: gone,
                prev: Some(doomed)
            },
        ]
    );
    let recreated = create(&store, "/k/00", "again").await;
    assert_eq!(recreated.create_revision, recreated.mod_revision);
}
