//! The subresources a write may address. A leaf: the object layer, its admission rules and the
//! handlers all name it.

/// A subresource of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Status,
}

impl Subresource {
    /// The name in paths and in `managedFields[].subresource`.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
        }
    }
}
