//! `corral apiserver`: the API server's flags, its start in this process (also what `corral up`
//! runs), and a kubeconfig for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use corral_apiserver::resource::Registry;
use corral_store::StoreConfig;

use crate::command::{parse_duration, shutdown_signal};

#[derive(clap::Args, Clone)]
pub struct ApiserverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub(crate) listen: SocketAddr,
    /// `sqlite:PATH` or `etcd:URL[,URL...]`.
    #[arg(long)]
    pub(crate) store: StoreConfig,
    /// Key prefix in etcd (several Corral installations may share one etcd).
    #[arg(long, default_value = "/corral")]
    pub(crate) etcd_prefix: String,
    /// A directory of further CustomResourceDefinition YAML files to serve, besides Corral's
    /// own kinds (Sled, Instance, Vmm), which are always served.
    #[arg(long)]
    pub(crate) crds: Option<PathBuf>,
    /// Keep this much store history for watchers to resume from; compact older history.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub(crate) compaction_interval: Duration,
    /// How often watches that ask for bookmarks get one.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) bookmark_interval: Duration,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// What one client may make the server do (docs/api.md, "Limits").
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    /// A watch without `timeoutSeconds` lasts between this and twice this (at random); one with
    /// it, at most twice this.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub(crate) min_request_timeout: Duration,
    /// The most bytes of objects one list answer holds: a page asked for with `limit` ends
    /// there (with a `continue`); a list without `limit` that would hold more is refused.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    pub(crate) max_list_bytes: usize,
    /// A client that has not sent a whole request head in this time is disconnected (and a
    /// keep-alive connection idle this long is closed).
    #[arg(long, default_value = "32s", value_parser = parse_duration)]
    pub(crate) header_read_timeout: Duration,
    /// The most connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_connections: usize,
    /// The most read-only requests worked on at once (watches are not counted); one more is
    /// answered 429 with `Retry-After: 1`. 0: no limit.
    #[arg(long, default_value_t = 400)]
    pub(crate) max_requests_inflight: usize,
    /// The most mutating requests worked on at once; one more is answered 429 with
    /// `Retry-After: 1`. 0: no limit.
    #[arg(long, default_value_t = 200)]
    pub(crate) max_mutating_requests_inflight: usize,
    /// A non-watch request that takes longer is answered 504.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) request_timeout: Duration,
    /// The most watches one client holds open at once; one more is answered 429.
    #[arg(long, default_value_t = 1000)]
    pub(crate) max_watches_per_client: usize,
}

impl Default for LimitArgs {
    /// The flags' defaults.
    fn default() -> LimitArgs {
        use clap::{Args, FromArgMatches};
        let command = LimitArgs::augment_args(clap::Command::new("limits"));
        LimitArgs::from_arg_matches(&command.get_matches_from(["limits"]))
            .expect("the defaults of the limit flags parse")
    }
}

impl LimitArgs {
    /// Sets the limits in `config`.
    fn apply(&self, config: &mut corral_apiserver::Config) {
        config.min_request_timeout = self.min_request_timeout;
        config.max_list_bytes = self.max_list_bytes;
        config.header_read_timeout = self.header_read_timeout;
        config.max_connections = self.max_connections;
        config.max_requests_inflight = self.max_requests_inflight;
        config.max_mutating_requests_inflight = self.max_mutating_requests_inflight;
        config.request_timeout = self.request_timeout;
        config.max_watches_per_client = self.max_watches_per_client;
    }
}

/// Starts the API server in this process; it serves until `stop`. Returns its address and the
/// task that ends when it has shut down.
pub async fn start_apiserver(
    args: ApiserverArgs,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let mut store_config = args.store.clone();
    if let StoreConfig::Etcd { prefix, .. } = &mut store_config {
        *prefix = args.etcd_prefix.clone();
    }
    let registry = Registry::load_with(corral_crds::MANIFESTS, args.crds.as_deref())
        .context("loading CustomResourceDefinitions")?;
    let store = corral_store::open(&store_config)
        .await
        .with_context(|| format!("opening store {store_config}"))?;
    let mut config = corral_apiserver::Config {
        compaction_interval: args.compaction_interval,
        bookmark_interval: args.bookmark_interval,
        ..Default::default()
    };
    args.limits.apply(&mut config);
    let running = corral_apiserver::ApiServer::start(registry, store, config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = %store_config, "apiserver listening");
    let task = tokio::spawn(async move {
        corral_apiserver::serve(listener, running.server.clone(), async move {
            stop.cancelled().await
        })
        .await?;
        running.shutdown().await;
        Ok(())
    });
    Ok((address, task))
}

/// `corral apiserver`: serves until SIGINT or SIGTERM.
pub async fn run_apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    let (_address, task) = start_apiserver(args, stop.clone()).await?;
    shutdown_signal().await;
    stop.cancel();
    task.await?
}

/// A kubeconfig for the API server at `address`: no credentials, namespace `default`.
pub fn kubeconfig(address: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: corral\n  cluster:\n    server: http://{address}\ncontexts:\n- name: corral\n  context:\n    cluster: corral\n    user: corral\n    namespace: default\ncurrent-context: corral\nusers:\n- name: corral\n  user: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_flags_default_to_the_servers_defaults() {
        let mut config = corral_apiserver::Config::default();
        let defaults = corral_apiserver::Config::default();
        LimitArgs::default().apply(&mut config);
        assert_eq!(config.min_request_timeout, defaults.min_request_timeout);
        assert_eq!(config.max_list_bytes, defaults.max_list_bytes);
        assert_eq!(config.header_read_timeout, defaults.header_read_timeout);
        assert_eq!(config.max_connections, defaults.max_connections);
        assert_eq!(config.max_requests_inflight, defaults.max_requests_inflight);
        assert_eq!(
            config.max_mutating_requests_inflight,
            defaults.max_mutating_requests_inflight
        );
        assert_eq!(config.request_timeout, defaults.request_timeout);
        assert_eq!(
            config.max_watches_per_client,
            defaults.max_watches_per_client
        );
    }
}
