//! Update: the object an update stores, computed from the current one and the client's
//! intent, and the conditional write that stores it; PUT (replace) on top of both. PATCH
//! (`patch.rs`) computes its intent differently and shares the rest.
//!
//! # Invariants
//!
//! - `generation` rises exactly when something outside `metadata` and `status` changes (and
//!   once when deletion starts — see `delete.rs`). Status writes never bump it.
//! - The main resource never changes `status` of a kind with a status subresource; the status
//!   subresource changes nothing but `status` (and its managedFields).
//! - Server-owned metadata (uid, creation time, generation, deletion) always comes from the
//!   stored object; a different uid is refused.
//! - A write that changes nothing gets the current object back: no new revision, no event.
//! - The store write is conditional on the revision the update was computed from, and made only
//!   once admission let the update through (checked against that same revision); an object
//!   being deleted whose last finalizer went is deleted instead of updated.

use corral_apimachinery::validation::FieldError;
use serde_json::{Value, json};

use super::admission::Verb;
use super::context::{ObjectRef, Warnings, WriteContext, WriteKind, Written};
use super::managed_fields::{Ownership, managed_fields_base, track_update};
use super::pipeline::{
    SERVER_OWNED, check_name, check_type_meta, default_and_validate, default_builtin_type_meta,
    handle_unknown_fields, set_storage_type_meta,
};
use super::subresource::Subresource;
use crate::error::{ApiError, ApiResult, Target};
use crate::object::{self, Stored};

/// Builds the object an update will store from the current one and the client's intent, or
/// `None` when nothing changes.
pub(super) fn prepare_update(
    context: &WriteContext<'_>,
    current: &Value,
    mut desired: Value,
    ownership: Ownership,
    warnings: &mut Warnings,
) -> ApiResult<Option<Value>> {
    let target = context.target();
    check_identity(context, &desired)?;
    handle_unknown_fields(context, &mut desired, warnings)?;
    let mut sent_managed_fields = desired.pointer("/metadata/managedFields").cloned();
    let mut next = match context.subresource {
        // The status subresource takes nothing but status from the client.
        Some(Subresource::Status) => {
            let mut next = current.clone();
            copy_status(&desired, &mut next);
            next
        }
        None => main_resource_update(context, current, desired, &target)?,
    };
    set_storage_type_meta(context, &mut next);
    if ownership == Ownership::Applied {
        // An apply computed the new managedFields itself (`apply_to`); keep them. Every other
        // write records its managedFields below, from the stored ones.
        let meta = object::meta_mut(&mut next);
        match sent_managed_fields.take() {
            Some(entries) => meta.insert("managedFields".into(), entries),
            None => meta.remove("managedFields"),
        };
    }
    object::meta_mut(&mut next).insert(
        "resourceVersion".into(),
        current
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null),
    );
    default_and_validate(context, &mut next, &target)?;
    check_no_new_finalizers(current, &next, &target)?;
    if object::spec_part_differs(current, &next, context.resource().has_status) {
        let generation = object::generation(current) + 1;
        object::meta_mut(&mut next).insert("generation".into(), json!(generation));
    }
    if ownership == Ownership::Tracked {
        let base = managed_fields_base(sent_managed_fields.as_ref(), Some(current));
        track_update(context, Some(current), &mut next, &base);
    }
    // managedFields count: an apply that only changes ownership (a second applier of an
    // equal value) must be stored. Unchanged writes keep their entries' times, so a true
    // no-op stays one.
    if *current == next {
        return Ok(None);
    }
    Ok(Some(next))
}

/// The body names the object of the path: type meta, name and namespace.
fn check_identity(context: &WriteContext<'_>, desired: &Value) -> ApiResult<()> {
    check_type_meta(context, desired)?;
    check_name(context, object::meta_str(desired, "name").unwrap_or(""))?;
    if let (Some(body_ns), Some(url_ns)) = (object::namespace(desired), context.object.namespace)
        && body_ns != url_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// Sets `to`'s status to `from`'s (removing it if `from` has none).
fn copy_status(from: &Value, to: &mut Value) {
    match from.get("status") {
        Some(status) => to["status"] = status.clone(),
        None => {
            if let Some(map) = to.as_object_mut() {
                map.remove("status");
            }
        }
    }
}

/// The client's object for the main resource, with what it may not change taken from
/// `current`: the status (of a kind with a status subresource) and the server-owned metadata.
fn main_resource_update(
    context: &WriteContext<'_>,
    current: &Value,
    desired: Value,
    target: &Target,
) -> ApiResult<Value> {
    let mut next = desired;
    if context.resource().has_status {
        copy_status(current, &mut next);
    }
    // The uid is immutable (ValidateObjectMetaUpdate); the other server-owned fields are
    // silently kept from the stored object, as Kubernetes' BeforeUpdate does.
    if let Some(uid) = object::meta_str(&next, "uid").filter(|u| !u.is_empty())
        && uid != object::uid(current)
    {
        let error = FieldError::invalid("metadata.uid", json!(uid), "field is immutable");
        return Err(ApiError::invalid(target, &[error]));
    }
    // Server-owned metadata always comes from the stored object.
    let current_meta = object::meta(current).cloned().unwrap_or_default();
    let meta = object::meta_mut(&mut next);
    for field in SERVER_OWNED
        .iter()
        .chain(["namespace", "managedFields"].iter())
    {
        match current_meta.get(*field) {
            Some(v) => meta.insert(field.to_string(), v.clone()),
            None => meta.remove(*field),
        };
    }
    Ok(next)
}

/// An object being deleted takes no new finalizers.
fn check_no_new_finalizers(current: &Value, next: &Value, target: &Target) -> ApiResult<()> {
    if !object::is_deleting(current) {
        return Ok(());
    }
    let old: Vec<String> = object::finalizers(current);
    if object::finalizers(next).iter().any(|f| !old.contains(f)) {
        let error = FieldError::forbidden(
            "metadata.finalizers",
            "no new finalizers can be added if the object is being deleted",
        );
        return Err(ApiError::invalid(target, &[error]));
    }
    Ok(())
}

/// Runs admission on an update of `current` that stores `prepared` (`None`: the update changes
/// nothing, and `current` is what it would store).
pub(super) async fn admit_update(
    context: &WriteContext<'_>,
    verb: Verb,
    current: &Stored,
    prepared: Option<&Value>,
) -> ApiResult<()> {
    let new = prepared.unwrap_or(&current.object);
    context.admit(verb, Some(&current.object), new).await
}

/// Stores an update conditional on `current`'s revision; an object being deleted whose last
/// finalizer went is deleted instead. Returns the stored object.
pub(super) async fn commit(
    context: &WriteContext<'_>,
    current: &Stored,
    mut next: Value,
) -> ApiResult<Value> {
    let key = context.key();
    let store = &context.object.server.store;
    if object::is_deleting(&next) && object::finalizers(&next).is_empty() {
        let kv = store
            .delete(&key, current.revision)
            .await
            .map_err(|e| ApiError::from_store(e, &context.target()))?;
        object::set_resource_version(&mut next, kv.mod_revision);
        return Ok(next);
    }
    let kv = store
        .update(&key, current.revision, object::encode(&next))
        .await
        .map_err(|e| ApiError::from_store(e, &context.target()))?;
    object::set_resource_version(&mut next, kv.mod_revision);
    Ok(next)
}

/// Replaces the object with `desired` (PUT), conditional on the resourceVersion it carries.
pub async fn replace(context: &WriteContext<'_>, mut desired: Value) -> ApiResult<Written> {
    let target = context.target();
    default_builtin_type_meta(context, &mut desired);
    check_type_meta(context, &desired)?;
    check_name(context, object::meta_str(&desired, "name").unwrap_or(""))?;
    let rv = desired
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if rv.is_empty() {
        let error = FieldError::invalid(
            "metadata.resourceVersion",
            json!(0),
            "must be specified for an update",
        );
        return Err(ApiError::invalid(&target, &[error]));
    }
    // The watch cache nearly always holds the very revision the client read (a controller
    // writing status from its own watch): try the write on it instead of a store read. Only a
    // write the store accepted is answered from that attempt — the write is conditional on the
    // revision, so the cached object was the current one. Anything else (a conflict, an error,
    // a no-op, a dry run, whose answers depend on the object being current) is worked out from
    // the store, exactly as without the cache. (The store read and decode were 8% of the API
    // server's CPU in `corral bench rack`.)
    if !context.dry_run
        && let Some(current) = cached_at(&context.object, &rv)
        && let Some(written) = replace_if_current(context, &current, desired.clone()).await
    {
        return Ok(written);
    }
    let current = context
        .object
        .read()
        .await?
        .ok_or_else(|| ApiError::not_found(&target))?;
    if rv != current.revision.to_string() {
        return Err(ApiError::modified(&target));
    }
    replace_current(context, current, desired).await
}

/// The object a replace stores: the client's whole object, recorded under its field manager.
fn prepare_replace(
    context: &WriteContext<'_>,
    current: &Value,
    desired: Value,
    warnings: &mut Warnings,
) -> ApiResult<Option<Value>> {
    prepare_update(context, current, desired, Ownership::Tracked, warnings)
}

/// The replace on `current`, if it commits; `None` otherwise (nothing is written then).
async fn replace_if_current(
    context: &WriteContext<'_>,
    current: &Stored,
    desired: Value,
) -> Option<Written> {
    let mut warnings = Warnings::default();
    let next = prepare_replace(context, &current.object, desired, &mut warnings).ok()??;
    admit_update(context, Verb::Update, current, Some(&next))
        .await
        .ok()?;
    let stored = commit(context, current, next).await.ok()?;
    Some(Written::new(stored, WriteKind::Updated, warnings))
}

/// The rest of a replace, on `current`: the object at the revision the client named.
async fn replace_current(
    context: &WriteContext<'_>,
    current: Stored,
    desired: Value,
) -> ApiResult<Written> {
    let mut warnings = Warnings::default();
    let prepared = prepare_replace(context, &current.object, desired, &mut warnings)?;
    admit_update(context, Verb::Update, &current, prepared.as_ref()).await?;
    let object = match prepared {
        None => current.object,
        Some(next) if context.dry_run => next,
        Some(next) => commit(context, &current, next).await?,
    };
    Ok(Written::new(object, WriteKind::Updated, warnings))
}

/// The object as the watch cache holds it, if (and only if) the cache holds it at exactly
/// revision `rv`: then it is what the store holds at that revision.
fn cached_at(object: &ObjectRef<'_>, rv: &str) -> Option<Stored> {
    let revision: i64 = rv.parse().ok()?;
    let cached = object.server.cache(object.resource).get(&object.key())?;
    (cached.revision == revision).then(|| Stored {
        object: cached.value.clone(),
        revision,
    })
}
