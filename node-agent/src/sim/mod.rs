//! The simulator: everything that stands in for a real sled's hardware, behind the traits the
//! agent drives — the machine ([`SimHypervisor`], a [`Hypervisor`](crate::hypervisor::Hypervisor)),
//! its V2P table ([`SimV2pTable`], a [`V2pTable`](crate::v2p::table::V2pTable)), its power
//! controller ([`SledHandle`], a [`PowerController`](crate::power::PowerController)), and the
//! fault-injection API that reaches behind the control plane's back.
//!
//! # Layout
//! - `machine.rs` — the simulated machine: power, boots, VMMs, faults.
//! - `v2p_table.rs` — the machine's simulated V2P table.
//! - `power.rs` — a simulated sled (machine + agent process) and its power controller.
//! - `sled_machine.rs` — the machine under a sled: simulated, or QEMU processes (docs/qemu.md),
//!   and how each fault reaches it.
//! - `fault.rs` — the fault-injection HTTP API the sled's agent serves.
//! - `power_faults.rs` — the faults the power controller serves (a hang, a power controller
//!   that does not answer), because the sled cannot serve them itself.
//! - `control_path.rs` — the agent's API client as the simulator wires it: partition, hang.
//! - `switch.rs` — an on/off fault its victims can wait on.
//!
//! # Architecture invariant
//! The agent (every module outside `sim/`) never names the simulator; it knows only the
//! traits. The binary (`corral up`, `corral node-agent`, `corral power-sim`) and the tests wire
//! the simulator in. `corral/tests/architecture.rs` checks it.

pub mod census;
pub mod control_path;
pub mod fault;
pub mod machine;
pub mod power;
pub mod power_faults;
pub mod sled_machine;
pub mod switch;
pub mod v2p_table;

pub use machine::{
    DEFAULT_DIRTY_RATE, DEFAULT_MIGRATION_BANDWIDTH, SimHypervisor, SimTiming, UnknownVmm,
};
pub use power::{SimSled, SimSledConfig, SledError, SledHandle, StartMode};
pub use v2p_table::{SimV2pTable, V2pRow};

use tokio_util::sync::CancellationToken;

/// `corral node-agent` without the rest: runs one simulated sled (its machine resumed if it is
/// still on) until `shutdown`, then stops the agent and leaves the machine running.
pub async fn run(config: SimSledConfig, shutdown: CancellationToken) -> Result<(), SledError> {
    let sled = SimSled::start(config, StartMode::Resume).await?;
    shutdown.cancelled().await;
    sled.shutdown().await;
    Ok(())
}
