//! The node authorizer and node restriction: what a sled's agent may do, whatever RBAC says.
//!
//! A user `system:node:SLED` in the group `system:nodes` is sled SLED's agent. It may read the
//! kinds an agent reads (Sleds, Vmms, Instances, Migrations, VpcRoutes, Leases, Namespaces,
//! Events) and discovery; and write only:
//!
//! - its own Sled: create it (registration), and its `status`;
//! - its own heartbeat Lease (`kube-node-lease/SLED`);
//! - Vmms whose `spec.sled` is SLED — their `status`, and their metadata (a finalizer it
//!   removes), never their `spec`;
//! - Events about its Sled or about a Vmm whose `spec.sled` is SLED.
//!
//! Nothing else: no delete, no other sled's objects, no Instance, Migration, Drain or RBAC
//! object. The kind-level half is [`allows`] (the request's attributes); the object-level half
//! is [`admit`] (the object the write would store and the one it replaces), which runs on
//! every write the first half let through.
//!
//! Like the fence-token rules (`admission/fence.rs`) this names Corral's kinds by group,
//! plural and field path, and reads them as JSON.

use serde_json::Value;

use super::attributes::{Attributes, Target};
use crate::auth::{User, identities};
use crate::error::{ApiError, ApiResult, Reason};
use crate::objects::{AdmissionRequest, Subresource};

const CORRAL: &str = "corral.dev";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The sled whose agent `user` is, if it is one.
pub fn sled_of(user: &User) -> Option<&str> {
    let sled = user.name.strip_prefix(identities::NODE_USER_PREFIX)?;
    (user.in_group(identities::NODES_GROUP) && !sled.is_empty()).then_some(sled)
}

/// What reads and which kinds of writes an agent may make.
pub fn allows(sled: &str, attributes: &Attributes) -> bool {
    let (group, resource, subresource, namespace, name) = match &attributes.target {
        Target::Path(_) => return attributes.verb == "get",
        Target::Resource {
            group,
            resource,
            subresource,
            namespace,
            name,
        } => (
            group.as_str(),
            resource.as_str(),
            subresource.as_deref(),
            namespace.as_deref(),
            name.as_deref(),
        ),
    };
    let verb = attributes.verb.as_str();
    if matches!(verb, "get" | "list" | "watch") {
        return matches!(
            (group, resource),
            (
                CORRAL,
                "sleds" | "vmms" | "instances" | "migrations" | "vpcroutes"
            ) | ("coordination.k8s.io", "leases")
                | ("", "namespaces" | "events")
        );
    }
    let own = name == Some(sled);
    match (group, resource, subresource, verb) {
        (CORRAL, "sleds", None, "create") => true,
        (CORRAL, "sleds", Some("status"), "update" | "patch") => own,
        ("coordination.k8s.io", "leases", None, "create") => namespace == Some(LEASE_NAMESPACE),
        ("coordination.k8s.io", "leases", None, "update" | "patch") => {
            namespace == Some(LEASE_NAMESPACE) && own
        }
        (CORRAL, "vmms", None | Some("status"), "update" | "patch") => true,
        ("", "events", None, "create" | "update" | "patch") => true,
        _ => false,
    }
}

/// The object-level half: the write touches only what is the sled's own.
pub async fn admit(sled: &str, user: &User, request: &AdmissionRequest<'_>) -> ApiResult<()> {
    let group = request.resource.group.as_str();
    let plural = request.resource.plural.as_str();
    let name = str_at(request.new, "/metadata/name").unwrap_or("");
    let refuse = |why: &str| {
        Err(ApiError::new(
            Reason::Forbidden,
            format!(
                "{plural}.{group} \"{name}\" is forbidden: node \"{sled}\" {why} (user \"{}\")",
                user.name
            ),
        ))
    };
    match (group, plural) {
        (CORRAL, "sleds") => {
            if name != sled {
                return refuse("may only register or report its own Sled");
            }
            Ok(())
        }
        ("coordination.k8s.io", "leases") => {
            let namespace = str_at(request.new, "/metadata/namespace");
            if name != sled || namespace != Some(LEASE_NAMESPACE) {
                return refuse("may only renew its own Lease in kube-node-lease");
            }
            Ok(())
        }
        (CORRAL, "vmms") => {
            let new_sled = str_at(request.new, "/spec/sled");
            let old_sled = request.old.and_then(|old| str_at(old, "/spec/sled"));
            if new_sled != Some(sled) || old_sled != Some(sled) {
                return refuse("may only write Vmms placed on it");
            }
            let old_spec = request.old.and_then(|old| old.get("spec"));
            if request.subresource != Some(Subresource::Status)
                && old_spec != request.new.get("spec")
            {
                return refuse("may not change a Vmm's spec");
            }
            Ok(())
        }
        ("", "events") => {
            let involved = request.new.get("involvedObject");
            let kind = involved.and_then(|o| str_at(o, "/kind"));
            let object = involved.and_then(|o| str_at(o, "/name")).unwrap_or("");
            match kind {
                Some("Sled") if object == sled => Ok(()),
                Some("Vmm") => {
                    let namespace = involved.and_then(|o| str_at(o, "/namespace"));
                    let vmm = request
                        .objects
                        .read_object(CORRAL, "vmms", namespace, object)
                        .await?;
                    match vmm.as_ref().and_then(|v| str_at(v, "/spec/sled")) {
                        Some(placed) if placed == sled => Ok(()),
                        _ => refuse("may only record Events about Vmms placed on it"),
                    }
                }
                _ => refuse("may only record Events about its Sled and its Vmms"),
            }
        }
        _ => refuse("may not write this kind"),
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(sled: &str) -> User {
        User {
            name: format!("system:node:{sled}"),
            groups: vec!["system:nodes".into()],
            ..User::default()
        }
    }

    #[test]
    fn only_members_of_system_nodes_are_sleds() {
        assert_eq!(sled_of(&node("sled-1")), Some("sled-1"));
        let impostor = User {
            name: "system:node:sled-1".into(),
            ..User::default()
        };
        assert_eq!(sled_of(&impostor), None);
    }

    #[test]
    fn an_agent_writes_only_its_own_kinds_of_objects() {
        let attrs = |verb, group, resource, sub, ns, name| {
            Attributes::resource(verb, group, resource, sub, ns, name)
        };
        assert!(allows(
            "sled-1",
            &attrs(
                "patch",
                CORRAL,
                "sleds",
                Some("status"),
                None,
                Some("sled-1")
            )
        ));
        assert!(!allows(
            "sled-1",
            &attrs(
                "patch",
                CORRAL,
                "sleds",
                Some("status"),
                None,
                Some("sled-2")
            )
        ));
        assert!(!allows(
            "sled-1",
            &attrs("patch", CORRAL, "sleds", None, None, Some("sled-1"))
        ));
        assert!(!allows(
            "sled-1",
            &attrs("delete", CORRAL, "vmms", None, Some("default"), Some("v"))
        ));
        assert!(!allows(
            "sled-1",
            &attrs("create", CORRAL, "instances", None, Some("default"), None)
        ));
        assert!(!allows(
            "sled-1",
            &attrs(
                "patch",
                CORRAL,
                "instances",
                None,
                Some("default"),
                Some("i")
            )
        ));
        assert!(!allows(
            "sled-1",
            &attrs(
                "update",
                "coordination.k8s.io",
                "leases",
                None,
                Some(LEASE_NAMESPACE),
                Some("sled-2")
            )
        ));
        assert!(allows(
            "sled-1",
            &attrs(
                "update",
                "coordination.k8s.io",
                "leases",
                None,
                Some(LEASE_NAMESPACE),
                Some("sled-1")
            )
        ));
        assert!(!allows(
            "sled-1",
            &attrs(
                "create",
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                None,
                None,
                None
            )
        ));
        assert!(allows(
            "sled-1",
            &attrs("watch", CORRAL, "vmms", None, None, None)
        ));
        assert!(!allows(
            "sled-1",
            &attrs("list", CORRAL, "drains", None, None, None)
        ));
    }
}
