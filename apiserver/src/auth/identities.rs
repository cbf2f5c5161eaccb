//! The identities the rack's own components use, as Kubernetes names them.

/// The group whose members may do anything (Kubernetes' `system:masters`): the `admin`
/// kubeconfig `corral up` writes is in it.
pub const MASTERS_GROUP: &str = "system:masters";

/// Added to every authenticated user, as Kubernetes does.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The group of every sled's agent.
pub const NODES_GROUP: &str = "system:nodes";

/// The user name of a sled's agent is this prefix and the sled's name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The controllers' user.
pub const CONTROLLERS_USER: &str = "system:corral:controllers";

/// The operators' group `corral up` binds to `corral:operator`.
pub const OPERATORS_GROUP: &str = "corral:operators";

/// The user of sled `sled`'s agent.
pub fn node_user(sled: &str) -> String {
    format!("{NODE_USER_PREFIX}{sled}")
}
