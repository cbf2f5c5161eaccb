//! What a reconcile can fail on, and how soon it is tried again. One type for every
//! controller: each failure is a call that failed — to the API, with kube's error as its
//! source, or to something outside it (a sled's power controller) — named by what it did to
//! which object.

use std::time::Duration;

use kube::runtime::controller::Action as Requeue;

/// A reconcile's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{operation} {object}")]
    Api {
        operation: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// A call outside the API (a power controller) failed or did not confirm what it was asked.
    #[error("{operation} {object}: {message}")]
    Outside {
        operation: &'static str,
        object: String,
        message: String,
    },
}

impl Error {
    /// The error of `operation` on `object`, for `map_err`.
    pub fn api(
        operation: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Error {
        let object = object.into();
        move |source| Error::Api {
            operation,
            object,
            source,
        }
    }

    /// Whether the API refused a write made from a stale read (409).
    pub fn is_conflict(&self) -> bool {
        match self {
            Error::Api { source, .. } => corral_client::idempotent::is_conflict(source),
            Error::Outside { .. } => false,
        }
    }
}

/// After a conflict, how soon the object is planned again: at once, from the fresher object
/// the watch is about to deliver.
pub const CONFLICT_RETRY: Duration = Duration::from_millis(50);
/// After any other failure, how soon the object is tried again.
pub const ERROR_RETRY: Duration = Duration::from_secs(1);

/// The error policy of every controller: a conflict is tried again at once (the cache was
/// behind); anything else after [`ERROR_RETRY`], and logged.
pub fn error_policy(error: &Error, controller: &str) -> Requeue {
    if error.is_conflict() {
        Requeue::requeue(CONFLICT_RETRY)
    } else {
        tracing::warn!(%error, "{controller} reconcile failed");
        Requeue::requeue(ERROR_RETRY)
    }
}
