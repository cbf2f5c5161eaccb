//! The lifecycle of the sled's Vmms: deciding what each one needs (`plan.rs`, pure, in the
//! vocabulary of `decision.rs`), making it so on the machine and in the API (`reconcile.rs`),
//! and finding what went wrong behind the agent's back (`scan.rs`).
//!
//! # Architecture invariant
//! Decisions are pure: `decision.rs` and `plan.rs` do no I/O and are table- and
//! property-tested; `reconcile.rs` only executes a plan, and `scan.rs` never writes a Vmm.
//!
//! # Not responsible for
//! The transfer of a live migration (`migration/`; its decisions are `migration/plan.rs`), the
//! Sled's status (`sled.rs`), and the V2P table (`v2p/`).

pub mod decision;
pub mod plan;
pub mod reconcile;
pub mod scan;
