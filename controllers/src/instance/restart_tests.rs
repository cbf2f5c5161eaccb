//! A restart migration, step by step, as the whole instance plan (`plan::plan`) carries it out:
//! each case is the instance's status and Vmms at one point of the restart, and what the plan
//! does there.

use std::sync::Arc;

use corral_crds::{
    Instance, InstanceSpec, InstanceStatus, MigrationAbort, MigrationMode, MigrationSpec,
    MigrationStatus, RunStrategy, Vmm, VmmSpec, VmmStatus, condition,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::super::plan::plan;
use super::super::planning::{Observed, Plan};
use super::*;
use crate::kit::Step;
use crate::scheduler::{Placement, Rejections};

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

/// `web` (`Manual`: a stop must not look like an exit it would not come back from), running as
/// `web-v1` on sled-1.
fn running() -> Instance {
    let mut instance = Instance::new(
        "web",
        InstanceSpec {
            cpus: 2,
            memory_mib: 1024,
            image: "debian".into(),
            run_strategy: RunStrategy::Manual,
            ..Default::default()
        },
    );
    instance.metadata.namespace = Some("default".into());
    instance.metadata.generation = Some(1);
    instance.metadata.finalizers = Some(vec![corral_crds::INSTANCE_FINALIZER.into()]);
    let mut status = InstanceStatus {
        state: Some(InstanceState::Running),
        sled: Some("sled-1".into()),
        active_vmm: Some("web-v1".into()),
        location_generation: 1,
        vmm_serial: 1,
        restarts: 2,
        consecutive_failures: 1,
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
    instance.status = Some(status);
    let settled = run(
        &instance,
        &[vmm("web-v1", "sled-1", VmmState::Running)],
        &[],
        Room::Anywhere,
    )
    .status;
    instance.status = Some(settled);
    instance
}

fn vmm(name: &str, sled: &str, state: VmmState) -> Arc<Vmm> {
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
    Arc::new(vmm)
}

/// `web-v1` being torn down (deleted, its agent's finalizer still on).
fn source_going() -> Arc<Vmm> {
    let mut going = (*vmm("web-v1", "sled-1", VmmState::Stopping)).clone();
    going.metadata.deletion_timestamp = Some(Time(now()));
    Arc::new(going)
}

/// The restart `move` of `web`, admitted from `web-v1` on sled-1.
fn restart(target: Option<&str>, cancel: bool, abort: Option<Reason>) -> Arc<Migration> {
    let mut migration = Migration::new(
        "move",
        MigrationSpec {
            instance: "web".into(),
            target_sled: target.map(str::to_string),
            mode: MigrationMode::Restart,
            cancel,
            ..Default::default()
        },
    );
    migration.metadata.namespace = Some("default".into());
    migration.status = Some(MigrationStatus {
        phase: Some(MigrationPhase::Scheduling),
        source_vmm: Some("web-v1".into()),
        source_sled: Some("sled-1".into()),
        abort: abort.map(|reason| MigrationAbort {
            reason,
            message: format!("asked: {reason}"),
            at: Time(now()),
        }),
        ..Default::default()
    });
    Arc::new(migration)
}

/// What a case starts from: its name, the instance, its Vmms, the Migration, the room.
type Situation = (&'static str, Instance, Vec<Arc<Vmm>>, Arc<Migration>, Room);
/// A situation and the steps the plan takes in it.
type StepCase = (
    &'static str,
    Instance,
    Vec<Arc<Vmm>>,
    Arc<Migration>,
    Room,
    Vec<&'static str>,
);
/// A situation, the outcome decided in it (if any) and the active Vmm after it.
type OutcomeCase = (
    Situation,
    Option<(MigrationPhase, Reason)>,
    Option<&'static str>,
);

/// Which sleds have room, as the test's placement sees it.
#[derive(Clone, Copy)]
enum Room {
    /// Every sled but the excluded one; sled-2 unless `only` says otherwise.
    Anywhere,
    /// Only where the instance ran (sled-1), when a request allows it.
    OnlyTheSource,
}

fn run(instance: &Instance, vmms: &[Arc<Vmm>], migrations: &[Arc<Migration>], room: Room) -> Plan {
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
        let sled = match room {
            Room::Anywhere => request.only.unwrap_or("sled-2"),
            Room::OnlyTheSource => "sled-1",
        };
        if request.exclude == Some(sled) || request.only.is_some_and(|only| only != sled) {
            return Err(Rejections {
                capacity: 3,
                ..Default::default()
            });
        }
        Ok(Placement {
            sled: sled.into(),
            epoch: 1,
            because: "test".into(),
        })
    })
}

/// The instance with the status `plan` wrote.
fn after(plan: &Plan) -> Instance {
    let mut instance = running();
    instance.status = Some(plan.status.clone());
    instance
}

fn kinds(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|step| match step {
            Step::Event(event) => format!("Event({})", event.reason),
            Step::Act(Action::CreateVmm {
                name,
                sled,
                migrate_from: None,
            }) => format!("Create({name}@{sled})"),
            Step::Act(Action::DeleteVmm { name }) => format!("Delete({name})"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The instance once the restart decided its stop.
fn stopping() -> Instance {
    let plan = run(
        &running(),
        &[vmm("web-v1", "sled-1", VmmState::Running)],
        &[restart(None, false, None)],
        Room::Anywhere,
    );
    after(&plan)
}

/// The instance once the source is gone and the new Vmm is placed.
fn starting() -> Instance {
    let plan = run(
        &stopping(),
        &[],
        &[restart(None, false, None)],
        Room::Anywhere,
    );
    after(&plan)
}

fn outcome(plan: &Plan) -> Option<(MigrationPhase, Option<Reason>)> {
    let outcome = plan.status.last_migration.as_ref()?;
    Some((outcome.phase, outcome.reason))
}

#[test]
fn a_restart_stops_the_source_first_and_names_nothing_new() {
    let plan = run(
        &running(),
        &[vmm("web-v1", "sled-1", VmmState::Running)],
        &[restart(None, false, None)],
        Room::Anywhere,
    );
    assert_eq!(
        kinds(&plan),
        ["WriteStatus", "Event(MigrationStarted)", "Delete(web-v1)"]
    );
    let status = &plan.status;
    assert_eq!(status.migration.as_deref(), Some("move"));
    assert_eq!(status.state, Some(InstanceState::Stopping));
    // The source stays named while it goes; nothing else is named: no hand-off window.
    assert_eq!(status.active_vmm.as_deref(), Some("web-v1"));
    assert_eq!(
        (status.target_vmm.as_deref(), status.target_sled.as_deref()),
        (None, None)
    );
    assert!(condition::is_true(&status.conditions, Cond::Migrating));
}

#[test]
fn each_step_of_a_restart() {
    let going = source_going;
    let new = |state| vmm("web-v2", "sled-2", state);
    let cases: Vec<StepCase> = vec![
        (
            "the source is being torn down: wait",
            stopping(),
            vec![going()],
            restart(None, false, None),
            Room::Anywhere,
            vec![],
        ),
        (
            "the delete the status decided was lost: made again",
            stopping(),
            vec![vmm("web-v1", "sled-1", VmmState::Running)],
            restart(None, false, None),
            Room::Anywhere,
            vec!["WriteStatus", "Delete(web-v1)"],
        ),
        (
            "a cancel past the stop changes nothing",
            stopping(),
            vec![going()],
            restart(None, true, Some(Reason::MigrationCancelled)),
            Room::Anywhere,
            vec![],
        ),
        (
            "a timeout past the stop still waits for the source to go",
            stopping(),
            vec![going()],
            restart(None, false, Some(Reason::Timeout)),
            Room::Anywhere,
            vec![],
        ),
        (
            "the source is gone: the new Vmm is placed away from it",
            stopping(),
            vec![],
            restart(None, false, None),
            Room::Anywhere,
            vec!["WriteStatus", "Event(Placed)", "Create(web-v2@sled-2)"],
        ),
        (
            "the source is gone: on the target sled the Migration names",
            stopping(),
            vec![],
            restart(Some("sled-3"), false, None),
            Room::Anywhere,
            vec!["WriteStatus", "Event(Placed)", "Create(web-v2@sled-3)"],
        ),
        (
            "the new Vmm boots: wait",
            starting(),
            vec![new(VmmState::Starting)],
            restart(None, false, None),
            Room::Anywhere,
            vec!["WriteStatus"],
        ),
        (
            "the new Vmm runs: succeeded",
            starting(),
            vec![new(VmmState::Running)],
            restart(None, false, None),
            Room::Anywhere,
            vec!["WriteStatus", "Event(MigrationSucceeded)"],
        ),
    ];
    for (what, instance, vmms, migration, room, expected) in cases {
        let plan = run(&instance, &vmms, &[migration], room);
        assert_eq!(kinds(&plan), expected, "{what}");
    }
}

#[test]
fn a_restart_places_the_new_vmm_only_once_the_source_is_gone() {
    let plan = run(
        &stopping(),
        &[],
        &[restart(None, false, None)],
        Room::Anywhere,
    );
    let status = &plan.status;
    assert_eq!(status.active_vmm.as_deref(), Some("web-v2"));
    assert_eq!(status.sled.as_deref(), Some("sled-2"));
    assert_eq!(status.vmm_serial, 2);
    assert_eq!(status.location_generation, 2, "the location changed");
    assert_eq!(
        status.migration.as_deref(),
        Some("move"),
        "undecided until it runs"
    );
    // The stop was no exit: nothing counted, no backoff, and Manual did not keep it stopped.
    assert_eq!((status.restarts, status.consecutive_failures), (2, 1));
    assert!(status.last_exit.is_none() && status.backoff_until.is_none());
}

#[test]
fn a_restart_succeeds_when_the_new_vmm_runs() {
    let plan = run(
        &starting(),
        &[vmm("web-v2", "sled-2", VmmState::Running)],
        &[restart(None, false, None)],
        Room::Anywhere,
    );
    assert_eq!(
        outcome(&plan),
        Some((MigrationPhase::Succeeded, Some(Reason::MigrationSucceeded)))
    );
    let status = &plan.status;
    assert_eq!(status.migration, None);
    assert_eq!(status.state, Some(InstanceState::Running));
    assert!(!condition::is_true(&status.conditions, Cond::Migrating));
    let message = &status.last_migration.as_ref().unwrap().message;
    assert!(
        message.contains("from sled-1 (VMM web-v1) on sled-2 (VMM web-v2)"),
        "{message}"
    );
    // Settled: planning again changes nothing.
    let again = run(
        &after(&plan),
        &[vmm("web-v2", "sled-2", VmmState::Running)],
        &[restart(None, false, None)],
        Room::Anywhere,
    );
    assert!(again.steps.is_empty(), "{:?}", again.steps);
}

#[test]
fn the_outcome_of_a_restart_in_each_situation() {
    let running_source = || vec![vmm("web-v1", "sled-1", VmmState::Running)];
    let mut halted = running();
    halted.spec.run_strategy = RunStrategy::Halted;
    let mut halted_while_stopping = stopping();
    halted_while_stopping.spec.run_strategy = RunStrategy::Halted;
    let cases: Vec<OutcomeCase> = vec![
        (
            (
                "cancelled before the stop",
                running(),
                running_source(),
                restart(None, true, Some(Reason::MigrationCancelled)),
                Room::Anywhere,
            ),
            Some((MigrationPhase::Cancelled, Reason::MigrationCancelled)),
            Some("web-v1"),
        ),
        (
            (
                "no other sled has room: refused before the stop",
                running(),
                running_source(),
                restart(None, false, None),
                Room::OnlyTheSource,
            ),
            Some((MigrationPhase::Failed, Reason::Unschedulable)),
            Some("web-v1"),
        ),
        (
            (
                "the instance should not run",
                halted,
                running_source(),
                restart(None, false, None),
                Room::Anywhere,
            ),
            Some((MigrationPhase::Failed, Reason::InstanceNotRunning)),
            Some("web-v1"),
        ),
        (
            (
                "halted while stopping",
                halted_while_stopping,
                vec![source_going()],
                restart(None, false, None),
                Room::Anywhere,
            ),
            Some((MigrationPhase::Failed, Reason::InstanceNotRunning)),
            Some("web-v1"),
        ),
        (
            (
                "past the stop no other sled has room: back on the source",
                stopping(),
                vec![],
                restart(None, false, None),
                Room::OnlyTheSource,
            ),
            Some((MigrationPhase::Failed, Reason::Unschedulable)),
            Some("web-v2"),
        ),
        (
            (
                "the Migration was deleted past the stop: started by the ordinary rules",
                stopping(),
                vec![],
                restart(None, false, None),
                Room::Anywhere,
            ),
            Some((MigrationPhase::Cancelled, Reason::MigrationCancelled)),
            Some("web-v2"),
        ),
        (
            (
                "a cancel while the new Vmm boots: it still succeeds",
                starting(),
                vec![vmm("web-v2", "sled-2", VmmState::Starting)],
                restart(None, true, Some(Reason::MigrationCancelled)),
                Room::Anywhere,
            ),
            None,
            Some("web-v2"),
        ),
        (
            (
                "a timeout while the new Vmm boots: failed, the Vmm stays",
                starting(),
                vec![vmm("web-v2", "sled-2", VmmState::Starting)],
                restart(None, false, Some(Reason::Timeout)),
                Room::Anywhere,
            ),
            Some((MigrationPhase::Failed, Reason::Timeout)),
            Some("web-v2"),
        ),
    ];
    for ((what, instance, vmms, migration, room), expected, active) in cases {
        let migrations = if what.contains("deleted") {
            vec![]
        } else {
            vec![migration]
        };
        let plan = run(&instance, &vmms, &migrations, room);
        let got = outcome(&plan).map(|(phase, reason)| (phase, reason.unwrap()));
        assert_eq!(got, expected, "{what}");
        assert_eq!(plan.status.active_vmm.as_deref(), active, "{what}");
        if expected.is_some() {
            assert_eq!(plan.status.migration, None, "{what}");
        }
        // Whatever happens, only the source is ever deleted, and never while anything else
        // is named.
        for action in plan.actions() {
            if let Action::DeleteVmm { name } = action {
                assert_eq!(name, "web-v1", "{what}");
            }
        }
    }
}

#[test]
fn a_live_migration_leaves_restarts_alone_and_the_other_way_round() {
    let mut live = (*restart(None, false, None)).clone();
    live.spec.mode = MigrationMode::Live;
    let plan = run(
        &running(),
        &[vmm("web-v1", "sled-1", VmmState::Running)],
        &[Arc::new(live)],
        Room::Anywhere,
    );
    // The live start names a target with the migration; nothing is stopped.
    assert_eq!(plan.status.target_vmm.as_deref(), Some("web-v2"));
    assert!(
        !plan
            .actions()
            .any(|a| matches!(a, Action::DeleteVmm { .. }))
    );
}
