//! Watch streams (k8s-api.md §7): chunked HTTP, one compact JSON event per line, served from
//! the watch cache.
//!
//! # Guarantees
//!
//! - Events arrive in revision order, each once; selector transitions become ADDED/DELETED.
//! - A start revision the cache can no longer serve gives HTTP 200 and one in-stream
//!   `ERROR` event with a 410 `Expired` Status, then the end of the stream — never an HTTP
//!   410, which would make kube-rs retry the same revision forever.
//! - Bookmarks are sent only when asked for, and carry `kind` and `apiVersion`.
//! - The stream ends cleanly at `timeoutSeconds` (or a random 30–60 min), or when the server
//!   shuts down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use corral_store::Revision;
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::request::{Accept, ResourceRequest};
use super::table::{self, IncludeObject};
use crate::cache::{CacheEvent, Cacher, EventType, Since};
use crate::error::{ApiError, ApiResult, Reason};
use crate::filter::Filter;
use crate::object;

struct Watcher {
    request: Arc<ResourceRequest>,
    cache: Arc<Cacher>,
    filter: Filter,
    rx: tokio::sync::watch::Receiver<Revision>,
    position: Revision,
    accept: Accept,
    include: IncludeObject,
    columns_sent: bool,
    /// Whether cached JSON can be sent as is (the client asked for the storage version).
    storage_version: bool,
    bookmark_interval: Option<Duration>,
    next_bookmark: Instant,
    deadline: Instant,
    pending: VecDeque<Bytes>,
    done: bool,
}

pub async fn watch(request: ResourceRequest, accept: Accept) -> ApiResult<Response> {
    let query = &request.query;
    let filter = request.filter()?;
    let cache = request.server.cache(&request.resource).clone();
    let rv = query.string("resourceVersion");
    let send_initial = query.get("sendInitialEvents").is_some() && query.bool("sendInitialEvents");
    let rv_match = query.string("resourceVersionMatch");
    if send_initial && rv_match != Some("NotOlderThan") {
        return Err(ApiError::new(
            Reason::Invalid,
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if send_initial && !query.bool("allowWatchBookmarks") {
        return Err(ApiError::new(
            Reason::Invalid,
            "allowWatchBookmarks: Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    if rv_match.is_some() && !send_initial {
        return Err(ApiError::new(
            Reason::Invalid,
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let start: Option<Revision> =
        match rv {
            None | Some("0") => None,
            Some(text) => Some(text.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(|| {
                ApiError::bad_request(format!("invalid resource version: {text:?}"))
            })?),
        };
    if let Some(rv) = start {
        if !cache.wait_for(rv, Duration::from_secs(3)).await {
            return Err(ApiError::new(
                Reason::Timeout,
                format!(
                    "Too large resource version: {rv}, current: {}",
                    cache.revision()
                ),
            ));
        }
    } else if rv.is_none() {
        // "Start at most recent": the initial state is consistent, so the cache must first
        // catch up with the store's current revision.
        let current = request
            .server
            .store
            .current_revision()
            .await
            .map_err(|e| ApiError::from_store(e, &request.target()))?;
        if !cache.wait_for(current, Duration::from_secs(3)).await {
            return Err(ApiError::new(
                Reason::Timeout,
                format!("the watch cache did not reach the current revision {current} in time"),
            ));
        }
    } else {
        cache.wait_for(0, Duration::from_secs(3)).await;
    }
    let timeout = match query.int("timeoutSeconds")? {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
        _ => Duration::from_secs(rand::rng().random_range(1800..3600)),
    };
    let bookmark_interval = query
        .bool("allowWatchBookmarks")
        .then_some(request.server.config.bookmark_interval);
    let storage_version = request.version == request.resource.storage_version().name;
    let include = IncludeObject::from_query(query);
    let rx = cache.subscribe();
    let now = Instant::now();
    let mut watcher = Watcher {
        request: Arc::new(request),
        cache: cache.clone(),
        filter,
        rx,
        position: 0,
        accept,
        include,
        columns_sent: false,
        storage_version,
        bookmark_interval,
        next_bookmark: now + bookmark_interval.unwrap_or_default(),
        deadline: now + timeout,
        pending: VecDeque::new(),
        done: false,
    };
    match start {
        Some(rv) if !send_initial => watcher.position = rv,
        _ => {
            // Synthetic ADDED events for the current state, then changes after it.
            let (objects, revision) = cache.snapshot();
            for o in objects {
                if watcher.filter.matches_cached(&o) {
                    let frame = watcher.frame(EventType::Added, &o.value, Some(&o.json));
                    watcher.pending.push_back(frame);
                }
            }
            watcher.position = revision;
            if send_initial {
                let bookmark = watcher.bookmark_frame(true);
                watcher.pending.push_back(bookmark);
            }
        }
    }

    let shutdown = watcher.request.server.shutdown.clone();
    let stream = futures::stream::unfold(watcher, move |mut w| {
        let shutdown = shutdown.clone();
        async move {
            loop {
                if !w.pending.is_empty() {
                    // Send everything ready as one chunk (one write for the connection).
                    let chunk = if w.pending.len() == 1 {
                        w.pending.pop_front().unwrap_or_default()
                    } else {
                        let size = w.pending.iter().map(Bytes::len).sum();
                        let mut chunk = BytesMut::with_capacity(size);
                        while let Some(frame) = w.pending.pop_front() {
                            chunk.put(frame);
                        }
                        chunk.freeze()
                    };
                    return Some((Ok::<Bytes, std::io::Error>(chunk), w));
                }
                if w.done {
                    return None;
                }
                match w.cache.since(w.position) {
                    Since::Expired { requested, oldest } => {
                        w.pending.push_back(expired_frame(requested, oldest));
                        w.done = true;
                        continue;
                    }
                    Since::Events(events, position) => {
                        for event in &events {
                            if let Some(frame) = w.event_frame(event) {
                                w.pending.push_back(frame);
                            }
                        }
                        w.position = position;
                        if !w.pending.is_empty() {
                            continue;
                        }
                    }
                }
                let bookmark_at = w.bookmark_interval.map(|_| w.next_bookmark.min(w.deadline));
                tokio::select! {
                    changed = w.rx.changed() => {
                        if changed.is_err() {
                            w.done = true;
                        }
                    }
                    _ = tokio::time::sleep_until(bookmark_at.unwrap_or(w.deadline)), if bookmark_at.is_some() => {
                        let frame = w.bookmark_frame(false);
                        w.pending.push_back(frame);
                        w.next_bookmark = Instant::now() + w.bookmark_interval.unwrap_or_default();
                        if Instant::now() >= w.deadline {
                            w.done = true;
                        }
                    }
                    _ = tokio::time::sleep_until(w.deadline) => w.done = true,
                    _ = shutdown.cancelled() => w.done = true,
                }
            }
        }
    });
    let mut response = (StatusCode::OK, Body::from_stream(stream)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}

fn expired_frame(requested: Revision, oldest: Revision) -> Bytes {
    line(&json!({
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {requested} ({oldest})"),
            "reason": "Expired",
            "code": 410,
        }
    }))
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).expect("a JSON value always serializes");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

impl Watcher {
    /// The frame for one cache event, after selector transitions; `None` if this watcher does
    /// not see it.
    fn event_frame(&mut self, event: &CacheEvent) -> Option<Bytes> {
        let now_matches = self.filter.matches_cached(&event.object);
        let was_matching = event
            .prev
            .as_ref()
            .is_some_and(|p| self.filter.matches_cached(p));
        let kind = match event.kind {
            EventType::Deleted if now_matches => EventType::Deleted,
            EventType::Deleted => return None,
            EventType::Added | EventType::Modified => match (was_matching, now_matches) {
                (true, true) => EventType::Modified,
                (false, true) => EventType::Added,
                (true, false) => {
                    // It left the selection: its last matching state, at the new revision.
                    let mut last = event
                        .prev
                        .as_ref()
                        .map(|p| p.value.clone())
                        .unwrap_or_default();
                    object::set_resource_version(&mut last, event.revision());
                    return Some(self.frame(EventType::Deleted, &last, None));
                }
                (false, false) => return None,
            },
        };
        if kind == event.kind && self.accept == Accept::Json && self.storage_version {
            return Some(event.line.clone());
        }
        Some(self.frame(kind, &event.object.value, Some(&event.object.json)))
    }

    fn frame(&mut self, kind: EventType, object: &Value, json: Option<&Bytes>) -> Bytes {
        match self.accept {
            Accept::Json => match json.filter(|_| self.storage_version) {
                Some(json) => crate::cache::event_line(kind, json),
                None => line(
                    &json!({"type": kind.as_str(), "object": self.request.present(object.clone())}),
                ),
            },
            Accept::Table => {
                let version = self
                    .request
                    .resource
                    .version(&self.request.version)
                    .expect("version was checked");
                let row = table::row(version, &self.request.present(object.clone()), self.include);
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(json!(""));
                let with_columns = !self.columns_sent;
                self.columns_sent = true;
                let t = table::table(
                    version,
                    vec![row],
                    json!({"resourceVersion": rv}),
                    with_columns,
                );
                line(&json!({"type": kind.as_str(), "object": t}))
            }
        }
    }

    fn bookmark_frame(&self, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.position.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(&json!({
            "type": "BOOKMARK",
            "object": {
                "kind": self.request.resource.kind,
                "apiVersion": self.request.api_version(),
                "metadata": metadata,
            }
        }))
    }
}
