//! `corral`: the server-side commands. Thin: parse flags, set up tracing, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corral_apiserver::resource::Registry;
use corral_store::StoreConfig;

mod bench;
mod debug;
mod rack;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "A declarative control plane for a rack of VM servers"
)]
struct Cli {
    /// Log format: "text" or "json". Filter with RUST_LOG (default: info).
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on one machine: the API server on SQLite under --data-dir, the
    /// controllers and --sleds simulated sleds.
    Up(rack::UpArgs),
    /// Run the Kubernetes-compatible API server.
    Apiserver(ApiserverArgs),
    /// Run the controllers (leader-elected: run several, one acts).
    Controllers(ControllersArgs),
    /// Run the node-agent of one simulated sled.
    NodeAgent(rack::NodeAgentArgs),
    /// Run many simulated sleds (machines and agents) and their power controllers.
    PowerSim(rack::PowerSimArgs),
    /// Benchmarks that print numbers and ratios.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(clap::Args, Clone)]
pub struct ApiserverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// `sqlite:PATH` or `etcd:URL[,URL...]`.
    #[arg(long)]
    store: StoreConfig,
    /// Key prefix in etcd (several Corral installations may share one etcd).
    #[arg(long, default_value = "/corral")]
    etcd_prefix: String,
    /// A directory of further CustomResourceDefinition YAML files to serve, besides Corral's
    /// own kinds (Sled, Instance, Vmm), which are always served.
    #[arg(long)]
    crds: Option<PathBuf>,
    /// Keep this much store history for watchers to resume from; compact older history.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    compaction_interval: Duration,
    /// How often watches that ask for bookmarks get one.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    bookmark_interval: Duration,
}

#[derive(clap::Args, Clone)]
pub struct ControllersArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Instance reconciles in flight at once.
    #[arg(long, default_value_t = corral_controllers::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// How long the leader Lease lasts without renewal; a survivor takes over after it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// Serve `/debug/controllers` (each controller's last outcome, errors, work queued) here.
    #[arg(long)]
    debug_listen: Option<SocketAddr>,
    /// A crash point for tests, `CONTROLLER/PHASE` (test builds only: the controllers' kit,
    /// `faults.rs`, has the contract).
    #[arg(long, hide = true)]
    crash_at: Option<corral_controllers::kit::faults::CrashPoint>,
}

/// Parses `500ms`, `30s`, `5m`, `1h` (and a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration unit in {text:?} (use ms, s, m or h)"
        )),
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Apiserver(args) => run_apiserver(args).await,
            Command::Controllers(args) => run_controllers(args).await,
            Command::Up(args) => rack::up(args).await,
            Command::NodeAgent(args) => rack::node_agent(args).await,
            Command::PowerSim(args) => rack::power_sim(args).await,
            Command::Bench(command) => bench::run(command).await,
        }
    })
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
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
    let config = corral_apiserver::Config {
        compaction_interval: args.compaction_interval,
        bookmark_interval: args.bookmark_interval,
        ..Default::default()
    };
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
async fn run_apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    let (_address, task) = start_apiserver(args, stop.clone()).await?;
    shutdown_signal().await;
    stop.cancel();
    task.await?
}

/// Leader lease timing scaled from its duration, in Kubernetes' proportions (15 s / 10 s / 2 s).
pub fn controllers_config(
    lease_duration: Duration,
    concurrency: u16,
) -> corral_controllers::Config {
    corral_controllers::Config {
        concurrency,
        lease_duration,
        renew_deadline: lease_duration.mul_f64(2.0 / 3.0),
        retry_period: lease_duration.mul_f64(2.0 / 15.0),
        ..Default::default()
    }
}

async fn run_controllers(args: ControllersArgs) -> anyhow::Result<()> {
    let client = corral_client::connect(args.kubeconfig.as_deref()).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = controllers_config(args.lease_duration, args.concurrency);
    if let Some(point) = args.crash_at {
        corral_controllers::kit::faults::arm(point).map_err(anyhow::Error::msg)?;
    }
    let debug = match args.debug_listen {
        Some(listen) => {
            let (address, task) =
                debug::serve(listen, config.board.clone(), shutdown.clone()).await?;
            tracing::info!("controllers: debug page at http://{address}/debug/controllers");
            Some(task)
        }
        None => None,
    };
    tracing::info!(identity = %config.identity, "controllers: campaigning for the leader lease");
    let run = tokio::spawn(corral_controllers::run(client, config, shutdown.clone()));
    shutdown_signal().await;
    shutdown.cancel();
    run.await?;
    if let Some(debug) = debug {
        let _ = debug.await;
    }
    Ok(())
}

pub fn kubeconfig(address: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: corral\n  cluster:\n    server: http://{address}\ncontexts:\n- name: corral\n  context:\n    cluster: corral\n    user: corral\n    namespace: default\ncurrent-context: corral\nusers:\n- name: corral\n  user: {{}}\n"
    )
}
