//! A small HTTP client for the agents' APIs — HTTPS with a client certificate the rack's CA
//! signed ([`Http::with_tls`]), or plain HTTP for a plain-HTTP rack — with a bound on every
//! request so that a hung agent cannot stall a checker round.
//!
//! An address is a URL's start (`https://HOST:PORT`, as `Sled.status.agentAddress` says) or a
//! bare `HOST:PORT`, which is plain HTTP.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

/// How long one request may take.
pub const REQUEST_BOUND: Duration = Duration::from_secs(2);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("building the request to {url}")]
    Request {
        url: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("requesting {url}")]
    Send {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the answer of {url}")]
    Read {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url} did not answer within {REQUEST_BOUND:?}")]
    Timeout { url: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("decoding the answer of {url}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A pooled HTTP/1 client.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// Plain HTTP only.
    pub fn new() -> Http {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Http::build(config, false)
    }

    /// HTTPS as `tls` says (the rack's CA, an identity), and plain HTTP.
    pub fn with_tls(tls: &rustls::ClientConfig) -> Http {
        Http::build(tls.clone(), true)
    }

    fn build(tls: rustls::ClientConfig, https: bool) -> Http {
        let mut http = HttpConnector::new();
        http.enforce_http(!https);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// `method` `{address}{path}` with an optional JSON body; the body of a 2xx answer.
    pub async fn call(
        &self,
        method: &str,
        address: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, HttpError> {
        let url = url(address, path);
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|source| HttpError::Request {
                url: url.clone(),
                source,
            })?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|source| HttpError::Send {
                        url: url.clone(),
                        source,
                    })?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|source| HttpError::Read {
                    url: url.clone(),
                    source,
                })?
                .to_bytes();
            if !(200..300).contains(&status) {
                return Err(HttpError::Status {
                    url: url.clone(),
                    status,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
            Ok(bytes)
        };
        tokio::time::timeout(REQUEST_BOUND, exchange)
            .await
            .map_err(|_| HttpError::Timeout { url: url.clone() })?
    }

    /// GET and decode JSON.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        address: &str,
        path: &str,
    ) -> Result<T, HttpError> {
        let bytes = self.call("GET", address, path, None).await?;
        serde_json::from_slice(&bytes).map_err(|source| HttpError::Decode {
            url: url(address, path),
            source,
        })
    }
}

/// The URL of `path` at `address` (see the module docs).
fn url(address: &str, path: &str) -> String {
    if address.contains("://") {
        format!("{}{path}", address.trim_end_matches('/'))
    } else {
        format!("http://{address}{path}")
    }
}
