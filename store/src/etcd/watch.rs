//! One watch on etcd: one etcd watch stream, its events translated, and progress made safe.
//!
//! # Progress
//!
//! The stream's progress is the greatest revision known to be delivered: the last event's
//! revision, or the header revision of a progress-only response (etcd's answer to the
//! `request_progress` this watch sends every half interval, once the last one is answered).
//!
//! etcd from 3.4.24 / 3.5.8 on answers a progress request only once the watch has sent
//! everything up to that revision, and the answer travels in order with the events: it is
//! used as soon as it arrives. Older etcd (Debian's 3.4.23 among them; etcd issue 15220)
//! answers at once with its current revision, even while events at or below it are still
//! queued, or not yet read for a watch catching up from the past: etcd reads a lagging watch's
//! history every 100 ms and sends it at most 1,000 revisions at a time, and such a batch of
//! large values can take seconds to send (1,000 updates of 50 kB values: up to 2 s). For those
//! the answer is only a *candidate*. An event at or below it proves the watch was behind, and
//! drops it; it becomes progress once *confirmed*: the answer to a later request, sent at
//! least a hold after the candidate arrived, comes back with no event before it. The hold is
//! [`CATCH_UP_HOLD`] while etcd may still be catching the watch up (it started at or below
//! etcd's revision when it was created, and no candidate has been confirmed yet), otherwise
//! [`MIN_HOLD`] (or a quarter of the interval, if longer).
//!
//! Why a confirmation and not the clock alone: etcd sends a watch's events and its answers to
//! progress requests from one loop, one after the other, so the confirming answer comes after
//! every event etcd had queued for the watch when the request arrived. Only an event etcd
//! had not yet read from its history by then can still come after it, and the hold gives
//! etcd's 100 ms passes that time. A hold on the clock alone runs out while a slow batch is
//! still being sent, or while a slow consumer leaves arrived events unread: with etcd 3.4.23,
//! both let a hold of 150 ms on the clock report progress ahead of events. Left over: a pass over the history that
//! takes etcd longer than the hold to read (each pass reads all of the history after the
//! watch's position, in every prefix) could still be overtaken, which is why etcd >= 3.4.24 /
//! 3.5.8 is recommended.
//!
//! A response (possibly empty, carrying the progress so far) goes out at least every
//! `progress_interval`.
//!
//! # Invariants
//!
//! - At most one progress request is unanswered at a time, so an answer is known to answer
//!   the last request sent, and when that request was sent.
//! - `delivered` rises only with delivered events, ordered answers (etcd >= 3.4.24 / 3.5.8)
//!   and confirmed candidates.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::client::EtcdStore;
use super::error::{EtcdError, malformed, other};
use crate::{Event, EventKind, KeyValue, Result, Revision, StoreError, WatchResponse, WatchStream};

/// The shortest time between a progress candidate from an old etcd and the request that may
/// confirm it.
const MIN_HOLD: Duration = Duration::from_millis(150);
/// The same while etcd may be catching the watch up from the past: a pass over the history
/// (every 100 ms) must have read and queued its batch before the confirming request arrives.
const CATCH_UP_HOLD: Duration = Duration::from_secs(1);
/// A shorter interval would only spin.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(10);

pub(super) struct EtcdWatch {
    store: EtcdStore,
    stream: etcd_client::WatchStream,
    /// Every event of the range with a revision <= this has been delivered.
    delivered: Revision,
    tick: Duration,
    next_tick: Instant,
    last_sent: Instant,
    hold: Duration,
    /// Until a candidate is confirmed, whether etcd may still be catching this watch up from
    /// the past (it started at or below etcd's revision when it was created).
    catching_up: bool,
    /// A progress answer not yet believed (old etcd only): its revision and arrival.
    candidate: Option<(Revision, Instant)>,
    /// When the progress request not yet answered was sent.
    requested: Option<Instant>,
    finished: bool,
}

/// Why an etcd event could not become a store event.
enum Untranslatable {
    /// An update or delete arrived without its previous value: etcd compacted it.
    PreviousCompacted {
        revision: Revision,
    },
    Error(StoreError),
}

impl EtcdWatch {
    pub(super) fn new(
        store: EtcdStore,
        stream: etcd_client::WatchStream,
        after: Revision,
        progress_interval: Duration,
    ) -> EtcdWatch {
        let tick = progress_interval.max(MIN_PROGRESS_INTERVAL) / 2;
        let now = Instant::now();
        EtcdWatch {
            store,
            stream,
            delivered: after,
            tick,
            next_tick: now + tick,
            last_sent: now,
            hold: (tick / 2).max(MIN_HOLD),
            catching_up: true,
            candidate: None,
            requested: None,
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

    fn finish(&mut self, error: StoreError) -> Option<Result<WatchResponse>> {
        self.finished = true;
        Some(Err(error))
    }

    fn respond(&mut self, events: Vec<Event>) -> Option<Result<WatchResponse>> {
        self.last_sent = Instant::now();
        Some(Ok(WatchResponse {
            events,
            progress: self.delivered,
        }))
    }

    async fn next(&mut self) -> Option<Result<WatchResponse>> {
        if self.finished {
            return None;
        }
        loop {
            tokio::select! {
                message = self.stream.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => {
                            return self.finish(StoreError::Unavailable(Box::new(EtcdError::WatchEnded)));
                        }
                        Err(error) => return self.finish(other(error)),
                    };
                    if response.compact_revision() > 0 {
                        let compacted = response.compact_revision();
                        self.store.note_compacted(compacted);
                        let requested = self.delivered;
                        return self.finish(StoreError::Compacted { requested, compacted });
                    }
                    if response.canceled() {
                        let reason = response.cancel_reason().to_owned();
                        return self.finish(StoreError::Backend(Box::new(EtcdError::WatchCanceled(reason))));
                    }
                    if !response.events().is_empty() {
                        let mut events = Vec::with_capacity(response.events().len());
                        for event in response.events() {
                            match self.translate(event) {
                                Ok(event) => events.push(event),
                                Err(Untranslatable::Error(error)) => return self.finish(error),
                                Err(Untranslatable::PreviousCompacted { revision }) => {
                                    let error = self.store.compacted_error(revision - 1).await;
                                    return self.finish(error);
                                }
                            }
                        }
                        // An event at or below the candidate proves it overtook events; one above
                        // it leaves it behind `delivered`. Either way it is no use.
                        self.candidate = None;
                        if let Some(last) = events.last() {
                            self.delivered = self.delivered.max(last.revision());
                        }
                        return self.respond(events);
                    }
                    if response.created() {
                        // etcd catches up a watch that starts at or below its revision.
                        let current = response.header().map_or(Revision::MAX, |h| h.revision());
                        self.catching_up = self.delivered < current;
                        continue;
                    }
                    let Some(revision) = response.header().map(|header| header.revision()) else {
                        continue;
                    };
                    let requested = self.requested.take();
                    if self.store.progress_is_ordered {
                        self.delivered = self.delivered.max(revision);
                        return self.respond(Vec::new());
                    }
                    let now = Instant::now();
                    let hold = if self.catching_up { CATCH_UP_HOLD } else { self.hold };
                    match self.candidate {
                        Some((candidate, arrived))
                            if requested.is_some_and(|sent| sent >= arrived + hold) =>
                        {
                            // Confirmed: nothing at or below it came before this later answer.
                            self.catching_up = false;
                            self.candidate = Some((revision, now));
                            if candidate > self.delivered {
                                self.delivered = candidate;
                                return self.respond(Vec::new());
                            }
                        }
                        Some(_) => {}
                        None => self.candidate = Some((revision, now)),
                    }
                }
                () = tokio::time::sleep_until(self.next_tick) => {
                    let now = Instant::now();
                    self.next_tick = now + self.tick;
                    if self.requested.is_none() {
                        // `now` is before etcd can have read the request.
                        self.requested = Some(now);
                        if let Err(error) = self.stream.request_progress().await {
                            return self.finish(other(error));
                        }
                    }
                    if now.duration_since(self.last_sent) >= self.tick {
                        return self.respond(Vec::new());
                    }
                }
            }
        }
    }

    fn translate(&self, event: &etcd_client::Event) -> Result<Event, Untranslatable> {
        let kv = event
            .kv()
            .ok_or_else(|| Untranslatable::Error(malformed("the key-value of a watch event")))?;
        let key = self.store.strip(kv.key()).map_err(Untranslatable::Error)?;
        let revision = kv.mod_revision();
        let prev = event
            .prev_kv()
            .map(|prev| self.store.key_value(prev))
            .transpose()
            .map_err(Untranslatable::Error)?;
        match event.event_type() {
            etcd_client::EventType::Put if kv.create_revision() == revision => Ok(Event {
                kind: EventKind::Create,
                kv: KeyValue {
                    key,
                    value: bytes::Bytes::copy_from_slice(kv.value()),
                    create_revision: revision,
                    mod_revision: revision,
                },
                prev: None,
            }),
            etcd_client::EventType::Put => {
                let prev = prev.ok_or(Untranslatable::PreviousCompacted { revision })?;
                Ok(Event {
                    kind: EventKind::Update,
                    kv: KeyValue {
                        key,
                        value: bytes::Bytes::copy_from_slice(kv.value()),
                        create_revision: kv.create_revision(),
                        mod_revision: revision,
                    },
                    prev: Some(prev),
                })
            }
            etcd_client::EventType::Delete => {
                let prev = prev.ok_or(Untranslatable::PreviousCompacted { revision })?;
                Ok(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        mod_revision: revision,
                        ..prev.clone()
                    },
                    prev: Some(prev),
                })
            }
        }
    }
}
