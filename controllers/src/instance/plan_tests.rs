//! The instance controller's plan, table by table: each test builds what the controller
//! observes and checks the plan's status and steps.

use std::sync::Arc;

use corral_crds::{Instance, InstanceSpec, Vmm, VmmSpec, VmmStatus};
use jiff::Timestamp;

use super::*;
use crate::scheduler::Placement;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn instance(strategy: RunStrategy) -> Instance {
    let mut instance = Instance::new(
        "web",
        InstanceSpec {
            cpus: 2,
            memory_mib: 1024,
            image: "debian".into(),
            run_strategy: strategy,
            ..Default::default()
        },
    );
    instance.metadata.namespace = Some("default".into());
    instance.metadata.generation = Some(1);
    instance.metadata.finalizers = Some(vec![corral_crds::INSTANCE_FINALIZER.into()]);
    instance
}

fn vmm(name: &str, state: Option<VmmState>, reason: Option<Reason>) -> Arc<Vmm> {
    let mut vmm = Vmm::new(
        name,
        VmmSpec {
            instance: "web".into(),
            sled: "sled-1".into(),
            sled_epoch: 1,
            image: "debian".into(),
            ..Default::default()
        },
    );
    vmm.status = Some(VmmStatus {
        state,
        reason,
        ..Default::default()
    });
    Arc::new(vmm)
}

fn run(instance: &Instance, vmms: &[Arc<Vmm>]) -> Plan {
    run_seeing(instance, vmms, Vec::new())
}

/// [`run`], with sleds reporting `unknown_vmms` that claim the instance.
fn run_seeing(instance: &Instance, vmms: &[Arc<Vmm>], unknown_vmms: Vec<(String, String)>) -> Plan {
    let observed = Observed {
        instance,
        vmms,
        active_in_flight: false,
        unknown_vmms,
        migrations: &[],
        target_in_flight: false,
        sleds: &[],
        now: now(),
    };
    plan(&observed, &mut |request| {
        let sled = if request.avoid == Some("sled-1") {
            "sled-2"
        } else {
            "sled-1"
        };
        Ok(Placement {
            sled: sled.into(),
            epoch: 1,
            because: "test".into(),
        })
    })
}

fn kinds(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|step| match step {
            Step::Event(event) => format!("Event({})", event.reason),
            Step::Act(Action::CreateVmm { name, sled, .. }) => format!("Create({name}@{sled})"),
            Step::Act(Action::DeleteVmm { name }) => format!("Delete({name})"),
            Step::Act(other) => format!("{other:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// A new instance with `strategy`, after its first plan (placed, `web-v1` named).
fn placed(strategy: RunStrategy) -> Instance {
    applied(instance(strategy), &run(&instance(strategy), &[]))
}

/// Applies a plan's status to the instance, as the executor would.
fn applied(mut instance: Instance, plan: &Plan) -> Instance {
    instance.status = Some(plan.status.clone());
    instance
}

#[test]
fn a_new_instance_is_named_first_then_created() {
    let plan = run(&instance(RunStrategy::Always), &[]);
    assert_eq!(
        kinds(&plan),
        ["WriteStatus", "Event(Placed)", "Create(web-v1@sled-1)"]
    );
    assert_eq!(plan.status.active_vmm.as_deref(), Some("web-v1"));
    assert_eq!(plan.status.state, Some(InstanceState::Creating));
    assert_eq!(plan.status.location_generation, 1);
}

#[test]
fn the_finalizer_comes_before_anything_else() {
    let mut fresh = instance(RunStrategy::Always);
    fresh.metadata.finalizers = None;
    assert_eq!(kinds(&run(&fresh, &[]))[0], "AddFinalizer");
}

#[test]
fn planning_again_on_the_result_does_nothing() {
    let first = run(&instance(RunStrategy::Always), &[]);
    let named = applied(instance(RunStrategy::Always), &first);
    let vmms = [vmm("web-v1", Some(VmmState::Running), None)];
    let second = run(&named, &vmms);
    let running = applied(named, &second);
    assert_eq!(
        running.status.as_ref().unwrap().state,
        Some(InstanceState::Running)
    );
    let third = run(&running, &vmms);
    assert!(third.steps.is_empty(), "{:?}", kinds(&third));
}

#[test]
fn the_state_follows_the_active_vmm() {
    let named = placed(RunStrategy::Always);
    for (vmm_state, expected) in [
        (None, InstanceState::Creating),
        (Some(VmmState::Creating), InstanceState::Creating),
        (Some(VmmState::Starting), InstanceState::Starting),
        (Some(VmmState::Running), InstanceState::Running),
        (Some(VmmState::Stopping), InstanceState::Stopping),
    ] {
        let plan = run(&named, &[vmm("web-v1", vmm_state, None)]);
        assert_eq!(plan.status.state, Some(expected), "{vmm_state:?}");
    }
}

#[test]
fn restarts_follow_the_run_strategy() {
    // (strategy, how the VMM ended, restarted?, resulting state when not)
    let cases = [
        (
            RunStrategy::Always,
            VmmState::Stopped,
            Reason::GuestShutdown,
            true,
            None,
        ),
        (
            RunStrategy::Always,
            VmmState::Failed,
            Reason::StaleSledEpoch,
            true,
            None,
        ),
        (
            RunStrategy::RerunOnFailure,
            VmmState::Failed,
            Reason::VmmKilled,
            true,
            None,
        ),
        (
            RunStrategy::RerunOnFailure,
            VmmState::Stopped,
            Reason::GuestShutdown,
            false,
            Some(InstanceState::Stopped),
        ),
        (
            RunStrategy::Manual,
            VmmState::Failed,
            Reason::GuestCrashed,
            false,
            Some(InstanceState::Failed),
        ),
    ];
    for (strategy, state, reason, restarted, rest) in cases {
        let named = placed(strategy);
        let plan = run(&named, &[vmm("web-v1", Some(state), Some(reason))]);
        let actions = kinds(&plan);
        assert!(
            actions.contains(&"Delete(web-v1)".to_string()),
            "{strategy}: {actions:?}"
        );
        assert_eq!(
            actions.iter().any(|a| a.starts_with("Create(web-v2")),
            restarted,
            "{strategy} after {reason}: {actions:?}"
        );
        if let Some(rest) = rest {
            assert_eq!(plan.status.state, Some(rest), "{strategy} after {reason}");
        }
    }
}

#[test]
fn a_guest_crash_backs_off_and_avoids_its_sled_afterwards() {
    let named = placed(RunStrategy::Always);
    let crashed = run(
        &named,
        &[vmm(
            "web-v1",
            Some(VmmState::Failed),
            Some(Reason::GuestCrashed),
        )],
    );
    assert_eq!(crashed.status.state, Some(InstanceState::Repairing));
    assert_eq!(crashed.requeue, Some(BACKOFF_BASE));
    assert!(condition::is_true(
        &crashed.status.conditions,
        Cond::RestartBackoff
    ));
    assert!(!kinds(&crashed).iter().any(|a| a.starts_with("Create")));
    // Once the backoff expired, the restart goes to another sled.
    let mut waited = applied(named, &crashed);
    waited.status.as_mut().unwrap().backoff_until = None;
    let restarted = run(&waited, &[]);
    assert!(
        kinds(&restarted).contains(&"Create(web-v2@sled-2)".to_string()),
        "{:?}",
        kinds(&restarted)
    );
    assert_eq!(restarted.status.restarts, 1);
}

#[test]
fn a_restarted_vmm_that_was_never_seen_is_created_not_declared_missing() {
    let named = placed(RunStrategy::Always);
    let ended = run(
        &named,
        &[vmm(
            "web-v1",
            Some(VmmState::Failed),
            Some(Reason::StaleSledEpoch),
        )],
    );
    let restarting = applied(named, &ended);
    assert_eq!(
        restarting.status.as_ref().unwrap().active_vmm.as_deref(),
        Some("web-v2")
    );
    // The controller stopped between naming web-v2 and creating it.
    let again = run(&restarting, &[]);
    assert!(
        kinds(&again).contains(&"Create(web-v2@sled-2)".to_string()),
        "{:?}",
        kinds(&again)
    );
    assert!(again.status.last_exit.is_none());
    // One that booted and vanished is missing.
    let booting = run(
        &restarting,
        &[vmm("web-v2", Some(VmmState::Starting), None)],
    );
    let gone = run(&applied(restarting, &booting), &[]);
    assert!(
        kinds(&gone).contains(&"Event(VmmMissing)".to_string()),
        "{:?}",
        kinds(&gone)
    );
}

#[test]
fn an_unknown_vmm_claiming_the_instance_is_shown_while_a_sled_lists_it() {
    let named = placed(RunStrategy::Always);
    let vmms = [vmm("web-v1", Some(VmmState::Running), None)];
    let second = run(&named, &vmms);
    let running = applied(named, &second);
    let shown = run_seeing(&running, &vmms, vec![("sled-2".into(), "vmm-x".into())]);
    let diverged = condition::find(&shown.status.conditions, Cond::Diverged).unwrap();
    assert_eq!(
        (diverged.status, diverged.reason),
        (ConditionStatus::True, Reason::UnknownVmm)
    );
    assert!(diverged.message.contains("vmm-x"), "{}", diverged.message);
    assert_eq!(shown.requeue, Some(UNKNOWN_VMM_RECHECK));
    // The active VMM is untouched: nothing but the status changes.
    assert_eq!(kinds(&shown), ["WriteStatus"]);

    let still_shown = applied(running, &shown);
    let gone = run(&still_shown, &vmms);
    let repaired = condition::find(&gone.status.conditions, Cond::Diverged).unwrap();
    assert_eq!(
        (repaired.status, repaired.reason),
        (ConditionStatus::False, Reason::DivergenceRepaired)
    );
    assert_eq!(kinds(&gone), ["WriteStatus", "Event(DivergenceRepaired)"]);
}

#[test]
fn a_manual_instance_killed_behind_the_back_stays_diverged_until_started() {
    let named = placed(RunStrategy::Manual);
    let killed = run(
        &named,
        &[vmm(
            "web-v1",
            Some(VmmState::Failed),
            Some(Reason::VmmKilled),
        )],
    );
    assert_eq!(killed.status.state, Some(InstanceState::Failed));
    assert!(condition::is_true(
        &killed.status.conditions,
        Cond::Diverged
    ));
    let failed = applied(named, &killed);
    assert!(condition::is_true(
        &run(&failed, &[]).status.conditions,
        Cond::Diverged
    ));
    // Halting it is a rest the user chose: repaired.
    let mut halted = failed.clone();
    halted.spec.run_strategy = RunStrategy::Halted;
    let rested = run(&halted, &[]);
    let condition = condition::find(&rested.status.conditions, Cond::Diverged).unwrap();
    assert_eq!(
        (condition.status, condition.reason),
        (ConditionStatus::False, Reason::DivergenceRepaired)
    );
}

#[test]
fn a_start_while_the_stop_is_under_way_restarts_without_divergence() {
    let named = placed(RunStrategy::Always);
    let running_vmms = [vmm("web-v1", Some(VmmState::Running), None)];
    let second = run(&named, &running_vmms);
    let running = applied(named, &second);
    let mut halted = running.clone();
    halted.spec.run_strategy = RunStrategy::Halted;
    let stopping = run(&halted, &running_vmms);
    assert!(kinds(&stopping).contains(&"Delete(web-v1)".to_string()));
    assert_eq!(stopping.status.state, Some(InstanceState::Stopping));
    // Started again before the Vmm is gone; then it is gone.
    let mut started = applied(halted, &stopping);
    started.spec.run_strategy = RunStrategy::Always;
    let restarted = run(&started, &[]);
    let kinds = kinds(&restarted);
    assert!(
        kinds.contains(&"Create(web-v2@sled-1)".to_string()),
        "{kinds:?}"
    );
    assert!(
        !kinds
            .iter()
            .any(|k| k.contains("Missing") || k.contains("Divergence")),
        "{kinds:?}"
    );
    assert!(!condition::is_true(
        &restarted.status.conditions,
        Cond::Diverged
    ));
}

#[test]
fn backoff_doubles_and_is_capped() {
    assert_eq!(backoff(1), Duration::from_secs(1));
    assert_eq!(backoff(3), Duration::from_secs(4));
    assert_eq!(backoff(40), BACKOFF_MAX);
}

#[test]
fn divergence_is_shown_until_a_vmm_runs_again() {
    let named = placed(RunStrategy::Always);
    let killed = run(
        &named,
        &[vmm(
            "web-v1",
            Some(VmmState::Failed),
            Some(Reason::VmmKilled),
        )],
    );
    let diverged = condition::find(&killed.status.conditions, Cond::Diverged).unwrap();
    assert_eq!(
        (diverged.status, diverged.reason),
        (ConditionStatus::True, Reason::VmmKilled)
    );
    assert!(kinds(&killed).contains(&"Event(DivergenceDetected)".to_string()));
    let repairing = applied(named, &killed);
    let running = run(&repairing, &[vmm("web-v2", Some(VmmState::Running), None)]);
    let repaired = condition::find(&running.status.conditions, Cond::Diverged).unwrap();
    assert_eq!(
        (repaired.status, repaired.reason),
        (ConditionStatus::False, Reason::DivergenceRepaired)
    );
    assert!(kinds(&running).contains(&"Event(DivergenceRepaired)".to_string()));
}

#[test]
fn halting_deletes_the_active_vmm_and_keeps_naming_it_until_gone() {
    let named = placed(RunStrategy::Always);
    let mut halted = named.clone();
    halted.spec.run_strategy = RunStrategy::Halted;
    let plan = run(&halted, &[vmm("web-v1", Some(VmmState::Running), None)]);
    assert!(kinds(&plan).contains(&"Delete(web-v1)".to_string()));
    assert_eq!(plan.status.state, Some(InstanceState::Stopping));
    assert_eq!(plan.status.active_vmm.as_deref(), Some("web-v1"));
    let gone = run(&applied(halted, &plan), &[]);
    assert_eq!(gone.status.state, Some(InstanceState::Stopped));
    assert_eq!(gone.status.active_vmm, None);
}

#[test]
fn deletion_tears_down_vmms_before_the_finalizer_goes() {
    let mut deleting = applied(
        instance(RunStrategy::Always),
        &run(&instance(RunStrategy::Always), &[]),
    );
    deleting.metadata.deletion_timestamp = Some(Time(now()));
    let plan = run(&deleting, &[vmm("web-v1", Some(VmmState::Running), None)]);
    assert!(kinds(&plan).contains(&"Delete(web-v1)".to_string()));
    assert!(!plan.steps.contains(&Step::RemoveFinalizer));
    let done = run(&deleting, &[]);
    assert_eq!(kinds(&done), ["RemoveFinalizer"]);
}

#[test]
fn unnamed_vmms_of_the_instance_are_deleted() {
    let named = placed(RunStrategy::Always);
    let plan = run(
        &named,
        &[
            vmm("web-v1", Some(VmmState::Running), None),
            vmm("web-v0", Some(VmmState::Running), None),
        ],
    );
    assert!(kinds(&plan).contains(&"Delete(web-v0)".to_string()));
    assert!(!kinds(&plan).contains(&"Delete(web-v1)".to_string()));
}

#[test]
fn manual_instances_start_again_on_a_new_start_request() {
    let named = applied(
        instance(RunStrategy::Manual),
        &run(&instance(RunStrategy::Manual), &[]),
    );
    let stopped = applied(
        named,
        &run(
            &applied(
                instance(RunStrategy::Manual),
                &run(&instance(RunStrategy::Manual), &[]),
            ),
            &[vmm(
                "web-v1",
                Some(VmmState::Stopped),
                Some(Reason::GuestShutdown),
            )],
        ),
    );
    assert!(
        run(&stopped, &[])
            .actions()
            .all(|a| !matches!(a, Action::CreateVmm { .. }))
    );
    let mut asked = stopped;
    asked.spec.start_request = Some("2026-11-21T00:00:00Z".into());
    let started = run(&asked, &[]);
    assert!(
        kinds(&started)
            .iter()
            .any(|a| a.starts_with("Create(web-v2")),
        "{:?}",
        kinds(&started)
    );
    // And the same request does not start it twice.
    let mut again = applied(asked, &started);
    again.status.as_mut().unwrap().active_vmm = None;
    again.status.as_mut().unwrap().last_exit = Some(InstanceExit {
        reason: Reason::GuestShutdown,
        vmm: "web-v2".into(),
        sled: None,
        at: Time(now()),
    });
    assert!(!again.spec.should_run(again.status.as_ref().unwrap()));
}

/// [`run`], with `sleds` cached.
fn run_with_sleds(
    instance: &Instance,
    vmms: &[Arc<Vmm>],
    sleds: &[Arc<corral_crds::Sled>],
) -> Plan {
    let observed = Observed {
        instance,
        vmms,
        active_in_flight: false,
        unknown_vmms: Vec::new(),
        migrations: &[],
        target_in_flight: false,
        sleds,
        now: now(),
    };
    plan(&observed, &mut |_request| {
        Ok(Placement {
            sled: "sled-2".into(),
            epoch: 1,
            because: "test".into(),
        })
    })
}

/// `sled-1` at `epoch`, judged `verdict` by the sled-health controller.
fn sled_1(
    epoch: u64,
    verdict: Option<(corral_crds::HealthVerdict, Reason)>,
) -> Arc<corral_crds::Sled> {
    let mut sled = corral_crds::Sled::new("sled-1", Default::default());
    sled.status = Some(corral_crds::SledStatus {
        epoch,
        health: verdict.map(|(verdict, reason)| corral_crds::SledHealth {
            verdict,
            reason,
            message: "test".into(),
            since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()),
            last_renew: None,
            fenced_epoch: None,
            evacuation: None,
        }),
        ..Default::default()
    });
    Arc::new(sled)
}

/// `vmm` holding (or not) the node-agent's finalizer.
fn held(vmm: Arc<Vmm>, holds: bool) -> Arc<Vmm> {
    let mut vmm = (*vmm).clone();
    vmm.metadata.finalizers = holds.then(|| vec![corral_crds::VMM_FINALIZER.into()]);
    Arc::new(vmm)
}

#[test]
fn a_vmm_outlived_by_its_sled_is_not_running_and_restarts_elsewhere_only_once_released() {
    let running = placed(RunStrategy::Always);
    let vmm = vmm("web-v1", Some(VmmState::Running), None);
    let fenced = [sled_1(
        2,
        Some((corral_crds::HealthVerdict::Fenced, Reason::FencedByPowerOff)),
    )];
    // Still held: the VMM does not run (its sled's life ended), but nothing restarts yet.
    let waiting = run_with_sleds(&running, &[held(vmm.clone(), true)], &fenced);
    assert_eq!(waiting.status.state, Some(InstanceState::Repairing));
    let condition = condition::find(&waiting.status.conditions, Cond::Running).unwrap();
    assert_eq!(
        (condition.status, condition.reason),
        (ConditionStatus::False, Reason::SledFailed)
    );
    assert_eq!(kinds(&waiting), ["WriteStatus"]);
    // Released by the fence: an exit the sled caused, restarted at once on another sled.
    let released = run_with_sleds(&running, &[held(vmm, false)], &fenced);
    let restarted = released
        .events()
        .find(|event| event.reason == Reason::Restarted)
        .expect("a Restarted event");
    assert!(
        restarted.message.contains("SledFailed"),
        "{}",
        restarted.message
    );
    assert_eq!(
        released.status.consecutive_failures, 0,
        "the sled's fault, not the guest's"
    );
    assert!(released.status.backoff_until.is_none());
    let kinds = kinds(&released);
    assert!(kinds.contains(&"Delete(web-v1)".to_string()), "{kinds:?}");
    assert!(
        kinds.contains(&"Create(web-v2@sled-2)".to_string()),
        "{kinds:?}"
    );
}

#[test]
fn a_manual_instance_on_a_fenced_sled_is_not_restarted() {
    let mut manual = instance(RunStrategy::Manual);
    manual.spec.start_request = Some("1".into());
    let running = applied(manual.clone(), &run(&manual, &[]));
    let vmm = held(vmm("web-v1", Some(VmmState::Running), None), false);
    let fenced = [sled_1(
        2,
        Some((corral_crds::HealthVerdict::Fenced, Reason::PoweredOff)),
    )];
    let plan = run_with_sleds(&running, &[vmm], &fenced);
    assert_eq!(
        plan.status.last_exit.as_ref().unwrap().reason,
        Reason::SledFailed
    );
    assert!(plan.status.active_vmm.is_none());
    assert!(
        !kinds(&plan).iter().any(|k| k.starts_with("Create")),
        "{:?}",
        kinds(&plan)
    );
}

#[test]
fn an_unreachable_sled_makes_running_unknown_and_a_healthy_one_clears_it() {
    let running = placed(RunStrategy::Always);
    let vmms = [held(vmm("web-v1", Some(VmmState::Running), None), true)];
    let unreachable = [sled_1(
        1,
        Some((
            corral_crds::HealthVerdict::Unreachable,
            Reason::HeartbeatExpired,
        )),
    )];
    let plan = run_with_sleds(&running, &vmms, &unreachable);
    let conditions = &plan.status.conditions;
    assert!(condition::is_true(conditions, Cond::SledUnreachable));
    let running_condition = condition::find(conditions, Cond::Running).unwrap();
    assert_eq!(running_condition.status, ConditionStatus::Unknown);
    assert!(
        plan.actions().next().is_none(),
        "nothing moves while the sled is in doubt"
    );
    let marked = applied(running, &plan);
    let healthy = [sled_1(
        1,
        Some((
            corral_crds::HealthVerdict::Healthy,
            Reason::HeartbeatRenewed,
        )),
    )];
    let back = run_with_sleds(&marked, &vmms, &healthy);
    let conditions = &back.status.conditions;
    let unreachable = condition::find(conditions, Cond::SledUnreachable).unwrap();
    assert_eq!(unreachable.status, ConditionStatus::False);
    assert!(condition::is_true(conditions, Cond::Running));
    // And again: nothing more.
    let again = run_with_sleds(&applied(marked, &back), &vmms, &healthy);
    assert!(again.steps.is_empty(), "{:?}", kinds(&again));
}
