//! The default policy: roles and bindings every API server makes sure exist at start
//! (`builtin/policy.yaml`, plus what [`Config::policy`](crate::Config) adds).
//!
//! # Invariants
//!
//! - Created when missing, never overwritten: an operator's change to a default role stays.
//! - Idempotent and safe for several servers at once (a create that finds the object there is
//!   done).

use corral_store::StoreError;
use serde_json::Value;

use crate::object;
use crate::server::ApiServer;

const BUILTIN: &str = include_str!("../../builtin/policy.yaml");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}: not a list of RBAC objects: {message}")]
    Invalid { origin: String, message: String },
    #[error("storing the default policy")]
    Store(#[from] StoreError),
}

/// Makes sure every object of the built-in policy and of `extra` ((origin, YAML) pairs) exists.
pub async fn ensure(server: &ApiServer, extra: &[(&str, &str)]) -> Result<(), PolicyError> {
    let mut sources = vec![("builtin/policy.yaml", BUILTIN)];
    sources.extend_from_slice(extra);
    for (origin, text) in sources {
        let invalid = |message: String| PolicyError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| invalid(e.to_string()))?;
        for document in documents.into_iter().filter(|d| !d.is_null()) {
            let kind = document["kind"].as_str().unwrap_or("");
            let plural = match kind {
                "ClusterRole" => "clusterroles",
                "ClusterRoleBinding" => "clusterrolebindings",
                other => {
                    return Err(invalid(format!(
                        "{other:?} is not a cluster-wide RBAC kind"
                    )));
                }
            };
            let name = document["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if name.is_empty() {
                return Err(invalid(format!("a {kind} without a name")));
            }
            let Some(resource) = server.registry.lookup(super::rbac::GROUP, plural) else {
                continue;
            };
            let key = resource.key(None, &name);
            if server.store.get(&key).await?.is_some() {
                continue;
            }
            let mut object = document;
            object["metadata"]["uid"] = uuid::Uuid::new_v4().to_string().into();
            object["metadata"]["creationTimestamp"] = object::now_rfc3339().into();
            match server.store.create(&key, object::encode(&object)).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}
