//! The decisions about a Vmm that is an end of a live migration (docs/migration.md, "Exactly
//! once"), pure like the rest of the agent's plan (`vmm/plan.rs` hands a migrating Vmm here;
//! both speak `vmm/decision.rs`). `source.rs` and `target.rs` run the transfer itself.
//!
//! # Definitions
//! - A Vmm is *migrating* if (and only if) its journal record is `Migrating` and names its
//!   end of a migration ([`MigrationRecord`]).
//! - The *verdict* is what the Instance (read with a GET, never a cache) says about a migration
//!   whose ends are `Ready`: *switched* if `activeVmm` names the target; *aborted* if
//!   `activeVmm` still names the source and `targetVmm` no longer names the target.
//!
//! # Invariants
//! - A paused source guest resumes only on an aborted verdict; a received target guest runs
//!   only on a switched verdict. A broken connection or a restart never resumes anything.
//! - A target whose transfer is not running (it broke, or the agent restarted mid-transfer)
//!   fails with `TransferFailed` and destroys its receiving VMM.
//! - A source whose transfer is not running and that never paused goes back to `Running`.

use std::time::Duration;

use corral_crds::{
    MigrateFrom, MigrationRole, Reason, VmmMigrationPhase, VmmMigrationStatus, VmmState,
};
use jiff::Timestamp;

use crate::hypervisor::VmmRunState;
use crate::journal::{MigrationRecord, VmmRecord};
use crate::vmm::decision::{
    Decision, InstanceView, MachineAction, Plan, PlanInput, record, warning,
};

/// How soon an end that waits for the verdict reads the Instance again. Each read also
/// watches it for a while (`vmm/reconcile.rs`), so the verdict is seen as it is written.
pub const VERDICT_POLL: Duration = Duration::from_millis(10);

/// Whether `record` is an end of a migration under way (see the module docs).
pub fn is_migrating(record: &VmmRecord) -> bool {
    record.state == VmmState::Migrating && record.migration.is_some()
}

/// Whether `instance` gives the verdict on the migration `record` is an end of: *switched*
/// or *aborted* (see the definitions). The reconcile watches the Instance until it does.
pub fn verdict_given(record: &VmmRecord, instance: &InstanceView) -> bool {
    let Some(migration) = record.migration.as_ref() else {
        return true;
    };
    let (source, target) = match migration.status.role {
        MigrationRole::Source => (&record.name, &migration.peer_vmm),
        MigrationRole::Target => (&migration.peer_vmm, &record.name),
    };
    let switched = instance.active_vmm.as_ref() == Some(target);
    let aborted = instance.active_vmm.as_ref() == Some(source)
        && instance.target_vmm.as_ref() != Some(target);
    switched || aborted
}

/// Whether the record waits for the Instance's verdict (and so the reconcile reads it).
pub fn awaits_verdict(record: &VmmRecord) -> bool {
    is_migrating(record)
        && record
            .migration
            .as_ref()
            .is_some_and(|m| m.status.phase == VmmMigrationPhase::Ready)
}

/// One end's migration status.
pub fn migration_status(
    migration: &str,
    role: MigrationRole,
    phase: VmmMigrationPhase,
    reason: Option<Reason>,
    message: impl Into<String>,
) -> VmmMigrationStatus {
    VmmMigrationStatus {
        migration: migration.to_string(),
        role,
        phase,
        progress: Default::default(),
        reason,
        message: message.into(),
        timings: Default::default(),
    }
}

/// The record after `previous` for a decision taken by a transfer task (outside `plan`): the
/// generation rises by one; the migration end moves to `phase`, keeping its progress.
pub fn advance(
    previous: &VmmRecord,
    state: VmmState,
    reason: Reason,
    message: impl Into<String>,
    migration: MigrationRecord,
    now: Timestamp,
) -> VmmRecord {
    let mut next = previous.clone();
    next.state_generation = previous.state_generation + 1;
    if previous.state != state {
        next.state_since = now;
    }
    next.state = state;
    next.reason = Some(reason);
    next.message = message.into();
    next.migration = Some(migration);
    next
}

/// The record after `previous` once its end of the migration is `Ready` (the source paused
/// for the last round, or the target holding the whole guest): it waits for the verdict.
pub fn ready(
    previous: &VmmRecord,
    migration: &MigrationRecord,
    message: &str,
    now: Timestamp,
) -> VmmRecord {
    let ready = moved(migration, VmmMigrationPhase::Ready, None, "");
    advance(
        previous,
        VmmState::Migrating,
        Reason::Switching,
        message,
        ready,
        now,
    )
}

/// The migration end of `previous` moved to `phase` (with `reason` and `message`).
pub fn moved(
    previous: &MigrationRecord,
    phase: VmmMigrationPhase,
    reason: Option<Reason>,
    message: impl Into<String>,
) -> MigrationRecord {
    let mut next = previous.clone();
    next.status.phase = phase;
    next.status.reason = reason;
    next.status.message = message.into();
    next
}

/// A target Vmm that was accepted: create the receiving VMM, record the transfer, start it.
pub fn plan_receive(input: &PlanInput, previous: &VmmRecord, from: &MigrateFrom) -> Plan {
    let mut decision = Decision::new(
        VmmState::Migrating,
        Reason::Transferring,
        format!("receiving the guest from {} on {}", from.vmm, from.sled),
    );
    decision.migration = Some(MigrationRecord {
        status: migration_status(
            &from.migration,
            MigrationRole::Target,
            VmmMigrationPhase::Transferring,
            Some(Reason::Transferring),
            "",
        ),
        peer_vmm: from.vmm.clone(),
    });
    Plan {
        machine: Some(MachineAction::CreateReceiving),
        record: Some(record(input, Some(previous), decision)),
        start_transfer: true,
        ..Plan::default()
    }
}

/// The target's transfer broke: destroy the receiving VMM, report `Failed`/`TransferFailed`.
pub fn fail_target(input: &PlanInput, previous: &VmmRecord, message: &str) -> Plan {
    let mut decision = Decision::new(VmmState::Failed, Reason::TransferFailed, message);
    decision.holds = false;
    decision.migration = previous.migration.as_ref().map(|m| {
        moved(
            m,
            VmmMigrationPhase::Failed,
            Some(Reason::TransferFailed),
            message,
        )
    });
    Plan {
        machine: input.machine.map(|_| MachineAction::Destroy),
        record: Some(record(input, Some(previous), decision)),
        events: vec![warning(Reason::TransferFailed, message)],
        cancel_transfer: input.migration.transfer_running,
        ..Plan::default()
    }
}

/// A migrating Vmm (see the module docs) that is not being deleted. `None`: a source whose
/// VMM is gone from the machine, which the plain lifecycle reports (killed or missing).
pub fn plan_migrating(input: &PlanInput, previous: &VmmRecord) -> Option<Plan> {
    let migration = previous.migration.as_ref()?;
    if input.machine.is_none() {
        return match migration.status.role {
            MigrationRole::Source => None,
            MigrationRole::Target => Some(fail_target(
                input,
                previous,
                "the receiving VMM is gone from the sled",
            )),
        };
    }
    Some(plan_end(input, previous, migration))
}

fn plan_end(input: &PlanInput, previous: &VmmRecord, migration: &MigrationRecord) -> Plan {
    let name = &input.vmm.name;
    let running = input.migration.transfer_running;
    let instance = input.migration.instance.as_ref();
    let paused = input.machine.map(|m| m.state) == Some(VmmRunState::Paused);
    let waiting = Plan {
        requeue: Some(VERDICT_POLL),
        ..Plan::default()
    };
    match (migration.status.role, migration.status.phase) {
        (MigrationRole::Target, VmmMigrationPhase::Transferring) if running => Plan::default(),
        (MigrationRole::Target, VmmMigrationPhase::Transferring) => fail_target(
            input,
            previous,
            "the transfer broke (the agent stopped during it)",
        ),
        (MigrationRole::Target, VmmMigrationPhase::Failed) => {
            let message = if migration.status.message.is_empty() {
                "the transfer broke"
            } else {
                migration.status.message.as_str()
            };
            fail_target(input, previous, message)
        }
        (MigrationRole::Target, VmmMigrationPhase::Ready) => {
            let switched = instance.is_some_and(|i| i.active_vmm.as_deref() == Some(name));
            if !switched {
                return waiting;
            }
            let Some(machine) = input.machine else {
                return Plan::default();
            };
            let mut decision = Decision::new(VmmState::Running, Reason::VmmRunning, "");
            decision.booted_at = Some(input.now);
            decision.migration = Some(moved(migration, VmmMigrationPhase::Completed, None, ""));
            Plan {
                machine: (machine.state != VmmRunState::Running).then_some(MachineAction::Resume),
                record: Some(record(input, Some(previous), decision)),
                ..Plan::default()
            }
        }
        (MigrationRole::Source, VmmMigrationPhase::Transferring) if running => Plan::default(),
        (MigrationRole::Source, VmmMigrationPhase::Transferring) => {
            // No `Ready` was journaled, so the target never got `done` and can never run the
            // guest: it runs on here. A machine that moves guests itself may have paused it
            // for the last round before the agent stopped; resume it then.
            let message = "the transfer broke (the agent stopped during it); the guest runs on";
            let mut decision = Decision::new(VmmState::Running, Reason::TransferFailed, message);
            decision.migration = Some(moved(
                migration,
                VmmMigrationPhase::Failed,
                Some(Reason::TransferFailed),
                message,
            ));
            Plan {
                machine: paused.then_some(MachineAction::Resume),
                record: Some(record(input, Some(previous), decision)),
                events: vec![warning(Reason::TransferFailed, message)],
                ..Plan::default()
            }
        }
        (MigrationRole::Source, VmmMigrationPhase::Ready) => {
            plan_source_ready(input, previous, migration)
        }
        _ => Plan::default(),
    }
}

/// A source that is `Ready` (paused for the last round): resume on an abort, stay paused on
/// the switch until torn down, and wait for the verdict otherwise.
fn plan_source_ready(input: &PlanInput, previous: &VmmRecord, migration: &MigrationRecord) -> Plan {
    let name = &input.vmm.name;
    let instance = input.migration.instance.as_ref();
    let Some(machine) = input.machine else {
        return Plan::default();
    };
    let aborted = instance.is_some_and(|i| {
        i.active_vmm.as_deref() == Some(name)
            && i.target_vmm.as_deref() != Some(migration.peer_vmm.as_str())
    });
    let switched = instance.is_some_and(|i| i.active_vmm.as_ref().is_some_and(|a| a != name));
    if aborted {
        let message = "the migration was aborted; the guest runs here again";
        let mut decision = Decision::new(VmmState::Running, Reason::VmmRunning, message);
        decision.migration = Some(moved(migration, VmmMigrationPhase::Aborted, None, message));
        return Plan {
            machine: (machine.state != VmmRunState::Running).then_some(MachineAction::Resume),
            record: Some(record(input, Some(previous), decision)),
            ..Plan::default()
        };
    }
    if switched {
        let message = "the guest left for the target; paused until torn down";
        let mut decision = Decision::new(VmmState::Migrating, Reason::Switching, message);
        decision.migration = Some(moved(
            migration,
            VmmMigrationPhase::Completed,
            None,
            message,
        ));
        return Plan {
            machine: (machine.state == VmmRunState::Running).then_some(MachineAction::Pause),
            record: Some(record(input, Some(previous), decision)),
            ..Plan::default()
        };
    }
    // Ready means the guest stopped for good unless aborted: keep it paused (an agent that
    // stopped between journaling and pausing pauses it now).
    Plan {
        machine: (machine.state == VmmRunState::Running).then_some(MachineAction::Pause),
        requeue: Some(VERDICT_POLL),
        ..Plan::default()
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
