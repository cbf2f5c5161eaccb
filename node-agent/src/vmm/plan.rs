//! `plan`: every decision the node-agent takes about one Vmm, as a pure function of what the
//! API says (the Vmm), what the agent decided before (its journal record) and what the machine
//! runs (the hypervisor's view). No I/O: `reconcile.rs` executes the [`Plan`]. The ends of a
//! live migration are decided by `migration/plan.rs`; both speak `decision.rs`.
//!
//! # Definitions
//! - A Vmm is *refused* if (and only if) the agent never accepted it: its `sledEpoch` is older
//!   than the sled's epoch (`StaleSledEpoch`), or it did not fit the free capacity when it was
//!   first seen (`InsufficientCapacity`). A refused Vmm never holds resources and never runs.
//! - A VMM is *killed* if (and only if) its Vmm is `Starting` or `Running` in the journal, this
//!   agent run saw the VMM on the machine, and it is no longer there. It is *missing* if the
//!   same holds except that this run never saw it (it vanished while no agent watched).
//! - A Vmm is *done* if (and only if) it is being deleted, its VMM is gone from the machine and
//!   the journal says `Destroyed` (or it never was accepted): then the finalizer may go.
//!
//! # Invariants (checked by the tests below, including a property test)
//! - The journal state never goes backwards: see `decision::may_follow`. `stateGeneration` rises with
//!   every decision, above both the journal's and the API's.
//! - A Vmm whose epoch is stale is never created on the machine, and a VMM whose Vmm is final
//!   (`Failed`, `Stopped`, `Destroyed`) is never left running.
//! - The finalizer is removed only when the Vmm is done and the API holds the last decision.
//!
//! # Not responsible for
//! VMMs no Vmm assigns (the agent's scan), the Sled's status, and resource accounting across
//! Vmms (the caller passes the free capacity in).

use std::time::Duration;

use corral_client::events::EventType;
use corral_crds::{Reason, VmmState};
use jiff::Timestamp;

use crate::hypervisor::{ExitReason, VmmInfo, VmmRunState};
use crate::journal::VmmRecord;
use crate::migration::plan as migration_plan;
use crate::vmm::decision::{
    Decision, MachineAction, Plan, PlanInput, PlannedEvent, record, warning,
};

/// Decides what to do about one Vmm (see the module docs).
pub fn plan(input: &PlanInput) -> Plan {
    let mut plan = match input.record {
        None => plan_unrecorded(input),
        Some(record) if input.vmm.deleting => plan_teardown(input, record),
        Some(record) => migration_plan::is_migrating(record)
            .then(|| migration_plan::plan_migrating(input, record))
            .flatten()
            .unwrap_or_else(|| plan_lifecycle(input, record)),
    };
    let current = plan.record.as_ref().or(input.record);
    plan.report = current.is_some_and(|r| r.state_generation > input.vmm.reported_generation);
    plan
}

/// A Vmm the journal does not know: a new one (accept or refuse), or one being deleted that
/// was never accepted.
fn plan_unrecorded(input: &PlanInput) -> Plan {
    let vmm = input.vmm;
    let mut plan = Plan::default();
    if vmm.deleting {
        plan.machine = input.machine.map(|_| MachineAction::Destroy);
        plan.remove_finalizer = vmm.has_finalizer;
        return plan;
    }
    match vmm.reported_state {
        // An earlier journal decided its end; the decision stands.
        Some(state) if state.is_final() => return plan,
        // Accepted by an ended life of the sled (a fence emptied the journal and the
        // machine): refused below as stale, not a divergence.
        Some(_) if vmm.sled_epoch < input.epoch => {}
        // The API says it was accepted but the journal lost it.
        Some(_) if input.machine.is_none() => {
            let mut decision = Decision::new(
                VmmState::Failed,
                Reason::VmmMissing,
                "the VMM is not on the sled and the agent's journal does not know it",
            );
            decision.diverged = true;
            decision.holds = false;
            plan.record = Some(record(input, None, decision));
            plan.events.push(warning(
                Reason::DivergenceDetected,
                "VMM missing: the sled does not run it",
            ));
            return plan;
        }
        // The journal lost a Vmm whose VMM runs: adopt it as the API last saw it, without a
        // new report (a `Creating` now would go backwards); the next pass follows the machine.
        Some(state) => {
            let mut adopted = record(input, None, Decision::new(state, Reason::VmmPending, ""));
            adopted.reason = None;
            adopted.message = String::new();
            adopted.state_generation = vmm.reported_generation;
            plan.record = Some(adopted);
            plan.requeue = Some(Duration::ZERO);
            return plan;
        }
        None => {}
    }
    let refusal = if vmm.sled_epoch < input.epoch {
        Some((
            Reason::StaleSledEpoch,
            format!(
                "placed for sled epoch {}, the sled is at epoch {}",
                vmm.sled_epoch, input.epoch
            ),
        ))
    } else if !vmm.resources.fits_within(&input.free) {
        Some((
            Reason::InsufficientCapacity,
            format!(
                "needs {} CPUs and {} MiB, {} CPUs and {} MiB free",
                vmm.resources.cpus,
                vmm.resources.memory_mib,
                input.free.cpus,
                input.free.memory_mib
            ),
        ))
    } else {
        None
    };
    if let Some((reason, message)) = refusal {
        let mut decision = Decision::new(VmmState::Failed, reason, message.clone());
        decision.holds = false;
        plan.record = Some(record(input, None, decision));
        plan.machine = input.machine.map(|_| MachineAction::Destroy);
        plan.events.push(warning(reason, message));
        return plan;
    }
    let mut decision = Decision::new(VmmState::Creating, Reason::VmmPending, "accepted");
    // A fresh boot satisfies any reboot asked for before the Vmm existed.
    decision.handled_reboot_request = vmm.reboot_request.clone();
    plan.record = Some(record(input, None, decision));
    plan.requeue = Some(Duration::ZERO);
    plan
}

/// A recorded Vmm being deleted: stop, destroy, report `Destroyed`, drop the finalizer.
fn plan_teardown(input: &PlanInput, previous: &VmmRecord) -> Plan {
    let mut plan = Plan {
        // A transfer of a Vmm being deleted ends now: the target drops its connection, the
        // source ends its stream with an error.
        cancel_transfer: input.migration.transfer_running,
        ..Plan::default()
    };
    let destroyed = || {
        let mut decision = Decision::new(
            VmmState::Destroyed,
            Reason::Deleting,
            "VMM destroyed and its resources freed",
        );
        decision.holds = false;
        decision
    };
    let Some(machine) = input.machine else {
        if previous.state != VmmState::Destroyed {
            plan.record = Some(record(input, Some(previous), destroyed()));
        }
        plan.remove_finalizer = input.vmm.has_finalizer;
        plan.forget = true;
        return plan;
    };
    let stopping_for = if previous.state == VmmState::Stopping {
        elapsed(previous.state_since, input.now)
    } else {
        Duration::ZERO
    };
    let overdue = stopping_for >= input.stop_timeout;
    // An ended VMM, one receiving a guest or one whose guest is paused (a migration source
    // after the switch) runs nothing to stop gracefully.
    let ended = matches!(
        machine.state,
        VmmRunState::Exited(_) | VmmRunState::Receiving | VmmRunState::Paused
    );
    // A VMM whose Vmm already ended (or that ended itself, or will not stop) is destroyed at
    // once: there is nothing to stop gracefully.
    if previous.state.is_final() || ended || overdue {
        plan.machine = Some(MachineAction::Destroy);
        if previous.state != VmmState::Destroyed {
            plan.record = Some(record(input, Some(previous), destroyed()));
        }
        plan.remove_finalizer = input.vmm.has_finalizer;
        plan.forget = true;
        return plan;
    }
    if machine.state != VmmRunState::Stopping {
        plan.machine = Some(MachineAction::Stop);
    }
    if previous.state != VmmState::Stopping {
        let decision = Decision::new(VmmState::Stopping, Reason::ShuttingDown, "stopping the VMM");
        plan.record = Some(record(input, Some(previous), decision));
    }
    let deadline = input.stop_timeout.saturating_sub(stopping_for);
    plan.requeue = Some(match machine.settles_in {
        Some(settles) if machine.responsive => settles.min(deadline),
        _ => deadline,
    });
    plan
}

/// A recorded Vmm that should run (or has ended): follow the machine.
fn plan_lifecycle(input: &PlanInput, previous: &VmmRecord) -> Plan {
    let vmm = input.vmm;
    let mut plan = Plan::default();
    let machine = input.machine;
    let running_on_machine = machine.is_some_and(|m| !matches!(m.state, VmmRunState::Exited(_)));
    if !previous.holds || previous.state.is_final() {
        // Refused or ended: it must not run, and there is nothing to report.
        if running_on_machine || (!previous.holds && machine.is_some()) {
            plan.machine = Some(MachineAction::Destroy);
        }
        return plan;
    }
    if previous.state == VmmState::Stopping {
        // Only a deletion stops a VMM, and a deletion cannot be taken back: nothing to do
        // until the cache shows the deletion again.
        return plan;
    }
    if vmm.sled_epoch < input.epoch {
        let message = format!(
            "placed for sled epoch {}, the sled is at epoch {}",
            vmm.sled_epoch, input.epoch
        );
        if machine.is_some() {
            plan.machine = Some(MachineAction::Destroy);
        }
        plan.events
            .push(warning(Reason::StaleSledEpoch, message.clone()));
        let decision = Decision::new(VmmState::Failed, Reason::StaleSledEpoch, message);
        plan.record = Some(record(input, Some(previous), decision));
        return plan;
    }
    match machine {
        None => plan_absent(input, previous),
        Some(machine) => follow_machine(input, previous, machine),
    }
}

/// A recorded Vmm that should run and is not on the machine: create it (or its receiving
/// VMM), or report it killed (this run saw it) or missing (it never did).
fn plan_absent(input: &PlanInput, previous: &VmmRecord) -> Plan {
    let mut plan = Plan::default();
    if previous.state == VmmState::Creating
        && let Some(from) = &input.vmm.migrate_from
    {
        return migration_plan::plan_receive(input, previous, from);
    }
    if previous.state == VmmState::Creating {
        plan.machine = Some(MachineAction::Create);
        let decision = Decision::new(VmmState::Starting, Reason::Booting, "booting");
        plan.record = Some(record(input, Some(previous), decision));
        return plan;
    }
    let (reason, message) = if input.seen_this_run {
        (
            Reason::VmmKilled,
            "the VMM was killed behind the control plane's back",
        )
    } else {
        (
            Reason::VmmMissing,
            "the VMM is not on the sled (found after an agent restart)",
        )
    };
    let mut decision = Decision::new(VmmState::Failed, reason, message);
    decision.diverged = true;
    plan.events.push(warning(
        Reason::DivergenceDetected,
        format!("{reason}: {message}"),
    ));
    plan.record = Some(record(input, Some(previous), decision));
    plan
}

/// A recorded Vmm that should run and is on the machine: report what the machine does.
fn follow_machine(input: &PlanInput, previous: &VmmRecord, machine: &VmmInfo) -> Plan {
    let mut plan = Plan::default();
    match machine.state {
        VmmRunState::Starting => {
            if previous.state != VmmState::Starting {
                let decision = Decision::new(VmmState::Starting, Reason::Booting, "booting");
                plan.record = Some(record(input, Some(previous), decision));
            }
            plan.requeue = machine.settles_in;
        }
        VmmRunState::Running => return follow_running(input, previous, machine),
        VmmRunState::Stopping => plan.requeue = machine.settles_in,
        // Created to receive, but the journal never recorded the transfer: it broke (the agent
        // stopped in between).
        VmmRunState::Receiving if previous.state == VmmState::Creating => {
            return migration_plan::fail_target(
                input,
                previous,
                "the agent restarted before the transfer began",
            );
        }
        // Not an end of a migration the journal knows: leave it to the control plane, which
        // deletes the Vmm (a paused guest never resumes without a verdict).
        VmmRunState::Receiving | VmmRunState::Paused => {}
        VmmRunState::Exited(exit) => {
            let (state, reason, message) = match exit {
                ExitReason::GuestCrashed => {
                    (VmmState::Failed, Reason::GuestCrashed, "the guest crashed")
                }
                ExitReason::GuestShutdown => (
                    VmmState::Stopped,
                    Reason::GuestShutdown,
                    "the guest shut down",
                ),
                ExitReason::Stopped => (
                    VmmState::Stopped,
                    Reason::ShuttingDown,
                    "the VMM was stopped",
                ),
            };
            plan.events.push(PlannedEvent {
                type_: if state == VmmState::Failed {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason,
                message: message.to_string(),
            });
            let decision = Decision::new(state, reason, message);
            plan.record = Some(record(input, Some(previous), decision));
        }
    }
    plan
}

/// A recorded Vmm whose guest runs: report the boot, reboot it if asked, or report a new
/// dirty rate.
fn follow_running(input: &PlanInput, previous: &VmmRecord, machine: &VmmInfo) -> Plan {
    let mut plan = Plan::default();
    let reboot = input
        .vmm
        .reboot_request
        .as_ref()
        .filter(|request| previous.handled_reboot_request.as_ref() != Some(*request));
    if previous.state != VmmState::Running {
        // Report the boot first; a reboot asked for meanwhile follows at once.
        let mut decision = Decision::new(VmmState::Running, Reason::VmmRunning, "");
        decision.booted_at = Some(input.now);
        plan.record = Some(record(input, Some(previous), decision));
        if reboot.is_some() {
            plan.requeue = Some(Duration::ZERO);
        }
    } else if let Some(request) = reboot {
        plan.machine = Some(MachineAction::Reboot);
        let mut decision =
            Decision::new(VmmState::Starting, Reason::Rebooting, "rebooting the guest");
        decision.handled_reboot_request = Some(request.clone());
        plan.record = Some(record(input, Some(previous), decision));
        plan.requeue = Some(Duration::ZERO);
    } else if machine.dirty_bytes_per_second != previous.dirty_bytes_per_second {
        // The same state, reported again with the guest's new dirty rate (what the
        // migration controller predicts convergence from).
        let mut decision = Decision::new(
            VmmState::Running,
            previous.reason.unwrap_or(Reason::VmmRunning),
            previous.message.clone(),
        );
        decision.reason = previous.reason;
        plan.record = Some(record(input, Some(previous), decision));
    }
    plan
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
pub(crate) mod tests;
