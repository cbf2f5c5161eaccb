//! Asking a sled's out-of-band power controller (`Sled.spec.powerController`, the "service
//! processor") what it reads, and having it cut the power: `GET {url}/power` answers
//! `{"state": "On" | "Off"}`, `POST {url}/power/off` powers off (idempotent).
//!
//! # Guarantees
//! - Every call is bounded by the configured timeout: a power controller that does not answer
//!   is [`Power::Unanswered`], never a reconcile that hangs.
//! - [`PowerClient::power_off`] succeeds only when a read *after* the power-off says `Off`: the
//!   proof a fence rests on is a read, not the acknowledgement of a request.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::plan::Power;

/// An HTTP client for power controllers.
#[derive(Clone)]
pub struct PowerClient {
    http: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct PowerAnswer {
    state: String,
}

impl PowerClient {
    pub fn new(timeout: Duration) -> PowerClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        PowerClient {
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
            let response = self
                .http
                .request(request)
                .await
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
