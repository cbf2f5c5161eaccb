//! What two agents say to each other during a transfer: the target's [`TransferRequest`]
//! (`POST /migrations`, JSON) and the source's answer, a stream of [`TransferEvent`]s, one JSON
//! object a line (NDJSON).
//!
//! # Guarantees
//! - A stream that ends without [`TransferEvent::Done`] is a transfer that did not finish,
//!   whatever came before.
//! - Bounded: a request body, or one line of the stream, is at most [`MAX_EVENT_BYTES`]. The
//!   target reads the stream through an [`EventReader`], which holds at most that much and
//!   cuts off a peer that sends a longer line ([`StreamError::TooLong`]) — the transfer fails;
//!   the source sends through a channel of [`EVENTS_IN_FLIGHT`] events.

use bytes::Bytes;
use corral_crds::TransferProgress;
use corral_crds::migration::MIB;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde::{Deserialize, Serialize};

/// Bytes sent per link reservation, so that concurrent transfers interleave.
pub const CHUNK: u64 = 16 * MIB;

/// The longest request body or event line either agent accepts. An event is a few hundred
/// bytes; an error message is the longest.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// How many events the source queues for a slow target before it waits (or, for progress,
/// skips one).
pub const EVENTS_IN_FLIGHT: usize = 16;

/// One event of the source's answer, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TransferEvent {
    Progress {
        progress: TransferProgress,
    },
    /// The guest is paused on the source; the stop-and-copy round is under way.
    Paused {
        progress: TransferProgress,
    },
    /// Every byte is sent: the target holds the whole guest. `pausedAt`: when the source
    /// paused the guest for the last round (the source's clock), for the target's timings.
    Done {
        progress: TransferProgress,
        #[serde(default, rename = "pausedAt", skip_serializing_if = "Option::is_none")]
        paused_at: Option<MicroTime>,
    },
    Error {
        message: String,
    },
}

/// What the target asks the source for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRequest {
    pub migration: String,
    pub namespace: String,
    pub source_vmm: String,
    pub target_vmm: String,
    pub target_sled: String,
    /// Where the target's machine listens for the guest, when its driver moves guests itself
    /// (QEMU: `tcp:HOST:PORT`); absent, the agents carry the transfer (the modelled link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<String>,
}

/// `event` as one line of the stream.
pub fn line(event: &TransferEvent) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("an event serializes");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Why the target stops reading the source's stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the source sent an event line longer than {MAX_EVENT_BYTES} bytes; cut off")]
    TooLong,
    #[error("an unreadable event from the source")]
    Unreadable(#[source] serde_json::Error),
}

/// Splits the source's stream into events, holding at most [`MAX_EVENT_BYTES`] of a line.
#[derive(Debug, Default)]
pub struct EventReader {
    /// The start of a line whose end has not come yet.
    partial: Vec<u8>,
}

impl EventReader {
    /// The events `data` completes, in order.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TransferEvent>, StreamError> {
        let mut events = Vec::new();
        let mut rest = data;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (part, after) = rest.split_at(end);
            if self.partial.len() + part.len() > MAX_EVENT_BYTES {
                return Err(StreamError::TooLong);
            }
            self.partial.extend_from_slice(part);
            let event = serde_json::from_slice(&self.partial).map_err(StreamError::Unreadable)?;
            events.push(event);
            self.partial.clear();
            rest = &after[1..];
        }
        if self.partial.len() + rest.len() > MAX_EVENT_BYTES {
            return Err(StreamError::TooLong);
        }
        self.partial.extend_from_slice(rest);
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_splits_lines_across_frames() {
        let error = line(&TransferEvent::Error {
            message: "a".into(),
        });
        let mut reader = EventReader::default();
        let (first, second) = error.split_at(5);
        assert_eq!(reader.push(first).unwrap(), vec![]);
        let mut more = second.to_vec();
        more.extend_from_slice(&error);
        let events = reader.push(&more).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0],
            TransferEvent::Error {
                message: "a".into()
            }
        );
    }

    #[test]
    fn the_reader_cuts_off_a_line_over_the_bound_however_it_comes() {
        // In small frames without a newline: refused once the line passes the bound, not
        // buffered on.
        let mut reader = EventReader::default();
        let frame = vec![b'x'; 1024];
        let mut pushed = 0;
        let refused = loop {
            match reader.push(&frame) {
                Ok(events) => assert!(events.is_empty()),
                Err(error) => break error,
            }
            pushed += frame.len();
            assert!(pushed <= MAX_EVENT_BYTES, "buffered past the bound");
        };
        assert!(matches!(refused, StreamError::TooLong), "{refused:?}");
        // One frame holding a whole line just over the bound.
        let mut long = vec![b' '; MAX_EVENT_BYTES + 1];
        long.push(b'\n');
        assert!(matches!(
            EventReader::default().push(&long),
            Err(StreamError::TooLong)
        ));
        // A line of exactly the bound is read.
        let event = line(&TransferEvent::Error {
            message: String::new(),
        });
        let mut padded = vec![b' '; MAX_EVENT_BYTES - (event.len() - 1)];
        padded.extend_from_slice(&event);
        assert_eq!(EventReader::default().push(&padded).unwrap().len(), 1);
    }

    #[test]
    fn events_are_one_json_object_a_line() {
        let text = line(&TransferEvent::Error {
            message: "did not converge".into(),
        });
        assert_eq!(
            &text[..],
            b"{\"type\":\"error\",\"message\":\"did not converge\"}\n"
        );
    }
}
