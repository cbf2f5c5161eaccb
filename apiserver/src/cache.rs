//! The watch cache: one store watch per resource type, fanned out to every API watcher and
//! serving `resourceVersion=0` lists (kube-apiserver's cacher, in miniature).
//!
//! # Definitions
//!
//! - The cache is *at* revision R when its object map equals the store's state of this type at
//!   R. R advances with every store event and every store progress report.
//! - The *window* is (`window_start`, R]: every event of this type with a revision in it is in
//!   the event buffer. A watch may start after any revision in [`window_start`, R].
//!
//! # Invariants
//!
//! - Events in the buffer are in revision order and gap-free over the window.
//! - A watcher is never silently skipped past an event: if its position falls out of the
//!   window (buffer trimmed, store history compacted, cache re-listed) it gets `410 Expired`
//!   and must re-list, exactly as with Kubernetes.
//! - Each object is serialized once per revision ([`CachedObject::json`]); watchers share it.
//!
//! - The cache never goes on from a state it cannot vouch for. An event that arrives at or
//!   below a revision a progress report already gave (etcd before 3.4.24 / 3.5.8 may answer a
//!   progress request ahead of events still queued: `store/src/etcd/watch.rs`), or a stored
//!   object that does not decode, is logged as an error and the cache re-lists: watchers
//!   positioned in the old window get `410 Expired` and re-list too. Nothing is dropped
//!   silently. (A stored object that does not decode is left out of the list that follows,
//!   with an error naming its key: the cache then holds what the store holds that can be
//!   served.)
//! - A broken store watch resumes after the last *event* the cache applied, not after the last
//!   progress: if a progress report was ahead of an event, the resumed watch delivers that
//!   event and the rule above re-lists, instead of the event being lost between two streams.
//!
//! # Assumptions
//!
//! The store delivers every event after the cache's list revision exactly once and in order
//! (the `Store` watch guarantee); progress responses are how a quiet type keeps up with the
//! global revision, which is what bookmarks report. The invariants above hold even when an
//! old etcd breaks the order of progress and events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use corral_store::{DynStore, EventKind, ListRequest, Revision, StoreError, WatchOptions};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

use crate::object;
use crate::resource::ResourceType;

/// One object at one revision, with its serialized form.
#[derive(Debug)]
pub struct CachedObject {
    pub key: String,
    pub revision: Revision,
    pub value: Value,
    pub json: Bytes,
    /// Field-selector values already worked out for this object, by (version, field). Every
    /// watcher with a field selector asks for the same few: with 100 node-agents watching
    /// `spec.sled`, one JSONPath evaluation per watcher per event was 8% of the API server's
    /// CPU (`corral bench rack`).
    field_values: Mutex<Vec<(String, String, Option<String>)>>,
    /// A typed reading of `value`, made once by the first reader that asks
    /// ([`CachedObject::parsed`]): the RBAC kinds' bindings and rules, read on every
    /// authorization of every user outside `system:masters`.
    parsed: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

impl CachedObject {
    pub fn new(key: String, revision: Revision, mut value: Value) -> CachedObject {
        object::set_resource_version(&mut value, revision);
        let json = Bytes::from(serde_json::to_vec(&value).expect("a JSON value always serializes"));
        CachedObject {
            key,
            revision,
            value,
            json,
            field_values: Mutex::new(Vec::new()),
            parsed: std::sync::OnceLock::new(),
        }
    }

    /// `parse(value)`, computed once per cached object (an object's revisions are distinct
    /// cached objects, so a change is parsed anew). One type per object: asked for another,
    /// it parses without keeping the result.
    pub fn parsed<T: std::any::Any + Send + Sync>(&self, parse: impl Fn(&Value) -> T) -> Arc<T> {
        let kept = self
            .parsed
            .get_or_init(|| Arc::new(parse(&self.value)) as Arc<dyn std::any::Any + Send + Sync>);
        match kept.clone().downcast::<T>() {
            Ok(parsed) => parsed,
            Err(_) => Arc::new(parse(&self.value)),
        }
    }

    /// The value of selectable `field` at `version`, computed by `compute` the first time.
    pub fn field_value(
        &self,
        version: &str,
        field: &str,
        compute: impl FnOnce(&Value) -> Option<String>,
    ) -> Option<String> {
        let mut known = self
            .field_values
            .lock()
            .expect("field values lock poisoned");
        if let Some((_, _, value)) = known.iter().find(|(v, f, _)| v == version && f == field) {
            return value.clone();
        }
        let value = compute(&self.value);
        known.push((version.to_string(), field.to_string(), value.clone()));
        value
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct CacheEvent {
    pub kind: EventType,
    /// The new state; for a deletion, the last state with the deletion's revision.
    pub object: Arc<CachedObject>,
    /// The state before this event, for selector transitions.
    pub prev: Option<Arc<CachedObject>>,
    /// The watch line `{"type":KIND,"object":OBJECT}\n`, built once and shared by every
    /// watcher that receives this event as it is.
    pub line: Bytes,
}

impl CacheEvent {
    pub fn new(
        kind: EventType,
        object: Arc<CachedObject>,
        prev: Option<Arc<CachedObject>>,
    ) -> CacheEvent {
        let line = event_line(kind, &object.json);
        CacheEvent {
            kind,
            object,
            prev,
            line,
        }
    }

    pub fn revision(&self) -> Revision {
        self.object.revision
    }
}

/// `{"type":KIND,"object":OBJECT}\n` from an already serialized object.
pub fn event_line(kind: EventType, object_json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object_json.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object_json);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<CachedObject>>,
    events: VecDeque<Arc<CacheEvent>>,
    window_start: Revision,
    revision: Revision,
    /// The revision of the last event applied, or of the list: where a resumed store watch
    /// starts (see the invariants).
    last_event: Revision,
    /// False until the first list completes, and while re-listing.
    ready: bool,
}

/// Why the cache re-lists (see the invariants).
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error(
        "an event at revision {event} arrived after a progress report had reached {progress} \
         (the store's progress overtook its events)"
    )]
    Overtaken { event: Revision, progress: Revision },
    #[error("a stored object in the watch does not decode: {0}")]
    Undecodable(String),
}

/// What a watcher gets when it asks for the events after its position.
pub enum Since {
    /// The events after the position (possibly none), and the new position.
    Events(Vec<Arc<CacheEvent>>, Revision),
    /// The position is older than the window: the client must re-list.
    Expired {
        requested: Revision,
        oldest: Revision,
    },
}

pub struct Cacher {
    pub resource: Arc<ResourceType>,
    state: RwLock<State>,
    /// The cache's revision; changes whenever events arrive or progress is made.
    revision_tx: watch::Sender<Revision>,
    capacity: usize,
}

/// Tunables of every cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Events kept per resource type for watchers that resume from an older revision.
    pub capacity: usize,
    /// How often the store reports progress on a quiet type.
    pub progress_interval: Duration,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            capacity: 20_000,
            progress_interval: Duration::from_millis(500),
        }
    }
}

impl Cacher {
    pub fn new(resource: Arc<ResourceType>, config: &CacheConfig) -> Arc<Cacher> {
        let (revision_tx, _) = watch::channel(0);
        Arc::new(Cacher {
            resource,
            state: RwLock::new(State::default()),
            revision_tx,
            capacity: config.capacity,
        })
    }

    /// Keeps the cache in step with the store until the task is dropped.
    pub async fn run(self: Arc<Cacher>, store: DynStore, config: CacheConfig) {
        let prefix = self.resource.key_prefix();
        let mut backoff = Duration::from_millis(100);
        let mut need_list = true;
        loop {
            if need_list {
                match self.list(&store, &prefix).await {
                    Ok(()) => need_list = false,
                    Err(error) => {
                        tracing::warn!(resource = %self.resource.plural, %error, "cache list failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let after = self.state.read().expect("cache lock poisoned").last_event;
            let options = WatchOptions {
                after,
                progress_interval: config.progress_interval,
            };
            let mut stream = match store.watch(&prefix, options).await {
                Ok(stream) => stream,
                Err(error) => {
                    need_list = matches!(error, StoreError::Compacted { .. });
                    tracing::warn!(resource = %self.resource.plural, %error, "cache watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(response) => {
                        if let Err(broken) = self.apply(response) {
                            tracing::error!(
                                resource = %self.resource.plural,
                                %broken,
                                "the watch cache cannot vouch for its state; re-listing"
                            );
                            need_list = true;
                            break;
                        }
                    }
                    Err(error) => {
                        need_list = matches!(error, StoreError::Compacted { .. });
                        tracing::warn!(resource = %self.resource.plural, %error, "cache watch broke; resuming");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
        }
    }

    async fn list(&self, store: &DynStore, prefix: &str) -> Result<(), StoreError> {
        let mut objects = BTreeMap::new();
        let mut revision = None;
        let mut start = None;
        loop {
            let page = store
                .list(ListRequest {
                    prefix: prefix.to_string(),
                    revision,
                    start: start.clone(),
                    limit: Some(1000),
                })
                .await?;
            revision = Some(page.revision);
            for kv in &page.items {
                match object::decode(kv) {
                    Ok(stored) => {
                        objects.insert(
                            kv.key.clone(),
                            Arc::new(CachedObject::new(
                                kv.key.clone(),
                                kv.mod_revision,
                                stored.object,
                            )),
                        );
                    }
                    Err(error) => tracing::error!(
                        resource = %self.resource.plural,
                        %error,
                        "a stored object does not decode: it is left out of the cache"
                    ),
                }
            }
            match (page.more, page.items.last()) {
                (true, Some(last)) => start = Some(format!("{}\0", last.key)),
                _ => break,
            }
        }
        let revision = revision.unwrap_or(0);
        let resource = self.resource.plural.clone();
        metrics::counter!(crate::metrics::CACHE_RELISTS, "resource" => resource.clone())
            .increment(1);
        metrics::gauge!(crate::metrics::CACHE_OBJECTS, "resource" => resource.clone())
            .set(objects.len() as f64);
        // The resource's watcher count exists (at 0) from the first list on, not only once a
        // watch came: a series that appears late reads as missing to a scraper.
        metrics::gauge!(crate::metrics::WATCHERS, "resource" => resource).increment(0.0);
        {
            let mut state = self.state.write().expect("cache lock poisoned");
            // Everything a watcher may have been positioned at is gone from the window.
            state.objects = objects;
            state.events.clear();
            state.window_start = revision;
            state.revision = revision;
            state.last_event = revision;
            state.ready = true;
        }
        self.revision_tx.send_replace(revision);
        Ok(())
    }

    /// Applies one watch response, or says why the cache can no longer vouch for its state
    /// (see the invariants; the caller re-lists).
    fn apply(&self, response: corral_store::WatchResponse) -> Result<(), Broken> {
        // Decode and serialize outside the lock; readers only wait for the map updates.
        let decoded: Vec<(EventType, Arc<CachedObject>, Bytes)> = response
            .events
            .into_iter()
            .map(|event| {
                let stored = object::decode(&event.kv)
                    .map_err(|error| Broken::Undecodable(error.to_string()))?
                    .object;
                let kind = match event.kind {
                    EventKind::Create => EventType::Added,
                    EventKind::Update => EventType::Modified,
                    EventKind::Delete => EventType::Deleted,
                };
                let cached = Arc::new(CachedObject::new(
                    event.kv.key,
                    event.kv.mod_revision,
                    stored,
                ));
                let line = event_line(kind, &cached.json);
                Ok((kind, cached, line))
            })
            .collect::<Result<_, Broken>>()?;
        let mut state = self.state.write().expect("cache lock poisoned");
        let mut applied = 0u64;
        for (kind, cached, line) in decoded {
            let revision = cached.revision;
            if revision <= state.last_event {
                continue; // Already applied (the store promises no duplicates; belt and braces).
            }
            if revision <= state.revision {
                return Err(Broken::Overtaken {
                    event: revision,
                    progress: state.revision,
                });
            }
            let prev = if kind == EventType::Deleted {
                state.objects.remove(&cached.key)
            } else {
                state.objects.insert(cached.key.clone(), cached.clone())
            };
            state.events.push_back(Arc::new(CacheEvent {
                kind,
                object: cached,
                prev,
                line,
            }));
            state.revision = revision;
            state.last_event = revision;
            applied += 1;
            while state.events.len() > self.capacity {
                if let Some(dropped) = state.events.pop_front() {
                    state.window_start = dropped.revision();
                }
            }
        }
        if response.progress > state.revision {
            state.revision = response.progress;
        }
        let revision = state.revision;
        let objects = state.objects.len();
        drop(state);
        if applied > 0 {
            let resource = self.resource.plural.clone();
            metrics::counter!(crate::metrics::CACHE_EVENTS, "resource" => resource.clone())
                .increment(applied);
            metrics::gauge!(crate::metrics::CACHE_OBJECTS, "resource" => resource)
                .set(objects as f64);
        }
        self.revision_tx.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        Ok(())
    }

    /// Drops history at or below a compacted revision, so watchers from before it get 410
    /// from every API server alike.
    pub fn forget_before(&self, compacted: Revision) {
        let mut state = self.state.write().expect("cache lock poisoned");
        while state
            .events
            .front()
            .is_some_and(|e| e.revision() <= compacted)
        {
            state.events.pop_front();
        }
        if state.window_start < compacted {
            state.window_start = compacted.min(state.revision);
        }
    }

    pub fn revision(&self) -> Revision {
        self.state.read().expect("cache lock poisoned").revision
    }

    pub fn is_ready(&self) -> bool {
        self.state.read().expect("cache lock poisoned").ready
    }

    /// Waits until the cache is ready and at least at `revision`, for at most `timeout`.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.revision_tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_ready() && self.revision() >= revision {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.is_ready() && self.revision() >= revision,
            }
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision_tx.subscribe()
    }

    /// Every current object (in key order) and the revision they are at.
    pub fn snapshot(&self) -> (Vec<Arc<CachedObject>>, Revision) {
        let state = self.state.read().expect("cache lock poisoned");
        (state.objects.values().cloned().collect(), state.revision)
    }

    /// The current object under `key`, if the cache has it.
    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.state
            .read()
            .expect("cache lock poisoned")
            .objects
            .get(key)
            .cloned()
    }

    /// Current objects whose key starts with `prefix`, and the revision they are at.
    pub fn snapshot_prefix(&self, prefix: &str) -> (Vec<Arc<CachedObject>>, Revision) {
        let state = self.state.read().expect("cache lock poisoned");
        let objects = state
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (objects, state.revision)
    }

    /// The events after `position`, or `Expired` if they are no longer all known.
    pub fn since(&self, position: Revision) -> Since {
        let state = self.state.read().expect("cache lock poisoned");
        if position < state.window_start || !state.ready {
            return Since::Expired {
                requested: position,
                oldest: state.window_start,
            };
        }
        let first = state.events.partition_point(|e| e.revision() <= position);
        let events = state.events.range(first..).cloned().collect();
        Since::Events(events, state.revision.max(position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_store::{KeyValue, ListResponse, Store, WatchResponse, WatchStream};
    use futures::stream;

    /// A store whose watch behaves as etcd before 3.4.24 can: every response with events is
    /// preceded by a progress report that already names their revision.
    struct Overtaking {
        inner: DynStore,
        watches: std::sync::Mutex<Vec<Revision>>,
    }

    #[async_trait::async_trait]
    impl Store for Overtaking {
        fn backend(&self) -> &'static str {
            "overtaking"
        }
        async fn current_revision(&self) -> corral_store::Result<Revision> {
            self.inner.current_revision().await
        }
        async fn compacted_revision(&self) -> corral_store::Result<Revision> {
            self.inner.compacted_revision().await
        }
        async fn get(&self, key: &str) -> corral_store::Result<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn list(&self, request: ListRequest) -> corral_store::Result<ListResponse> {
            self.inner.list(request).await
        }
        async fn create(&self, key: &str, value: Bytes) -> corral_store::Result<KeyValue> {
            self.inner.create(key, value).await
        }
        async fn update(
            &self,
            key: &str,
            expected: Revision,
            value: Bytes,
        ) -> corral_store::Result<KeyValue> {
            self.inner.update(key, expected, value).await
        }
        async fn delete(&self, key: &str, expected: Revision) -> corral_store::Result<KeyValue> {
            self.inner.delete(key, expected).await
        }
        async fn watch(
            &self,
            prefix: &str,
            options: WatchOptions,
        ) -> corral_store::Result<WatchStream> {
            self.watches.lock().unwrap().push(options.after);
            let inner = self.inner.watch(prefix, options).await?;
            Ok(inner
                .flat_map(|item| {
                    let items = match item {
                        Ok(response) if !response.events.is_empty() => {
                            let ahead = WatchResponse {
                                events: Vec::new(),
                                progress: response.events.last().expect("events").revision(),
                            };
                            vec![Ok(ahead), Ok(response)]
                        }
                        other => vec![other],
                    };
                    stream::iter(items)
                })
                .boxed())
        }
        async fn compact(&self, revision: Revision) -> corral_store::Result<()> {
            self.inner.compact(revision).await
        }
    }

    fn namespace(name: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}}}}"#
        ))
    }

    /// Waits (bounded) until `check` holds of the cache.
    async fn eventually(cache: &Cacher, what: &str, check: impl Fn(&Cacher) -> bool) {
        let mut changed = cache.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check(cache) {
            let waited = tokio::time::timeout_at(deadline, changed.changed()).await;
            assert!(waited.is_ok(), "{what}: not within 10 s");
        }
    }

    #[test]
    fn a_cached_object_is_parsed_once_per_type_it_keeps() {
        let object = CachedObject::new("k".into(), 3, serde_json::json!({"n": 7}));
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let parse = |value: &Value| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            value["n"].as_i64()
        };
        assert_eq!(*object.parsed(parse), Some(7));
        assert_eq!(*object.parsed(parse), Some(7));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Another type is parsed, not kept, and does not displace the first.
        assert_eq!(*object.parsed(|value| value["n"].to_string()), "7");
        assert_eq!(*object.parsed(parse), Some(7));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn events_overtaken_by_progress_or_undecodable_make_the_cache_relist_not_diverge() {
        let dir = tempfile::tempdir().unwrap();
        let config: corral_store::StoreConfig =
            format!("sqlite:{}", dir.path().join("s.db").display())
                .parse()
                .unwrap();
        let inner = corral_store::open(&config).await.unwrap();
        let store = Arc::new(Overtaking {
            inner: inner.clone(),
            watches: Default::default(),
        });
        let registry = crate::resource::Registry::load(None).unwrap();
        let namespaces = registry.lookup("", "namespaces").unwrap().clone();
        let cache_config = CacheConfig {
            capacity: 100,
            progress_interval: Duration::from_millis(20),
        };
        let cache = Cacher::new(namespaces.clone(), &cache_config);
        let running = tokio::spawn(cache.clone().run(store.clone(), cache_config));
        assert!(cache.wait_for(0, Duration::from_secs(10)).await);
        let listed_at = cache.revision();

        // Overtaken: the event arrives after a progress report that named it.
        let key = namespaces.key(None, "a");
        inner.create(&key, namespace("a")).await.unwrap();
        eventually(&cache, "the overtaken object in the cache", |c| {
            c.get(&key).is_some()
        })
        .await;
        // A watcher positioned before the re-list must re-list too.
        assert!(matches!(cache.since(listed_at), Since::Expired { .. }));
        // The store watch after the re-list resumed after an event, never after a progress
        // report alone: every `after` is a revision the cache listed or applied.
        let watches = store.watches.lock().unwrap().clone();
        assert!(watches.len() >= 2, "{watches:?}");

        // Undecodable: left out, with the cache re-listed, and what comes after is served.
        let bad = namespaces.key(None, "bad");
        inner
            .create(&bad, Bytes::from_static(b"not json"))
            .await
            .unwrap();
        let good = namespaces.key(None, "c");
        inner.create(&good, namespace("c")).await.unwrap();
        eventually(&cache, "the object after the corrupt one", |c| {
            c.get(&good).is_some()
        })
        .await;
        assert!(cache.get(&bad).is_none());
        assert!(cache.get(&key).is_some());
        running.abort();
    }
}
