//! Behaviour particular to the SQLite backend (the shared guarantees are in `conformance`).

use std::time::Duration;

use bytes::Bytes;
use corral_store::sqlite::{SqliteOptions, SqliteStore};
use corral_store::{Event, ListRequest, Revision, Store, StoreError, WatchOptions, WatchStream};
use futures::StreamExt;

async fn events_after(store: &SqliteStore, after: Revision, until: Revision) -> Vec<Event> {
    let options = WatchOptions {
        after,
        progress_interval: Duration::from_millis(100),
    };
    let mut stream: WatchStream = store.watch("/", options).await.expect("watch");
    let mut events = Vec::new();
    let mut progress = after;
    while progress < until {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a watch response in time")
            .expect("the watch is open")
            .expect("a watch response");
        progress = response.progress;
        events.extend(response.events);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_file_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("locked.sqlite");
    let first = SqliteStore::open(&path).await.expect("first open");
    first
        .create("/k", Bytes::from_static(b"v"))
        .await
        .expect("create");
    let options = SqliteOptions {
        lock_timeout: Duration::from_millis(200),
        ..SqliteOptions::default()
    };
    match SqliteStore::open_with(&path, options).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("second open: expected Unavailable, got {other:?}"),
        Ok(_) => panic!("second open: expected Unavailable, got a store"),
    }
    drop(first);
    // Once the first store is gone, its writer lets go of the lock.
    let second = SqliteStore::open(&path)
        .await
        .expect("open after the first closed");
    assert!(second.get("/k").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_in_many_chunks_keeps_every_revision_above_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions {
        compaction_chunk: 3,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&dir.path().join("chunks.sqlite"), options)
        .await
        .expect("open");
    let mut live = Vec::new();
    for i in 0..10 {
        let mut kv = store
            .create(&format!("/c/{i}"), Bytes::from(format!("{i}.0")))
            .await
            .expect("create");
        for round in 1..5 {
            kv = store
                .update(
                    &kv.key,
                    kv.mod_revision,
                    Bytes::from(format!("{i}.{round}")),
                )
                .await
                .expect("update");
        }
        live.push(kv);
    }
    for kv in live.iter().step_by(3) {
        store
            .delete(&kv.key, kv.mod_revision)
            .await
            .expect("delete");
    }
    let middle = store.current_revision().await.expect("current");
    for kv in live.iter().skip(1).step_by(3) {
        store
            .update(&kv.key, kv.mod_revision, Bytes::from_static(b"late"))
            .await
            .expect("update");
    }
    let end = store.current_revision().await.expect("current");

    let list_at = |revision| ListRequest {
        prefix: "/c/".into(),
        revision: Some(revision),
        ..ListRequest::default()
    };
    let mut before = Vec::new();
    for revision in middle..=end {
        before.push(store.list(list_at(revision)).await.expect("list").items);
    }
    let history = events_after(&store, middle, end).await;

    store.compact(middle).await.expect("compact");
    assert_eq!(store.compacted_revision().await.expect("compacted"), middle);
    for (revision, items) in (middle..=end).zip(&before) {
        assert_eq!(
            &store.list(list_at(revision)).await.expect("list").items,
            items,
            "at {revision}"
        );
    }
    assert_eq!(events_after(&store, middle, end).await, history);
    match store.list(list_at(middle - 1)).await {
        Err(StoreError::Compacted { .. }) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Compacting everything leaves the current values.
    store.compact(end).await.expect("compact at the end");
    assert_eq!(
        store.list(list_at(end)).await.expect("list").items,
        before[before.len() - 1]
    );
    assert_eq!(store.current_revision().await.expect("current"), end);
}

/// Watches of several prefixes share the store's tail. One reads as the writes happen (it
/// takes the tail's batches); two read nothing until more commits happened than the tail
/// keeps for a receiver (they lag and must read the log themselves). Each watch gets exactly
/// its prefix's events, once each, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_sharing_the_tail_miss_nothing_even_when_they_fall_behind() {
    // More commits than the tail holds for a receiver (each create is its own commit here:
    // one at a time), alternating between two prefixes.
    const WRITES: usize = 1500;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("tail.sqlite"))
        .await
        .expect("open");
    let start = store.current_revision().await.expect("revision");
    let options = || WatchOptions {
        after: start,
        progress_interval: Duration::from_millis(50),
    };
    let prefix_of = |revision: Revision| {
        if (revision - start - 1) % 2 == 0 {
            "/a/"
        } else {
            "/b/"
        }
    };
    let all = store.watch("/", options()).await.expect("watch");
    let following = tokio::spawn(async move {
        let mut all = all;
        revisions_of(&mut all, "/", WRITES, false).await
    });
    let mut lagging = [
        ("/a/", store.watch("/a/", options()).await.expect("watch")),
        ("/b/", store.watch("/b/", options()).await.expect("watch")),
    ];
    // One (empty) response each: they have caught up and follow the tail from now on.
    for (_, stream) in &mut lagging {
        assert_eq!(
            revisions_of(stream, "/", 0, true).await,
            Vec::<Revision>::new()
        );
    }
    for i in 0..WRITES {
        let revision = start + 1 + i as Revision;
        store
            .create(
                &format!("{}{i:05}", prefix_of(revision)),
                Bytes::from(format!("v{i}")),
            )
            .await
            .expect("create");
    }
    let last = start + WRITES as Revision;
    assert_eq!(
        following.await.expect("the following watch"),
        (start + 1..=last).collect::<Vec<_>>(),
        "the events of /"
    );
    for (prefix, mut stream) in lagging {
        let expected: Vec<Revision> = (start + 1..=last)
            .filter(|revision| prefix_of(*revision) == prefix)
            .collect();
        assert_eq!(
            revisions_of(&mut stream, prefix, expected.len(), false).await,
            expected,
            "the events of {prefix}"
        );
    }
}

/// The revisions of the first `count` events of `stream`, each checked to be under `prefix`;
/// with `once`, of its next response only.
async fn revisions_of(
    stream: &mut WatchStream,
    prefix: &'static str,
    count: usize,
    once: bool,
) -> Vec<Revision> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut revisions = Vec::new();
    let mut responses = 0;
    while revisions.len() < count || (once && responses == 0) {
        responses += 1;
        let response = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{prefix}: {} of {count} events within 20 s",
                    revisions.len()
                )
            })
            .expect("the watch is open")
            .expect("a watch response");
        for event in response.events {
            assert!(
                event.kv.key.starts_with(prefix),
                "{prefix} got {}",
                event.kv.key
            );
            revisions.push(event.revision());
        }
    }
    revisions
}
