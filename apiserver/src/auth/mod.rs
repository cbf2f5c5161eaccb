//! Authentication: who is asking, as Kubernetes decides it.
//!
//! A request is authenticated by the first of, in order: the client certificate its TLS
//! connection presented (verified against the client CA: CN = user, O = groups; see
//! `serve.rs`), a bearer token from the token file (`Authorization: Bearer TOKEN`). An
//! authenticated user also belongs to `system:authenticated`.
//!
//! # Invariants
//!
//! - Every request that reaches a handler, but for the public paths ([`PUBLIC_PATHS`], as
//!   Kubernetes leaves them to anyone), carries the [`User`] that made it as an extension (the
//!   layer is `handlers::authenticate`).
//! - A request with no credential, or with a bearer token nobody holds, gets `401
//!   Unauthorized` and reaches nothing; the token is not echoed or logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use serde::Serialize;

use crate::error::{ApiError, Reason};

pub mod identities;
pub mod tokens;
pub mod x509;

pub use tokens::{TokenFile, TokenFileError};

/// Paths anyone may read, authenticated or not (Kubernetes' `system:public-info-viewer`).
pub const PUBLIC_PATHS: &[&str] = &["/version", "/healthz", "/livez", "/readyz"];

/// The user a connection's verified client certificate names: the listener (`serve.rs`) puts
/// it on every request of that connection.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub User);

/// An authenticated user (Kubernetes' `user.Info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct User {
    #[serde(rename = "username")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// `self` with `system:authenticated` among its groups.
    fn authenticated(mut self) -> User {
        if !self.in_group(identities::AUTHENTICATED_GROUP) {
            self.groups
                .push(identities::AUTHENTICATED_GROUP.to_string());
        }
        self
    }
}

/// How the server authenticates requests (client certificates come with the connection, see
/// `serve::Tls`).
#[derive(Clone, Debug, Default)]
pub struct Authentication {
    /// Bearer tokens (`--token-auth-file`).
    pub tokens: Option<Arc<TokenFile>>,
}

impl Authentication {
    /// The user `request` authenticates as (`Ok(None)`: it presents no credential).
    pub fn user_of(&self, request: &Request) -> Result<Option<User>, ApiError> {
        if let Some(ClientCertificate(user)) = request.extensions().get::<ClientCertificate>() {
            return Ok(Some(user.clone().authenticated()));
        }
        let Some(value) = request.headers().get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let user = match (token, &self.tokens) {
            (Some(token), Some(tokens)) => tokens.authenticate(token),
            _ => None,
        };
        match user {
            Some(user) => Ok(Some(user.authenticated())),
            None => Err(unauthorized()),
        }
    }
}

pub fn unauthorized() -> ApiError {
    ApiError::new(Reason::Unauthorized, "Unauthorized")
}
