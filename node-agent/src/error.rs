//! How the agent's errors read: [`DisplayChain`] shows an error with every cause for the log,
//! and [`VmmApiError`] is the one error of an API call about a Vmm.
//!
//! # Guarantees
//! - A [`VmmApiError`] names the operation and the Vmm; the API's answer is its `#[source]`
//!   and is not repeated in its message (so a chain never says the same thing twice).
//!
//! # Not responsible for
//! Deciding what an error means (each caller's `error_policy` or loop does).

use kube::ResourceExt;

use corral_crds::Vmm;

/// Displays an error with its sources, for logs.
pub struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// An API call about one Vmm failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation} Vmm {namespace}/{name}")]
pub struct VmmApiError {
    pub operation: &'static str,
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// Turns the failure of `operation` about `vmm` into a [`VmmApiError`] (for `map_err`).
pub fn api_error(vmm: &Vmm, operation: &'static str) -> impl FnOnce(kube::Error) -> VmmApiError {
    let namespace = vmm.namespace().unwrap_or_default();
    let name = vmm.name_any();
    move |source| VmmApiError {
        operation,
        namespace,
        name,
        source,
    }
}
