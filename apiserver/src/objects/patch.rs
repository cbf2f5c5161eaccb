//! Patch: merge patch (RFC 7386), JSON patch (RFC 6902) and server-side apply, on objects and
//! their status subresource. A patch is computed against a fresh read and stored through the
//! same steps as a replace (`update.rs`); when another write wins the race, it is recomputed.
//!
//! # Invariants
//!
//! - A `resourceVersion` inside a patch is a precondition: a mismatch is 409, never a retry.
//! - Apply to a missing object creates it (main resource only; `/status` is 404).
//! - Server-side apply owns exactly the fields of the applied configuration; fields the manager
//!   applied before and no longer sends are removed unless another manager owns them.

use corral_apimachinery::limits::MANAGED_FIELDS_EXTRA_DEPTH;
use corral_apimachinery::managed::{self, ApplyOptions};
use corral_apimachinery::patch::{self as json_patches, JsonPatchLimits, PatchError};
use serde_json::{Value, json};

use super::admission::Verb;
use super::context::{CONFLICT_RETRIES, Warnings, WriteContext, WriteKind, Written};
use super::create::prepare_create;
use super::managed_fields::{
    Ownership, managed_fields_of, raw_schema, set_managed_fields, subresource_name,
};
use super::namespace::check_namespace_open;
use super::pipeline::{check_name, check_type_meta, default_and_validate, handle_unknown_fields};
use super::update::{admit_update, commit, prepare_update};
use crate::error::{ApiError, ApiResult, Cause, Reason};
use crate::object;

/// A decoded PATCH body.
pub enum Patch {
    /// An RFC 7386 merge patch (a JSON object).
    Merge(Value),
    /// An RFC 6902 JSON patch (a list of operations).
    Json(Value),
    /// A server-side apply of `configuration`; with `force`, fields other managers own are
    /// taken from them instead of being a conflict.
    Apply { configuration: Value, force: bool },
}

/// Patches the object, creating it when an apply finds none.
pub async fn patch(context: &WriteContext<'_>, patch: &Patch) -> ApiResult<Written> {
    let target = context.target();
    let mut warnings = Warnings::default();
    for _ in 0..CONFLICT_RETRIES {
        let Some(current) = context.object.read().await? else {
            if let Patch::Apply {
                configuration,
                force,
            } = patch
                && context.subresource.is_none()
            {
                match apply_create(context, configuration, *force).await {
                    // Another writer created it first: apply to what it created.
                    Err(e) if e.reason == Reason::AlreadyExists => continue,
                    outcome => return outcome,
                }
            }
            return Err(ApiError::not_found(&target));
        };
        let presented = context.present(current.object.clone());
        let (desired, ownership) = match patch {
            Patch::Merge(document) => (
                json_patches::merge_patch(&presented, document).map_err(patch_error)?,
                Ownership::Tracked,
            ),
            Patch::Json(document) => (
                json_patches::json_patch(&presented, document, json_patch_limits(context))
                    .map_err(patch_error)?,
                Ownership::Tracked,
            ),
            Patch::Apply {
                configuration,
                force,
            } => (
                apply_to(
                    context,
                    Some(&presented),
                    configuration,
                    *force,
                    &mut warnings,
                )?,
                Ownership::Applied,
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
        let prepared = prepare_update(context, &current.object, desired, ownership, &mut warnings)?;
        // A refusal is the answer, never a lost race to recompute: it is not a commit's error.
        admit_update(context, patch.verb(), &current, prepared.as_ref()).await?;
        let object = match prepared {
            None => current.object.clone(),
            Some(next) if context.dry_run => next,
            Some(next) => match commit(context, &current, next).await {
                Ok(stored) => stored,
                Err(e) if e.reason == Reason::Conflict => continue,
                Err(e) => return Err(e),
            },
        };
        return Ok(Written::new(object, WriteKind::Updated, warnings));
    }
    Err(ApiError::modified(&target))
}

impl Patch {
    /// The verb admission rules see for this patch.
    fn verb(&self) -> Verb {
        match self {
            Patch::Merge(_) | Patch::Json(_) => Verb::Patch,
            Patch::Apply { .. } => Verb::Apply,
        }
    }
}

/// What one JSON patch may build: the server's `json_patch_max_created_bytes`, and no deeper
/// than a stored object may be (managedFields included; the object's own fields are held to
/// the limit when the result is checked, naming the field).
fn json_patch_limits(context: &WriteContext<'_>) -> JsonPatchLimits {
    let config = &context.object.server.config;
    JsonPatchLimits {
        max_created_bytes: config.json_patch_max_created_bytes,
        max_depth: config.object_limits.max_depth + MANAGED_FIELDS_EXTRA_DEPTH,
    }
}

fn patch_error(error: PatchError) -> ApiError {
    match error {
        PatchError::Apply { .. } | PatchError::TooLarge { .. } | PatchError::TooDeep { .. } => {
            ApiError::new(Reason::Invalid, error.to_string())
        }
        PatchError::TooManyOperations { .. } => {
            ApiError::new(Reason::RequestEntityTooLarge, error.to_string())
        }
        _ => ApiError::bad_request(error.to_string()),
    }
}

/// Server-side apply of `applied` onto `live` (None: the object does not exist yet).
fn apply_to(
    context: &WriteContext<'_>,
    live: Option<&Value>,
    applied: &Value,
    force: bool,
    warnings: &mut Warnings,
) -> ApiResult<Value> {
    let target = context.target();
    check_type_meta(context, applied)?;
    let mut applied = applied.clone();
    handle_unknown_fields(context, &mut applied, warnings)?;
    if let Some(name) = object::meta_str(&applied, "name") {
        check_name(context, name)?;
    }
    let existing = live.map(managed_fields_of).unwrap_or_default();
    let outcome = managed::apply(
        live,
        &applied,
        &context.field_manager,
        &existing,
        ApplyOptions {
            force,
            subresource: subresource_name(context),
            api_version: context.api_version(),
            now: object::now_rfc3339(),
        },
        raw_schema(context),
    )
    .map_err(|e| match e {
        managed::ApplyError::Conflicts(ref conflicts) => {
            let mut error = ApiError::new(Reason::Conflict, e.to_string()).with_target(&target);
            error.causes = conflicts
                .iter()
                .map(|c| Cause {
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
    object::meta_mut(&mut object).insert("name".into(), json!(context.object.name));
    Ok(object)
}

/// Apply to a missing object creates it.
async fn apply_create(
    context: &WriteContext<'_>,
    applied: &Value,
    force: bool,
) -> ApiResult<Written> {
    let mut warnings = Warnings::default();
    let object = apply_to(context, None, applied, force, &mut warnings)?;
    let mut object = prepare_create(context, object, &mut warnings)?;
    object::meta_mut(&mut object).insert("name".into(), json!(context.object.name));
    if let Some(ns) = context.object.namespace {
        check_namespace_open(context, ns).await?;
    }
    let target = context.target();
    default_and_validate(context, &mut object, &target)?;
    context.admit(Verb::Apply, None, &object).await?;
    if context.dry_run {
        return Ok(Written::new(object, WriteKind::Created, warnings));
    }
    let kv = context
        .object
        .server
        .store
        .create(&context.key(), object::encode(&object))
        .await
        .map_err(|e| ApiError::from_store(e, &target))?;
    object::set_resource_version(&mut object, kv.mod_revision);
    Ok(Written::new(object, WriteKind::Created, warnings))
}
