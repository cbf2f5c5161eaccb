//! `metadata` validation of a custom resource, on the JSON body.
//!
//! Mirrors `ValidateObjectMetaAccessor` and `ValidateObjectMetaAccessorUpdate`
//! (`k8s.io/apimachinery/pkg/api/validation/objectmeta.go`) with the name rule custom resources
//! use (`NameIsDNSSubdomain`). Kubernetes decodes `metadata` into a typed `ObjectMeta` first and
//! fails on wrong JSON types; here a wrongly typed field is a `TypeInvalid` error instead.
//!
//! **Invariants:** never panics; every error names the field it concerns; field paths and
//! messages match Kubernetes where Kubernetes has them (`metadata.labels`,
//! `metadata.ownerReferences.uid`, …).
//!
//! **Assumptions:** name generation from `generateName` happens before or after this check; an
//! empty `name` is only an error when `generateName` is empty too.

use super::{
    FieldError, TOTAL_ANNOTATION_SIZE_LIMIT_BYTES, is_dns1123_label, is_dns1123_subdomain,
    is_qualified_name, is_valid_label_value, is_valid_path_segment_name,
    is_valid_path_segment_prefix, path,
};
use serde_json::{Map, Value};

/// The two finalizers that the garbage collector owns; they may not both be set.
const FINALIZER_ORPHAN: &str = "orphan";
const FINALIZER_FOREGROUND: &str = "foregroundDeletion";
const FIELD_MANAGER_MAX_LENGTH: usize = 128;
const SUBRESOURCE_NAME_MAX_LENGTH: usize = 256;

/// How names are checked: custom resources use DNS subdomains, embedded resources only path
/// segments.
#[derive(Clone, Copy)]
enum NameRule {
    Dns1123Subdomain,
    PathSegment,
}

/// Whether the body must, may or must not carry a namespace.
#[derive(Clone, Copy)]
enum NamespaceRule {
    Required,
    Forbidden,
    Optional,
}

/// Validates `metadata` of a custom resource on create: name and generateName (DNS
/// subdomains), namespace presence (required for namespaced resources, forbidden otherwise),
/// generation, labels, annotations, finalizers, ownerReferences and managedFields.
///
/// `meta` is the value of `metadata` (`Null` when absent). The server is expected to have put
/// the URL's namespace into the body of a namespaced resource and dropped it from a
/// cluster-scoped one before calling this.
pub fn validate_object_meta(meta: &Value, namespaced: bool) -> Vec<FieldError> {
    let namespace = if namespaced {
        NamespaceRule::Required
    } else {
        NamespaceRule::Forbidden
    };
    validate_meta(
        "metadata",
        meta,
        NameRule::Dns1123Subdomain,
        namespace,
        true,
    )
}

/// Validates `metadata` of an update against the stored object's: everything
/// [`validate_object_meta`] checks, plus Kubernetes' update rules: name, namespace, uid,
/// creationTimestamp, deletionTimestamp and deletionGracePeriodSeconds are immutable,
/// generation may not decrease, and no finalizer may be added once the object is being deleted.
///
/// The resourceVersion precondition is left to the caller, which knows the stored version.
pub fn validate_object_meta_update(
    new_meta: &Value,
    old_meta: &Value,
    namespaced: bool,
) -> Vec<FieldError> {
    let mut errs = validate_object_meta(new_meta, namespaced);
    let empty = Map::new();
    let new = new_meta.as_object().unwrap_or(&empty);
    let old = old_meta.as_object().unwrap_or(&empty);
    let is_set = |map: &Map<String, Value>, key: &str| map.get(key).is_some_and(|v| !v.is_null());

    if is_set(old, "deletionTimestamp") {
        let old_finalizers = string_list(old.get("finalizers"));
        let mut added: Vec<String> = string_list(new.get("finalizers"))
            .into_iter()
            .filter(|f| !old_finalizers.contains(f))
            .collect();
        added.sort();
        added.dedup();
        if !added.is_empty() {
            let quoted: Vec<String> = added.iter().map(|f| super::go_quote(f)).collect();
            errs.push(FieldError::forbidden(
                "metadata.finalizers",
                format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    quoted.join(", ")
                ),
            ));
        }
    }
    let new_generation = new.get("generation").and_then(Value::as_i64).unwrap_or(0);
    let old_generation = old.get("generation").and_then(Value::as_i64).unwrap_or(0);
    if new_generation < old_generation {
        errs.push(FieldError::invalid(
            "metadata.generation",
            new_generation,
            "must not be decremented",
        ));
    }
    for key in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        let normalize = |v: Option<&Value>| match v {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(s)) if s.is_empty() => Value::Null,
            Some(v) => v.clone(),
        };
        let new_value = normalize(new.get(key));
        if new_value != normalize(old.get(key)) {
            errs.push(FieldError::invalid(
                path::child("metadata", key),
                new_value,
                "field is immutable",
            ));
        }
    }
    errs
}

/// Validates the `metadata` of an embedded resource (`x-kubernetes-embedded-resource`) at
/// `field` (`spec.template.metadata`), as `objectmeta.validateEmbeddedResource` does: names
/// need only be path segments and a namespace is optional.
pub(crate) fn validate_embedded_object_meta(field: &str, meta: &Value) -> Vec<FieldError> {
    validate_meta(
        field,
        meta,
        NameRule::PathSegment,
        NamespaceRule::Optional,
        false,
    )
}

fn validate_meta(
    field: &str,
    meta: &Value,
    name_rule: NameRule,
    namespace_rule: NamespaceRule,
    name_required: bool,
) -> Vec<FieldError> {
    let empty = Map::new();
    let meta = match meta {
        Value::Null => &empty,
        Value::Object(map) => map,
        other => return vec![type_error(field, other, "object")],
    };
    let mut errs = Vec::new();
    let child = |name: &str| path::child(field, name);

    // Scalar fields: wrong JSON types first, so later checks can read them as they are.
    for (key, expected) in [
        ("name", "string"),
        ("generateName", "string"),
        ("namespace", "string"),
        ("selfLink", "string"),
        ("uid", "string"),
        ("resourceVersion", "string"),
        ("generation", "integer"),
        ("creationTimestamp", "string"),
        ("deletionTimestamp", "string"),
        ("deletionGracePeriodSeconds", "integer"),
    ] {
        if let Some(value) = meta.get(key) {
            let ok = match (expected, value) {
                (_, Value::Null) => true,
                ("string", Value::String(_)) => true,
                ("integer", Value::Number(n)) => n.is_i64(),
                _ => false,
            };
            if !ok {
                errs.push(type_error(&child(key), value, expected));
            }
        }
    }
    for key in ["creationTimestamp", "deletionTimestamp"] {
        if let Some(Value::String(s)) = meta.get(key)
            && s.parse::<jiff::Timestamp>().is_err()
        {
            errs.push(FieldError::invalid(
                child(key),
                s.as_str(),
                "must be an RFC 3339 date-time",
            ));
        }
    }

    let text = |key: &str| meta.get(key).and_then(Value::as_str).unwrap_or("");
    let generate_name = text("generateName");
    if !generate_name.is_empty() {
        for msg in check_name(name_rule, generate_name, true) {
            errs.push(FieldError::invalid(
                child("generateName"),
                generate_name,
                msg,
            ));
        }
    }
    let name = text("name");
    if name.is_empty() {
        if name_required && generate_name.is_empty() {
            errs.push(FieldError::required(
                child("name"),
                "name or generateName is required",
            ));
        }
    } else {
        for msg in check_name(name_rule, name, false) {
            errs.push(FieldError::invalid(child("name"), name, msg));
        }
    }
    let namespace = text("namespace");
    match namespace_rule {
        NamespaceRule::Required if namespace.is_empty() => {
            errs.push(FieldError::required(child("namespace"), ""))
        }
        NamespaceRule::Forbidden if !namespace.is_empty() => {
            errs.push(FieldError::forbidden(
                child("namespace"),
                "not allowed on this type",
            ));
        }
        NamespaceRule::Required | NamespaceRule::Optional if !namespace.is_empty() => {
            for msg in is_dns1123_label(namespace) {
                errs.push(FieldError::invalid(child("namespace"), namespace, msg));
            }
        }
        _ => {}
    }
    if let Some(generation) = meta.get("generation").and_then(Value::as_i64)
        && generation < 0
    {
        errs.push(FieldError::invalid(
            child("generation"),
            generation,
            "must be greater than or equal to 0",
        ));
    }

    validate_labels(&child("labels"), meta.get("labels"), &mut errs);
    validate_annotations(&child("annotations"), meta.get("annotations"), &mut errs);
    validate_owner_references(
        &child("ownerReferences"),
        meta.get("ownerReferences"),
        &mut errs,
    );
    validate_finalizers(&child("finalizers"), meta.get("finalizers"), &mut errs);
    validate_managed_fields(
        &child("managedFields"),
        meta.get("managedFields"),
        &mut errs,
    );
    errs
}

/// `NameIsDNSSubdomain` / `ValidatePathSegmentName`; a prefix (`generateName`) has a trailing
/// dash masked first, exactly as Kubernetes' `maskTrailingDash` does (it drops two characters
/// and appends `a`).
fn check_name(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    match (rule, prefix) {
        (NameRule::Dns1123Subdomain, false) => is_dns1123_subdomain(name),
        (NameRule::Dns1123Subdomain, true) => is_dns1123_subdomain(&mask_trailing_dash(name)),
        (NameRule::PathSegment, false) => is_valid_path_segment_name(name),
        (NameRule::PathSegment, true) => is_valid_path_segment_prefix(name),
    }
}

fn mask_trailing_dash(name: &str) -> String {
    if name.len() > 1
        && name.ends_with('-')
        && let Some(head) = name.get(..name.len() - 2)
    {
        return format!("{head}a");
    }
    name.to_string()
}

/// A `TypeInvalid` error for a value that is not of the `expected` JSON type.
fn type_error(field: &str, value: &Value, expected: &str) -> FieldError {
    FieldError::type_invalid(field, value.clone(), format!("must be of type {expected}"))
}

/// The strings of a JSON string list, skipping anything else.
fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of a string map, reporting the map or any value of the wrong type.
fn string_map<'a>(
    field: &str,
    value: Option<&'a Value>,
    errs: &mut Vec<FieldError>,
) -> Vec<(&'a str, &'a str)> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k.as_str(), s.as_str())),
                other => {
                    errs.push(type_error(&path::key(field, k), other, "string"));
                    None
                }
            })
            .collect(),
        Some(other) => {
            errs.push(type_error(field, other, "object"));
            Vec::new()
        }
    }
}

/// The items of a list, reporting a value that is not a list.
fn list<'a>(field: &str, value: Option<&'a Value>, errs: &mut Vec<FieldError>) -> &'a [Value] {
    match value {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(other) => {
            errs.push(type_error(field, other, "array"));
            &[]
        }
    }
}

/// `ValidateLabels`: keys are qualified names, values label values; errors name the map.
fn validate_labels(field: &str, labels: Option<&Value>, errs: &mut Vec<FieldError>) {
    for (key, value) in string_map(field, labels, errs) {
        for msg in is_qualified_name(key) {
            errs.push(FieldError::invalid(field, key, msg));
        }
        for msg in is_valid_label_value(value) {
            errs.push(FieldError::invalid(field, value, msg));
        }
    }
}

/// `ValidateAnnotations`: keys are qualified names in any case; keys and values together are
/// at most 256 KiB.
fn validate_annotations(field: &str, annotations: Option<&Value>, errs: &mut Vec<FieldError>) {
    let entries = string_map(field, annotations, errs);
    for (key, _) in &entries {
        for msg in is_qualified_name(&key.to_lowercase()) {
            errs.push(FieldError::invalid(field, *key, msg));
        }
    }
    let total: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > TOTAL_ANNOTATION_SIZE_LIMIT_BYTES {
        errs.push(FieldError::too_long(
            field,
            TOTAL_ANNOTATION_SIZE_LIMIT_BYTES,
        ));
    }
}

/// `ValidateFinalizers`: each a qualified name; `orphan` and `foregroundDeletion` exclusive.
fn validate_finalizers(field: &str, finalizers: Option<&Value>, errs: &mut Vec<FieldError>) {
    let items = list(field, finalizers, errs);
    let mut names = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(name) => {
                for msg in is_qualified_name(name) {
                    errs.push(FieldError::invalid(field, name.as_str(), msg));
                }
                names.push(name.as_str());
            }
            other => errs.push(type_error(&path::index(field, i), other, "string")),
        }
    }
    if names.contains(&FINALIZER_ORPHAN) && names.contains(&FINALIZER_FOREGROUND) {
        errs.push(FieldError::invalid(
            field,
            Value::Array(items.to_vec()),
            format!("finalizer {FINALIZER_ORPHAN} and {FINALIZER_FOREGROUND} cannot be both set"),
        ));
    }
}

/// `ValidateOwnerReferences`: apiVersion (with a version), kind, name and uid are required, a
/// core `Event` may not own anything, and at most one reference is the controller.
///
/// Kubernetes reports these errors without the list index (`metadata.ownerReferences.uid`);
/// wrong JSON types carry the index.
fn validate_owner_references(field: &str, refs: Option<&Value>, errs: &mut Vec<FieldError>) {
    let items = list(field, refs, errs);
    let mut first_controller: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let item_field = path::index(field, i);
        let Value::Object(reference) = item else {
            errs.push(type_error(&item_field, item, "object"));
            continue;
        };
        let mut text = |key: &str| match reference.get(key) {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                errs.push(type_error(&path::child(&item_field, key), other, "string"));
                ""
            }
        };
        let api_version = text("apiVersion");
        let kind = text("kind");
        let name = text("name");
        let uid = text("uid");
        for key in ["controller", "blockOwnerDeletion"] {
            if let Some(value) = reference.get(key)
                && !value.is_null()
                && !value.is_boolean()
            {
                errs.push(type_error(&path::child(&item_field, key), value, "boolean"));
            }
        }

        let (group, version) = parse_group_version(api_version);
        if version.is_empty() {
            errs.push(FieldError::invalid(
                path::child(field, "apiVersion"),
                api_version,
                "version must not be empty",
            ));
        }
        if kind.is_empty() {
            errs.push(FieldError::invalid(
                path::child(field, "kind"),
                kind,
                "kind must not be empty",
            ));
        }
        if name.is_empty() {
            errs.push(FieldError::invalid(
                path::child(field, "name"),
                name,
                "name must not be empty",
            ));
        }
        if uid.is_empty() {
            errs.push(FieldError::invalid(
                path::child(field, "uid"),
                uid,
                "uid must not be empty",
            ));
        }
        if group.is_empty() && version == "v1" && kind == "Event" {
            errs.push(FieldError::invalid(
                field,
                item.clone(),
                "/v1, Kind=Event is disallowed from being an owner",
            ));
        }
        if reference.get("controller") == Some(&Value::Bool(true)) {
            let current = format!("{kind}/{name}");
            match &first_controller {
                Some(first) => errs.push(FieldError::invalid(
                    field,
                    Value::Array(items.to_vec()),
                    format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"
                    ),
                )),
                None => first_controller = Some(current),
            }
        }
    }
}

/// `schema.ParseGroupVersion` as `FromAPIVersionAndKind` uses it: a malformed apiVersion has an
/// empty version.
fn parse_group_version(api_version: &str) -> (&str, &str) {
    if api_version.is_empty() || api_version == "/" {
        return ("", "");
    }
    match api_version.matches('/').count() {
        0 => ("", api_version),
        1 => api_version.split_once('/').unwrap_or(("", "")),
        _ => ("", ""),
    }
}

/// `ValidateManagedFields`: operation `Apply` or `Update`, fieldsType `FieldsV1`, a printable
/// manager of at most 128 bytes and a subresource of at most 256.
fn validate_managed_fields(field: &str, entries: Option<&Value>, errs: &mut Vec<FieldError>) {
    for (i, entry) in list(field, entries, errs).iter().enumerate() {
        let entry_field = path::index(field, i);
        let Value::Object(entry) = entry else {
            errs.push(type_error(&entry_field, entry, "object"));
            continue;
        };
        let mut text = |key: &str| match entry.get(key) {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                errs.push(type_error(&path::child(&entry_field, key), other, "string"));
                ""
            }
        };
        let operation = text("operation");
        let fields_type = text("fieldsType");
        let manager = text("manager");
        let subresource = text("subresource");
        if operation != "Apply" && operation != "Update" {
            errs.push(FieldError::invalid(
                path::child(&entry_field, "operation"),
                operation,
                "must be `Apply` or `Update`",
            ));
        }
        if !fields_type.is_empty() && fields_type != "FieldsV1" {
            errs.push(FieldError::invalid(
                path::child(&entry_field, "fieldsType"),
                fields_type,
                "must be `FieldsV1`",
            ));
        }
        if manager.len() > FIELD_MANAGER_MAX_LENGTH {
            errs.push(FieldError::too_long(
                path::child(&entry_field, "manager"),
                FIELD_MANAGER_MAX_LENGTH,
            ));
        }
        for (position, c) in manager.char_indices() {
            if c.is_control() {
                errs.push(FieldError::invalid(
                    path::child(&entry_field, "manager"),
                    manager,
                    format!(
                        "invalid character U+{:04X} (at position {position})",
                        c as u32
                    ),
                ));
            }
        }
        if subresource.len() > SUBRESOURCE_NAME_MAX_LENGTH {
            errs.push(FieldError::too_long(
                path::child(&entry_field, "subresource"),
                SUBRESOURCE_NAME_MAX_LENGTH,
            ));
        }
    }
}

#[cfg(test)]
#[path = "objectmeta_tests.rs"]
mod tests;
