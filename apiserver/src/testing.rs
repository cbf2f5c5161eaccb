//! A real API server for the tests of its clients: the built-in kinds plus the CRDs given, over
//! a temporary SQLite file, on a free loopback port. Dropping it (or [`TestServer::stop`])
//! shuts it down and removes the file.
//!
//! It serves plain HTTP (`--insecure-http`'s mode): the clients under test authenticate with
//! the bearer token [`ADMIN_TOKEN`] of `admin` in `system:masters`, which its kubeconfig
//! carries. TLS and client certificates are tested against the real binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::auth::{Authentication, TokenFile, identities};
use crate::resource::Registry;
use crate::{ApiServer, Config, Running};

/// The bearer token of `admin` (in `system:masters`) on every [`TestServer`].
pub const ADMIN_TOKEN: &str = "corral-test-admin-token";

/// A configuration whose only credential is [`ADMIN_TOKEN`].
pub fn admin_token_config() -> Config {
    let tokens = TokenFile::parse(&format!(
        "{ADMIN_TOKEN},admin,admin,{}",
        identities::MASTERS_GROUP
    ))
    .expect("a valid token line");
    Config {
        authentication: Authentication {
            tokens: Some(std::sync::Arc::new(tokens)),
        },
        ..Config::default()
    }
}

pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub address: SocketAddr,
    /// A kubeconfig pointing at the server (namespace `default`).
    pub kubeconfig: PathBuf,
    running: Option<Running>,
    serving: Option<tokio::task::JoinHandle<()>>,
    stop: tokio_util::sync::CancellationToken,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server serving `crds` ((origin, YAML) pairs) besides the built-ins.
    pub async fn start(crds: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let config: corral_store::StoreConfig =
            format!("sqlite:{}", dir.path().join("store.db").display())
                .parse()
                .expect("a SQLite store URL");
        let store = corral_store::open(&config)
            .await
            .expect("opening the SQLite store");
        let registry = Registry::load_with(crds, None).expect("loading the CRDs");
        let running = ApiServer::start(registry, store, admin_token_config())
            .await
            .expect("starting the API server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let address = listener.local_addr().expect("a bound address");
        let url = format!("http://{address}");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url)).expect("writing the kubeconfig");
        let stop = tokio_util::sync::CancellationToken::new();
        let server = running.server.clone();
        let stopped = stop.clone();
        let serving = tokio::spawn(async move {
            let _ = crate::serve(
                listener,
                server,
                None,
                async move { stopped.cancelled().await },
            )
            .await;
        });
        TestServer {
            url,
            address,
            kubeconfig,
            running: Some(running),
            serving: Some(serving),
            stop,
            dir,
        }
    }

    /// The temporary directory the server lives in (tests may put their own files there).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops serving and shuts the server down.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(serving) = self.serving.take() {
            let _ = serving.await;
        }
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(running) = &self.running {
            running.server.shutdown.cancel();
        }
    }
}

/// A kubeconfig for a plain-HTTP server at `url` as `admin` ([`ADMIN_TOKEN`]), namespace
/// `default`.
pub fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: corral\n  cluster:\n    server: {url}\ncontexts:\n- name: corral\n  context:\n    cluster: corral\n    user: corral\n    namespace: default\ncurrent-context: corral\nusers:\n- name: corral\n  user:\n    token: {ADMIN_TOKEN}\n"
    )
}
