use corral_crds::{
    ConditionStatus, DrainSpec, InstanceSpec, InstanceStatus, MigrationSpec, MigrationStatus,
    Resources, SledSpec, SledStatus, condition::Condition,
};

use super::*;
use corral_crds::SledConditionType;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn later(seconds: i64) -> Timestamp {
    now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap()
}

/// A Ready sled with `cpus` CPUs (4 GiB each), `used` CPUs of them allocated.
fn sled(name: &str, cpus: u32, used: u32) -> Arc<Sled> {
    let mut sled = Sled::new(name, SledSpec::default());
    sled.status = Some(SledStatus {
        capacity: Resources {
            cpus,
            memory_mib: cpus as u64 * 4096,
        },
        allocated: Resources {
            cpus: used,
            memory_mib: used as u64 * 4096,
        },
        vmms: used,
        epoch: 1,
        conditions: vec![Condition {
            type_: SledConditionType::Ready,
            status: ConditionStatus::True,
            reason: Reason::AgentReady,
            message: String::new(),
            last_transition_time: Time(now()),
            observed_generation: None,
        }],
        ..Default::default()
    });
    Arc::new(sled)
}

fn cordoned(sled: Arc<Sled>) -> Arc<Sled> {
    let mut sled = (*sled).clone();
    sled.spec.unschedulable = true;
    Arc::new(sled)
}

fn not_ready(sled: Arc<Sled>) -> Arc<Sled> {
    let mut sled = (*sled).clone();
    sled.status.as_mut().unwrap().conditions[0].status = ConditionStatus::False;
    Arc::new(sled)
}

fn with_vmms(sled: Arc<Sled>, vmms: u32) -> Arc<Sled> {
    let mut sled = (*sled).clone();
    sled.status.as_mut().unwrap().vmms = vmms;
    Arc::new(sled)
}

/// An instance with `cpus` CPUs (4 GiB each) running on `on`.
fn instance(name: &str, cpus: u32, on: &str) -> Arc<Instance> {
    let mut instance = Instance::new(
        name,
        InstanceSpec {
            cpus,
            memory_mib: cpus as u64 * 4096,
            image: "debian".into(),
            ..Default::default()
        },
    );
    instance.metadata.namespace = Some("default".into());
    instance.status = Some(InstanceStatus {
        state: Some(InstanceState::Running),
        sled: Some(on.into()),
        active_vmm: Some(format!("{name}-v1")),
        ..Default::default()
    });
    Arc::new(instance)
}

fn with_strategy(instance: Arc<Instance>, strategy: EvictionStrategy) -> Arc<Instance> {
    let mut instance = (*instance).clone();
    instance.spec.eviction_strategy = strategy;
    Arc::new(instance)
}

fn drain(max_parallel: u32) -> Drain {
    let mut drain = Drain::new(
        "d",
        DrainSpec {
            sled: "sled-1".into(),
            deadline: None,
            max_parallel,
            force: false,
            cancel: false,
        },
    );
    drain.metadata.generation = Some(1);
    drain
}

fn migration(name: &str, instance: &str, phase: Option<MigrationPhase>) -> Arc<Migration> {
    let mut migration = Migration::new(
        name,
        MigrationSpec {
            instance: instance.into(),
            target_sled: None,
            reason: corral_crds::MigrationReason::Drain,
            mode: Default::default(),
            cancel: false,
        },
    );
    migration.metadata.namespace = Some("default".into());
    migration.status = Some(MigrationStatus {
        phase,
        message: if phase == Some(MigrationPhase::Failed) {
            "the transfer broke".into()
        } else {
            String::new()
        },
        ..Default::default()
    });
    Arc::new(migration)
}

fn run(
    drain: &Drain,
    sleds: &[Arc<Sled>],
    instances: &[Arc<Instance>],
    migrations: &[Arc<Migration>],
    at: Timestamp,
) -> Plan {
    run_with_vmms(drain, sleds, instances, migrations, &[], at)
}

fn run_with_vmms(
    drain: &Drain,
    sleds: &[Arc<Sled>],
    instances: &[Arc<Instance>],
    migrations: &[Arc<Migration>],
    vmms: &[Arc<Vmm>],
    at: Timestamp,
) -> Plan {
    plan(&Observed {
        drain,
        sleds,
        instances,
        migrations,
        vmms,
        earlier_drain: None,
        now: at,
    })
}

/// The drain with the plan's status written.
fn applied(drain: &Drain, plan: &Plan) -> Drain {
    let mut drain = drain.clone();
    drain.status = Some(plan.status.clone());
    drain
}

/// The Migrations a plan creates, as (name, instance, target).
fn created(plan: &Plan) -> Vec<(String, String, String)> {
    plan.actions()
        .filter_map(|a| match a {
            Action::CreateMigration {
                name,
                instance,
                target_sled,
                ..
            } => Some((name.clone(), instance.clone(), target_sled.clone())),
            _ => None,
        })
        .collect()
}

fn cancelled(plan: &Plan) -> Vec<String> {
    plan.actions()
        .filter_map(|a| match a {
            Action::CancelMigration { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn events(plan: &Plan) -> Vec<Reason> {
    plan.events().map(|event| event.reason).collect()
}

fn state_of(plan: &Plan, instance: &str) -> DrainItemState {
    plan.status
        .plan
        .iter()
        .find(|i| i.instance == instance)
        .unwrap_or_else(|| panic!("{instance} not in the plan"))
        .state
}

/// `instance` after a move to `to`.
fn moved(instance: &Arc<Instance>, to: &str) -> Arc<Instance> {
    let mut instance = (**instance).clone();
    instance.status.as_mut().unwrap().sled = Some(to.into());
    Arc::new(instance)
}

#[test]
fn a_drain_first_cordons_the_sled_and_plans_only_once_the_cordon_shows() {
    let sleds = [sled("sled-1", 16, 4), sled("sled-2", 16, 0)];
    let instances = [instance("a", 4, "sled-1")];
    let plan = run(&drain(4), &sleds, &instances, &[], now());
    assert_eq!(
        plan.steps,
        vec![
            Step::Act(Action::Cordon {
                sled: "sled-1".into()
            }),
            Step::WriteStatus
        ]
    );
    assert_eq!(plan.status.phase, Some(DrainPhase::Pending));
    assert!(plan.status.plan.is_empty());
    assert_eq!(plan.requeue, Some(SHORT_RECHECK));
}

#[test]
fn a_plan_that_fits_spreads_targets_by_free_capacity_and_starts_within_max_parallel() {
    let sleds = [
        cordoned(sled("sled-1", 32, 12)),
        sled("sled-2", 16, 0),
        sled("sled-3", 16, 6),
    ];
    let instances = [
        instance("a", 4, "sled-1"),
        instance("b", 4, "sled-1"),
        instance("c", 4, "sled-1"),
        instance("elsewhere", 4, "sled-2"),
    ];
    let drain = drain(2);
    let plan = run(&drain, &sleds, &instances, &[], now());
    assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
    assert_eq!(plan.status.reason, Some(Reason::DrainStarted));
    // sled-2 has 16 CPUs free and sled-3 10: a and b go to sled-2 (16, then 12 free), c to
    // sled-3 (10 > 8).
    let targets: Vec<(&str, Option<&str>)> = plan
        .status
        .plan
        .iter()
        .map(|i| (i.instance.as_str(), i.target_sled.as_deref()))
        .collect();
    assert_eq!(
        targets,
        vec![
            ("a", Some("sled-2")),
            ("b", Some("sled-2")),
            ("c", Some("sled-3"))
        ]
    );
    assert_eq!(plan.steps[0], Step::WriteStatus, "name before create");
    assert_eq!(
        created(&plan),
        vec![
            ("d-a-1".into(), "a".into(), "sled-2".into()),
            ("d-b-1".into(), "b".into(), "sled-2".into()),
        ]
    );
    assert_eq!(plan.status.progress, "0/3");
    assert_eq!((plan.status.moving, plan.status.total), (2, 3));
    assert_eq!(plan.status.vmms_left, 12);
    assert_eq!(events(&plan), vec![Reason::DrainStarted]);

    // Planned again on its own result with the Migrations seen: nothing more to do.
    let migrations = [
        migration("d-a-1", "a", Some(MigrationPhase::Transferring)),
        migration("d-b-1", "b", None),
    ];
    let again = run(
        &applied(&drain, &plan),
        &sleds,
        &instances,
        &migrations,
        later(1),
    );
    assert_eq!(again.steps, vec![], "{again:?}");
    // Not seen yet (the cache lags, or a restart before the create): created again.
    let lagging = run(&applied(&drain, &plan), &sleds, &instances, &[], later(1));
    assert_eq!(created(&lagging).len(), 2);
    assert!(!lagging.steps.contains(&Step::WriteStatus));
}

#[test]
fn a_plan_that_does_not_fit_is_refused_naming_the_instance_and_every_sled() {
    let labelled = |name: &str, cpus: u32, used: u32, rack: &str| {
        let mut sled = (*sled(name, cpus, used)).clone();
        sled.labels_mut().insert("rack".into(), rack.into());
        Arc::new(sled)
    };
    let sleds = [
        cordoned(sled("sled-1", 32, 20)),
        labelled("sled-2", 16, 12, "1"),
        cordoned(sled("sled-3", 64, 0)),
        not_ready(sled("sled-4", 64, 0)),
        labelled("sled-5", 64, 0, "2"),
    ];
    let mut big = (*instance("db-3", 16, "sled-1")).clone();
    big.spec.sled_selector.insert("rack".into(), "1".into());
    let instances = [Arc::new(big), instance("small", 4, "sled-1")];
    let plan = run(&drain(4), &sleds, &instances, &[], now());
    assert_eq!(plan.status.phase, Some(DrainPhase::Refused));
    assert_eq!(plan.status.reason, Some(Reason::DoesNotFit));
    assert!(
        plan.status.message.contains(
            "default/db-3 (16 CPUs, 65536 MiB) fits no sled: sled-2 has 4 CPUs, 16384 MiB free, \
             sled-3 is cordoned, sled-4 is not Ready, sled-5 does not match its sledSelector"
        ),
        "{}",
        plan.status.message
    );
    assert!(!plan.status.message.contains("small"), "small fits sled-2");
    assert!(created(&plan).is_empty());
    assert_eq!(events(&plan), vec![Reason::DoesNotFit]);
    assert!(plan.status.finished_at.is_some());
    // Refused is final.
    let again = run(
        &applied(&drain(4), &plan),
        &sleds,
        &instances,
        &[],
        later(9),
    );
    assert_eq!(again.steps, vec![]);
}

#[test]
fn an_instance_that_may_not_move_refuses_the_drain_unless_forced() {
    let sleds = [cordoned(sled("sled-1", 32, 8)), sled("sled-2", 16, 0)];
    let instances = [
        with_strategy(instance("pinned", 4, "sled-1"), EvictionStrategy::None),
        with_strategy(instance("batch", 4, "sled-1"), EvictionStrategy::Restart),
    ];
    let plan = run(&drain(4), &sleds, &instances, &[], now());
    assert_eq!(plan.status.phase, Some(DrainPhase::Refused));
    assert!(
        plan.status
            .message
            .contains("default/pinned (4 CPUs, 16384 MiB) has evictionStrategy None"),
        "{}",
        plan.status.message
    );

    let mut forced = drain(4);
    forced.spec.force = true;
    let plan = run(&forced, &sleds, &instances, &[], now());
    assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
    assert_eq!(state_of(&plan, "pinned"), DrainItemState::Stays);
    // Restart is moved by a Migration too, a restart one.
    assert_eq!(
        created(&plan),
        vec![("d-batch-1".into(), "batch".into(), "sled-2".into())]
    );
    // Once batch has moved, the drain waits for pinned, which still runs there.
    let forced = applied(&forced, &plan);
    let instances = [instances[0].clone(), moved(&instances[1], "sled-2")];
    let migrations = [migration(
        "d-batch-1",
        "batch",
        Some(MigrationPhase::Succeeded),
    )];
    let sleds = [with_vmms(sleds[0].clone(), 1), sleds[1].clone()];
    let plan = run(&forced, &sleds, &instances, &migrations, later(10));
    assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
    assert_eq!(state_of(&plan, "batch"), DrainItemState::Moved);
    assert!(
        plan.status.message.contains("default/pinned"),
        "{}",
        plan.status.message
    );
}

#[test]
fn max_parallel_bounds_the_unfinished_migrations() {
    let sleds = [cordoned(sled("sled-1", 64, 20)), sled("sled-2", 64, 0)];
    let instances: Vec<Arc<Instance>> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|name| instance(name, 4, "sled-1"))
        .collect();
    let drain = drain(2);
    let first = run(&drain, &sleds, &instances, &[], now());
    assert_eq!(created(&first).len(), 2);
    let drain = applied(&drain, &first);
    // Both still run: nothing new.
    let running = [
        migration("d-a-1", "a", Some(MigrationPhase::Transferring)),
        migration("d-b-1", "b", Some(MigrationPhase::Pending)),
    ];
    let plan = run(&drain, &sleds, &instances, &running, later(10));
    assert!(created(&plan).is_empty(), "{plan:?}");
    // a succeeded and runs on sled-2: one more starts.
    let mut after = instances.clone();
    after[0] = moved(&instances[0], "sled-2");
    let done = [
        migration("d-a-1", "a", Some(MigrationPhase::Succeeded)),
        running[1].clone(),
    ];
    let plan = run(&drain, &sleds, &after, &done, later(10));
    assert_eq!(
        created(&plan),
        vec![("d-c-1".into(), "c".into(), "sled-2".into())]
    );
    assert_eq!(plan.status.progress, "1/5");
    assert_eq!((plan.status.moved, plan.status.moving), (1, 2));
    // One moved in 10 s, four left: about 40 s.
    assert_eq!(plan.status.eta_seconds, Some(40));
}

#[test]
fn a_failed_migration_is_retried_elsewhere_then_the_item_fails() {
    let sleds = [
        cordoned(sled("sled-1", 64, 4)),
        sled("sled-2", 64, 0),
        sled("sled-3", 32, 0),
    ];
    let instances = [instance("a", 4, "sled-1")];
    let mut drain = drain(1);
    let plan = run(&drain, &sleds, &instances, &[], now());
    assert_eq!(
        created(&plan),
        vec![("d-a-1".into(), "a".into(), "sled-2".into())]
    );
    drain = applied(&drain, &plan);
    for attempt in 1..MAX_ATTEMPTS {
        let name = format!("d-a-{attempt}");
        let failed = [migration(&name, "a", Some(MigrationPhase::Failed))];
        let plan = run(&drain, &sleds, &instances, &failed, later(5));
        let create = created(&plan);
        assert_eq!(create.len(), 1, "{plan:?}");
        assert_eq!(create[0].0, format!("d-a-{}", attempt + 1));
        // A fresh target, away from the one that failed.
        let previous = drain.status.as_ref().unwrap().plan[0].target_sled.clone();
        assert_ne!(Some(create[0].2.clone()), previous);
        assert_eq!(state_of(&plan, "a"), DrainItemState::Moving);
        drain = applied(&drain, &plan);
    }
    let name = format!("d-a-{MAX_ATTEMPTS}");
    let failed = [migration(&name, "a", Some(MigrationPhase::Failed))];
    let plan = run(&drain, &sleds, &instances, &failed, later(5));
    assert!(created(&plan).is_empty());
    assert_eq!(state_of(&plan, "a"), DrainItemState::Failed);
    assert_eq!(plan.status.phase, Some(DrainPhase::Failed));
    assert_eq!(plan.status.reason, Some(Reason::DrainFailed));
    assert!(
        plan.status.message.contains("the transfer broke"),
        "{}",
        plan.status.message
    );
}

#[test]
fn the_drain_completes_only_when_the_sled_reports_no_vmm() {
    let sleds = [cordoned(sled("sled-1", 64, 4)), sled("sled-2", 64, 0)];
    let instances = [instance("a", 4, "sled-1")];
    let drain = drain(4);
    let plan = run(&drain, &sleds, &instances, &[], now());
    let drain = applied(&drain, &plan);
    let instances = [moved(&instances[0], "sled-2")];
    let migrations = [migration("d-a-1", "a", Some(MigrationPhase::Succeeded))];
    // Moved, but the agent still reports the source VMM.
    let plan = run(&drain, &sleds, &instances, &migrations, later(20));
    assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
    assert_eq!(plan.status.progress, "1/1");
    assert!(
        plan.status.message.contains("4 left"),
        "{}",
        plan.status.message
    );
    let drain = applied(&drain, &plan);
    let empty = [with_vmms(sleds[0].clone(), 0), sleds[1].clone()];
    let plan = run(&drain, &empty, &instances, &migrations, later(21));
    assert_eq!(plan.status.phase, Some(DrainPhase::Completed));
    assert_eq!(plan.status.reason, Some(Reason::DrainCompleted));
    assert_eq!(events(&plan), vec![Reason::DrainCompleted]);
    assert_eq!(plan.status.vmms_left, 0);
}

#[test]
fn a_running_instance_still_on_the_sled_is_not_moved_because_its_migration_succeeded() {
    let sleds = [
        cordoned(with_vmms(sled("sled-1", 64, 4), 0)),
        sled("sled-2", 64, 0),
    ];
    let instances = [instance("a", 4, "sled-1")];
    let drain = drain(4);
    let plan = run(&drain, &sleds, &instances, &[], now());
    let drain = applied(&drain, &plan);
    let migrations = [migration("d-a-1", "a", Some(MigrationPhase::Succeeded))];
    let plan = run(&drain, &sleds, &instances, &migrations, later(3));
    assert_eq!(state_of(&plan, "a"), DrainItemState::Moving);
    assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
}

#[test]
fn cancel_stops_new_moves_and_cancels_unfinished_ones() {
    let sleds = [cordoned(sled("sled-1", 64, 12)), sled("sled-2", 64, 0)];
    let instances = [
        instance("a", 4, "sled-1"),
        instance("b", 4, "sled-1"),
        instance("c", 4, "sled-1"),
    ];
    let drain = drain(2);
    let plan = run(&drain, &sleds, &instances, &[], now());
    let mut drain = applied(&drain, &plan);
    drain.spec.cancel = true;
    let migrations = [
        migration("d-a-1", "a", Some(MigrationPhase::Succeeded)),
        migration("d-b-1", "b", Some(MigrationPhase::Transferring)),
    ];
    let plan = run(&drain, &sleds, &instances, &migrations, later(5));
    assert_eq!(plan.status.phase, Some(DrainPhase::Cancelled));
    assert_eq!(plan.status.reason, Some(Reason::DrainCancelled));
    assert_eq!(cancelled(&plan), vec!["d-b-1".to_string()]);
    assert!(created(&plan).is_empty());
    assert_eq!(events(&plan), vec![Reason::DrainCancelled]);
    // After a restart, a Migration not yet cancelled is cancelled again; nothing else.
    let drain = applied(&drain, &plan);
    let again = run(&drain, &sleds, &instances, &migrations, later(6));
    assert_eq!(
        again.steps,
        vec![Step::Act(Action::CancelMigration {
            namespace: "default".into(),
            name: "d-b-1".into()
        })]
    );
}

#[test]
fn a_passed_deadline_fails_the_drain_and_cancels_its_moves() {
    let sleds = [cordoned(sled("sled-1", 64, 8)), sled("sled-2", 64, 0)];
    let instances = [instance("a", 4, "sled-1"), instance("b", 4, "sled-1")];
    let mut drain = drain(1);
    drain.spec.deadline = Some("30m".into());
    let plan = run(&drain, &sleds, &instances, &[], now());
    assert_eq!(plan.status.deadline, Some(Time(later(1800))));
    let drain = applied(&drain, &plan);
    let migrations = [migration("d-a-1", "a", Some(MigrationPhase::Transferring))];
    let plan = run(&drain, &sleds, &instances, &migrations, later(1799));
    assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
    let plan = run(&drain, &sleds, &instances, &migrations, later(1800));
    assert_eq!(plan.status.phase, Some(DrainPhase::Failed));
    assert_eq!(plan.status.reason, Some(Reason::DeadlineExceeded));
    assert_eq!(cancelled(&plan), vec!["d-a-1".to_string()]);
    assert!(created(&plan).is_empty());

    let mut bad = self::drain(1);
    bad.spec.deadline = Some("soon".into());
    let plan = run(&bad, &sleds, &instances, &[], now());
    assert_eq!(plan.status.phase, Some(DrainPhase::Refused));
    assert!(plan.status.message.contains("soon"));
}

#[test]
fn an_empty_sled_completes_at_once_and_a_missing_sled_fails() {
    let sleds = [cordoned(sled("sled-1", 64, 0)), sled("sled-2", 64, 0)];
    let plan = run(&drain(4), &sleds, &[], &[], now());
    assert_eq!(plan.status.phase, Some(DrainPhase::Completed));
    assert_eq!(plan.status.progress, "0/0");
    let plan = run(&drain(4), &sleds[1..], &[], &[], now());
    assert_eq!(plan.status.phase, Some(DrainPhase::Failed));
    assert!(plan.status.message.contains("sled-1 does not exist"));
}

#[test]
fn a_sled_uncordoned_mid_drain_is_cordoned_again_and_the_drain_goes_on() {
    let sleds = [cordoned(sled("sled-1", 64, 8)), sled("sled-2", 64, 0)];
    let instances = [instance("a", 4, "sled-1"), instance("b", 4, "sled-1")];
    let drain = drain(1);
    let plan = run(&drain, &sleds, &instances, &[], now());
    let drain = applied(&drain, &plan);
    let uncordoned = [sled("sled-1", 64, 8), sleds[1].clone()];
    let migrations = [migration("d-a-1", "a", Some(MigrationPhase::Transferring))];
    let plan = run(&drain, &uncordoned, &instances, &migrations, later(2));
    assert_eq!(
        plan.steps,
        vec![Step::Act(Action::Cordon {
            sled: "sled-1".into()
        })]
    );
    assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
}

#[test]
fn a_second_drain_of_a_sled_is_refused() {
    let sleds = [cordoned(sled("sled-1", 64, 4)), sled("sled-2", 64, 0)];
    let instances = [instance("a", 4, "sled-1")];
    let plan = plan(&Observed {
        drain: &drain(4),
        sleds: &sleds,
        instances: &instances,
        vmms: &[],
        migrations: &[],
        earlier_drain: Some("sled-1-1".into()),
        now: now(),
    });
    assert_eq!(plan.status.phase, Some(DrainPhase::Refused));
    assert!(
        plan.status
            .message
            .contains("already being drained by sled-1-1")
    );
    assert!(created(&plan).is_empty());
}

proptest::proptest! {
    /// Whatever the sizes: a started plan never puts more on a sled than it has free, and
    /// planning again on its own result (the Migrations seen) does nothing more.
    #[test]
    fn a_started_plan_fits_the_free_capacity_and_is_stable(
        sizes in proptest::collection::vec(1u32..=16, 0..12),
        others in proptest::collection::vec((1u32..=64, 0u32..=64), 1..5),
        max_parallel in 1u32..=6,
    ) {
        let mut sleds = vec![cordoned(sled("sled-1", 256, sizes.iter().sum()))];
        for (index, (cpus, used)) in others.iter().enumerate() {
            sleds.push(sled(&format!("sled-{}", index + 2), *cpus, (*used).min(*cpus)));
        }
        let instances: Vec<Arc<Instance>> = sizes
            .iter()
            .enumerate()
            .map(|(index, cpus)| instance(&format!("i{index}"), *cpus, "sled-1"))
            .collect();
        let drain = drain(max_parallel);
        let plan = run(&drain, &sleds, &instances, &[], now());
        match plan.status.phase {
            Some(DrainPhase::Refused) => {
                proptest::prop_assert!(created(&plan).is_empty());
                proptest::prop_assert!(plan.status.message.contains("fits no sled"));
            }
            Some(DrainPhase::Draining) => {
                let mut planned: HashMap<String, u32> = HashMap::new();
                for item in &plan.status.plan {
                    let target = item.target_sled.clone().expect("every item has a target");
                    let cpus = instances.iter().find(|i| i.name_any() == item.instance).unwrap().spec.cpus;
                    *planned.entry(target).or_default() += cpus;
                }
                for sled in &sleds[1..] {
                    let free = sled.status.as_ref().map(|s| s.capacity.cpus - s.allocated.cpus).unwrap();
                    let put = planned.get(&sled.name_any()).copied().unwrap_or(0);
                    proptest::prop_assert!(put <= free, "{} gets {put} CPUs, has {free}", sled.name_any());
                }
                let made = created(&plan);
                proptest::prop_assert!(made.len() as u32 <= max_parallel);
                let seen: Vec<Arc<Migration>> = made
                    .iter()
                    .map(|(name, instance, _)| migration(name, instance, Some(MigrationPhase::Pending)))
                    .collect();
                let again = run(&applied(&drain, &plan), &sleds, &instances, &seen, later(1));
                proptest::prop_assert_eq!(again.steps, vec![]);
            }
            Some(DrainPhase::Completed) => proptest::prop_assert!(sizes.is_empty()),
            other => proptest::prop_assert!(false, "unexpected phase {:?}", other),
        }
    }
}

#[test]
fn parse_deadline_takes_go_durations_and_seconds() {
    assert_eq!(parse_deadline("30m"), Ok(Duration::from_secs(1800)));
    assert_eq!(parse_deadline("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_deadline("90"), Ok(Duration::from_secs(90)));
    assert!(parse_deadline("-5m").is_err());
    assert!(parse_deadline("later").is_err());
}

/// 10 Gbit/s.
const GBIT10: u64 = 1_250_000_000;

/// sled-1 (cordoned, with a 10 Gbit/s migration link) and sled-2 with room.
fn linked_sleds() -> [Arc<Sled>; 2] {
    let mut source = (*cordoned(sled("sled-1", 64, 4))).clone();
    source.status.as_mut().unwrap().migration_bandwidth = GBIT10;
    [Arc::new(source), sled("sled-2", 64, 0)]
}

/// The VMM `NAME-v1` on sled-1, its guest dirtying `dirty` bytes a second.
fn source_vmm(instance: &str, dirty: u64) -> Arc<Vmm> {
    let mut vmm = Vmm::new(
        &format!("{instance}-v1"),
        corral_crds::VmmSpec {
            instance: instance.into(),
            sled: "sled-1".into(),
            ..Default::default()
        },
    );
    vmm.metadata.namespace = Some("default".into());
    vmm.status = Some(corral_crds::VmmStatus {
        dirty_bytes_per_second: dirty,
        ..Default::default()
    });
    Arc::new(vmm)
}

/// The modes of the Migrations a plan creates, by instance.
fn modes(plan: &Plan) -> Vec<(String, MigrationMode)> {
    plan.actions()
        .filter_map(|a| match a {
            Action::CreateMigration { instance, mode, .. } => Some((instance.clone(), *mode)),
            _ => None,
        })
        .collect()
}

#[test]
fn each_eviction_strategy_moves_by_its_mode() {
    let quiet = 64 << 20;
    let hot = 2 * GBIT10;
    let cases = [
        (EvictionStrategy::LiveMigrate, quiet, MigrationMode::Live),
        // Live or not at all: the migration controller refuses it, the item fails.
        (EvictionStrategy::LiveMigrate, hot, MigrationMode::Live),
        (EvictionStrategy::Restart, quiet, MigrationMode::Restart),
        (EvictionStrategy::Restart, hot, MigrationMode::Restart),
        (
            EvictionStrategy::LiveMigrateIfPossible,
            quiet,
            MigrationMode::Live,
        ),
        (
            EvictionStrategy::LiveMigrateIfPossible,
            hot,
            MigrationMode::Restart,
        ),
    ];
    for (strategy, dirty, mode) in cases {
        let instances = [with_strategy(instance("a", 4, "sled-1"), strategy)];
        let vmms = [source_vmm("a", dirty)];
        let plan = run_with_vmms(&drain(4), &linked_sleds(), &instances, &[], &vmms, now());
        let what = format!("{strategy} dirtying {dirty} B/s");
        assert_eq!(plan.status.phase, Some(DrainPhase::Draining), "{what}");
        assert_eq!(modes(&plan), vec![("a".to_string(), mode)], "{what}");
        // The plan and its target are the same whatever the mode.
        assert_eq!(created(&plan)[0].2, "sled-2", "{what}");
        let message = &plan.status.plan[0].message;
        let said = message.contains("would not converge");
        assert_eq!(
            said,
            strategy == EvictionStrategy::LiveMigrateIfPossible && dirty == hot,
            "{what}: {message}"
        );
    }
}

#[test]
fn a_live_move_refused_for_not_converging_is_retried_as_a_restart_if_the_strategy_allows() {
    for (strategy, retried_as) in [
        (
            EvictionStrategy::LiveMigrateIfPossible,
            MigrationMode::Restart,
        ),
        (EvictionStrategy::LiveMigrate, MigrationMode::Live),
    ] {
        let instances = [with_strategy(instance("a", 4, "sled-1"), strategy)];
        // Quiet when planned (and no bandwidth known): the first move is live.
        let sleds = [
            cordoned(sled("sled-1", 64, 4)),
            sled("sled-2", 64, 0),
            sled("sled-3", 64, 0),
        ];
        let mut drain = drain(1);
        let plan = run(&drain, &sleds, &instances, &[], now());
        assert_eq!(modes(&plan), vec![("a".to_string(), MigrationMode::Live)]);
        drain = applied(&drain, &plan);
        let mut refused = (*migration("d-a-1", "a", Some(MigrationPhase::Failed))).clone();
        let status = refused.status.as_mut().unwrap();
        status.reason = Some(Reason::WillNotConverge);
        status.message = "refused: the transfer would not converge".into();
        let plan = run(&drain, &sleds, &instances, &[Arc::new(refused)], later(5));
        assert_eq!(
            modes(&plan),
            vec![("a".to_string(), retried_as)],
            "{strategy}"
        );
    }
}

#[test]
fn a_restart_named_but_never_created_is_created_again_as_a_restart() {
    let instances = [with_strategy(
        instance("a", 4, "sled-1"),
        EvictionStrategy::Restart,
    )];
    let sleds = linked_sleds();
    let drain = drain(4);
    let plan = run(&drain, &sleds, &instances, &[], now());
    let drain = applied(&drain, &plan);
    // The status names d-a-1; the Migration never appeared (the controller stopped).
    let plan = run(&drain, &sleds, &instances, &[], later(1));
    assert_eq!(
        modes(&plan),
        vec![("a".to_string(), MigrationMode::Restart)]
    );
    assert_eq!(created(&plan)[0].0, "d-a-1");
}
