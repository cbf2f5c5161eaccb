//! `/openapi/v3` and `/openapi/v3/<group version>`: the documents built at start (`openapi.rs`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::render::json_response;
use crate::error::ApiError;
use crate::server::ApiServer;

pub async fn index(State(server): State<Arc<ApiServer>>) -> Response {
    json_response(StatusCode::OK, &server.openapi().index())
}

pub async fn document(State(server): State<Arc<ApiServer>>, Path(path): Path<String>) -> Response {
    match server.openapi().document(path.trim_matches('/')) {
        Some(document) => json_response(StatusCode::OK, document),
        None => ApiError::no_route().into_response(),
    }
}
