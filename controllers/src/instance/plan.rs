//! The instance controller's decisions, as a pure function of what it observes.
//!
//! [`plan`] takes an Instance, the Vmms that name it, whether the active Vmm's creation is in
//! flight, a placement function and the time, and returns the [`Plan`]: the new status and the
//! ordered steps that make the rack match it (the inputs and outputs are in `planning.rs`; a
//! live migration's part is `migrate.rs`). No I/O happens here; the kit executes the plan in
//! order and stops at the first failure, so a partly executed plan is simply re-planned from
//! the new state.
//!
//! # Invariants
//! - The status naming a new active Vmm is written before the Vmm is created
//!   ([`Step::WriteStatus`] precedes [`Action::CreateVmm`]): a Vmm is never unnamed on its way
//!   up (docs/rack.md, "name first").
//! - A Vmm the status names is deleted only when the instance should stop or is being
//!   deleted, or after it ended on its own (then it is first un-named).
//! - `plan(x)` applied, then planned again on the result, yields no further action (the
//!   controller is idempotent; see the tests).

use std::time::Duration;

use corral_client::events::EventType;
use corral_crds::{
    ConditionStatus, HealthVerdict, InstanceConditionType as Cond, InstanceExit, InstanceState,
    Reason, RunStrategy, Sled, Vmm, VmmConditionType, VmmState, VmmStatus, condition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::planning::{Action, Observed, Place, PlaceRequest, Plan, Planner};
use super::{migrate, restart};
use crate::kit::Step;
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

/// Computes the plan for one instance. `place` chooses (and reserves) a sled for a Vmm name,
/// given a sled to avoid.
pub fn plan(observed: &Observed<'_>, place: &mut Place<'_>) -> Plan {
    let instance = observed.instance;
    let previous = instance.status.clone().unwrap_or_default();
    let mut planner = Planner {
        observed,
        plan: Plan::new(previous.clone()),
    };
    planner.plan.status.observed_generation = instance.metadata.generation.unwrap_or(0);
    let has_finalizer = instance
        .finalizers()
        .iter()
        .any(|f| f == corral_crds::INSTANCE_FINALIZER);

    if instance.metadata.deletion_timestamp.is_some() {
        plan_deletion(&mut planner, has_finalizer);
        return planner.finish(&previous);
    }
    if !has_finalizer {
        planner.plan.steps.push(Step::AddFinalizer);
    }
    plan_active(&mut planner);
    migrate::plan_migration(&mut planner, place);
    restart::plan_restart(&mut planner, place, start_placed);
    detect_divergence(&mut planner);
    if planner.plan.status.active_vmm.is_none() {
        plan_start(&mut planner, place);
    }
    repair_divergence(&mut planner);
    plan_abandoned(&mut planner);
    planner.finish(&previous)
}

fn plan_deletion(planner: &mut Planner<'_>, has_finalizer: bool) {
    let vmms = planner.observed.vmms;
    for vmm in vmms {
        if vmm.metadata.deletion_timestamp.is_none() {
            planner.plan.act(Action::DeleteVmm {
                name: vmm.name_any(),
            });
        }
    }
    if vmms.is_empty() {
        if has_finalizer {
            planner.plan.steps.push(Step::RemoveFinalizer);
        }
    } else {
        planner.plan.status.state = Some(InstanceState::Stopping);
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
    let Some(name) = planner.plan.status.active_vmm.clone() else {
        return;
    };
    let active = observed.vmms.iter().find(|v| v.name_any() == name);
    let should_run = observed.instance.spec.should_run(&planner.plan.status);
    let Some(vmm) = active else {
        return active_not_seen(planner, name, should_run);
    };
    let vmm_status = vmm.status.clone().unwrap_or_default();
    if vmm.metadata.deletion_timestamp.is_some() {
        planner.plan.status.state = Some(InstanceState::Stopping);
        planner.set(
            Cond::Running,
            ConditionStatus::False,
            Reason::ShuttingDown,
            &format!("VMM {name} is being torn down"),
        );
        return;
    }
    if let Some(state) = vmm_status.state.filter(|s| s.is_final()) {
        let reason = vmm_status.reason.unwrap_or(match state {
            VmmState::Stopped => Reason::GuestShutdown,
            _ => Reason::GuestCrashed,
        });
        record_exit(planner, reason, &name);
        planner.plan.act(Action::DeleteVmm { name });
        return;
    }
    let sled = observed.sled(&vmm.spec.sled);
    if let Some(sled) = sled.filter(|sled| vmm.outlived_by(sled)) {
        return outlived(planner, vmm, sled);
    }
    if !should_run {
        return stop_active(planner, name);
    }
    let state = follow_active_state(planner, vmm, &vmm_status);
    reboot_in_place(planner, &name, state);
    if let Some(sled) = sled {
        sled_health(planner, sled);
    }
}

/// The active Vmm's sled moved to a later life (it was fenced, or it rebooted): the VMM does
/// not run. Once nothing holds it (the sled-health controller released it after the fence, or
/// the agent reported its end) it is an exit the sled caused, not the instance.
fn outlived(planner: &mut Planner<'_>, vmm: &Vmm, sled: &Sled) {
    let name = vmm.name_any();
    let sled_name = sled.name_any();
    let released = !vmm
        .finalizers()
        .iter()
        .any(|f| f == corral_crds::VMM_FINALIZER);
    if released {
        record_exit(planner, Reason::SledFailed, &name);
        planner.plan.act(Action::DeleteVmm { name });
        return;
    }
    planner.plan.status.state = Some(InstanceState::Repairing);
    planner.set(
        Cond::Running,
        ConditionStatus::False,
        Reason::SledFailed,
        &format!(
            "sled {sled_name} is at epoch {} past VMM {name}'s {}: it does not run; waiting for \
             it to be released",
            sled.epoch(),
            vmm.spec.sled_epoch
        ),
    );
}

/// The active Vmm's sled is not known to be well: its VMM may still run (Unreachable) or not
/// (PoweredOff), and the instance says so (`SledUnreachable`, `Running` Unknown or False).
fn sled_health(planner: &mut Planner<'_>, sled: &Sled) {
    let verdict = sled.health();
    let health = sled.status.as_ref().and_then(|s| s.health.as_ref());
    let name = sled.name_any();
    match verdict {
        HealthVerdict::Unreachable | HealthVerdict::PoweredOff | HealthVerdict::Fenced => {
            let reason = health.map_or(Reason::HeartbeatExpired, |h| h.reason);
            let message = format!(
                "sled {name} is {verdict}: {}",
                health.map_or("", |h| h.message.as_str())
            );
            planner.set(
                Cond::SledUnreachable,
                ConditionStatus::True,
                reason,
                &message,
            );
            let (running, message) = if verdict == HealthVerdict::Unreachable {
                (
                    ConditionStatus::Unknown,
                    format!("sled {name} is unreachable: its VMM may still run"),
                )
            } else {
                (
                    ConditionStatus::False,
                    format!("sled {name} is {verdict}: its VMM does not run"),
                )
            };
            planner.set(Cond::Running, running, reason, &message);
        }
        HealthVerdict::Healthy | HealthVerdict::Suspect => {
            if condition::is_true(&planner.plan.status.conditions, Cond::SledUnreachable) {
                planner.set(
                    Cond::SledUnreachable,
                    ConditionStatus::False,
                    Reason::HeartbeatRenewed,
                    &format!("sled {name} renews its Lease again"),
                );
            }
        }
    }
}

/// The active Vmm is not in the cache (and a live read confirmed it is gone, or it was just
/// created): forget it, create it, or record it missing.
fn active_not_seen(planner: &mut Planner<'_>, name: String, should_run: bool) {
    let observed = planner.observed;
    // Placement sets `Running` to `VmmPending`, and only a VMM seen booting changes it.
    let never_seen = condition::find(&planner.plan.status.conditions, Cond::Running)
        .is_none_or(|c| c.reason == Reason::VmmPending);
    // This controller deleted it (a stop) and it is gone as asked, even if the instance
    // was started again meanwhile: an orderly end, not a missing VMM.
    let stopped_as_asked = planner.plan.status.state == Some(InstanceState::Stopping);
    if !should_run || stopped_as_asked {
        // Forget it; a start places a new one. (Not seen running under this name: the
        // reaper removes a Vmm created after all.)
        forget_active(planner);
    } else if never_seen {
        if !observed.active_in_flight {
            // The status names it but the Vmm was never created (the controller stopped
            // between the two writes): create it now, on the sled the status names.
            if let Some(sled) = planner.plan.status.sled.clone() {
                planner.plan.act(Action::CreateVmm {
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
}

/// The instance should not run: stop its active Vmm.
fn stop_active(planner: &mut Planner<'_>, name: String) {
    planner.plan.act(Action::DeleteVmm { name: name.clone() });
    planner.plan.status.state = Some(InstanceState::Stopping);
    planner.set(
        Cond::Running,
        ConditionStatus::False,
        Reason::Halted,
        "runStrategy is Halted: stopping",
    );
    planner.plan.event(
        EventType::Normal,
        Reason::Halted,
        format!("stopping VMM {name}"),
    );
}

/// The state, the `Running` condition and the backoff, as the active Vmm reports them;
/// returns the state.
fn follow_active_state(
    planner: &mut Planner<'_>,
    vmm: &Vmm,
    vmm_status: &VmmStatus,
) -> InstanceState {
    let observed = planner.observed;
    let name = vmm.name_any();
    let vmm_state = vmm_status.state;
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
    let diverged = condition::is_true(&planner.plan.status.conditions, Cond::Diverged);
    let state = match state {
        InstanceState::Creating | InstanceState::Starting if diverged => InstanceState::Repairing,
        other => other,
    };
    planner.plan.status.state = Some(state);
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
        planner.plan.status.backoff_until = None;
        planner.set(
            Cond::RestartBackoff,
            ConditionStatus::False,
            Reason::VmmRunning,
            "",
        );
        // A guest that stays up for STABLE_RUN has stopped crash-looping.
        if planner.plan.status.consecutive_failures > 0 {
            let up = vmm_status
                .booted_at
                .as_ref()
                .map(|t| observed.now.duration_since(t.0))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            if up >= STABLE_RUN {
                planner.plan.status.consecutive_failures = 0;
            } else {
                planner.plan.requeue_within(STABLE_RUN - up);
            }
        }
    }
    state
}

/// A new reboot request, while the guest runs: reboot it in place.
fn reboot_in_place(planner: &mut Planner<'_>, name: &str, state: InstanceState) {
    let observed = planner.observed;
    if let Some(request) = observed.instance.spec.reboot_request.clone()
        && planner.plan.status.handled_reboot_request.as_ref() != Some(&request)
        && state == InstanceState::Running
    {
        planner.plan.status.handled_reboot_request = Some(request.clone());
        planner.plan.act(Action::RebootVmm {
            name: name.to_string(),
            request,
        });
        planner.plan.event(
            EventType::Normal,
            Reason::Rebooting,
            format!("rebooting the guest in VMM {name}"),
        );
    }
}

fn forget_active(planner: &mut Planner<'_>) {
    planner.plan.status.active_vmm = None;
    // What was said of the sled it ran on no longer concerns the instance.
    if let Some(sled) = planner.plan.status.sled.take()
        && condition::is_true(&planner.plan.status.conditions, Cond::SledUnreachable)
    {
        planner.set(
            Cond::SledUnreachable,
            ConditionStatus::False,
            Reason::SledFailed,
            &format!("its VMM on {sled} ended: the instance no longer depends on that sled"),
        );
    }
}

/// The active VMM ended on its own: remember how, un-name it, set up the backoff.
fn record_exit(planner: &mut Planner<'_>, reason: Reason, name: &str) {
    let now = planner.observed.now;
    planner.plan.status.last_exit = Some(InstanceExit {
        reason,
        vmm: name.to_string(),
        sled: planner.plan.status.sled.clone(),
        at: Time(now),
    });
    if instance_caused(reason) {
        planner.plan.status.consecutive_failures += 1;
        let wait = backoff(planner.plan.status.consecutive_failures);
        planner.plan.status.backoff_until = now
            .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
            .ok()
            .map(Time);
    } else {
        planner.plan.status.backoff_until = None;
    }
    forget_active(planner);
    let severity = if reason == Reason::GuestShutdown {
        EventType::Normal
    } else {
        EventType::Warning
    };
    planner
        .plan
        .event(severity, reason, format!("VMM {name} ended: {reason}"));
}

/// No active Vmm: place and start one if the instance should run.
fn plan_start(planner: &mut Planner<'_>, place: &mut Place<'_>) {
    let observed = planner.observed;
    let instance = observed.instance;
    if !instance.spec.should_run(&planner.plan.status) {
        return stay_stopped(planner);
    }
    if backing_off(planner) {
        return;
    }
    let serial = planner.plan.status.vmm_serial + 1;
    let name = format!("{}-v{serial}", instance.name_any());
    let avoid = planner
        .plan
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
        Ok(placement) => start_placed(planner, name, serial, placement),
        Err(rejections) => unschedulable(planner, &rejections),
    }
}

/// The instance should not run: `Stopped`, or `Failed` if it ended on a failure its
/// runStrategy does not restart.
fn stay_stopped(planner: &mut Planner<'_>) {
    let instance = planner.observed.instance;
    let strategy = instance.spec.run_strategy;
    let last_exit = planner.plan.status.last_exit.clone();
    let failed = last_exit
        .as_ref()
        .is_some_and(|exit| exit.reason != Reason::GuestShutdown)
        && strategy != RunStrategy::Halted;
    planner.plan.status.state = Some(if failed {
        InstanceState::Failed
    } else {
        InstanceState::Stopped
    });
    let (reason, message) = match &last_exit {
        Some(exit) if strategy != RunStrategy::Halted => (
            exit.reason,
            format!(
                "VMM {} ended ({}); runStrategy {strategy} does not restart it",
                exit.vmm, exit.reason
            ),
        ),
        _ => (Reason::Halted, "runStrategy is Halted".to_string()),
    };
    planner.set(Cond::Running, ConditionStatus::False, reason, &message);
    planner.set(Cond::RestartBackoff, ConditionStatus::False, reason, "");
}

/// Whether a restart must still wait out its backoff (then the instance is `Repairing` and
/// looked at again when the backoff ends).
fn backing_off(planner: &mut Planner<'_>) -> bool {
    let now = planner.observed.now;
    let Some(until) = planner.plan.status.backoff_until.clone() else {
        return false;
    };
    if until.0 <= now {
        return false;
    }
    let wait = until.0.duration_since(now);
    planner.plan.status.state = Some(InstanceState::Repairing);
    let message = format!(
        "restart after {} failures in a row waits until {}",
        planner.plan.status.consecutive_failures, until.0
    );
    planner.set(
        Cond::RestartBackoff,
        ConditionStatus::True,
        Reason::BackingOff,
        &message,
    );
    planner
        .plan
        .requeue_within(Duration::try_from(wait).unwrap_or(BACKOFF_BASE));
    true
}

/// Names the new Vmm `name` on the placement's sled (status first), then creates it.
fn start_placed(planner: &mut Planner<'_>, name: String, serial: u64, placement: Placement) {
    let instance = planner.observed.instance;
    let restarting = planner.plan.status.last_exit.is_some();
    let status = &mut planner.plan.status;
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
    if let Some(exit) = planner.plan.status.last_exit.take() {
        planner.plan.status.restarts += 1;
        planner.plan.event(
            EventType::Normal,
            Reason::Restarted,
            format!(
                "restarting after VMM {} ended ({}); runStrategy {}",
                exit.vmm, exit.reason, instance.spec.run_strategy
            ),
        );
    }
    planner
        .plan
        .event(EventType::Normal, Reason::Placed, message);
    planner.plan.act(Action::CreateVmm {
        name,
        sled: placement.sled,
        migrate_from: None,
    });
}

/// No sled fits: `Scheduled=False` with why (a Warning when the why changes), and a retry.
fn unschedulable(planner: &mut Planner<'_>, rejections: &Rejections) {
    let instance = planner.observed.instance;
    let message = format!(
        "no sled fits {} CPUs / {} MiB: {rejections}",
        instance.spec.cpus, instance.spec.memory_mib
    );
    let was = condition::find(&planner.plan.status.conditions, Cond::Scheduled)
        .map(|c| (c.status, c.message.clone()));
    planner.plan.status.state = Some(InstanceState::Creating);
    planner.set(
        Cond::Scheduled,
        ConditionStatus::False,
        Reason::Unschedulable,
        &message,
    );
    planner.set(
        Cond::Running,
        ConditionStatus::False,
        Reason::Unschedulable,
        "not placed: no sled fits (see Scheduled)",
    );
    if was != Some((ConditionStatus::False, message.clone())) {
        planner
            .plan
            .event(EventType::Warning, Reason::Unschedulable, message);
    }
    planner.plan.requeue_within(UNSCHEDULABLE_RETRY);
}

/// Shows divergence on the Instance: reported by the active Vmm's `Diverged` condition, or
/// the cause of the exit just recorded. It stays True until [`repair_divergence`] sees a VMM
/// run again (or the instance stop for good).
fn detect_divergence(planner: &mut Planner<'_>) {
    let observed = planner.observed;
    let active = planner
        .plan
        .status
        .active_vmm
        .as_ref()
        .and_then(|name| observed.vmms.iter().find(|v| v.name_any() == *name));
    let reported = active.and_then(|vmm| {
        let status = vmm.status.as_ref()?;
        condition::find_true(&status.conditions, VmmConditionType::Diverged)
            .map(|c| (c.reason, c.message.clone()))
    });
    let exited = planner
        .plan
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
    let diverged = condition::is_true(&planner.plan.status.conditions, Cond::Diverged);
    if let Some((reason, message)) = reported.or(exited).or(unknown) {
        if !diverged {
            // The agent that found an unknown VMM records that on the Instance itself.
            if reason != Reason::UnknownVmm {
                planner.plan.event(
                    EventType::Warning,
                    Reason::DivergenceDetected,
                    message.clone(),
                );
            }
            planner.set(Cond::Diverged, ConditionStatus::True, reason, &message);
        }
    } else if condition::find(&planner.plan.status.conditions, Cond::Diverged).is_none() {
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
    if !condition::is_true(&planner.plan.status.conditions, Cond::Diverged) {
        return;
    }
    if !planner.observed.unknown_vmms.is_empty() {
        // The Sled's update when the agent is done may not name this instance: look again.
        planner.plan.requeue_within(UNKNOWN_VMM_RECHECK);
        return;
    }
    if condition::find(&planner.plan.status.conditions, Cond::Diverged)
        .is_some_and(|c| c.reason == Reason::UnknownVmm)
    {
        let message = "the VMM that claimed to be this instance is gone".to_string();
        planner.set(
            Cond::Diverged,
            ConditionStatus::False,
            Reason::DivergenceRepaired,
            &message,
        );
        planner
            .plan
            .event(EventType::Normal, Reason::DivergenceRepaired, message);
        return;
    }
    let running = planner.plan.status.state == Some(InstanceState::Running);
    // Resting repairs only a rest the user chose: a Manual instance whose VMM was killed
    // behind the control plane's back stays diverged (not running, though started) until it
    // is started again or halted.
    let instance = planner.observed.instance;
    let chosen = instance.spec.run_strategy == RunStrategy::Halted
        || !planner
            .plan
            .status
            .last_exit
            .as_ref()
            .is_some_and(|exit| is_divergence(exit.reason));
    let resting = planner.plan.status.active_vmm.is_none()
        && !instance.spec.should_run(&planner.plan.status)
        && chosen;
    if !running && !resting {
        return;
    }
    let message = if running {
        format!(
            "VMM {} runs on {}",
            planner.plan.status.active_vmm.as_deref().unwrap_or("?"),
            planner.plan.status.sled.as_deref().unwrap_or("?")
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
    planner
        .plan
        .event(EventType::Normal, Reason::DivergenceRepaired, message);
}

/// Vmms of this instance that its status does not name are abandoned: delete them.
fn plan_abandoned(planner: &mut Planner<'_>) {
    for vmm in planner.observed.vmms {
        let name = vmm.name_any();
        let deleting = vmm.metadata.deletion_timestamp.is_some();
        let already = planner
            .plan
            .actions()
            .any(|a| matches!(a, Action::DeleteVmm { name: n } if *n == name));
        if !deleting && !already && !planner.plan.status.names_vmm(&name) {
            planner.plan.act(Action::DeleteVmm { name });
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
