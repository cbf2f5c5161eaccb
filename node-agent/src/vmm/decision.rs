//! The vocabulary of the node-agent's decisions about one Vmm: what a plan reads
//! ([`PlanInput`], [`VmmView`], [`MigrationInput`]), what it decides ([`Plan`],
//! [`MachineAction`], [`PlannedEvent`]), and the one way a decision becomes the next journal
//! record (`Decision`, `record`). The decisions themselves are `vmm/plan.rs` (the
//! lifecycle) and `migration/plan.rs` (the ends of a live migration); both speak this.
//!
//! # Invariants
//! - A record made by `record` never goes backwards ([`may_follow`]), and its
//!   `stateGeneration` is above both the previous record's and the API's.
//!
//! # Not responsible for
//! Deciding anything, and any I/O.

use std::time::Duration;

use corral_client::events::EventType;
use corral_crds::{MigrateFrom, Reason, Resources, VMM_FINALIZER, Vmm, VmmState, VmmStatus};
use jiff::Timestamp;
use kube::{Resource, ResourceExt};

use crate::hypervisor::{VmmId, VmmInfo, VmmRunState};
use crate::journal::{MigrationRecord, VmmRecord};

/// What the plan needs of a Vmm object.
#[derive(Clone, Debug, PartialEq)]
pub struct VmmView {
    pub uid: VmmId,
    pub namespace: String,
    pub name: String,
    pub instance: String,
    pub image: String,
    pub sled_epoch: u64,
    pub resources: Resources,
    pub reboot_request: Option<String>,
    /// For a live-migration target: where the guest comes from.
    pub migrate_from: Option<MigrateFrom>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The node-agent's finalizer is still on.
    pub has_finalizer: bool,
    /// The state the API holds (the freshest the agent knows of).
    pub reported_state: Option<VmmState>,
    /// The `stateGeneration` the API holds.
    pub reported_generation: u64,
}

impl VmmView {
    /// What the plan needs of `vmm` (whose uid is `uid`), with `reported` the freshest status
    /// the agent knows the API holds.
    pub fn new(vmm: &Vmm, uid: &VmmId, reported: &VmmStatus) -> VmmView {
        VmmView {
            uid: uid.clone(),
            namespace: vmm.namespace().unwrap_or_default(),
            name: vmm.name_any(),
            instance: vmm.spec.instance.clone(),
            image: vmm.spec.image.clone(),
            sled_epoch: vmm.spec.sled_epoch,
            resources: vmm.spec.resources,
            reboot_request: vmm.spec.reboot_request.clone(),
            migrate_from: vmm.spec.migrate_from.clone(),
            deleting: vmm.meta().deletion_timestamp.is_some(),
            has_finalizer: vmm.finalizers().iter().any(|f| f == VMM_FINALIZER),
            reported_state: reported.state,
            reported_generation: reported.state_generation,
        }
    }
}

/// What the Instance says, read with a GET.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceView {
    pub active_vmm: Option<String>,
    pub target_vmm: Option<String>,
}

/// What the plan of a migrating Vmm needs besides the Vmm, its record and the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationInput {
    /// A transfer task of this agent run works for the Vmm.
    pub transfer_running: bool,
    /// The Instance, when the record waits for a verdict (`None`: not read, or gone).
    pub instance: Option<InstanceView>,
}

/// Everything one decision depends on.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub vmm: &'a VmmView,
    pub record: Option<&'a VmmRecord>,
    pub machine: Option<&'a VmmInfo>,
    /// This agent run has seen the VMM on the machine.
    pub seen_this_run: bool,
    /// The sled's current epoch.
    pub epoch: u64,
    /// Capacity not held by accepted Vmms.
    pub free: Resources,
    pub now: Timestamp,
    /// How long a graceful stop may take before the VMM is destroyed anyway.
    pub stop_timeout: Duration,
    /// The transfer task and the Instance's verdict, for a Vmm that is an end of a migration.
    pub migration: MigrationInput,
}

/// A command for the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineAction {
    Create,
    Stop,
    Destroy,
    Reboot,
    /// Create the VMM to receive a live migration (no guest runs).
    CreateReceiving,
    Pause,
    Resume,
}

/// An Event to record about the Vmm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub type_: EventType,
    pub reason: Reason,
    pub message: String,
}

/// What to do, in this order: the machine action, the journal record, the status report, the
/// events, the finalizer, forgetting the record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub machine: Option<MachineAction>,
    /// The next journal record (its generation already bumped).
    pub record: Option<VmmRecord>,
    /// Write `Vmm.status` from the (new or current) record: the API is behind the journal.
    pub report: bool,
    pub events: Vec<PlannedEvent>,
    pub remove_finalizer: bool,
    /// Delete the journal record (after the finalizer is gone).
    pub forget: bool,
    /// Look again after this long (a transition under way); `None`: wait for a change.
    pub requeue: Option<Duration>,
    /// Start the target's transfer task (after the machine action and the record).
    pub start_transfer: bool,
    /// Cancel the transfer task of this Vmm, if one runs (its Vmm is being deleted).
    pub cancel_transfer: bool,
}

impl Plan {
    /// Whether the plan does nothing but maybe wait.
    pub fn is_noop(&self) -> bool {
        self.machine.is_none()
            && self.record.is_none()
            && !self.report
            && self.events.is_empty()
            && !self.remove_finalizer
            && !self.forget
            && !self.start_transfer
            && !self.cancel_transfer
    }
}

/// How far along its life a state is; the journal only moves forward.
fn rank(state: VmmState) -> u8 {
    match state {
        VmmState::Creating => 0,
        VmmState::Starting => 1,
        VmmState::Running | VmmState::Migrating => 2,
        VmmState::Stopping => 3,
        VmmState::Stopped | VmmState::Failed => 4,
        VmmState::Destroyed => 5,
    }
}

/// Whether the journal may move from `from` to `to`: forward only, except that a reboot takes
/// a running VMM back to `Starting`, a migration ends where it began (`Running`), a running or
/// migrating VMM may be reported again in the same state (a new dirty rate, the next phase of
/// a migration), and anything not yet destroyed may be destroyed.
pub fn may_follow(from: VmmState, to: VmmState) -> bool {
    match (from, to) {
        (VmmState::Destroyed, _) => false,
        (_, VmmState::Destroyed) => true,
        (VmmState::Running | VmmState::Migrating, VmmState::Starting)
        | (VmmState::Running, VmmState::Migrating)
        | (VmmState::Migrating, VmmState::Running)
        | (VmmState::Running, VmmState::Running)
        | (VmmState::Migrating, VmmState::Migrating) => true,
        (from, to) if from.is_final() => from == to,
        (from, to) => rank(to) > rank(from),
    }
}

/// A decided status, before it becomes a record.
pub(crate) struct Decision {
    pub(crate) state: VmmState,
    pub(crate) reason: Option<Reason>,
    pub(crate) message: String,
    pub(crate) diverged: bool,
    pub(crate) handled_reboot_request: Option<String>,
    pub(crate) booted_at: Option<Timestamp>,
    pub(crate) holds: bool,
    /// The migration end; `None` keeps the previous record's.
    pub(crate) migration: Option<MigrationRecord>,
}

impl Decision {
    pub(crate) fn new(state: VmmState, reason: Reason, message: impl Into<String>) -> Decision {
        Decision {
            state,
            reason: Some(reason),
            message: message.into(),
            diverged: false,
            handled_reboot_request: None,
            booted_at: None,
            holds: true,
            migration: None,
        }
    }

    /// The same decision, carrying what the previous record knew.
    fn following(mut self, previous: &VmmRecord) -> Decision {
        self.diverged |= previous.diverged;
        if self.handled_reboot_request.is_none() {
            self.handled_reboot_request = previous.handled_reboot_request.clone();
        }
        if self.booted_at.is_none() {
            self.booted_at = previous.booted_at;
        }
        if self.migration.is_none() {
            self.migration = previous.migration.clone();
        }
        self
    }
}

/// The record that follows `previous` (or the first one) with `decision`.
pub(crate) fn record(
    input: &PlanInput,
    previous: Option<&VmmRecord>,
    decision: Decision,
) -> VmmRecord {
    let vmm = input.vmm;
    let decision = match previous {
        Some(previous) => {
            debug_assert!(
                may_follow(previous.state, decision.state),
                "{:?} after {:?}",
                decision.state,
                previous.state
            );
            decision.following(previous)
        }
        None => decision,
    };
    let generation = previous
        .map_or(0, |p| p.state_generation)
        .max(vmm.reported_generation)
        + 1;
    VmmRecord {
        uid: vmm.uid.clone(),
        namespace: vmm.namespace.clone(),
        name: vmm.name.clone(),
        instance: vmm.instance.clone(),
        image: vmm.image.clone(),
        resources: vmm.resources,
        holds: decision.holds,
        state: decision.state,
        reason: decision.reason,
        message: decision.message,
        state_generation: generation,
        diverged: decision.diverged,
        handled_reboot_request: decision.handled_reboot_request,
        booted_at: decision.booted_at,
        state_since: match previous {
            Some(p) if p.state == decision.state => p.state_since,
            _ => input.now,
        },
        migration: decision.migration,
        dirty_bytes_per_second: input
            .machine
            .filter(|m| matches!(m.state, VmmRunState::Running | VmmRunState::Paused))
            .map(|m| m.dirty_bytes_per_second)
            .or(previous.map(|p| p.dirty_bytes_per_second))
            .unwrap_or(0),
    }
}

pub(crate) fn warning(reason: Reason, message: impl Into<String>) -> PlannedEvent {
    PlannedEvent {
        type_: EventType::Warning,
        reason,
        message: message.into(),
    }
}
