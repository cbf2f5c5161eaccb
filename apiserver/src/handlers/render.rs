//! How replies are written: JSON bodies, one object as JSON or as a one-row Table, lists,
//! and what the object layer wrote with its warnings as `Warning` headers.
//!
//! # Invariants
//!
//! - Every object a client receives carries the `apiVersion` and `kind` it asked for.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::request::{Accept, ResourceRequest};
use super::table::{self, IncludeObject};
use crate::objects::{Warnings, WriteKind, Written};

/// A JSON reply.
pub fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("a JSON value always serializes");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The single-object reply, as JSON or as a one-row Table.
pub fn object_response(
    request: &ResourceRequest,
    accept: Accept,
    status: StatusCode,
    object: Value,
) -> Response {
    let object = request.present(object);
    match accept {
        Accept::Json => json_response(status, &object),
        Accept::Table => {
            let version = request
                .resource
                .version(&request.version)
                .expect("version was checked when routing");
            let rv = object
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(json!(""));
            let row = table::row(version, &object, IncludeObject::from_query(&request.query));
            json_response(
                status,
                &table::table(version, vec![row], json!({"resourceVersion": rv}), true),
            )
        }
    }
}

/// A `<Kind>List` of presented objects; `items` is never null.
pub fn list_body(request: &ResourceRequest, metadata: Value, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": request.api_version(),
        "kind": request.resource.list_kind,
        "metadata": metadata,
        "items": items,
    })
}

/// The reply to a create or update: the object as JSON, 201 if it was created, with a
/// `Warning` header per warning.
pub fn written_response(request: &ResourceRequest, written: Written) -> Response {
    let status = match written.kind {
        WriteKind::Created => StatusCode::CREATED,
        WriteKind::Updated => StatusCode::OK,
    };
    let response = object_response(request, Accept::Json, status, written.object);
    with_warnings(response, &written.warnings)
}

fn with_warnings(mut response: Response, warnings: &Warnings) -> Response {
    for w in &warnings.0 {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}
