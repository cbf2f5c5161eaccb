//! `metadata.managedFields` bookkeeping for writes: which stored entries a write starts from,
//! and how a write that is not an apply is recorded (server-side apply records itself, in
//! `patch.rs`).
//!
//! # Invariants
//!
//! - Every write a client makes is recorded under its field manager, except a write that
//!   changes nothing, which keeps its entries' times (so a true no-op stays one).

use corral_apimachinery::managed::{self, ManagedFieldsEntry, UpdateOptions};
use serde_json::Value;

use super::context::WriteContext;
use crate::object;

/// Who records a write in `managedFields`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ownership {
    /// The server records the write as an update by the context's field manager (PUT, merge
    /// and JSON patch).
    Tracked,
    /// Server-side apply already computed the object's `managedFields`; they are stored as
    /// they are.
    Applied,
}

pub(super) fn managed_fields_of(object: &Value) -> Vec<ManagedFieldsEntry> {
    object
        .pointer("/metadata/managedFields")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

pub(super) fn set_managed_fields(object: &mut Value, entries: Vec<ManagedFieldsEntry>) {
    let m = object::meta_mut(object);
    if entries.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert(
            "managedFields".into(),
            serde_json::to_value(entries).unwrap_or(Value::Null),
        );
    }
}

/// The subresource as `managedFields` names it.
pub(super) fn subresource_name(context: &WriteContext<'_>) -> Option<String> {
    context.subresource.map(|s| s.name().to_string())
}

/// The schema field sets are computed against: the client's version's.
pub(super) fn raw_schema<'a>(context: &WriteContext<'a>) -> &'a Value {
    &context.version().raw_schema
}

/// Records a non-apply write in managedFields.
pub(super) fn track_update(
    context: &WriteContext<'_>,
    old: Option<&Value>,
    new: &mut Value,
    base: &[ManagedFieldsEntry],
) {
    let entries = managed::update(
        old,
        new,
        &context.field_manager,
        base,
        UpdateOptions {
            subresource: subresource_name(context),
            api_version: context.api_version(),
            now: object::now_rfc3339(),
        },
        raw_schema(context),
    );
    set_managed_fields(new, entries);
}

/// The managedFields a non-apply write starts from, as in Kubernetes: a non-empty list sent by
/// the client replaces the stored one (kubectl uses this to hand fields from client-side to
/// server-side apply), a list of empty entries (`[{}]`) resets ownership, and anything else
/// keeps what is stored.
pub(super) fn managed_fields_base(
    sent: Option<&Value>,
    stored: Option<&Value>,
) -> Vec<ManagedFieldsEntry> {
    let stored_entries = || stored.map(managed_fields_of).unwrap_or_default();
    match sent {
        Some(Value::Array(list)) if !list.is_empty() => {
            if list
                .iter()
                .all(|e| e.as_object().is_some_and(|o| o.is_empty()))
            {
                return Vec::new();
            }
            if stored.and_then(|s| s.pointer("/metadata/managedFields")) == sent {
                return stored_entries();
            }
            serde_json::from_value(Value::Array(list.clone())).unwrap_or_else(|_| stored_entries())
        }
        _ => stored_entries(),
    }
}
