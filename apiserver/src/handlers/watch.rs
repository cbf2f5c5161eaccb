//! Watch streams (k8s-api.md §7): chunked HTTP, one compact JSON event per line, served from
//! the watch cache.
//!
//! A watch is served in steps: its start is read from the query ([`Start`]), the cache is
//! waited for until it can serve that start, the [`Watcher`] is built with the initial state
//! it owes, and then each chunk of the response is the frames ready since the last one
//! ([`Watcher::next_chunk`]).
//!
//! # Guarantees
//!
//! - Events arrive in revision order, each once; selector transitions become ADDED/DELETED.
//! - A start revision the cache can no longer serve gives HTTP 200 and one in-stream
//!   `ERROR` event with a 410 `Expired` Status, then the end of the stream — never an HTTP
//!   410, which would make kube-rs retry the same revision forever.
//! - Bookmarks are sent only when asked for, and carry `kind` and `apiVersion`.
//! - The stream ends cleanly at `timeoutSeconds` — at most twice `Config::min_request_timeout`
//!   (1 h by default) — or, without one, after a random time between the minimum request
//!   timeout and twice it (30–60 min), or when the server shuts down. No client number can
//!   overflow a deadline.

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
use tokio_util::sync::CancellationToken;

use super::request::{Accept, ResourceRequest};
use super::table::{self, IncludeObject};
use crate::cache::{CacheEvent, Cacher, EventType, Since};
use crate::error::{ApiError, ApiResult, Reason};
use crate::filter::Filter;
use crate::object;
use crate::query::Query;

/// How long a watch waits for the cache to reach the revision it starts from.
const CACHE_WAIT: Duration = Duration::from_secs(3);

pub async fn watch(request: ResourceRequest, accept: Accept) -> ApiResult<Response> {
    let filter = request.filter()?;
    let cache = request.server.cache(&request.resource).clone();
    let start = Start::from_query(&request.query)?;
    wait_for_start(&request, &cache, start.at).await?;
    let timeout = timeout(&request.query, request.server.config.min_request_timeout)?;
    let mut watcher = Watcher::new(request, accept, cache, filter, timeout);
    watcher.begin(&start);
    let stream = futures::stream::unfold(watcher, |mut watcher| async move {
        let chunk = watcher.next_chunk().await?;
        Some((Ok::<Bytes, std::io::Error>(chunk), watcher))
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

/// Which revision a watch starts from (`resourceVersion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartAt {
    /// Unset: the current state, consistent with the store (synthetic ADDED events), then
    /// every change after it.
    MostRecent,
    /// `0`: whatever state the cache holds, then every change after it.
    Any,
    /// Every change after this revision.
    After(Revision),
}

/// Where a watch starts and whether it owes the initial state first.
struct Start {
    at: StartAt,
    /// `sendInitialEvents`: the state at the start as ADDED events, then a bookmark marking
    /// their end, even with a resourceVersion.
    send_initial_events: bool,
}

impl Start {
    /// Reads and checks `resourceVersion`, `resourceVersionMatch` and `sendInitialEvents`.
    fn from_query(query: &Query) -> ApiResult<Start> {
        let send_initial_events =
            query.get("sendInitialEvents").is_some() && query.bool("sendInitialEvents");
        let rv_match = query.string("resourceVersionMatch");
        if send_initial_events && rv_match != Some("NotOlderThan") {
            return Err(ApiError::new(
                Reason::Invalid,
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if send_initial_events && !query.bool("allowWatchBookmarks") {
            return Err(ApiError::new(
                Reason::Invalid,
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
            ));
        }
        if rv_match.is_some() && !send_initial_events {
            return Err(ApiError::new(
                Reason::Invalid,
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        let at = match query.string("resourceVersion") {
            None => StartAt::MostRecent,
            Some("0") => StartAt::Any,
            Some(text) => {
                StartAt::After(text.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid resource version: {text:?}"))
                })?)
            }
        };
        Ok(Start {
            at,
            send_initial_events,
        })
    }
}

/// Waits until the cache can serve `at`: has reached the revision named, or (for the most
/// recent state) the store's current revision.
async fn wait_for_start(request: &ResourceRequest, cache: &Cacher, at: StartAt) -> ApiResult<()> {
    match at {
        StartAt::After(rv) => {
            if !cache.wait_for(rv, CACHE_WAIT).await {
                return Err(ApiError::new(
                    Reason::Timeout,
                    format!(
                        "Too large resource version: {rv}, current: {}",
                        cache.revision()
                    ),
                ));
            }
        }
        StartAt::MostRecent => {
            // "Start at most recent": the initial state is consistent, so the cache must first
            // catch up with the store's current revision.
            let current = request
                .server
                .store
                .current_revision()
                .await
                .map_err(|e| ApiError::from_store(e, &request.target()))?;
            if !cache.wait_for(current, CACHE_WAIT).await {
                return Err(ApiError::new(
                    Reason::Timeout,
                    format!("the watch cache did not reach the current revision {current} in time"),
                ));
            }
        }
        StartAt::Any => {
            cache.wait_for(0, CACHE_WAIT).await;
        }
    }
    Ok(())
}

/// How long a watch lasts: a positive `timeoutSeconds`, at most twice `min_request_timeout`
/// (the longest watch the server itself would choose); without one (or with 0 or less), a
/// random time between `min_request_timeout` and twice it, so that watches do not all end at
/// once — Kubernetes' `--min-request-timeout` rule.
fn timeout(query: &Query, min_request_timeout: Duration) -> ApiResult<Duration> {
    let shortest = min_request_timeout.as_secs().max(1);
    let longest = shortest.saturating_mul(2);
    Ok(match query.int("timeoutSeconds")? {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds.unsigned_abs().min(longest)),
        _ => Duration::from_secs(rand::rng().random_range(shortest..=longest)),
    })
}

/// `now + after`, or a time too far off to come if that is past what an `Instant` holds.
fn later(now: Instant, after: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(after)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// One open watch: its position in the cache's event history and the frames not yet sent.
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
    shutdown: CancellationToken,
    /// `apiserver_registered_watchers` of its resource, counting this watch while it lives.
    registered: metrics::Gauge,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.registered.decrement(1.0);
    }
}

impl Watcher {
    fn new(
        request: ResourceRequest,
        accept: Accept,
        cache: Arc<Cacher>,
        filter: Filter,
        timeout: Duration,
    ) -> Watcher {
        let bookmark_interval = request
            .query
            .bool("allowWatchBookmarks")
            .then_some(request.server.config.bookmark_interval);
        let storage_version = request.version == request.resource.storage_version().name;
        let include = IncludeObject::from_query(&request.query);
        let shutdown = request.server.shutdown.clone();
        let rx = cache.subscribe();
        let now = Instant::now();
        let registered = metrics::gauge!(
            crate::metrics::WATCHERS,
            "resource" => request.resource.plural.clone()
        );
        registered.increment(1.0);
        Watcher {
            request: Arc::new(request),
            cache,
            filter,
            rx,
            position: 0,
            accept,
            include,
            columns_sent: false,
            storage_version,
            bookmark_interval,
            next_bookmark: later(now, bookmark_interval.unwrap_or_default()),
            deadline: later(now, timeout),
            pending: VecDeque::new(),
            done: false,
            shutdown,
            registered,
        }
    }

    /// Sets the position the watch starts from and queues the initial state it owes.
    fn begin(&mut self, start: &Start) {
        match start.at {
            StartAt::After(rv) if !start.send_initial_events => self.position = rv,
            _ => {
                // Synthetic ADDED events for the current state, then changes after it.
                let (objects, revision) = self.cache.snapshot();
                for o in objects {
                    if self.filter.matches_cached(&o) {
                        let frame = self.frame(EventType::Added, &o.value, Some(&o.json));
                        self.pending.push_back(frame);
                    }
                }
                self.position = revision;
                if start.send_initial_events {
                    let bookmark = self.bookmark_frame(true);
                    self.pending.push_back(bookmark);
                }
            }
        }
    }

    /// The next chunk of the response: every frame ready, or `None` once the watch ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if !self.pending.is_empty() {
                return Some(self.take_pending());
            }
            if self.done {
                return None;
            }
            if self.catch_up() {
                continue;
            }
            self.wait().await;
        }
    }

    /// Everything ready as one chunk (one write for the connection).
    fn take_pending(&mut self) -> Bytes {
        if self.pending.len() == 1 {
            return self.pending.pop_front().unwrap_or_default();
        }
        let size = self.pending.iter().map(Bytes::len).sum();
        let mut chunk = BytesMut::with_capacity(size);
        while let Some(frame) = self.pending.pop_front() {
            chunk.put(frame);
        }
        chunk.freeze()
    }

    /// Queues the frames of the cache's events past the position (or the expiry, if the cache
    /// no longer has them); true if there is something to send or the watch ended.
    fn catch_up(&mut self) -> bool {
        match self.cache.since(self.position) {
            Since::Expired { requested, oldest } => {
                self.pending.push_back(expired_frame(requested, oldest));
                self.done = true;
                true
            }
            Since::Events(events, position) => {
                for event in &events {
                    if let Some(frame) = self.event_frame(event) {
                        self.pending.push_back(frame);
                    }
                }
                self.position = position;
                !self.pending.is_empty()
            }
        }
    }

    /// Waits for the cache to move, a bookmark to fall due, the deadline, or shutdown.
    async fn wait(&mut self) {
        let bookmark_at = self
            .bookmark_interval
            .map(|_| self.next_bookmark.min(self.deadline));
        tokio::select! {
            changed = self.rx.changed() => {
                if changed.is_err() {
                    self.done = true;
                }
            }
            _ = tokio::time::sleep_until(bookmark_at.unwrap_or(self.deadline)), if bookmark_at.is_some() => {
                let frame = self.bookmark_frame(false);
                self.pending.push_back(frame);
                self.next_bookmark = later(Instant::now(), self.bookmark_interval.unwrap_or_default());
                if Instant::now() >= self.deadline {
                    self.done = true;
                }
            }
            _ = tokio::time::sleep_until(self.deadline) => self.done = true,
            _ = self.shutdown.cancelled() => self.done = true,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_timeouts_are_clamped_and_never_overflow() {
        let min = Duration::from_secs(1800);
        let timeout = |query: &str| timeout(&Query::parse(Some(query)), min);
        let secs = |query: &str| timeout(query).map(|t| t.as_secs()).ok();
        assert_eq!(secs("timeoutSeconds=290"), Some(290));
        assert_eq!(secs("timeoutSeconds=3600"), Some(3600));
        assert_eq!(secs("timeoutSeconds=3601"), Some(3600));
        assert_eq!(secs("timeoutSeconds=9223372036854775807"), Some(3600));
        assert_eq!(secs("timeoutSeconds=99999999999999999999"), None);
        for query in [
            "",
            "timeoutSeconds=0",
            "timeoutSeconds=-9223372036854775808",
        ] {
            let chosen = secs(query).expect("a timeout");
            assert!((1800..=3600).contains(&chosen), "{query}: {chosen}");
        }
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(3600));
    }

    #[test]
    fn watch_starts_are_read_from_the_query_and_bad_combinations_refused() {
        let start = |query: &str| Start::from_query(&Query::parse(Some(query)));
        let cases = [
            ("watch=1", Some((StartAt::MostRecent, false))),
            (
                "watch=1&resourceVersion=",
                Some((StartAt::MostRecent, false)),
            ),
            ("watch=1&resourceVersion=0", Some((StartAt::Any, false))),
            (
                "watch=1&resourceVersion=42",
                Some((StartAt::After(42), false)),
            ),
            (
                "resourceVersion=42&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
                Some((StartAt::After(42), true)),
            ),
            ("resourceVersion=-1", None),
            ("resourceVersion=abc", None),
            ("sendInitialEvents=true&allowWatchBookmarks=true", None),
            (
                "sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
                None,
            ),
            ("resourceVersion=5&resourceVersionMatch=NotOlderThan", None),
        ];
        for (query, expected) in cases {
            let found = start(query)
                .ok()
                .map(|start| (start.at, start.send_initial_events));
            assert_eq!(found, expected, "{query}");
        }
    }
}
