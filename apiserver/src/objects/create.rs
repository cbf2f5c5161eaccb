//! Create: a client's body becomes a new object — server-owned metadata set, defaulted,
//! validated, recorded in managedFields — stored only if its key is free.
//!
//! # Invariants
//!
//! - A new object has a fresh uid, `generation` 1, a creation time, no status of a kind with
//!   a status subresource, and no server-owned metadata from the client.
//! - Nothing is stored that admission refused.
//! - The store write is a create-if-absent: an existing object is never overwritten. With
//!   `generateName`, a name that is taken is drawn again (a few times) instead.

use corral_apimachinery::validation::FieldError;
use corral_store::StoreError;
use serde_json::{Value, json};

use super::admission::Verb;
use super::context::{Warnings, WriteContext, WriteKind, Written};
use super::managed_fields::{managed_fields_base, track_update};
use super::namespace::check_namespace_open;
use super::pipeline::{
    SERVER_OWNED, check_type_meta, default_and_validate, default_builtin_type_meta,
    handle_unknown_fields, set_storage_type_meta,
};
use crate::error::{ApiError, ApiResult};
use crate::object;

/// How many names a `generateName` create draws before it gives up.
const GENERATE_NAME_ATTEMPTS: usize = 8;

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Turns a client's body into a new object ready to store (everything but the name when
/// `generateName` is used, which is drawn per attempt).
pub(super) fn prepare_create(
    context: &WriteContext<'_>,
    mut object: Value,
    warnings: &mut Warnings,
) -> ApiResult<Value> {
    check_type_meta(context, &object)?;
    let url_namespace = context.object.namespace;
    let meta = object::meta_mut(&mut object);
    match (meta.get("namespace").and_then(Value::as_str), url_namespace) {
        (Some(body_ns), Some(url_ns)) if !body_ns.is_empty() && body_ns != url_ns => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        _ => {}
    }
    match url_namespace {
        Some(ns) if context.resource().namespaced => {
            meta.insert("namespace".into(), json!(ns));
        }
        _ => {
            meta.remove("namespace");
        }
    }
    for field in SERVER_OWNED {
        meta.remove(*field);
    }
    meta.remove("resourceVersion");
    if meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        meta.remove("name");
    }
    if context.resource().has_status
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
    }
    handle_unknown_fields(context, &mut object, warnings)?;
    set_storage_type_meta(context, &mut object);
    let meta = object::meta_mut(&mut object);
    meta.insert("uid".into(), json!(crate::object::new_uid()));
    meta.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    if context.resource().is_namespace() {
        // Namespaces are born Active with the `kubernetes` finalizer, as in Kubernetes.
        object["spec"]["finalizers"] = json!(["kubernetes"]);
        object["status"] = json!({"phase": "Active"});
    }
    Ok(object)
}

/// Creates the object `body` describes (POST on a collection).
pub async fn create(context: &WriteContext<'_>, mut body: Value) -> ApiResult<Written> {
    let mut warnings = Warnings::default();
    default_builtin_type_meta(context, &mut body);
    let mut object = prepare_create(context, body, &mut warnings)?;
    let generate_name = object::meta_str(&object, "generateName").map(String::from);
    let explicit_name = object::meta_str(&object, "name").map(String::from);
    if let Some(ns) = context.object.namespace {
        check_namespace_open(context, ns).await?;
    }
    let attempts = if explicit_name.is_none() && generate_name.is_some() {
        GENERATE_NAME_ATTEMPTS
    } else {
        1
    };
    for attempt in 0..attempts {
        let name = match (&explicit_name, &generate_name) {
            (Some(name), _) => name.clone(),
            (None, Some(prefix)) => format!("{prefix}{}", random_suffix()),
            (None, None) => String::new(),
        };
        if !name.is_empty() {
            object::meta_mut(&mut object).insert("name".into(), json!(name));
        }
        let target = context.resource().target(&name);
        let mut candidate = object.clone();
        default_and_validate(context, &mut candidate, &target)?;
        if name.is_empty() {
            let error = FieldError::required("metadata.name", "name or generateName is required");
            return Err(ApiError::invalid(&target, &[error]));
        }
        let base = managed_fields_base(object.pointer("/metadata/managedFields"), None);
        track_update(context, None, &mut candidate, &base);
        context.admit(Verb::Create, None, &candidate).await?;
        if context.dry_run {
            return Ok(Written::new(candidate, WriteKind::Created, warnings));
        }
        let key = context.resource().key(context.object.namespace, &name);
        let store = &context.object.server.store;
        match store.create(&key, object::encode(&candidate)).await {
            Ok(kv) => {
                object::set_resource_version(&mut candidate, kv.mod_revision);
                return Ok(Written::new(candidate, WriteKind::Created, warnings));
            }
            Err(StoreError::AlreadyExists { .. }) if attempt + 1 < attempts => continue,
            Err(e) => return Err(ApiError::from_store(e, &target)),
        }
    }
    unreachable!("the last attempt always returns")
}
