//! Authorization: may this user do this? Kubernetes' answer, in Kubernetes' order.
//!
//! 1. `system:masters` may do anything (the `admin` identity).
//! 2. A sled's agent (`system:node:SLED` in `system:nodes`) is judged by the node authorizer
//!    (`node.rs`) alone — whatever RBAC says — and its writes once more, object by object, by
//!    node restriction (`node.rs`, [`admit`]).
//! 3. Everyone else by RBAC (`rbac.rs`): the rules of the ClusterRoles bound to them
//!    cluster-wide, and in a namespace the rules of the Roles and ClusterRoles bound there.
//!
//! # Invariants
//!
//! - Nothing is allowed that no rule allows: no rule, no access (a 403 `Forbidden` `Status`
//!   with Kubernetes' message).
//! - Decisions read the server's watch caches of the RBAC kinds: a change of a role or a
//!   binding counts from the moment this server's cache holds it.
//! - A write of a role or a binding is refused unless its writer holds every permission it
//!   grants, or may `escalate` (roles) or `bind` (bindings) — RBAC's escalation prevention
//!   (`rbac.rs`, [`admit`]).

use crate::error::ApiResult;
use crate::objects::AdmissionRequest;
use crate::server::ApiServer;

mod attributes;
pub mod bootstrap;
mod decide;
mod escalation;
pub mod node;
pub mod rbac;

pub use attributes::{Attributes, Target};
pub use decide::{allowed, authorize, forbidden};

/// The checks every client write passes whatever the server's admission list says: node
/// restriction for a sled's agent, escalation prevention for RBAC objects.
pub async fn admit(server: &ApiServer, request: &AdmissionRequest<'_>) -> ApiResult<()> {
    let Some(user) = request.user else {
        return Ok(());
    };
    if let Some(sled) = node::sled_of(user) {
        node::admit(sled, user, request).await?;
    }
    escalation::admit(server, user, request)
}
