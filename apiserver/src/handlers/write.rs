//! POST (create) and PUT (replace) of objects and their status subresource: decode the body,
//! let the object layer (`objects`) write, render what it wrote.

use axum::response::Response;
use bytes::Bytes;

use super::render::written_response;
use super::request::{ResourceRequest, decode_body};
use crate::error::{ApiError, ApiResult};
use crate::objects;

pub async fn create(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    if request.resource.namespaced && request.namespace.is_none() {
        return Err(ApiError::no_route());
    }
    let dry_run = request.query.dry_run()?;
    request.refuse_force()?;
    let body = decode_body(&request, &body)?;
    let written = objects::create(&request.write_context(dry_run), body).await?;
    if let Some(pending) = &request.audit {
        pending.created(crate::object::meta_str(&written.object, "name").unwrap_or_default());
    }
    Ok(written_response(&request, written))
}

pub async fn replace(request: ResourceRequest, body: Bytes) -> ApiResult<Response> {
    let dry_run = request.query.dry_run()?;
    let desired = decode_body(&request, &body)?;
    let written = objects::replace(&request.write_context(dry_run), desired).await?;
    Ok(written_response(&request, written))
}
