//! The instance controller's part of a live migration: start an admitted Migration, and decide
//! its outcome — the *switch* or the *abort* (docs/migration.md, "One decision point"). Pure,
//! like the rest of the instance controller's plan (`plan.rs`, `planning.rs`). How an outcome
//! is recorded ([`decide`]) and which Migration starts next ([`oldest_admitted`]) serve the
//! restart migrations too (`restart.rs`, which carries out `mode: Restart`).
//!
//! # Definitions
//! - A Migration is *admitted* if (and only if) the migration controller moved it past
//!   `Pending` and it is not final.
//! - A Migration is *decided* if (and only if) `status.lastMigration` names it: its outcome is
//!   written and nothing here acts on it again.
//! - The target is *ready* if (and only if) its agent reports `status.migration.phase = Ready`:
//!   the source has paused the guest and the target holds all of it.
//!
//! # Invariants
//! - The switch (`activeVmm := target`, `sled := target sled`, `locationGeneration + 1`) and the
//!   abort (`targetVmm := none`) are written in one status write each, conditional on the
//!   Instance's resourceVersion, and each records `lastMigration`: a migration is decided once.
//! - The switch happens only while the target is ready, no abort was asked for, and the source
//!   is still the active Vmm.
//! - A target is named (`targetVmm`, `migration`) before it is created, as every Vmm is.
//! - At most one migration runs per instance: a new one starts only when no target is named.
//!
//! # Not responsible for
//! Admission, limits, timeouts and the Migration's status (the migration controller), moving
//! the guest (the node-agents), deleting the Vmm left behind (`plan_abandoned` deletes every
//! Vmm the status no longer names).

use corral_crds::{
    ConditionStatus, InstanceConditionType as Cond, InstanceState, MigrateFrom, Migration,
    MigrationMode, MigrationOutcome, MigrationPhase, Reason, Vmm, VmmMigrationPhase, condition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use corral_client::events::EventType;

use super::planning::{Action, Place, PlaceRequest, Planner};
use crate::scheduler::{Placement, Rejections};

/// Starts an admitted live migration, follows the one under way, or decides its outcome. A
/// restart (a Migration named without a target) is `restart.rs`'s.
pub(super) fn plan_migration(planner: &mut Planner<'_>, place: &mut Place<'_>) {
    let status = &planner.plan.status;
    match (&status.migration, &status.target_vmm) {
        (Some(_), Some(_)) => follow(planner),
        (None, _) => start(planner, place),
        (Some(_), None) => {}
    }
}

/// The Migration `name` of this instance, if the cache has it.
pub(super) fn find<'a>(planner: &Planner<'a>, name: &str) -> Option<&'a Migration> {
    planner
        .observed
        .migrations
        .iter()
        .find(|m| m.name_any() == name)
        .map(|m| m.as_ref())
}

/// A migration is under way: switch, abort, or show its progress.
fn follow(planner: &mut Planner<'_>) {
    let observed = planner.observed;
    let name = planner.plan.status.migration.clone().unwrap_or_default();
    let Some(target_name) = planner.plan.status.target_vmm.clone() else {
        return;
    };
    let migration = find(planner, &name);
    let target = observed.vmms.iter().find(|v| v.name_any() == target_name);
    if let Some((phase, reason, message)) = why_abort(planner, &name, &target_name, migration) {
        return abort(planner, &name, &target_name, phase, reason, message);
    }
    let ready = target
        .and_then(|vmm| vmm.status.as_ref()?.migration.as_ref())
        .is_some_and(|m| m.migration == name && m.phase == VmmMigrationPhase::Ready);
    if ready {
        switch(planner, &name, &target_name);
        return;
    }
    show_progress(planner, &name, &target_name, target.map(|t| t.as_ref()));
}

/// Why the migration must end without moving the instance, if it must. A target named but
/// never created is created again instead.
fn why_abort(
    planner: &mut Planner<'_>,
    name: &str,
    target_name: &str,
    migration: Option<&Migration>,
) -> Option<(MigrationPhase, Reason, String)> {
    let observed = planner.observed;
    let target = observed.vmms.iter().find(|v| v.name_any() == target_name);
    let source_active = planner.plan.status.active_vmm.is_some()
        && observed
            .vmms
            .iter()
            .any(|v| Some(v.name_any()) == planner.plan.status.active_vmm);
    if let Some(outcome) = migration.and_then(asked_outcome) {
        Some(outcome)
    } else if migration.is_none() {
        // The executor reads the Migration from the API before planning on its absence.
        Some((
            MigrationPhase::Cancelled,
            Reason::MigrationCancelled,
            format!("Migration {name} was deleted"),
        ))
    } else if planner.plan.status.active_vmm.is_none() || !source_active {
        Some((
            MigrationPhase::Failed,
            Reason::InstanceNotRunning,
            "the source VMM ended during the migration".to_string(),
        ))
    } else if !observed.instance.spec.should_run(&planner.plan.status)
        || observed.instance.metadata.deletion_timestamp.is_some()
    {
        Some((
            MigrationPhase::Cancelled,
            Reason::InstanceNotRunning,
            "the instance is stopping".to_string(),
        ))
    } else {
        match target {
            Some(vmm) => {
                let status = vmm.status.clone().unwrap_or_default();
                let ended = vmm.metadata.deletion_timestamp.is_some() || vmm.has_ended();
                ended.then(|| {
                    let why = status
                        .migration
                        .as_ref()
                        .map(|m| m.message.clone())
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| status.message.clone());
                    (
                        MigrationPhase::Failed,
                        status.reason.unwrap_or(Reason::TransferFailed),
                        format!("target VMM {target_name} ended: {why}"),
                    )
                })
            }
            None if observed.target_in_flight => None,
            None => {
                // Seen by the migration controller, now gone: it ended. Never seen: it was
                // named but not created (the controller stopped in between): create it.
                let seen = migration
                    .and_then(|m| m.status.as_ref()?.target_vmm.clone())
                    .is_some_and(|t| t == target_name);
                if seen {
                    Some((
                        MigrationPhase::Failed,
                        Reason::TransferFailed,
                        format!("target VMM {target_name} disappeared"),
                    ))
                } else {
                    recreate_target(planner, name, target_name);
                    None
                }
            }
        }
    }
}

/// Ends the migration without moving the instance.
fn abort(
    planner: &mut Planner<'_>,
    name: &str,
    target_name: &str,
    phase: MigrationPhase,
    reason: Reason,
    message: String,
) {
    decide(planner, name, phase, reason, message);
    planner.set(
        Cond::Migrating,
        ConditionStatus::False,
        reason,
        &format!("migration {name} ended: {phase}"),
    );
    planner.plan.event(EventType::Warning,
        if phase == MigrationPhase::Cancelled {
            Reason::MigrationCancelled
        } else {
            Reason::MigrationFailed
        },
        format!("migration {name} to VMM {target_name} aborted ({reason}); the instance stays where it runs"),
    );
}

/// The migration goes on: `Migrating`, and the `Migrating` condition with its phase.
fn show_progress(planner: &mut Planner<'_>, name: &str, target_name: &str, target: Option<&Vmm>) {
    planner.plan.status.state = Some(InstanceState::Migrating);
    let target_sled = target.map(|v| v.spec.sled.clone()).unwrap_or_default();
    let message = match target.and_then(|v| v.status.as_ref()?.migration.as_ref()) {
        Some(m) => format!(
            "migration {name}: moving to {target_sled}, round {}, {}%",
            m.progress.round, m.progress.percent
        ),
        None => format!("migration {name}: target VMM {target_name} is starting"),
    };
    // Progress is the Migration's to show; the condition changes only with the phase.
    let phase_reason = if target
        .and_then(|v| v.status.as_ref()?.migration.as_ref())
        .is_some_and(|m| m.phase == VmmMigrationPhase::Transferring)
    {
        Reason::Transferring
    } else {
        Reason::MigrationStarted
    };
    if condition::find(&planner.plan.status.conditions, Cond::Migrating)
        .is_none_or(|c| c.status != ConditionStatus::True || c.reason != phase_reason)
    {
        planner.set(
            Cond::Migrating,
            ConditionStatus::True,
            phase_reason,
            &message,
        );
    }
}

/// The target holds the whole guest: it becomes the instance.
fn switch(planner: &mut Planner<'_>, name: &str, target_name: &str) {
    let target_sled = planner
        .observed
        .vmms
        .iter()
        .find(|v| v.name_any() == target_name)
        .map(|v| v.spec.sled.clone())
        .unwrap_or_default();
    let source_sled = planner.plan.status.sled.clone().unwrap_or_default();
    let source = planner.plan.status.active_vmm.clone().unwrap_or_default();
    let message =
        format!("moved from {source_sled} (VMM {source}) to {target_sled} (VMM {target_name})");
    decide(
        planner,
        name,
        MigrationPhase::Succeeded,
        Reason::MigrationSucceeded,
        message.clone(),
    );
    let status = &mut planner.plan.status;
    status.active_vmm = Some(target_name.to_string());
    status.sled = Some(target_sled);
    status.location_generation += 1;
    status.state = Some(InstanceState::Migrating);
    planner.set(
        Cond::Migrating,
        ConditionStatus::False,
        Reason::MigrationSucceeded,
        &format!("migration {name}: {message}"),
    );
    planner.plan.event(
        EventType::Normal,
        Reason::MigrationSucceeded,
        format!("migration {name}: {message}"),
    );
}

/// The outcome an abort the migration controller asked for gives, if it asked.
pub(super) fn asked_outcome(migration: &Migration) -> Option<(MigrationPhase, Reason, String)> {
    let asked = migration.status.as_ref()?.abort.clone()?;
    let phase = if asked.reason == Reason::MigrationCancelled {
        MigrationPhase::Cancelled
    } else {
        MigrationPhase::Failed
    };
    Some((phase, asked.reason, asked.message))
}

/// Records the outcome and forgets the migration.
pub(super) fn decide(
    planner: &mut Planner<'_>,
    name: &str,
    phase: MigrationPhase,
    reason: Reason,
    message: String,
) {
    planner.plan.status.last_migration = Some(MigrationOutcome {
        name: name.to_string(),
        phase,
        reason: Some(reason),
        message,
        target_vmm: planner.plan.status.target_vmm.clone(),
        at: Time(planner.observed.now),
    });
    planner.plan.status.migration = None;
    planner.plan.status.target_vmm = None;
    planner.plan.status.target_sled = None;
}

/// The status names a target that was never created: create it, as the status says.
fn recreate_target(planner: &mut Planner<'_>, name: &str, target_name: &str) {
    let (Some(source), Some(source_sled)) = (
        planner.plan.status.active_vmm.clone(),
        planner.plan.status.sled.clone(),
    ) else {
        return;
    };
    let Some(target_sled) = planner.plan.status.target_sled.clone() else {
        return;
    };
    planner.plan.act(Action::CreateVmm {
        name: target_name.to_string(),
        sled: target_sled,
        migrate_from: Some(MigrateFrom {
            vmm: source,
            sled: source_sled,
            migration: name.to_string(),
        }),
    });
}

/// No migration under way: start the oldest admitted, undecided Migration of the instance if
/// it is live.
fn start(planner: &mut Planner<'_>, place: &mut Place<'_>) {
    let observed = planner.observed;
    let Some(migration) = oldest_admitted(planner).filter(|m| m.spec.mode == MigrationMode::Live)
    else {
        return;
    };
    let name = migration.name_any();
    let asked_abort = asked_outcome(migration);
    let running = planner.plan.status.state == Some(InstanceState::Running)
        && observed.instance.metadata.deletion_timestamp.is_none();
    let (Some(source), Some(source_sled)) = (
        planner.plan.status.active_vmm.clone(),
        planner.plan.status.sled.clone(),
    ) else {
        decide(
            planner,
            &name,
            MigrationPhase::Failed,
            Reason::InstanceNotRunning,
            "the instance does not run".to_string(),
        );
        return;
    };
    if let Some((phase, reason, message)) = asked_abort {
        decide(planner, &name, phase, reason, message);
        return;
    }
    if !running {
        // Starting, stopping or repairing: it may run again soon; the migration controller's
        // timeout ends a wait that lasts.
        return;
    }
    let serial = planner.plan.status.vmm_serial + 1;
    let target_name = format!("{}-v{serial}", observed.instance.name_any());
    let only = migration.spec.target_sled.as_deref();
    let request = PlaceRequest {
        exclude: Some(&source_sled),
        only,
        ..PlaceRequest::new(&target_name)
    };
    let placed = place(&request);
    let source = MigrateFrom {
        vmm: source,
        sled: source_sled,
        migration: name.clone(),
    };
    match placed {
        Ok(placement) => name_and_create_target(planner, source, target_name, serial, placement),
        Err(rejections) => refuse_unplaceable(planner, &name, only, &rejections),
    }
}

/// No sled (or not the `only` one) takes the instance: the migration fails before anything
/// moved.
pub(super) fn refuse_unplaceable(
    planner: &mut Planner<'_>,
    name: &str,
    only: Option<&str>,
    rejections: &Rejections,
) {
    let message = match only {
        Some(sled) => format!("target sled {sled} does not fit the instance: {rejections}"),
        None => format!("no other sled fits the instance: {rejections}"),
    };
    decide(
        planner,
        name,
        MigrationPhase::Failed,
        Reason::Unschedulable,
        message.clone(),
    );
    planner.plan.event(
        EventType::Warning,
        Reason::MigrationFailed,
        format!("migration {name}: {message}"),
    );
}

/// The oldest admitted Migration of the instance that was not decided yet.
pub(super) fn oldest_admitted<'a>(planner: &Planner<'a>) -> Option<&'a Migration> {
    let decided = planner
        .plan
        .status
        .last_migration
        .as_ref()
        .map(|m| m.name.clone());
    planner
        .observed
        .migrations
        .iter()
        .map(|m| m.as_ref())
        .filter(|m| {
            let status = m.status.as_ref();
            status.and_then(|s| s.phase) == Some(MigrationPhase::Scheduling)
                && decided.as_deref() != Some(&m.name_any())
        })
        .min_by_key(|m| (m.metadata.creation_timestamp.clone(), m.name_any()))
}

/// Names the target `target_name` on the placement's sled (status first), then creates it
/// to receive the guest from `source`.
fn name_and_create_target(
    planner: &mut Planner<'_>,
    source: MigrateFrom,
    target_name: String,
    serial: u64,
    placement: Placement,
) {
    let name = source.migration.clone();
    let status = &mut planner.plan.status;
    status.vmm_serial = serial;
    status.target_vmm = Some(target_name.clone());
    status.target_sled = Some(placement.sled.clone());
    status.migration = Some(name.clone());
    status.state = Some(InstanceState::Migrating);
    let message = format!(
        "migration {name}: VMM {target_name} to {}: {}",
        placement.sled, placement.because
    );
    planner.set(
        Cond::Migrating,
        ConditionStatus::True,
        Reason::MigrationStarted,
        &format!(
            "migration {name}: moving to {} (VMM {target_name})",
            placement.sled
        ),
    );
    planner
        .plan
        .event(EventType::Normal, Reason::MigrationStarted, message);
    planner.plan.act(Action::CreateVmm {
        name: target_name,
        sled: placement.sled,
        migrate_from: Some(source),
    });
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;
