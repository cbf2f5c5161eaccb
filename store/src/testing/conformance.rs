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

use super::harness::Harness;

mod lists;
mod watches;
mod writes;

use crate::{
    DynStore, Event, EventKind, KeyValue, ListRequest, ListResponse, Revision, StoreError,
    WatchOptions, WatchResponse, WatchStream,
};
pub use lists::*;
pub use watches::*;
pub use writes::*;

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
