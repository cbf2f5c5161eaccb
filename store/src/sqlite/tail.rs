//! The log's tail: read once per commit, over all keys, for every watch of the store.
//!
//! Every watch follows the revision the writer publishes after each commit. Were each to read
//! the new rows itself, a commit would cost one statement per watch; the tail reads them once
//! and hands them to every watch as a [`Batch`], and each watch keeps the events under its
//! prefix (`watch.rs`).
//!
//! # Invariants
//!
//! - A batch holds every log row in `(after, upto]`, in revision order, each with its previous
//!   value: it is what a watch's own scan of that range would read, for all keys.
//! - Batches are sent in increasing `upto`. They are usually contiguous (each `after` is the
//!   previous `upto`), but not always: the tail reads nothing while no watch listens, skips
//!   rows compaction removed, and on a failed read sends an empty batch whose `after` is past
//!   what it could not read. A watch therefore takes a batch only if the batch starts at or
//!   below its position, and otherwise reads the missing range itself; so does a watch that
//!   fell more than [`CAPACITY`] batches behind (`Lagged`). Nothing is skipped either way.
//! - The tail ends once the writer is gone (the store closed); receivers then see `Closed`.

use std::sync::Arc;

use sqlx::sqlite::SqlitePool;
use tokio::sync::{broadcast, watch};

use super::scan::scan;
use crate::keys::ABOVE_ALL_KEYS;
use crate::{Event, Revision, StoreError};

/// Batches a watch may fall behind before it reads for itself: about a second of commits
/// under a heavy write load.
const CAPACITY: usize = 1024;

/// The log rows in `(after, upto]`, for all keys.
#[derive(Debug)]
pub(super) struct Batch {
    pub after: Revision,
    pub upto: Revision,
    pub events: Vec<Event>,
}

/// Starts the tail at `position` (the current revision), following `committed`. Watches
/// subscribe through the returned sender while the tail runs.
pub(super) fn spawn(
    reads: SqlitePool,
    committed: watch::Receiver<Revision>,
    position: Revision,
) -> broadcast::WeakSender<Arc<Batch>> {
    let (sender, _) = broadcast::channel(CAPACITY);
    let weak = sender.downgrade();
    tokio::spawn(run(reads, committed, sender, position));
    weak
}

async fn run(
    reads: SqlitePool,
    mut committed: watch::Receiver<Revision>,
    sender: broadcast::Sender<Arc<Batch>>,
    mut position: Revision,
) {
    while committed.changed().await.is_ok() {
        let target = *committed.borrow_and_update();
        if sender.receiver_count() == 0 {
            // Nobody to read for; a watch that subscribes later reads the range itself.
            position = target;
            continue;
        }
        while position < target {
            match scan(&reads, position, target, b"", ABOVE_ALL_KEYS).await {
                Ok((events, upto)) => {
                    // No receiver left is not an error: the next commit finds none either.
                    let _ = sender.send(Arc::new(Batch {
                        after: position,
                        upto,
                        events,
                    }));
                    position = upto;
                }
                Err(StoreError::Compacted { compacted, .. }) => {
                    // The rows above the compacted revision are whole; a watch below it
                    // reads for itself and learns it was compacted.
                    position = compacted;
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the log's tail failed; watches read for themselves");
                    let _ = sender.send(Arc::new(Batch {
                        after: target,
                        upto: target,
                        events: Vec::new(),
                    }));
                    position = target;
                }
            }
        }
    }
}
