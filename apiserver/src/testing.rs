//! A real API server for the tests of its clients: the built-in kinds plus the CRDs given, over
//! a temporary SQLite file, on a free loopback port. Dropping it (or [`TestServer::stop`])
//! shuts it down and removes the file.
//!
//! It serves plain HTTP (`--insecure-http`'s mode): the clients under test authenticate with
//! the bearer token [`ADMIN_TOKEN`] of `admin` in `system:masters`, which its kubeconfig
//! carries, or as further users a test names ([`TestOptions`], [`TestServer::kubeconfig_of`]).
//! TLS and client certificates are tested against the real binary. It keeps an audit trail
//! in its directory (`audit.log`).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::auth::{Authentication, TokenFile, identities};
use crate::resource::Registry;
use crate::{ApiServer, Config, Running};

/// The bearer token of `admin` (in `system:masters`) on every [`TestServer`].
pub const ADMIN_TOKEN: &str = "corral-test-admin-token";

/// A configuration whose only credential is [`ADMIN_TOKEN`].
pub fn admin_token_config() -> Config {
    token_config(&[])
}

/// The bearer token of a further user of a [`TestServer`].
pub fn token_of(user: &str) -> String {
    format!("corral-test-token-{user}")
}

/// [`ADMIN_TOKEN`] and a token ([`token_of`]) for each of `users` (name, groups).
fn token_config(users: &[(String, Vec<String>)]) -> Config {
    let mut lines = format!("{ADMIN_TOKEN},admin,admin,{}\n", identities::MASTERS_GROUP);
    for (name, groups) in users {
        lines.push_str(&format!(
            "{},{name},{name},\"{}\"\n",
            token_of(name),
            groups.join(",")
        ));
    }
    let tokens = TokenFile::parse(&lines).expect("valid token lines");
    Config {
        authentication: Authentication {
            tokens: Some(std::sync::Arc::new(tokens)),
        },
        ..Config::default()
    }
}

/// What a [`TestServer`] has besides the built-ins.
#[derive(Clone, Debug, Default)]
pub struct TestOptions {
    /// Default policy to create at start ((origin, YAML) pairs; `Config::policy`).
    pub policy: Vec<(&'static str, &'static str)>,
    /// Users with a bearer token: (name, groups).
    pub users: Vec<(String, Vec<String>)>,
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
        TestServer::start_with(crds, TestOptions::default()).await
    }

    /// [`TestServer::start`] with `options`.
    pub async fn start_with(crds: &[(&str, &str)], options: TestOptions) -> TestServer {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let config: corral_store::StoreConfig =
            format!("sqlite:{}", dir.path().join("store.db").display())
                .parse()
                .expect("a SQLite store URL");
        let store = corral_store::open(&config)
            .await
            .expect("opening the SQLite store");
        let registry = Registry::load_with(crds, None).expect("loading the CRDs");
        let config = Config {
            policy: options.policy,
            audit: Some(crate::audit::AuditConfig {
                path: dir.path().join("audit.log"),
                max_bytes: 16 * 1024 * 1024,
                max_backups: 1,
            }),
            ..token_config(&options.users)
        };
        let running = ApiServer::start(registry, store, config)
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

    /// A kubeconfig that authenticates as `user` (one of [`TestOptions::users`]), written in
    /// the server's directory.
    pub fn kubeconfig_of(&self, user: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{user}.kubeconfig"));
        let text = kubeconfig_yaml(&self.url).replace(ADMIN_TOKEN, &token_of(user));
        std::fs::write(&path, text).expect("writing a kubeconfig");
        path
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
