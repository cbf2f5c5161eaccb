//! The instance controller's decisions, as a pure function of what it observes.
//!
//! [`plan`] takes an Instance, the Vmms that name it, whether the active Vmm's creation is in
//! flight, a placement function and the time, and returns the [`Plan`]: the new status and the
//! ordered actions that make the rack match it. No I/O happens here; `instance.rs` executes the
//! plan in order and stops at the first failure, so a partly executed plan is simply re-planned
//! from the new state.
//!
//! # Invariants
//! - The status naming a new active Vmm is written before the Vmm is created
//!   ([`Action::WriteStatus`] precedes [`Action::CreateVmm`]): a Vmm is never unnamed on its way
//!   up (docs/rack.md, "name first").
//! - A Vmm the status names is deleted only when the instance should stop or is being
//!   deleted, or after it ended on its own (then it is first un-named).
//! - `plan(x)` applied, then planned again on the result, yields no further action (the
//!   controller is idempotent; see the tests).

use std::time::Duration;

use corral_crds::{
    ConditionStatus, Instance, InstanceConditionType as Cond, InstanceExit, InstanceState,
    InstanceStatus, MigrateFrom, Migration, Reason, RunStrategy, Vmm, VmmConditionType, VmmState,
    condition,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::scheduler::{Placement, Rejections};

/// The first restart backoff; it doubles with each failure the instance itself caused.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest restart backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A guest that runs this long resets the failure count that sets the backoff.
pub const STABLE_RUN: Duration = Duration::from_secs(60);
/// How soon an instance nothing can place is tried again.
pub const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(2);
/// While a sled reports an unknown VMM claiming the instance, it is looked at this often.
pub const UNKNOWN_VMM_RECHECK: Duration = Duration::from_secs(1);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Add the instance controller's finalizer to the Instance.
    AddFinalizer,
    /// Write the plan's status (conditional on the Instance's resourceVersion).
    WriteStatus,
    /// Create this Vmm on `sled` with the sled's current epoch ("already exists" is success);
    /// a live-migration target names its source.
    CreateVmm {
        name: String,
        sled: String,
        migrate_from: Option<MigrateFrom>,
    },
    /// Delete a Vmm (the agent tears it down, then its finalizer goes).
    DeleteVmm { name: String },
    /// Pass a reboot request to the active Vmm.
    RebootVmm { name: String, request: String },
    /// Remove the instance controller's finalizer: every Vmm is gone.
    RemoveFinalizer,
    /// Record an Event about the Instance.
    Event {
        severity: Severity,
        reason: Reason,
        message: String,
    },
}

/// What to do, and the status that results.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: InstanceStatus,
    pub actions: Vec<Action>,
    /// Look again after this long even if nothing changes (backoff, unschedulable).
    pub requeue: Option<Duration>,
}

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
    pub now: Timestamp,
}

/// The backoff before the next restart after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}

/// Whether a VMM ending for `reason` is the instance's own doing (it counts towards backoff).
fn instance_caused(reason: Reason) -> bool {
    matches!(reason, Reason::GuestCrashed)
}

/// Whether a reason reports divergence (what runs differs from what was assigned).
fn is_divergence(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::VmmKilled | Reason::VmmMissing | Reason::UnknownVmm
    )
}

pub(super) struct Planner<'a> {
    pub(super) observed: &'a Observed<'a>,
    pub(super) status: InstanceStatus,
    pub(super) actions: Vec<Action>,
    pub(super) requeue: Option<Duration>,
}

impl Planner<'_> {
    pub(super) fn event(&mut self, severity: Severity, reason: Reason, message: impl Into<String>) {
        self.actions.push(Action::Event {
            severity,
            reason,
            message: message.into(),
        });
    }

    pub(super) fn set(
        &mut self,
        type_: Cond,
        status: ConditionStatus,
        reason: Reason,
        message: &str,
    ) {
        condition::set(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            self.observed.now,
        );
    }

    pub(super) fn requeue_within(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}

/// Computes the plan for one instance. `place` chooses (and reserves) a sled for a Vmm name,
/// given a sled to avoid.
pub fn plan(observed: &Observed<'_>, place: &mut Place<'_>) -> Plan {
    let instance = observed.instance;
    let previous = instance.status.clone().unwrap_or_default();
    let mut planner = Planner {
        observed,
        status: previous.clone(),
        actions: Vec::new(),
        requeue: None,
    };
    planner.status.observed_generation = instance.metadata.generation.unwrap_or(0);
    let has_finalizer = instance
        .finalizers()
        .iter()
        .any(|f| f == corral_crds::INSTANCE_FINALIZER);

    if instance.metadata.deletion_timestamp.is_some() {
        plan_deletion(&mut planner, has_finalizer);
        return planner.finish(&previous);
    }
    if !has_finalizer {
        planner.actions.push(Action::AddFinalizer);
    }
    plan_active(&mut planner);
    super::migrate::plan_migration(&mut planner, place);
    detect_divergence(&mut planner);
    if planner.status.active_vmm.is_none() {
        plan_start(&mut planner, place);
    }
    repair_divergence(&mut planner);
    plan_abandoned(&mut planner);
    planner.finish(&previous)
}

impl Planner<'_> {
    /// Writes the status first if it changed: the status always precedes the actions it names
    /// (a Vmm is named before it is created, and un-named before it is deleted).
    fn finish(mut self, previous: &InstanceStatus) -> Plan {
        if self.status != *previous && !self.actions.contains(&Action::RemoveFinalizer) {
            self.actions.insert(0, Action::WriteStatus);
        }
        // AddFinalizer goes first of all, so no Vmm exists before the finalizer that tears it
        // down.
        if let Some(i) = self.actions.iter().position(|a| *a == Action::AddFinalizer) {
            let add = self.actions.remove(i);
            self.actions.insert(0, add);
        }
        Plan {
            status: self.status,
            actions: self.actions,
            requeue: self.requeue,
        }
    }
}

fn plan_deletion(planner: &mut Planner<'_>, has_finalizer: bool) {
    let vmms = planner.observed.vmms;
    for vmm in vmms {
        if vmm.metadata.deletion_timestamp.is_none() {
            planner.actions.push(Action::DeleteVmm {
                name: vmm.name_any(),
            });
        }
    }
    if vmms.is_empty() {
        if has_finalizer {
            planner.actions.push(Action::RemoveFinalizer);
        }
    } else {
        planner.status.state = Some(InstanceState::Stopping);
        planner.set(
            Cond::Running,
            ConditionStatus::False,
            Reason::Deleting,
            "the instance is being deleted; its VMMs are torn down first",
        );
    }
}

/// Follows the active Vmm: derive the state, notice its end, stop it if it should not run.
fn plan_active(planner: &mut Planner<'_>) {
    let observed = planner.observed;
    let Some(name) = planner.status.active_vmm.clone() else {
        return;
    };
    let active = observed.vmms.iter().find(|v| v.name_any() == name);
    let should_run = observed.instance.spec.should_run(&planner.status);
    let Some(vmm) = active else {
        // Placement sets `Running` to `VmmPending`, and only a VMM seen booting changes it.
        let never_seen = condition::find(&planner.status.conditions, Cond::Running)
            .is_none_or(|c| c.reason == Reason::VmmPending);
        // This controller deleted it (a stop) and it is gone as asked, even if the instance
        // was started again meanwhile: an orderly end, not a missing VMM.
        let stopped_as_asked = planner.status.state == Some(InstanceState::Stopping);
        if !should_run || stopped_as_asked {
            // Forget it; a start places a new one. (Not seen running under this name: the
            // reaper removes a Vmm created after all.)
            forget_active(planner);
        } else if never_seen {
            if !observed.active_in_flight {
                // The status names it but the Vmm was never created (the controller stopped
                // between the two writes): create it now, on the sled the status names.
                if let Some(sled) = planner.status.sled.clone() {
                    planner.actions.push(Action::CreateVmm {
                        name: name.clone(),
                        sled,
                        migrate_from: None,
                    });
                }
            }
        } else {
            // It existed (we derived a state from it) and is gone without being asked to go.
            record_exit(planner, Reason::VmmMissing, &name);
        }
        return;
    };
    let vmm_status = vmm.status.clone().unwrap_or_default();
    let vmm_state = vmm_status.state;
    if vmm.metadata.deletion_timestamp.is_some() {
        planner.status.state = Some(InstanceState::Stopping);
        planner.set(
            Cond::Running,
            ConditionStatus::False,
            Reason::ShuttingDown,
            &format!("VMM {name} is being torn down"),
        );
        return;
    }
    if let Some(state) = vmm_state.filter(|s| s.is_final()) {
        let reason = vmm_status.reason.unwrap_or(match state {
            VmmState::Stopped => Reason::GuestShutdown,
            _ => Reason::GuestCrashed,
        });
        record_exit(planner, reason, &name);
        planner.actions.push(Action::DeleteVmm { name });
        return;
    }
    if !should_run {
        planner
            .actions
            .push(Action::DeleteVmm { name: name.clone() });
        planner.status.state = Some(InstanceState::Stopping);
        planner.set(
            Cond::Running,
            ConditionStatus::False,
            Reason::Halted,
            "runStrategy is Halted: stopping",
        );
        planner.event(
            Severity::Normal,
            Reason::Halted,
            format!("stopping VMM {name}"),
        );
        return;
    }
    let (state, running, reason) = match vmm_state {
        None | Some(VmmState::Creating) => (InstanceState::Creating, false, Reason::VmmPending),
        Some(VmmState::Starting) => (InstanceState::Starting, false, Reason::Booting),
        Some(VmmState::Running) => (InstanceState::Running, true, Reason::VmmRunning),
        Some(VmmState::Stopping) => (InstanceState::Stopping, false, Reason::ShuttingDown),
        Some(VmmState::Migrating) => (InstanceState::Migrating, true, Reason::VmmRunning),
        Some(VmmState::Stopped | VmmState::Failed | VmmState::Destroyed) => {
            unreachable!("final states are handled above")
        }
    };
    // On its way back after a divergence, the instance is Repairing until it runs.
    let diverged = condition::is_true(&planner.status.conditions, Cond::Diverged);
    let state = match state {
        InstanceState::Creating | InstanceState::Starting if diverged => InstanceState::Repairing,
        other => other,
    };
    planner.status.state = Some(state);
    let sled = vmm.spec.sled.clone();
    let message = match state {
        InstanceState::Running => format!("VMM {name} runs on {sled}"),
        InstanceState::Starting => format!("VMM {name} boots on {sled}"),
        // Placement's own words: the Vmm showing up must not cost another status write.
        InstanceState::Creating => format!("VMM {name} is being created on {sled}"),
        _ => format!("VMM {name} on {sled}"),
    };
    planner.set(
        Cond::Running,
        if running {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason,
        &message,
    );
    if running {
        planner.status.backoff_until = None;
        planner.set(
            Cond::RestartBackoff,
            ConditionStatus::False,
            Reason::VmmRunning,
            "",
        );
        // A guest that stays up for STABLE_RUN has stopped crash-looping.
        if planner.status.consecutive_failures > 0 {
            let up = vmm_status
                .booted_at
                .as_ref()
                .map(|t| observed.now.duration_since(t.0))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            if up >= STABLE_RUN {
                planner.status.consecutive_failures = 0;
            } else {
                planner.requeue_within(STABLE_RUN - up);
            }
        }
    }
    // Reboot in place.
    if let Some(request) = observed.instance.spec.reboot_request.clone()
        && planner.status.handled_reboot_request.as_ref() != Some(&request)
        && state == InstanceState::Running
    {
        planner.status.handled_reboot_request = Some(request.clone());
        planner.actions.push(Action::RebootVmm {
            name: name.clone(),
            request,
        });
        planner.event(
            Severity::Normal,
            Reason::Rebooting,
            format!("rebooting the guest in VMM {name}"),
        );
    }
}

pub(super) fn forget_active(planner: &mut Planner<'_>) {
    planner.status.active_vmm = None;
    planner.status.sled = None;
}

/// The active VMM ended on its own: remember how, un-name it, set up the backoff.
fn record_exit(planner: &mut Planner<'_>, reason: Reason, name: &str) {
    let now = planner.observed.now;
    planner.status.last_exit = Some(InstanceExit {
        reason,
        vmm: name.to_string(),
        sled: planner.status.sled.clone(),
        at: Time(now),
    });
    if instance_caused(reason) {
        planner.status.consecutive_failures += 1;
        let wait = backoff(planner.status.consecutive_failures);
        planner.status.backoff_until = now
            .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
            .ok()
            .map(Time);
    } else {
        planner.status.backoff_until = None;
    }
    forget_active(planner);
    let severity = if reason == Reason::GuestShutdown {
        Severity::Normal
    } else {
        Severity::Warning
    };
    planner.event(severity, reason, format!("VMM {name} ended: {reason}"));
}

/// No active Vmm: place and start one if the instance should run.
fn plan_start(planner: &mut Planner<'_>, place: &mut Place<'_>) {
    let observed = planner.observed;
    let instance = observed.instance;
    if !instance.spec.should_run(&planner.status) {
        let failed = planner
            .status
            .last_exit
            .as_ref()
            .is_some_and(|exit| exit.reason != Reason::GuestShutdown)
            && instance.spec.run_strategy != RunStrategy::Halted;
        planner.status.state = Some(if failed {
            InstanceState::Failed
        } else {
            InstanceState::Stopped
        });
        let (reason, message) = match &planner.status.last_exit {
            Some(exit) if instance.spec.run_strategy != RunStrategy::Halted => (
                exit.reason,
                format!(
                    "VMM {} ended ({}); runStrategy {} does not restart it",
                    exit.vmm, exit.reason, instance.spec.run_strategy
                ),
            ),
            _ => (Reason::Halted, "runStrategy is Halted".to_string()),
        };
        planner.set(Cond::Running, ConditionStatus::False, reason, &message);
        planner.set(Cond::RestartBackoff, ConditionStatus::False, reason, "");
        return;
    }
    if let Some(until) = planner.status.backoff_until.clone()
        && until.0 > observed.now
    {
        let wait = until.0.duration_since(observed.now);
        planner.status.state = Some(InstanceState::Repairing);
        planner.set(
            Cond::RestartBackoff,
            ConditionStatus::True,
            Reason::BackingOff,
            &format!(
                "restart after {} failures in a row waits until {}",
                planner.status.consecutive_failures, until.0
            ),
        );
        planner.requeue_within(Duration::try_from(wait).unwrap_or(BACKOFF_BASE));
        return;
    }
    let serial = planner.status.vmm_serial + 1;
    let name = format!("{}-v{serial}", instance.name_any());
    let avoid = planner
        .status
        .last_exit
        .as_ref()
        .filter(|exit| exit.reason != Reason::GuestShutdown)
        .and_then(|exit| exit.sled.clone());
    let request = PlaceRequest {
        avoid: avoid.as_deref(),
        ..PlaceRequest::new(&name)
    };
    match place(&request) {
        Ok(placement) => {
            let restarting = planner.status.last_exit.is_some();
            let status = &mut planner.status;
            status.vmm_serial = serial;
            status.active_vmm = Some(name.clone());
            status.sled = Some(placement.sled.clone());
            status.location_generation += 1;
            status.state = Some(if restarting {
                InstanceState::Repairing
            } else {
                InstanceState::Creating
            });
            status.handled_start_request = instance.spec.start_request.clone();
            status.handled_reboot_request = instance.spec.reboot_request.clone();
            status.backoff_until = None;
            let message = format!("placed on {}: {}", placement.sled, placement.because);
            planner.set(
                Cond::Scheduled,
                ConditionStatus::True,
                Reason::Placed,
                &message,
            );
            planner.set(
                Cond::Running,
                ConditionStatus::False,
                Reason::VmmPending,
                &format!("VMM {name} is being created on {}", placement.sled),
            );
            planner.set(
                Cond::RestartBackoff,
                ConditionStatus::False,
                Reason::Placed,
                "",
            );
            if let Some(exit) = planner.status.last_exit.take() {
                planner.status.restarts += 1;
                planner.event(
                    Severity::Normal,
                    Reason::Restarted,
                    format!(
                        "restarting after VMM {} ended ({}); runStrategy {}",
                        exit.vmm, exit.reason, instance.spec.run_strategy
                    ),
                );
            }
            planner.event(Severity::Normal, Reason::Placed, message);
            planner.actions.push(Action::CreateVmm {
                name,
                sled: placement.sled,
                migrate_from: None,
            });
        }
        Err(rejections) => {
            let message = format!(
                "no sled fits {} CPUs / {} MiB: {rejections}",
                instance.spec.cpus, instance.spec.memory_mib
            );
            let was = condition::find(&planner.status.conditions, Cond::Scheduled)
                .map(|c| (c.status, c.message.clone()));
            planner.status.state = Some(InstanceState::Creating);
            planner.set(
                Cond::Scheduled,
                ConditionStatus::False,
                Reason::Unschedulable,
                &message,
            );
            if was != Some((ConditionStatus::False, message.clone())) {
                planner.event(Severity::Warning, Reason::Unschedulable, message);
            }
            planner.requeue_within(UNSCHEDULABLE_RETRY);
        }
    }
}

/// Shows divergence on the Instance: reported by the active Vmm's `Diverged` condition, or
/// the cause of the exit just recorded. It stays True until [`repair_divergence`] sees a VMM
/// run again (or the instance stop for good).
fn detect_divergence(planner: &mut Planner<'_>) {
    let observed = planner.observed;
    let active = planner
        .status
        .active_vmm
        .as_ref()
        .and_then(|name| observed.vmms.iter().find(|v| v.name_any() == *name));
    let reported = active.and_then(|vmm| {
        let status = vmm.status.as_ref()?;
        condition::find(&status.conditions, VmmConditionType::Diverged)
            .filter(|c| c.status == ConditionStatus::True)
            .map(|c| (c.reason, c.message.clone()))
    });
    let exited = planner
        .status
        .last_exit
        .as_ref()
        .filter(|exit| is_divergence(exit.reason))
        .map(|exit| {
            (
                exit.reason,
                format!(
                    "VMM {} on {}: {}",
                    exit.vmm,
                    exit.sled.as_deref().unwrap_or("?"),
                    exit.reason
                ),
            )
        });
    let unknown = observed.unknown_vmms.first().map(|(sled, id)| {
        (
            Reason::UnknownVmm,
            format!(
                "VMM {id} on {sled} claims to be this instance but no Vmm assigns it; the sled's agent destroys it"
            ),
        )
    });
    let diverged = condition::is_true(&planner.status.conditions, Cond::Diverged);
    if let Some((reason, message)) = reported.or(exited).or(unknown) {
        if !diverged {
            // The agent that found an unknown VMM records that on the Instance itself.
            if reason != Reason::UnknownVmm {
                planner.event(
                    Severity::Warning,
                    Reason::DivergenceDetected,
                    message.clone(),
                );
            }
            planner.set(Cond::Diverged, ConditionStatus::True, reason, &message);
        }
    } else if condition::find(&planner.status.conditions, Cond::Diverged).is_none() {
        planner.set(
            Cond::Diverged,
            ConditionStatus::False,
            Reason::Converged,
            "",
        );
    }
}

/// Ends a divergence once the instance runs again, or once it rests as the user chose.
fn repair_divergence(planner: &mut Planner<'_>) {
    if !condition::is_true(&planner.status.conditions, Cond::Diverged) {
        return;
    }
    if !planner.observed.unknown_vmms.is_empty() {
        // The Sled's update when the agent is done may not name this instance: look again.
        planner.requeue_within(UNKNOWN_VMM_RECHECK);
        return;
    }
    if condition::find(&planner.status.conditions, Cond::Diverged)
        .is_some_and(|c| c.reason == Reason::UnknownVmm)
    {
        let message = "the VMM that claimed to be this instance is gone".to_string();
        planner.set(
            Cond::Diverged,
            ConditionStatus::False,
            Reason::DivergenceRepaired,
            &message,
        );
        planner.event(Severity::Normal, Reason::DivergenceRepaired, message);
        return;
    }
    let running = planner.status.state == Some(InstanceState::Running);
    // Resting repairs only a rest the user chose: a Manual instance whose VMM was killed
    // behind the control plane's back stays diverged (not running, though started) until it
    // is started again or halted.
    let instance = planner.observed.instance;
    let chosen = instance.spec.run_strategy == RunStrategy::Halted
        || !planner
            .status
            .last_exit
            .as_ref()
            .is_some_and(|exit| is_divergence(exit.reason));
    let resting =
        planner.status.active_vmm.is_none() && !instance.spec.should_run(&planner.status) && chosen;
    if !running && !resting {
        return;
    }
    let message = if running {
        format!(
            "VMM {} runs on {}",
            planner.status.active_vmm.as_deref().unwrap_or("?"),
            planner.status.sled.as_deref().unwrap_or("?")
        )
    } else {
        "the instance rests, as its runStrategy wants".to_string()
    };
    planner.set(
        Cond::Diverged,
        ConditionStatus::False,
        Reason::DivergenceRepaired,
        &message,
    );
    planner.event(Severity::Normal, Reason::DivergenceRepaired, message);
}

/// Vmms of this instance that its status does not name are abandoned: delete them.
fn plan_abandoned(planner: &mut Planner<'_>) {
    let named = [
        planner.status.active_vmm.clone(),
        planner.status.target_vmm.clone(),
    ];
    for vmm in planner.observed.vmms {
        let name = vmm.name_any();
        let deleting = vmm.metadata.deletion_timestamp.is_some();
        let already = planner
            .actions
            .iter()
            .any(|a| matches!(a, Action::DeleteVmm { name: n } if *n == name));
        if !deleting && !already && !named.iter().flatten().any(|n| *n == name) {
            planner.actions.push(Action::DeleteVmm { name });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use corral_crds::{InstanceSpec, VmmSpec, VmmStatus};
    use jiff::Timestamp;

    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn instance(strategy: RunStrategy) -> Instance {
        let mut instance = Instance::new(
            "web",
            InstanceSpec {
                cpus: 2,
                memory_mib: 1024,
                image: "debian".into(),
                run_strategy: strategy,
                ..Default::default()
            },
        );
        instance.metadata.namespace = Some("default".into());
        instance.metadata.generation = Some(1);
        instance.metadata.finalizers = Some(vec![corral_crds::INSTANCE_FINALIZER.into()]);
        instance
    }

    fn vmm(name: &str, state: Option<VmmState>, reason: Option<Reason>) -> Arc<Vmm> {
        let mut vmm = Vmm::new(
            name,
            VmmSpec {
                instance: "web".into(),
                sled: "sled-1".into(),
                sled_epoch: 1,
                image: "debian".into(),
                ..Default::default()
            },
        );
        vmm.status = Some(VmmStatus {
            state,
            reason,
            ..Default::default()
        });
        Arc::new(vmm)
    }

    fn run(instance: &Instance, vmms: &[Arc<Vmm>]) -> Plan {
        run_seeing(instance, vmms, Vec::new())
    }

    /// [`run`], with sleds reporting `unknown_vmms` that claim the instance.
    fn run_seeing(
        instance: &Instance,
        vmms: &[Arc<Vmm>],
        unknown_vmms: Vec<(String, String)>,
    ) -> Plan {
        let observed = Observed {
            instance,
            vmms,
            active_in_flight: false,
            unknown_vmms,
            migrations: &[],
            target_in_flight: false,
            now: now(),
        };
        plan(&observed, &mut |request| {
            let sled = if request.avoid == Some("sled-1") {
                "sled-2"
            } else {
                "sled-1"
            };
            Ok(Placement {
                sled: sled.into(),
                epoch: 1,
                because: "test".into(),
            })
        })
    }

    fn kinds(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Event { reason, .. } => format!("Event({reason})"),
                Action::CreateVmm { name, sled, .. } => format!("Create({name}@{sled})"),
                Action::DeleteVmm { name } => format!("Delete({name})"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A new instance with `strategy`, after its first plan (placed, `web-v1` named).
    fn placed(strategy: RunStrategy) -> Instance {
        applied(instance(strategy), &run(&instance(strategy), &[]))
    }

    /// Applies a plan's status to the instance, as the executor would.
    fn applied(mut instance: Instance, plan: &Plan) -> Instance {
        instance.status = Some(plan.status.clone());
        instance
    }

    #[test]
    fn a_new_instance_is_named_first_then_created() {
        let plan = run(&instance(RunStrategy::Always), &[]);
        assert_eq!(
            kinds(&plan),
            ["WriteStatus", "Event(Placed)", "Create(web-v1@sled-1)"]
        );
        assert_eq!(plan.status.active_vmm.as_deref(), Some("web-v1"));
        assert_eq!(plan.status.state, Some(InstanceState::Creating));
        assert_eq!(plan.status.location_generation, 1);
    }

    #[test]
    fn the_finalizer_comes_before_anything_else() {
        let mut fresh = instance(RunStrategy::Always);
        fresh.metadata.finalizers = None;
        assert_eq!(kinds(&run(&fresh, &[]))[0], "AddFinalizer");
    }

    #[test]
    fn planning_again_on_the_result_does_nothing() {
        let first = run(&instance(RunStrategy::Always), &[]);
        let named = applied(instance(RunStrategy::Always), &first);
        let vmms = [vmm("web-v1", Some(VmmState::Running), None)];
        let second = run(&named, &vmms);
        let running = applied(named, &second);
        assert_eq!(
            running.status.as_ref().unwrap().state,
            Some(InstanceState::Running)
        );
        let third = run(&running, &vmms);
        assert!(third.actions.is_empty(), "{:?}", kinds(&third));
    }

    #[test]
    fn the_state_follows_the_active_vmm() {
        let named = placed(RunStrategy::Always);
        for (vmm_state, expected) in [
            (None, InstanceState::Creating),
            (Some(VmmState::Creating), InstanceState::Creating),
            (Some(VmmState::Starting), InstanceState::Starting),
            (Some(VmmState::Running), InstanceState::Running),
            (Some(VmmState::Stopping), InstanceState::Stopping),
        ] {
            let plan = run(&named, &[vmm("web-v1", vmm_state, None)]);
            assert_eq!(plan.status.state, Some(expected), "{vmm_state:?}");
        }
    }

    #[test]
    fn restarts_follow_the_run_strategy() {
        // (strategy, how the VMM ended, restarted?, resulting state when not)
        let cases = [
            (
                RunStrategy::Always,
                VmmState::Stopped,
                Reason::GuestShutdown,
                true,
                None,
            ),
            (
                RunStrategy::Always,
                VmmState::Failed,
                Reason::StaleSledEpoch,
                true,
                None,
            ),
            (
                RunStrategy::RerunOnFailure,
                VmmState::Failed,
                Reason::VmmKilled,
                true,
                None,
            ),
            (
                RunStrategy::RerunOnFailure,
                VmmState::Stopped,
                Reason::GuestShutdown,
                false,
                Some(InstanceState::Stopped),
            ),
            (
                RunStrategy::Manual,
                VmmState::Failed,
                Reason::GuestCrashed,
                false,
                Some(InstanceState::Failed),
            ),
        ];
        for (strategy, state, reason, restarted, rest) in cases {
            let named = placed(strategy);
            let plan = run(&named, &[vmm("web-v1", Some(state), Some(reason))]);
            let actions = kinds(&plan);
            assert!(
                actions.contains(&"Delete(web-v1)".to_string()),
                "{strategy}: {actions:?}"
            );
            assert_eq!(
                actions.iter().any(|a| a.starts_with("Create(web-v2")),
                restarted,
                "{strategy} after {reason}: {actions:?}"
            );
            if let Some(rest) = rest {
                assert_eq!(plan.status.state, Some(rest), "{strategy} after {reason}");
            }
        }
    }

    #[test]
    fn a_guest_crash_backs_off_and_avoids_its_sled_afterwards() {
        let named = placed(RunStrategy::Always);
        let crashed = run(
            &named,
            &[vmm(
                "web-v1",
                Some(VmmState::Failed),
                Some(Reason::GuestCrashed),
            )],
        );
        assert_eq!(crashed.status.state, Some(InstanceState::Repairing));
        assert_eq!(crashed.requeue, Some(BACKOFF_BASE));
        assert!(condition::is_true(
            &crashed.status.conditions,
            Cond::RestartBackoff
        ));
        assert!(!kinds(&crashed).iter().any(|a| a.starts_with("Create")));
        // Once the backoff expired, the restart goes to another sled.
        let mut waited = applied(named, &crashed);
        waited.status.as_mut().unwrap().backoff_until = None;
        let restarted = run(&waited, &[]);
        assert!(
            kinds(&restarted).contains(&"Create(web-v2@sled-2)".to_string()),
            "{:?}",
            kinds(&restarted)
        );
        assert_eq!(restarted.status.restarts, 1);
    }

    #[test]
    fn a_restarted_vmm_that_was_never_seen_is_created_not_declared_missing() {
        let named = placed(RunStrategy::Always);
        let ended = run(
            &named,
            &[vmm(
                "web-v1",
                Some(VmmState::Failed),
                Some(Reason::StaleSledEpoch),
            )],
        );
        let restarting = applied(named, &ended);
        assert_eq!(
            restarting.status.as_ref().unwrap().active_vmm.as_deref(),
            Some("web-v2")
        );
        // The controller stopped between naming web-v2 and creating it.
        let again = run(&restarting, &[]);
        assert!(
            kinds(&again).contains(&"Create(web-v2@sled-2)".to_string()),
            "{:?}",
            kinds(&again)
        );
        assert!(again.status.last_exit.is_none());
        // One that booted and vanished is missing.
        let booting = run(
            &restarting,
            &[vmm("web-v2", Some(VmmState::Starting), None)],
        );
        let gone = run(&applied(restarting, &booting), &[]);
        assert!(
            kinds(&gone).contains(&"Event(VmmMissing)".to_string()),
            "{:?}",
            kinds(&gone)
        );
    }

    #[test]
    fn an_unknown_vmm_claiming_the_instance_is_shown_while_a_sled_lists_it() {
        let named = placed(RunStrategy::Always);
        let vmms = [vmm("web-v1", Some(VmmState::Running), None)];
        let second = run(&named, &vmms);
        let running = applied(named, &second);
        let shown = run_seeing(&running, &vmms, vec![("sled-2".into(), "vmm-x".into())]);
        let diverged = condition::find(&shown.status.conditions, Cond::Diverged).unwrap();
        assert_eq!(
            (diverged.status, diverged.reason),
            (ConditionStatus::True, Reason::UnknownVmm)
        );
        assert!(diverged.message.contains("vmm-x"), "{}", diverged.message);
        assert_eq!(shown.requeue, Some(UNKNOWN_VMM_RECHECK));
        // The active VMM is untouched: nothing but the status changes.
        assert_eq!(kinds(&shown), ["WriteStatus"]);

        let still_shown = applied(running, &shown);
        let gone = run(&still_shown, &vmms);
        let repaired = condition::find(&gone.status.conditions, Cond::Diverged).unwrap();
        assert_eq!(
            (repaired.status, repaired.reason),
            (ConditionStatus::False, Reason::DivergenceRepaired)
        );
        assert_eq!(kinds(&gone), ["WriteStatus", "Event(DivergenceRepaired)"]);
    }

    #[test]
    fn a_manual_instance_killed_behind_the_back_stays_diverged_until_started() {
        let named = placed(RunStrategy::Manual);
        let killed = run(
            &named,
            &[vmm(
                "web-v1",
                Some(VmmState::Failed),
                Some(Reason::VmmKilled),
            )],
        );
        assert_eq!(killed.status.state, Some(InstanceState::Failed));
        assert!(condition::is_true(
            &killed.status.conditions,
            Cond::Diverged
        ));
        let failed = applied(named, &killed);
        assert!(condition::is_true(
            &run(&failed, &[]).status.conditions,
            Cond::Diverged
        ));
        // Halting it is a rest the user chose: repaired.
        let mut halted = failed.clone();
        halted.spec.run_strategy = RunStrategy::Halted;
        let rested = run(&halted, &[]);
        let condition = condition::find(&rested.status.conditions, Cond::Diverged).unwrap();
        assert_eq!(
            (condition.status, condition.reason),
            (ConditionStatus::False, Reason::DivergenceRepaired)
        );
    }

    #[test]
    fn a_start_while_the_stop_is_under_way_restarts_without_divergence() {
        let named = placed(RunStrategy::Always);
        let running_vmms = [vmm("web-v1", Some(VmmState::Running), None)];
        let second = run(&named, &running_vmms);
        let running = applied(named, &second);
        let mut halted = running.clone();
        halted.spec.run_strategy = RunStrategy::Halted;
        let stopping = run(&halted, &running_vmms);
        assert!(kinds(&stopping).contains(&"Delete(web-v1)".to_string()));
        assert_eq!(stopping.status.state, Some(InstanceState::Stopping));
        // Started again before the Vmm is gone; then it is gone.
        let mut started = applied(halted, &stopping);
        started.spec.run_strategy = RunStrategy::Always;
        let restarted = run(&started, &[]);
        let kinds = kinds(&restarted);
        assert!(
            kinds.contains(&"Create(web-v2@sled-1)".to_string()),
            "{kinds:?}"
        );
        assert!(
            !kinds
                .iter()
                .any(|k| k.contains("Missing") || k.contains("Divergence")),
            "{kinds:?}"
        );
        assert!(!condition::is_true(
            &restarted.status.conditions,
            Cond::Diverged
        ));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn divergence_is_shown_until_a_vmm_runs_again() {
        let named = placed(RunStrategy::Always);
        let killed = run(
            &named,
            &[vmm(
                "web-v1",
                Some(VmmState::Failed),
                Some(Reason::VmmKilled),
            )],
        );
        let diverged = condition::find(&killed.status.conditions, Cond::Diverged).unwrap();
        assert_eq!(
            (diverged.status, diverged.reason),
            (ConditionStatus::True, Reason::VmmKilled)
        );
        assert!(kinds(&killed).contains(&"Event(DivergenceDetected)".to_string()));
        let repairing = applied(named, &killed);
        let running = run(&repairing, &[vmm("web-v2", Some(VmmState::Running), None)]);
        let repaired = condition::find(&running.status.conditions, Cond::Diverged).unwrap();
        assert_eq!(
            (repaired.status, repaired.reason),
            (ConditionStatus::False, Reason::DivergenceRepaired)
        );
        assert!(kinds(&running).contains(&"Event(DivergenceRepaired)".to_string()));
    }

    #[test]
    fn halting_deletes_the_active_vmm_and_keeps_naming_it_until_gone() {
        let named = placed(RunStrategy::Always);
        let mut halted = named.clone();
        halted.spec.run_strategy = RunStrategy::Halted;
        let plan = run(&halted, &[vmm("web-v1", Some(VmmState::Running), None)]);
        assert!(kinds(&plan).contains(&"Delete(web-v1)".to_string()));
        assert_eq!(plan.status.state, Some(InstanceState::Stopping));
        assert_eq!(plan.status.active_vmm.as_deref(), Some("web-v1"));
        let gone = run(&applied(halted, &plan), &[]);
        assert_eq!(gone.status.state, Some(InstanceState::Stopped));
        assert_eq!(gone.status.active_vmm, None);
    }

    #[test]
    fn deletion_tears_down_vmms_before_the_finalizer_goes() {
        let mut deleting = applied(
            instance(RunStrategy::Always),
            &run(&instance(RunStrategy::Always), &[]),
        );
        deleting.metadata.deletion_timestamp = Some(Time(now()));
        let plan = run(&deleting, &[vmm("web-v1", Some(VmmState::Running), None)]);
        assert!(kinds(&plan).contains(&"Delete(web-v1)".to_string()));
        assert!(!plan.actions.contains(&Action::RemoveFinalizer));
        let done = run(&deleting, &[]);
        assert_eq!(kinds(&done), ["RemoveFinalizer"]);
    }

    #[test]
    fn unnamed_vmms_of_the_instance_are_deleted() {
        let named = placed(RunStrategy::Always);
        let plan = run(
            &named,
            &[
                vmm("web-v1", Some(VmmState::Running), None),
                vmm("web-v0", Some(VmmState::Running), None),
            ],
        );
        assert!(kinds(&plan).contains(&"Delete(web-v0)".to_string()));
        assert!(!kinds(&plan).contains(&"Delete(web-v1)".to_string()));
    }

    #[test]
    fn manual_instances_start_again_on_a_new_start_request() {
        let named = applied(
            instance(RunStrategy::Manual),
            &run(&instance(RunStrategy::Manual), &[]),
        );
        let stopped = applied(
            named,
            &run(
                &applied(
                    instance(RunStrategy::Manual),
                    &run(&instance(RunStrategy::Manual), &[]),
                ),
                &[vmm(
                    "web-v1",
                    Some(VmmState::Stopped),
                    Some(Reason::GuestShutdown),
                )],
            ),
        );
        assert!(
            run(&stopped, &[])
                .actions
                .iter()
                .all(|a| !matches!(a, Action::CreateVmm { .. }))
        );
        let mut asked = stopped;
        asked.spec.start_request = Some("2026-11-21T00:00:00Z".into());
        let started = run(&asked, &[]);
        assert!(
            kinds(&started)
                .iter()
                .any(|a| a.starts_with("Create(web-v2")),
            "{:?}",
            kinds(&started)
        );
        // And the same request does not start it twice.
        let mut again = applied(asked, &started);
        again.status.as_mut().unwrap().active_vmm = None;
        again.status.as_mut().unwrap().last_exit = Some(InstanceExit {
            reason: Reason::GuestShutdown,
            vmm: "web-v2".into(),
            sled: None,
            at: Time(now()),
        });
        assert!(!again.spec.should_run(again.status.as_ref().unwrap()));
    }
}
