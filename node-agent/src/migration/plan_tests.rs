//! Table tests of the decisions about the ends of a live migration (`migration/plan.rs`), made
//! through the agent's whole plan (`vmm/plan.rs`) from the Vmm, record and machine its tests
//! start from.

use super::*;
use corral_crds::{MigrateFrom, Resources};

use crate::hypervisor::VmmRunState;
use crate::vmm::decision::{InstanceView, MigrationInput, may_follow};
use crate::vmm::plan::plan;
use crate::vmm::plan::tests::{on_machine, plan_input, recorded, view};

/// The Instance's verdict as the reconcile reads it.
#[derive(Clone, Copy)]
enum Verdict {
    /// Not read (nothing waits for it) or the Instance is gone.
    Unread,
    /// `activeVmm` the source, `targetVmm` the target: undecided.
    Pending,
    /// `activeVmm` the target.
    Switched,
    /// `activeVmm` the source, no `targetVmm`.
    Aborted,
}

/// One row: an end of a migration in a situation, and what must be done.
struct Case {
    name: &'static str,
    role: MigrationRole,
    /// `None`: the record is `Creating` (accepted, nothing created yet).
    phase: Option<VmmMigrationPhase>,
    state: VmmState,
    machine: Option<VmmRunState>,
    transfer_running: bool,
    verdict: Verdict,
    deleting: bool,
    expect_machine: Option<MachineAction>,
    expect_state: Option<(VmmState, Option<VmmMigrationPhase>)>,
    expect_start: bool,
    expect_cancel: bool,
    expect_poll: bool,
}

const BASE: Case = Case {
    name: "",
    role: MigrationRole::Target,
    phase: Some(VmmMigrationPhase::Transferring),
    state: VmmState::Migrating,
    machine: Some(VmmRunState::Receiving),
    transfer_running: false,
    verdict: Verdict::Unread,
    deleting: false,
    expect_machine: None,
    expect_state: None,
    expect_start: false,
    expect_cancel: false,
    expect_poll: false,
};

fn cases() -> Vec<Case> {
    use MachineAction::*;
    use MigrationRole::*;
    use VmmMigrationPhase as P;
    use VmmRunState as M;
    use VmmState as S;
    vec![
        Case {
            name: "an accepted target creates a receiving VMM and starts the transfer",
            phase: None,
            state: S::Creating,
            machine: None,
            expect_machine: Some(CreateReceiving),
            expect_state: Some((S::Migrating, Some(P::Transferring))),
            expect_start: true,
            ..BASE
        },
        Case {
            name: "a target created to receive but never journaled (agent restarted) fails",
            phase: None,
            state: S::Creating,
            expect_machine: Some(Destroy),
            expect_state: Some((S::Failed, None)),
            ..BASE
        },
        Case {
            name: "a target whose transfer runs waits",
            transfer_running: true,
            ..BASE
        },
        Case {
            name: "a target whose transfer no longer runs (agent restarted) fails and destroys",
            expect_machine: Some(Destroy),
            expect_state: Some((S::Failed, Some(P::Failed))),
            ..BASE
        },
        Case {
            name: "a target whose transfer broke fails and destroys",
            phase: Some(P::Failed),
            expect_machine: Some(Destroy),
            expect_state: Some((S::Failed, Some(P::Failed))),
            ..BASE
        },
        Case {
            name: "a ready target waits for the verdict",
            phase: Some(P::Ready),
            verdict: Verdict::Pending,
            expect_poll: true,
            ..BASE
        },
        Case {
            name: "a ready target never runs the guest on an abort",
            phase: Some(P::Ready),
            verdict: Verdict::Aborted,
            expect_poll: true,
            ..BASE
        },
        Case {
            name: "a ready target resumes the guest once the Instance names it active",
            phase: Some(P::Ready),
            verdict: Verdict::Switched,
            expect_machine: Some(Resume),
            expect_state: Some((S::Running, Some(P::Completed))),
            ..BASE
        },
        Case {
            name: "deleting a target mid-transfer cancels the transfer and destroys at once",
            transfer_running: true,
            deleting: true,
            expect_machine: Some(Destroy),
            expect_state: Some((S::Destroyed, Some(P::Transferring))),
            expect_cancel: true,
            ..BASE
        },
        Case {
            name: "a source whose transfer runs waits",
            role: Source,
            machine: Some(M::Running),
            transfer_running: true,
            ..BASE
        },
        Case {
            name: "a source whose transfer no longer runs, never paused, runs on",
            role: Source,
            machine: Some(M::Running),
            expect_state: Some((S::Running, Some(P::Failed))),
            ..BASE
        },
        Case {
            name: "a source its machine paused for the last round before the agent stopped, \
                   never journaled Ready, resumes and runs on",
            role: Source,
            machine: Some(M::Paused),
            expect_machine: Some(Resume),
            expect_state: Some((S::Running, Some(P::Failed))),
            ..BASE
        },
        Case {
            name: "a ready source stays paused while the verdict is pending",
            role: Source,
            phase: Some(P::Ready),
            machine: Some(M::Paused),
            verdict: Verdict::Pending,
            expect_poll: true,
            ..BASE
        },
        Case {
            name: "a ready source that never paused (agent restarted) pauses",
            role: Source,
            phase: Some(P::Ready),
            machine: Some(M::Running),
            verdict: Verdict::Unread,
            expect_machine: Some(Pause),
            expect_poll: true,
            ..BASE
        },
        Case {
            name: "a ready source resumes on an abort",
            role: Source,
            phase: Some(P::Ready),
            machine: Some(M::Paused),
            verdict: Verdict::Aborted,
            expect_machine: Some(Resume),
            expect_state: Some((S::Running, Some(P::Aborted))),
            ..BASE
        },
        Case {
            name: "a ready source stays paused after the switch",
            role: Source,
            phase: Some(P::Ready),
            machine: Some(M::Paused),
            verdict: Verdict::Switched,
            expect_state: Some((S::Migrating, Some(P::Completed))),
            ..BASE
        },
        Case {
            name: "a completed source waits, paused, for its deletion",
            role: Source,
            phase: Some(P::Completed),
            machine: Some(M::Paused),
            ..BASE
        },
        Case {
            name: "a completed source being deleted is destroyed at once",
            role: Source,
            phase: Some(P::Completed),
            machine: Some(M::Paused),
            deleting: true,
            expect_machine: Some(Destroy),
            expect_state: Some((S::Destroyed, Some(P::Completed))),
            ..BASE
        },
        Case {
            name: "deleting a source mid-transfer cancels the transfer and stops the guest",
            role: Source,
            machine: Some(M::Running),
            transfer_running: true,
            deleting: true,
            expect_machine: Some(Stop),
            expect_state: Some((S::Stopping, Some(P::Transferring))),
            expect_cancel: true,
            ..BASE
        },
    ]
}

#[test]
fn migration_plans_follow_the_table() {
    for case in cases() {
        let name = case.name;
        let mut vmm = view(2);
        vmm.name = match case.role {
            MigrationRole::Source => "web-v1".into(),
            MigrationRole::Target => "web-v2".into(),
        };
        vmm.deleting = case.deleting;
        if case.role == MigrationRole::Target {
            vmm.migrate_from = Some(MigrateFrom {
                vmm: "web-v1".into(),
                sled: "sled-1".into(),
                migration: "move".into(),
            });
        }
        let mut record = recorded(case.state, true, 3);
        record.migration = case.phase.map(|phase| MigrationRecord {
            status: migration_status("move", case.role, phase, None, ""),
            peer_vmm: match case.role {
                MigrationRole::Source => "web-v2".into(),
                MigrationRole::Target => "web-v1".into(),
            },
        });
        vmm.reported_generation = 3;
        let instance = |active: &str, target: Option<&str>| InstanceView {
            active_vmm: Some(active.into()),
            target_vmm: target.map(String::from),
        };
        let machine = case.machine.map(on_machine);
        let input = PlanInput {
            free: Resources {
                cpus: 4,
                memory_mib: 8192,
            },
            migration: MigrationInput {
                transfer_running: case.transfer_running,
                instance: match case.verdict {
                    Verdict::Unread => None,
                    Verdict::Pending => Some(instance("web-v1", Some("web-v2"))),
                    Verdict::Switched => Some(instance("web-v2", None)),
                    Verdict::Aborted => Some(instance("web-v1", None)),
                },
            },
            ..plan_input(&vmm, Some(&record), machine.as_ref())
        };
        let plan = plan(&input);
        assert_eq!(plan.machine, case.expect_machine, "{name}: machine action");
        assert_eq!(
            plan.record
                .as_ref()
                .map(|r| (r.state, r.migration.as_ref().map(|m| m.status.phase))),
            case.expect_state,
            "{name}: decided state"
        );
        assert_eq!(plan.start_transfer, case.expect_start, "{name}: start");
        assert_eq!(plan.cancel_transfer, case.expect_cancel, "{name}: cancel");
        assert_eq!(
            plan.requeue == Some(VERDICT_POLL),
            case.expect_poll,
            "{name}: polls the verdict"
        );
        if let Some(next) = &plan.record {
            assert!(may_follow(record.state, next.state), "{name}");
            assert!(next.state_generation > record.state_generation, "{name}");
            if next.state == VmmState::Failed {
                assert_eq!(next.reason, Some(Reason::TransferFailed), "{name}");
                assert!(!next.holds, "{name}: a failed target frees its resources");
            }
        }
    }
}

#[test]
fn a_new_dirty_rate_is_reported_in_the_same_state() {
    let mut vmm = view(2);
    vmm.reported_generation = 3;
    let mut record = recorded(VmmState::Running, true, 3);
    record.reason = Some(Reason::VmmRunning);
    let mut machine = on_machine(VmmRunState::Running);
    machine.dirty_bytes_per_second = 64 << 20;
    let input = plan_input(&vmm, Some(&record), Some(&machine));
    let plan = plan(&input);
    assert_eq!(plan.machine, None);
    let next = plan.record.unwrap();
    assert_eq!(
        (next.state, next.reason, next.dirty_bytes_per_second),
        (VmmState::Running, Some(Reason::VmmRunning), 64 << 20)
    );
    assert_eq!(next.state_generation, 4);
    assert!(plan.report);

    // Reported, the same rate again: nothing to do.
    let mut reported = vmm.clone();
    reported.reported_generation = 4;
    let input = PlanInput {
        vmm: &reported,
        record: Some(&next),
        ..input
    };
    assert!(crate::vmm::plan::plan(&input).is_noop());
}

#[test]
fn a_vanished_end_is_reported() {
    let vmm = view(2);
    let mut record = recorded(VmmState::Migrating, true, 3);
    for role in [MigrationRole::Source, MigrationRole::Target] {
        record.migration = Some(MigrationRecord {
            status: migration_status("move", role, VmmMigrationPhase::Ready, None, ""),
            peer_vmm: "peer".into(),
        });
        let input = plan_input(&vmm, Some(&record), None);
        let next = plan(&input).record.unwrap();
        let expected = match role {
            // The plain lifecycle: killed behind the control plane's back.
            MigrationRole::Source => Reason::VmmKilled,
            MigrationRole::Target => Reason::TransferFailed,
        };
        assert_eq!(
            (next.state, next.reason),
            (VmmState::Failed, Some(expected))
        );
    }
}
