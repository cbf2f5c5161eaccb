use std::sync::Arc;

use corral_crds::{
    ConditionStatus, InstanceSpec, InstanceStatus, MigrationOutcome, MigrationRole, MigrationSpec,
    Nic, SledSpec, SledStatus, V2pAck, V2pMapping, VmmMigrationStatus, VmmSpec, VmmStatus,
    VpcRoutesSpec,
};

use super::*;
use corral_crds::{SledConditionType, condition};

const GBIT10: u64 = 1_250_000_000;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + seconds).unwrap())
}

fn sled(name: &str, ready: bool, acks: &[(&str, i64)]) -> Arc<Sled> {
    let mut sled = Sled::new(name, SledSpec::default());
    let mut status = SledStatus {
        migration_bandwidth: GBIT10,
        v2p: acks
            .iter()
            .map(|(vpc, generation)| V2pAck {
                vpc: vpc.to_string(),
                generation: *generation,
            })
            .collect(),
        ..Default::default()
    };
    condition::set(
        &mut status.conditions,
        SledConditionType::Ready,
        if ready {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        Reason::AgentReady,
        "",
        now(),
    );
    sled.status = Some(status);
    Arc::new(sled)
}

fn instance(nics: Vec<Nic>) -> Instance {
    let mut instance = Instance::new(
        "web",
        InstanceSpec {
            cpus: 2,
            memory_mib: 4096,
            image: "debian".into(),
            nics,
            ..Default::default()
        },
    );
    instance.metadata.namespace = Some("default".into());
    instance.status = Some(InstanceStatus {
        state: Some(InstanceState::Running),
        sled: Some("sled-1".into()),
        active_vmm: Some("web-v1".into()),
        location_generation: 3,
        ..Default::default()
    });
    instance
}

fn migration(name: &str, phase: Option<MigrationPhase>) -> Migration {
    let mut migration = Migration::new(
        name,
        MigrationSpec {
            instance: "web".into(),
            ..Default::default()
        },
    );
    migration.metadata.namespace = Some("default".into());
    migration.metadata.creation_timestamp = Some(at(0));
    migration.status = phase.map(|phase| MigrationStatus {
        phase: Some(phase),
        source_vmm: Some("web-v1".into()),
        source_sled: Some("sled-1".into()),
        started_at: Some(at(0)),
        ..Default::default()
    });
    migration
}

fn vmm(name: &str, sled: &str, dirty: u64, end: Option<(MigrationRole, VmmMigrationPhase)>) -> Vmm {
    let mut vmm = Vmm::new(
        name,
        VmmSpec {
            instance: "web".into(),
            sled: sled.into(),
            ..Default::default()
        },
    );
    vmm.status = Some(VmmStatus {
        state: Some(VmmState::Running),
        dirty_bytes_per_second: dirty,
        migration: end.map(|(role, phase)| VmmMigrationStatus {
            migration: "move".into(),
            role,
            phase,
            progress: TransferProgress {
                bytes_sent: 1 << 30,
                round: 1,
                percent: 25,
                ..Default::default()
            },
            reason: None,
            message: "the link broke".into(),
            timings: Default::default(),
        }),
        ..Default::default()
    });
    vmm
}

struct Case {
    migration: Migration,
    instance: Option<Instance>,
    source: Option<Vmm>,
    target: Option<Vmm>,
    sleds: Vec<Arc<Sled>>,
    siblings: Vec<Arc<Migration>>,
    routes: Vec<Arc<VpcRoutes>>,
    load: Load,
    /// When set, the status says the transfer last moved this long before `now`.
    stalled_for: Duration,
    now: Timestamp,
}

impl Case {
    fn new(migration: Migration) -> Case {
        Case {
            migration,
            instance: Some(instance(Vec::new())),
            source: Some(vmm("web-v1", "sled-1", 64 << 20, None)),
            target: None,
            sleds: vec![sled("sled-1", true, &[]), sled("sled-2", true, &[])],
            siblings: Vec::new(),
            routes: Vec::new(),
            load: Load::default(),
            stalled_for: Duration::ZERO,
            now: now(),
        }
    }

    fn run(&self) -> Plan {
        let mut migration = self.migration.clone();
        if !self.stalled_for.is_zero() {
            let since = self.now - jiff::SignedDuration::try_from(self.stalled_for).unwrap();
            migration
                .status
                .get_or_insert_with(Default::default)
                .progressed_at = Some(Time(since));
        }
        plan(&Observed {
            migration: &migration,
            instance: self.instance.as_ref(),
            source: self.source.as_ref(),
            target: self.target.as_ref(),
            sleds: &self.sleds,
            siblings: &self.siblings,
            routes: &self.routes,
            load: &self.load,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            now: self.now,
        })
    }
}

fn outcome(plan: &Plan) -> (Option<MigrationPhase>, Option<Reason>) {
    (plan.status.phase, plan.status.reason)
}

#[test]
fn a_movable_instance_is_admitted_with_a_prediction() {
    let plan = Case::new(migration("move", None)).run();
    assert_eq!(
        outcome(&plan),
        (
            Some(MigrationPhase::Scheduling),
            Some(Reason::MigrationStarted)
        )
    );
    let status = &plan.status;
    assert_eq!(status.source_vmm.as_deref(), Some("web-v1"));
    assert_eq!(status.source_sled.as_deref(), Some("sled-1"));
    assert_eq!(status.started_at, Some(Time(now())));
    let progress = status.progress.as_ref().unwrap();
    assert_eq!(progress.memory_bytes, 4096 * MIB);
    assert_eq!(
        progress.eta_seconds,
        Some(4),
        "4 GiB at 10 Gbit/s, a few rounds"
    );
    assert!(progress.predicted_downtime_ms <= 300);
    let predicted = status
        .predicted
        .expect("the prediction kept beside the progress");
    assert_eq!(predicted.downtime_ms, progress.predicted_downtime_ms);
    assert!(
        predicted.transfer_ms > 3400 && predicted.transfer_ms <= 4000,
        "{predicted:?}"
    );
    assert_eq!(plan.events().count(), 1);
    assert_eq!(plan.requeue, Some(RECHECK));
}

#[test]
fn a_sleds_smaller_downtime_budget_means_more_rounds_and_a_shorter_pause() {
    let mut case = Case::new(migration("move", None));
    let mut tight = (*case.sleds[0]).clone();
    tight.status.as_mut().unwrap().migration_downtime_budget_ms = 20;
    case.sleds[0] = Arc::new(tight);
    let plan = case.run();
    let predicted = plan.status.predicted.expect("a prediction");
    assert!(predicted.downtime_ms <= 20, "{predicted:?}");
    assert_eq!(plan.status.progress.unwrap().downtime_budget_ms, 20);
}

#[test]
fn a_succeeded_move_is_measured_from_its_targets_timings_once_they_are_all_there() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let micro = |ms: i64| {
        Some(MicroTime(
            Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap(),
        ))
    };
    let mut finished = migration("move", Some(MigrationPhase::Succeeded));
    let status = finished.status.as_mut().unwrap();
    status.target_vmm = Some("web-v2".into());
    let mut case = Case::new(finished);
    let mut target = vmm(
        "web-v2",
        "sled-2",
        0,
        Some((MigrationRole::Target, VmmMigrationPhase::Completed)),
    );
    let end = target.status.as_mut().unwrap().migration.as_mut().unwrap();
    end.timings = corral_crds::TransferTimings {
        started_at: micro(0),
        paused_at: micro(1_200),
        received_at: micro(1_230),
        resumed_at: None,
    };
    case.target = Some(target.clone());
    assert!(awaits_measurement(&case.migration));
    let plan = case.run();
    assert_eq!(
        plan.status.measured, None,
        "not resumed yet: nothing to write"
    );
    assert!(plan.steps.is_empty());

    let end = target.status.as_mut().unwrap().migration.as_mut().unwrap();
    end.timings.resumed_at = micro(1_245);
    case.target = Some(target);
    let plan = case.run();
    assert_eq!(
        plan.status.measured,
        Some(TransferTimes {
            transfer_ms: 1_230,
            downtime_ms: 45,
        })
    );
    assert_eq!(plan.status.phase, Some(MigrationPhase::Succeeded));
    assert_eq!(plan.requeue, None);
    case.migration.status = Some(plan.status.clone());
    assert!(!awaits_measurement(&case.migration));
}

#[test]
fn refusals_before_anything_happens_are_final() {
    let mut cancelled = Case::new(migration("move", None));
    cancelled.migration.spec.cancel = true;
    let mut missing = Case::new(migration("move", None));
    missing.instance = None;
    let mut stopped = Case::new(migration("move", None));
    stopped
        .instance
        .as_mut()
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .state = Some(InstanceState::Stopped);
    let mut second = Case::new(migration("move", None));
    let mut older = migration("first", None);
    older.metadata.creation_timestamp = Some(at(-10));
    second.siblings = vec![Arc::new(older)];
    let mut racing = Case::new(migration("move", None));
    racing.siblings = vec![Arc::new(migration(
        "later-but-admitted",
        Some(MigrationPhase::Scheduling),
    ))];
    let mut hot = Case::new(migration("move", None));
    hot.source = Some(vmm("web-v1", "sled-1", GBIT10, None));
    let mut to_itself = Case::new(migration("move", None));
    to_itself.migration.spec.target_sled = Some("sled-1".into());
    let mut nowhere = Case::new(migration("move", None));
    nowhere.migration.spec.target_sled = Some("sled-9".into());
    for (case, expected) in [
        (
            cancelled,
            (MigrationPhase::Cancelled, Reason::MigrationCancelled),
        ),
        (
            missing,
            (MigrationPhase::Failed, Reason::InstanceNotRunning),
        ),
        (
            stopped,
            (MigrationPhase::Failed, Reason::InstanceNotRunning),
        ),
        (
            second,
            (MigrationPhase::Failed, Reason::MigrationInProgress),
        ),
        (
            racing,
            (MigrationPhase::Failed, Reason::MigrationInProgress),
        ),
        (hot, (MigrationPhase::Failed, Reason::WillNotConverge)),
        (to_itself, (MigrationPhase::Failed, Reason::Unschedulable)),
        (nowhere, (MigrationPhase::Failed, Reason::Unschedulable)),
    ] {
        let plan = case.run();
        assert_eq!(
            outcome(&plan),
            (Some(expected.0), Some(expected.1)),
            "{}",
            plan.status.message
        );
        assert!(plan.status.finished_at.is_some());
        assert_eq!(plan.requeue, None);
    }
}

#[test]
fn limits_and_a_starting_instance_make_it_wait() {
    let mut rack = Case::new(migration("move", None));
    rack.load.rack = 16;
    let mut outbound = Case::new(migration("move", None));
    outbound.load.add(Some("sled-1"), None);
    outbound.load.add(Some("sled-1"), None);
    outbound.load.add(Some("sled-1"), None);
    outbound.load.add(Some("sled-1"), None);
    let mut inbound = Case::new(migration("move", None));
    inbound.migration.spec.target_sled = Some("sled-2".into());
    for _ in 0..4 {
        inbound.load.add(Some("sled-3"), Some("sled-2"));
    }
    let mut starting = Case::new(migration("move", None));
    starting
        .instance
        .as_mut()
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .state = Some(InstanceState::Starting);
    for (case, reason) in [
        (rack, Reason::MigrationThrottled),
        (outbound, Reason::MigrationThrottled),
        (inbound, Reason::MigrationThrottled),
        (starting, Reason::InstanceNotRunning),
    ] {
        let plan = case.run();
        assert_eq!(
            outcome(&plan),
            (Some(MigrationPhase::Pending), Some(reason)),
            "{}",
            plan.status.message
        );
        assert_eq!(plan.requeue, Some(RECHECK));
    }
}

#[test]
fn a_move_waits_until_its_last_v2p_change_reached_every_ready_sled() {
    let nic = Nic {
        name: "eth0".into(),
        vpc: "web".into(),
        ip: "10.0.0.5".into(),
    };
    let routes = |generation: u64, since: i64| {
        Arc::new(VpcRoutes::new(
            "web",
            VpcRoutesSpec {
                mappings: vec![V2pMapping {
                    ip: "10.0.0.5".into(),
                    sled: "sled-1".into(),
                    location_generation: generation,
                    namespace: "default".into(),
                    instance: "web".into(),
                    since,
                }],
            },
        ))
    };
    let case = |routes: Vec<Arc<VpcRoutes>>, sleds: Vec<Arc<Sled>>| {
        let mut case = Case::new(migration("move", None));
        case.instance = Some(instance(vec![nic.clone()]));
        case.routes = routes;
        case.sleds = sleds;
        case.run()
    };
    let converged = || {
        vec![
            sled("sled-1", true, &[("web", 7)]),
            sled("sled-2", true, &[("web", 8)]),
        ]
    };
    for (what, plan) in [
        ("no routes", case(vec![], converged())),
        ("an old mapping", case(vec![routes(2, 5)], converged())),
        ("a sled behind", case(vec![routes(3, 8)], converged())),
    ] {
        assert_eq!(
            outcome(&plan),
            (Some(MigrationPhase::Pending), Some(Reason::V2PNotConverged)),
            "{what}"
        );
    }
    let admitted = case(vec![routes(3, 7)], converged());
    assert_eq!(admitted.status.phase, Some(MigrationPhase::Scheduling));
    // A sled that is not Ready does not hold a move back.
    let down = vec![
        sled("sled-1", true, &[("web", 7)]),
        sled("sled-2", false, &[]),
    ];
    assert_eq!(
        case(vec![routes(3, 7)], down).status.phase,
        Some(MigrationPhase::Scheduling)
    );
}

fn named(case: &mut Case) {
    let status = case.instance.as_mut().unwrap().status.as_mut().unwrap();
    status.migration = Some("move".into());
    status.target_vmm = Some("web-v2".into());
    status.target_sled = Some("sled-2".into());
    status.state = Some(InstanceState::Migrating);
}

#[test]
fn the_phase_follows_the_instance_and_the_agents() {
    let mut scheduling = Case::new(migration("move", Some(MigrationPhase::Scheduling)));
    assert_eq!(
        scheduling.run().status.phase,
        Some(MigrationPhase::Scheduling)
    );
    named(&mut scheduling);
    let plan = scheduling.run();
    assert_eq!(plan.status.phase, Some(MigrationPhase::TargetStarting));
    assert_eq!(plan.status.target_vmm.as_deref(), Some("web-v2"));
    assert_eq!(plan.status.target_sled.as_deref(), Some("sled-2"));

    scheduling.target = Some(vmm(
        "web-v2",
        "sled-2",
        0,
        Some((MigrationRole::Target, VmmMigrationPhase::Transferring)),
    ));
    let plan = scheduling.run();
    assert_eq!(plan.status.phase, Some(MigrationPhase::Transferring));
    assert!(plan.status.transfer_started_at.is_some());
    assert_eq!(plan.status.progress.as_ref().unwrap().percent, 25);

    scheduling.target = Some(vmm(
        "web-v2",
        "sled-2",
        0,
        Some((MigrationRole::Target, VmmMigrationPhase::Ready)),
    ));
    assert_eq!(
        scheduling.run().status.phase,
        Some(MigrationPhase::Switching)
    );
}

#[test]
fn the_final_phase_is_the_instances_decision() {
    for (decided, cancel) in [
        (MigrationPhase::Succeeded, false),
        (MigrationPhase::Succeeded, true),
        (MigrationPhase::Failed, false),
        (MigrationPhase::Cancelled, true),
    ] {
        let mut case = Case::new(migration("move", Some(MigrationPhase::Transferring)));
        case.migration.spec.cancel = cancel;
        let status = case.instance.as_mut().unwrap().status.as_mut().unwrap();
        status.location_generation = 4;
        status.last_migration = Some(MigrationOutcome {
            name: "move".into(),
            phase: decided,
            reason: Some(Reason::TransferFailed),
            message: "decided".into(),
            target_vmm: Some("web-v2".into()),
            at: at(5),
        });
        let plan = case.run();
        assert_eq!(plan.status.phase, Some(decided));
        assert!(plan.status.finished_at.is_some());
        if decided == MigrationPhase::Succeeded {
            assert_eq!(plan.status.location_generation, Some(4));
            assert_eq!(cancel, plan.status.message.contains("after the switch"));
        }
    }
    // Someone else's outcome is not this migration's.
    let mut other = Case::new(migration("move", Some(MigrationPhase::Transferring)));
    named(&mut other);
    other
        .instance
        .as_mut()
        .unwrap()
        .status
        .as_mut()
        .unwrap()
        .last_migration = Some(MigrationOutcome {
        name: "earlier".into(),
        phase: MigrationPhase::Succeeded,
        reason: None,
        message: String::new(),
        target_vmm: None,
        at: at(-100),
    });
    assert_eq!(other.run().status.phase, Some(MigrationPhase::Transferring));
}

#[test]
fn aborts_are_asked_for_once_and_never_decided_here() {
    let transferring = || {
        let mut case = Case::new(migration("move", Some(MigrationPhase::Transferring)));
        named(&mut case);
        case.migration.status.as_mut().unwrap().target_vmm = Some("web-v2".into());
        case.migration.status.as_mut().unwrap().target_sled = Some("sled-2".into());
        case.target = Some(vmm(
            "web-v2",
            "sled-2",
            0,
            Some((MigrationRole::Target, VmmMigrationPhase::Transferring)),
        ));
        case
    };
    let mut cancelled = transferring();
    cancelled.migration.spec.cancel = true;
    let mut broken = transferring();
    broken.source = Some(vmm(
        "web-v1",
        "sled-1",
        0,
        Some((MigrationRole::Source, VmmMigrationPhase::Failed)),
    ));
    let mut target_down = transferring();
    target_down.sleds = vec![sled("sled-1", true, &[]), sled("sled-2", false, &[])];
    let mut late = transferring();
    late.now = at(60 + 4 * 20 + 1).0;
    // The status already shows what the ends report, and says it last moved 21 s ago (the
    // clock a new leader reads: nothing of it is in memory).
    let mut stalled = transferring();
    stalled.migration.status = Some(stalled.run().status);
    stalled.stalled_for = Duration::from_secs(21);
    // The same, but the ends report more bytes than the status: the transfer moved.
    let mut moved = transferring();
    let mut status = moved.run().status;
    status.progress.as_mut().expect("progress").bytes_sent -= 1;
    moved.migration.status = Some(status);
    moved.stalled_for = Duration::from_secs(21);
    let plan = moved.run();
    assert!(plan.status.abort.is_none(), "{:?}", plan.status.abort);
    assert_eq!(plan.status.progressed_at, Some(Time(moved.now)));
    for (case, reason) in [
        (cancelled, Reason::MigrationCancelled),
        (broken, Reason::TransferFailed),
        (target_down, Reason::SledNotReady),
        (late, Reason::Timeout),
        (stalled, Reason::Timeout),
    ] {
        let plan = case.run();
        assert_eq!(
            plan.status.phase,
            Some(MigrationPhase::Transferring),
            "not final"
        );
        let abort = plan.status.abort.as_ref().expect("an abort is asked for");
        assert_eq!(abort.reason, reason, "{}", abort.message);
        assert!(plan.status.finished_at.is_none());
        // Asked once: planning again on the result asks for nothing new.
        let mut again = case;
        again.migration.status = Some(plan.status.clone());
        let second = again.run();
        assert_eq!(second.status.abort, plan.status.abort);
        assert!(second.events().next().is_none());
    }
    // While switching, a lost sled is no reason to abort: the switch is imminent.
    let mut switching = transferring();
    switching.target = Some(vmm(
        "web-v2",
        "sled-2",
        0,
        Some((MigrationRole::Target, VmmMigrationPhase::Ready)),
    ));
    switching.sleds = vec![sled("sled-1", false, &[]), sled("sled-2", true, &[])];
    let plan = switching.run();
    assert_eq!(plan.status.phase, Some(MigrationPhase::Switching));
    assert!(plan.status.abort.is_none());
}

/// A change to the instance's status.
type StatusChange = fn(&mut InstanceStatus);

fn restart(phase: Option<MigrationPhase>) -> Migration {
    let mut migration = migration("move", phase);
    migration.spec.mode = MigrationMode::Restart;
    migration
}

#[test]
fn a_restart_is_admitted_without_a_prediction_and_within_the_same_limits() {
    // A guest dirtying faster than the link: a live move is refused, a restart is not.
    let mut hot = Case::new(restart(None));
    hot.source = Some(vmm("web-v1", "sled-1", 2 * GBIT10, None));
    let plan = hot.run();
    assert_eq!(
        outcome(&plan),
        (
            Some(MigrationPhase::Scheduling),
            Some(Reason::MigrationStarted)
        )
    );
    assert_eq!(plan.status.progress, None, "no bytes to show");
    assert!(
        plan.status.message.starts_with("restarting web"),
        "{}",
        plan.status.message
    );
    let mut live = Case::new(migration("move", None));
    live.source = hot.source.clone();
    assert_eq!(
        outcome(&live.run()),
        (Some(MigrationPhase::Failed), Some(Reason::WillNotConverge))
    );
    // The limits are the live ones.
    let mut busy = Case::new(restart(None));
    busy.load.add(Some("sled-1"), None);
    busy.load.add(Some("sled-1"), None);
    busy.load.add(Some("sled-1"), None);
    busy.load.add(Some("sled-1"), None);
    assert_eq!(
        outcome(&busy.run()),
        (
            Some(MigrationPhase::Pending),
            Some(Reason::MigrationThrottled)
        )
    );
}

#[test]
fn a_restarts_phase_follows_the_instance() {
    let status_of = |case: &mut Case| {
        case.instance
            .as_mut()
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .clone()
    };
    let cases: Vec<(&str, StatusChange, MigrationPhase)> = vec![
        (
            "not started by the instance yet",
            |_| {},
            MigrationPhase::Scheduling,
        ),
        (
            "named, the source still active",
            |s| s.migration = Some("move".into()),
            MigrationPhase::Stopping,
        ),
        (
            "named, the source gone",
            |s| {
                s.migration = Some("move".into());
                s.active_vmm = None;
                s.sled = None;
            },
            MigrationPhase::Stopping,
        ),
        (
            "named, the new Vmm active",
            |s| {
                s.migration = Some("move".into());
                s.active_vmm = Some("web-v2".into());
                s.sled = Some("sled-2".into());
            },
            MigrationPhase::TargetStarting,
        ),
    ];
    for (what, change, phase) in cases {
        let mut case = Case::new(restart(Some(MigrationPhase::Scheduling)));
        let mut status = status_of(&mut case);
        change(&mut status);
        case.instance.as_mut().unwrap().status = Some(status);
        // A restart makes no transfer progress: a long stall is no reason to abort.
        case.stalled_for = Duration::from_secs(600);
        let plan = case.run();
        assert_eq!(plan.status.phase, Some(phase), "{what}");
        assert_eq!(plan.status.abort, None, "{what}");
        if phase == MigrationPhase::TargetStarting {
            assert_eq!(plan.status.target_vmm.as_deref(), Some("web-v2"));
            assert_eq!(plan.status.target_sled.as_deref(), Some("sled-2"));
        }
    }
}

#[test]
fn a_restart_times_out_after_the_base_alone_and_ends_as_the_instance_decided() {
    // 4 GiB: a live move may take 60 + 4 × 20 s; a restart copies nothing and gets 60 s.
    let mut late = Case::new(restart(Some(MigrationPhase::Stopping)));
    late.now = at(61).0;
    let abort = late.run().status.abort.expect("an abort is asked for");
    assert_eq!(abort.reason, Reason::Timeout, "{}", abort.message);
    assert_eq!(
        Timeouts::default().limit(MigrationMode::Restart, 4096),
        Duration::from_secs(60)
    );
    assert_eq!(
        Timeouts::default().limit(MigrationMode::Live, 4096),
        Duration::from_secs(140)
    );

    let mut decided = Case::new(restart(Some(MigrationPhase::TargetStarting)));
    decided.migration.spec.cancel = true;
    let status = decided.instance.as_mut().unwrap().status.as_mut().unwrap();
    status.location_generation = 4;
    status.last_migration = Some(MigrationOutcome {
        name: "move".into(),
        phase: MigrationPhase::Succeeded,
        reason: Some(Reason::MigrationSucceeded),
        message: "restarted".into(),
        target_vmm: None,
        at: at(5),
    });
    let plan = decided.run();
    assert_eq!(plan.status.phase, Some(MigrationPhase::Succeeded));
    assert_eq!(plan.status.location_generation, Some(4));
    assert!(
        plan.status.message.contains("after the stop"),
        "{}",
        plan.status.message
    );
}
