//! A request aimed at a resource, as routing leaves it, and what every handler reads from one:
//! the object it names, the write context it carries, its decoded body.
//!
//! # Invariants
//!
//! - A `ResourceRequest`'s version is one its kind serves, and its subresource one the kind
//!   has (routing refuses anything else).

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use serde_json::Value;

use super::protobuf;
use crate::error::{ApiError, ApiResult, Reason, Target};
use crate::filter::Filter;
use crate::objects::{ObjectRef, Subresource, WriteContext};
use crate::query::Query;
use crate::resource::ResourceType;
use crate::server::ApiServer;

/// A request aimed at a resource: collection, object or subresource.
pub struct ResourceRequest {
    pub server: Arc<ApiServer>,
    pub resource: Arc<ResourceType>,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<Subresource>,
    pub query: Query,
    pub headers: HeaderMap,
    /// Who asks (`None` only on the public paths, which name no resource).
    pub user: Option<crate::auth::User>,
}

impl ResourceRequest {
    pub fn api_version(&self) -> String {
        self.resource.api_version(&self.version)
    }

    pub fn target(&self) -> Target {
        self.resource.target(self.name.as_deref().unwrap_or(""))
    }

    /// The name from the path; only called on object routes.
    pub fn object_name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub fn key(&self) -> String {
        self.resource
            .key(self.namespace.as_deref(), self.object_name())
    }

    /// The object (or, on a collection, the nameless object) the path names.
    pub fn object(&self) -> ObjectRef<'_> {
        ObjectRef {
            server: &self.server,
            resource: &self.resource,
            namespace: self.namespace.as_deref(),
            name: self.object_name(),
        }
    }

    /// What the object layer needs of this request to write, besides the body.
    pub fn write_context(&self, dry_run: bool) -> WriteContext<'_> {
        WriteContext {
            object: self.object(),
            version: &self.version,
            subresource: self.subresource,
            field_manager: self.field_manager(),
            field_validation: self.query.get("fieldValidation"),
            dry_run,
            user: self.user.as_ref(),
        }
    }

    /// The objects a list, watch or collection delete asks for (namespace and selectors).
    pub fn filter(&self) -> ApiResult<Filter> {
        Filter::from_query(
            &self.resource,
            &self.version,
            self.namespace.as_deref(),
            &self.query,
        )
    }

    /// `object` with the apiVersion and kind the client asked for.
    pub fn present(&self, object: Value) -> Value {
        self.resource.present(&self.version, object)
    }

    /// The field manager: `?fieldManager=`, else derived from the User-Agent like Kubernetes
    /// (the program name before the first `/`).
    fn field_manager(&self) -> String {
        if let Some(m) = self.query.string("fieldManager") {
            return m.to_string();
        }
        let agent = self
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        agent.split('/').next().unwrap_or(agent).to_string()
    }

    /// `?force` is only for server-side apply.
    pub fn refuse_force(&self) -> ApiResult<()> {
        if self.query.bool("force") {
            return Err(ApiError::new(
                Reason::Invalid,
                "force: Forbidden: may not be specified for non-apply patch",
            ));
        }
        Ok(())
    }
}

/// What the client accepts in a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    Json,
    Table,
}

/// Decodes a JSON, YAML or (core kinds only) protobuf request body into an object.
pub fn decode_body(headers: &HeaderMap, resource: &ResourceType, body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let value: Value = if content_type.starts_with(protobuf::MEDIA_TYPE) {
        if !resource.builtin {
            return Err(ApiError::new(
                Reason::UnsupportedMediaType,
                "protobuf is not supported for custom resources; send application/json or application/yaml",
            ));
        }
        protobuf::decode(&resource.kind, body)?
    } else if content_type.contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the request body is not valid UTF-8"))?;
        serde_saphyr::from_str(text).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        })?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}
