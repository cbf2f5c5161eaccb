//! The audit trail at the HTTP edge: the step that records every request that changes state
//! (`crate::audit` says what and how), and `GET /audit`, which reads the trail back.
//!
//! The audit step comes right after measuring at the edge (`edge.rs`): it sees every request
//! (an unauthenticated one, one refused by flow control) and the code it was answered with.
//! What it cannot see from outside — who the request came from, whom it impersonated, the
//! object it named — the inner steps write into the request's [`Pending`] as they learn it.
//!
//! # Invariants
//!
//! - A mutating request is answered only after its Event is queued (`audit::Log::record`),
//!   with the Event's ID in its `Audit-ID` header (the client's own, if it sent one).
//! - `GET /audit` is an ordinary non-resource path: authenticated and authorized (RBAC
//!   `nonResourceURLs: [/audit]`, verb `get`) like any other.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::audit::{self, Event, Filter, ObjectRef, ResponseStatus};
use crate::auth::User;
use crate::error::{ApiError, Reason};
use crate::query::Query;
use crate::server::ApiServer;

/// The most Events one read returns (the most recent), and the default.
const READ_LIMIT: usize = 10_000;
const READ_DEFAULT: usize = 500;

/// The header that carries a request's audit ID: taken from the request when its client sent
/// one (so a client's logs and the trail can be joined), made up otherwise, and sent back with
/// the answer — as kube-apiserver does.
pub const AUDIT_ID: &str = "audit-id";
/// The longest audit ID taken from a client; a longer one is replaced by a new one.
const MAX_AUDIT_ID: usize = 128;

/// What the inner layers learn about a request for its Event.
#[derive(Clone, Debug, Default)]
pub struct Pending(Arc<Mutex<Learned>>);

#[derive(Debug, Default)]
struct Learned {
    user: Option<User>,
    impersonated: Option<User>,
    verb: Option<String>,
    object: Option<ObjectRef>,
}

impl Pending {
    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.0.lock().expect("audit slot lock")
    }

    /// Who sent the request.
    pub fn user(&self, user: &User) {
        self.learned().user = Some(user.clone());
    }

    /// Whom the request acts as.
    pub fn impersonated(&self, user: &User) {
        self.learned().impersonated = Some(user.clone());
    }

    /// The verb and the object the request names.
    pub fn object(&self, verb: &str, object: ObjectRef) {
        let mut learned = self.learned();
        learned.verb = Some(verb.to_string());
        learned.object = Some(object);
    }

    /// The name of the object a create made (not in its path).
    pub fn created(&self, name: &str) {
        if let Some(object) = &mut self.learned().object {
            object.name = name.to_string();
        }
    }
}

fn mutating(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Starts the Event of `request` if the server keeps a trail and the request changes state,
/// and gives the inner steps its [`Pending`].
pub fn start<'a>(server: &'a ApiServer, request: &mut Request) -> Option<Audited<'a>> {
    let log = server.audit.as_ref()?;
    if !mutating(request.method()) {
        return None;
    }
    let received = jiff::Timestamp::now();
    let pending = Pending::default();
    request.extensions_mut().insert(pending.clone());
    let uri = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let id = request
        .headers()
        .get(AUDIT_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= MAX_AUDIT_ID)
        .map_or_else(crate::object::new_uid, String::from);
    let mut event = Event::new(id, uri, received);
    event.verb = request.method().as_str().to_lowercase();
    event.user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        event.source_ips.push(peer.ip().to_string());
    }
    Some(Audited {
        log,
        event,
        pending,
    })
}

/// The Event of a request being answered.
pub struct Audited<'a> {
    log: &'a audit::Log,
    event: Event,
    pending: Pending,
}

impl Audited<'_> {
    /// The request's audit ID, for the `Audit-ID` header of its answer.
    pub fn id(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.event.audit_id).ok()
    }

    /// Completes the Event with what the inner steps learned and the `code` the request was
    /// answered with, and queues it: the request is answered only after this returns.
    pub async fn finish(self, code: StatusCode) {
        let Audited {
            log,
            mut event,
            pending,
        } = self;
        let learned = std::mem::take(&mut *pending.learned());
        if let Some(verb) = learned.verb {
            event.verb = verb;
        }
        event.user = learned.user.unwrap_or_default();
        event.impersonated_user = learned.impersonated;
        event.object_ref = learned.object;
        event.response_status = ResponseStatus::code(code.as_u16());
        event.stage_timestamp = audit::micros(jiff::Timestamp::now());
        log.record(&event).await;
    }
}

/// `GET /audit?resource=&namespace=&name=&user=&verb=&limit=`: the matching Events, oldest
/// first, as an `audit.k8s.io/v1` `EventList` (at most `limit`, the most recent; default 500,
/// at most 10,000).
pub async fn read(State(server): State<Arc<ApiServer>>, request: Request) -> Response {
    let Some(log) = server.audit.as_ref() else {
        return ApiError::new(
            Reason::NotFound,
            "this API server keeps no audit log (start it with --audit-log-path)",
        )
        .into_response();
    };
    let query = Query::parse(request.uri().query());
    let given = |key: &str| query.get(key).filter(|v| !v.is_empty()).map(String::from);
    let limit = match given("limit").map(|v| v.parse::<usize>()) {
        None => READ_DEFAULT,
        Some(Ok(limit)) if (1..=READ_LIMIT).contains(&limit) => limit,
        Some(_) => {
            return ApiError::bad_request(format!(
                "limit: must be a whole number from 1 to {READ_LIMIT}"
            ))
            .into_response();
        }
    };
    let filter = Filter {
        resource: given("resource"),
        namespace: given("namespace"),
        name: given("name"),
        user: given("user"),
        verb: given("verb"),
        limit,
    };
    match log.read(filter).await {
        Ok(items) => axum::Json(json!({
            "kind": "EventList",
            "apiVersion": "audit.k8s.io/v1",
            "metadata": {},
            "items": items,
        }))
        .into_response(),
        Err(error) => ApiError::internal("reading the audit log", &error).into_response(),
    }
}
