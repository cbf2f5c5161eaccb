//! What a controller's reconcile can fail on, and how soon it is tried again. One type for
//! every controller: each failure is an API call that failed, named by what it did to which
//! object, with kube's error as its source.

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
        matches!(self, Error::Api { source: kube::Error::Api(status), .. } if status.code == 409)
    }
}

/// After a failed reconcile: a conflict is tried again at once (the cache was behind, and the
/// next plan is made from the fresher object); anything else after a second, and logged.
pub fn requeue(error: &Error, controller: &str) -> Requeue {
    if error.is_conflict() {
        Requeue::requeue(Duration::from_millis(50))
    } else {
        tracing::warn!(%error, "{controller} reconcile failed");
        Requeue::requeue(Duration::from_secs(1))
    }
}
