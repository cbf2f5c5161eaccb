//! The errors that end a command. Failures of single items that a command reports and goes on
//! from (one bad document among many) are not errors: they are printed and make the command's
//! [`crate::command::Outcome`] `Failed`.
//!
//! A request that failed carries the operation in the message and the server's answer as the
//! source ([`ApiFailure`]), which prints the server's `Status` message rather than kube-rs'
//! debug dump of it.

use std::fmt;
use std::time::Duration;

use crate::manifest::ManifestError;
use crate::target::TargetError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the API server")]
    Connect(#[from] corral_client::ConnectError),
    #[error("discovering the resource types the API server serves")]
    Discovery(#[source] ApiFailure),
    #[error("the server doesn't have a resource type {0:?}")]
    UnknownResource(String),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Flags or arguments that do not make sense together.
    #[error("{0}")]
    Usage(String),
    #[error("{action}")]
    Api {
        action: String,
        #[source]
        source: ApiFailure,
    },
    #[error("timed out after {}s waiting for {what}{}", .after.as_secs_f64(), seen_suffix(.last_seen))]
    Timeout {
        what: String,
        after: Duration,
        last_seen: Option<String>,
    },
    #[error("{0}")]
    Gone(String),
    #[error("encoding output")]
    Encode(#[source] serde_json::Error),
    #[error("encoding output as YAML: {0}")]
    EncodeYaml(String),
    #[error("writing output")]
    Output(#[from] std::io::Error),
}

fn seen_suffix(last: &Option<String>) -> String {
    match last {
        Some(text) => format!(" ({text})"),
        None => String::new(),
    }
}

impl Error {
    /// An error-mapping closure for a failed request: `.map_err(Error::api("getting x"))`.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Api {
            action,
            source: ApiFailure(source),
        }
    }

    /// Whether this is the server saying the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source, .. } if source.is_not_found())
    }
}

/// A failed request, displayed as the server's `Status` message when there is one.
#[derive(Debug)]
pub struct ApiFailure(pub kube::Error);

impl ApiFailure {
    /// The server's `Status`, when the server answered with one.
    pub fn status(&self) -> Option<&kube::core::Status> {
        match &self.0 {
            kube::Error::Api(status) => Some(status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(|s| s.is_not_found())
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

/// A failed request in one line: the server's `Status` message when it answered with one,
/// else each distinct link of the error chain (down to "Connection refused"), since kube-rs
/// errors repeat their source in their own message.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        kube::Error::Api(status) => format!("{} ({})", status.reason, status.code),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let message = cause.to_string();
                if !text.contains(&message) {
                    text.push_str(": ");
                    text.push_str(&message);
                }
                source = cause.source();
            }
            text
        }
    }
}

/// The whole chain is in the message already.
impl std::error::Error for ApiFailure {}
