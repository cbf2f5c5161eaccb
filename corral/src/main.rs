//! `corral`: the server-side commands. Thin: parse flags, set up tracing, run.

use clap::{Parser, Subcommand};

mod apiserver;
mod bench;
mod certs;
mod chaos;
mod command;
mod controllers;
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
    Apiserver(Box<apiserver::ApiserverArgs>),
    /// Make (or complete) a rack's CA, the API servers' certificate and kubeconfigs for
    /// `admin`, the controllers, sleds and users, and etcd's own CA and certificates.
    Certs(certs::CertsArgs),
    /// Run the controllers (leader-elected: run several, one acts).
    Controllers(controllers::ControllersArgs),
    /// Run the node-agent of one simulated sled.
    NodeAgent(rack::NodeAgentArgs),
    /// Run many simulated sleds (machines and agents) and their power controllers.
    PowerSim(rack::PowerSimArgs),
    /// Benchmarks that print numbers and ratios.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Randomized fault schedules on a real rack of processes, with the invariants checked
    /// during and after each (last line `chaos: N schedules, V violations`).
    Chaos(chaos::ChaosArgs),
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log file or the journal gets plain text
    // (escape codes would make every journal line binary). `NO_COLOR` turns it off anywhere.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The process's metrics recorder, before anything records (`/metrics` renders it).
    corral_apiserver::metrics::handle();
    corral_node_agent::metrics::serve_with(corral_apiserver::metrics::render);
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Apiserver(args) => apiserver::run_apiserver(*args).await,
            Command::Certs(args) => certs::run(args),
            Command::Controllers(args) => controllers::run_controllers(args).await,
            Command::Up(args) => rack::up(args).await,
            Command::NodeAgent(args) => rack::node_agent(args).await,
            Command::PowerSim(args) => rack::power_sim(args).await,
            Command::Bench(command) => bench::run(command).await,
            Command::Chaos(args) => chaos::chaos(args).await,
        }
    })
}
