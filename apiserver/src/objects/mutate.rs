//! Mutate: the server's own read-modify-write of an object — the garbage collector removing
//! owner references and finalizers, the namespace finalizer — with no client in it.
//!
//! # Invariants
//!
//! - The write is conditional on the revision read; on conflict the change is recomputed
//!   from a fresh read.
//! - An object being deleted whose finalizers are all gone is removed, not updated.
//! - "Already gone" is success: a missing object (or one removed meanwhile) is not an error.

use corral_store::StoreError;
use serde_json::Value;

use super::context::{CONFLICT_RETRIES, ObjectRef};
use super::delete::finalizers_done;
use crate::object;

/// Reads the object, lets `change` edit it, and writes it back conditionally, retrying on
/// conflict. `change` returns false to leave the object alone. An object being deleted whose
/// finalizers are all gone is removed. A missing object is not an error.
pub async fn mutate(
    object_ref: ObjectRef<'_>,
    mut change: impl FnMut(&mut Value) -> bool,
) -> Result<(), StoreError> {
    let store = &object_ref.server.store;
    let key = object_ref.key();
    for _ in 0..CONFLICT_RETRIES {
        let Some(kv) = store.get(&key).await? else {
            return Ok(());
        };
        let Ok(current) = object::decode(&kv) else {
            return Ok(());
        };
        let mut next = current.object.clone();
        if !change(&mut next) || next == current.object {
            return Ok(());
        }
        let result = if object::is_deleting(&next) && finalizers_done(object_ref.resource, &next) {
            store.delete(&key, current.revision).await.map(|_| ())
        } else {
            store
                .update(&key, current.revision, object::encode(&next))
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
