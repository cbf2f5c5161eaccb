//! `corralctl`: apply manifests, read and watch objects, and operate a Corral rack, all through
//! the Kubernetes API of the Corral API server (the same kubeconfig `kubectl` reads).
//!
//! One module per command group; [`cli`] holds the flags and dispatches to them. The binary
//! (`src/main.rs`) only parses flags, starts a Tokio runtime and prints the final error.
//!
//! - [`apply`] — server-side apply of manifests, with `--prune` of what a set no longer holds.
//! - [`get`] — lists and single objects as the server's Table, YAML, JSON or names; `-w`.
//! - [`describe`] — one object: metadata, spec, status, conditions and its Events.
//! - [`delete`] — by name, by label selector or by manifest; `--wait`.
//! - [`wait`] — until a condition holds or an object is gone, on a watch, bounded.
//! - [`lifecycle`] — `start`, `stop`, `reboot` of Instances and `cordon`/`uncordon` of Sleds.
//! - [`drain`] — `drain SLED` (and `--cancel`) and `migrate INSTANCE`: create the Drain or
//!   Migration and follow it to its final phase with a progress line.
//! - [`events`] — the Events table, `-w`.
//! - [`diff`] — where the rack differs from what was asked of it.
//! - [`audit`] — the API server's audit trail: who changed what, and when.
//!
//! Shared pieces: [`command`] (what every command returns and where it writes, and how
//! corralctl marks its writes), [`context`] (the client and the namespace), [`discovery`]
//! (which kinds the server serves, by every name a user may type), [`target`] (parsing
//! `KIND NAME` and `KIND/NAME` arguments), [`manifest`] (reading YAML/JSON documents with their
//! origin), [`table`] (text tables and the server's `meta.k8s.io/v1` Table), [`output`]
//! (YAML/JSON printing) and [`error`]. The commands use the shared pieces and [`cli`] uses the
//! commands; nothing uses the crate root or [`cli`] back (the root only re-exports).
//!
//! **Invariant:** talks to the API server only; never names the store.

pub mod apply;
pub mod audit;
pub mod cli;
pub mod command;
pub mod context;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod discovery;
pub mod drain;
pub mod error;
pub mod events;
pub mod fence;
pub mod get;
pub mod heartbeat;
pub mod lifecycle;
pub mod manifest;
pub mod output;
pub mod table;
pub mod target;
pub mod wait;

pub use command::{APPLIED_BY_ANNOTATION, FIELD_MANAGER, Outcome, Terminal};
pub use error::Error;
