//! Server-side apply: keeps `metadata.managedFields` telling, for every field of an object,
//! which field managers own it, and merges applied configurations with Kubernetes' semantics
//! (sigs.k8s.io/structured-merge-diff and apimachinery `managedfields`).
//!
//! Definitions:
//! - A **manager** is a `managedFields` entry, identified by (manager name, operation,
//!   subresource). The same name may own fields through an `Apply` and an `Update` entry, and
//!   those are different managers, as in Kubernetes.
//! - A manager **owns** a field if (and only if) the field's path is in its [`FieldSet`].
//! - An **applied configuration** is the body of an apply patch: the fields the applier wants
//!   to own, with the values it wants.
//! - A field is **changed** by a write if (and only if) its value differs between the object
//!   before and after the write, or it appears.
//!
//! What each operation reads and writes:
//! - [`apply`] reads the live object, the applied configuration and the managers, and returns
//!   the merged object and the new managers. The applier's `Apply` entry becomes exactly the
//!   fields of its configuration; fields it applied last time and no longer applies are removed
//!   from the object unless another manager owns them; a changed field owned by another manager
//!   is a [`Conflict`] unless forced, and forcing moves ownership to the applier.
//! - [`update`] does the bookkeeping for every other write (create, PUT, merge or JSON patch):
//!   the writer's `Update` entry gains the changed fields and every other manager loses them;
//!   fields that disappear are lost by every manager.
//!
//! **Invariants:**
//! - Server-set fields (`apiVersion`, `kind`, `metadata.{name, namespace, uid, resourceVersion,
//!   generation, creationTimestamp, deletionTimestamp, deletionGracePeriodSeconds, selfLink,
//!   managedFields}`) are never owned, so they never conflict and are never removed.
//! - An apply to the main resource neither applies, owns nor removes anything under `status`;
//!   an apply to the `status` subresource touches only `status`.
//! - No entry with an empty field set is returned; entries come back in Kubernetes' order
//!   (`Apply` before `Update`, then by time, manager, apiVersion, subresource).
//!
//! **Assumptions:** the caller passes the CRD version's raw `openAPIV3Schema`, objects already
//! converted to `api_version`, and timestamps in RFC 3339. Field sets of all entries are read as
//! if written at `api_version` (CRD versions share one field layout unless a conversion webhook
//! renames fields, which Corral does not do).
//!
//! **Not responsible for:** choosing which managedFields to start from (Kubernetes keeps the
//! request's own managedFields on update when non-empty, else the live object's), writing the
//! returned entries into `metadata.managedFields`, status-code mapping of [`ApplyError`],
//! validation, pruning and defaulting against the schema (`crate::schema`), and resetting
//! `status` or spec for the subresource strategies (the API server).

mod fieldpath;
mod merge;
#[cfg(test)]
mod scenarios;
mod typed;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub use fieldpath::{FieldPath, FieldSet, FieldsV1Error, PathElement};
pub use merge::{apply, fields_of, update};

/// The kind of write a managedFields entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    Apply,
    Update,
}

/// One `metadata.managedFields` item, with Kubernetes' JSON names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedFieldsEntry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default = "fields_v1_type")]
    pub fields_type: String,
    #[serde(rename = "fieldsV1", default)]
    pub fields_v1: FieldSet,
    /// `None` for the main resource (Kubernetes writes no `subresource` then).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub subresource: Option<String>,
}

fn fields_v1_type() -> String {
    "FieldsV1".to_owned()
}

fn non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

impl ManagedFieldsEntry {
    fn is(&self, manager: &str, operation: Operation, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref().filter(|s| !s.is_empty()) == subresource
    }
}

/// Options of one apply request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// `?force=true`: take conflicting fields instead of failing.
    pub force: bool,
    /// `Some("status")` for an apply to `/status`.
    pub subresource: Option<String>,
    /// The `group/version` the request was made at; the configuration must match it.
    pub api_version: String,
    /// The time to record, RFC 3339 (`2025-01-01T00:00:00Z`).
    pub now: String,
}

/// Options of one non-apply write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateOptions {
    /// `Some("status")` for a write to `/status`.
    pub subresource: Option<String>,
    pub api_version: String,
    pub now: String,
}

/// The result of an apply. `object` keeps whatever `metadata.managedFields` the live object
/// had; the caller writes `managed_fields` there.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub object: Value,
    pub managed_fields: Vec<ManagedFieldsEntry>,
}

/// A field the applier would change that another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub operation: Operation,
    pub subresource: Option<String>,
    pub api_version: String,
    /// Kubernetes' path form: `.spec.cpus`, `.spec.nics[name="eth0"].ip`.
    pub field: String,
}

impl Conflict {
    /// How Kubernetes names the other manager: `"mgr"`, `"mgr" with subresource "status"`, and
    /// for an `Update` entry `"kubectl-edit" using corral.dev/v1`.
    pub fn manager_description(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if let Some(subresource) = &self.subresource {
            out.push_str(&format!(" with subresource {subresource:?}"));
        }
        if self.operation == Operation::Update {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }

    /// The `details.causes[].message` of the 409: `conflict with "mgr"`.
    pub fn message(&self) -> String {
        format!("conflict with {}", self.manager_description())
    }
}

/// Why an apply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// 400 in Kubernetes.
    #[error("the applied configuration must be a JSON object")]
    NotAnObject,
    /// 400 in Kubernetes.
    #[error("the applied configuration must set apiVersion and kind")]
    MissingTypeMeta,
    /// 400 in Kubernetes.
    #[error(
        "Incorrect version specified in apply patch. Specified patch version: {got}, expected: {expected}"
    )]
    VersionMismatch { expected: String, got: String },
    /// 400 in Kubernetes.
    #[error("metadata.managedFields must be nil")]
    ManagedFieldsNotNil,
    /// Two items of a set or map-list share a value or key.
    #[error("{list}: duplicate entries for key {element}")]
    DuplicateListEntry { list: String, element: String },
    /// 409 Conflict, one `FieldManagerConflict` cause per item.
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
}

/// Kubernetes' message (apimachinery `managedfields/internal/conflict.go`).
fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [conflict] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflict.manager_description(),
            conflict.field
        );
    }
    // Grouped by manager in sorted order; `apply` already sorts conflicts that way.
    let mut lines = Vec::new();
    let mut previous: Option<String> = None;
    for conflict in conflicts {
        let manager = conflict.manager_description();
        if previous.as_ref() != Some(&manager) {
            lines.push(format!("conflicts with {manager}:"));
            previous = Some(manager);
        }
        lines.push(format!("- {}", conflict.field));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conflict(manager: &str, operation: Operation, field: &str) -> Conflict {
        Conflict {
            manager: manager.to_owned(),
            operation,
            subresource: None,
            api_version: "corral.dev/v1".to_owned(),
            field: field.to_owned(),
        }
    }

    #[test]
    fn conflict_messages_match_kubernetes() {
        let one = ApplyError::Conflicts(vec![conflict("mgr", Operation::Apply, ".spec.x")]);
        assert_eq!(
            one.to_string(),
            r#"Apply failed with 1 conflict: conflict with "mgr": .spec.x"#
        );

        let three = ApplyError::Conflicts(vec![
            conflict("a", Operation::Apply, ".spec.x"),
            conflict("a", Operation::Apply, ".spec.y"),
            conflict("kubectl-edit", Operation::Update, ".spec.z"),
        ]);
        assert_eq!(
            three.to_string(),
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.x\n- .spec.y\n\
             conflicts with \"kubectl-edit\" using corral.dev/v1:\n- .spec.z"
        );

        let mut status = conflict("ctl", Operation::Apply, ".status.phase");
        status.subresource = Some("status".to_owned());
        assert_eq!(
            status.message(),
            r#"conflict with "ctl" with subresource "status""#
        );
    }

    #[test]
    fn entries_use_kubernetes_json_names() {
        let wire = json!({
            "manager": "kubectl", "operation": "Apply", "apiVersion": "corral.dev/v1",
            "time": "2025-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:cpus": {}}}
        });
        let entry: ManagedFieldsEntry = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(entry.operation, Operation::Apply);
        assert_eq!(entry.subresource, None);
        assert_eq!(serde_json::to_value(&entry).unwrap(), wire);

        let status: ManagedFieldsEntry = serde_json::from_value(json!({
            "manager": "c", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": {}, "subresource": "status"
        }))
        .unwrap();
        assert_eq!(status.subresource.as_deref(), Some("status"));
        let empty: ManagedFieldsEntry = serde_json::from_value(json!({
            "manager": "c", "operation": "Update", "apiVersion": "v1", "subresource": ""
        }))
        .unwrap();
        assert_eq!(
            (empty.subresource, empty.fields_type.as_str()),
            (None, "FieldsV1")
        );
    }
}
