//! Conditional writes, revisions, and data surviving a reopen.

use super::*;

pub async fn create_then_get(harness: Harness) {
    let store = harness.store();
    assert_eq!(store.get("/a/x").await.expect("get"), None);
    let kv = create(&store, "/a/x", "one").await;
    assert_eq!(kv.key, "/a/x");
    assert_eq!(kv.value, value("one"));
    assert!(kv.mod_revision > 0);
    assert_eq!(kv.create_revision, kv.mod_revision);
    assert_eq!(store.get("/a/x").await.expect("get"), Some(kv.clone()));
    assert_eq!(current(&store).await, kv.mod_revision);
    assert_eq!(store.get("/a/y").await.expect("get"), None);
    assert_eq!(store.get("/a/").await.expect("get"), None);
}

pub async fn create_existing_key_fails_with_current(harness: Harness) {
    let store = harness.store();
    let first = create(&store, "/a/x", "one").await;
    match store.create("/a/x", value("two")).await {
        Err(StoreError::AlreadyExists { key, current }) => {
            assert_eq!(key, "/a/x");
            assert_eq!(current, first);
        }
        other => panic!("second create: expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get("/a/x").await.expect("get"), Some(first.clone()));
    assert_eq!(
        current(&store).await,
        first.mod_revision,
        "a failed create moved the revision"
    );
}

pub async fn update_requires_current_revision(harness: Harness) {
    let store = harness.store();
    let first = create(&store, "/a/x", "one").await;
    match store
        .update("/a/x", first.mod_revision + 100, value("bad"))
        .await
    {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/a/x");
            assert_eq!(expected, first.mod_revision + 100);
            assert_eq!(current, Some(first.clone()));
        }
        other => panic!("update with a wrong revision: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        current(&store).await,
        first.mod_revision,
        "a failed update moved the revision"
    );

    let second = update(&store, &first, "two").await;
    assert_eq!(second.value, value("two"));
    assert_eq!(second.create_revision, first.create_revision);
    assert!(second.mod_revision > first.mod_revision);
    assert_eq!(store.get("/a/x").await.expect("get"), Some(second.clone()));

    match store
        .update("/a/x", first.mod_revision, value("stale"))
        .await
    {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, Some(second.clone())),
        other => panic!("update with a stale revision: expected Conflict, got {other:?}"),
    }
    match store.update("/a/x", 0, value("zero")).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, Some(second.clone())),
        other => panic!("update with revision 0: expected Conflict, got {other:?}"),
    }
    match store.update("/a/missing", 0, value("x")).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/a/missing"),
        other => panic!("update of a missing key: expected NotFound, got {other:?}"),
    }
    match store
        .update("/a/missing", second.mod_revision, value("x"))
        .await
    {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("update of a missing key: expected NotFound, got {other:?}"),
    }
    assert_eq!(store.get("/a/missing").await.expect("get"), None);
}

pub async fn delete_requires_current_revision(harness: Harness) {
    let store = harness.store();
    let first = create(&store, "/a/x", "one").await;
    match store.delete("/a/x", first.mod_revision + 1).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, Some(first.clone())),
        other => panic!("delete with a wrong revision: expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get("/a/x").await.expect("get"), Some(first.clone()));

    let deleted = delete(&store, &first).await;
    assert_eq!(deleted.key, "/a/x");
    assert_eq!(deleted.value, value("one"), "delete returns the last value");
    assert_eq!(deleted.create_revision, first.create_revision);
    assert!(
        deleted.mod_revision > first.mod_revision,
        "delete returns its own revision"
    );
    assert_eq!(current(&store).await, deleted.mod_revision);
    assert_eq!(store.get("/a/x").await.expect("get"), None);

    match store.delete("/a/x", deleted.mod_revision).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("delete of a deleted key: expected NotFound, got {other:?}"),
    }
    let again = create(&store, "/a/x", "again").await;
    assert!(
        again.create_revision > deleted.mod_revision,
        "a re-created key starts anew"
    );
    assert_eq!(again.create_revision, again.mod_revision);
}

pub async fn racing_updates_have_one_winner(harness: Harness) {
    const RACERS: usize = 32;
    let store = harness.store();
    let original = create(&store, "/race/x", "original").await;
    let mut racers = JoinSet::new();
    for racer in 0..RACERS {
        let store = Arc::clone(&store);
        let expected = original.mod_revision;
        racers.spawn(async move {
            store
                .update("/race/x", expected, value(&format!("racer {racer}")))
                .await
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = racers.join_next().await {
        match joined.expect("a racer panicked") {
            Ok(kv) => winners.push(kv),
            Err(StoreError::Conflict { current, .. }) => losers.push(current),
            Err(error) => panic!("racing update: {error:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one conditional update wins");
    let winner = winners.remove(0);
    for current in losers {
        assert_eq!(
            current.as_ref(),
            Some(&winner),
            "a loser hears the winner's value"
        );
    }
    assert_eq!(
        store.get("/race/x").await.expect("get"),
        Some(winner.clone())
    );
    assert_eq!(current(&store).await, winner.mod_revision);
}

pub async fn revisions_increase_globally(harness: Harness) {
    let store = harness.store();
    let mut last = current(&store).await;
    let mut step = |kv: &KeyValue| {
        assert_eq!(
            kv.mod_revision,
            last + 1,
            "each write takes the next revision, for any key"
        );
        last = kv.mod_revision;
    };
    let a = create(&store, "/r/a", "1").await;
    step(&a);
    let b = create(&store, "/r/b", "1").await;
    step(&b);
    let a2 = update(&store, &a, "2").await;
    step(&a2);
    // Failed writes take no revision.
    assert!(store.create("/r/b", value("x")).await.is_err());
    assert!(
        store
            .update("/r/a", a.mod_revision, value("x"))
            .await
            .is_err()
    );
    let c = create(&store, "/other/c", "1").await;
    step(&c);
    let b_deleted = delete(&store, &b).await;
    step(&b_deleted);
    let b_again = create(&store, "/r/b", "2").await;
    step(&b_again);
    assert_eq!(current(&store).await, b_again.mod_revision);
}

pub async fn reopen_keeps_data_and_history(mut harness: Harness) {
    let store = harness.store();
    let base = current(&store).await;
    let a1 = create(&store, "/re/a", "a1").await;
    let a2 = update(&store, &a1, "a2").await;
    let b1 = create(&store, "/re/b", "b1").await;
    let b_gone = delete(&store, &b1).await;
    drop(store);

    let store = harness.reopen().await.expect("reopen");
    assert_eq!(current(&store).await, b_gone.mod_revision);
    assert_eq!(store.get("/re/a").await.expect("get"), Some(a2.clone()));
    assert_eq!(store.get("/re/b").await.expect("get"), None);
    assert_eq!(
        list(&store, "/re/", Some(b1.mod_revision)).await.items,
        [a2.clone(), b1.clone()]
    );

    let mut stream = watch(&store, "/re/", base).await;
    let events = events_until(&mut stream, b_gone.mod_revision).await;
    assert_eq!(
        events,
        [
            Event {
                kind: EventKind::Create,
                kv: a1.clone(),
                prev: None
            },
            Event {
                kind: EventKind::Update,
                kv: a2.clone(),
                prev: Some(a1)
            },
            Event {
                kind: EventKind::Create,
                kv: b1.clone(),
                prev: None
            },
            Event {
                kind: EventKind::Delete,
                kv: b_gone.clone(),
                prev: Some(b1)
            },
        ]
    );
    let a3 = update(&store, &a2, "a3").await;
    assert_eq!(
        a3.mod_revision,
        b_gone.mod_revision + 1,
        "revisions continue after a reopen"
    );
    let next = events_until(&mut stream, a3.mod_revision).await;
    assert_eq!(
        next,
        [Event {
            kind: EventKind::Update,
            kv: a3,
            prev: Some(a2)
        }]
    );
}
