//! The decision: masters, then the node authorizer alone for a sled's agent, then RBAC
//! (the order the module docs of `authz` give), and Kubernetes' 403 when it is no.

use super::attributes::{Attributes, Target};
use super::{node, rbac};
use crate::auth::{User, identities};
use crate::error::{ApiError, ApiResult, Reason};
use crate::server::ApiServer;

/// Whether `user` may do `attributes`.
pub fn allowed(server: &ApiServer, user: &User, attributes: &Attributes) -> bool {
    if user.in_group(identities::MASTERS_GROUP) {
        return true;
    }
    if let Some(sled) = node::sled_of(user) {
        return node::allows(sled, attributes);
    }
    rbac::allows(server, user, attributes)
}

/// [`allowed`], or the 403 Kubernetes answers.
pub fn authorize(server: &ApiServer, user: &User, attributes: &Attributes) -> ApiResult<()> {
    if allowed(server, user, attributes) {
        Ok(())
    } else {
        Err(forbidden(user, attributes, ""))
    }
}

/// Kubernetes' 403: `sleds.corral.dev "sled-1" is forbidden: User "alice" cannot patch
/// resource "sleds" in API group "corral.dev" at the cluster scope`, and `why` after it.
pub fn forbidden(user: &User, attributes: &Attributes, why: &str) -> ApiError {
    let who = format!("User \"{}\"", user.name);
    let verb = &attributes.verb;
    let mut message = match &attributes.target {
        Target::Path(path) => format!("forbidden: {who} cannot {verb} path \"{path}\""),
        Target::Resource {
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let qualified = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            let subject = match name {
                Some(name) => format!("{qualified} \"{name}\""),
                None => qualified,
            };
            let full = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_string(),
            };
            format!(
                "{subject} is forbidden: {who} cannot {verb} resource \"{full}\" in API group \"{group}\" {scope}"
            )
        }
    };
    if !why.is_empty() {
        message.push_str(": ");
        message.push_str(why);
    }
    let mut error = ApiError::new(Reason::Forbidden, message);
    if let Target::Resource {
        group,
        resource,
        name,
        ..
    } = &attributes.target
    {
        error.target = Some(Box::new(crate::error::Target {
            group: group.clone(),
            plural: resource.clone(),
            kind: resource.clone(),
            name: name.clone().unwrap_or_default(),
        }));
    }
    error
}
