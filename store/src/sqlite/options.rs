//! How a SQLite store is tuned: read connections, group-commit size, the lock wait and the
//! compaction chunk.

use std::time::Duration;

use crate::Revision;

/// Tuning for [`SqliteStore::open_with`](super::SqliteStore::open_with); the defaults suit the
/// API server.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Connections for reads (get, list, watch catch-up).
    pub read_connections: u32,
    /// The most writes grouped into one transaction.
    pub max_batch: usize,
    /// How long `open` waits for another holder of the database's lock to let go.
    pub lock_timeout: Duration,
    /// Revisions examined per compaction transaction; writes wait at most one chunk.
    pub compaction_chunk: Revision,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            read_connections: 4,
            max_batch: 1024,
            lock_timeout: Duration::from_secs(10),
            compaction_chunk: 20_000,
        }
    }
}
