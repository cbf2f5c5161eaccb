//! The default policy: roles and bindings every API server makes sure exist at start
//! (`builtin/policy.yaml`, plus what [`Config::policy`](crate::Config) adds).
//!
//! # Invariants
//!
//! - Created when missing. An existing default is reconciled as Kubernetes reconciles its
//!   bootstrap policy: the rules a default ClusterRole lacks and the subjects a default binding
//!   lacks are added (so a rack made by an older version gains what a newer one grants), and
//!   nothing is ever removed — an operator's additions stay. An object annotated
//!   `rbac.authorization.kubernetes.io/autoupdate: "false"` is left exactly as it is.
//! - Idempotent and safe for several servers at once (a create that finds the object there is
//!   done; an update that loses a race is left to the server that won it, which adds the
//!   same).

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
            if let Some(existing) = server.store.get(&key).await? {
                let Ok(stored) = object::decode(&existing) else {
                    continue;
                };
                if let Some(reconciled) = reconcile(stored.object, &document) {
                    match server
                        .store
                        .update(&key, existing.mod_revision, object::encode(&reconciled))
                        .await
                    {
                        Ok(_) | Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                            tracing::info!(%kind, %name, "default policy object gained what it lacked");
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                continue;
            }
            let mut object = document;
            object["metadata"]["uid"] = crate::object::new_uid().into();
            object["metadata"]["creationTimestamp"] = object::now_rfc3339().into();
            match server.store.create(&key, object::encode(&object)).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

/// Annotation that keeps a default policy object as the operator left it.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// `existing` with what `default` has and it lacks — rules of a role, subjects of a binding —
/// or `None` when it lacks nothing (or must not be touched).
fn reconcile(mut existing: Value, default: &Value) -> Option<Value> {
    let autoupdate = existing["metadata"]["annotations"][AUTOUPDATE].as_str();
    if autoupdate == Some("false") {
        return None;
    }
    let field = if default.get("rules").is_some() {
        "rules"
    } else {
        "subjects"
    };
    let wanted = default[field].as_array().cloned().unwrap_or_default();
    let have = existing[field].as_array().cloned().unwrap_or_default();
    let missing: Vec<Value> = wanted
        .into_iter()
        .filter(|entry| !have.contains(entry))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut merged = have;
    merged.extend(missing);
    existing[field] = Value::Array(merged);
    Some(existing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reconciling_adds_what_is_missing_and_removes_nothing() {
        let default = json!({"rules": [{"verbs": ["get"], "resources": ["a"]},
                                        {"verbs": ["get"], "nonResourceURLs": ["/audit"]}]});
        let edited = json!({"metadata": {}, "rules": [{"verbs": ["get"], "resources": ["a"]},
                                                       {"verbs": ["list"], "resources": ["b"]}]});
        let reconciled = reconcile(edited, &default).expect("a rule is missing");
        assert_eq!(reconciled["rules"].as_array().unwrap().len(), 3);
        assert_eq!(reconcile(reconciled.clone(), &default), None);
        let mut kept = reconciled;
        kept["rules"] = json!([]);
        kept["metadata"]["annotations"] = json!({AUTOUPDATE: "false"});
        assert_eq!(reconcile(kept, &default), None);
        let binding = json!({"subjects": [{"kind": "Group", "name": "g"}]});
        let existing = json!({"metadata": {}, "subjects": []});
        let reconciled = reconcile(existing, &binding).unwrap();
        assert_eq!(reconciled["subjects"], binding["subjects"]);
    }
}
