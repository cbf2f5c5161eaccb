//! Corral's node-agent: one per sled, it runs the VMMs the API assigns to the sled and reports
//! what really runs. `docs/rack.md` is its contract with the instance controller; DESIGN §5
//! says why it exists.
//!
//! # Entry points
//! - [`Agent`]: the agent of one sled over any machine ([`Hypervisor`]) and V2P table
//!   ([`V2pTable`]); [`Agent::run`] until shutdown.
//! - [`power::router`]: the power controllers ([`PowerController`]) of many sleds over HTTP.
//! - [`sim`]: the simulated sled — [`sim::SimSled::start`] gives a [`sim::SledHandle`] (its
//!   power controller); `corral up`, `corral node-agent` and `corral power-sim` start them.
//!
//! # Code map
//! Below everything that uses them:
//! - `context.rs` — the [`Context`](context::Context) one agent run shares, grouped (the sled,
//!   the API handles, the machine, the journal and its ledger, the transfers).
//! - `ledger.rs` — what the run knows in memory (records, seen VMMs, written statuses).
//! - `status.rs` — writing `Vmm.status` (conditional, never backwards).
//! - `journal.rs` — the local SQLite journal (the only module that names sqlx).
//! - `sled.rs` — `Sled` registration and the debounced `Sled.status` writer.
//! - `fence.rs` — how a run learns its sled was fenced (the [`FenceAlarm`](fence::FenceAlarm))
//!   and what it owes the rack then.
//! - `config.rs` — the agent's configuration and intervals; `error.rs` — error display and
//!   the error of an API call about a Vmm.
//! - `metrics.rs` — the agent's metrics (VMMs by state, heartbeat, migrations) and
//!   `/metrics`.
//! - `http.rs` — serving the sled's endpoints: TLS, the [`Caller`](http::Caller) of each
//!   request, and who may call what ([`http::authorize`]); docs/security.md, "The sleds'
//!   endpoints".
//!
//! The traits a driver implements:
//! - `hypervisor.rs` — [`Hypervisor`], what runs VMMs; `v2p/table.rs` — [`V2pTable`], the
//!   sled's V2P table; `power.rs` — [`PowerController`] and its HTTP API.
//!
//! The rooms:
//! - `agent.rs` — start-up (epoch, Sled registration), the tasks of a run, heartbeat, stop.
//! - `vmm/` — the lifecycle of Vmms: `decision.rs` (what a plan reads and decides), `plan.rs`
//!   (every decision about one Vmm, pure and table-tested), `reconcile.rs` (executes a plan),
//!   `scan.rs` (the periodic divergence scan).
//! - `migration/` — live migration: `plan.rs` (the decisions about an end of a migration),
//!   `source.rs` and `target.rs` (the transfer between agents over `protocol.rs`),
//!   `progress.rs`, `transfers.rs`, `link.rs`, `slot.rs`.
//! - `v2p/` — programs the V2P table from VpcRoutes (`plan.rs` decides) and acknowledges it.
//! - `sim/` — the simulator: the machine, its V2P table, simulated sleds and their power
//!   controllers, the fault-injection API.
//! - `qemu/` — the QEMU driver (docs/qemu.md): VMMs as QEMU processes running corral-guest
//!   (`guest/`, built by `build.rs`).
//!
//! # Architecture invariants
//! - Talks to the API server only through kube (never the store); the journal is local state
//!   of the sled, not a second source of truth about the API.
//! - Outside `sim/`, nothing names the simulator: the agent knows only the traits
//!   (`corral/tests/architecture.rs` checks it).
//! - No module reaches itself through others: the shared modules above depend on no room.
//! - Never adds or removes a V2P mapping on its own: the table follows VpcRoutes (`v2p/`).
//! - Writes only `Vmm.status`, its own `Sled.status` fields, its Lease, Events, and its own
//!   finalizer.

pub mod agent;
pub mod config;
pub mod context;
pub mod error;
pub mod fence;
pub mod http;
pub mod hypervisor;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod migration;
pub mod power;
pub mod qemu;
pub mod sim;
pub mod sled;
pub mod status;
pub mod v2p;
pub mod vmm;

pub use agent::{AGENT_VERSION, Agent, AgentError};
pub use config::{AgentConfig, HeartbeatSwitch, Intervals};
pub use hypervisor::{
    BootId, ExitReason, Hypervisor, HypervisorError, VmmId, VmmInfo, VmmLaunch, VmmRunState,
};
pub use power::{
    PowerController, PowerControllers, PowerError, PowerState, PowerStatus, power_controller_url,
};
pub use v2p::table::{V2pTable, V2pTableError};
