//! The harness of the semantic suite: a real API server over a real SQLite file in a temporary
//! directory, driven in-process through its axum router (no socket).
//!
//! Every reply is checked on the way in for what k8s-api.md demands of all replies: a JSON
//! `Content-Type`, and for every non-2xx status a `Status` body whose `code` is the HTTP
//! status. Watch streams are checked frame by frame: one compact JSON object per line.
//!
//! Waits are bounded: `wait_until` polls a condition until a deadline, and every watch read has
//! a timeout, so a broken server fails a test instead of hanging it. Time is real, not paused:
//! the SQLite backend's writer runs on its own thread, and paused time would auto-advance while
//! a test waits for it, firing timeouts that real time never would. The server's periodic work
//! (bookmarks, progress, GC, compaction) is configured fast instead (`test_config`).

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use corral_apiserver::cache::CacheConfig;
use corral_apiserver::resource::Registry;
use corral_apiserver::{ApiServer, Config, Running};
use corral_store::DynStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const GROUP: &str = "test.corral.dev";
pub const API_VERSION: &str = "test.corral.dev/v1";
/// The widgets collection in the `default` namespace.
pub const WIDGETS: &str = "/apis/test.corral.dev/v1/namespaces/default/widgets";
/// Widgets of every namespace.
pub const ALL_WIDGETS: &str = "/apis/test.corral.dev/v1/widgets";
pub const GADGETS: &str = "/apis/test.corral.dev/v1/gadgets";
pub const NAMESPACES: &str = "/api/v1/namespaces";

pub const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

/// How long any single expected event or condition may take.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub fn widget_path(name: &str) -> String {
    format!("{WIDGETS}/{name}")
}

pub fn widgets_in(namespace: &str) -> String {
    format!("/apis/test.corral.dev/v1/namespaces/{namespace}/widgets")
}

pub fn gadget_path(name: &str) -> String {
    format!("{GADGETS}/{name}")
}

/// A Widget body in the `default` namespace.
pub fn widget(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// A widget body with extra metadata merged in.
pub fn widget_with(name: &str, spec: Value, metadata: Value) -> Value {
    let mut body = widget(name, spec);
    for (k, v) in metadata.as_object().expect("metadata object") {
        body["metadata"][k] = v.clone();
    }
    body
}

pub fn gadget(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Gadget",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// The directory of the suite's CRDs.
pub fn fixture_crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crds")
}

/// The configuration the suite runs with: everything periodic is fast.
/// The bearer token of `admin` (in `system:masters`) that every request of the suite carries
/// unless it sets its own `Authorization`.
pub const ADMIN_TOKEN: &str = "semantic-suite-admin";

pub fn test_config() -> Config {
    let tokens = corral_apiserver::auth::TokenFile::parse(&format!(
        "{ADMIN_TOKEN},admin,admin,system:masters"
    ))
    .expect("a valid token line");
    Config {
        authentication: corral_apiserver::auth::Authentication {
            tokens: Some(std::sync::Arc::new(tokens)),
        },
        bookmark_interval: Duration::from_millis(300),
        compaction_interval: Duration::ZERO,
        gc_resync_interval: Duration::from_millis(500),
        cache: CacheConfig {
            progress_interval: Duration::from_millis(100),
            ..CacheConfig::default()
        },
        ..Config::default()
    }
}

pub struct Harness {
    pub running: Running,
    pub app: Router,
    pub store: DynStore,
    _dir: tempfile::TempDir,
}

/// One HTTP reply, its body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts a status code and returns the body.
    #[track_caller]
    pub fn expect(self, code: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            code,
            "unexpected status; body: {}",
            self.body
        );
        self.body
    }

    /// Asserts a failure `Status` with this code and reason; returns the Status.
    #[track_caller]
    pub fn expect_error(self, code: u16, reason: &str) -> Value {
        let body = self.expect(code);
        assert_eq!(body["reason"], reason, "wrong reason in {body}");
        body
    }

    pub fn warnings(&self) -> Vec<String> {
        self.headers
            .get_all(header::WARNING)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_string())
            .collect()
    }
}

/// The resourceVersion of an object or list.
#[track_caller]
pub fn rv(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no resourceVersion in {object}"))
        .to_string()
}

pub fn rv_num(object: &Value) -> i64 {
    rv(object).parse().expect("resourceVersion is an integer")
}

pub fn generation(object: &Value) -> i64 {
    object["metadata"]["generation"].as_i64().unwrap_or(0)
}

pub fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {list}"))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

pub fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `metav1.Time` as Kubernetes writes it: RFC 3339, UTC, whole seconds.
pub fn is_k8s_time(text: &str) -> bool {
    text.len() == 20
        && text.ends_with('Z')
        && text.as_bytes()[10] == b'T'
        && text.parse::<jiff::Timestamp>().is_ok()
}

pub fn causes(status: &Value) -> Vec<Value> {
    status["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn cause_fields(status: &Value) -> Vec<String> {
    causes(status)
        .iter()
        .map(|c| c["field"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The managedFields entry of a manager, if any.
pub fn managed_entry(object: &Value, manager: &str, operation: &str) -> Option<Value> {
    object["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
        .cloned()
}

pub fn owner_ref(owner: &Value, block: bool) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": block,
    })
}

/// The `message` of a `Status`.
#[track_caller]
pub fn message(status: &Value) -> &str {
    status["message"].as_str().unwrap()
}

/// Polls `check` every 50 ms until it is true; panics after `PATIENCE`.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {PATIENCE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the invariant of every error reply (k8s-api.md §10).
#[track_caller]
fn check_status_body(status: StatusCode, body: &Value) {
    assert_eq!(body["kind"], "Status", "error body is not a Status: {body}");
    assert_eq!(body["apiVersion"], "v1", "Status apiVersion: {body}");
    assert_eq!(body["status"], "Failure", "Status status: {body}");
    assert_eq!(
        body["code"].as_u64(),
        Some(u64::from(status.as_u16())),
        "Status code must equal the HTTP status: {body}"
    );
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "Status without a reason: {body}"
    );
    assert!(
        body["message"].is_string(),
        "Status without a message: {body}"
    );
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> Harness {
        Harness::start_with_crds(&fixture_crds(), config).await
    }

    /// A server over the CRDs in `crds` (a directory).
    pub async fn start_with_crds(crds: &Path, config: Config) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("store.db").display());
        let store = corral_store::open(&url.parse().expect("store config"))
            .await
            .expect("opening the SQLite store");
        let registry = Registry::load(Some(crds)).expect("loading the test CRDs");
        let running = ApiServer::start(registry, store.clone(), config)
            .await
            .expect("starting the API server");
        let app = corral_apiserver::router(running.server.clone());
        Harness {
            running,
            app,
            store,
            _dir: dir,
        }
    }

    pub fn server(&self) -> &std::sync::Arc<ApiServer> {
        &self.running.server
    }

    pub async fn current_revision(&self) -> i64 {
        self.store.current_revision().await.expect("store revision")
    }

    async fn send(&self, mut request: Request<Body>) -> axum::response::Response {
        if !request.headers().contains_key(header::AUTHORIZATION) {
            let bearer = format!("Bearer {ADMIN_TOKEN}");
            request.headers_mut().insert(
                header::AUTHORIZATION,
                bearer.parse().expect("a header value"),
            );
        }
        self.app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible")
    }

    /// Sends one request and reads the whole reply.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut builder = Request::builder().method(method.clone()).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = self
            .send(builder.body(Body::from(body)).expect("request"))
            .await;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = tokio::time::timeout(PATIENCE, response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: the reply body did not end"))
            .expect("reading the reply body")
            .to_bytes();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: reply is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        if !bytes.is_empty() {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(
                content_type.starts_with("application/json"),
                "{method} {path}: Content-Type is {content_type:?}"
            );
        }
        if !status.is_success() {
            check_status_body(status, &body);
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, &[], Vec::new()).await
    }

    pub async fn get_table(&self, path: &str) -> Reply {
        self.call(Method::GET, path, &[("accept", TABLE_ACCEPT)], Vec::new())
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::POST, path, "application/json", body)
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::PUT, path, "application/json", body)
            .await
    }

    pub async fn merge_patch(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::PATCH, path, "application/merge-patch+json", body)
            .await
    }

    pub async fn json_patch(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::PATCH, path, "application/json-patch+json", body)
            .await
    }

    /// Server-side apply; `path` carries `fieldManager` (and `force`) itself.
    pub async fn apply(&self, path: &str, body: &Value) -> Reply {
        self.send_json(Method::PATCH, path, "application/apply-patch+yaml", body)
            .await
    }

    pub async fn delete(&self, path: &str, options: Option<&Value>) -> Reply {
        let body = options
            .map(|o| serde_json::to_vec(o).expect("json"))
            .unwrap_or_default();
        self.call(
            Method::DELETE,
            path,
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Reply {
        self.call(
            method,
            path,
            &[("content-type", content_type)],
            serde_json::to_vec(body).expect("json"),
        )
        .await
    }

    /// Creates a widget in `default` and returns it.
    pub async fn create_widget(&self, name: &str, spec: Value) -> Value {
        self.post(WIDGETS, &widget(name, spec)).await.expect(201)
    }

    /// Creates a widget in `default` with extra metadata (labels, finalizers, owners) and
    /// returns it.
    pub async fn create_widget_with(&self, name: &str, spec: Value, metadata: Value) -> Value {
        self.create(WIDGETS, widget_with(name, spec, metadata))
            .await
    }

    /// Server-side applies a widget in `default` to its own path; `query` carries
    /// `fieldManager` (and `force`, `dryRun`, …).
    pub async fn apply_widget(&self, query: &str, name: &str, spec: Value) -> Reply {
        self.apply(
            &format!("{}?{query}", widget_path(name)),
            &widget(name, spec),
        )
        .await
    }

    /// Merge-patches the status subresource of the object at `path`; returns the object.
    pub async fn patch_status(&self, path: &str, status: Value) -> Value {
        self.merge_patch(&format!("{path}/status"), &json!({ "status": status }))
            .await
            .expect(200)
    }

    /// Clears the finalizers of the object at `path` with a merge patch; returns the object.
    pub async fn remove_finalizers(&self, path: &str) -> Value {
        self.merge_patch(path, &json!({"metadata": {"finalizers": null}}))
            .await
            .expect(200)
    }

    /// Creates an object from a full body and returns it.
    pub async fn create(&self, collection: &str, body: Value) -> Value {
        self.post(collection, &body).await.expect(201)
    }

    pub async fn create_namespace(&self, name: &str) -> Value {
        self.post(
            NAMESPACES,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .await
        .expect(201)
    }

    /// True once GET `path` is 404.
    pub async fn is_gone(&self, path: &str) -> bool {
        self.get(path).await.status == StatusCode::NOT_FOUND
    }

    /// Watches the widgets of `default` from the resourceVersion of `object`.
    pub async fn watch_widgets_from(&self, object: &Value) -> Watch {
        self.watch(&format!(
            "{WIDGETS}?watch=true&resourceVersion={}",
            rv(object)
        ))
        .await
    }

    /// Opens a watch; `path` includes `watch=true` and the other parameters.
    pub async fn watch(&self, path: &str) -> Watch {
        self.watch_with(path, &[]).await
    }

    pub async fn watch_with(&self, path: &str, headers: &[(&str, &str)]) -> Watch {
        let mut builder = Request::builder().method(Method::GET).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = tokio::time::timeout(
            PATIENCE,
            self.send(builder.body(Body::empty()).expect("request")),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no response headers"));
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await.expect("body").to_bytes();
            panic!(
                "watch {path} got {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        assert_eq!(content_type, "application/json", "watch Content-Type");
        Watch {
            path: path.to_string(),
            body,
            buffer: Vec::new(),
            ended: false,
        }
    }
}

/// An open watch stream, read one event (line) at a time.
pub struct Watch {
    path: String,
    body: Body,
    buffer: Vec<u8>,
    ended: bool,
}

/// What a bounded read of a watch found.
#[derive(Debug)]
pub enum Next {
    Event(Value),
    /// The stream ended cleanly.
    End,
    /// Nothing arrived in time.
    Quiet,
}

impl Watch {
    /// The next event within `within`, checking the line framing.
    pub async fn next_within(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                let line = &line[..line.len() - 1];
                let event: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                    panic!(
                        "watch {}: a line is not one JSON object ({e}): {:?}",
                        self.path,
                        String::from_utf8_lossy(line)
                    )
                });
                let compact = serde_json::to_vec(&event).expect("json");
                assert_eq!(
                    compact,
                    line,
                    "watch {}: event is not compact JSON: {}",
                    self.path,
                    String::from_utf8_lossy(line)
                );
                assert!(event.is_object() && event["type"].is_string());
                return Next::Event(event);
            }
            if self.ended {
                assert!(
                    self.buffer.is_empty(),
                    "watch {}: the stream ended inside a line: {:?}",
                    self.path,
                    String::from_utf8_lossy(&self.buffer)
                );
                return Next::End;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Quiet,
                Ok(None) => self.ended = true,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Ok(Some(Err(e))) => panic!("watch {}: the stream failed: {e}", self.path),
            }
        }
    }

    /// The next event; panics if the stream ends or stays quiet for `PATIENCE`.
    pub async fn next(&mut self) -> Value {
        match self.next_within(PATIENCE).await {
            Next::Event(e) => e,
            other => panic!("watch {}: expected an event, got {other:?}", self.path),
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_change(&mut self) -> Value {
        loop {
            let event = self.next().await;
            if event["type"] != "BOOKMARK" {
                return event;
            }
        }
    }

    /// Asserts the next non-bookmark event's type and object name; returns its object.
    pub async fn expect(&mut self, kind: &str, name: &str) -> Value {
        let event = self.next_change().await;
        assert_eq!(event["type"], kind, "watch {}: {event}", self.path);
        assert_eq!(
            event["object"]["metadata"]["name"], name,
            "watch {}: {event}",
            self.path
        );
        event["object"].clone()
    }

    /// Asserts that the stream ends (cleanly) within `within`, skipping bookmarks.
    pub async fn expect_end(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Next::End => return,
                Next::Event(e) if e["type"] == "BOOKMARK" => continue,
                other => panic!("watch {}: expected the end, got {other:?}", self.path),
            }
        }
    }
}

impl Harness {
    /// Waits (bounded) until GET `path` is 404.
    pub async fn wait_gone(&self, path: &str, what: &str) {
        wait_until(what, || self.is_gone(path)).await;
    }
}
