//! The controller kit: what every Corral controller is made of, so that a controller module is
//! its watches, its observation, its pure plan and its domain actions, and nothing else.
//!
//! Every controller module reads the same way, in the same order:
//! 1. `controller` — the watches: [`Caches`] makes typed caches ([`Cache`]) with one readiness
//!    rule; [`Controller`] wires them as triggers of kube-runtime's `Controller`.
//! 2. `reconcile` — observe: read the caches (and live, where a cache's silence proves
//!    nothing), then call the pure `plan` (in the module's `plan.rs`, table-tested).
//! 3. `plan` — a [`Plan`] of [`Step`]s: the kit's own steps (finalizers, the status write,
//!    Events) and [`Step::Act`] with the controller's domain `Action` enum.
//! 4. `apply` — carry out one domain action through [`Effects`], the only way a controller
//!    changes the API; [`execute`] runs the whole plan.
//! 5. `cleanup` — [`Reconciler::cleanup`]: give back what `reconcile` held or reserved, once
//!    the plan ran or failed.
//! 6. `error_policy` — [`error_policy`]: a conflict is planned again at once, anything else
//!    after a second.
//!
//! Each reconcile's [`Outcome`] goes on the [`Board`] (`/debug/controllers`).
//!
//! The V2P controller (a coalescing worker keyed by VPC, not by object) and the reaper (a
//! periodic scan) do not run on kube-runtime's `Controller`, but use the same caches, plans,
//! executor, effects, error policy and board.
//!
//! # Guarantees
//! - **Ready before planning.** No reconcile plans until every cache its controller reads
//!   (besides the primary kind's) has listed once; until then it waits and looks again.
//! - **Never behind its own writes.** A reconcile never plans from a cached object older than
//!   the controller's own last write to it (the *expectations*: Corral's resourceVersions are
//!   one increasing integer, so "older" is exact; docs/rack.md, "Stale caches").
//! - **Conditional writes.** Status and finalizer writes are conditional on the
//!   resourceVersion they were planned from; a stale plan fails with a conflict and is made
//!   again from the fresher object.
//! - **Already done is success.** A create that finds its object, a delete or patch that finds
//!   it gone, succeed; a conflict does not.
//! - **Order.** A plan's steps run in order and stop at the first failure; Events are recorded
//!   only after every other step succeeded.
//! - **One outcome per reconcile**, typed, on the board.
//!
//! # Assumptions
//! - Only the leader runs controllers (`lib.rs`), so two reconciles of one object never run
//!   in two processes; kube-runtime runs at most one reconcile of an object at a time.
//! - Every step is idempotent and a reconcile may stop at any `.await` (leadership lost, the
//!   process killed): the next reconcile plans again from what was written.
//! - Reconcilers compute from current state only; which event woke them is not an input.
//!
//! # Caveats
//! - Readiness is "listed once", not "up to date": a cache may lag the API by a watch's
//!   latency. The expectations cover the controller's own writes; for others' writes,
//!   conditional writes turn lag into a conflict and a new plan.
//! - The fault hook ([`faults`]) exists only in test builds.

pub mod cache;
pub mod controller;
pub mod effects;
pub mod error;
pub mod execute;
pub mod expectations;
pub mod faults;
pub mod outcome;
pub mod plan;

pub use cache::{Cache, Caches, Readiness, Watch};
pub use controller::{Controller, Reconciled, Reconciler};
pub use effects::{Created, Effects};
pub use error::{Error, error_policy};
pub use execute::{Apply, StatusWrite, execute};
pub use outcome::{Board, Outcome, Wait};
pub use plan::{Event, Kind, NoAction, Plan, Step};
