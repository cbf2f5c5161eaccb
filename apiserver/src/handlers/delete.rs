//! DELETE of an object or a collection (k8s-api.md §9), and the internal deletion and
//! mutation primitives the garbage collector shares.
//!
//! # Definitions
//!
//! An object *is being deleted* if (and only if) it has a `deletionTimestamp`. It is removed
//! from the store when it is being deleted and has no finalizers left (for namespaces: no
//! `metadata.finalizers` and no `spec.finalizers`).
//!
//! # Invariants
//!
//! - Deletion with finalizers sets `deletionTimestamp` once, bumps `generation` once, and
//!   adds the propagation finalizer (`foregroundDeletion` or `orphan`) the policy asks for;
//!   the garbage collector (`gc.rs`) removes those, users and controllers remove theirs.
//! - Every step is conditional on the revision it read; `NotFound` during cleanup is success.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use corral_store::StoreError;
use serde_json::{Value, json};

use super::read::{self, present};
use super::{Accept, ResourceRequest, json_response};
use crate::ApiServer;
use crate::error::{ApiError, ApiResult, Reason, Target};
use crate::filter::Filter;
use crate::object::{self, Stored};
use crate::resource::ResourceType;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    fn parse(request: &ResourceRequest, body: &Bytes) -> ApiResult<DeleteOptions> {
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
}

/// What a delete did.
pub enum Deleted {
    /// The object is gone; the last state.
    Removed(Value),
    /// The object is being deleted and waits for its finalizers; its current state.
    Pending(Value),
}

/// True when nothing holds the object back any more.
fn finalizers_done(resource: &ResourceType, object: &Value) -> bool {
    let spec_finalizers = resource.is_namespace()
        && object
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
    object::finalizers(object).is_empty() && !spec_finalizers
}

const DELETE_RETRIES: usize = 16;

/// Deletes one object per `options`, retrying from a fresh read when another write wins.
pub async fn delete_object(
    server: &ApiServer,
    resource: &Arc<ResourceType>,
    key: &str,
    target: &Target,
    options: &DeleteOptions,
) -> ApiResult<Deleted> {
    // Like NamespaceLifecycle admission: the namespace the server guarantees is never deleted.
    if resource.is_namespace() && target.name == "default" {
        return Err(ApiError::new(
            Reason::Forbidden,
            "namespaces \"default\" is forbidden: this namespace may not be deleted",
        )
        .with_target(target));
    }
    for _ in 0..DELETE_RETRIES {
        let kv = server
            .store
            .get(key)
            .await
            .map_err(|e| ApiError::from_store(e, target))?;
        let current = object::decode(&kv.ok_or_else(|| ApiError::not_found(target))?)
            .map_err(|e| ApiError::internal("stored object is corrupt", &e))?;
        if let Some(uid) = &options.uid
            && uid != object::uid(&current.object)
        {
            return Err(ApiError::conflict(
                target,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    object::uid(&current.object)
                ),
            ));
        }
        if let Some(rv) = &options.resource_version
            && *rv != current.revision.to_string()
        {
            return Err(ApiError::conflict(
                target,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    current.revision
                ),
            ));
        }
        match delete_step(server, resource, key, &current, options).await {
            Ok(outcome) => return Ok(outcome),
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found(target)),
            Err(e) => return Err(ApiError::from_store(e, target)),
        }
    }
    Err(ApiError::modified(target))
}

async fn delete_step(
    server: &ApiServer,
    resource: &Arc<ResourceType>,
    key: &str,
    current: &Stored,
    options: &DeleteOptions,
) -> Result<Deleted, StoreError> {
    let mut next = current.object.clone();
    let mut finalizers = object::finalizers(&next);
    let gc_finalizer = match options.propagation {
        Some(Propagation::Foreground) => Some(FOREGROUND),
        Some(Propagation::Orphan) => Some(ORPHAN),
        _ => None,
    };
    if let Some(f) = gc_finalizer {
        if !finalizers.iter().any(|x| x == f) {
            finalizers.push(f.to_string());
        }
        // The two propagation finalizers exclude each other.
        let other = if f == FOREGROUND { ORPHAN } else { FOREGROUND };
        finalizers.retain(|x| x != other);
    }
    object::set_finalizers(&mut next, finalizers);
    let was_deleting = object::is_deleting(&current.object);
    if !was_deleting && finalizers_done(resource, &next) {
        if options.dry_run {
            return Ok(Deleted::Removed(current.object.clone()));
        }
        let kv = server.store.delete(key, current.revision).await?;
        let mut last = current.object.clone();
        object::set_resource_version(&mut last, kv.mod_revision);
        return Ok(Deleted::Removed(last));
    }
    if !was_deleting {
        let meta = object::meta_mut(&mut next);
        meta.insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        meta.insert(
            "generation".into(),
            json!(object::generation(&current.object) + 1),
        );
        if resource.is_namespace() {
            next["status"]["phase"] = json!("Terminating");
        }
    }
    if next == current.object || options.dry_run {
        return Ok(Deleted::Pending(next));
    }
    let kv = server
        .store
        .update(key, current.revision, object::encode(&next))
        .await?;
    object::set_resource_version(&mut next, kv.mod_revision);
    Ok(Deleted::Pending(next))
}

/// Reads `key`, lets `change` edit the object, and writes it back conditionally, retrying on
/// conflict. `change` returns false to leave the object alone. An object being deleted whose
/// finalizers are all gone is removed. A missing object is not an error.
pub async fn mutate(
    server: &ApiServer,
    resource: &ResourceType,
    key: &str,
    mut change: impl FnMut(&mut Value) -> bool,
) -> Result<(), StoreError> {
    for _ in 0..DELETE_RETRIES {
        let Some(kv) = server.store.get(key).await? else {
            return Ok(());
        };
        let Ok(current) = object::decode(&kv) else {
            return Ok(());
        };
        let mut next = current.object.clone();
        if !change(&mut next) || next == current.object {
            return Ok(());
        }
        let result = if object::is_deleting(&next) && finalizers_done(resource, &next) {
            server.store.delete(key, current.revision).await.map(|_| ())
        } else {
            server
                .store
                .update(key, current.revision, object::encode(&next))
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) | Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
    let options = DeleteOptions::parse(&request, &body)?;
    let target = request.target();
    let explicit_no_orphan = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|d| d.get("orphanDependents").and_then(Value::as_bool))
        == Some(false);
    match delete_object(
        &request.server,
        &request.resource,
        &request.key(),
        &target,
        &options,
    )
    .await?
    {
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
            Ok(read::object_response(
                &request,
                Accept::Json,
                status,
                object,
            ))
        }
    }
}

/// DELETE on a collection: deletes every object that matches the selectors.
pub async fn delete_collection(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    let options = DeleteOptions::parse(&request, &body)?;
    let filter = Filter::from_query(
        &request.resource,
        &request.version,
        request.namespace.as_deref(),
        &request.query,
    )?;
    let page = read::collect(&request, &filter).await?;
    let mut items = Vec::new();
    for o in page.objects {
        let key = request
            .resource
            .key(object::namespace(&o), object::name(&o));
        let target = request.resource.target(object::name(&o));
        match delete_object(&request.server, &request.resource, &key, &target, &options).await {
            Ok(Deleted::Removed(last)) | Ok(Deleted::Pending(last)) => {
                items.push(present(&request, last))
            }
            Err(e) if matches!(e.reason, Reason::NotFound | Reason::Forbidden) => {}
            Err(e) => return Err(e),
        }
    }
    let metadata = json!({"resourceVersion": page.revision.to_string()});
    Ok(json_response(
        StatusCode::OK,
        &read::list_body(&request, metadata, items),
    ))
}
