//! Create and replace (PUT) of objects and their status subresource, and the write pipeline
//! that PATCH (`patch.rs`) shares.
//!
//! Every write goes through one pipeline, in Kubernetes' order:
//! decode → unknown-field check (`fieldValidation`) → server-owned metadata → defaulting →
//! validation (schema and metadata) → field-manager bookkeeping → no-op check → conditional
//! store write.
//!
//! # Invariants
//!
//! - `generation` rises exactly when something outside `metadata` and `status` changes (and
//!   once when deletion starts — see `delete.rs`). Status writes never bump it.
//! - The main resource never changes `status` of a kind with a status subresource; the status
//!   subresource changes nothing but `status` (and its managedFields).
//! - A write that changes nothing gets the current object back: no new revision, no event.
//! - `dryRun=All` runs every step but the store write.
//! - An object whose deletion has started and whose last finalizer is removed is deleted.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use corral_apimachinery::managed::{self, ManagedFieldsEntry, UpdateOptions};
use corral_apimachinery::validation::{self, FieldError};
use corral_store::{KeyValue, StoreError};
use serde_json::{Value, json};

use super::{Accept, ResourceRequest, Subresource, decode_body, read};
use crate::ApiServer;
use crate::error::{ApiError, ApiResult, Reason, Target};
use crate::object::{self, Stored};
use crate::query::FieldValidation;

/// Metadata fields only the server sets.
const SERVER_OWNED: &[&str] = &[
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// Warnings for the `Warning` response header (unknown fields under `fieldValidation=Warn`).
#[derive(Default)]
pub(super) struct Warnings(pub(super) Vec<String>);

pub(super) fn with_warnings(mut response: Response, warnings: &Warnings) -> Response {
    for w in &warnings.0 {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// Fills a missing `apiVersion`/`kind` of a built-in kind's body from the URL (clients such as
/// the Python one send core objects without them); custom resources must carry both.
pub(super) fn default_builtin_type_meta(request: &ResourceRequest, body: &mut Value) {
    if !request.resource.builtin {
        return;
    }
    if let Some(map) = body.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| json!(request.api_version()));
        map.entry("kind")
            .or_insert_with(|| json!(request.resource.kind));
    }
}

pub(super) fn check_type_meta(request: &ResourceRequest, body: &Value) -> ApiResult<()> {
    let expected = request.api_version();
    match body.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v == expected => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected})"
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "Object 'apiVersion' is missing in the request body",
            ));
        }
    }
    match body.get("kind").and_then(Value::as_str) {
        Some(k) if k == request.resource.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                request.resource.kind
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "Object 'Kind' is missing in the request body",
            ));
        }
    }
    match body.get("metadata") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the request body's metadata must be an object",
        )),
    }
}

/// Applies `fieldValidation` to unknown fields: an error (Strict), a warning (Warn) or nothing
/// (Ignore); the fields are pruned in the last two cases.
pub(super) fn handle_unknown_fields(
    request: &ResourceRequest,
    object: &mut Value,
    warnings: &mut Warnings,
) -> ApiResult<()> {
    let version = request
        .resource
        .version(&request.version)
        .expect("version was checked when routing");
    let unknown = version.schema.prune(object);
    if unknown.is_empty() {
        return Ok(());
    }
    match FieldValidation::from_query(&request.query)? {
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
    request: &ResourceRequest,
    object: &mut Value,
    target: &Target,
) -> ApiResult<()> {
    let version = request
        .resource
        .version(&request.version)
        .expect("version was checked when routing");
    version.schema.apply_defaults(object);
    let mut errors = validation::validate_object_meta(
        object.get("metadata").unwrap_or(&Value::Null),
        request.resource.namespaced,
    );
    if request.resource.is_namespace() {
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

pub(super) fn subresource_name(request: &ResourceRequest) -> Option<String> {
    request
        .subresource
        .map(|Subresource::Status| "status".to_string())
}

pub(super) fn raw_schema(request: &ResourceRequest) -> &Value {
    &request
        .resource
        .version(&request.version)
        .expect("version was checked when routing")
        .raw_schema
}

/// Records a non-apply write in managedFields.
fn track_update(
    request: &ResourceRequest,
    old: Option<&Value>,
    new: &mut Value,
    base: &[ManagedFieldsEntry],
) {
    let entries = managed::update(
        old,
        new,
        &request.field_manager(),
        base,
        UpdateOptions {
            subresource: subresource_name(request),
            api_version: request.api_version(),
            now: object::now_rfc3339(),
        },
        raw_schema(request),
    );
    set_managed_fields(new, entries);
}

/// The managedFields a non-apply write starts from, as in Kubernetes: a non-empty list sent by
/// the client replaces the stored one (kubectl uses this to hand fields from client-side to
/// server-side apply), a list of empty entries (`[{}]`) resets ownership, and anything else
/// keeps what is stored.
fn managed_fields_base(sent: Option<&Value>, stored: Option<&Value>) -> Vec<ManagedFieldsEntry> {
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

/// Makes sure a namespace exists (used for `default` at start).
pub async fn ensure_namespace(server: &ApiServer, name: &str) -> Result<(), StoreError> {
    let Some(resource) = server.registry.lookup("", "namespaces") else {
        return Ok(());
    };
    let key = resource.key(None, name);
    if server.store.get(&key).await?.is_some() {
        return Ok(());
    }
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": object::now_rfc3339(),
            "generation": 1,
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    });
    match server.store.create(&key, object::encode(&namespace)).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Namespaced objects may only be created in a namespace that exists and is not terminating.
/// Like Kubernetes' NamespaceLifecycle admission, this reads the watch cache and falls back to
/// the store only when the cache does not know the namespace (it may have just been created).
pub(super) async fn check_namespace_open(
    request: &ResourceRequest,
    namespace: &str,
) -> ApiResult<()> {
    let Some(ns_type) = request.server.registry.lookup("", "namespaces") else {
        return Ok(());
    };
    let target = ns_type.target(namespace);
    let key = ns_type.key(None, namespace);
    let cached = request
        .server
        .cache(ns_type)
        .get(&key)
        .map(|o| o.value.clone());
    let object = match cached {
        Some(object) => object,
        None => {
            let kv = request
                .server
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::from_store(e, &target))?
                .ok_or_else(|| ApiError::not_found(&target))?;
            object::decode(&kv)
                .map_err(|e| ApiError::internal("stored namespace is corrupt", &e))?
                .object
        }
    };
    if object::is_deleting(&object) {
        return Err(ApiError::new(
            Reason::Forbidden,
            format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                request.target().qualified_resource(),
                request.object_name()
            ),
        ));
    }
    Ok(())
}

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
    request: &ResourceRequest,
    mut object: Value,
    warnings: &mut Warnings,
) -> ApiResult<Value> {
    check_type_meta(request, &object)?;
    let meta = object::meta_mut(&mut object);
    match (
        meta.get("namespace").and_then(Value::as_str),
        request.namespace.as_deref(),
    ) {
        (Some(body_ns), Some(url_ns)) if !body_ns.is_empty() && body_ns != url_ns => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        _ => {}
    }
    match &request.namespace {
        Some(ns) if request.resource.namespaced => {
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
    if request.resource.has_status
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
    }
    handle_unknown_fields(request, &mut object, warnings)?;
    let storage = request.resource.storage_version();
    let map = object.as_object_mut().expect("checked to be an object");
    map.insert(
        "apiVersion".into(),
        json!(request.resource.api_version(&storage.name)),
    );
    map.insert("kind".into(), json!(request.resource.kind));
    let meta = object::meta_mut(&mut object);
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    if request.resource.is_namespace() {
        // Namespaces are born Active with the `kubernetes` finalizer, as in Kubernetes.
        object["spec"]["finalizers"] = json!(["kubernetes"]);
        object["status"] = json!({"phase": "Active"});
    }
    Ok(object)
}

pub async fn create(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    if request.resource.namespaced && request.namespace.is_none() {
        return Err(ApiError::no_route());
    }
    let dry_run = request.query.dry_run()?;
    if request.query.bool("force") {
        return Err(ApiError::new(
            Reason::Invalid,
            "force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    let mut warnings = Warnings::default();
    let mut body = decode_body(&request.headers, &request.resource, &body)?;
    default_builtin_type_meta(&request, &mut body);
    let mut object = prepare_create(&request, body, &mut warnings)?;
    let generate_name = object::meta_str(&object, "generateName").map(String::from);
    let explicit_name = object::meta_str(&object, "name").map(String::from);
    if let Some(ns) = &request.namespace {
        check_namespace_open(&request, ns).await?;
    }
    let attempts = if explicit_name.is_none() && generate_name.is_some() {
        8
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
        let target = request.resource.target(&name);
        let mut candidate = object.clone();
        default_and_validate(&request, &mut candidate, &target)?;
        if name.is_empty() {
            let error = FieldError::required("metadata.name", "name or generateName is required");
            return Err(ApiError::invalid(&target, &[error]));
        }
        let base = managed_fields_base(object.pointer("/metadata/managedFields"), None);
        track_update(&request, None, &mut candidate, &base);
        if dry_run {
            return Ok(with_warnings(
                read::object_response(&request, Accept::Json, StatusCode::CREATED, candidate),
                &warnings,
            ));
        }
        let key = request.resource.key(request.namespace.as_deref(), &name);
        match request
            .server
            .store
            .create(&key, object::encode(&candidate))
            .await
        {
            Ok(kv) => {
                object::set_resource_version(&mut candidate, kv.mod_revision);
                return Ok(with_warnings(
                    read::object_response(&request, Accept::Json, StatusCode::CREATED, candidate),
                    &warnings,
                ));
            }
            Err(StoreError::AlreadyExists { .. }) if attempt + 1 < attempts => continue,
            Err(e) => return Err(ApiError::from_store(e, &target)),
        }
    }
    unreachable!("the last attempt always returns")
}

/// Builds the object an update will store from the current one and the client's intent, or
/// `None` when nothing changes.
pub(super) fn prepare_update(
    request: &ResourceRequest,
    current: &Value,
    mut desired: Value,
    warnings: &mut Warnings,
    track: bool,
) -> ApiResult<Option<Value>> {
    let name = request.object_name();
    let target = request.target();
    check_type_meta(request, &desired)?;
    let body_name = object::meta_str(&desired, "name").unwrap_or("");
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(body_ns), Some(url_ns)) =
        (object::namespace(&desired), request.namespace.as_deref())
        && body_ns != url_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    handle_unknown_fields(request, &mut desired, warnings)?;
    // An apply computed the new managedFields itself (`apply_to`); keep them. Every other
    // write records its managedFields below, from the stored ones.
    let applied_managed_fields =
        (!track).then(|| desired.pointer("/metadata/managedFields").cloned());
    let sent_managed_fields = desired.pointer("/metadata/managedFields").cloned();
    let mut next = match request.subresource {
        // The status subresource takes nothing but status from the client.
        Some(Subresource::Status) => {
            let mut next = current.clone();
            match desired.get("status") {
                Some(status) => next["status"] = status.clone(),
                None => {
                    if let Some(map) = next.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            next
        }
        None => {
            let mut next = desired;
            if request.resource.has_status {
                match current.get("status") {
                    Some(status) => next["status"] = status.clone(),
                    None => {
                        if let Some(map) = next.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            // The uid is immutable (ValidateObjectMetaUpdate); the other server-owned fields
            // are silently kept from the stored object, as Kubernetes' BeforeUpdate does.
            if let Some(uid) = object::meta_str(&next, "uid").filter(|u| !u.is_empty())
                && uid != object::uid(current)
            {
                let error = FieldError::invalid("metadata.uid", json!(uid), "field is immutable");
                return Err(ApiError::invalid(&target, &[error]));
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
            next
        }
    };
    let storage = request.resource.storage_version();
    next["apiVersion"] = json!(request.resource.api_version(&storage.name));
    next["kind"] = json!(request.resource.kind);
    if let Some(managed_fields) = applied_managed_fields {
        let meta = object::meta_mut(&mut next);
        match managed_fields {
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
    default_and_validate(request, &mut next, &target)?;
    if object::is_deleting(current) {
        let old: Vec<String> = object::finalizers(current);
        if object::finalizers(&next).iter().any(|f| !old.contains(f)) {
            let error = FieldError::forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted",
            );
            return Err(ApiError::invalid(&target, &[error]));
        }
    }
    if object::spec_part_differs(current, &next, request.resource.has_status) {
        let generation = object::generation(current) + 1;
        object::meta_mut(&mut next).insert("generation".into(), json!(generation));
    }
    if track {
        let base = managed_fields_base(sent_managed_fields.as_ref(), Some(current));
        track_update(request, Some(current), &mut next, &base);
    }
    // managedFields count: an apply that only changes ownership (a second applier of an
    // equal value) must be stored. Unchanged writes keep their entries' times, so a true
    // no-op stays one.
    if *current == next {
        return Ok(None);
    }
    Ok(Some(next))
}

/// Stores an update conditional on `current`'s revision; an object being deleted whose last
/// finalizer went is deleted instead. Returns the reply body.
pub(super) async fn commit(
    request: &ResourceRequest,
    current: &Stored,
    mut next: Value,
) -> ApiResult<Value> {
    let key = request.key();
    let store = &request.server.store;
    if object::is_deleting(&next) && object::finalizers(&next).is_empty() {
        let kv = store
            .delete(&key, current.revision)
            .await
            .map_err(|e| ApiError::from_store(e, &request.target()))?;
        object::set_resource_version(&mut next, kv.mod_revision);
        return Ok(next);
    }
    let kv: KeyValue = store
        .update(&key, current.revision, object::encode(&next))
        .await
        .map_err(|e| ApiError::from_store(e, &request.target()))?;
    object::set_resource_version(&mut next, kv.mod_revision);
    Ok(next)
}

pub(super) async fn read_current(request: &ResourceRequest) -> ApiResult<Option<Stored>> {
    let kv = request
        .server
        .store
        .get(&request.key())
        .await
        .map_err(|e| ApiError::from_store(e, &request.target()))?;
    match kv {
        None => Ok(None),
        Some(kv) => {
            Ok(Some(object::decode(&kv).map_err(|e| {
                ApiError::internal("stored object is corrupt", &e)
            })?))
        }
    }
}

pub async fn replace(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    let dry_run = request.query.dry_run()?;
    let target = request.target();
    let mut desired = decode_body(&request.headers, &request.resource, &body)?;
    default_builtin_type_meta(&request, &mut desired);
    check_type_meta(&request, &desired)?;
    let body_name = object::meta_str(&desired, "name").unwrap_or("");
    if body_name != request.object_name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            request.object_name()
        )));
    }
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
    if !dry_run
        && let Some(current) = cached_at(&request, &rv)
        && let Some(response) = replace_if_current(&request, &current, desired.clone()).await
    {
        return Ok(response);
    }
    let current = read_current(&request)
        .await?
        .ok_or_else(|| ApiError::not_found(&target))?;
    if rv != current.revision.to_string() {
        return Err(ApiError::modified(&target));
    }
    replace_current(&request, current, desired, dry_run).await
}

/// The replace on `current`, if it commits; `None` otherwise (nothing is written then).
async fn replace_if_current(
    request: &ResourceRequest,
    current: &Stored,
    desired: Value,
) -> Option<Response> {
    let mut warnings = Warnings::default();
    let next = prepare_update(request, &current.object, desired, &mut warnings, true).ok()??;
    let result = commit(request, current, next).await.ok()?;
    Some(with_warnings(
        read::object_response(request, Accept::Json, StatusCode::OK, result),
        &warnings,
    ))
}

/// The rest of a replace, on `current`: the object at the revision the client named.
async fn replace_current(
    request: &ResourceRequest,
    current: Stored,
    desired: Value,
    dry_run: bool,
) -> ApiResult<Response> {
    let mut warnings = Warnings::default();
    let result = match prepare_update(request, &current.object, desired, &mut warnings, true)? {
        None => current.object,
        Some(next) if dry_run => next,
        Some(next) => commit(request, &current, next).await?,
    };
    Ok(with_warnings(
        read::object_response(request, Accept::Json, StatusCode::OK, result),
        &warnings,
    ))
}

/// The object as the watch cache holds it, if (and only if) the cache holds it at exactly
/// revision `rv`: then it is what the store holds at that revision.
fn cached_at(request: &ResourceRequest, rv: &str) -> Option<Stored> {
    let revision: i64 = rv.parse().ok()?;
    let cached = request
        .server
        .cache(&request.resource)
        .get(&request.key())?;
    (cached.revision == revision).then(|| Stored {
        object: cached.value.clone(),
        revision,
    })
}
