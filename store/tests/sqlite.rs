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
