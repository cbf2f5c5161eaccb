//! One watch on a SQLite store: the log past its position, in revision order.
//!
//! A watch reads the log itself only to catch up: when it starts, and when it finds that the
//! store's tail (`tail.rs`) cannot give it what comes next (a batch that starts past its
//! position, or batches it fell too far behind on). Otherwise it takes the tail's batches,
//! which every watch shares: one read of the log per commit for the whole store.
//!
//! # Invariants
//!
//! - **Position** is the revision up to which every matching log row has been delivered. It
//!   only moves to a revision the writer has published (its own reads) or the tail read (a
//!   batch's `upto`), so every row at or below it was committed before it was read: nothing
//!   is skipped.
//! - A batch is taken only if it starts at or below the position; its events at or below the
//!   position are dropped (already delivered). The watch subscribes to the tail before its
//!   first read, so every revision it has not read itself comes in a batch it receives, or
//!   is found missing and read.
//! - Each read of the log reads the compacted revision in the same statement, hence the same
//!   snapshot, as the rows; if compaction passed the position, rows may be missing and the
//!   watch ends with `Compacted` instead of delivering an incomplete history.
//! - A response goes out at least every `progress_interval`: events when there are any,
//!   otherwise an empty one carrying the position.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::error::{SqliteError, closed, decode_key, sql_error};
use super::tail::Batch;
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
    /// The store's tail; `None` once it is gone (the store closed), or if it was.
    tail: Option<broadcast::Receiver<Arc<Batch>>>,
    /// Whether the watch must read the log itself before it can take batches again.
    behind: bool,
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
        tail: Option<broadcast::Receiver<Arc<Batch>>>,
        prefix: &str,
        options: WatchOptions,
    ) -> SqliteWatch {
        let start = prefix.as_bytes().to_vec();
        let end = prefix_end(&start).unwrap_or_else(|| ABOVE_ALL_KEYS.to_vec());
        SqliteWatch {
            reads,
            committed,
            tail,
            behind: true,
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
            if self.behind || self.tail.is_none() {
                match self.catch_up().await {
                    Ok(events) if events.is_empty() => self.behind = false,
                    Ok(events) => return Some(Ok(self.respond(events))),
                    Err(error) => {
                        self.finished = true;
                        return Some(Err(error));
                    }
                }
            }
            let deadline = self.last_sent + self.interval;
            let progress = WatchResponse {
                events: Vec::new(),
                progress: self.position,
            };
            match &mut self.tail {
                Some(tail) => tokio::select! {
                    received = tail.recv() => match received {
                        Ok(batch) => {
                            let events = self.take(&batch);
                            if !events.is_empty() {
                                return Some(Ok(self.respond(events)));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => self.behind = true,
                        Err(broadcast::error::RecvError::Closed) => self.tail = None,
                    },
                    () = tokio::time::sleep_until(deadline) => return Some(Ok(self.respond_with(progress))),
                },
                None => tokio::select! {
                    changed = self.committed.changed() => {
                        if changed.is_err() {
                            // The writer is gone: the store was closed.
                            self.finished = true;
                            return Some(Err(closed()));
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => return Some(Ok(self.respond_with(progress))),
                },
            }
        }
    }

    fn respond(&mut self, events: Vec<Event>) -> WatchResponse {
        let progress = self.position;
        self.respond_with(WatchResponse { events, progress })
    }

    fn respond_with(&mut self, response: WatchResponse) -> WatchResponse {
        self.last_sent = Instant::now();
        response
    }

    /// Reads the log from the position up to the revision last published, a page at a time,
    /// until it finds events or reaches that revision.
    async fn catch_up(&mut self) -> Result<Vec<Event>> {
        let target = *self.committed.borrow_and_update();
        while target > self.position {
            let (events, upto) =
                scan(&self.reads, self.position, target, &self.start, &self.end).await?;
            self.position = upto;
            if !events.is_empty() {
                return Ok(events);
            }
        }
        Ok(Vec::new())
    }

    /// The events of `batch` under the prefix and past the position; a batch that starts past
    /// the position leaves a gap, which the watch reads itself next.
    fn take(&mut self, batch: &Batch) -> Vec<Event> {
        if batch.upto <= self.position {
            return Vec::new();
        }
        if batch.after > self.position {
            self.behind = true;
            return Vec::new();
        }
        let events = batch
            .events
            .iter()
            .filter(|event| {
                let key = event.kv.key.as_bytes();
                event.revision() > self.position && key >= &self.start[..] && key < &self.end[..]
            })
            .cloned()
            .collect();
        self.position = batch.upto;
        events
    }
}

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
