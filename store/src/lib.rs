//! The storage contract of the API server: an MVCC key-value store with one global revision.
//!
//! Every write to any key advances a single, store-wide, strictly increasing revision, and that
//! revision is what the API calls `resourceVersion`. The model is etcd's (and the one
//! kube-apiserver is built on); the SQLite backend reproduces it on one file.
//!
//! # Definitions
//!
//! - A key's `mod_revision` is the revision of the write that produced its current value; its
//!   `create_revision` is the revision of the write that created it (after its last deletion).
//! - The store is *at* revision R when every write with a revision <= R is visible and none
//!   above is.
//! - Revisions up to and including the *compacted revision* C may have lost their history: a
//!   list at a revision < C, or a watch from a revision < C, fails with
//!   [`StoreError::Compacted`]. (A list *at* C and a watch *after* C are still served.)
//!
//! # Guarantees (every backend; checked by `testing::conformance`)
//!
//! - A write that returned `Ok` is durable: it survives a crash of the process (`kill -9`).
//! - Writes are linearizable: a read that starts after a write returned sees it.
//! - `create`, `update` and `delete` are conditional; a failed condition changes nothing and
//!   returns the current value so callers need not read again.
//! - A watch delivers every event with a revision greater than its start, in revision order,
//!   exactly once, each carrying the previous value of its key; it never skips an event. If it
//!   cannot keep that promise (its start was compacted) it yields `Compacted` and ends.
//! - A [`WatchResponse::progress`] of P promises that every event with a revision <= P has
//!   been delivered on that stream. Backends send a response at least every
//!   [`WatchOptions::progress_interval`] even when nothing changed, so a consumer always knows
//!   how current it is (this is what API watch bookmarks are made from).
//!
//! # Not responsible for
//!
//! Object semantics (names, uids, generation, finalizers): the API server builds those on top.
//! Choosing when to compact: the API server's compactor calls [`Store::compact`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

mod config;
pub mod etcd;
mod keys;
pub mod raw;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{ConfigError, EtcdTls, StoreConfig, open};

/// The store-wide revision. Revision 0 is "before the first write"; the first write is 1.
pub type Revision = i64;

/// One key and its current value.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// What a list asks for. Keys are returned in ascending byte order.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    /// Only keys starting with this prefix.
    pub prefix: String,
    /// Serve the list as of this revision; `None` is the latest (a linearizable read).
    pub revision: Option<Revision>,
    /// Start at this key (inclusive); used to continue a paginated list.
    pub start: Option<String>,
    /// At most this many items; `None` or 0 is no limit.
    pub limit: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct ListResponse {
    pub items: Vec<KeyValue>,
    /// The revision the list was served at (the request's, or the current one).
    pub revision: Revision,
    /// True when keys beyond `items` exist under the prefix (from the same start).
    pub more: bool,
    /// How many keys lie in the range from `start` to the end of the prefix, `items` included.
    pub count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Create,
    Update,
    Delete,
}

/// One change. For `Delete`, `kv.value` is the last value before deletion and
/// `kv.mod_revision` is the revision of the deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key's value just before this event; `None` for `Create`.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A batch of events (possibly empty) and the progress they bring the stream to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchResponse {
    pub events: Vec<Event>,
    /// Every event with a revision <= `progress` has been delivered on this stream.
    pub progress: Revision,
}

#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Deliver events with a revision strictly greater than this.
    pub after: Revision,
    /// Send a (possibly empty) response at least this often.
    pub progress_interval: Duration,
}

pub type WatchStream = BoxStream<'static, Result<WatchResponse, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String, current: KeyValue },
    #[error("key {key:?} not found")]
    NotFound { key: String },
    #[error("key {key:?} was modified (expected revision {expected})")]
    Conflict {
        key: String,
        expected: Revision,
        current: Option<KeyValue>,
    },
    #[error("revision {requested} has been compacted (compacted revision is {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is newer than the store's current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("storage backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The MVCC key-value store. See the module docs for the guarantees every backend keeps.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs: "sqlite" or "etcd".
    fn backend(&self) -> &'static str;

    /// The latest revision (linearizable).
    async fn current_revision(&self) -> Result<Revision>;

    /// The compacted revision: history up to and including it may be gone. 0 if never compacted.
    async fn compacted_revision(&self) -> Result<Revision>;

    /// The latest value of `key`, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys under a prefix, at a revision, with pagination.
    async fn list(&self, request: ListRequest) -> Result<ListResponse>;

    /// Create `key` if and only if it does not exist. Returns the stored key-value.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replace `key`'s value if and only if its `mod_revision` is `expected`.
    async fn update(&self, key: &str, expected: Revision, value: Bytes) -> Result<KeyValue>;

    /// Delete `key` if and only if its `mod_revision` is `expected`. Returns the deleted value
    /// with `mod_revision` set to the revision of the deletion.
    async fn delete(&self, key: &str, expected: Revision) -> Result<KeyValue>;

    /// Watch every key under `prefix` for changes after `options.after`.
    async fn watch(&self, prefix: &str, options: WatchOptions) -> Result<WatchStream>;

    /// Discard history up to and including `revision` (current values are kept).
    async fn compact(&self, revision: Revision) -> Result<()>;
}

pub type DynStore = Arc<dyn Store>;
