//! Flow control: how many requests the server works on at once, how long one may take, and
//! how many watches one client may hold — kube-apiserver's max-in-flight and timeout filters,
//! in front of every route.
//!
//! A request is, by its method and query:
//! - a *probe* if (and only if) it is a GET of `/healthz`, `/livez` or `/readyz`: never
//!   limited (a liveness probe that failed under load would restart a busy server; Kubernetes'
//!   priority and fairness exempts probes too);
//! - a *watch* if (and only if) it is a GET with a true `watch` parameter: long-running, so
//!   neither counted in flight nor timed out, but counted against its client's watches;
//! - *mutating* if it is a POST, PUT, PATCH or DELETE; *read-only* otherwise.
//!
//! # Guarantees
//!
//! - At most `Config::max_requests_inflight` read-only and `max_mutating_requests_inflight`
//!   mutating requests are worked on at once (0: no limit). One more is answered at once with
//!   429 `TooManyRequests` and `Retry-After: 1`, as kube-apiserver's max-in-flight filter does;
//!   it never queues.
//! - A non-watch request that takes longer than `Config::request_timeout` (body included) is
//!   answered 504 `Timeout` and its work dropped (0: no timeout). A write it had handed to the store may still
//!   land, as in Kubernetes: the client learns the outcome by reading.
//! - One client holds at most `Config::max_watches_per_client` open watches; one more is 429
//!   with `Retry-After: 1`. A watch's slot is given back when its stream ends (timeout,
//!   shutdown, or the client going away).
//!
//! Who "one client" is, is [`client_key`]'s one decision.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::User;
use crate::error::{ApiError, Reason};
use crate::query::Query;
use crate::server::Config;

/// Who a request is from, as far as per-client limits go: the authenticated user (the one it
/// impersonates, if it does: that is who the request acts as), and only for a request without
/// one (a public path) the peer's IP address (port aside: a client opens many connections).
/// Keyed by identity, one client cannot exhaust the limit of another behind the same address
/// (every sled's agent on one host, or a load balancer), nor escape its own by connecting from
/// several. This function is the one place that decides.
pub fn client_key(request: &Request) -> String {
    if let Some(user) = request.extensions().get::<User>() {
        return format!("user:{}", user.name);
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| format!("address:{}", peer.ip()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// What a request is, for flow control (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Probe,
    Watch,
    Mutating,
    ReadOnly,
}

fn kind(request: &Request) -> Kind {
    let method = request.method();
    if *method == Method::GET {
        if matches!(request.uri().path(), "/healthz" | "/livez" | "/readyz") {
            return Kind::Probe;
        }
        if Query::parse(request.uri().query()).bool("watch") {
            return Kind::Watch;
        }
    }
    match *method {
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE => Kind::Mutating,
        _ => Kind::ReadOnly,
    }
}

/// The server's flow-control state: one per router.
pub struct Flow {
    read_only: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
    request_timeout: Duration,
    max_watches_per_client: usize,
    watches: Arc<Mutex<HashMap<String, usize>>>,
    /// `apiserver_current_inflight_requests` of mutating and of read-only requests.
    in_flight_gauges: [metrics::Gauge; 2],
}

impl Flow {
    pub fn new(config: &Config) -> Flow {
        let pool = |size: usize| (size > 0).then(|| Arc::new(Semaphore::new(size)));
        Flow {
            read_only: pool(config.max_requests_inflight),
            mutating: pool(config.max_mutating_requests_inflight),
            request_timeout: config.request_timeout,
            max_watches_per_client: config.max_watches_per_client,
            watches: Arc::default(),
            // Made once (the recorder installed first, or they would be no-ops).
            in_flight_gauges: {
                crate::metrics::handle();
                ["mutating", "readOnly"]
                    .map(|kind| metrics::gauge!(crate::metrics::INFLIGHT, "request_kind" => kind))
            },
        }
    }

    /// The in-flight gauge of requests of `kind`.
    fn gauge(&self, kind: Kind) -> &metrics::Gauge {
        match kind {
            Kind::Mutating => &self.in_flight_gauges[0],
            _ => &self.in_flight_gauges[1],
        }
    }

    /// A place for one more request of `kind` in flight: `Ok(None)` when that kind is not
    /// limited, `Err` when every place is taken.
    fn in_flight(&self, kind: Kind) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let pool = match kind {
            Kind::Mutating => &self.mutating,
            _ => &self.read_only,
        };
        let Some(pool) = pool else {
            return Ok(None);
        };
        pool.clone().try_acquire_owned().map(Some).map_err(|_| {
            ApiError::too_many_requests("Too many requests, please try again later.", 1)
        })
    }

    /// A slot for one more watch of `client`, given back when the slot is dropped; `Err` when
    /// the client holds as many as it may.
    fn watch_slot(&self, client: String) -> Result<WatchSlot, ApiError> {
        let mut watches = self.watches.lock().expect("watch count lock");
        let count = watches.entry(client.clone()).or_default();
        if *count >= self.max_watches_per_client {
            return Err(ApiError::too_many_requests(
                format!(
                    "Too many watches from this client ({client}): at most {} at once, please try again later.",
                    self.max_watches_per_client
                ),
                1,
            ));
        }
        *count += 1;
        Ok(WatchSlot {
            client,
            watches: self.watches.clone(),
        })
    }
}

/// One open watch of one client.
struct WatchSlot {
    client: String,
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut watches = self.watches.lock().expect("watch count lock");
        if let Some(count) = watches.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                watches.remove(&self.client);
            }
        }
    }
}

/// One request in `apiserver_current_inflight_requests` while it lives.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn new(gauge: &metrics::Gauge) -> InFlight {
        gauge.increment(1.0);
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Flow {
    /// Runs `request` on `next` within the limits of its kind (see the module docs), or
    /// answers it at once.
    pub async fn limit(&self, request: Request, next: Next) -> Response {
        match kind(&request) {
            Kind::Probe => next.run(request).await,
            Kind::Watch => {
                let slot = match self.watch_slot(client_key(&request)) {
                    Ok(slot) => slot,
                    Err(error) => return error.into_response(),
                };
                let response = next.run(request).await;
                if !response.status().is_success() {
                    // A refused watch is an ordinary answer; its slot goes at once.
                    return response;
                }
                // The slot lives as long as the stream: it is dropped with the body.
                response.map(|body| {
                    Body::from_stream(body.into_data_stream().map(move |chunk| {
                        let _held = &slot;
                        chunk
                    }))
                })
            }
            kind @ (Kind::Mutating | Kind::ReadOnly) => {
                let _permit = match self.in_flight(kind) {
                    Ok(permit) => permit,
                    Err(error) => return error.into_response(),
                };
                let _counted = InFlight::new(self.gauge(kind));
                if self.request_timeout.is_zero() {
                    return next.run(request).await;
                }
                match tokio::time::timeout(self.request_timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::new(
                        Reason::Timeout,
                        format!(
                            "request did not complete within the allowed timeout of {:?}",
                            self.request_timeout
                        ),
                    )
                    .into_response(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("a request")
    }

    #[test]
    fn requests_are_probes_watches_mutating_or_read_only() {
        let cases = [
            (Method::GET, "/healthz", Kind::Probe),
            (Method::GET, "/readyz?verbose", Kind::Probe),
            (Method::GET, "/apis/g/v/widgets?watch=true", Kind::Watch),
            (
                Method::GET,
                "/apis/g/v/widgets?watch=True&timeoutSeconds=5",
                Kind::Watch,
            ),
            (Method::GET, "/apis/g/v/widgets?watch=false", Kind::ReadOnly),
            (Method::GET, "/apis/g/v/widgets", Kind::ReadOnly),
            (Method::POST, "/apis/g/v/widgets?watch=true", Kind::Mutating),
            (Method::PUT, "/apis/g/v/widgets/a", Kind::Mutating),
            (Method::PATCH, "/apis/g/v/widgets/a", Kind::Mutating),
            (Method::DELETE, "/apis/g/v/widgets/a", Kind::Mutating),
            (Method::POST, "/healthz", Kind::Mutating),
        ];
        for (method, uri, expected) in cases {
            assert_eq!(
                kind(&request(method.clone(), uri)),
                expected,
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn the_client_is_the_user_and_without_one_the_peer_address() {
        let mut from_peer = request(Method::GET, "/");
        from_peer
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 7], 51234))));
        assert_eq!(client_key(&from_peer), "address:10.0.0.7");
        from_peer.extensions_mut().insert(User {
            name: "system:node:sled-1".into(),
            ..User::default()
        });
        assert_eq!(client_key(&from_peer), "user:system:node:sled-1");
        assert_eq!(client_key(&request(Method::GET, "/")), "unknown");
    }

    fn flow(read_only: usize, mutating: usize, watches: usize) -> Flow {
        Flow::new(&Config {
            max_requests_inflight: read_only,
            max_mutating_requests_inflight: mutating,
            max_watches_per_client: watches,
            ..Config::default()
        })
    }

    #[test]
    fn in_flight_places_are_counted_per_kind_and_given_back() {
        let limited = flow(1, 2, 0);
        let read = limited.in_flight(Kind::ReadOnly).expect("a place");
        let refused = limited.in_flight(Kind::ReadOnly).expect_err("full");
        assert_eq!(refused.reason, Reason::TooManyRequests);
        assert_eq!(refused.retry_after_seconds, Some(1));
        let writes = [
            limited.in_flight(Kind::Mutating).expect("a place"),
            limited.in_flight(Kind::Mutating).expect("a place"),
        ];
        assert!(limited.in_flight(Kind::Mutating).is_err());
        drop(read);
        assert!(limited.in_flight(Kind::ReadOnly).is_ok());
        drop(writes);
        assert!(limited.in_flight(Kind::Mutating).is_ok());
        // 0: no limit.
        let unlimited = flow(0, 0, 0);
        let held: Vec<_> = (0..1000)
            .map(|_| unlimited.in_flight(Kind::ReadOnly).expect("no limit"))
            .collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn watches_are_counted_per_client_and_given_back() {
        let flow = flow(0, 0, 2);
        let first = flow.watch_slot("a".into()).expect("a slot");
        let _second = flow.watch_slot("a".into()).expect("a slot");
        let refused = flow.watch_slot("a".into()).err().expect("full");
        assert_eq!(refused.reason, Reason::TooManyRequests);
        assert!(refused.message.contains("at most 2"), "{}", refused.message);
        let _other = flow
            .watch_slot("b".into())
            .expect("another client's own slots");
        drop(first);
        assert!(flow.watch_slot("a".into()).is_ok());
        drop(_other);
        assert!(!flow.watches.lock().unwrap().contains_key("b"));
    }
}
