//! The file's layout: how every connection is configured (WAL, `synchronous=FULL`), the
//! tables and their schema version, and the one query that reads the revision counters.
//!
//! The tables are described in the parent module's docs (the log, kv and meta).

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Row, SqliteConnection};

use super::error::sql_error;
use crate::{Result, Revision};

/// The schema this build writes; a file with a newer one is refused.
pub(super) const SCHEMA_VERSION: i64 = 1;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL
);
-- Entries are ordered by (key, rowid) and the rowid is the revision.
CREATE INDEX IF NOT EXISTS log_by_key ON log (key);
-- The value of a live key is in its log row at mod_revision: values are written once.
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1), ('compacted', 0);
";

/// `(current revision, compacted revision)` as of the reading transaction's snapshot.
pub(super) const REVISIONS_SQL: &str = "SELECT COALESCE((SELECT MAX(revision) FROM log), 0), \
     COALESCE((SELECT value FROM meta WHERE name = 'compacted'), 0)";

pub(crate) async fn read_revisions(conn: &mut SqliteConnection) -> Result<(Revision, Revision)> {
    let row = sqlx::query(REVISIONS_SQL)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_error)?;
    let newest: i64 = row.try_get(0).map_err(sql_error)?;
    let compacted: i64 = row.try_get(1).map_err(sql_error)?;
    Ok((newest.max(compacted), compacted))
}

pub(crate) fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(false)
}
