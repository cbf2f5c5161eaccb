//! RBAC: `rbac.authorization.k8s.io/v1` Roles, ClusterRoles and their bindings, evaluated as
//! Kubernetes does.
//!
//! A rule allows a resource request when its `verbs`, `apiGroups` and `resources` each
//! contain the request's (or `*`; a subresource is `resource/sub`, and `*/sub` matches it in
//! every resource) and, if it names `resourceNames`, the request names one of them. A rule
//! allows a non-resource request when its `nonResourceURLs` hold the path (or a prefix ending
//! in `*`). Roles grant in their namespace; ClusterRoles everywhere through a
//! ClusterRoleBinding, or in one namespace through a RoleBinding.
//!
//! # Invariants
//!
//! - Only what a rule allows is allowed; a binding to a role that does not exist grants
//!   nothing.
//! - A writer of a role holds every permission it grants (or may `escalate` roles); a writer
//!   of a binding may `bind` the role it names or holds every permission of it, in the
//!   binding's namespace for a RoleBinding — so no one grants what they do not have.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::attributes::{Attributes, Target};
use crate::auth::User;
use crate::server::ApiServer;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// One PolicyRule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

impl Rule {
    pub fn allows(&self, attributes: &Attributes) -> bool {
        if !matches(&self.verbs, &attributes.verb) {
            return false;
        }
        match &attributes.target {
            Target::Path(path) => self.non_resource_urls.iter().any(|url| {
                url == "*"
                    || url == path
                    || url
                        .strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix))
            }),
            Target::Resource {
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                if !matches(&self.api_groups, group) {
                    return false;
                }
                let combined = match subresource {
                    Some(sub) => format!("{resource}/{sub}"),
                    None => resource.clone(),
                };
                let resource_ok = self.resources.iter().any(|r| {
                    r == "*"
                        || *r == combined
                        || subresource
                            .as_ref()
                            .is_some_and(|sub| r.strip_prefix("*/") == Some(sub.as_str()))
                });
                let name_ok = self.resource_names.is_empty()
                    || name
                        .as_ref()
                        .is_some_and(|name| self.resource_names.contains(name));
                resource_ok && name_ok
            }
        }
    }
}

fn matches(allowed: &[String], value: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a == value)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RoleRef {
    pub(super) kind: String,
    pub(super) name: String,
}

#[derive(Debug, Deserialize)]
struct Subject {
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Binding {
    pub(super) role_ref: RoleRef,
    #[serde(default)]
    subjects: Option<Vec<Subject>>,
}

impl Subject {
    fn names(&self, user: &User, binding_namespace: Option<&str>) -> bool {
        match self.kind.as_str() {
            "User" => self.name == user.name,
            "Group" => user.in_group(&self.name),
            "ServiceAccount" => {
                let namespace = self.namespace.as_deref().or(binding_namespace);
                namespace.is_some_and(|ns| {
                    user.name == format!("system:serviceaccount:{ns}:{}", self.name)
                })
            }
            _ => false,
        }
    }
}

/// The rules of role `kind`/`name` (a Role in `namespace`, or a ClusterRole).
pub(super) fn role_rules(
    server: &ApiServer,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> Vec<Rule> {
    let (plural, namespace) = match kind {
        "ClusterRole" => ("clusterroles", None),
        "Role" => match namespace {
            Some(ns) => ("roles", Some(ns)),
            None => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    let Some(resource) = server.registry.lookup(GROUP, plural) else {
        return Vec::new();
    };
    let Some(role) = server.cache(resource).get(&resource.key(namespace, name)) else {
        return Vec::new();
    };
    role.parsed(rules_of).as_ref().clone()
}

pub(super) fn rules_of(role: &Value) -> Vec<Rule> {
    role.get("rules")
        .and_then(|rules| serde_json::from_value(rules.clone()).ok())
        .unwrap_or_default()
}

/// Every rule that applies to `user` in `namespace` (cluster-wide rules only for `None`).
pub fn rules_for(server: &ApiServer, user: &User, namespace: Option<&str>) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut collect = |plural: &str, prefix: Option<&str>, binding_namespace: Option<&str>| {
        let Some(resource) = server.registry.lookup(GROUP, plural) else {
            return;
        };
        let cache = server.cache(resource);
        let (objects, _) = match prefix {
            Some(ns) => cache.snapshot_prefix(&resource.namespace_prefix(ns)),
            None => cache.snapshot(),
        };
        for object in objects {
            let binding =
                object.parsed(|value| serde_json::from_value::<Binding>(value.clone()).ok());
            let Some(binding) = binding.as_ref() else {
                continue;
            };
            let names_user = binding
                .subjects
                .iter()
                .flatten()
                .any(|s| s.names(user, binding_namespace));
            if names_user {
                rules.extend(role_rules(
                    server,
                    &binding.role_ref.kind,
                    &binding.role_ref.name,
                    binding_namespace,
                ));
            }
        }
    };
    collect("clusterrolebindings", None, None);
    if let Some(ns) = namespace {
        collect("rolebindings", Some(ns), Some(ns));
    }
    rules
}

/// Whether RBAC allows `user` `attributes`.
pub fn allows(server: &ApiServer, user: &User, attributes: &Attributes) -> bool {
    let namespace = match &attributes.target {
        Target::Resource { namespace, .. } => namespace.as_deref(),
        Target::Path(_) => None,
    };
    rules_for(server, user, namespace)
        .iter()
        .any(|rule| rule.allows(attributes))
}

#[cfg(test)]
#[path = "rbac_tests.rs"]
mod tests;
