//! Several API servers behind one `kube::Client`. A kubeconfig names them: its cluster's
//! `server`, and every URL in the cluster extension `corral.dev/servers`
//! (`extension: {servers: [URL, ...]}`, which `corral certs` writes and kubectl ignores).
//! Requests go to one server until it cannot be reached, then to the next (docs/ha.md,
//! "Clients").
//!
//! # Guarantees
//!
//! - A request that did not reach its server (the connection was refused or could not be made
//!   within the connect timeout) is sent to the next server, whatever its method: no server
//!   saw it. Each server is tried at most once per request.
//! - A read (`GET`, `HEAD`) that failed on the way (the connection reset or closed before a
//!   response) is sent to the next server too: it changes nothing.
//! - A write that failed on the way is never sent again: its server may have applied it. The
//!   error goes to the caller, as with one server (controllers retry; an "already done"
//!   answer counts as success, `idempotent`), and later requests go to the next server.
//! - A client keeps to one server while it answers, so it reads its own writes from one
//!   server's watch cache; each process starts at a random one, which spreads clients over
//!   the servers.
//! - A watch whose server dies ends as it would with one server; the caller resumes it from
//!   its last resourceVersion, and that request reaches a live server, whose watch cache
//!   serves it without a relist while the revision is in its window.
//!
//! # Not responsible for
//!
//! - Retrying an answer the server gave (a `5xx`, a `429`): that is the caller's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::config::Kubeconfig;

/// The name of the cluster extension that lists every API server.
pub const SERVERS_EXTENSION: &str = "corral.dev/servers";

/// With several servers, how long a connection may take before the next server is tried (a
/// dead machine does not refuse, it is silent).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The API servers `kubeconfig` lists for the cluster of its current context (or of
/// `context`): the extension's URLs, with the cluster's `server` first if the extension does
/// not name it. Empty when the kubeconfig lists none beyond its `server`.
pub fn listed_servers(kubeconfig: &Kubeconfig, context: Option<&str>) -> Vec<String> {
    let Some(context) = context.or(kubeconfig.current_context.as_deref()) else {
        return Vec::new();
    };
    let cluster = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.as_str());
    let Some(cluster) = kubeconfig
        .clusters
        .iter()
        .find(|c| Some(c.name.as_str()) == cluster)
        .and_then(|c| c.cluster.as_ref())
    else {
        return Vec::new();
    };
    let listed: Vec<String> = cluster
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.name == SERVERS_EXTENSION)
        .filter_map(|e| e.extension.get("servers")?.as_array().cloned())
        .flatten()
        .filter_map(|url| url.as_str().map(str::to_string))
        .collect();
    if listed.is_empty() {
        return listed;
    }
    let mut servers: Vec<String> = cluster.server.iter().cloned().collect();
    for url in listed {
        if !servers.contains(&url) {
            servers.push(url);
        }
    }
    servers
}

/// One client over every server in `config`'s cluster and `servers` (see the module docs);
/// a plain client when there is only one.
pub fn client(config: kube::Config, servers: &[String]) -> Result<kube::Client, FailoverError> {
    if servers.len() < 2 {
        return kube::Client::try_from(config).map_err(FailoverError::Client);
    }
    let namespace = config.default_namespace.clone();
    let mut clients = Vec::with_capacity(servers.len());
    for server in servers {
        let mut config = config.clone();
        config.cluster_url = server
            .parse()
            .map_err(|_| FailoverError::InvalidUrl(server.clone()))?;
        config.connect_timeout = Some(
            config
                .connect_timeout
                .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT)),
        );
        let client = kube::Client::try_from(config).map_err(FailoverError::Client)?;
        clients.push((server.clone(), client));
    }
    let start = rand::random_range(0..clients.len());
    let service = Failover {
        servers: Arc::new(clients),
        current: Arc::new(AtomicUsize::new(start)),
    };
    Ok(kube::Client::new(service, namespace))
}

/// Why a client over several servers could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("invalid API server URL {0:?}")]
    InvalidUrl(String),
    #[error("building a client")]
    Client(#[source] kube::Error),
}

/// The service under the `kube::Client` [`client`] returns.
#[derive(Clone)]
struct Failover {
    /// Each server's URL and a client for it alone.
    servers: Arc<Vec<(String, kube::Client)>>,
    /// The index of the server requests go to.
    current: Arc<AtomicUsize>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(request).await })
    }
}

impl Failover {
    async fn send(self, request: Request<Body>) -> Result<Response<Body>, kube::Error> {
        let count = self.servers.len();
        let start = self.current.load(Ordering::Relaxed) % count;
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        let mut request = Some(request);
        let mut attempt = 0;
        loop {
            let index = (start + attempt) % count;
            let this = request.take().expect("a request to send");
            // A copy for the next server, while one may still be needed.
            let copy = (attempt + 1 < count).then(|| copy_of(&this)).flatten();
            let (server, client) = &self.servers[index];
            match client.send(this).await {
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(error) => {
                    let unreached = did_not_reach(&error);
                    if !unreached && !is_transport(&error) {
                        return Err(error);
                    }
                    // The next request starts at the next server (unless another request
                    // already moved on).
                    let _ = self.current.compare_exchange(
                        index,
                        (index + 1) % count,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    match copy {
                        Some(copy) if unreached || read => {
                            tracing::warn!(%server, %error, "API server unreachable; trying the next");
                            request = Some(copy);
                            attempt += 1;
                        }
                        _ => return Err(error),
                    }
                }
            }
        }
    }
}

/// The same request again, if its body can be copied (every body kube builds can).
fn copy_of(request: &Request<Body>) -> Option<Request<Body>> {
    let body = request.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Whether `error` says the request never reached a server: no connection could be made.
fn did_not_reach(error: &kube::Error) -> bool {
    chain(error).any(|e| {
        e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Whether `error` is about the connection (the request may or may not have been seen),
/// rather than an answer or a local mistake.
fn is_transport(error: &kube::Error) -> bool {
    match error {
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => chain(error).any(|e| e.is::<std::io::Error>()),
    }
}

fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(yaml: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(yaml).expect("a kubeconfig")
    }

    const LISTED: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: corral
  cluster:
    server: https://10.0.0.2:6443
    extensions:
    - name: corral.dev/servers
      extension:
        servers: [https://10.0.0.1:6443, https://10.0.0.2:6443, https://10.0.0.3:6443]
- name: other
  cluster:
    server: https://192.0.2.1:6443
contexts:
- name: corral
  context: {cluster: corral, user: admin}
- name: other
  context: {cluster: other, user: admin}
current-context: corral
users:
- name: admin
  user: {token: t}
"#;

    #[test]
    fn the_server_comes_first_then_every_other_listed_once() {
        assert_eq!(
            listed_servers(&kubeconfig(LISTED), None),
            [
                "https://10.0.0.2:6443",
                "https://10.0.0.1:6443",
                "https://10.0.0.3:6443"
            ]
        );
    }

    #[test]
    fn a_cluster_without_the_extension_lists_none() {
        assert!(listed_servers(&kubeconfig(LISTED), Some("other")).is_empty());
        assert!(listed_servers(&kubeconfig(LISTED), Some("missing")).is_empty());
    }

    #[test]
    fn a_copy_keeps_method_uri_headers_and_body() {
        let request = Request::post("/api/v1/namespaces/a/events?x=1")
            .header("content-type", "application/json")
            .body(Body::from(b"{}".to_vec()))
            .unwrap();
        let copy = copy_of(&request).expect("a buffered body is copied");
        assert_eq!(copy.method(), Method::POST);
        assert_eq!(copy.uri(), request.uri());
        assert_eq!(copy.headers(), request.headers());
    }
}
