//! `corral controllers`: the controllers' flags, and their Lease timing (also what `corral up`
//! runs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::command::{parse_duration, shutdown_signal};

#[derive(clap::Args, Clone)]
pub struct ControllersArgs {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Instance reconciles in flight at once.
    #[arg(long, default_value_t = corral_controllers::DEFAULT_CONCURRENCY)]
    pub(crate) concurrency: u16,
    /// How long the leader Lease lasts without renewal; a survivor takes over after it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) lease_duration: Duration,
    /// The `corral certs` directory whose `ca.crt` and `controllers.crt`/`.key` the
    /// sled-health controller calls `https://` power controllers with (without it, it reaches
    /// only `http://` ones).
    #[arg(long)]
    pub(crate) pki: Option<PathBuf>,
    /// Serve `/debug/controllers` (each controller's last outcome, errors, work queued) here.
    #[arg(long)]
    pub(crate) debug_listen: Option<SocketAddr>,
    /// A crash point for tests, `CONTROLLER/PHASE` (test builds only: the controllers' kit,
    /// `faults.rs`, has the contract).
    #[arg(long, hide = true)]
    pub(crate) crash_at: Option<corral_controllers::kit::faults::CrashPoint>,
    #[command(flatten)]
    pub(crate) sled_health: SledHealthArgs,
}

/// How the sled-health controller judges sleds and fences them (docs/rack.md, "When a sled
/// fails").
#[derive(clap::Args, Clone, Debug)]
pub struct SledHealthArgs {
    /// How long a sled's Lease may go unrenewed before it is unreachable (and fenced).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) sled_grace: Duration,
    /// The storm guard: nothing is fenced automatically while more than this share of the
    /// sleds is unreachable at once...
    #[arg(long, default_value_t = 1.0 / 3.0)]
    pub(crate) storm_fraction: f64,
    /// ...or more than this many, whichever is larger.
    #[arg(long, default_value_t = 2)]
    pub(crate) storm_floor: usize,
    /// Vmms of fenced sleds released (restarted elsewhere) per second, rack-wide.
    #[arg(long, default_value_t = 50)]
    pub(crate) evacuation_rate: u32,
    /// How long a sled's power controller has to answer.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) power_timeout: Duration,
}

impl SledHealthArgs {
    pub fn config(&self) -> corral_controllers::sled_health::Config {
        corral_controllers::sled_health::Config {
            grace: self.sled_grace,
            storm: corral_controllers::sled_health::plan::StormGuard {
                fraction: self.storm_fraction,
                floor: self.storm_floor,
            },
            evacuation_rate: self.evacuation_rate,
            power_timeout: self.power_timeout,
        }
    }
}

/// What the controllers present to power controllers: the CA of the `corral certs` directory
/// `pki` and the controllers' identity in it.
pub fn power_tls(pki: &std::path::Path) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let identity = corral_client::tls::KeyPairFiles::in_dir(pki, "controllers");
    corral_client::tls::client_config(&pki.join("ca.crt"), Some(&identity))
        .context("the controllers' identity for power controllers")
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

pub async fn run_controllers(args: ControllersArgs) -> anyhow::Result<()> {
    let client = corral_client::connect(args.kubeconfig.as_deref()).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = corral_controllers::Config {
        sled_health: args.sled_health.config(),
        power_tls: args.pki.as_deref().map(power_tls).transpose()?,
        ..controllers_config(args.lease_duration, args.concurrency)
    };
    if let Some(point) = args.crash_at {
        corral_controllers::kit::faults::arm(point).map_err(anyhow::Error::msg)?;
    }
    let debug = match args.debug_listen {
        Some(listen) => {
            let (address, task) =
                crate::debug::serve(listen, config.board.clone(), shutdown.clone()).await?;
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
