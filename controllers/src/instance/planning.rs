//! What every part of the instance controller's plan shares: its input ([`Observed`]), its
//! output ([`Plan`] of kit steps and [`Action`]s), the placement it may ask for
//! ([`PlaceRequest`]), and the [`Planner`] that builds a plan. `plan.rs` and `migrate.rs`
//! decide; neither depends on the other's internals.

use corral_crds::{
    ConditionStatus, Instance, InstanceConditionType as Cond, InstanceStatus, MigrateFrom,
    Migration, Reason, Sled, Vmm, condition,
};
use jiff::Timestamp;

use crate::kit::{self, Kind, Step};
use crate::scheduler::{Placement, Rejections};

/// One of the instance controller's own actions.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create this Vmm on `sled` with the sled's current epoch ("already exists" is success);
    /// a live-migration target names its source.
    CreateVmm {
        name: String,
        sled: String,
        migrate_from: Option<MigrateFrom>,
    },
    /// Delete a Vmm (the agent tears it down, then its finalizer goes; "already gone" is
    /// success).
    DeleteVmm { name: String },
    /// Pass a reboot request to the active Vmm.
    RebootVmm { name: String, request: String },
}

impl Kind for Action {
    fn kind(&self) -> &'static str {
        match self {
            Action::CreateVmm { .. } => "CreateVmm",
            Action::DeleteVmm { .. } => "DeleteVmm",
            Action::RebootVmm { .. } => "RebootVmm",
        }
    }
}

/// What to do, and the status that results (the finalizer is `corral.dev/instance-controller`).
pub type Plan = kit::Plan<InstanceStatus, Action>;

/// What a placement is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceRequest<'a> {
    /// The Vmm to place (its reservation's key).
    pub vmm: &'a str,
    /// A sled to use only when no other fits (where the instance just failed).
    pub avoid: Option<&'a str>,
    /// A sled never to use (a migration's source).
    pub exclude: Option<&'a str>,
    /// The only sled to consider (a migration's `targetSled`).
    pub only: Option<&'a str>,
}

impl<'a> PlaceRequest<'a> {
    pub fn new(vmm: &'a str) -> PlaceRequest<'a> {
        PlaceRequest {
            vmm,
            avoid: None,
            exclude: None,
            only: None,
        }
    }
}

/// Chooses (and reserves) a sled for a Vmm.
pub type Place<'a> = dyn FnMut(&PlaceRequest<'_>) -> Result<Placement, Rejections> + 'a;

/// Names a new active Vmm (its name, serial and placement) in the planned status and creates
/// it: the start every placement of an instance goes through (`plan.rs` lends it to
/// `restart.rs`).
pub(super) type StartPlaced = fn(&mut Planner<'_>, String, u64, Placement);

/// What the controller observes of one instance.
pub struct Observed<'a> {
    pub instance: &'a Instance,
    /// The Vmms whose `spec.instance` is this instance.
    pub vmms: &'a [std::sync::Arc<Vmm>],
    /// The active Vmm was created by this controller and has not appeared in its cache yet.
    pub active_in_flight: bool,
    /// VMMs that claim to be this instance but that no Vmm assigns (`Sled.status.unknownVmms`),
    /// as (sled, VMM id).
    pub unknown_vmms: Vec<(String, String)>,
    /// The Migrations whose `spec.instance` is this instance.
    pub migrations: &'a [std::sync::Arc<Migration>],
    /// The target Vmm was created by this controller and has not appeared in its cache yet.
    pub target_in_flight: bool,
    /// Every Sled, as cached (their epochs end Vmms; their health colours the conditions).
    pub sleds: &'a [std::sync::Arc<Sled>],
    pub now: Timestamp,
}

impl Observed<'_> {
    /// The Sled named `name`, if cached.
    pub fn sled(&self, name: &str) -> Option<&Sled> {
        self.sleds
            .iter()
            .find(|sled| sled.metadata.name.as_deref() == Some(name))
            .map(|sled| sled.as_ref())
    }
}

/// Builds one instance's [`Plan`]: what every part of the plan (`plan.rs`, `migrate.rs`)
/// works on.
pub(super) struct Planner<'a> {
    pub(super) observed: &'a Observed<'a>,
    pub(super) plan: Plan,
}

impl Planner<'_> {
    /// Sets a condition of the planned status.
    pub(super) fn set(
        &mut self,
        type_: Cond,
        status: ConditionStatus,
        reason: Reason,
        message: &str,
    ) {
        condition::set(
            &mut self.plan.status.conditions,
            type_,
            status,
            reason,
            message,
            self.observed.now,
        );
    }

    /// Writes the status first if it changed: the status always precedes the actions it names
    /// (a Vmm is named before it is created, and un-named before it is deleted).
    pub(super) fn finish(mut self, previous: &InstanceStatus) -> Plan {
        let plan = &mut self.plan;
        if plan.status != *previous && !plan.steps.contains(&Step::RemoveFinalizer) {
            plan.steps.insert(0, Step::WriteStatus);
        }
        // AddFinalizer goes first of all, so no Vmm exists before the finalizer that tears it
        // down.
        if let Some(i) = plan.steps.iter().position(|s| *s == Step::AddFinalizer) {
            let add = plan.steps.remove(i);
            plan.steps.insert(0, add);
        }
        self.plan
    }
}
