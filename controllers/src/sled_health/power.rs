//! Asking a sled's out-of-band power controller (`Sled.spec.powerController`, the "service
//! processor") what it reads, and having it cut the power: `GET {url}/power` answers
//! `{"state": "On" | "Off"}`, `POST {url}/power/off` powers off (idempotent).
//!
//! # Guarantees
//! - An `https://` power controller is asked over TLS, trusting the rack's CA and presenting
//!   the controllers' identity (`system:corral:controllers`, which its API allows); without
//!   that identity such a controller is [`Power::Unanswered`], saying why. `http://` is for a
//!   rack served over plain HTTP.
//! - Every call is bounded by the configured timeout: a power controller that does not answer
//!   is [`Power::Unanswered`], never a reconcile that hangs.
//! - [`PowerClient::power_off`] succeeds only when a read *after* the power-off says `Off`: the
//!   proof a fence rests on is a read, not the acknowledgement of a request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::plan::Power;

/// An HTTP client for power controllers.
#[derive(Clone)]
pub struct PowerClient {
    /// HTTPS (and HTTP) with the controllers' identity, if they have one.
    https: Option<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>>,
    /// HTTP only.
    http: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct PowerAnswer {
    state: String,
}

impl PowerClient {
    /// A client whose calls take at most `timeout`, presenting `tls` (the rack's CA and the
    /// controllers' identity) to `https://` power controllers.
    pub fn new(timeout: Duration, tls: Option<Arc<rustls::ClientConfig>>) -> PowerClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        let https = tls.map(|config| {
            let mut connector = connector.clone();
            connector.enforce_http(false);
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config((*config).clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector);
            Client::builder(TokioExecutor::new()).build(connector)
        });
        PowerClient {
            https,
            http: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// What the power controller at `url` reads (`None`: the sled names none).
    pub async fn read(&self, url: Option<&str>) -> Power {
        let Some(url) = url else {
            return Power::NoController;
        };
        match self.call(Method::GET, &format!("{url}/power")).await {
            Ok(state) => state,
            Err(why) => Power::Unanswered(why),
        }
    }

    /// Powers the sled at `url` off and reads `Off` back; why not, otherwise.
    pub async fn power_off(&self, url: &str) -> Result<(), String> {
        self.call(Method::POST, &format!("{url}/power/off")).await?;
        match self.read(Some(url)).await {
            Power::Off => Ok(()),
            Power::On => Err("it still reads On after the power-off".into()),
            Power::Unanswered(why) => Err(format!("reading the power back: {why}")),
            Power::NoController => unreachable!("a url was given"),
        }
    }

    async fn call(&self, method: Method, uri: &str) -> Result<Power, String> {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Empty::new())
            .map_err(|error| format!("{uri}: {error}"))?;
        let exchange = async {
            let response = match &self.https {
                Some(https) => https.request(request).await,
                None if uri.starts_with("https://") => {
                    return Err(
                        "an https:// power controller, and the controllers have no TLS identity (corral controllers --pki)"
                            .to_string(),
                    );
                }
                None => self.http.request(request).await,
            }
            .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            let answer: PowerAnswer =
                serde_json::from_slice(&body).map_err(|e| format!("answer: {e}"))?;
            match answer.state.as_str() {
                "On" => Ok(Power::On),
                "Off" => Ok(Power::Off),
                other => Err(format!("unknown power state {other:?}")),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|error| format!("{uri}: {error}"))
    }
}
