//! DELETE of an object or a collection (k8s-api.md §9): the DeleteOptions decoded from the
//! body and query, the deletion done by the object layer (`objects::delete`), the reply
//! rendered — a `Status` once the object is gone, the object while finalizers hold it.

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::read;
use super::render::{json_response, list_body, object_response};
use super::request::{Accept, ResourceRequest};
use crate::error::{ApiError, ApiResult, Reason};
use crate::object;
use crate::objects::{self, DeleteOptions, Deleted, ObjectRef, Propagation};

/// The DeleteOptions of a request: its body (JSON, possibly empty) and its query, which
/// `propagationPolicy`, `orphanDependents` and `dryRun` may also come from.
fn parse_options(request: &ResourceRequest, body: &Bytes) -> ApiResult<DeleteOptions> {
    let doc: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?
    };
    if !doc.is_object() {
        return Err(ApiError::bad_request(
            "the DeleteOptions body must be a JSON object",
        ));
    }
    let policy_text = doc
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| request.query.string("propagationPolicy").map(String::from));
    let mut propagation = match policy_text.as_deref() {
        None => None,
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some("Orphan") => Some(Propagation::Orphan),
        Some(other) => {
            return Err(ApiError::new(
                Reason::Invalid,
                format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            ));
        }
    };
    let orphan_dependents = doc
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| {
            request
                .query
                .get("orphanDependents")
                .map(|_| request.query.bool("orphanDependents"))
        });
    match (orphan_dependents, propagation) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                Reason::Invalid,
                "propagationPolicy: Invalid value: orphanDependents and propagationPolicy cannot both be set",
            ));
        }
        (Some(true), None) => propagation = Some(Propagation::Orphan),
        (Some(false), None) => propagation = Some(Propagation::Background),
        _ => {}
    }
    let dry_run = match doc.get("dryRun") {
        Some(Value::Array(values)) => {
            for v in values {
                if v.as_str() != Some("All") {
                    return Err(ApiError::new(
                        Reason::Invalid,
                        format!("dryRun: Unsupported value: {v}: supported values: \"All\""),
                    ));
                }
            }
            !values.is_empty()
        }
        _ => false,
    } || request.query.dry_run()?;
    Ok(DeleteOptions {
        propagation,
        uid: doc
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        resource_version: doc
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        dry_run,
    })
}

fn success_status(request: &ResourceRequest, last: &Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": object::name(last),
            "group": request.resource.group,
            "kind": request.resource.plural,
            "uid": object::uid(last),
        }
    })
}

pub async fn delete(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    let options = parse_options(&request, &body)?;
    let explicit_no_orphan = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|d| d.get("orphanDependents").and_then(Value::as_bool))
        == Some(false);
    match objects::delete(request.object(), &options).await? {
        Deleted::Removed(last) => Ok(json_response(
            StatusCode::OK,
            &success_status(&request, &last),
        )),
        Deleted::Pending(object) => {
            let status = if explicit_no_orphan {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            Ok(object_response(&request, Accept::Json, status, object))
        }
    }
}

/// DELETE on a collection: deletes every object that matches the selectors.
pub async fn delete_collection(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    let options = parse_options(&request, &body)?;
    let filter = request.filter()?;
    let page = read::collect(&request, &filter).await?;
    let mut items = Vec::new();
    for o in page.objects {
        let object_ref = ObjectRef {
            namespace: object::namespace(&o),
            name: object::name(&o),
            ..request.object()
        };
        match objects::delete(object_ref, &options).await {
            Ok(Deleted::Removed(last)) | Ok(Deleted::Pending(last)) => {
                items.push(request.present(last))
            }
            Err(e) if matches!(e.reason, Reason::NotFound | Reason::Forbidden) => {}
            Err(e) => return Err(e),
        }
    }
    let metadata = json!({"resourceVersion": page.revision.to_string()});
    Ok(json_response(
        StatusCode::OK,
        &list_body(&request, metadata, items),
    ))
}
