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

use corral_apimachinery::limits;

use super::protobuf;
use crate::error::{ApiError, ApiResult, Reason, Target};
use crate::filter::Filter;
use crate::object;
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
    /// Where the audit layer learns what the request did (only on requests it records).
    pub audit: Option<super::audit::Pending>,
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

    /// Refuses (422 `Invalid`, naming the field) a body nested deeper than a stored object may
    /// be. Bodies are checked as soon as they are decoded: every later step (pruning,
    /// defaulting, validation, field management) walks the object recursively, and the stored
    /// object's own check comes last (`objects/context.rs` `WriteContext::check_limits`).
    pub fn check_depth(&self, body: &Value) -> ApiResult<()> {
        let max_depth = self.server.config.object_limits.max_depth;
        match limits::depth_violation(body, max_depth) {
            None => Ok(()),
            Some(error) => Err(ApiError::invalid(
                &self.resource.target(object::name(body)),
                &[error],
            )),
        }
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

/// Decodes a JSON, YAML or (core kinds only) protobuf request body into an object, refusing
/// one nested deeper than a stored object may be before anything else works on it.
pub fn decode_body(request: &ResourceRequest, body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let value: Value = if content_type.starts_with(protobuf::MEDIA_TYPE) {
        if !request.resource.builtin {
            return Err(ApiError::new(
                Reason::UnsupportedMediaType,
                "protobuf is not supported for custom resources; send application/json or application/yaml",
            ));
        }
        protobuf::decode(&request.resource.kind, body)?
    } else if content_type.contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the request body is not valid UTF-8"))?;
        parse_yaml(text).map_err(|e| {
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
    request.check_depth(&value)?;
    Ok(value)
}

/// The deepest nesting a YAML body may have (the default of serde-saphyr, whose deserializer
/// recurses once per level with large frames: 2 MiB of stack, a Tokio worker's, hold about 110
/// levels in a debug build). JSON text is read as JSON, to the object limits.
const YAML_MAX_DEPTH: usize = 64;

/// The most events aliases may replay in one body. A body is at most 3 MiB, but each alias
/// repeats its anchor's whole content: nine anchors, each ten aliases of the one before, expand
/// to a billion nodes ("billion laughs"). This bounds the expansion to about what a body of
/// plain YAML could hold anyway, and so the time and memory a body's decoding takes.
const YAML_MAX_REPLAYED_EVENTS: usize = 100_000;

/// Decodes a YAML request body (bodies, and server-side apply configurations) within a budget:
/// nesting, aliases and their expansion are bounded; the size of the text is the body limit's.
/// A body that is JSON (kubectl and kube-rs send server-side apply configurations as JSON) is
/// read by the JSON decoder, which is faster and reads as deep as a JSON body may be.
pub fn parse_yaml(text: &str) -> Result<Value, serde_saphyr::Error> {
    if text.trim_start().starts_with('{')
        && let Ok(value) = serde_json::from_str(text)
    {
        return Ok(value);
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: YAML_MAX_DEPTH,
            // Plain nodes and events cost input bytes, which the body limit bounds; these
            // counts only have to admit every body of that size.
            max_nodes: usize::MAX,
            max_events: usize::MAX,
            max_documents: 1,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: YAML_MAX_REPLAYED_EVENTS,
        },
    };
    serde_saphyr::from_str_with_options(text, options)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
