//! One watch on etcd: one etcd watch stream, its events translated, and progress made safe.
//!
//! # Progress
//!
//! The stream's progress is the greatest revision known to be delivered: the last event's
//! revision, or the header revision of a progress-only response (etcd's answer to the
//! `request_progress` this watch sends every half interval).
//!
//! etcd from 3.4.24 / 3.5.8 on answers a progress request only once the watch has sent
//! everything up to that revision, and the answer travels in order with the events: it is
//! used as soon as it arrives. Older etcd (Debian's 3.4.23 among them; etcd issue 15220)
//! answers at once with its current revision, even while events at or below it are still
//! queued, or not yet read for a watch catching up from the past. For those the answer is only
//! a *candidate*: it becomes progress after it has been held for [`MIN_HOLD`] (or half the
//! interval, if longer) with no event at or below it arriving meanwhile; an event at or below
//! it proves the watch was behind, and the candidate is dropped. etcd syncs a lagging watch
//! every 100 ms, so the hold covers the race; a catch-up that takes longer than the hold in
//! one pass could still be overtaken, which is why etcd >= 3.4.24 / 3.5.8 is recommended.
//!
//! A response (possibly empty, carrying the progress so far) goes out at least every
//! `progress_interval`.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::client::EtcdStore;
use super::error::{EtcdError, malformed, other};
use crate::{Event, EventKind, KeyValue, Result, Revision, StoreError, WatchResponse, WatchStream};

/// The shortest time a progress candidate from an old etcd is held before it is believed.
const MIN_HOLD: Duration = Duration::from_millis(150);
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
    /// A progress answer not yet believed (old etcd only): its revision and arrival.
    candidate: Option<(Revision, Instant)>,
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
            candidate: None,
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
                        if let (Some((candidate, _)), Some(first)) = (self.candidate, events.first())
                            && first.revision() <= candidate
                        {
                            // The candidate overtook these events: it proves nothing.
                            self.candidate = None;
                        }
                        if let Some(last) = events.last() {
                            self.delivered = self.delivered.max(last.revision());
                        }
                        return self.respond(events);
                    }
                    if response.created() {
                        continue;
                    }
                    let Some(revision) = response.header().map(|header| header.revision()) else {
                        continue;
                    };
                    if self.store.progress_is_ordered {
                        self.delivered = self.delivered.max(revision);
                        return self.respond(Vec::new());
                    }
                    if self.candidate.is_none() {
                        self.candidate = Some((revision, Instant::now()));
                    }
                }
                () = tokio::time::sleep_until(self.next_tick) => {
                    let now = Instant::now();
                    self.next_tick = now + self.tick;
                    if let Some((candidate, arrived)) = self.candidate
                        && now.duration_since(arrived) >= self.hold
                    {
                        self.delivered = self.delivered.max(candidate);
                        self.candidate = None;
                    }
                    if let Err(error) = self.stream.request_progress().await {
                        return self.finish(other(error));
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
