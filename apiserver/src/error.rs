//! The one error type of the API boundary: every failure a client can see becomes a Kubernetes
//! `Status` object with the right `reason`, `code` and field `causes`.
//!
//! # Invariants
//!
//! - Every non-2xx reply body is a `Status` (kind `Status`, apiVersion `v1`).
//! - Internal errors (the store failed, a bug) are logged with their full cause chain and
//!   reach the client only as a generic 500 `InternalError`; bad input never produces one.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_apimachinery::validation::FieldError;
use serde_json::{Value, json};

use corral_store::StoreError;

/// Which object an error is about, for `details` and messages like `instances.corral.dev "x"`.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub group: String,
    pub plural: String,
    pub kind: String,
    pub name: String,
}

impl Target {
    /// `instances.corral.dev` (or `namespaces` for the core group), as Kubernetes prints it.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Instance.corral.dev` as used in Invalid messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotFound,
    AlreadyExists,
    Conflict,
    Invalid,
    BadRequest,
    Unauthorized,
    Forbidden,
    UnsupportedMediaType,
    NotAcceptable,
    MethodNotAllowed,
    Expired,
    Gone,
    RequestEntityTooLarge,
    TooManyRequests,
    Timeout,
    ServiceUnavailable,
    InternalError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "NotFound",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Invalid => "Invalid",
            Reason::BadRequest => "BadRequest",
            Reason::Unauthorized => "Unauthorized",
            Reason::Forbidden => "Forbidden",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::NotAcceptable => "NotAcceptable",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::Expired => "Expired",
            Reason::Gone => "Gone",
            Reason::RequestEntityTooLarge => "RequestEntityTooLarge",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::Timeout => "Timeout",
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::InternalError => "InternalError",
        }
    }

    pub fn code(self) -> u16 {
        match self {
            Reason::NotFound => 404,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Invalid => 422,
            Reason::BadRequest => 400,
            Reason::Unauthorized => 401,
            Reason::Forbidden => 403,
            Reason::UnsupportedMediaType => 415,
            Reason::NotAcceptable => 406,
            Reason::MethodNotAllowed => 405,
            Reason::Expired | Reason::Gone => 410,
            Reason::RequestEntityTooLarge => 413,
            Reason::TooManyRequests => 429,
            Reason::Timeout => 504,
            Reason::ServiceUnavailable => 503,
            Reason::InternalError => 500,
        }
    }
}

/// One entry of `details.causes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub kind: String,
    pub message: String,
    pub field: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub reason: Reason,
    pub message: String,
    /// Boxed: errors travel by value through every handler, so they stay small.
    pub target: Option<Box<Target>>,
    pub causes: Vec<Cause>,
    /// When to try again: `details.retryAfterSeconds` and a `Retry-After` header.
    pub retry_after_seconds: Option<u32>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> ApiError {
        ApiError {
            reason,
            message: message.into(),
            target: None,
            causes: Vec::new(),
            retry_after_seconds: None,
        }
    }

    /// 429: the server is at a limit for now; try again in `retry_after_seconds`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> ApiError {
        ApiError {
            retry_after_seconds: Some(retry_after_seconds),
            ..ApiError::new(Reason::TooManyRequests, message)
        }
    }

    pub fn with_target(mut self, target: &Target) -> ApiError {
        self.target = Some(Box::new(target.clone()));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::BadRequest, message)
    }

    /// The generic 404 for a path that names no resource.
    pub fn no_route() -> ApiError {
        ApiError::new(
            Reason::NotFound,
            "the server could not find the requested resource",
        )
    }

    pub fn not_found(target: &Target) -> ApiError {
        ApiError::new(
            Reason::NotFound,
            format!(
                "{} \"{}\" not found",
                target.qualified_resource(),
                target.name
            ),
        )
        .with_target(target)
    }

    pub fn already_exists(target: &Target) -> ApiError {
        ApiError::new(
            Reason::AlreadyExists,
            format!(
                "{} \"{}\" already exists",
                target.qualified_resource(),
                target.name
            ),
        )
        .with_target(target)
    }

    pub fn conflict(target: &Target, why: &str) -> ApiError {
        ApiError::new(
            Reason::Conflict,
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {why}",
                target.qualified_resource(),
                target.name
            ),
        )
        .with_target(target)
    }

    pub fn modified(target: &Target) -> ApiError {
        ApiError::conflict(
            target,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 Invalid with one cause per field error, in Kubernetes' message form.
    pub fn invalid(target: &Target, errors: &[FieldError]) -> ApiError {
        let joined = corral_apimachinery::validation::aggregate_message(errors);
        let message = format!(
            "{} \"{}\" is invalid: {joined}",
            target.qualified_kind(),
            target.name
        );
        let causes = errors
            .iter()
            .map(|e| Cause {
                kind: e.cause_type().to_string(),
                message: e.error_body(),
                field: e.field.clone(),
            })
            .collect();
        ApiError {
            causes,
            ..ApiError::new(Reason::Invalid, message).with_target(target)
        }
    }

    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::Expired, message)
    }

    pub fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> ApiError {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "{context}");
        ApiError::new(
            Reason::InternalError,
            format!("Internal error occurred: {context}"),
        )
    }

    /// Maps store errors that are not about object semantics (those are handled by callers).
    pub fn from_store(error: StoreError, target: &Target) -> ApiError {
        match error {
            StoreError::NotFound { .. } => ApiError::not_found(target),
            StoreError::AlreadyExists { .. } => ApiError::already_exists(target),
            StoreError::Conflict { .. } => ApiError::modified(target),
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "The resourceVersion for the provided list is too old. (requested {requested}, compacted {compacted})"
            )),
            StoreError::FutureRevision { requested, current } => ApiError::new(
                Reason::Timeout,
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            StoreError::Unavailable(ref e) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(
                    Reason::ServiceUnavailable,
                    "storage is unavailable, try again",
                )
            }
            ref e @ StoreError::Backend(_) => ApiError::internal("storage failed", e),
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut details = serde_json::Map::new();
        if let Some(t) = &self.target {
            if !t.name.is_empty() {
                details.insert("name".into(), json!(t.name));
            }
            details.insert("group".into(), json!(t.group));
            details.insert("kind".into(), json!(t.plural));
        }
        if let Some(seconds) = self.retry_after_seconds {
            details.insert("retryAfterSeconds".into(), json!(seconds));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.kind, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
            "code": self.reason.code(),
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.reason.as_str(),
            self.reason.code(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code =
            StatusCode::from_u16(self.reason.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut response = (code, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
