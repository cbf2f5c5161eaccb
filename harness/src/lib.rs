//! Real Corral processes for tests, e2e stories and benchmarks.
//!
//! - [`process`]: one child process (any program) with its log; it never outlives the test or
//!   benchmark that started it, even on a panic or a SIGKILL of its owner (`spawner.rs` keeps
//!   the careful part: the parent-death signal follows the spawning *thread*).
//! - [`apiserver`]: a `corral apiserver` process on a free port, ready when started.
//! - [`rack`] (feature `rack`, on by default): a whole rack as processes — the API server,
//!   leader-elected controllers, node-agents or a power-sim — started, broken and restarted
//!   piece by piece, ready once the controllers lead and every sled is Ready.
//! - [`wait`]: bounded waits that say what they waited for when they time out.
//!
//! **Architecture invariant:** the harness starts the `corral` *binary*; it never links the
//! store, the API server, the controllers or the node-agent, and speaks to a rack only through
//! kube, `corral-client` and `corral-crds`. Without the `rack` feature it depends on no Corral
//! crate at all, which lets `corral-store`'s test support start its etcd with it.

pub mod apiserver;
pub mod ports;
pub mod process;
#[cfg(feature = "rack")]
pub mod rack;
pub mod scratch;
mod spawner;
pub mod tls;
pub mod wait;

pub use apiserver::{Apiserver, ApiserverSpec, Store};
pub use process::{Process, ProcessError};
#[cfg(feature = "rack")]
pub use rack::{Rack, RackSpec, SledDoor, SledHost, Victim};
pub use scratch::Scratch;
pub use wait::{Unmet, WaitError, block_on, wait_for, wait_for_blocking};
