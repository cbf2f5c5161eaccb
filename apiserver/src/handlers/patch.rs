//! PATCH: merge patch (RFC 7386), JSON patch (RFC 6902) and server-side apply, on objects and
//! their status subresource. A patch is computed against a fresh read and stored through the
//! same pipeline as a PUT (`write.rs`); when another write wins the race, it is recomputed.
//!
//! # Invariants
//!
//! - A `resourceVersion` inside a patch is a precondition: a mismatch is 409, never a retry.
//! - Apply to a missing object creates it (main resource only; `/status` is 404).
//! - Server-side apply owns exactly the fields of the applied configuration; fields the manager
//!   applied before and no longer sends are removed unless another manager owns them.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use corral_apimachinery::managed::{self, ApplyOptions};
use corral_apimachinery::patch::{self, PatchError};
use corral_apimachinery::validation::FieldError;
use serde_json::{Value, json};

use super::read::present;
use super::write::{
    Warnings, check_namespace_open, check_type_meta, commit, default_and_validate,
    handle_unknown_fields, managed_fields_of, prepare_create, prepare_update, raw_schema,
    read_current, set_managed_fields, subresource_name, with_warnings,
};
use super::{Accept, ResourceRequest, read};
use crate::error::{ApiError, ApiResult, Reason};
use crate::object;

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

/// How many times a patch is recomputed from a fresh read when another write got in first.
const PATCH_RETRIES: usize = 16;

pub async fn patch(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    let kind = patch_kind(&request.headers)?;
    let dry_run = request.query.dry_run()?;
    let target = request.target();
    let force = request.query.bool("force");
    if force && kind != PatchKind::Apply {
        return Err(ApiError::new(
            Reason::Invalid,
            "force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    let patch_doc: Value = match kind {
        PatchKind::Apply => {
            if request.query.string("fieldManager").is_none() {
                let error = FieldError::required("fieldManager", "is required for apply patch");
                return Err(ApiError::invalid(&target, &[error]));
            }
            let text = std::str::from_utf8(&body)
                .map_err(|_| ApiError::bad_request("the request body is not valid UTF-8"))?;
            let doc: Value = serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            if !doc.is_object() {
                return Err(ApiError::bad_request(
                    "the applied configuration must be an object",
                ));
            }
            if doc
                .pointer("/metadata/managedFields")
                .is_some_and(|v| !v.is_null())
            {
                return Err(ApiError::bad_request("metadata.managedFields must be nil"));
            }
            doc
        }
        PatchKind::Json | PatchKind::Merge => serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?,
    };
    if kind == PatchKind::Merge && !patch_doc.is_object() {
        return Err(ApiError::bad_request("Invalid JSON Patch"));
    }
    let mut warnings = Warnings::default();
    for _ in 0..PATCH_RETRIES {
        let current = read_current(&request).await?;
        let Some(current) = current else {
            if kind == PatchKind::Apply && request.subresource.is_none() {
                match apply_create(&request, &patch_doc, force, dry_run).await {
                    // Another writer created it first: apply to what it created.
                    Err(e) if e.reason == Reason::AlreadyExists => continue,
                    outcome => return outcome,
                }
            }
            return Err(ApiError::not_found(&target));
        };
        let presented = present(&request, current.object.clone());
        let (desired, track) = match kind {
            PatchKind::Merge => (
                patch::merge_patch(&presented, &patch_doc).map_err(patch_error)?,
                true,
            ),
            PatchKind::Json => (
                patch::json_patch(&presented, &patch_doc).map_err(patch_error)?,
                true,
            ),
            PatchKind::Apply => (
                apply_to(&request, Some(&presented), &patch_doc, force, &mut warnings)?,
                false,
            ),
        };
        // A resourceVersion in the patch is a precondition.
        let wanted_rv = desired
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        let precondition = wanted_rv.filter(|rv| {
            Some(rv.as_str())
                != presented
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        });
        if precondition.is_some() {
            return Err(ApiError::modified(&target));
        }
        let result = match prepare_update(&request, &current.object, desired, &mut warnings, track)?
        {
            None => current.object.clone(),
            Some(next) if dry_run => next,
            Some(next) => match commit(&request, &current, next).await {
                Ok(stored) => stored,
                Err(e) if e.reason == Reason::Conflict => continue,
                Err(e) => return Err(e),
            },
        };
        return Ok(with_warnings(
            read::object_response(&request, Accept::Json, StatusCode::OK, result),
            &warnings,
        ));
    }
    Err(ApiError::modified(&target))
}

fn patch_error(error: PatchError) -> ApiError {
    match error {
        PatchError::Apply { .. } => ApiError::new(Reason::Invalid, error.to_string()),
        PatchError::TooManyOperations { .. } => {
            ApiError::new(Reason::RequestEntityTooLarge, error.to_string())
        }
        _ => ApiError::bad_request(error.to_string()),
    }
}

/// Server-side apply of `applied` onto `live` (None: the object does not exist yet).
fn apply_to(
    request: &ResourceRequest,
    live: Option<&Value>,
    applied: &Value,
    force: bool,
    warnings: &mut Warnings,
) -> ApiResult<Value> {
    let target = request.target();
    check_type_meta(request, applied)?;
    let mut applied = applied.clone();
    handle_unknown_fields(request, &mut applied, warnings)?;
    if let Some(name) = object::meta_str(&applied, "name")
        && name != request.object_name()
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            request.object_name()
        )));
    }
    let existing = live.map(managed_fields_of).unwrap_or_default();
    let outcome = managed::apply(
        live,
        &applied,
        &request.field_manager(),
        &existing,
        ApplyOptions {
            force,
            subresource: subresource_name(request),
            api_version: request.api_version(),
            now: object::now_rfc3339(),
        },
        raw_schema(request),
    )
    .map_err(|e| match e {
        managed::ApplyError::Conflicts(ref conflicts) => {
            let mut error = ApiError::new(Reason::Conflict, e.to_string()).with_target(&target);
            error.causes = conflicts
                .iter()
                .map(|c| crate::error::Cause {
                    kind: "FieldManagerConflict".into(),
                    message: format!("conflict with \"{}\"", c.manager),
                    field: c.field.clone(),
                })
                .collect();
            error
        }
        other => ApiError::bad_request(other.to_string()),
    })?;
    let mut object = outcome.object;
    set_managed_fields(&mut object, outcome.managed_fields);
    if let Some(live) = live {
        // Keep the live metadata the server owns; apply never sets it.
        let rv = live.pointer("/metadata/resourceVersion").cloned();
        if let Some(rv) = rv {
            object::meta_mut(&mut object).insert("resourceVersion".into(), rv);
        }
    }
    object::meta_mut(&mut object).insert("name".into(), json!(request.object_name()));
    Ok(object)
}

/// Apply to a missing object creates it.
async fn apply_create(
    request: &ResourceRequest,
    applied: &Value,
    force: bool,
    dry_run: bool,
) -> ApiResult<Response> {
    let mut warnings = Warnings::default();
    let object = apply_to(request, None, applied, force, &mut warnings)?;
    let mut object = prepare_create(request, object, &mut warnings)?;
    object::meta_mut(&mut object).insert("name".into(), json!(request.object_name()));
    if let Some(ns) = &request.namespace {
        check_namespace_open(request, ns).await?;
    }
    let target = request.target();
    default_and_validate(request, &mut object, &target)?;
    if dry_run {
        return Ok(with_warnings(
            read::object_response(request, Accept::Json, StatusCode::CREATED, object),
            &warnings,
        ));
    }
    let key = request.key();
    let kv = request
        .server
        .store
        .create(&key, object::encode(&object))
        .await
        .map_err(|e| ApiError::from_store(e, &target))?;
    object::set_resource_version(&mut object, kv.mod_revision);
    Ok(with_warnings(
        read::object_response(request, Accept::Json, StatusCode::CREATED, object),
        &warnings,
    ))
}
