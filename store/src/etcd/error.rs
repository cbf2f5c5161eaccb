//! The etcd backend's own failures, and what an etcd error means for the store: a read at a
//! revision etcd compacted or has not reached yet (the callers that name a revision handle
//! those), a transport failure or timeout (`Unavailable`: the caller may retry), or anything
//! else (`Backend`).

use std::time::Duration;

use crate::StoreError;

/// Failures particular to this backend; they reach callers as the `#[source]` of a
/// [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd request failed")]
    Request(#[source] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd returned the key {key:?}, outside the prefix")]
    KeyOutsidePrefix { key: String },
    #[error("a key under the prefix is not UTF-8")]
    KeyNotUtf8(#[source] std::string::FromUtf8Error),
    #[error("etcd's answer lacks {0}")]
    Malformed(&'static str),
    #[error("etcd canceled the watch: {0}")]
    WatchCanceled(String),
    #[error("etcd ended the watch stream")]
    WatchEnded,
    #[error("reading {path} for TLS to etcd")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What an etcd error means for the store.
pub(super) enum Failure {
    Compacted,
    FutureRevision,
    Other(StoreError),
}

pub(super) fn classify(error: etcd_client::Error) -> Failure {
    use tonic::Code;
    let unavailable = match &error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("required revision has been compacted") {
                return Failure::Compacted;
            }
            if message.contains("required revision is a future revision") {
                return Failure::FutureRevision;
            }
            // A status that carries a source error was made on this side from a transport
            // failure (a broken connection reads as `Unknown` with a hyper error inside).
            let transport = std::error::Error::source(status).is_some();
            transport
                || matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
                )
        }
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_) => true,
        _ => false,
    };
    let error = Box::new(EtcdError::Request(error));
    Failure::Other(if unavailable {
        StoreError::Unavailable(error)
    } else {
        StoreError::Backend(error)
    })
}

pub(super) fn other(error: etcd_client::Error) -> StoreError {
    match classify(error) {
        Failure::Other(error) => error,
        // Only reads at a revision and compactions can fail these ways; they handle them.
        Failure::Compacted => StoreError::Backend(Box::new(EtcdError::Malformed(
            "a request that names no revision failed as compacted",
        ))),
        Failure::FutureRevision => StoreError::Backend(Box::new(EtcdError::Malformed(
            "a request that names no revision failed as a future revision",
        ))),
    }
}

pub(super) fn malformed(what: &'static str) -> StoreError {
    StoreError::Backend(Box::new(EtcdError::Malformed(what)))
}
