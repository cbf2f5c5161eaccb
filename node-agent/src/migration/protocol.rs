//! What two agents say to each other during a transfer: the target's [`TransferRequest`]
//! (`POST /migrations`, JSON) and the source's answer, a stream of [`TransferEvent`]s, one JSON
//! object a line (NDJSON).
//!
//! # Guarantees
//! - A stream that ends without [`TransferEvent::Done`] is a transfer that did not finish,
//!   whatever came before.

use bytes::Bytes;
use corral_crds::TransferProgress;
use corral_crds::migration::MIB;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde::{Deserialize, Serialize};

/// Bytes sent per link reservation, so that concurrent transfers interleave.
pub const CHUNK: u64 = 16 * MIB;

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

#[cfg(test)]
mod tests {
    use super::*;

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
