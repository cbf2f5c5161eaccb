//! PATCH: the body decoded by its content type into a merge patch, a JSON patch or a
//! server-side apply configuration, patched by the object layer (`objects::patch`), rendered.

use axum::http::{HeaderMap, header};
use axum::response::Response;
use bytes::Bytes;
use corral_apimachinery::validation::FieldError;
use serde_json::Value;

use super::render::written_response;
use super::request::{ResourceRequest, parse_yaml};
use crate::error::{ApiError, ApiResult, Reason};
use crate::objects::{self, Patch};

/// The kinds of PATCH custom resources support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PatchKind {
    Json,
    Merge,
    Apply,
}

fn patch_kind(headers: &HeaderMap) -> ApiResult<PatchKind> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
        _ => Err(ApiError::new(
            Reason::UnsupportedMediaType,
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        )),
    }
}

pub async fn patch(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    let kind = patch_kind(&request.headers)?;
    let dry_run = request.query.dry_run()?;
    if kind != PatchKind::Apply {
        request.refuse_force()?;
    }
    let patch = decode_patch(&request, kind, &body)?;
    let written = objects::patch(&request.write_context(dry_run), &patch).await?;
    Ok(written_response(&request, written))
}

fn decode_patch(request: &ResourceRequest, kind: PatchKind, body: &[u8]) -> ApiResult<Patch> {
    match kind {
        PatchKind::Apply => {
            if request.query.string("fieldManager").is_none() {
                let error = FieldError::required("fieldManager", "is required for apply patch");
                return Err(ApiError::invalid(&request.target(), &[error]));
            }
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the request body is not valid UTF-8"))?;
            let configuration = parse_yaml(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            if !configuration.is_object() {
                return Err(ApiError::bad_request(
                    "the applied configuration must be an object",
                ));
            }
            request.check_depth(&configuration)?;
            if configuration
                .pointer("/metadata/managedFields")
                .is_some_and(|v| !v.is_null())
            {
                return Err(ApiError::bad_request("metadata.managedFields must be nil"));
            }
            Ok(Patch::Apply {
                configuration,
                force: request.query.bool("force"),
            })
        }
        PatchKind::Json | PatchKind::Merge => {
            let document: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            })?;
            if kind == PatchKind::Merge {
                if !document.is_object() {
                    return Err(ApiError::bad_request("Invalid JSON Patch"));
                }
                // A merge patch is shaped like the object it changes.
                request.check_depth(&document)?;
                return Ok(Patch::Merge(document));
            }
            Ok(Patch::Json(document))
        }
    }
}
