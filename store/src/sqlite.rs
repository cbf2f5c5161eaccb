//! The embedded backend: the whole MVCC store in one SQLite file, for one API server.
//!
//! # What it promises
//!
//! Everything in the crate docs: one strictly increasing revision over all keys, conditional
//! writes, lists at past revisions, watches from any uncompacted revision that survive a
//! restart, and durability of every acknowledged write across `kill -9` and power loss (the
//! file is in WAL mode with `synchronous=FULL`: a commit returns only after its WAL frames are
//! fsync'd).
//!
//! # Definitions
//!
//! - The *log* is the table of every write (revision, key, value, create revision, previous
//!   revision of the key, deleted flag). A row is *superseded at C* if (and only if) a newer row
//!   of the same key has a revision <= C. A delete's row (a *tombstone*) stores no value; its
//!   value is its previous row's.
//! - The *kv* table names the current row of every live key (its create and mod revisions; the
//!   value is read from the log row at the mod revision, so each value is written once). It is
//!   exactly what replaying the whole log would give, kept so that latest reads need no log
//!   scan.
//! - The *meta* table holds the compacted revision and the schema version.
//! - The current revision is the greatest of the log's greatest revision and the compacted
//!   revision (compaction may remove the newest row when it is a tombstone).
//!
//! # How writes work (see `writer`)
//!
//! One writer task owns the only connection that writes. Callers send it their write and wait
//! for the answer; it takes every write that is waiting (up to a bound) and applies them in one
//! transaction (group commit), each write still individually conditional: a failed condition
//! fails that write alone. Revisions are assigned in commit order by that single writer, so a
//! reader never sees revision R+1 without R. After a commit it publishes the new revision on
//! a `tokio::sync::watch`, which the log's tail follows: it reads the new rows once for every
//! watch of the store (`tail`), and each watch keeps those under its prefix (`watch`).
//!
//! # Invariants
//!
//! - **kv = replay(log)** for every key, after every commit (both change in one transaction),
//!   and the log row a kv row names is never compacted (it is its key's newest and no
//!   tombstone, so nothing supersedes it).
//! - **No gaps**: the log holds every revision above the compacted revision that was ever
//!   committed, except rows removed by compaction, which are always <= the compacted revision.
//! - **Compaction keeps history above C whole**: at C it removes only rows superseded at C and
//!   tombstones <= C, so the latest row of each key at any R >= C survives, and so does the
//!   previous row of every row above C (a watch after C can always join its previous value).
//! - The compacted revision is recorded in the same transaction as the first rows it deletes,
//!   so a reader that could miss a row also sees that the revision was compacted.
//!
//! # Assumptions
//!
//! - One process opens the file at a time. `open` takes an exclusive lock on `PATH.lock` and
//!   waits up to `SqliteOptions::lock_timeout` for it; another process's writes would be
//!   invisible to this process's watches.
//! - Keys are UTF-8 and compared bytewise (they are stored as BLOBs so that SQLite's ordering
//!   is byte order and a prefix's end bound need not be valid UTF-8).
//! - Cancelling a caller's future after its write was handed to the writer does not cancel the
//!   write; the caller just does not hear the answer (as with a dropped HTTP response).
//!
//! # Not responsible for
//!
//! Deciding when to compact (the API server's compactor), backups, and sharing the file between
//! processes.

mod error;
mod options;
mod scan;
mod schema;
mod tail;
mod watch;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::keys::{ABOVE_ALL_KEYS, prefix_end};
use crate::{
    KeyValue, ListRequest, ListResponse, Result, Revision, Store, StoreError, WatchOptions,
    WatchStream,
};

pub use self::error::SqliteError;
pub(crate) use self::error::sql_error;
pub use self::options::SqliteOptions;
pub(crate) use self::schema::connect_options;

use self::error::{closed, decode_key};
use self::schema::{SCHEMA, SCHEMA_VERSION, read_revisions};
use self::writer::{Command, WriteOp, Writer};

/// The embedded store. See the module docs.
pub struct SqliteStore {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    reads: SqlitePool,
    committed: tokio::sync::watch::Receiver<Revision>,
    /// Subscribes watches to the log's tail (`tail.rs`), while it runs.
    tail: tokio::sync::broadcast::WeakSender<std::sync::Arc<tail::Batch>>,
    /// The writer ends by itself once every sender of `commands` is gone (this store dropped).
    _writer: JoinHandle<()>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` with default options.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        SqliteStore::open_with(path, SqliteOptions::default()).await
    }

    pub async fn open_with(path: &Path, options: SqliteOptions) -> Result<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|source| {
                StoreError::Backend(Box::new(SqliteError::CreateDirectory {
                    path: parent.to_owned(),
                    source,
                }))
            })?;
        }
        let lock = lock_database(path, options.lock_timeout).await?;

        let connect = connect_options(path);
        let mut conn = connect.connect().await.map_err(sql_error)?;
        sqlx::raw_sql(SCHEMA)
            .execute(&mut conn)
            .await
            .map_err(sql_error)?;
        let version: i64 =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'schema_version'")
                .fetch_one(&mut conn)
                .await
                .map_err(sql_error)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(Box::new(SqliteError::NewerSchema {
                found: version,
                known: SCHEMA_VERSION,
            })));
        }
        let (current, compacted) = read_revisions(&mut conn).await?;

        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(0)
            // A connection to a local file does not go stale, and the check is a round trip
            // to the connection's thread before every read.
            .test_before_acquire(false)
            .connect_lazy_with(connect.pragma("query_only", "ON"));

        let (committed_tx, committed) = tokio::sync::watch::channel(current);
        let (commands, receiver) = mpsc::channel(options.max_batch.max(1));
        let writer = Writer::new(conn, lock, current, compacted, committed_tx, &options);
        let handle = tokio::spawn(writer.run(receiver));
        let tail = tail::spawn(reads.clone(), committed.clone(), current);
        tracing::debug!(path = %path.display(), current, compacted, "opened SQLite store");
        Ok(SqliteStore {
            path: path.to_owned(),
            commands,
            reads,
            committed,
            tail,
            _writer: handle,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write(&self, op: WriteOp) -> Result<KeyValue> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Write { op, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// Takes the exclusive lock on `PATH.lock`, waiting up to `timeout` for a previous holder (for
/// instance a store of this process that is still shutting down).
async fn lock_database(path: &Path, timeout: Duration) -> Result<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| {
            StoreError::Backend(Box::new(SqliteError::LockFile {
                path: lock_path.clone(),
                source,
            }))
        })?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Unavailable(Box::new(SqliteError::Locked {
                    path: lock_path,
                })));
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Backend(Box::new(SqliteError::LockFile {
                    path: lock_path,
                    source,
                })));
            }
        }
    }
}

/// A row of `(key, value, create_revision, mod_revision)`.
fn key_value(row: &SqliteRow) -> Result<KeyValue> {
    let key: Vec<u8> = row.try_get(0).map_err(sql_error)?;
    let value: Vec<u8> = row.try_get(1).map_err(sql_error)?;
    Ok(KeyValue {
        key: decode_key(key)?,
        value: Bytes::from(value),
        create_revision: row.try_get(2).map_err(sql_error)?,
        mod_revision: row.try_get(3).map_err(sql_error)?,
    })
}

const LIST_LATEST_SQL: &str = "SELECT k.key, l.value, k.create_revision, k.mod_revision \
     FROM kv AS k JOIN log AS l ON l.revision = k.mod_revision \
     WHERE k.key >= ?1 AND k.key < ?2 ORDER BY k.key LIMIT ?3";
const COUNT_LATEST_SQL: &str = "SELECT COUNT(*) FROM kv WHERE key >= ?1 AND key < ?2";
/// The rows that are each key's newest at revision ?3 and not tombstones. SQLite walks the key
/// index in order and stops at the limit; each candidate costs one index probe for a newer row.
const LIST_AT_SQL: &str = "SELECT l.key, l.value, l.create_revision, l.revision FROM log AS l \
     WHERE l.key >= ?1 AND l.key < ?2 AND l.revision <= ?3 AND l.deleted = 0 \
     AND NOT EXISTS (SELECT 1 FROM log AS newer WHERE newer.key = l.key \
                     AND newer.revision > l.revision AND newer.revision <= ?3) \
     ORDER BY l.key LIMIT ?4";
const COUNT_AT_SQL: &str = "SELECT COUNT(*) FROM log AS l \
     WHERE l.key >= ?1 AND l.key < ?2 AND l.revision <= ?3 AND l.deleted = 0 \
     AND NOT EXISTS (SELECT 1 FROM log AS newer WHERE newer.key = l.key \
                     AND newer.revision > l.revision AND newer.revision <= ?3)";

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn current_revision(&self) -> Result<Revision> {
        // The writer publishes a revision after its commit and before it answers the write, so
        // a read that starts after a write returned sees at least that write's revision.
        Ok(*self.committed.borrow())
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        sqlx::query_scalar("SELECT value FROM meta WHERE name = 'compacted'")
            .fetch_one(&self.reads)
            .await
            .map_err(sql_error)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let row = sqlx::query(
            "SELECT k.key, l.value, k.create_revision, k.mod_revision \
                 FROM kv AS k JOIN log AS l ON l.revision = k.mod_revision WHERE k.key = ?1",
        )
        .bind(key.as_bytes())
        .fetch_optional(&self.reads)
        .await
        .map_err(sql_error)?;
        row.as_ref().map(key_value).transpose()
    }

    async fn list(&self, request: ListRequest) -> Result<ListResponse> {
        let prefix = request.prefix.as_bytes();
        let end = prefix_end(prefix).unwrap_or_else(|| ABOVE_ALL_KEYS.to_vec());
        let start = match &request.start {
            Some(start) if start.as_bytes() > prefix => start.as_bytes(),
            _ => prefix,
        };
        let limit = request.limit.filter(|&limit| limit > 0);
        // One more than asked tells whether there are more.
        let fetch = limit.map_or(-1, |limit| {
            i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)
        });

        // One read transaction: the revision, the items and the count share a snapshot.
        let mut tx = self.reads.begin().await.map_err(sql_error)?;
        let (current, compacted) = read_revisions(&mut tx).await?;
        let revision = match request.revision {
            None => current,
            Some(requested) if requested > current => {
                return Err(StoreError::FutureRevision { requested, current });
            }
            Some(requested) if requested < compacted => {
                return Err(StoreError::Compacted {
                    requested,
                    compacted,
                });
            }
            Some(requested) => requested,
        };
        let latest = revision == current;
        let rows = if latest {
            sqlx::query(LIST_LATEST_SQL)
                .bind(start)
                .bind(&end[..])
                .bind(fetch)
        } else {
            sqlx::query(LIST_AT_SQL)
                .bind(start)
                .bind(&end[..])
                .bind(revision)
                .bind(fetch)
        }
        .fetch_all(&mut *tx)
        .await
        .map_err(sql_error)?;
        let mut items = rows.iter().map(key_value).collect::<Result<Vec<_>>>()?;
        let more = limit.is_some_and(|limit| items.len() > limit);
        let count = if more {
            items.truncate(limit.unwrap_or(items.len()));
            let count: i64 = if latest {
                sqlx::query_scalar(COUNT_LATEST_SQL)
                    .bind(start)
                    .bind(&end[..])
            } else {
                sqlx::query_scalar(COUNT_AT_SQL)
                    .bind(start)
                    .bind(&end[..])
                    .bind(revision)
            }
            .fetch_one(&mut *tx)
            .await
            .map_err(sql_error)?;
            u64::try_from(count).unwrap_or(0)
        } else {
            items.len() as u64
        };
        tx.rollback().await.map_err(sql_error)?;
        Ok(ListResponse {
            items,
            revision,
            more,
            count,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.write(WriteOp::Create {
            key: key.to_owned(),
            value,
        })
        .await
    }

    async fn update(&self, key: &str, expected: Revision, value: Bytes) -> Result<KeyValue> {
        self.write(WriteOp::Update {
            key: key.to_owned(),
            expected,
            value,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Revision) -> Result<KeyValue> {
        self.write(WriteOp::Delete {
            key: key.to_owned(),
            expected,
        })
        .await
    }

    async fn watch(&self, prefix: &str, options: WatchOptions) -> Result<WatchStream> {
        let compacted = self.compacted_revision().await?;
        if options.after < compacted {
            return Err(StoreError::Compacted {
                requested: options.after,
                compacted,
            });
        }
        let tail = self.tail.upgrade().map(|sender| sender.subscribe());
        Ok(watch::SqliteWatch::new(
            self.reads.clone(),
            self.committed.clone(),
            tail,
            prefix,
            options,
        )
        .into_stream())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Compact { revision, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_use_wal_and_full_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = connect_options(&dir.path().join("x.sqlite"))
            .connect()
            .await
            .expect("connect");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .expect("pragma");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut conn)
            .await
            .expect("pragma");
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "synchronous=FULL");
    }
}
