//! What the API server measures, and `/metrics` in the Prometheus text format (the `metrics`
//! facade, rendered by `metrics-exporter-prometheus`).
//!
//! The series, named after kube-apiserver's where one exists:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `apiserver_request_total` | counter | `verb`, `resource`, `code` |
//! | `apiserver_request_duration_seconds` | histogram | `verb`, `resource` (watches excluded: a watch lasts as long as its client) |
//! | `apiserver_current_inflight_requests` | gauge | `request_kind` (`readOnly`, `mutating`) |
//! | `apiserver_registered_watchers` | gauge | `resource` |
//! | `apiserver_watch_cache_objects` | gauge | `resource` |
//! | `apiserver_watch_cache_events_received_total` | counter | `resource` |
//! | `apiserver_watch_cache_relists_total` | counter | `resource` |
//! | `apiserver_storage_operation_duration_seconds` | histogram | `operation`, `backend` |
//! | `apiserver_storage_operation_errors_total` | counter | `operation`, `backend` |
//!
//! # Invariants
//!
//! - One recorder per process, installed on first use ([`handle`]): every API server of the
//!   process (tests start several) and everything else the process measures share it, so a
//!   process's `/metrics` shows all of it (`corral up`: the controllers and the sleds too).
//! - Labels have bounded values: verbs, served resources, status codes, store operations.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "apiserver_request_total";
pub const REQUEST_DURATION: &str = "apiserver_request_duration_seconds";
pub const INFLIGHT: &str = "apiserver_current_inflight_requests";
pub const WATCHERS: &str = "apiserver_registered_watchers";
pub const CACHE_OBJECTS: &str = "apiserver_watch_cache_objects";
pub const CACHE_EVENTS: &str = "apiserver_watch_cache_events_received_total";
pub const CACHE_RELISTS: &str = "apiserver_watch_cache_relists_total";
pub const STORE_DURATION: &str = "apiserver_storage_operation_duration_seconds";
pub const STORE_ERRORS: &str = "apiserver_storage_operation_errors_total";

/// Latency buckets (seconds): kube-apiserver's, cut at one minute (the request timeout).
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0,
    8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// The process's recorder, installed on first call.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics shows only its own");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Requests answered, by verb, resource and HTTP status code."
    );
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "How long requests took to answer, by verb and resource (watches excluded)."
    );
    describe_gauge!(
        INFLIGHT,
        "Requests being worked on now, read-only and mutating (watches excluded)."
    );
    describe_gauge!(WATCHERS, "Open watches, by resource.");
    describe_gauge!(CACHE_OBJECTS, "Objects in the watch cache, by resource.");
    describe_counter!(
        CACHE_EVENTS,
        "Store events the watch cache applied, by resource."
    );
    describe_counter!(
        CACHE_RELISTS,
        "Times the watch cache listed its resource from the store (start, compaction, a \
         state it could not vouch for)."
    );
    describe_histogram!(
        STORE_DURATION,
        metrics::Unit::Seconds,
        "How long store operations took, by operation and backend."
    );
    describe_counter!(
        STORE_ERRORS,
        "Store operations that failed for another reason than their precondition (a conflict, \
         an existing or missing key), by operation and backend."
    );
}

/// The text exposition of every series of the process.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// A store that measures every operation of the one it wraps (`apiserver_storage_*`). A
/// watch is timed until its stream is open.
pub struct MeteredStore {
    inner: corral_store::DynStore,
    /// Each operation's series, made once (a labelled lookup in the recorder costs several
    /// allocations per operation).
    series: Vec<OperationSeries>,
}

struct OperationSeries {
    operation: &'static str,
    duration: metrics::Histogram,
    errors: metrics::Counter,
}

/// The operations a store has, as `operation` labels.
const OPERATIONS: &[&str] = &[
    "current_revision",
    "compacted_revision",
    "get",
    "list",
    "create",
    "update",
    "delete",
    "watch",
    "compact",
];

impl MeteredStore {
    pub fn wrap(inner: corral_store::DynStore) -> corral_store::DynStore {
        handle();
        let backend = inner.backend();
        let series = OPERATIONS
            .iter()
            .map(|&operation| OperationSeries {
                operation,
                duration: metrics::histogram!(
                    STORE_DURATION, "operation" => operation, "backend" => backend
                ),
                errors: metrics::counter!(
                    STORE_ERRORS, "operation" => operation, "backend" => backend
                ),
            })
            .collect();
        std::sync::Arc::new(MeteredStore { inner, series })
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        work: impl std::future::Future<Output = corral_store::Result<T>>,
    ) -> corral_store::Result<T> {
        use corral_store::StoreError;
        let series = self
            .series
            .iter()
            .find(|series| series.operation == operation)
            .expect("every store operation is in OPERATIONS");
        let started = tokio::time::Instant::now();
        let result = work.await;
        series.duration.record(started.elapsed().as_secs_f64());
        if let Err(error) = &result
            && !matches!(
                error,
                StoreError::Conflict { .. }
                    | StoreError::AlreadyExists { .. }
                    | StoreError::NotFound { .. }
            )
        {
            series.errors.increment(1);
        }
        result
    }
}

#[async_trait::async_trait]
impl corral_store::Store for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn current_revision(&self) -> corral_store::Result<corral_store::Revision> {
        self.timed("current_revision", self.inner.current_revision())
            .await
    }

    async fn compacted_revision(&self) -> corral_store::Result<corral_store::Revision> {
        self.timed("compacted_revision", self.inner.compacted_revision())
            .await
    }

    async fn get(&self, key: &str) -> corral_store::Result<Option<corral_store::KeyValue>> {
        self.timed("get", self.inner.get(key)).await
    }

    async fn list(
        &self,
        request: corral_store::ListRequest,
    ) -> corral_store::Result<corral_store::ListResponse> {
        self.timed("list", self.inner.list(request)).await
    }

    async fn create(
        &self,
        key: &str,
        value: bytes::Bytes,
    ) -> corral_store::Result<corral_store::KeyValue> {
        self.timed("create", self.inner.create(key, value)).await
    }

    async fn update(
        &self,
        key: &str,
        expected: corral_store::Revision,
        value: bytes::Bytes,
    ) -> corral_store::Result<corral_store::KeyValue> {
        self.timed("update", self.inner.update(key, expected, value))
            .await
    }

    async fn delete(
        &self,
        key: &str,
        expected: corral_store::Revision,
    ) -> corral_store::Result<corral_store::KeyValue> {
        self.timed("delete", self.inner.delete(key, expected)).await
    }

    async fn watch(
        &self,
        prefix: &str,
        options: corral_store::WatchOptions,
    ) -> corral_store::Result<corral_store::WatchStream> {
        self.timed("watch", self.inner.watch(prefix, options)).await
    }

    async fn compact(&self, revision: corral_store::Revision) -> corral_store::Result<()> {
        self.timed("compact", self.inner.compact(revision)).await
    }
}
