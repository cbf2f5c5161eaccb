//! Delete: one step of deleting an object, retried from a fresh read when another write wins,
//! for the DELETE handlers and the garbage collector alike.
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
//! - Every step is conditional on the revision it read.
//! - The `default` namespace is never deleted.

use corral_store::StoreError;
use serde_json::{Value, json};

use super::context::{CONFLICT_RETRIES, ObjectRef};
use crate::error::{ApiError, ApiResult, Reason};
use crate::object::{self, Stored};
use crate::resource::ResourceType;

/// The finalizer of an owner whose dependents are deleted before it.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an owner whose dependents lose their reference to it before it goes.
pub const ORPHAN: &str = "orphan";

/// What happens to an object's dependents when it is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// How to delete: the client's DeleteOptions, decoded.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    /// Precondition: the object's uid.
    pub uid: Option<String>,
    /// Precondition: the object's resourceVersion.
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

/// What a delete did.
pub enum Deleted {
    /// The object is gone; the last state.
    Removed(Value),
    /// The object is being deleted and waits for its finalizers; its current state.
    Pending(Value),
}

/// True when nothing holds the object back any more.
pub(super) fn finalizers_done(resource: &ResourceType, object: &Value) -> bool {
    let spec_finalizers = resource.is_namespace()
        && object
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
    object::finalizers(object).is_empty() && !spec_finalizers
}

/// Deletes one object per `options`, retrying from a fresh read when another write wins.
pub async fn delete(object_ref: ObjectRef<'_>, options: &DeleteOptions) -> ApiResult<Deleted> {
    let target = object_ref.target();
    // Like NamespaceLifecycle admission: the namespace the server guarantees is never deleted.
    if object_ref.resource.is_namespace() && target.name == "default" {
        return Err(ApiError::new(
            Reason::Forbidden,
            "namespaces \"default\" is forbidden: this namespace may not be deleted",
        )
        .with_target(&target));
    }
    let key = object_ref.key();
    for _ in 0..CONFLICT_RETRIES {
        let current = object_ref
            .read()
            .await?
            .ok_or_else(|| ApiError::not_found(&target))?;
        check_preconditions(&current, options)
            .map_err(|message| ApiError::conflict(&target, &message))?;
        match delete_step(object_ref, &key, &current, options).await {
            Ok(outcome) => return Ok(outcome),
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found(&target)),
            Err(e) => return Err(ApiError::from_store(e, &target)),
        }
    }
    Err(ApiError::modified(&target))
}

/// The uid and resourceVersion preconditions; the message of the first that fails.
fn check_preconditions(current: &Stored, options: &DeleteOptions) -> Result<(), String> {
    if let Some(uid) = &options.uid
        && uid != object::uid(&current.object)
    {
        return Err(format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            object::uid(&current.object)
        ));
    }
    if let Some(rv) = &options.resource_version
        && *rv != current.revision.to_string()
    {
        return Err(format!(
            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
            current.revision
        ));
    }
    Ok(())
}

/// One attempt on `current`: removes it if nothing holds it back, else starts (or continues)
/// its deletion with the propagation finalizer the options ask for.
async fn delete_step(
    object_ref: ObjectRef<'_>,
    key: &str,
    current: &Stored,
    options: &DeleteOptions,
) -> Result<Deleted, StoreError> {
    let store = &object_ref.server.store;
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
    if !was_deleting && finalizers_done(object_ref.resource, &next) {
        if options.dry_run {
            return Ok(Deleted::Removed(current.object.clone()));
        }
        let kv = store.delete(key, current.revision).await?;
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
        if object_ref.resource.is_namespace() {
            next["status"]["phase"] = json!("Terminating");
        }
    }
    if next == current.object || options.dry_run {
        return Ok(Deleted::Pending(next));
    }
    let kv = store
        .update(key, current.revision, object::encode(&next))
        .await?;
    object::set_resource_version(&mut next, kv.mod_revision);
    Ok(Deleted::Pending(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_refuse_another_uid_or_revision() {
        let current = Stored {
            object: json!({"metadata": {"uid": "u1"}}),
            revision: 7,
        };
        let options = |uid: Option<&str>, rv: Option<&str>| DeleteOptions {
            uid: uid.map(String::from),
            resource_version: rv.map(String::from),
            ..Default::default()
        };
        assert!(check_preconditions(&current, &options(None, None)).is_ok());
        assert!(check_preconditions(&current, &options(Some("u1"), Some("7"))).is_ok());
        assert_eq!(
            check_preconditions(&current, &options(Some("u2"), Some("6"))).unwrap_err(),
            "Precondition failed: UID in precondition: u2, UID in object meta: u1"
        );
        assert_eq!(
            check_preconditions(&current, &options(None, Some("6"))).unwrap_err(),
            "Precondition failed: ResourceVersion in precondition: 6, ResourceVersion in object meta: 7"
        );
    }
}
