//! The instance controller's part of a restart migration (`Migration.spec.mode: Restart`): stop
//! the instance on its sled, wait until its Vmm is gone, start it on another sled, and decide
//! the outcome (docs/migration.md, "Restart migrations"). Pure, like the rest of the
//! instance controller's plan (`plan.rs`, `planning.rs`); the outcome is recorded the way a
//! live migration's is (`migrate.rs`).
//!
//! # Definitions
//! - A restart is *under way* if (and only if) `status.migration` names a Migration and
//!   `status.targetVmm` is empty (a live migration names its target in the same write).
//! - Its *source* is the Vmm the migration controller recorded at admission
//!   (`Migration.status.sourceVmm`, on `sourceSled`).
//! - A restart is *past the stop* as soon as it is under way: the status write that names the
//!   Migration is the decision to stop the source, and nothing takes it back.
//!
//! # Invariants
//! - The instance never runs in two places, not even for a hand-off: the new Vmm is named
//!   (then created) only when no active Vmm is named, and the source stops being named only
//!   once its Vmm object is gone — the agent removes its finalizer after tearing the VMM down,
//!   or the sled-health controller releases it after a fence — as a live read confirms
//!   (`plan.rs`, `active_not_seen`).
//! - The restart's own placement never uses the source sled, and uses only the Migration's
//!   `targetSled` when it names one.
//! - Before the stop an abort leaves the instance where it runs. Past the stop a cancel changes
//!   nothing (as a cancel after a live switch); a restart that cannot place the instance away
//!   from its source ends `Failed` and starts it by the ordinary rules (another sled if one
//!   fits, else the source).
//! - The stop is no exit of the instance: no `lastExit`, no restart counted, no backoff. Of the
//!   runStrategy only "should the instance run" matters: if not, the migration fails
//!   `InstanceNotRunning`.
//!
//! # Not responsible for
//! Admission, limits and timeouts (the migration controller); tearing the VMM down (its agent);
//! naming and creating the new Vmm (`plan.rs`'s start, lent as [`StartPlaced`], so a restart's
//! Vmm is made exactly as every start's).

use corral_client::events::EventType;
use corral_crds::{
    ConditionStatus, InstanceConditionType as Cond, InstanceState, Migration, MigrationMode,
    MigrationPhase, Reason, VmmState,
};
use kube::ResourceExt;

use super::migrate::{asked_outcome, decide, find, oldest_admitted, refuse_unplaceable};
use super::planning::{Action, Place, PlaceRequest, Planner, StartPlaced};

/// Starts the oldest admitted Migration if it is a restart, or follows the restart under way.
pub(super) fn plan_restart(
    planner: &mut Planner<'_>,
    place: &mut Place<'_>,
    start_placed: StartPlaced,
) {
    let status = &planner.plan.status;
    match (&status.migration, &status.target_vmm) {
        (Some(name), None) => {
            let name = name.clone();
            follow(planner, place, start_placed, &name);
        }
        (None, _) => {
            let restart =
                oldest_admitted(planner).filter(|m| m.spec.mode == MigrationMode::Restart);
            if let Some(migration) = restart {
                start(planner, place, migration);
            }
        }
        // A live migration under way: `migrate.rs` follows it.
        (Some(_), Some(_)) => {}
    }
}

/// Whether the instance should run (and is not being deleted), as its status stands now.
fn should_run(planner: &Planner<'_>) -> bool {
    let instance = planner.observed.instance;
    instance.metadata.deletion_timestamp.is_none() && instance.spec.should_run(&planner.plan.status)
}

/// Ends the restart with `phase`: records the outcome and clears the `Migrating` condition.
fn end(
    planner: &mut Planner<'_>,
    name: &str,
    phase: MigrationPhase,
    reason: Reason,
    message: String,
) {
    let event = match phase {
        MigrationPhase::Succeeded => (EventType::Normal, Reason::MigrationSucceeded),
        MigrationPhase::Cancelled => (EventType::Normal, Reason::MigrationCancelled),
        _ => (EventType::Warning, Reason::MigrationFailed),
    };
    let text = format!("migration {name}: {message}");
    decide(planner, name, phase, reason, message);
    planner.set(Cond::Migrating, ConditionStatus::False, reason, &text);
    planner.plan.event(event.0, event.1, text);
}

/// An admitted restart: refuse it, wait for the instance to run, or decide the stop.
fn start(planner: &mut Planner<'_>, place: &mut Place<'_>, migration: &Migration) {
    let name = migration.name_any();
    if let Some((phase, reason, message)) = asked_outcome(migration) {
        return decide(planner, &name, phase, reason, message);
    }
    if !should_run(planner) {
        let message = "the instance should not run".to_string();
        return end(
            planner,
            &name,
            MigrationPhase::Failed,
            Reason::InstanceNotRunning,
            message,
        );
    }
    let status = &planner.plan.status;
    let (Some(source), Some(source_sled)) = (status.active_vmm.clone(), status.sled.clone()) else {
        let message = "the instance does not run".to_string();
        return end(
            planner,
            &name,
            MigrationPhase::Failed,
            Reason::InstanceNotRunning,
            message,
        );
    };
    if status.state != Some(InstanceState::Running) {
        // Starting or repairing: it may run soon; the migration controller's timeout ends a
        // wait that lasts.
        return;
    }
    // The room is found (and reserved under the new Vmm's name) before anything stops: a
    // restart that could only come back where it was would be downtime for nothing.
    let new_vmm = format!(
        "{}-v{}",
        planner.observed.instance.name_any(),
        status.vmm_serial + 1
    );
    let only = migration.spec.target_sled.as_deref();
    let request = PlaceRequest {
        exclude: Some(&source_sled),
        only,
        ..PlaceRequest::new(&new_vmm)
    };
    match place(&request) {
        Err(rejections) => refuse_unplaceable(planner, &name, only, &rejections),
        Ok(placement) => {
            let message = format!(
                "restart: stopping VMM {source} on {source_sled}; it starts again on {} once \
                 the VMM is gone",
                placement.sled
            );
            let status = &mut planner.plan.status;
            status.migration = Some(name.clone());
            status.state = Some(InstanceState::Stopping);
            let text = format!("migration {name}: {message}");
            planner.set(
                Cond::Migrating,
                ConditionStatus::True,
                Reason::MigrationStarted,
                &text,
            );
            planner.set(
                Cond::Running,
                ConditionStatus::False,
                Reason::ShuttingDown,
                // The words `plan.rs` uses once the delete shows: no second write for them.
                &format!("VMM {source} is being torn down"),
            );
            planner
                .plan
                .event(EventType::Normal, Reason::MigrationStarted, text);
            planner.plan.act(Action::DeleteVmm { name: source });
        }
    }
}

/// A restart past its stop: wait for the source to go, place the new Vmm, see it run.
fn follow(planner: &mut Planner<'_>, place: &mut Place<'_>, start_placed: StartPlaced, name: &str) {
    // Absent: deleted (the executor read the API before planning on its absence).
    let migration = find(planner, name);
    if !should_run(planner) {
        let message = "the instance stopped or is being deleted during the restart".to_string();
        return end(
            planner,
            name,
            MigrationPhase::Failed,
            Reason::InstanceNotRunning,
            message,
        );
    }
    let recorded = migration.and_then(|m| m.status.as_ref());
    let source = recorded.and_then(|s| s.source_vmm.clone());
    let source_sled = recorded.and_then(|s| s.source_sled.clone());
    match planner.plan.status.active_vmm.clone() {
        Some(active) if Some(&active) == source.as_ref() => stopping(planner, &active),
        Some(active) => starting(planner, name, &active, migration),
        None => place_anew(planner, place, start_placed, name, migration, source_sled),
    }
}

/// The source is still named: it is being torn down (or the delete the status decided was not
/// made yet: make it).
fn stopping(planner: &mut Planner<'_>, source: &str) {
    let observed = planner.observed;
    let undeleted = observed
        .vmms
        .iter()
        .any(|v| v.name_any() == source && v.metadata.deletion_timestamp.is_none());
    if undeleted {
        planner.plan.act(Action::DeleteVmm {
            name: source.to_string(),
        });
    }
    planner.plan.status.state = Some(InstanceState::Stopping);
}

/// The source is gone: place the new Vmm away from it, or give up and start the instance by
/// the ordinary rules.
fn place_anew(
    planner: &mut Planner<'_>,
    place: &mut Place<'_>,
    start_placed: StartPlaced,
    name: &str,
    migration: Option<&Migration>,
    source_sled: Option<String>,
) {
    let serial = planner.plan.status.vmm_serial + 1;
    let new_vmm = format!("{}-v{serial}", planner.observed.instance.name_any());
    let (phase, reason, message) = match migration {
        None => (
            MigrationPhase::Cancelled,
            Reason::MigrationCancelled,
            format!("Migration {name} was deleted after the stop"),
        ),
        Some(migration) => {
            let only = migration.spec.target_sled.as_deref();
            let request = PlaceRequest {
                exclude: source_sled.as_deref(),
                only,
                ..PlaceRequest::new(&new_vmm)
            };
            match place(&request) {
                Ok(placement) => return start_placed(planner, new_vmm, serial, placement),
                Err(rejections) => (
                    MigrationPhase::Failed,
                    Reason::Unschedulable,
                    match only {
                        Some(sled) => {
                            format!("target sled {sled} no longer fits the instance: {rejections}")
                        }
                        None => format!("no other sled fits the instance any more: {rejections}"),
                    },
                ),
            }
        }
    };
    let message = format!("{message}; it starts again by the ordinary rules");
    end(planner, name, phase, reason, message);
    // Elsewhere if possible, else on the source. If nothing fits at all, the ordinary start
    // that follows says so and tries again.
    let request = PlaceRequest {
        avoid: source_sled.as_deref(),
        ..PlaceRequest::new(&new_vmm)
    };
    if let Ok(placement) = place(&request) {
        start_placed(planner, new_vmm, serial, placement);
    }
}

/// The new Vmm is the instance: the restart succeeds when it runs. A cancel no longer counts;
/// another abort (a timeout) ends the migration `Failed` while the new Vmm goes on starting.
fn starting(planner: &mut Planner<'_>, name: &str, active: &str, migration: Option<&Migration>) {
    let observed = planner.observed;
    let vmm = observed.vmms.iter().find(|v| v.name_any() == active);
    let sled = planner.plan.status.sled.clone().unwrap_or_default();
    let runs = vmm.is_some_and(|v| {
        v.metadata.deletion_timestamp.is_none()
            && v.status.as_ref().and_then(|s| s.state) == Some(VmmState::Running)
    });
    let recorded = migration.and_then(|m| m.status.as_ref());
    if runs {
        let from = recorded
            .and_then(|s| s.source_sled.clone())
            .unwrap_or_default();
        let source = recorded
            .and_then(|s| s.source_vmm.clone())
            .unwrap_or_default();
        let message = format!("restarted from {from} (VMM {source}) on {sled} (VMM {active})");
        return end(
            planner,
            name,
            MigrationPhase::Succeeded,
            Reason::MigrationSucceeded,
            message,
        );
    }
    let abort = recorded
        .and_then(|s| s.abort.as_ref())
        .filter(|abort| abort.reason != Reason::MigrationCancelled);
    match (migration, abort) {
        (None, _) => {
            let message =
                format!("Migration {name} was deleted; VMM {active} goes on starting on {sled}");
            end(
                planner,
                name,
                MigrationPhase::Cancelled,
                Reason::MigrationCancelled,
                message,
            );
        }
        (Some(_), Some(abort)) => {
            let message = format!("{}; VMM {active} goes on starting on {sled}", abort.message);
            end(planner, name, MigrationPhase::Failed, abort.reason, message);
        }
        (Some(_), None) => {
            let text = format!("migration {name}: restart: VMM {active} starts on {sled}");
            planner.set(
                Cond::Migrating,
                ConditionStatus::True,
                Reason::MigrationStarted,
                &text,
            );
        }
    }
}

#[cfg(test)]
#[path = "restart_tests.rs"]
mod tests;
