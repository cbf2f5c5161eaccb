//! The `Hypervisor` trait: what the node-agent asks of whatever runs VMMs on a sled.
//!
//! The agent drives a hypervisor level-triggered: it inspects what runs, compares it with its
//! journal and the API, and issues one command per step. Commands *start* work and return;
//! they never wait for a guest to finish booting or stopping. Progress is observed through
//! [`Hypervisor::inspect`] / [`Hypervisor::list`] and announced through
//! [`Hypervisor::changes`].
//!
//! # Definitions
//! - A VMM *exists* on the machine if (and only if) `inspect` returns it: from `create` until
//!   `destroy`, or until it is killed behind the control plane's back (then it vanishes).
//! - A VMM has *ended* if (and only if) its state is [`VmmRunState::Exited`]: it no longer runs
//!   a guest but still exists (holding its resources) until it is destroyed, like a process
//!   that exited and waits to be reaped.
//!
//! # Guarantees a driver gives
//! - Every command is idempotent: `create` (and `create_receiving`) of an existing id, `stop` of
//!   a stopping or ended VMM, `pause` of a paused one, `resume` of a running one and `destroy`
//!   of a missing one succeed and change nothing more.
//! - A paused or receiving VMM runs no guest and stays so until `resume`; `stop` ends it at
//!   once (there is nothing to shut down).
//! - `changes()` carries the id of every VMM that ended or vanished *on its own* (guest crash,
//!   guest shutdown, killed). Transitions the agent asked for (boot, stop, reboot) are not
//!   announced; [`VmmInfo::settles_in`] says when to look again.
//! - A powered-off machine answers every call with [`HypervisorError::PoweredOff`], never with
//!   an empty list: "I cannot see" must not read as "nothing runs".
//!
//! # Not responsible for
//! Deciding what should run (the agent's `plan`), resource admission (the agent refuses a Vmm
//! that does not fit before it asks; a driver may still refuse with `NoCapacity`), and the
//! API objects.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use corral_crds::Resources;
use serde::{Deserialize, Serialize};

/// A VMM's id on the machine: the uid of the Vmm object it runs (or, for a VMM nobody
/// assigned, whatever id it was given).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VmmId(pub String);

impl VmmId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for VmmId {
    fn from(id: &str) -> VmmId {
        VmmId(id.to_string())
    }
}

/// The machine's boot id: a new one on every power-on. The agent bumps the sled epoch when it
/// changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootId(pub uuid::Uuid);

impl BootId {
    pub fn random() -> BootId {
        BootId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What to run: everything a driver needs to create a VMM, plus the names it is known by (a
/// driver keeps them as tags, so that `list` can say whose VMM it is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmmLaunch {
    pub id: VmmId,
    /// The Vmm's namespace.
    pub namespace: String,
    /// The Vmm's name.
    pub name: String,
    /// The Instance it is an incarnation of (same namespace).
    pub instance: String,
    pub resources: Resources,
    pub image: String,
    /// How many bytes a second the guest dirties from its boot (`corral.dev/dirty-rate`);
    /// `None`: the driver's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate: Option<u64>,
}

/// Why a VMM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// It stopped because it was asked to ([`Hypervisor::stop`]).
    Stopped,
    /// The guest shut itself down cleanly.
    GuestShutdown,
    /// The guest crashed.
    GuestCrashed,
}

/// What a VMM is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason")]
pub enum VmmRunState {
    /// Booting (after `create` or `reboot`).
    Starting,
    /// The guest runs.
    Running,
    /// Shutting down after `stop`.
    Stopping,
    /// Created to receive a live migration: holds its resources, runs no guest until resumed.
    Receiving,
    /// The guest is paused (the stop-and-copy round of a live migration) until resumed.
    Paused,
    /// No longer runs a guest; exists until destroyed.
    Exited(ExitReason),
}

/// One VMM as the machine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmmInfo {
    pub launch: VmmLaunch,
    #[serde(flatten)]
    pub state: VmmRunState,
    /// False when the VMM stopped answering: stop and reboot requests go unheeded; only
    /// `destroy` still works.
    pub responsive: bool,
    /// When the transition under way (boot, stop) is expected to end, if one is.
    #[serde(skip)]
    pub settles_in: Option<Duration>,
    /// How fast the guest dirties its memory, bytes per second.
    #[serde(default)]
    pub dirty_bytes_per_second: u64,
}

/// A transfer a driver carries itself ([`Hypervisor::send_guest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestTransfer {
    pub phase: TransferPhase,
    pub memory_bytes: u64,
    pub bytes_sent: u64,
    pub bytes_remaining: u64,
    pub dirty_bytes_per_second: u64,
    /// The pre-copy round under way (1 for the first pass over memory).
    pub round: u32,
    /// What the driver expects the pause to last, then (once completed) what it lasted.
    pub downtime_ms: u64,
    /// When the driver paused the guest for the last round, if it did and knows.
    pub paused_at: Option<jiff::Timestamp>,
}

/// Where a driver's transfer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferPhase {
    /// Copying while the guest runs.
    Copying,
    /// The guest is paused; the rest waits for [`Hypervisor::finish_sending`].
    AwaitingSwitchover,
    /// Sending the rest of the paused guest.
    Finishing,
    /// Every byte is on the target.
    Completed,
    /// It failed (or was cancelled): why. Before the pause the guest runs on.
    Failed(String),
}

/// Why a hypervisor call failed.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("the machine is powered off")]
    PoweredOff,
    #[error("no VMM {0} on the machine")]
    NotFound(VmmId),
    #[error("creating VMM {id}: needs {needed:?}, {free:?} free")]
    NoCapacity {
        id: VmmId,
        needed: Resources,
        free: Resources,
    },
    #[error("VMM {0} has ended and cannot be rebooted")]
    Ended(VmmId),
    #[error("starting VMM {id}: {why}")]
    Start { id: VmmId, why: String },
    #[error("VMM {id}'s monitor: {why}")]
    Monitor { id: VmmId, why: String },
    #[error("saving the machine state to {path}")]
    Persist {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the machine state from {path}")]
    Load {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A driver that runs VMMs on one machine. Object-safe: the agent holds an
/// `Arc<dyn Hypervisor>`.
#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// The id of the machine's current boot.
    async fn boot_id(&self) -> Result<BootId, HypervisorError>;

    /// Creates the VMM and starts booting it (`Starting`, then `Running`). An existing id is
    /// success and changes nothing.
    async fn create(&self, launch: &VmmLaunch) -> Result<(), HypervisorError>;

    /// Starts a graceful stop (`Stopping`, then `Exited(Stopped)`). A stopping or ended VMM
    /// is success; a missing one is [`HypervisorError::NotFound`].
    async fn stop(&self, id: &VmmId) -> Result<(), HypervisorError>;

    /// Removes the VMM at once, whatever it is doing, and frees its resources. A missing VMM
    /// is success.
    async fn destroy(&self, id: &VmmId) -> Result<(), HypervisorError>;

    /// Reboots the guest in place (`Starting`, then `Running`).
    async fn reboot(&self, id: &VmmId) -> Result<(), HypervisorError>;

    /// Creates the VMM to receive a live migration (`Receiving`): it holds its resources and
    /// runs no guest until [`Hypervisor::resume`]. An existing id is success.
    async fn create_receiving(&self, launch: &VmmLaunch) -> Result<(), HypervisorError>;

    /// Pauses a running guest (`Paused`). A paused VMM is success.
    async fn pause(&self, id: &VmmId) -> Result<(), HypervisorError>;

    /// Runs a paused or received guest (`Running`). A running VMM is success.
    async fn resume(&self, id: &VmmId) -> Result<(), HypervisorError>;

    /// The bandwidth of the machine's migration link, bytes per second.
    fn migration_bandwidth(&self) -> u64;

    /// The longest pause a live migration out of the machine plans for: pre-copy ends once
    /// the rest would take this long to send.
    fn downtime_budget(&self) -> Duration;

    /// What runs the VMMs, for operators (`Sled.status.hypervisor`): `sim`, `qemu (kvm)`, ….
    fn description(&self) -> String;

    /// A driver that moves guests itself (QEMU) makes the receiving VMM `id` listen for its
    /// guest and says where; `None` (the default): the agents carry the transfer themselves.
    async fn listen_for_guest(&self, _id: &VmmId) -> Result<Option<String>, HypervisorError> {
        Ok(None)
    }

    /// Starts sending the guest of `id` to `to` (a target's [`Hypervisor::listen_for_guest`])
    /// at most `bandwidth` bytes a second. The driver pauses the guest when what is left fits
    /// `downtime`, and waits there ([`GuestTransfer::AwaitingSwitchover`]) for
    /// [`Hypervisor::finish_sending`].
    async fn send_guest(
        &self,
        id: &VmmId,
        _to: &str,
        _bandwidth: u64,
        _downtime: Duration,
    ) -> Result<(), HypervisorError> {
        Err(HypervisorError::Monitor {
            id: id.clone(),
            why: "this driver does not move guests itself".into(),
        })
    }

    /// How the transfer of `id`'s guest is going.
    async fn guest_transfer(&self, id: &VmmId) -> Result<GuestTransfer, HypervisorError> {
        Err(HypervisorError::NotFound(id.clone()))
    }

    /// Returns once the transfer of `id`'s guest may have changed phase, or after `bound`:
    /// a driver that announces its steps (QEMU's `MIGRATION` events) wakes the follower at
    /// once; the default just waits `bound`.
    async fn transfer_changed(&self, _id: &VmmId, bound: Duration) {
        tokio::time::sleep(bound).await;
    }

    /// Sends the rest of a paused guest ([`GuestTransfer::AwaitingSwitchover`]).
    async fn finish_sending(&self, id: &VmmId) -> Result<(), HypervisorError> {
        Err(HypervisorError::NotFound(id.clone()))
    }

    /// Gives up sending `id`'s guest.
    async fn cancel_sending(&self, _id: &VmmId) -> Result<(), HypervisorError> {
        Ok(())
    }

    /// One VMM, if it exists.
    async fn inspect(&self, id: &VmmId) -> Result<Option<VmmInfo>, HypervisorError>;

    /// Every VMM that exists on the machine.
    async fn list(&self) -> Result<Vec<VmmInfo>, HypervisorError>;

    /// Ids of VMMs that ended or vanished on their own, as it happens. A receiver that lags
    /// must assume anything may have changed and look at everything.
    fn changes(&self) -> tokio::sync::broadcast::Receiver<VmmId>;
}
