use std::sync::Arc;

use corral_crds::{
    Instance, InstanceSpec, MigrationAbort, MigrationRole, MigrationSpec, MigrationStatus,
    RunStrategy, TransferProgress, Vmm, VmmMigrationStatus, VmmSpec, VmmState, VmmStatus,
};
use jiff::Timestamp;

use super::super::plan::plan;
use super::super::planning::{Observed, Plan};
use super::*;
use crate::kit::Step;
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
        timings: Default::default(),
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
        sleds: &[],
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
    plan.steps
        .iter()
        .map(|step| match step {
            Step::Event(event) => format!("Event({})", event.reason),
            Step::Act(Action::CreateVmm {
                name,
                sled,
                migrate_from,
            }) => format!(
                "Create({name}@{sled}{})",
                migrate_from
                    .as_ref()
                    .map(|m| format!(" from {}@{} for {}", m.vmm, m.sled, m.migration))
                    .unwrap_or_default()
            ),
            Step::Act(Action::DeleteVmm { name }) => format!("Delete({name})"),
            Step::Act(other) => format!("{other:?}"),
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
    assert!(pending.steps.is_empty(), "{:?}", kinds(&pending));

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
    assert!(again.steps.is_empty(), "{:?}", kinds(&again));
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
    assert!(again.steps.is_empty(), "{:?}", kinds(&again));
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
