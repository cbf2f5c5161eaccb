//! Corral's controllers: they watch the API and reconcile the rack toward it. One
//! `corral controllers` process (or `corral up`) runs them all, and only while it holds the
//! leader Lease `kube-system/corral-controllers`: two replicas never act at once, and a
//! survivor takes over within the Lease's duration when the leader dies
//! (`corral_client::lease` has the rules).
//!
//! - [`instance`]: the scheduler / instance controller (placement, Vmm lifecycle,
//!   `Instance.status`, restarts, reboot, delete, divergence on the Instance).
//! - [`migration`]: the migration controller (admission, limits, timeouts, progress; the
//!   instance controller decides each outcome, docs/migration.md).
//! - [`reaper`]: abandoned Vmms.
//! - [`drain`]: the drain controller (cordon, plan, move a sled's instances off with
//!   Migrations, `Drain.status`).
//! - [`sled_health`]: the sled-health controller (a verdict per sled from its Lease and its
//!   power controller; fencing; releasing a fenced sled's Vmms).
//! - [`scheduler`]: placement rules and the allocation ledger (pure, unit-tested).
//! - [`v2p`]: the V2P controller (`VpcRoutes` from where instances run).
//! - [`kit`]: what every controller is made of (caches, plans, effects, the executor, the
//!   error policy, outcomes on a [`kit::Board`], crash points for tests). Every controller
//!   module reads the same way: watches, observe, pure plan, apply, error policy.
//!
//! Not here: the node-agent (`node-agent/`), ownerReference garbage collection (the API
//! server's `gc.rs`).

pub mod drain;
pub mod instance;
pub mod kit;
pub mod migration;
pub mod reaper;
pub mod scheduler;
pub mod sled_health;
pub mod v2p;

use std::time::Duration;

use corral_client::lease::{self, LeaseConfig};
use tokio_util::sync::CancellationToken;

/// The leader-election Lease.
pub const LEADER_LEASE: (&str, &str) = ("kube-system", "corral-controllers");

/// Instance reconciles in flight at once, by default. A reconcile mostly waits on the API (a
/// placement is four calls in a row), so the reconciles in flight are the reconcile rate times
/// the API's latency: `corral bench rack` (200 instances/s, 20-100 ms a call on two shared
/// cores) saturated 64 (create→Running p99 9-56 s), and met its p99 target of 5 s at 256
/// (4.6 s) and with room at 512 (3.1 s).
pub const DEFAULT_CONCURRENCY: u16 = 512;

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Reconciles of the instance controller in flight at once.
    pub concurrency: u16,
    /// Leader election timing (`duration`, `renew_deadline`, `retry_period`).
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// This process's identity in the Lease.
    pub identity: String,
    /// Limits and timeouts of live migrations.
    pub migration: migration::Config,
    /// The grace, storm guard and evacuation rate of the sled-health controller.
    pub sled_health: sled_health::Config,
    /// What the sled-health controller presents to `https://` power controllers: the rack's
    /// CA and the controllers' identity (`None`: it reaches only `http://` ones).
    pub power_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Where every controller's outcomes go (`/debug/controllers`).
    pub board: kit::Board,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: DEFAULT_CONCURRENCY,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            identity: lease::identity("controllers"),
            migration: migration::Config::default(),
            sled_health: sled_health::Config::default(),
            power_tls: None,
            board: kit::Board::default(),
        }
    }
}

/// Runs every controller while this process leads, until `shutdown`. Losing the Lease stops
/// every controller (waiting for in-flight reconciles) before campaigning again.
pub async fn run(client: kube::Client, config: Config, shutdown: CancellationToken) {
    let lease_config = LeaseConfig {
        duration: config.lease_duration,
        renew_deadline: config.renew_deadline,
        retry_period: config.retry_period,
        ..LeaseConfig::new(LEADER_LEASE.0, LEADER_LEASE.1, &config.identity)
    };
    kit::outcome::describe_metrics();
    metrics::gauge!(kit::outcome::LEADER).set(0.0);
    loop {
        let Some(leadership) = lease::acquire(&client, &lease_config, &shutdown).await else {
            return;
        };
        tracing::info!(identity = %config.identity, "leading: starting controllers");
        metrics::gauge!(kit::outcome::LEADER).set(1.0);
        let lost = leadership.lost.clone();
        let board = &config.board;
        tokio::join!(
            instance::controller(
                client.clone(),
                config.concurrency,
                board.clone(),
                lost.clone()
            ),
            migration::controller(
                client.clone(),
                config.migration,
                board.clone(),
                lost.clone()
            ),
            reaper::run(client.clone(), board.clone(), lost.clone()),
            drain::controller(client.clone(), board.clone(), lost.clone()),
            v2p::controller(client.clone(), board.clone(), lost.clone()),
            sled_health::controller(
                client.clone(),
                (config.sled_health, config.power_tls.clone()),
                board.clone(),
                lost.clone()
            ),
        );
        metrics::gauge!(kit::outcome::LEADER).set(0.0);
        if shutdown.is_cancelled() {
            leadership.release().await;
            return;
        }
        tracing::warn!(identity = %config.identity, "lost the lease: controllers stopped");
    }
}
