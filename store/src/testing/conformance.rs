//! The conformance suite: the crate's guarantees, checked the same way on every backend.
//!
//! Each case takes a fresh [`Harness`] and panics on the first broken promise. Cases never
//! assume where revisions start (etcd's first write is revision 2), only how they move. Every
//! wait is bounded; [`run`] bounds the whole case.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Harness;
use crate::{
    DynStore, Event, EventKind, KeyValue, ListRequest, ListResponse, Revision, StoreError,
    WatchOptions, WatchResponse, WatchStream,
};

/// The most one case may take.
const CASE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most one wait for a watch response may take.
const WAIT: Duration = Duration::from_secs(10);
/// The progress interval of watches that are not about progress.
const INTERVAL: Duration = Duration::from_millis(200);

/// Runs one case with a bound on its duration.
pub async fn run(name: &str, case: impl Future<Output = ()>) {
    if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
        panic!("conformance case {name} did not finish within {CASE_TIMEOUT:?}");
    }
}

fn value(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn options(after: Revision) -> WatchOptions {
    WatchOptions {
        after,
        progress_interval: INTERVAL,
    }
}

fn keys(list: &ListResponse) -> Vec<&str> {
    list.items.iter().map(|kv| kv.key.as_str()).collect()
}

async fn list(store: &DynStore, prefix: &str, revision: Option<Revision>) -> ListResponse {
    let request = ListRequest {
        prefix: prefix.to_owned(),
        revision,
        ..ListRequest::default()
    };
    match store.list(request).await {
        Ok(list) => list,
        Err(error) => panic!("list {prefix:?} at {revision:?}: {error:?}"),
    }
}

async fn create(store: &DynStore, key: &str, text: &str) -> KeyValue {
    match store.create(key, value(text)).await {
        Ok(kv) => kv,
        Err(error) => panic!("create {key:?}: {error:?}"),
    }
}

async fn update(store: &DynStore, kv: &KeyValue, text: &str) -> KeyValue {
    match store.update(&kv.key, kv.mod_revision, value(text)).await {
        Ok(kv) => kv,
        Err(error) => panic!("update {:?}: {error:?}", kv.key),
    }
}

async fn delete(store: &DynStore, kv: &KeyValue) -> KeyValue {
    match store.delete(&kv.key, kv.mod_revision).await {
        Ok(kv) => kv,
        Err(error) => panic!("delete {:?}: {error:?}", kv.key),
    }
}

async fn current(store: &DynStore) -> Revision {
    match store.current_revision().await {
        Ok(revision) => revision,
        Err(error) => panic!("current_revision: {error:?}"),
    }
}

async fn watch(store: &DynStore, prefix: &str, after: Revision) -> WatchStream {
    match store.watch(prefix, options(after)).await {
        Ok(stream) => stream,
        Err(error) => panic!("watch {prefix:?} after {after}: {error:?}"),
    }
}

async fn next_response(stream: &mut WatchStream, wait: Duration) -> WatchResponse {
    match tokio::time::timeout(wait, stream.next()).await {
        Ok(Some(Ok(response))) => response,
        Ok(Some(Err(error))) => panic!("watch failed: {error:?}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch response within {wait:?}"),
    }
}

/// Reads responses until the progress reaches `revision`, checking that progress never goes
/// backwards and events come in revision order, never above the progress they come with.
async fn events_until(stream: &mut WatchStream, revision: Revision) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut events: Vec<Event> = Vec::new();
    let mut progress = Revision::MIN;
    while progress < revision {
        let wait = deadline.saturating_duration_since(Instant::now());
        let response = next_response(stream, wait).await;
        assert!(
            response.progress >= progress,
            "progress went backwards from {progress} to {}",
            response.progress
        );
        progress = response.progress;
        for event in response.events {
            if let Some(last) = events.last() {
                assert!(
                    event.revision() > last.revision(),
                    "event at {} came after one at {}",
                    event.revision(),
                    last.revision()
                );
            }
            assert!(
                event.revision() <= progress,
                "event at {} came with progress {progress}",
                event.revision()
            );
            events.push(event);
        }
    }
    events
}

fn assert_compacted<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Compacted { .. }) => {}
        other => panic!("{what}: expected Compacted, got {other:?}"),
    }
}

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
