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
    /// Speak TLS to etcd and trust the etcd certificates this CA signed (PEM; the store's
    /// `cacert` option).
    #[arg(long)]
    pub(crate) etcd_cafile: Option<PathBuf>,
    /// The client certificate etcd's --client-cert-auth asks for (PEM; with --etcd-keyfile).
    #[arg(long, requires_all = ["etcd_keyfile", "etcd_cafile"])]
    pub(crate) etcd_certfile: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "etcd_certfile")]
    pub(crate) etcd_keyfile: Option<PathBuf>,
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
    pub(crate) security: SecurityArgs,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) audit: AuditArgs,
}

/// Where the audit trail goes (docs/security.md, "Audit"; kube-apiserver's flags).
#[derive(clap::Args, Clone, Debug)]
pub struct AuditArgs {
    /// Record every request that changes state, as audit.k8s.io/v1 Events, one JSON line
    /// each, in this file (read back with `corralctl audit`). Unset: no audit trail.
    #[arg(long)]
    pub(crate) audit_log_path: Option<PathBuf>,
    /// Rotate the file before it grows past this many megabytes (MiB).
    #[arg(long, default_value_t = 100)]
    pub(crate) audit_log_maxsize: u64,
    /// Keep this many rotated files (`PATH.1` the newest); older ones are deleted.
    #[arg(long, default_value_t = 5)]
    pub(crate) audit_log_maxbackup: usize,
}

impl AuditArgs {
    /// The flags' defaults, writing to `path`.
    pub fn at(path: PathBuf) -> AuditArgs {
        AuditArgs {
            audit_log_path: Some(path),
            audit_log_maxsize: 100,
            audit_log_maxbackup: 5,
        }
    }

    fn config(&self) -> Option<corral_apiserver::audit::AuditConfig> {
        let path = self.audit_log_path.clone()?;
        Some(corral_apiserver::audit::AuditConfig {
            path,
            max_bytes: self.audit_log_maxsize.saturating_mul(1024 * 1024),
            max_backups: self.audit_log_maxbackup,
        })
    }
}

/// How the API server proves who it is and learns who asks (docs/security.md).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// A directory `corral certs` made: serve with its `apiserver.crt`/`apiserver.key` and
    /// accept client certificates its `ca.crt` signed.
    #[arg(long)]
    pub(crate) pki: Option<PathBuf>,
    /// The serving certificate chain (PEM); overrides the one in --pki.
    #[arg(long)]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM); overrides the one in --pki.
    #[arg(long)]
    pub(crate) tls_private_key_file: Option<PathBuf>,
    /// Accept client certificates this CA signed (CN = user, O = groups); overrides --pki's.
    #[arg(long)]
    pub(crate) client_ca_file: Option<PathBuf>,
    /// Bearer tokens, one per line: `token,user,uid[,"group1,group2"]` (kube-apiserver's
    /// --token-auth-file format).
    #[arg(long)]
    pub(crate) token_auth_file: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS. This gives up encryption — anyone on the path reads
    /// every object and every bearer token, and can change both — and client certificates:
    /// only bearer tokens authenticate. For a loopback-only test setup, never for a rack.
    #[arg(long)]
    pub(crate) insecure_http: bool,
}

impl SecurityArgs {
    /// The TLS configuration, `None` for --insecure-http.
    fn tls(&self) -> anyhow::Result<Option<corral_apiserver::serve::Tls>> {
        let in_pki = |file: &str| self.pki.as_ref().map(|dir| dir.join(file));
        if self.insecure_http {
            anyhow::ensure!(
                self.tls_cert_file.is_none() && self.tls_private_key_file.is_none(),
                "--insecure-http serves no certificate: drop --tls-cert-file/--tls-private-key-file or --insecure-http"
            );
            tracing::warn!(
                "serving plain HTTP (--insecure-http): no encryption, no client certificates"
            );
            return Ok(None);
        }
        let cert = self
            .tls_cert_file
            .clone()
            .or_else(|| in_pki("apiserver.crt"));
        let key = self
            .tls_private_key_file
            .clone()
            .or_else(|| in_pki("apiserver.key"));
        let (Some(cert), Some(key)) = (cert, key) else {
            anyhow::bail!(
                "HTTPS needs a serving certificate: give --pki DIR (made by `corral certs --dir DIR`) or --tls-cert-file and --tls-private-key-file; --insecure-http serves plain HTTP"
            );
        };
        let client_ca = self.client_ca_file.clone().or_else(|| in_pki("ca.crt"));
        Ok(Some(corral_apiserver::serve::Tls::from_files(
            &cert,
            &key,
            client_ca.as_deref(),
        )?))
    }

    fn authentication(&self) -> anyhow::Result<corral_apiserver::auth::Authentication> {
        let tokens = match &self.token_auth_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let file = corral_apiserver::auth::TokenFile::parse(&text)
                    .with_context(|| path.display().to_string())?;
                Some(std::sync::Arc::new(file))
            }
        };
        Ok(corral_apiserver::auth::Authentication { tokens })
    }
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
    /// A non-watch request that takes longer is answered 504 (0: no timeout).
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
    let flags = corral_store::EtcdTls::from_parts(
        args.etcd_cafile.clone(),
        args.etcd_certfile.clone(),
        args.etcd_keyfile.clone(),
    )
    .map_err(|why| anyhow::anyhow!("--etcd-cafile, --etcd-certfile, --etcd-keyfile: {why}"))?;
    if let Some(flags) = flags {
        store_config = store_config.with_etcd_tls(flags);
    }
    let registry = Registry::load_with(corral_crds::MANIFESTS, args.crds.as_deref())
        .context("loading CustomResourceDefinitions")?;
    let store = corral_store::open(&store_config)
        .await
        .with_context(|| format!("opening store {store_config}"))?;
    let tls = args.security.tls()?;
    let mut config = corral_apiserver::Config {
        compaction_interval: args.compaction_interval,
        bookmark_interval: args.bookmark_interval,
        authentication: args.security.authentication()?,
        policy: corral_crds::POLICY.to_vec(),
        audit: args.audit.config(),
        ..Default::default()
    };
    args.limits.apply(&mut config);
    let running = corral_apiserver::ApiServer::start(registry, store, config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%address, %scheme, store = %store_config, "apiserver listening");
    let task = tokio::spawn(async move {
        corral_apiserver::serve(listener, running.server.clone(), tls, async move {
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
