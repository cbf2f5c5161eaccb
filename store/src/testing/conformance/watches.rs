//! Watches: order, previous values, prefixes, progress, compaction, concurrency.

use super::*;

pub async fn watch_delivers_history_in_order_with_previous_values(harness: Harness) {
    let store = harness.store();
    let base = current(&store).await;
    let a1 = create(&store, "/w/a", "a1").await;
    let a2 = update(&store, &a1, "a2").await;
    let b1 = create(&store, "/w/b", "b1").await;
    let a_gone = delete(&store, &a2).await;
    let a3 = create(&store, "/w/a", "a3").await;

    let mut stream = watch(&store, "/w/", base).await;
    let events = events_until(&mut stream, a3.mod_revision).await;
    let expected = vec![
        Event {
            kind: EventKind::Create,
            kv: a1.clone(),
            prev: None,
        },
        Event {
            kind: EventKind::Update,
            kv: a2.clone(),
            prev: Some(a1.clone()),
        },
        Event {
            kind: EventKind::Create,
            kv: b1.clone(),
            prev: None,
        },
        Event {
            kind: EventKind::Delete,
            kv: a_gone.clone(),
            prev: Some(a2.clone()),
        },
        Event {
            kind: EventKind::Create,
            kv: a3.clone(),
            prev: None,
        },
    ];
    assert_eq!(events, expected);

    // Later events keep coming on the same stream.
    let b2 = update(&store, &b1, "b2").await;
    let more = events_until(&mut stream, b2.mod_revision).await;
    assert_eq!(
        more,
        [Event {
            kind: EventKind::Update,
            kv: b2.clone(),
            prev: Some(b1.clone())
        }]
    );

    // A watch from the middle starts strictly after its revision.
    let mut middle = watch(&store, "/w/", a2.mod_revision).await;
    let tail = events_until(&mut middle, b2.mod_revision).await;
    assert_eq!(
        tail.iter().map(Event::revision).collect::<Vec<_>>(),
        [
            b1.mod_revision,
            a_gone.mod_revision,
            a3.mod_revision,
            b2.mod_revision
        ]
    );
}

pub async fn watch_from_current_sees_only_new_events(harness: Harness) {
    let store = harness.store();
    for i in 0..5 {
        create(&store, &format!("/n/{i}"), "old").await;
    }
    let now = current(&store).await;
    let mut stream = watch(&store, "/n/", now).await;
    let fresh = create(&store, "/n/new", "new").await;
    let events = events_until(&mut stream, fresh.mod_revision).await;
    assert_eq!(
        events,
        [Event {
            kind: EventKind::Create,
            kv: fresh,
            prev: None
        }]
    );
}

pub async fn watch_isolates_prefixes(harness: Harness) {
    let store = harness.store();
    let now = current(&store).await;
    let mut stream = watch(&store, "/w1/", now).await;
    let a = create(&store, "/w1/a", "a").await;
    create(&store, "/w2/b", "b").await;
    create(&store, "/w1x/c", "c").await;
    create(&store, "/w1", "d").await;
    let e = create(&store, "/w1/e", "e").await;
    let events = events_until(&mut stream, e.mod_revision).await;
    let keys: Vec<&str> = events.iter().map(|event| event.kv.key.as_str()).collect();
    assert_eq!(keys, ["/w1/a", "/w1/e"]);
    assert_eq!(events[0].kv, a);
}

pub async fn watch_reports_progress_when_idle(harness: Harness) {
    let store = harness.store();
    let interval = Duration::from_millis(400);
    let slack = Duration::from_millis(600);
    let now = current(&store).await;
    let mut stream = store
        .watch(
            "/idle/",
            WatchOptions {
                after: now,
                progress_interval: interval,
            },
        )
        .await
        .expect("watch");
    let mut progress = Revision::MIN;
    let mut since = Instant::now();
    for _ in 0..4 {
        let response = next_response(&mut stream, interval + slack).await;
        let gap = since.elapsed();
        assert!(
            gap <= interval + slack,
            "{gap:?} between responses of an idle watch"
        );
        assert!(response.events.is_empty());
        assert!(response.progress >= progress, "progress went backwards");
        assert!(response.progress >= now, "progress below the watch's start");
        progress = response.progress;
        since = Instant::now();
    }
    // A write elsewhere is no event here, but progress passes it.
    let elsewhere = create(&store, "/busy/x", "x").await;
    let deadline = Instant::now() + WAIT;
    while progress < elsewhere.mod_revision {
        let response = next_response(
            &mut stream,
            deadline.saturating_duration_since(Instant::now()),
        )
        .await;
        assert!(response.events.is_empty(), "an event from another prefix");
        assert!(response.progress >= progress, "progress went backwards");
        progress = response.progress;
    }
}

pub async fn watch_from_compacted_revision_fails(harness: Harness) {
    let store = harness.store();
    let v1 = create(&store, "/wc/a", "1").await;
    let v2 = update(&store, &v1, "2").await;
    let v3 = update(&store, &v2, "3").await;
    store.compact(v3.mod_revision).await.expect("compact");

    match store.watch("/wc/", options(v1.mod_revision)).await {
        Err(error) => assert_compacted::<()>(Err(error), "watch from a compacted revision"),
        Ok(mut stream) => match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(result)) => assert_compacted(result, "watch from a compacted revision"),
            other => panic!("watch from a compacted revision: expected Compacted, got {other:?}"),
        },
    }

    // From the compacted revision on, history is whole, previous values included.
    let mut stream = watch(&store, "/wc/", v3.mod_revision).await;
    let v4 = update(&store, &v3, "4").await;
    let events = events_until(&mut stream, v4.mod_revision).await;
    assert_eq!(
        events,
        [Event {
            kind: EventKind::Update,
            kv: v4,
            prev: Some(v3)
        }]
    );
}

pub async fn concurrent_creates_are_distinct_and_watched_once(harness: Harness) {
    const KEYS: usize = 500;
    const TASKS: usize = 64;
    let store = harness.store();
    let start = current(&store).await;
    let mut stream = watch(&store, "/cc/", start).await;
    let mut tasks = JoinSet::new();
    let value = Bytes::from(vec![b'v'; 1024]);
    for task in 0..TASKS {
        let (store, value) = (Arc::clone(&store), value.clone());
        tasks.spawn(async move {
            let mut created = Vec::new();
            for i in (task..KEYS).step_by(TASKS) {
                let key = format!("/cc/{i:04}");
                match store.create(&key, value.clone()).await {
                    Ok(kv) => created.push(kv),
                    Err(error) => panic!("concurrent create {key}: {error:?}"),
                }
            }
            created
        });
    }
    let mut created = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        created.extend(joined.expect("a create task panicked"));
    }
    assert_eq!(created.len(), KEYS);
    let revisions: HashSet<Revision> = created.iter().map(|kv| kv.mod_revision).collect();
    assert_eq!(revisions.len(), KEYS, "two creates shared a revision");
    let highest = revisions.iter().copied().max().unwrap_or(start);
    assert!(revisions.iter().all(|&r| r > start));

    let events = events_until(&mut stream, highest).await;
    assert_eq!(events.len(), KEYS, "the watch saw each create exactly once");
    let mut by_revision: BTreeMap<Revision, &KeyValue> =
        created.iter().map(|kv| (kv.mod_revision, kv)).collect();
    for event in &events {
        assert_eq!(event.kind, EventKind::Create);
        assert_eq!(by_revision.remove(&event.revision()), Some(&event.kv));
    }
    let listed = list(&store, "/cc/", None).await;
    assert_eq!(listed.count, KEYS as u64);
}
