//! Annotations Corral reads as settings are checked like fields: a value Corral could not use
//! is refused with a 422 that names it, instead of being stored and ignored.
//!
//! - `corral.dev/dirty-rate` on an Instance: how many bytes a second its guest dirties (a whole
//!   number; docs/qemu.md, "The guest"), copied to each Vmm the instance controller creates.

use corral_apimachinery::validation::FieldError;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::objects::{AdmissionRequest, AdmissionRule, Subresource};

const GROUP: &str = "corral.dev";
/// `corral_crds::DIRTY_RATE_ANNOTATION` (the API server does not depend on the kinds it serves).
const DIRTY_RATE_ANNOTATION: &str = "corral.dev/dirty-rate";

/// The annotation rules.
pub fn rules() -> Vec<std::sync::Arc<dyn AdmissionRule>> {
    vec![std::sync::Arc::new(DirtyRateIsANumber)]
}

/// Refuses an Instance or Vmm whose `corral.dev/dirty-rate` is not a whole number.
struct DirtyRateIsANumber;

#[async_trait::async_trait]
impl AdmissionRule for DirtyRateIsANumber {
    fn name(&self) -> &'static str {
        "DirtyRateIsANumber"
    }

    async fn admit(&self, request: &AdmissionRequest<'_>) -> ApiResult<()> {
        let kind = &request.resource;
        if kind.group != GROUP
            || !matches!(kind.plural.as_str(), "instances" | "vmms")
            || request.subresource == Some(Subresource::Status)
        {
            return Ok(());
        }
        let Some(value) = request
            .new
            .pointer("/metadata/annotations")
            .and_then(|annotations| annotations.get(DIRTY_RATE_ANNOTATION))
        else {
            return Ok(());
        };
        if value
            .as_str()
            .is_some_and(|text| text.parse::<u64>().is_ok())
        {
            return Ok(());
        }
        let field = format!("metadata.annotations[{DIRTY_RATE_ANNOTATION}]");
        let error = FieldError::invalid(
            &field,
            json!(value.clone()),
            "must be a whole number of bytes per second, e.g. \"104857600\"",
        );
        Err(ApiError::invalid(&request.target(), &[error]))
    }
}
