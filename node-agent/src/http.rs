//! Serving a sled's HTTP APIs (fault, migration, power) — over TLS with authenticated
//! callers, or over plain HTTP for a rack whose API server is plain HTTP too
//! (docs/security.md, "The sleds' endpoints").
//!
//! # Guarantees
//! - With [`Endpoints::Tls`], every connection is TLS; a client certificate the rack's CA did
//!   not sign ends the handshake, and one it did sign names the [`Caller`] of every request of
//!   that connection. A client without a certificate is [`Caller::Anonymous`].
//! - [`authorize`] answers `401` to an anonymous caller and `403` (naming the user) to one
//!   the rule refuses, before any handler runs. Over plain HTTP ([`Caller::Insecure`]) every
//!   rule passes: that is what plain HTTP gives up.
//! - A TLS handshake not finished within [`HANDSHAKE_TIMEOUT`] is dropped; it runs in the
//!   connection's own task, so it holds nothing but its socket.
//! - Every connection is `TCP_NODELAY`: these APIs stream small messages (a migration's
//!   rounds, a progress report) and answer small requests, and with Nagle's algorithm a write
//!   made while the previous one is unacknowledged waits for the peer's delayed ACK, up to
//!   40 ms on Linux.
//! - [`serve`] returns once `stop` is cancelled and every connection has closed (a request in
//!   flight finishes; a migration stream ends when its transfer does).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_client::tls::{CONTROLLERS_USER, MASTERS_GROUP, MONITORING_GROUP, PeerIdentity};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the loop rests after a failed accept.
const ACCEPT_ERROR_REST: Duration = Duration::from_millis(100);

/// How a sled's endpoints are served, and how its agent calls other sleds'.
#[derive(Clone)]
pub enum Endpoints {
    /// HTTPS: the server presents `server`'s certificate and verifies callers against the
    /// rack's CA; `client` is what this sled presents to another sled (its node identity).
    Tls {
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    },
    /// Plain HTTP, anyone may call: only for a rack whose API server is plain HTTP as well
    /// (`--insecure-http`), on loopback.
    InsecureHttp,
}

impl Endpoints {
    /// The scheme of the URLs these endpoints are reached at.
    pub fn scheme(&self) -> &'static str {
        match self {
            Endpoints::Tls { .. } => "https",
            Endpoints::InsecureHttp => "http",
        }
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.scheme())
    }
}

/// Who made a request, put on each request by [`serve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Over plain HTTP: nobody is authenticated, and nothing is refused.
    Insecure,
    /// Over TLS without a client certificate.
    Anonymous,
    /// Over TLS with a client certificate the rack's CA signed.
    User(PeerIdentity),
}

/// Who may call a set of routes. (The migration endpoint decides itself, from the request:
/// `migration/source.rs`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Group `system:masters` (`admin`): the fault-injection doors.
    Masters,
    /// `system:masters` or user `system:corral:controllers`: a power controller.
    MastersOrControllers,
    /// `system:masters` or group `system:monitoring`: the sled's metrics.
    Monitoring,
}

impl Rule {
    fn allows(self, user: &PeerIdentity) -> bool {
        match self {
            Rule::Masters => user.in_group(MASTERS_GROUP),
            Rule::MastersOrControllers => {
                user.in_group(MASTERS_GROUP) || user.user == CONTROLLERS_USER
            }
            Rule::Monitoring => user.in_group(MASTERS_GROUP) || user.in_group(MONITORING_GROUP),
        }
    }
}

/// Why a caller is refused: `401` or `403`, `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("Unauthorized: a client certificate signed by the rack's CA is required")]
    Unauthenticated,
    #[error("Forbidden: user {user:?} may not {what}")]
    Forbidden { user: String, what: String },
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let code = match self {
            Refused::Unauthenticated => StatusCode::UNAUTHORIZED,
            Refused::Forbidden { .. } => StatusCode::FORBIDDEN,
        };
        (
            code,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

impl Caller {
    /// The caller of `request` (anonymous if the listener named none).
    pub fn of(request: &Request) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous)
    }

    /// Ok if `allowed` says yes to this caller (always over plain HTTP); `what` is said in a
    /// refusal.
    pub fn check(
        &self,
        what: &str,
        allowed: impl FnOnce(&PeerIdentity) -> bool,
    ) -> Result<(), Refused> {
        match self {
            Caller::Insecure => Ok(()),
            Caller::Anonymous => Err(Refused::Unauthenticated),
            Caller::User(user) if allowed(user) => Ok(()),
            Caller::User(user) => Err(Refused::Forbidden {
                user: user.user.clone(),
                what: what.to_string(),
            }),
        }
    }
}

/// `router` with every request checked against `rule` first (see the module docs); `what`
/// names the API in a refusal ("inject faults", "use the power controller").
pub fn authorize(router: Router, rule: Rule, what: &'static str) -> Router {
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            if let Err(refused) = Caller::of(&request).check(what, |user| rule.allows(user)) {
                return refused.into_response();
            }
            next.run(request).await
        },
    ))
}

/// Serves `router` on `listener` as `endpoints` says until `stop` is cancelled (see the
/// module docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    endpoints: Endpoints,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let acceptor = match &endpoints {
        Endpoints::Tls { server, .. } => Some(tokio_rustls::TlsAcceptor::from(server.clone())),
        Endpoints::InsecureHttp => None,
    };
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: rest instead of spinning on it.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_REST).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY refused");
        }
        let (builder, router, acceptor) = (builder.clone(), router.clone(), acceptor.clone());
        let (watcher, stop) = (graceful.watcher(), stop.clone());
        tokio::spawn(async move {
            let serve_with = |caller: Caller| {
                tower::ServiceExt::map_request(router, move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(caller.clone());
                    request
                })
            };
            let Some(acceptor) = acceptor else {
                let service = TowerToHyperService::new(serve_with(Caller::Insecure));
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(error) = watcher.watch(connection.into_owned()).await {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            };
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
                () = stop.cancelled() => return,
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let caller = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| corral_client::tls::peer_identity(leaf))
                .map_or(Caller::Anonymous, Caller::User);
            let service = TowerToHyperService::new(serve_with(caller));
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> Caller {
        Caller::User(PeerIdentity {
            user: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[test]
    fn each_rule_lets_only_its_callers_through() {
        let admin = user("admin", &[MASTERS_GROUP]);
        let controllers = user(CONTROLLERS_USER, &[]);
        let node = user("system:node:sled-1", &["system:nodes"]);
        let decide =
            |caller: &Caller, rule: Rule| caller.check("call", |user| rule.allows(user)).is_ok();
        for (caller, masters, power) in [
            (&admin, true, true),
            (&controllers, false, true),
            (&node, false, false),
            (&Caller::Anonymous, false, false),
            // Plain HTTP checks nobody.
            (&Caller::Insecure, true, true),
        ] {
            assert_eq!(decide(caller, Rule::Masters), masters, "{caller:?}");
            assert_eq!(
                decide(caller, Rule::MastersOrControllers),
                power,
                "{caller:?}"
            );
        }
    }

    #[test]
    fn a_refusal_is_401_without_a_certificate_and_403_naming_the_user_with_one() {
        let refused = Caller::Anonymous.check("call", |_| true).unwrap_err();
        assert_eq!(refused.into_response().status(), StatusCode::UNAUTHORIZED);
        let refused = user("alice", &[]).check("call", |_| false).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "Forbidden: user \"alice\" may not call"
        );
        assert_eq!(refused.into_response().status(), StatusCode::FORBIDDEN);
    }
}
