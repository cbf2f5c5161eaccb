//! Reading the log: the rows of a key range in a span of revisions, each as an event with its
//! previous value, in one statement — what a watch reads to catch up and the tail reads for
//! every watch.
//!
//! # Invariants
//!
//! - A read returns the compacted revision from the same snapshot as the rows; if compaction
//!   passed the start of the span, rows may be missing, and the read fails with `Compacted`
//!   instead of returning them.
//! - A read returns at most [`PAGE`] rows, in revision order, and says up to which revision
//!   the span was read: all of it, or up to the last row when the page filled.

use bytes::Bytes;
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::error::{SqliteError, decode_key, sql_error};
use crate::{Event, EventKind, KeyValue, Result, Revision, StoreError};

/// Rows read per scan; a longer catch-up takes several responses.
const PAGE: i64 = 1000;
/// The compacted revision, then the rows past the position, in one statement: the first column
/// of every row is the compacted revision, and the one row with no log row beside it (NULL
/// revision) says there are none. `+l.key` keeps SQLite on the revision (rowid) range instead
/// of the key index: a watch reads a short span of recent revisions, usually across a wide key
/// range.
const SCAN_SQL: &str = "SELECT c.value, s.* FROM meta AS c LEFT JOIN (\
     SELECT l.revision, l.key, l.value, l.create_revision, l.prev_revision, \
     l.deleted, p.value, p.create_revision \
     FROM log AS l LEFT JOIN log AS p ON p.revision = l.prev_revision \
     WHERE l.revision > ?1 AND l.revision <= ?2 AND +l.key >= ?3 AND +l.key < ?4 \
     ORDER BY l.revision LIMIT ?5) AS s \
     WHERE c.name = 'compacted' ORDER BY s.revision";

/// Reads the rows of keys in `[start, end)` with revisions in `(after, target]`, at most a
/// page; returns their events and the revision up to which the range was read (`target`, or
/// the last row's revision when the page filled). Fails with `Compacted` if compaction passed
/// `after`.
pub(super) async fn scan(
    reads: &SqlitePool,
    after: Revision,
    target: Revision,
    start: &[u8],
    end: &[u8],
) -> Result<(Vec<Event>, Revision)> {
    let rows = sqlx::query(SCAN_SQL)
        .bind(after)
        .bind(target)
        .bind(start)
        .bind(end)
        .bind(PAGE)
        .fetch_all(reads)
        .await
        .map_err(sql_error)?;
    let compacted: i64 = match rows.first() {
        Some(row) => row.try_get(0).map_err(sql_error)?,
        None => {
            return Err(StoreError::Backend(Box::new(SqliteError::MissingMeta(
                "compacted",
            ))));
        }
    };
    if compacted > after {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let revision: Option<i64> = row.try_get(1).map_err(sql_error)?;
        if revision.is_some() {
            events.push(event(row)?);
        }
    }
    let upto = match events.last() {
        Some(last) if events.len() as i64 == PAGE => last.revision(),
        _ => target,
    };
    Ok((events, upto))
}

/// The event in a row of [`SCAN_SQL`] (its columns after the first).
fn event(row: &SqliteRow) -> Result<Event> {
    let revision: i64 = row.try_get(1).map_err(sql_error)?;
    let key = decode_key(row.try_get(2).map_err(sql_error)?)?;
    let value: Vec<u8> = row.try_get(3).map_err(sql_error)?;
    let create_revision: i64 = row.try_get(4).map_err(sql_error)?;
    let prev_revision: i64 = row.try_get(5).map_err(sql_error)?;
    let deleted: bool = row.try_get(6).map_err(sql_error)?;
    let prev = if prev_revision > 0 {
        let prev_value: Option<Vec<u8>> = row.try_get(7).map_err(sql_error)?;
        let prev_create: Option<i64> = row.try_get(8).map_err(sql_error)?;
        let (Some(prev_value), Some(prev_create)) = (prev_value, prev_create) else {
            return Err(StoreError::Backend(Box::new(
                SqliteError::MissingPrevious {
                    revision,
                    previous: prev_revision,
                },
            )));
        };
        Some(KeyValue {
            key: key.clone(),
            value: Bytes::from(prev_value),
            create_revision: prev_create,
            mod_revision: prev_revision,
        })
    } else {
        None
    };
    let (kind, value) = match (&prev, deleted) {
        (Some(prev), true) => (EventKind::Delete, prev.value.clone()),
        (None, true) => {
            return Err(StoreError::Backend(Box::new(
                SqliteError::MissingPrevious {
                    revision,
                    previous: prev_revision,
                },
            )));
        }
        (Some(_), false) => (EventKind::Update, Bytes::from(value)),
        (None, false) => (EventKind::Create, Bytes::from(value)),
    };
    Ok(Event {
        kind,
        kv: KeyValue {
            key,
            value,
            create_revision,
            mod_revision: revision,
        },
        prev,
    })
}
