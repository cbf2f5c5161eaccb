//! The checks every write of a client's object shares, in Kubernetes' order: type meta
//! (`apiVersion`, `kind`, `metadata`), the name, unknown fields (`fieldValidation`), then
//! defaulting and validation of the complete object. (The server's object limits are checked
//! last, on the very object the write would store, managedFields included: `context.rs`
//! `WriteContext::admit`.)
//!
//! # Invariants
//!
//! - Unknown fields never reach the store: they are refused (Strict) or pruned (Warn, Ignore).
//! - Nothing is stored that fails the kind's schema or Kubernetes' metadata rules.

use corral_apimachinery::validation::{self, FieldError};
use serde_json::{Value, json};

use super::context::{Warnings, WriteContext};
use crate::error::{ApiError, ApiResult, Target};
use crate::object;
use crate::query::FieldValidation;

/// Metadata fields only the server sets.
pub(super) const SERVER_OWNED: &[&str] = &[
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// Fills a missing `apiVersion`/`kind` of a built-in kind's body from the URL (clients such as
/// the Python one send core objects without them); custom resources must carry both.
pub(super) fn default_builtin_type_meta(context: &WriteContext<'_>, body: &mut Value) {
    if !context.resource().builtin {
        return;
    }
    if let Some(map) = body.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| json!(context.api_version()));
        map.entry("kind")
            .or_insert_with(|| json!(context.resource().kind));
    }
}

pub(super) fn check_type_meta(context: &WriteContext<'_>, body: &Value) -> ApiResult<()> {
    check_type_field(body, "apiVersion", &context.api_version(), "API version")?;
    check_type_field(body, "kind", &context.resource().kind, "kind")?;
    match body.get("metadata") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the request body's metadata must be an object",
        )),
    }
}

/// `body[field]` must be `expected`; `what` names the field in the mismatch message.
fn check_type_field(body: &Value, field: &str, expected: &str, what: &str) -> ApiResult<()> {
    match body.get(field).and_then(Value::as_str) {
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(ApiError::bad_request(format!(
            "the {what} in the data ({found}) does not match the expected {what} ({expected})"
        ))),
        // Worded as Kubernetes' decoder words it: 'apiVersion', but 'Kind'.
        None => {
            let go_name = if field == "kind" { "Kind" } else { field };
            Err(ApiError::bad_request(format!(
                "Object '{go_name}' is missing in the request body"
            )))
        }
    }
}

/// The body's name must be the one in the path.
pub(super) fn check_name(context: &WriteContext<'_>, body_name: &str) -> ApiResult<()> {
    let name = context.object.name;
    if body_name == name {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "the name of the object ({body_name}) does not match the name on the URL ({name})"
    )))
}

/// Applies `fieldValidation` to unknown fields: an error (Strict), a warning (Warn) or nothing
/// (Ignore); the fields are pruned in the last two cases.
pub(super) fn handle_unknown_fields(
    context: &WriteContext<'_>,
    object: &mut Value,
    warnings: &mut Warnings,
) -> ApiResult<()> {
    let unknown = context.version().schema.prune(object);
    if unknown.is_empty() {
        return Ok(());
    }
    match context.field_validation()? {
        FieldValidation::Strict => {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )))
        }
        FieldValidation::Warn => {
            warnings
                .0
                .extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
            Ok(())
        }
        FieldValidation::Ignore => Ok(()),
    }
}

/// Defaulting then validation of a complete object.
pub(super) fn default_and_validate(
    context: &WriteContext<'_>,
    object: &mut Value,
    target: &Target,
) -> ApiResult<()> {
    let version = context.version();
    version.schema.apply_defaults(object);
    let mut errors = validation::validate_object_meta(
        object.get("metadata").unwrap_or(&Value::Null),
        context.resource().namespaced,
    );
    if context.resource().is_namespace() {
        let name = object::name(object);
        if !name.is_empty() {
            for message in validation::is_dns1123_label(name) {
                errors.push(FieldError::invalid("metadata.name", json!(name), message));
            }
        }
    }
    errors.extend(version.schema.validate(object));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(target, &errors))
    }
}

/// Sets the storage version's `apiVersion` and the kind: what every stored object carries.
pub(super) fn set_storage_type_meta(context: &WriteContext<'_>, object: &mut Value) {
    let resource = context.resource();
    let storage = resource.storage_version();
    object["apiVersion"] = json!(resource.api_version(&storage.name));
    object["kind"] = json!(resource.kind);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_meta_is_checked_field_by_field_in_kubernetes_words() {
        let body = json!({"apiVersion": "example.dev/v1", "kind": "Thing"});
        let check = |field, expected| {
            check_type_field(&body, field, expected, "kind").map_err(|e| e.message)
        };
        assert!(check("kind", "Thing").is_ok());
        assert_eq!(
            check("kind", "Other").unwrap_err(),
            "the kind in the data (Thing) does not match the expected kind (Other)"
        );
        let empty = json!({});
        let missing = |field| {
            check_type_field(&empty, field, "x", "API version")
                .unwrap_err()
                .message
        };
        assert_eq!(
            missing("apiVersion"),
            "Object 'apiVersion' is missing in the request body"
        );
        assert_eq!(
            missing("kind"),
            "Object 'Kind' is missing in the request body"
        );
    }
}
