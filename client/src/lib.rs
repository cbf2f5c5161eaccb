//! What every Corral client shares — controllers, node-agents and `corralctl` alike: how to
//! reach the API server ([`connect`]), the one clock ([`clock`]), Events ([`events`]), Leases
//! for heartbeats and leader election ([`lease`]), "already done is success"
//! ([`idempotent`]), TLS to the sleds' own endpoints ([`tls`]), and failing over between
//! several API servers ([`failover`]).
//!
//! **Invariant:** talks to the API server only; never names the store.

pub mod backoff;
pub mod clock;
pub mod events;
pub mod failover;
pub mod idempotent;
pub mod lease;
pub mod tls;

use std::path::Path;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding a kubeconfig ($KUBECONFIG, ~/.kube/config or in-cluster)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building a client")]
    Client(#[source] kube::Error),
    #[error("invalid API server URL {0:?}")]
    InvalidUrl(String),
}

/// A client for the API server named by `kubeconfig`, or by `$KUBECONFIG` / `~/.kube/config`
/// when it is `None` — the same lookup kubectl does. Must be called inside the Tokio runtime.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, ConnectError> {
    connect_as(kubeconfig, concat!("corral/", env!("CARGO_PKG_VERSION"))).await
}

/// [`connect`], naming the program in every request's `User-Agent` (what the API server's audit
/// trail records beside the user).
pub async fn connect_as(
    kubeconfig: Option<&Path>,
    user_agent: &str,
) -> Result<kube::Client, ConnectError> {
    let file = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ConnectError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            Some((file, path.display().to_string()))
        }
        // `$KUBECONFIG` or `~/.kube/config`, as kubectl reads them; neither: in a pod (below).
        None => kube::config::Kubeconfig::read()
            .ok()
            .map(|file| (file, "$KUBECONFIG or ~/.kube/config".to_string())),
    };
    let (mut config, servers) = match file {
        Some((file, path)) => {
            let servers = failover::listed_servers(&file, None);
            let options = kube::config::KubeConfigOptions::default();
            let config = kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|source| ConnectError::Kubeconfig { path, source })?;
            (config, servers)
        }
        None => (
            kube::Config::infer().await.map_err(ConnectError::Infer)?,
            Vec::new(),
        ),
    };
    if let Ok(value) = http::HeaderValue::from_str(user_agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    failover::client(config, &servers).map_err(|error| match error {
        failover::FailoverError::InvalidUrl(url) => ConnectError::InvalidUrl(url),
        failover::FailoverError::Client(error) => ConnectError::Client(error),
    })
}

/// A client for a plain-HTTP API server at `url` (for processes started with `--server`).
pub fn connect_url(url: &str) -> Result<kube::Client, ConnectError> {
    let uri = url
        .parse()
        .map_err(|_| ConnectError::InvalidUrl(url.to_string()))?;
    let config = kube::Config::new(uri);
    kube::Client::try_from(config).map_err(ConnectError::Client)
}
