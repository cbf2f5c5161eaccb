//! One watch on a SQLite store: reads the log past its position, in revision order.
//!
//! # Invariants
//!
//! - **Position** is the revision up to which every matching log row has been delivered. It
//!   only moves to a revision the writer has published, so every row at or below it was
//!   committed before it was read (the writer publishes after committing): nothing is skipped.
//! - Each scan reads the compacted revision in the same statement, hence the same snapshot,
//!   as the rows; if compaction passed the position, rows may be missing and the watch ends
//!   with `Compacted` instead of delivering an incomplete history.
//! - A scan is one statement: one round trip to a read connection's thread. Every watch scans
//!   after every commit, so this is paid once per commit per watched prefix.
//! - A response goes out at least every `progress_interval`: events when there are any,
//!   otherwise an empty one carrying the position.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::{SqliteError, closed, decode_key, sql_error};
use crate::keys::{ABOVE_ALL_KEYS, prefix_end};
use crate::{
    Event, EventKind, KeyValue, Result, Revision, StoreError, WatchOptions, WatchResponse,
    WatchStream,
};

/// Rows read per scan; a longer catch-up takes several responses.
const PAGE: i64 = 1000;
/// A shorter interval would only spin.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(10);

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

pub(super) struct SqliteWatch {
    reads: SqlitePool,
    committed: watch::Receiver<Revision>,
    start: Vec<u8>,
    end: Vec<u8>,
    position: Revision,
    interval: Duration,
    last_sent: Instant,
    finished: bool,
}

impl SqliteWatch {
    pub(super) fn new(
        reads: SqlitePool,
        committed: watch::Receiver<Revision>,
        prefix: &str,
        options: WatchOptions,
    ) -> SqliteWatch {
        let start = prefix.as_bytes().to_vec();
        let end = prefix_end(&start).unwrap_or_else(|| ABOVE_ALL_KEYS.to_vec());
        SqliteWatch {
            reads,
            committed,
            start,
            end,
            position: options.after,
            interval: options.progress_interval.max(MIN_PROGRESS_INTERVAL),
            last_sent: Instant::now(),
            finished: false,
        }
    }

    pub(super) fn into_stream(self) -> WatchStream {
        futures::stream::unfold(self, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        })
        .boxed()
    }

    async fn next(&mut self) -> Option<Result<WatchResponse>> {
        if self.finished {
            return None;
        }
        loop {
            let target = *self.committed.borrow_and_update();
            while target > self.position {
                match self.scan(target).await {
                    Ok(events) if events.is_empty() => {}
                    Ok(events) => {
                        self.last_sent = Instant::now();
                        return Some(Ok(WatchResponse {
                            events,
                            progress: self.position,
                        }));
                    }
                    Err(error) => {
                        self.finished = true;
                        return Some(Err(error));
                    }
                }
            }
            let deadline = self.last_sent + self.interval;
            tokio::select! {
                changed = self.committed.changed() => {
                    if changed.is_err() {
                        // The writer is gone: the store was closed.
                        self.finished = true;
                        return Some(Err(closed()));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.last_sent = Instant::now();
                    return Some(Ok(WatchResponse { events: Vec::new(), progress: self.position }));
                }
            }
        }
    }

    /// Reads matching rows in `(position, target]`, at most a page, and advances the position
    /// past what it read.
    async fn scan(&mut self, target: Revision) -> Result<Vec<Event>> {
        let rows = sqlx::query(SCAN_SQL)
            .bind(self.position)
            .bind(target)
            .bind(&self.start[..])
            .bind(&self.end[..])
            .bind(PAGE)
            .fetch_all(&self.reads)
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
        if compacted > self.position {
            return Err(StoreError::Compacted {
                requested: self.position,
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
        self.position = match events.last() {
            Some(last) if events.len() as i64 == PAGE => last.revision(),
            _ => target,
        };
        Ok(events)
    }
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
