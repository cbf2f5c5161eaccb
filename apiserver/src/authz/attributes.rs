//! What a request asks to do, as every authorizer reads it (Kubernetes' authorizer
//! attributes). A leaf: the authorizers and the HTTP edge name it.

/// What a request asks to do (Kubernetes' authorizer attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or
    /// another verb a rule may name (`impersonate`, `bind`, `escalate`).
    pub verb: String,
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Resource {
        group: String,
        resource: String,
        subresource: Option<String>,
        namespace: Option<String>,
        name: Option<String>,
    },
    /// A path that names no resource (discovery, OpenAPI, health).
    Path(String),
}

impl Attributes {
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes {
            verb: verb.to_string(),
            target: Target::Resource {
                group: group.to_string(),
                resource: resource.to_string(),
                subresource: subresource.map(String::from),
                namespace: namespace.map(String::from),
                name: name.map(String::from),
            },
        }
    }

    pub fn path(verb: &str, path: &str) -> Attributes {
        Attributes {
            verb: verb.to_string(),
            target: Target::Path(path.to_string()),
        }
    }
}
