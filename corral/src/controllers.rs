//! `corral controllers`: the controllers' flags, and their Lease timing (also what `corral up`
//! runs).

use std::path::PathBuf;
use std::time::Duration;

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
    /// Fault injection for tests: the process aborts right after the migration controller
    /// writes this phase, as a crash at that step would.
    #[arg(long, hide = true)]
    pub(crate) crash_at_migration_phase: Option<corral_crds::MigrationPhase>,
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
    let mut config = controllers_config(args.lease_duration, args.concurrency);
    config.migration.crash_at = args.crash_at_migration_phase;
    tracing::info!(identity = %config.identity, "controllers: campaigning for the leader lease");
    let run = tokio::spawn(corral_controllers::run(client, config, shutdown.clone()));
    shutdown_signal().await;
    shutdown.cancel();
    run.await?;
    Ok(())
}
