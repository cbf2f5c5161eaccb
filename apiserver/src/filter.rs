//! Which objects a list or watch asks for: namespace, label selector and field selector.
//!
//! Field selectors support `metadata.name`, `metadata.namespace` (namespaced kinds only) and the
//! CRD's `selectableFields`; anything else is refused up front with 400 BadRequest
//! `field label not supported: X`, as Kubernetes does.

use std::sync::Arc;

use corral_apimachinery::fields::FieldSelector;
use corral_apimachinery::labels::Selector;
use serde_json::Value;

use crate::cache::CachedObject;
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::query::Query;
use crate::resource::ResourceType;

#[derive(Debug, Clone)]
pub struct Filter {
    pub resource: Arc<ResourceType>,
    pub version: String,
    pub namespace: Option<String>,
    pub labels: Option<Selector>,
    pub fields: Option<FieldSelector>,
}

impl Filter {
    pub fn from_query(
        resource: &Arc<ResourceType>,
        version: &str,
        namespace: Option<&str>,
        query: &Query,
    ) -> ApiResult<Filter> {
        let labels =
            match query.string("labelSelector") {
                None => None,
                Some(s) => Some(Selector::parse(s).map_err(|e| {
                    ApiError::bad_request(format!("unable to parse requirement: {e}"))
                })?),
            };
        let fields = match query.string("fieldSelector") {
            None => None,
            Some(s) => {
                let selector = FieldSelector::parse(s)
                    .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
                for requirement in selector.requirements() {
                    if !supports_field(resource, version, &requirement.field) {
                        return Err(ApiError::bad_request(format!(
                            "field label not supported: {}",
                            requirement.field
                        )));
                    }
                }
                Some(selector)
            }
        };
        Ok(Filter {
            resource: resource.clone(),
            version: version.to_string(),
            namespace: namespace.map(String::from),
            labels: labels.filter(|s| !s.is_empty()),
            fields,
        })
    }

    /// True when only the namespace restricts the result (lists may then be counted exactly).
    pub fn selects_everything(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.matches_with(object, |field| {
            field_value(&self.resource, &self.version, object, field)
        })
    }

    /// [`Filter::matches`] for a cached object, whose field values are worked out once for all
    /// watchers.
    pub fn matches_cached(&self, object: &CachedObject) -> bool {
        self.matches_with(&object.value, |field| {
            object.field_value(&self.version, field, |value| {
                field_value(&self.resource, &self.version, value, field)
            })
        })
    }

    fn matches_with(&self, object: &Value, field_value: impl Fn(&str) -> Option<String>) -> bool {
        if let Some(ns) = &self.namespace
            && object::namespace(object) != Some(ns.as_str())
        {
            return false;
        }
        if let Some(labels) = &self.labels
            && !labels.matches_json(object::meta(object).and_then(|m| m.get("labels")))
        {
            return false;
        }
        if let Some(fields) = &self.fields
            && !fields.matches(field_value)
        {
            return false;
        }
        true
    }

    /// The name this filter pins with `metadata.name=X`, if any (lets lists read one key).
    pub fn pinned_name(&self) -> Option<&str> {
        self.fields.as_ref()?.requires_exact_match("metadata.name")
    }
}

fn supports_field(resource: &ResourceType, version: &str, field: &str) -> bool {
    match field {
        "metadata.name" => true,
        "metadata.namespace" => resource.namespaced,
        _ => resource
            .version(version)
            .is_some_and(|v| v.selectable_fields.iter().any(|(path, _)| path == field)),
    }
}

/// The string value of a selectable field, as Kubernetes compares them.
fn field_value(
    resource: &ResourceType,
    version: &str,
    object: &Value,
    field: &str,
) -> Option<String> {
    match field {
        "metadata.name" => Some(object::name(object).to_string()),
        "metadata.namespace" => Some(object::namespace(object).unwrap_or("").to_string()),
        _ => {
            let (_, path) = resource
                .version(version)?
                .selectable_fields
                .iter()
                .find(|(p, _)| p == field)?;
            // A missing field compares as the empty string, like the real server.
            match path.eval(object).first() {
                None | Some(Value::Null) => Some(String::new()),
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            }
        }
    }
}
