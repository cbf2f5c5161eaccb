//! The edge: what every request passes before routing, as one layer. A request is, in this
//! order,
//!
//! 1. measured (`measure.rs`): first, so a request refused before routing (401, 429) counts
//!    as well;
//! 2. audited if it changes state (`audit.rs`): before authentication, so an unauthenticated
//!    request is recorded too, with the code it was answered;
//! 3. authenticated (`access.rs`): the [`crate::auth::User`] is on the request from here on;
//! 4. held to flow control (`flow.rs`): after authentication, as kube-apiserver's
//!    max-in-flight filter, so a request is counted once it is known who sent it.
//!
//! One layer calling four steps rather than four layers: an axum layer clones the service
//! inside it and boxes a future for every request, and four of them cost the create path about
//! as much as the steps' own work.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{access, audit, flow, measure};
use crate::server::ApiServer;

/// The edge's state: one per router.
pub struct Edge {
    server: Arc<ApiServer>,
    flow: flow::Flow,
    meter: measure::Meter,
}

impl Edge {
    pub fn new(server: Arc<ApiServer>) -> Edge {
        Edge {
            flow: flow::Flow::new(&server.config),
            meter: measure::Meter::default(),
            server,
        }
    }
}

/// The layer (see the module docs).
pub async fn edge(State(edge): State<Arc<Edge>>, mut request: Request, next: Next) -> Response {
    let served = |group: &str, plural: &str| edge.server.registry.lookup(group, plural).is_some();
    let measured = edge.meter.start(&request, served);
    let audited = audit::start(&edge.server, &mut request);
    let mut response = match access::authenticate(&edge.server, &mut request) {
        Ok(()) => edge.flow.limit(request, next).await,
        Err(refused) => refused.into_response(),
    };
    if let Some(audited) = audited {
        if let Some(id) = audited.id() {
            response.headers_mut().insert(audit::AUDIT_ID, id);
        }
        audited.finish(response.status()).await;
    }
    measured.finish(&response);
    response
}
