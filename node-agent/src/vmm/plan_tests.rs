//! Table tests and a property test of `plan`. The Vmm, record and machine they start from are
//! shared with the tests of the migration decisions (`migration/plan_tests.rs`).

use super::*;
use corral_crds::Resources;
use proptest::prelude::*;

use crate::hypervisor::{VmmId, VmmInfo};
use crate::vmm::decision::{MigrationInput, VmmView, may_follow};

pub(crate) const EPOCH: u64 = 5;

pub(crate) fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub(crate) fn view(cpus: u32) -> VmmView {
    VmmView {
        uid: VmmId::from("uid-1"),
        namespace: "default".into(),
        name: "web-v1".into(),
        instance: "web".into(),
        image: "debian".into(),
        sled_epoch: EPOCH,
        resources: Resources {
            cpus,
            memory_mib: 1024,
        },
        reboot_request: None,
        migrate_from: None,
        deleting: false,
        has_finalizer: true,
        reported_state: None,
        reported_generation: 0,
    }
}

pub(crate) fn recorded(state: VmmState, holds: bool, generation: u64) -> VmmRecord {
    VmmRecord {
        uid: VmmId::from("uid-1"),
        namespace: "default".into(),
        name: "web-v1".into(),
        instance: "web".into(),
        image: "debian".into(),
        resources: Resources {
            cpus: 2,
            memory_mib: 1024,
        },
        holds,
        state,
        reason: None,
        message: String::new(),
        state_generation: generation,
        diverged: false,
        handled_reboot_request: Some("r0".into()),
        booted_at: None,
        state_since: now(),
        migration: None,
        dirty_bytes_per_second: 0,
    }
}

/// The input of a plan about `vmm`, seen this run on a sled at [`EPOCH`] with nothing free.
pub(crate) fn plan_input<'a>(
    vmm: &'a VmmView,
    record: Option<&'a VmmRecord>,
    machine: Option<&'a VmmInfo>,
) -> PlanInput<'a> {
    PlanInput {
        vmm,
        record,
        machine,
        seen_this_run: true,
        epoch: EPOCH,
        free: Resources::default(),
        now: now(),
        stop_timeout: Duration::from_secs(30),
        migration: MigrationInput::default(),
    }
}

pub(crate) fn on_machine(state: VmmRunState) -> VmmInfo {
    VmmInfo {
        launch: crate::hypervisor::VmmLaunch {
            id: VmmId::from("uid-1"),
            namespace: "default".into(),
            name: "web-v1".into(),
            instance: "web".into(),
            resources: Resources::default(),
            image: "debian".into(),
            dirty_rate: None,
        },
        state,
        responsive: true,
        settles_in: None,
        dirty_bytes_per_second: 0,
    }
}

/// One row of the table: the situation, then what must be done.
struct Case {
    name: &'static str,
    record: Option<VmmState>,
    refused: bool,
    machine: Option<VmmRunState>,
    deleting: bool,
    sled_epoch: u64,
    cpus: u32,
    seen: bool,
    reboot_request: Option<&'static str>,
    expect_machine: Option<MachineAction>,
    expect_state: Option<(VmmState, Reason)>,
    expect_finalizer: bool,
    expect_events: &'static [Reason],
}

const BASE: Case = Case {
    name: "",
    record: None,
    refused: false,
    machine: None,
    deleting: false,
    sled_epoch: EPOCH,
    cpus: 2,
    seen: true,
    reboot_request: None,
    expect_machine: None,
    expect_state: None,
    expect_finalizer: false,
    expect_events: &[],
};

const RUNNING: Option<VmmRunState> = Some(VmmRunState::Running);
const STARTING: Option<VmmRunState> = Some(VmmRunState::Starting);

fn cases() -> Vec<Case> {
    use MachineAction::*;
    use VmmState as S;
    vec![
        Case {
            name: "a new Vmm that fits is accepted",
            expect_state: Some((S::Creating, Reason::VmmPending)),
            ..BASE
        },
        Case {
            name: "a new Vmm of an older epoch is refused",
            sled_epoch: EPOCH - 1,
            expect_state: Some((S::Failed, Reason::StaleSledEpoch)),
            expect_events: &[Reason::StaleSledEpoch],
            ..BASE
        },
        Case {
            name: "a new Vmm of a newer epoch is accepted",
            sled_epoch: EPOCH + 1,
            expect_state: Some((S::Creating, Reason::VmmPending)),
            ..BASE
        },
        Case {
            name: "a new Vmm that does not fit is refused",
            cpus: 5,
            expect_state: Some((S::Failed, Reason::InsufficientCapacity)),
            expect_events: &[Reason::InsufficientCapacity],
            ..BASE
        },
        Case {
            name: "an accepted Vmm is created and reported Starting",
            record: Some(S::Creating),
            expect_machine: Some(Create),
            expect_state: Some((S::Starting, Reason::Booting)),
            ..BASE
        },
        Case {
            name: "a booting VMM is reported Starting",
            record: Some(S::Creating),
            machine: STARTING,
            expect_state: Some((S::Starting, Reason::Booting)),
            ..BASE
        },
        Case {
            name: "a booted VMM is reported Running",
            record: Some(S::Starting),
            machine: RUNNING,
            expect_state: Some((S::Running, Reason::VmmRunning)),
            ..BASE
        },
        Case {
            name: "a running VMM already reported needs nothing",
            record: Some(S::Running),
            machine: RUNNING,
            ..BASE
        },
        Case {
            name: "a new reboot request reboots the guest",
            record: Some(S::Running),
            machine: RUNNING,
            reboot_request: Some("r1"),
            expect_machine: Some(Reboot),
            expect_state: Some((S::Starting, Reason::Rebooting)),
            ..BASE
        },
        Case {
            name: "a handled reboot request is not redone",
            record: Some(S::Running),
            machine: RUNNING,
            reboot_request: Some("r0"),
            ..BASE
        },
        Case {
            name: "a VMM seen by this run and gone was killed",
            record: Some(S::Running),
            expect_state: Some((S::Failed, Reason::VmmKilled)),
            expect_events: &[Reason::DivergenceDetected],
            ..BASE
        },
        Case {
            name: "a VMM never seen by this run is missing",
            record: Some(S::Running),
            seen: false,
            expect_state: Some((S::Failed, Reason::VmmMissing)),
            expect_events: &[Reason::DivergenceDetected],
            ..BASE
        },
        Case {
            name: "after a power cycle a recorded Vmm is stale, not missing",
            record: Some(S::Running),
            seen: false,
            sled_epoch: EPOCH - 1,
            expect_state: Some((S::Failed, Reason::StaleSledEpoch)),
            expect_events: &[Reason::StaleSledEpoch],
            ..BASE
        },
        Case {
            name: "a stale Vmm still on the machine is destroyed",
            record: Some(S::Running),
            machine: RUNNING,
            sled_epoch: EPOCH - 1,
            expect_machine: Some(Destroy),
            expect_state: Some((S::Failed, Reason::StaleSledEpoch)),
            expect_events: &[Reason::StaleSledEpoch],
            ..BASE
        },
        Case {
            name: "a guest crash is reported Failed",
            record: Some(S::Running),
            machine: Some(VmmRunState::Exited(ExitReason::GuestCrashed)),
            expect_state: Some((S::Failed, Reason::GuestCrashed)),
            expect_events: &[Reason::GuestCrashed],
            ..BASE
        },
        Case {
            name: "a guest shutdown is reported Stopped",
            record: Some(S::Running),
            machine: Some(VmmRunState::Exited(ExitReason::GuestShutdown)),
            expect_state: Some((S::Stopped, Reason::GuestShutdown)),
            expect_events: &[Reason::GuestShutdown],
            ..BASE
        },
        Case {
            name: "an ended VMM waits for its deletion",
            record: Some(S::Failed),
            machine: Some(VmmRunState::Exited(ExitReason::GuestCrashed)),
            ..BASE
        },
        Case {
            name: "a VMM whose Vmm ended is not left running",
            record: Some(S::Failed),
            machine: RUNNING,
            expect_machine: Some(Destroy),
            ..BASE
        },
        Case {
            name: "a refused Vmm is never created",
            record: Some(S::Failed),
            refused: true,
            ..BASE
        },
        Case {
            name: "deletion stops a running VMM",
            record: Some(S::Running),
            machine: RUNNING,
            deleting: true,
            expect_machine: Some(Stop),
            expect_state: Some((S::Stopping, Reason::ShuttingDown)),
            ..BASE
        },
        Case {
            name: "deletion waits for a stopping VMM",
            record: Some(S::Stopping),
            machine: Some(VmmRunState::Stopping),
            deleting: true,
            ..BASE
        },
        Case {
            name: "deletion destroys a stopped VMM and drops the finalizer",
            record: Some(S::Stopping),
            machine: Some(VmmRunState::Exited(ExitReason::Stopped)),
            deleting: true,
            expect_machine: Some(Destroy),
            expect_state: Some((S::Destroyed, Reason::Deleting)),
            expect_finalizer: true,
            ..BASE
        },
        Case {
            name: "deletion of a crashed VMM destroys it at once",
            record: Some(S::Failed),
            machine: Some(VmmRunState::Exited(ExitReason::GuestCrashed)),
            deleting: true,
            expect_machine: Some(Destroy),
            expect_state: Some((S::Destroyed, Reason::Deleting)),
            expect_finalizer: true,
            ..BASE
        },
        Case {
            name: "deletion of a killed VMM reports Destroyed",
            record: Some(S::Failed),
            deleting: true,
            expect_state: Some((S::Destroyed, Reason::Deleting)),
            expect_finalizer: true,
            ..BASE
        },
        Case {
            name: "deletion of a refused Vmm only drops the finalizer",
            record: Some(S::Failed),
            refused: true,
            deleting: true,
            expect_state: Some((S::Destroyed, Reason::Deleting)),
            expect_finalizer: true,
            ..BASE
        },
        Case {
            name: "deletion of a Vmm never recorded drops the finalizer",
            deleting: true,
            expect_finalizer: true,
            ..BASE
        },
        Case {
            name: "deletion of a destroyed Vmm drops the finalizer",
            record: Some(S::Destroyed),
            deleting: true,
            expect_finalizer: true,
            ..BASE
        },
    ]
}

#[test]
fn plan_follows_the_table() {
    for case in cases() {
        let mut vmm = view(case.cpus);
        vmm.sled_epoch = case.sled_epoch;
        vmm.deleting = case.deleting;
        vmm.reboot_request = case.reboot_request.map(String::from);
        let record = case.record.map(|state| {
            let mut r = recorded(state, !case.refused, 3);
            r.holds = !case.refused && state != VmmState::Destroyed;
            r
        });
        vmm.reported_generation = record.as_ref().map_or(0, |r| r.state_generation);
        let machine = case.machine.map(on_machine);
        let input = PlanInput {
            seen_this_run: case.seen,
            free: Resources {
                cpus: 4,
                memory_mib: 8192,
            },
            ..plan_input(&vmm, record.as_ref(), machine.as_ref())
        };
        let plan = plan(&input);
        let name = case.name;
        assert_eq!(plan.machine, case.expect_machine, "{name}: machine action");
        assert_eq!(
            plan.record.as_ref().map(|r| (r.state, r.reason.unwrap())),
            case.expect_state,
            "{name}: decided state"
        );
        assert_eq!(plan.report, case.expect_state.is_some(), "{name}: report");
        assert_eq!(
            plan.remove_finalizer, case.expect_finalizer,
            "{name}: finalizer"
        );
        let events: Vec<Reason> = plan.events.iter().map(|e| e.reason).collect();
        assert_eq!(events, case.expect_events, "{name}: events");
        if let Some(next) = &plan.record {
            assert!(next.state_generation > vmm.reported_generation, "{name}");
            if let Some(previous) = &record {
                assert!(may_follow(previous.state, next.state), "{name}");
            }
        }
    }
}

#[test]
fn a_running_vmm_the_journal_lost_is_adopted_without_going_backwards() {
    let mut vmm = view(2);
    vmm.reported_state = Some(VmmState::Running);
    vmm.reported_generation = 4;
    let machine = on_machine(VmmRunState::Running);
    let input = plan_input(&vmm, None, Some(&machine));
    let plan = plan(&input);
    let adopted = plan.record.unwrap();
    assert_eq!(adopted.state, VmmState::Running);
    assert_eq!(adopted.state_generation, 4);
    assert!(adopted.holds);
    assert!(!plan.report);

    // Without its VMM it is missing.
    let input = PlanInput {
        machine: None,
        ..input
    };
    let missing = super::plan(&input).record.unwrap();
    assert_eq!(
        (missing.state, missing.reason),
        (VmmState::Failed, Some(Reason::VmmMissing))
    );
    assert_eq!(missing.state_generation, 5);
}

#[test]
fn a_vmm_of_an_ended_life_the_journal_forgot_is_stale_not_missing() {
    // After a fence the new life starts with an empty journal and an empty machine.
    let mut vmm = view(2);
    vmm.reported_state = Some(VmmState::Running);
    vmm.reported_generation = 4;
    vmm.sled_epoch = EPOCH - 1;
    for machine in [None, Some(on_machine(VmmRunState::Running))] {
        let input = plan_input(&vmm, None, machine.as_ref());
        let plan = plan(&input);
        let refused = plan.record.unwrap();
        assert_eq!(
            (
                refused.state,
                refused.reason,
                refused.diverged,
                refused.holds
            ),
            (VmmState::Failed, Some(Reason::StaleSledEpoch), false, false)
        );
        assert_eq!(refused.state_generation, 5);
        let destroys = machine.is_some().then_some(MachineAction::Destroy);
        assert_eq!(plan.machine, destroys);
    }
}

#[test]
fn divergence_sets_the_condition_and_keeps_holding_until_destroyed() {
    let vmm = view(2);
    let record = recorded(VmmState::Running, true, 3);
    let input = plan_input(&vmm, Some(&record), None);
    let next = plan(&input).record.unwrap();
    assert!(next.diverged);
    assert!(
        next.holds,
        "a failed VMM holds its resources until it is destroyed"
    );
    assert_eq!(next.state_generation, 4);
}

#[test]
fn the_generation_rises_above_the_api_and_the_journal() {
    let mut vmm = view(2);
    vmm.reported_generation = 9;
    let record = recorded(VmmState::Starting, true, 3);
    let machine = on_machine(VmmRunState::Running);
    let input = plan_input(&vmm, Some(&record), Some(&machine));
    assert_eq!(plan(&input).record.unwrap().state_generation, 10);
}

#[test]
fn a_report_the_api_missed_is_sent_again_without_a_new_decision() {
    let mut vmm = view(2);
    vmm.reported_generation = 2;
    let record = recorded(VmmState::Running, true, 3);
    let machine = on_machine(VmmRunState::Running);
    let input = plan_input(&vmm, Some(&record), Some(&machine));
    let plan = plan(&input);
    assert!(plan.record.is_none());
    assert!(plan.report);
}

#[test]
fn a_stop_that_takes_too_long_ends_in_destroy() {
    let mut vmm = view(2);
    vmm.deleting = true;
    vmm.reported_generation = 3;
    let mut record = recorded(VmmState::Stopping, true, 3);
    record.state_since = now() - jiff::SignedDuration::from_secs(31);
    let mut machine = on_machine(VmmRunState::Running);
    machine.responsive = false;
    let input = plan_input(&vmm, Some(&record), Some(&machine));
    let plan = plan(&input);
    assert_eq!(plan.machine, Some(MachineAction::Destroy));
    assert_eq!(plan.record.unwrap().state, VmmState::Destroyed);
    assert!(plan.remove_finalizer && plan.forget);
}

#[test]
fn a_stop_under_way_is_looked_at_again_when_it_should_end() {
    let mut vmm = view(2);
    vmm.deleting = true;
    vmm.reported_generation = 3;
    let record = recorded(VmmState::Stopping, true, 3);
    let mut machine = on_machine(VmmRunState::Stopping);
    machine.settles_in = Some(Duration::from_millis(300));
    let input = plan_input(&vmm, Some(&record), Some(&machine));
    let plan = plan(&input);
    assert!(plan.is_noop());
    assert_eq!(plan.requeue, Some(Duration::from_millis(300)));
}

#[test]
fn states_only_move_forward() {
    use VmmState as S;
    assert!(may_follow(S::Creating, S::Starting));
    assert!(may_follow(S::Running, S::Starting));
    assert!(may_follow(S::Failed, S::Destroyed));
    assert!(!may_follow(S::Failed, S::Running));
    assert!(!may_follow(S::Stopped, S::Failed));
    assert!(!may_follow(S::Destroyed, S::Destroyed));
    assert!(!may_follow(S::Stopping, S::Running));
    assert!(!may_follow(S::Starting, S::Creating));
}

fn any_state() -> impl Strategy<Value = VmmState> {
    proptest::sample::select(VmmState::ALL.to_vec())
}

fn any_machine() -> impl Strategy<Value = Option<VmmRunState>> {
    proptest::option::of(proptest::sample::select(vec![
        VmmRunState::Starting,
        VmmRunState::Running,
        VmmRunState::Stopping,
        VmmRunState::Exited(ExitReason::Stopped),
        VmmRunState::Exited(ExitReason::GuestShutdown),
        VmmRunState::Exited(ExitReason::GuestCrashed),
        VmmRunState::Receiving,
        VmmRunState::Paused,
    ]))
}

proptest! {
    /// Whatever the situation, a decision never moves the journal backwards, always raises the
    /// generation above what the API holds, and never creates a stale or finished Vmm.
    #[test]
    fn decisions_never_go_backwards(
        record_state in proptest::option::of(any_state()),
        holds in any::<bool>(),
        machine_state in any_machine(),
        deleting in any::<bool>(),
        seen in any::<bool>(),
        stale in any::<bool>(),
        reported in 0u64..8,
        journal_generation in 0u64..8,
        reboot in proptest::option::of(proptest::sample::select(vec!["r0", "r1"])),
    ) {
        let mut vmm = view(2);
        vmm.deleting = deleting;
        vmm.sled_epoch = if stale { EPOCH - 1 } else { EPOCH };
        vmm.reported_generation = reported;
        vmm.reboot_request = reboot.map(String::from);
        let record = record_state.map(|state| {
            recorded(state, holds && state != VmmState::Destroyed, journal_generation)
        });
        let machine = machine_state.map(on_machine);
        let input = PlanInput {
            seen_this_run: seen,
            free: Resources { cpus: 4, memory_mib: 8192 },
            ..plan_input(&vmm, record.as_ref(), machine.as_ref())
        };
        let plan = plan(&input);
        if let Some(next) = &plan.record {
            prop_assert!(next.state_generation > reported);
            if let Some(previous) = &record {
                prop_assert!(next.state_generation > previous.state_generation);
                prop_assert!(may_follow(previous.state, next.state),
                    "{:?} -> {:?}", previous.state, next.state);
            }
        }
        if plan.machine == Some(MachineAction::Create) {
            prop_assert!(!stale && !deleting);
            prop_assert!(record.as_ref().is_some_and(|r| r.state == VmmState::Creating && r.holds));
        }
        if plan.remove_finalizer {
            prop_assert!(deleting);
            prop_assert!(
                machine.is_none() || plan.machine == Some(MachineAction::Destroy),
                "the finalizer goes only with the VMM"
            );
        }
    }
}
