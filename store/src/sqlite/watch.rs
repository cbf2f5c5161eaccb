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
//! - Each read of the log (`scan.rs`) reads the compacted revision in the same snapshot as the
//!   rows; if compaction passed the position, rows may be missing and the watch ends with
//!   `Compacted` instead of delivering an incomplete history.
//! - A response goes out at least every `progress_interval`: events when there are any,
//!   otherwise an empty one carrying the position.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::sqlite::SqlitePool;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::error::closed;
use super::scan::scan;
use super::tail::Batch;
use crate::keys::{ABOVE_ALL_KEYS, prefix_end};
use crate::{Event, Result, Revision, WatchOptions, WatchResponse, WatchStream};

/// A shorter interval would only spin.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(10);

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
