//! Live migration on the agent's side (docs/migration.md, "Agent to agent" and "The pre-copy
//! model"): the decisions about a Vmm that is an end of a migration (`plan.rs`, pure), and the
//! transfer between two node-agents — the target agent asks the source agent for the guest
//! (`POST /migrations` on the source's `Sled.status.agentAddress`, `target.rs`), and the
//! source answers with a stream of newline-delimited JSON events (`protocol.rs`) while it runs
//! the pre-copy rounds over its sled's modelled link (`source.rs`, `link.rs`).
//!
//! # Layout
//! - `plan.rs` — what to do about a migrating Vmm; `vmm/plan.rs` hands it such a Vmm.
//! - `protocol.rs` — the request and the event stream between the agents.
//! - `source.rs`, `target.rs` — the two ends of a transfer.
//! - `progress.rs` — what a transfer task journals and reports.
//! - `transfers.rs` — the tasks of one agent run; `link.rs` — the link they share.
//! - `slot.rs` — where the migration API finds the running agent.
//!
//! Over TLS the two agents know each other: the source serves only the agent of the target
//! Vmm's sled, and the target talks only to a server presenting the source sled's identity
//! (`source.rs`, `target.rs`; docs/security.md, "The sleds' endpoints").
//!
//! # What it promises
//! - The source pauses the guest only for the stop-and-copy round, and journals `Ready` before
//!   it pauses: a restarted agent finds the guest paused (or pauses it) and waits for the
//!   verdict. Nothing here ever resumes a guest: only the plan does, on the Instance's verdict.
//! - With the journal write of `Ready` (under the same ledger lock) the source installs a
//!   forwarding entry to the target for each IP of the instance (`v2p/forward.rs`): the target
//!   can hold the whole guest only once they are on the machine.
//! - A transfer that breaks before the pause leaves the source guest running (`Running`,
//!   migration phase `Failed`/`TransferFailed`) and makes the target fail (the plan destroys
//!   its receiving VMM). A transfer that breaks after the pause changes nothing: the target
//!   may hold the whole guest, and only the Instance decides.
//! - Every transfer is a task of [`Transfers`], owned by the agent run and cancelled when it
//!   stops or when its Vmm is deleted (a target drops its connection; a source ends its stream
//!   with an `error` event).
//!
//! # Invariants
//! - A task writes a journal record only while the record is still the migration end it
//!   started from (same role, phase `Transferring`): a deletion or a verdict decided by the
//!   plan is never overwritten.
//! - The bytes of all outgoing transfers of a sled share its link: each chunk reserves its
//!   time after the previous reservation (see [`Link`]).
//!
//! # Assumptions
//! - Bytes are modelled, not copied; all timing is `tokio::time` (paused-time tests work).
//! - The Instance read for the checks is a GET, never the cache.
//!
//! # Not responsible for
//! Deciding the outcome (the instance controller's switch-or-abort), resuming or destroying
//! VMMs (`plan.rs`, through the reconcile), progress in `Migration.status` (the migration
//! controller copies it from `Vmm.status.migration`).

pub mod link;
pub mod plan;
pub mod progress;
pub mod protocol;
pub mod slot;
pub mod source;
pub mod target;
pub mod transfers;

pub use link::Link;
pub use progress::PROGRESS_INTERVAL;
pub use protocol::{CHUNK, TransferEvent, TransferRequest};
pub use slot::{AgentSlot, RunGuard};
pub use source::router;
pub use target::start_target;
pub use transfers::{CONNECT_TIMEOUT, Transfers};
