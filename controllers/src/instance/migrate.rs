//! The instance controller's part of a live migration: start an admitted Migration, and decide
//! its outcome — the *switch* or the *abort* (docs/migration.md, "One decision point"). Pure,
//! like the rest of [`super::plan`].
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
    MigrationOutcome, MigrationPhase, Reason, VmmMigrationPhase, VmmState, condition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::plan::{Action, Place, PlaceRequest, Planner, Severity, should_run};

/// Starts an admitted migration, follows the one under way, or decides its outcome.
pub(super) fn plan_migration(planner: &mut Planner<'_>, place: &mut Place<'_>) {
    if planner.status.migration.is_some() {
        follow(planner);
    } else {
        start(planner, place);
    }
}

/// The Migration `name` of this instance, if the cache has it.
fn find<'a>(planner: &Planner<'a>, name: &str) -> Option<&'a Migration> {
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
    let name = planner.status.migration.clone().unwrap_or_default();
    let Some(target_name) = planner.status.target_vmm.clone() else {
        // Named without a target cannot happen through this module; clear it.
        planner.status.migration = None;
        return;
    };
    let migration = find(planner, &name);
    let target = observed.vmms.iter().find(|v| v.name_any() == target_name);
    let source_active = planner.status.active_vmm.is_some()
        && observed
            .vmms
            .iter()
            .any(|v| Some(v.name_any()) == planner.status.active_vmm);

    // Why the migration must end without moving the instance, if it must.
    let abort = if let Some(asked) = migration.and_then(|m| m.status.as_ref()?.abort.clone()) {
        let phase = if asked.reason == Reason::MigrationCancelled {
            MigrationPhase::Cancelled
        } else {
            MigrationPhase::Failed
        };
        Some((phase, asked.reason, asked.message))
    } else if migration.is_none() {
        // The executor reads the Migration from the API before planning on its absence.
        Some((
            MigrationPhase::Cancelled,
            Reason::MigrationCancelled,
            format!("Migration {name} was deleted"),
        ))
    } else if planner.status.active_vmm.is_none() || !source_active {
        Some((
            MigrationPhase::Failed,
            Reason::InstanceNotRunning,
            "the source VMM ended during the migration".to_string(),
        ))
    } else if !should_run(observed.instance, &planner.status)
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
                let ended = vmm.metadata.deletion_timestamp.is_some()
                    || status.state.is_some_and(VmmState::is_final);
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
                    recreate_target(planner, &name, &target_name);
                    None
                }
            }
        }
    };
    if let Some((phase, reason, message)) = abort {
        decide(planner, &name, phase, reason, message);
        planner.set(
            Cond::Migrating,
            ConditionStatus::False,
            reason,
            &format!("migration {name} ended: {phase}"),
        );
        planner.event(
            Severity::Warning,
            if phase == MigrationPhase::Cancelled {
                Reason::MigrationCancelled
            } else {
                Reason::MigrationFailed
            },
            format!("migration {name} to VMM {target_name} aborted ({reason}); the instance stays where it runs"),
        );
        return;
    }
    let ready = target
        .and_then(|vmm| vmm.status.as_ref()?.migration.as_ref())
        .is_some_and(|m| m.migration == name && m.phase == VmmMigrationPhase::Ready);
    if ready {
        switch(planner, &name, &target_name);
        return;
    }
    planner.status.state = Some(InstanceState::Migrating);
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
    if condition::find(&planner.status.conditions, Cond::Migrating)
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
    let source_sled = planner.status.sled.clone().unwrap_or_default();
    let source = planner.status.active_vmm.clone().unwrap_or_default();
    let message =
        format!("moved from {source_sled} (VMM {source}) to {target_sled} (VMM {target_name})");
    decide(
        planner,
        name,
        MigrationPhase::Succeeded,
        Reason::MigrationSucceeded,
        message.clone(),
    );
    let status = &mut planner.status;
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
    planner.event(
        Severity::Normal,
        Reason::MigrationSucceeded,
        format!("migration {name}: {message}"),
    );
}

/// Records the outcome and forgets the migration.
fn decide(
    planner: &mut Planner<'_>,
    name: &str,
    phase: MigrationPhase,
    reason: Reason,
    message: String,
) {
    planner.status.last_migration = Some(MigrationOutcome {
        name: name.to_string(),
        phase,
        reason: Some(reason),
        message,
        target_vmm: planner.status.target_vmm.clone(),
        at: Time(planner.observed.now),
    });
    planner.status.migration = None;
    planner.status.target_vmm = None;
    planner.status.target_sled = None;
}

/// The status names a target that was never created: create it, as the status says.
fn recreate_target(planner: &mut Planner<'_>, name: &str, target_name: &str) {
    let (Some(source), Some(source_sled)) = (
        planner.status.active_vmm.clone(),
        planner.status.sled.clone(),
    ) else {
        return;
    };
    let Some(target_sled) = planner.status.target_sled.clone() else {
        return;
    };
    planner.actions.push(Action::CreateVmm {
        name: target_name.to_string(),
        sled: target_sled,
        migrate_from: Some(MigrateFrom {
            vmm: source,
            sled: source_sled,
            migration: name.to_string(),
        }),
    });
}

/// No migration under way: start the oldest admitted, undecided Migration of the instance.
fn start(planner: &mut Planner<'_>, place: &mut Place<'_>) {
    let observed = planner.observed;
    let decided = planner
        .status
        .last_migration
        .as_ref()
        .map(|m| m.name.clone());
    let mut admitted: Vec<&Migration> = observed
        .migrations
        .iter()
        .map(|m| m.as_ref())
        .filter(|m| {
            let status = m.status.as_ref();
            status.and_then(|s| s.phase) == Some(MigrationPhase::Scheduling)
                && decided.as_deref() != Some(&m.name_any())
        })
        .collect();
    admitted.sort_by_key(|m| (m.metadata.creation_timestamp.clone(), m.name_any()));
    let Some(migration) = admitted.first() else {
        return;
    };
    let name = migration.name_any();
    let asked_abort = migration.status.as_ref().and_then(|s| s.abort.clone());
    let running = planner.status.state == Some(InstanceState::Running)
        && observed.instance.metadata.deletion_timestamp.is_none();
    let (Some(source), Some(source_sled)) = (
        planner.status.active_vmm.clone(),
        planner.status.sled.clone(),
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
    if let Some(asked) = asked_abort {
        let phase = if asked.reason == Reason::MigrationCancelled {
            MigrationPhase::Cancelled
        } else {
            MigrationPhase::Failed
        };
        decide(planner, &name, phase, asked.reason, asked.message);
        return;
    }
    if !running {
        // Starting, stopping or repairing: it may run again soon; the migration controller's
        // timeout ends a wait that lasts.
        return;
    }
    let serial = planner.status.vmm_serial + 1;
    let target_name = format!("{}-v{serial}", observed.instance.name_any());
    let only = migration.spec.target_sled.as_deref();
    let request = PlaceRequest {
        exclude: Some(&source_sled),
        only,
        ..PlaceRequest::new(&target_name)
    };
    match place(&request) {
        Ok(placement) => {
            let status = &mut planner.status;
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
            planner.event(Severity::Normal, Reason::MigrationStarted, message);
            planner.actions.push(Action::CreateVmm {
                name: target_name,
                sled: placement.sled,
                migrate_from: Some(MigrateFrom {
                    vmm: source,
                    sled: source_sled,
                    migration: name,
                }),
            });
        }
        Err(rejections) => {
            let message = match only {
                Some(sled) => format!("target sled {sled} does not fit the instance: {rejections}"),
                None => format!("no other sled fits the instance: {rejections}"),
            };
            decide(
                planner,
                &name,
                MigrationPhase::Failed,
                Reason::Unschedulable,
                message.clone(),
            );
            planner.event(
                Severity::Warning,
                Reason::MigrationFailed,
                format!("migration {name}: {message}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use corral_crds::{
        Instance, InstanceSpec, MigrationAbort, MigrationRole, MigrationSpec, MigrationStatus,
        RunStrategy, TransferProgress, Vmm, VmmMigrationStatus, VmmSpec, VmmStatus,
    };
    use jiff::Timestamp;

    use super::super::plan::{Observed, Plan, plan};
    use super::*;
    use crate::scheduler::{Placement, Rejections};

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// `web`, running as `web-v1` on sled-1.
    fn running() -> Instance {
        let mut instance = Instance::new(
            "web",
            InstanceSpec {
                cpus: 2,
                memory_mib: 1024,
                image: "debian".into(),
                run_strategy: RunStrategy::Always,
                ..Default::default()
            },
        );
        instance.metadata.namespace = Some("default".into());
        instance.metadata.generation = Some(1);
        instance.metadata.finalizers = Some(vec![corral_crds::INSTANCE_FINALIZER.into()]);
        let mut status = corral_crds::InstanceStatus {
            state: Some(InstanceState::Running),
            sled: Some("sled-1".into()),
            active_vmm: Some("web-v1".into()),
            location_generation: 1,
            vmm_serial: 1,
            observed_generation: 1,
            ..Default::default()
        };
        condition::set(
            &mut status.conditions,
            Cond::Running,
            ConditionStatus::True,
            Reason::VmmRunning,
            "VMM web-v1 runs on sled-1",
            now(),
        );
        condition::set(
            &mut status.conditions,
            Cond::Diverged,
            ConditionStatus::False,
            Reason::Converged,
            "",
            now(),
        );
        instance.status = Some(status);
        // Whatever else the controller keeps for a running instance.
        let settled = run(&instance, &[source()], &[]).status;
        instance.status = Some(settled);
        instance
    }

    fn vmm(name: &str, sled: &str, state: VmmState) -> Vmm {
        let mut vmm = Vmm::new(
            name,
            VmmSpec {
                instance: "web".into(),
                sled: sled.into(),
                sled_epoch: 1,
                image: "debian".into(),
                ..Default::default()
            },
        );
        vmm.status = Some(VmmStatus {
            state: Some(state),
            ..Default::default()
        });
        vmm
    }

    fn source() -> Arc<Vmm> {
        Arc::new(vmm("web-v1", "sled-1", VmmState::Running))
    }

    /// The target `web-v2` on sled-2, its agent at `phase`.
    fn target(phase: Option<VmmMigrationPhase>) -> Arc<Vmm> {
        let mut target = vmm("web-v2", "sled-2", VmmState::Migrating);
        target.status.as_mut().unwrap().migration = phase.map(|phase| VmmMigrationStatus {
            migration: "move".into(),
            role: MigrationRole::Target,
            phase,
            progress: TransferProgress::default(),
            reason: None,
            message: String::new(),
        });
        Arc::new(target)
    }

    fn migration(phase: MigrationPhase, abort: Option<Reason>) -> Arc<Migration> {
        let mut migration = Migration::new(
            "move",
            MigrationSpec {
                instance: "web".into(),
                ..Default::default()
            },
        );
        migration.metadata.namespace = Some("default".into());
        migration.status = Some(MigrationStatus {
            phase: Some(phase),
            abort: abort.map(|reason| MigrationAbort {
                reason,
                message: format!("asked: {reason}"),
                at: Time(now()),
            }),
            ..Default::default()
        });
        Arc::new(migration)
    }

    /// The instance once the target is named (what `start` writes).
    fn migrating() -> Instance {
        let plan = run(
            &running(),
            &[source()],
            &[migration(MigrationPhase::Scheduling, None)],
        );
        let mut instance = running();
        instance.status = Some(plan.status);
        instance
    }

    fn run(instance: &Instance, vmms: &[Arc<Vmm>], migrations: &[Arc<Migration>]) -> Plan {
        run_placing(instance, vmms, migrations, true)
    }

    fn run_placing(
        instance: &Instance,
        vmms: &[Arc<Vmm>],
        migrations: &[Arc<Migration>],
        fits: bool,
    ) -> Plan {
        let observed = Observed {
            instance,
            vmms,
            active_in_flight: false,
            unknown_vmms: Vec::new(),
            migrations,
            target_in_flight: false,
            now: now(),
        };
        plan(&observed, &mut |request| {
            assert_eq!(request.exclude, Some("sled-1"), "the source is excluded");
            if fits {
                Ok(Placement {
                    sled: request.only.unwrap_or("sled-2").into(),
                    epoch: 1,
                    because: "test".into(),
                })
            } else {
                Err(Rejections {
                    capacity: 3,
                    ..Default::default()
                })
            }
        })
    }

    fn kinds(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Event { reason, .. } => format!("Event({reason})"),
                Action::CreateVmm {
                    name,
                    sled,
                    migrate_from,
                } => format!(
                    "Create({name}@{sled}{})",
                    migrate_from
                        .as_ref()
                        .map(|m| format!(" from {}@{} for {}", m.vmm, m.sled, m.migration))
                        .unwrap_or_default()
                ),
                Action::DeleteVmm { name } => format!("Delete({name})"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_admitted_migration_names_its_target_then_creates_it() {
        let plan = run(
            &running(),
            &[source()],
            &[migration(MigrationPhase::Scheduling, None)],
        );
        assert_eq!(
            kinds(&plan),
            [
                "WriteStatus",
                "Event(MigrationStarted)",
                "Create(web-v2@sled-2 from web-v1@sled-1 for move)"
            ]
        );
        let status = &plan.status;
        assert_eq!(status.target_vmm.as_deref(), Some("web-v2"));
        assert_eq!(status.target_sled.as_deref(), Some("sled-2"));
        assert_eq!(status.migration.as_deref(), Some("move"));
        assert_eq!(status.state, Some(InstanceState::Migrating));
        assert_eq!(status.vmm_serial, 2);
        // Still where it was until the switch.
        assert_eq!(status.active_vmm.as_deref(), Some("web-v1"));
        assert_eq!(status.location_generation, 1);
    }

    #[test]
    fn a_pending_or_decided_migration_is_not_started() {
        let pending = run(
            &running(),
            &[source()],
            &[migration(MigrationPhase::Pending, None)],
        );
        assert!(pending.actions.is_empty(), "{:?}", kinds(&pending));

        let mut decided = running();
        decided.status.as_mut().unwrap().last_migration = Some(MigrationOutcome {
            name: "move".into(),
            phase: MigrationPhase::Failed,
            reason: Some(Reason::TransferFailed),
            message: String::new(),
            target_vmm: None,
            at: Time(now()),
        });
        let again = run(
            &decided,
            &[source()],
            &[migration(MigrationPhase::Scheduling, None)],
        );
        assert!(again.actions.is_empty(), "{:?}", kinds(&again));
    }

    #[test]
    fn a_target_sled_is_honoured_and_no_room_fails_the_migration() {
        let mut wanted = (*migration(MigrationPhase::Scheduling, None)).clone();
        wanted.spec.target_sled = Some("sled-7".into());
        let plan = run(&running(), &[source()], &[Arc::new(wanted)]);
        assert_eq!(plan.status.target_sled.as_deref(), Some("sled-7"));

        let full = run_placing(
            &running(),
            &[source()],
            &[migration(MigrationPhase::Scheduling, None)],
            false,
        );
        let outcome = full.status.last_migration.as_ref().unwrap();
        assert_eq!(outcome.phase, MigrationPhase::Failed);
        assert_eq!(outcome.reason, Some(Reason::Unschedulable));
        assert!(
            outcome.message.contains("3 too little free capacity"),
            "{}",
            outcome.message
        );
        assert!(full.status.target_vmm.is_none());
        assert!(!kinds(&full).iter().any(|k| k.starts_with("Create")));
    }

    #[test]
    fn following_a_transfer_changes_nothing_but_the_phase() {
        let instance = migrating();
        let vmms = [source(), target(Some(VmmMigrationPhase::Transferring))];
        let plan = run(
            &instance,
            &vmms,
            &[migration(MigrationPhase::Transferring, None)],
        );
        assert_eq!(
            kinds(&plan),
            ["WriteStatus"],
            "the Migrating reason moves to Transferring"
        );
        let mut moved = instance.clone();
        moved.status = Some(plan.status);
        let again = run(
            &moved,
            &vmms,
            &[migration(MigrationPhase::Transferring, None)],
        );
        assert!(again.actions.is_empty(), "{:?}", kinds(&again));
        assert_eq!(again.status.state, Some(InstanceState::Migrating));
    }

    #[test]
    fn a_ready_target_becomes_the_instance_and_the_source_goes() {
        let vmms = [source(), target(Some(VmmMigrationPhase::Ready))];
        let plan = run(
            &migrating(),
            &vmms,
            &[migration(MigrationPhase::Switching, None)],
        );
        assert_eq!(
            kinds(&plan),
            ["WriteStatus", "Event(MigrationSucceeded)", "Delete(web-v1)"]
        );
        let status = &plan.status;
        assert_eq!(status.active_vmm.as_deref(), Some("web-v2"));
        assert_eq!(status.sled.as_deref(), Some("sled-2"));
        assert_eq!(status.location_generation, 2);
        assert!(status.target_vmm.is_none() && status.migration.is_none());
        let outcome = status.last_migration.as_ref().unwrap();
        assert_eq!(
            (outcome.name.as_str(), outcome.phase),
            ("move", MigrationPhase::Succeeded)
        );
        assert_eq!(outcome.target_vmm.as_deref(), Some("web-v2"));
    }

    #[test]
    fn an_abort_wins_over_a_ready_target_and_the_target_goes() {
        let vmms = [source(), target(Some(VmmMigrationPhase::Ready))];
        let asked = [migration(
            MigrationPhase::Switching,
            Some(Reason::MigrationCancelled),
        )];
        let plan = run(&migrating(), &vmms, &asked);
        assert_eq!(
            kinds(&plan),
            ["WriteStatus", "Event(MigrationCancelled)", "Delete(web-v2)"]
        );
        let status = &plan.status;
        assert_eq!(status.active_vmm.as_deref(), Some("web-v1"));
        assert_eq!(status.location_generation, 1);
        assert!(status.target_vmm.is_none() && status.target_sled.is_none());
        assert_eq!(
            status.last_migration.as_ref().unwrap().phase,
            MigrationPhase::Cancelled
        );
    }

    #[test]
    fn each_end_of_the_target_aborts_the_migration() {
        let mut failed = (*target(Some(VmmMigrationPhase::Failed))).clone();
        let status = failed.status.as_mut().unwrap();
        status.state = Some(VmmState::Failed);
        status.reason = Some(Reason::TransferFailed);
        let mut deleted = (*target(Some(VmmMigrationPhase::Transferring))).clone();
        deleted.metadata.deletion_timestamp = Some(Time(now()));
        let mut seen = (*migration(MigrationPhase::Transferring, None)).clone();
        seen.status.as_mut().unwrap().target_vmm = Some("web-v2".into());
        for (case, vmms, migrations) in [
            (
                "failed",
                vec![source(), Arc::new(failed)],
                vec![migration(MigrationPhase::Transferring, None)],
            ),
            (
                "deleted",
                vec![source(), Arc::new(deleted)],
                vec![migration(MigrationPhase::Transferring, None)],
            ),
            ("gone", vec![source()], vec![Arc::new(seen)]),
            ("migration deleted", vec![source(), target(None)], vec![]),
        ] {
            let plan = run(&migrating(), &vmms, &migrations);
            let outcome = plan.status.last_migration.as_ref().expect(case);
            assert_ne!(outcome.phase, MigrationPhase::Succeeded, "{case}");
            assert_eq!(plan.status.active_vmm.as_deref(), Some("web-v1"), "{case}");
            assert!(plan.status.target_vmm.is_none(), "{case}");
        }
    }

    #[test]
    fn a_target_named_but_never_created_is_created() {
        let plan = run(
            &migrating(),
            &[source()],
            &[migration(MigrationPhase::Scheduling, None)],
        );
        assert_eq!(
            kinds(&plan),
            ["Create(web-v2@sled-2 from web-v1@sled-1 for move)"]
        );
    }

    #[test]
    fn stopping_the_instance_cancels_its_migration() {
        let mut halted = migrating();
        halted.spec.run_strategy = RunStrategy::Halted;
        let vmms = [source(), target(Some(VmmMigrationPhase::Transferring))];
        let plan = run(
            &halted,
            &vmms,
            &[migration(MigrationPhase::Transferring, None)],
        );
        let outcome = plan.status.last_migration.as_ref().unwrap();
        assert_eq!(outcome.phase, MigrationPhase::Cancelled);
        let kinds = kinds(&plan);
        assert!(kinds.contains(&"Delete(web-v1)".to_string()), "{kinds:?}");
        assert!(kinds.contains(&"Delete(web-v2)".to_string()), "{kinds:?}");
    }
}
