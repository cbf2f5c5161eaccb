//! The SQLite backend's own failures, and how they become [`StoreError`]s: a pool that timed
//! out or closed is `Unavailable` (the caller may retry), anything else SQLite reports is
//! `Backend`.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{Result, Revision, StoreError};

/// Failures particular to this backend; they reach callers as the `#[source]` of a
/// [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("creating the directory {path:?}")]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening the lock file {path:?}")]
    LockFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another process holds {path:?}: the database is in use")]
    Locked { path: PathBuf },
    #[error("the database has schema version {found}; this build knows only {known}")]
    NewerSchema { found: i64, known: i64 },
    #[error("the store is closed")]
    Closed,
    #[error("a key in the database is not UTF-8")]
    KeyNotUtf8(#[source] std::string::FromUtf8Error),
    #[error("log row {revision} names previous revision {previous}, which is missing")]
    MissingPrevious {
        revision: Revision,
        previous: Revision,
    },
    #[error("the meta table has no {0:?} row")]
    MissingMeta(&'static str),
    #[error("the write transaction failed")]
    Transaction(#[source] Arc<sqlx::Error>),
    #[error("SQLite failed")]
    Sql(#[source] sqlx::Error),
}

pub(crate) fn sql_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(Box::new(SqliteError::Sql(error)))
        }
        error => StoreError::Backend(Box::new(SqliteError::Sql(error))),
    }
}

/// The writer task is gone: the store was dropped.
pub(super) fn closed() -> StoreError {
    StoreError::Unavailable(Box::new(SqliteError::Closed))
}

pub(crate) fn decode_key(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| StoreError::Backend(Box::new(SqliteError::KeyNotUtf8(e))))
}
