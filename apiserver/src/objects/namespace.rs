//! Namespaces as the write path sees them: the built-in ones exist, and nothing new is made in
//! a namespace that is missing or terminating (Kubernetes' NamespaceLifecycle admission).
//!
//! # Assumptions
//!
//! - The admission check reads the watch cache first, so a create racing the last moments of
//!   a namespace's deletion can land; the garbage collector deletes such objects (`gc.rs`).

use corral_store::StoreError;
use serde_json::json;

use super::context::WriteContext;
use crate::error::{ApiError, ApiResult, Reason};
use crate::object;
use crate::server::ApiServer;

/// Makes sure a namespace exists (used for `default` at start). A namespace another API
/// server created first is success.
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
            "uid": crate::object::new_uid(),
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
    context: &WriteContext<'_>,
    namespace: &str,
) -> ApiResult<()> {
    let server = context.object.server;
    let Some(ns_type) = server.registry.lookup("", "namespaces") else {
        return Ok(());
    };
    let target = ns_type.target(namespace);
    let key = ns_type.key(None, namespace);
    let cached = server.cache(ns_type).get(&key);
    let deleting = match cached {
        // Read in place: every namespaced create passes here.
        Some(cached) => object::is_deleting(&cached.value),
        None => {
            let kv = server
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::from_store(e, &target))?
                .ok_or_else(|| ApiError::not_found(&target))?;
            let decoded = object::decode(&kv)
                .map_err(|e| ApiError::internal("stored namespace is corrupt", &e))?;
            object::is_deleting(&decoded.object)
        }
    };
    if deleting {
        return Err(ApiError::new(
            Reason::Forbidden,
            format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                context.target().qualified_resource(),
                context.object.name
            ),
        ));
    }
    Ok(())
}
