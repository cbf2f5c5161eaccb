//! Corral's node-agent: one per sled, it runs the VMMs the API assigns to the sled and reports
//! what really runs. `docs/rack.md` is its contract with the instance controller; DESIGN §5
//! says why it exists.
//!
//! # Entry points
//! - [`run`]: `corral node-agent` — one simulated sled (machine + agent) until shutdown,
//!   resuming a machine that is still on (an agent restart keeps the VMMs).
//! - [`SimSled::start`] → [`SledHandle`]: a simulated sled with its power controller
//!   (`power_off`, `power_on`, `shutdown`); `corral up` starts many with
//!   [`StartMode::ColdStart`] and serves [`power::router`] over a [`PowerControllers`] set
//!   (`corral power-sim` is the same without the rest of the rack).
//! - [`Agent`]: the agent alone over any [`Hypervisor`] (room for a real driver).
//!
//! # Code map
//! - `agent.rs` — configuration, start-up (epoch, Sled registration), the tasks, heartbeat.
//! - `plan.rs` — every decision about one Vmm, pure and table-tested; `plan_migration.rs` —
//!   those about an end of a live migration.
//! - `migration/` — the live-migration transfer between agents: `source.rs` serves
//!   `POST /migrations` and runs the pre-copy rounds over the sled's modelled link,
//!   `target.rs` asks for the guest and follows the stream.
//! - `reconcile.rs` — executes a plan: hypervisor, journal, `Vmm.status`, finalizer.
//! - `scan.rs` — the periodic divergence scan (unknown VMMs, lost announcements).
//! - `sled.rs` — `Sled` registration and the debounced `Sled.status` writer.
//! - `journal.rs` — the local SQLite journal (the only module that names sqlx).
//! - `hypervisor.rs` — the `Hypervisor` trait; `sim.rs` — the simulated machine.
//! - `v2p.rs` — programs the V2P table from VpcRoutes and acknowledges it; `v2p_table.rs` —
//!   the simulated table (the machine's, like `sim.rs`).
//! - `fault.rs` — the fault-injection HTTP API; `power.rs` — simulated sleds and their power
//!   controllers, in-process and over HTTP.
//!
//! # Architecture invariants
//! - Talks to the API server only through kube (never the store); the journal is local state
//!   of the sled, not a second source of truth about the API.
//! - Never adds or removes a V2P mapping on its own: the table follows VpcRoutes (`v2p.rs`).
//! - Writes only `Vmm.status`, its own `Sled.status` fields, its Lease, Events, and its own
//!   finalizer.

pub mod agent;
pub mod fault;
pub mod hypervisor;
pub mod journal;
pub mod migration;
pub mod plan;
mod plan_migration;
pub mod power;
pub mod reconcile;
pub mod scan;
pub mod sim;
pub mod sled;
pub mod v2p;
pub mod v2p_table;

pub use agent::{AGENT_VERSION, Agent, AgentConfig, AgentError, HeartbeatSwitch, Intervals};
pub use hypervisor::{
    BootId, ExitReason, Hypervisor, HypervisorError, VmmId, VmmInfo, VmmLaunch, VmmRunState,
};
pub use power::{
    PowerControllers, PowerStatus, SimSled, SledError, SledHandle, StartMode, power_controller_url,
};
pub use sim::{
    DEFAULT_DIRTY_RATE, DEFAULT_MIGRATION_BANDWIDTH, PowerState, SimHypervisor, SimTiming,
    UnknownVmm,
};
pub use v2p_table::{SimV2pTable, V2pRow};

use tokio_util::sync::CancellationToken;

/// `corral node-agent`: runs one simulated sled (its machine resumed if it is still on) until
/// `shutdown`, then stops the agent and leaves the machine running.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), SledError> {
    let sled = SimSled::start(config, StartMode::Resume).await?;
    shutdown.cancelled().await;
    sled.shutdown().await;
    Ok(())
}
