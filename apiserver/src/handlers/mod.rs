//! HTTP routing: paths are parsed by hand (not by the router) because Kubernetes paths are
//! ambiguous to a pattern router — `/api/v1/namespaces/x` is an object, while
//! `/api/v1/namespaces/x/events` is a collection inside it.
//!
//! Every handler decodes its request, calls the object layer (`objects`) or reads the store
//! and the watch cache, and renders the reply (`render.rs`); a `ResourceRequest`
//! (`request.rs`) is what routing hands it. Every route is behind the edge (`edge.rs`): each
//! request is measured, audited, authenticated and held to flow control before routing.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use self::path::{ResourcePath, parse_resource_path};
use self::request::{Accept, ResourceRequest};
use crate::auth::User;
use crate::error::{ApiError, ApiResult, Reason};
use crate::objects::Subresource;
use crate::query::Query;
use crate::server::ApiServer;

mod access;
pub mod audit;
mod delete;
mod discovery;
mod edge;
pub mod flow;
mod measure;
mod openapi;
mod patch;
mod path;
mod protobuf;
mod read;
mod render;
mod request;
mod table;
mod watch;
mod write;

pub fn router(server: Arc<ApiServer>) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/openapi/v2", get(|| async { ApiError::no_route() }))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/{*path}", get(openapi::document))
        .route("/audit", get(audit::read))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(),
                )
            }),
        )
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(edge::Edge::new(server.clone())),
            edge::edge,
        ))
        .with_state(server)
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::info_span!("request", method = %request.method(), uri = %request.uri())
                })
                .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG)),
        )
}

fn negotiate(headers: &HeaderMap) -> ApiResult<Accept> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Accept::Json);
    };
    let mut json = false;
    for part in accept.split(',') {
        let part = part.trim();
        let media = part.split(';').next().unwrap_or("").trim();
        if part.contains("as=Table")
            && part.contains("g=meta.k8s.io")
            && media == "application/json"
        {
            return Ok(Accept::Table);
        }
        if media.is_empty()
            || media == "*/*"
            || media == "application/*"
            || (media == "application/json" && !part.contains("as="))
        {
            json = true;
        }
    }
    if json {
        Ok(Accept::Json)
    } else {
        Err(ApiError::new(
            Reason::NotAcceptable,
            format!(
                "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io (requested {accept})"
            ),
        ))
    }
}

async fn dispatch(State(server): State<Arc<ApiServer>>, request: Request) -> Response {
    match route(server, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn route(server: Arc<ApiServer>, request: Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let query = Query::parse(parts.uri.query());
    let user = parts.extensions.get::<User>().cloned();
    if matches!(
        segments.as_slice(),
        ["api"] | ["apis"] | ["api", "v1"] | ["apis", _] | ["apis", _, _]
    ) {
        access::authorize_path(&server, user.as_ref(), &parts.method, &path)?;
    }
    let (group, version, rest): (&str, &str, &[&str]) = match segments.as_slice() {
        ["api"] => return Ok(discovery::api()),
        ["apis"] => return discovery::apis(&server, &parts.headers),
        ["api", "v1"] => return discovery::resource_list(&server, "", "v1"),
        ["apis", group] => return discovery::group(&server, group),
        ["apis", group, version] => return discovery::resource_list(&server, group, version),
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (group, version, rest),
        _ => return Err(ApiError::no_route()),
    };
    let ResourcePath {
        namespace,
        plural,
        name,
        subresource: sub,
    } = parse_resource_path(group, rest).ok_or_else(ApiError::no_route)?;
    let pending = parts.extensions.get::<audit::Pending>().cloned();
    if let Some(pending) = &pending {
        let verb = access::verb(&parts.method, name.is_some(), query.bool("watch"));
        pending.object(
            verb,
            crate::audit::ObjectRef {
                resource: plural.to_string(),
                namespace: namespace.unwrap_or_default().to_string(),
                name: name.unwrap_or_default().to_string(),
                api_group: group.to_string(),
                api_version: version.to_string(),
                subresource: sub.unwrap_or_default().to_string(),
            },
        );
    }
    // The self reviews behind `kubectl auth can-i` and `whoami` are answered, never stored.
    if version == "v1"
        && (namespace, name, sub) == (None, None, None)
        && let Some(review) = access::Review::of(group, plural)
    {
        let body = read_body(body, server.config.max_body_bytes).await?;
        return access::review(
            &server,
            user.as_ref(),
            review,
            &parts.method,
            &parts.headers,
            &body,
        );
    }
    let resource = server
        .registry
        .lookup(group, plural)
        .ok_or_else(ApiError::no_route)?
        .clone();
    if resource.version(version).is_none() {
        return Err(ApiError::no_route());
    }
    // A namespaced path for a cluster-scoped kind, or a bare name for a namespaced kind, names
    // no resource.
    if namespace.is_some() != resource.namespaced && name.is_some() {
        return Err(ApiError::no_route());
    }
    if namespace.is_some() && !resource.namespaced {
        return Err(ApiError::no_route());
    }
    let subresource = match sub {
        None => None,
        Some("status") if resource.has_status => Some(Subresource::Status),
        Some(_) => return Err(ApiError::no_route()),
    };
    let accept = negotiate(&parts.headers)?;
    let request = ResourceRequest {
        server: server.clone(),
        resource,
        version: version.to_string(),
        namespace: namespace.map(String::from),
        name: name.map(String::from),
        subresource,
        query,
        headers: parts.headers,
        user,
        audit: pending,
    };
    let method = parts.method;
    let is_object = request.name.is_some();
    access::authorize_request(&request, &method)?;
    let body_needed = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let body = if body_needed {
        read_body(body, server.config.max_body_bytes).await?
    } else {
        Bytes::new()
    };
    match (method, is_object) {
        (Method::GET, false) if request.query.bool("watch") => watch::watch(request, accept).await,
        (Method::GET, false) => read::list(request, accept).await,
        (Method::POST, false) if request.subresource.is_none() => {
            write::create(request, body).await
        }
        (Method::DELETE, false) if request.resource.supports_delete_collection() => {
            delete::delete_collection(request, body).await
        }
        (Method::GET, true) => read::get(request, accept).await,
        (Method::PUT, true) => write::replace(request, body).await,
        (Method::PATCH, true) => patch::patch(request, body).await,
        (Method::DELETE, true) if request.subresource.is_none() => {
            delete::delete(request, body).await
        }
        (method, _) => Err(ApiError::new(
            Reason::MethodNotAllowed,
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

/// The whole request body, at most `limit` bytes; past it a 413. The rest of an oversized body
/// is read and dropped, up to [`DRAIN_LIMIT`] more bytes, before the answer: a connection
/// closed with unread data in it is reset, and a reset can destroy the 413 on its way to the
/// client before the client reads it.
async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            Reason::RequestEntityTooLarge,
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    let mut body = body.into_data_stream();
    let mut collected = bytes::BytesMut::new();
    let mut dropped = 0usize;
    while let Some(chunk) = futures::StreamExt::next(&mut body).await {
        let Ok(chunk) = chunk else {
            return Err(too_large_or_broken(collected.len() > limit, limit));
        };
        if collected.len() + chunk.len() <= limit && dropped == 0 {
            collected.extend_from_slice(&chunk);
            continue;
        }
        dropped += chunk.len();
        if dropped > DRAIN_LIMIT {
            break;
        }
    }
    if dropped > 0 {
        return Err(too_large());
    }
    Ok(collected.freeze())
}

/// How much of an oversized body is read and dropped before the 413 (see [`read_body`]).
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

fn too_large_or_broken(too_large: bool, limit: usize) -> ApiError {
    if too_large {
        ApiError::new(
            Reason::RequestEntityTooLarge,
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    } else {
        ApiError::bad_request("the request body could not be read")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation_prefers_tables_and_refuses_protobuf_only() {
        let mut h = HeaderMap::new();
        assert_eq!(negotiate(&h).unwrap(), Accept::Json);
        h.insert(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert_eq!(negotiate(&h).unwrap(), Accept::Table);
        h.insert(
            header::ACCEPT,
            "application/vnd.kubernetes.protobuf,application/json"
                .parse()
                .unwrap(),
        );
        assert_eq!(negotiate(&h).unwrap(), Accept::Json);
        h.insert(
            header::ACCEPT,
            "application/vnd.kubernetes.protobuf".parse().unwrap(),
        );
        assert_eq!(negotiate(&h).unwrap_err().reason, Reason::NotAcceptable);
    }
}
