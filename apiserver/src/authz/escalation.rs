//! RBAC's escalation prevention: no one grants what they do not hold. A writer of a role
//! holds every permission it grants (or may `escalate` roles); a writer of a binding may
//! `bind` the role it names or holds every permission of it, in the binding's namespace for a
//! RoleBinding. A binding's `roleRef` never changes.

use corral_apimachinery::validation::FieldError;
use serde_json::Value;

use super::attributes::Attributes;
use super::decide::allowed;
use super::rbac::{Binding, GROUP, Rule, role_rules, rules_of};
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::objects::AdmissionRequest;
use crate::server::ApiServer;

/// Checks a write of a role or a binding (other writes pass).
pub fn admit(server: &ApiServer, user: &User, request: &AdmissionRequest<'_>) -> ApiResult<()> {
    if request.resource.group != GROUP || request.subresource.is_some() {
        return Ok(());
    }
    let namespace = request
        .new
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|_| request.resource.namespaced);
    let name = request
        .new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let plural = request.resource.plural.as_str();
    let may = |verb: &str| {
        allowed(
            server,
            user,
            &Attributes::resource(verb, GROUP, plural, None, namespace, Some(name)),
        )
    };
    match plural {
        "roles" | "clusterroles" => {
            if may("escalate") {
                return Ok(());
            }
            let missing = not_held(server, user, &rules_of(request.new), namespace);
            if let Some(rule) = missing {
                return Err(escalation(user, plural, name, namespace, &rule, "escalate"));
            }
            Ok(())
        }
        "rolebindings" | "clusterrolebindings" => {
            let binding: Binding = serde_json::from_value(request.new.clone())
                .map_err(|e| ApiError::bad_request(format!("not a valid binding: {e}")))?;
            // A binding's roleRef never changes (Kubernetes refuses it too).
            if let Some(old) = request.old
                && old.get("roleRef") != request.new.get("roleRef")
            {
                return Err(ApiError::invalid(
                    &request.resource.target(name),
                    &[FieldError::invalid(
                        "roleRef",
                        request.new.get("roleRef").cloned().unwrap_or_default(),
                        "cannot change roleRef",
                    )],
                ));
            }
            if plural == "clusterrolebindings" && binding.role_ref.kind != "ClusterRole" {
                return Err(ApiError::invalid(
                    &request.resource.target(name),
                    &[FieldError::not_supported(
                        "roleRef.kind",
                        binding.role_ref.kind.as_str(),
                        &["ClusterRole"],
                    )],
                ));
            }
            let bind = Attributes::resource(
                "bind",
                GROUP,
                if binding.role_ref.kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                },
                None,
                namespace,
                Some(&binding.role_ref.name),
            );
            if allowed(server, user, &bind) {
                return Ok(());
            }
            let rules = role_rules(
                server,
                &binding.role_ref.kind,
                &binding.role_ref.name,
                namespace,
            );
            if let Some(rule) = not_held(server, user, &rules, namespace) {
                return Err(escalation(user, plural, name, namespace, &rule, "bind"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The first permission of `rules` that `user` does not hold in `namespace`.
fn not_held(
    server: &ApiServer,
    user: &User,
    rules: &[Rule],
    namespace: Option<&str>,
) -> Option<Rule> {
    for rule in rules {
        for atom in atoms(rule, namespace) {
            if !allowed(server, user, &atom) {
                return Some(rule.clone());
            }
        }
    }
    None
}

/// Every single permission `rule` grants, wildcards kept as they are (a wildcard is held
/// only by a wildcard).
fn atoms(rule: &Rule, namespace: Option<&str>) -> Vec<Attributes> {
    let mut atoms = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            atoms.push(Attributes::path(verb, url));
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let (resource, sub) = match resource.split_once('/') {
                    Some((r, s)) => (r, Some(s)),
                    None => (resource.as_str(), None),
                };
                if rule.resource_names.is_empty() {
                    atoms.push(Attributes::resource(
                        verb, group, resource, sub, namespace, None,
                    ));
                }
                for name in &rule.resource_names {
                    atoms.push(Attributes::resource(
                        verb,
                        group,
                        resource,
                        sub,
                        namespace,
                        Some(name),
                    ));
                }
            }
        }
    }
    atoms
}

fn escalation(
    user: &User,
    plural: &str,
    name: &str,
    namespace: Option<&str>,
    rule: &Rule,
    verb: &str,
) -> ApiError {
    let rule = serde_json::to_string(rule).unwrap_or_default();
    let scope = match namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => String::new(),
    };
    ApiError::new(
        crate::error::Reason::Forbidden,
        format!(
            "{plural}.{GROUP} \"{name}\" is forbidden: user \"{}\" is attempting to grant RBAC permissions not currently held{scope}: {rule} (and may not {verb})",
            user.name
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_permission_is_held_only_through_a_wildcard() {
        let rule = |verbs: &[&str]| Rule {
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            api_groups: vec!["corral.dev".into()],
            resources: vec!["instances".into()],
            ..Rule::default()
        };
        let wildcard = rule(&["*"]);
        let atoms = atoms(&wildcard, Some("team-a"));
        assert_eq!(atoms.len(), 1);
        assert_eq!(atoms[0].verb, "*");
        assert!(!rule(&["get", "list", "create"]).allows(&atoms[0]));
        assert!(wildcard.allows(&atoms[0]));
    }
}
