use std::sync::Arc;
use std::time::Duration;

use corral_crds::condition;
use corral_crds::{
    ConditionStatus, HealthVerdict, Reason, Sled, SledConditionType, SledStatus, Vmm,
};
use serde_json::json;

use super::*;

const GRACE: Duration = Duration::from_secs(20);

fn sled(epoch: u64) -> Sled {
    let mut sled: Sled = serde_json::from_value(json!({
        "apiVersion": "corral.dev/v1alpha1", "kind": "Sled",
        "metadata": {"name": "s1", "resourceVersion": "1"},
        "spec": {"powerController": "http://127.0.0.1:1/sleds/s1"},
    }))
    .unwrap();
    let mut status = SledStatus {
        epoch,
        ..Default::default()
    };
    condition::set(
        &mut status.conditions,
        SledConditionType::Ready,
        ConditionStatus::True,
        Reason::AgentReady,
        "the node-agent runs",
        now(),
    );
    sled.status = Some(status);
    sled
}

fn vmm(name: &str, sled_epoch: u64) -> Arc<Vmm> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Vmm",
            "metadata": {"name": name, "namespace": "default",
                         "finalizers": ["corral.dev/node-agent"]},
            "spec": {"instance": name, "sled": "s1", "sledEpoch": sled_epoch,
                     "resources": {"cpus": 1, "memoryMiB": 512}, "image": "debian"},
        }))
        .unwrap(),
    )
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_000_000).unwrap()
}

fn calm() -> Storm {
    Storm {
        unreachable: 1,
        sleds: 6,
        limit: 2,
        since_storm: None,
    }
}

fn observed<'a>(
    sled: &'a Sled,
    age: u64,
    power: Option<Power>,
    held: &'a [Arc<Vmm>],
) -> Observed<'a> {
    Observed {
        sled,
        heartbeat: Heartbeat {
            age: Duration::from_secs(age),
            lease_duration: Some(Duration::from_secs(15)),
            renewed: None,
        },
        power,
        storm: calm(),
        held,
        release_budget: 100,
        grace: GRACE,
        now: now(),
    }
}

/// `sled` with the plan's status, as the API would store it.
fn stored(sled: &Sled, plan: &Plan) -> Sled {
    Sled {
        status: Some(plan.status.clone()),
        ..sled.clone()
    }
}

fn verdict(plan: &Plan) -> (HealthVerdict, Reason) {
    let health = plan.status.health.as_ref().expect("a verdict");
    (health.verdict, health.reason)
}

fn actions(plan: &Plan) -> Vec<Action> {
    plan.actions().cloned().collect()
}

#[test]
fn a_sled_never_booted_is_not_judged() {
    let sled = sled(0);
    let plan = plan(&observed(&sled, 100, Some(Power::On), &[]));
    assert!(plan.steps.is_empty());
    assert!(plan.status.health.is_none());
}

#[test]
fn a_renewed_lease_is_healthy_and_planning_again_changes_nothing() {
    let sled = sled(3);
    let first = plan(&observed(&sled, 1, None, &[]));
    assert_eq!(
        verdict(&first),
        (HealthVerdict::Healthy, Reason::AgentReady)
    );
    assert_eq!(first.steps.first(), Some(&Step::WriteStatus));
    assert_eq!(first.events().count(), 1);
    // Looked at again when it would turn Suspect (grace/2 = 10 s after the renewal).
    assert!(first.requeue.unwrap() <= Duration::from_secs(9) + Duration::from_millis(1));
    let again = plan(&observed(&stored(&sled, &first), 5, None, &[]));
    assert!(!again.changes_anything(), "{:?}", again.steps);
    assert_eq!(again.events().count(), 0);
}

#[test]
fn a_late_lease_is_suspect_and_an_expired_one_unreachable_then_powered_off_and_fenced() {
    let held = [vmm("a-v1", 3), vmm("b-v1", 2)];
    let sled = sled(3);
    let healthy = stored(&sled, &plan(&observed(&sled, 1, None, &held)));
    let suspect = plan(&observed(&healthy, 12, None, &held));
    assert_eq!(
        verdict(&suspect),
        (HealthVerdict::Suspect, Reason::HeartbeatLate)
    );
    assert!(actions(&suspect).is_empty());
    assert!(condition::is_true(
        &suspect.status.conditions,
        SledConditionType::Ready
    ));
    let suspect = stored(&healthy, &suspect);

    // Expired, power On: the verdict is written first, and nothing is done on it yet.
    let unreachable = plan(&observed(&suspect, 21, Some(Power::On), &held));
    assert_eq!(
        verdict(&unreachable),
        (HealthVerdict::Unreachable, Reason::HeartbeatExpired)
    );
    assert!(actions(&unreachable).is_empty());
    let ready = condition::find(&unreachable.status.conditions, SledConditionType::Ready).unwrap();
    assert_eq!(
        (ready.status, ready.reason),
        (ConditionStatus::False, Reason::HeartbeatExpired)
    );
    assert_eq!(unreachable.status.epoch, 3, "no fence without proof");
    let unreachable = stored(&suspect, &unreachable);

    // Stored Unreachable: power off, then (only then) the fence, then the releases.
    let fenced = plan(&observed(&unreachable, 22, Some(Power::On), &held));
    let kinds: Vec<&str> = fenced
        .steps
        .iter()
        .filter(|step| !matches!(step, Step::Event(_)))
        .map(|step| step.kind())
        .collect();
    assert_eq!(
        &kinds[..4],
        ["PowerOff", "WriteStatus", "Release", "Release"]
    );
    assert_eq!(fenced.steps[0], Step::Act(Action::PowerOff));
    assert_eq!(fenced.steps[1], Step::WriteStatus);
    assert_eq!(
        verdict(&fenced),
        (HealthVerdict::Fenced, Reason::FencedByPowerOff)
    );
    assert_eq!(fenced.status.epoch, 4);
    let health = fenced.status.health.as_ref().unwrap();
    assert_eq!(health.fenced_epoch, Some(4));
    assert_eq!(health.evacuation.as_ref().unwrap().total, 2);
    assert!(condition::is_true(
        &fenced.status.conditions,
        SledConditionType::Fenced
    ));
}

#[test]
fn a_sled_found_off_is_powered_off_then_fenced_without_being_powered_off_again() {
    let sled = sled(3);
    let off = plan(&observed(&sled, 25, Some(Power::Off), &[]));
    assert_eq!(
        verdict(&off),
        (HealthVerdict::PoweredOff, Reason::PoweredOff)
    );
    assert!(actions(&off).is_empty());
    let fenced = plan(&observed(&stored(&sled, &off), 26, Some(Power::Off), &[]));
    assert_eq!(
        verdict(&fenced),
        (HealthVerdict::Fenced, Reason::PoweredOff)
    );
    assert!(!actions(&fenced).contains(&Action::PowerOff));
    assert_eq!(fenced.status.epoch, 4);
}

#[test]
fn a_silent_power_controller_leaves_the_sled_unreachable_until_an_operator_confirms_its_epoch() {
    let silent = || Some(Power::Unanswered("timed out".into()));
    let mut sled = sled(3);
    let unreachable = plan(&observed(&sled, 30, silent(), &[]));
    assert_eq!(
        verdict(&unreachable),
        (
            HealthVerdict::Unreachable,
            Reason::PowerControllerUnreachable
        )
    );
    sled = stored(&sled, &unreachable);
    let waiting = plan(&observed(&sled, 60, silent(), &[]));
    assert!(
        !waiting.changes_anything(),
        "no fence on a timer: {:?}",
        waiting.steps
    );
    // A confirmation of an earlier life does nothing.
    sled.spec.fence_confirmed_epoch = Some(2);
    assert!(!plan(&observed(&sled, 60, silent(), &[])).changes_anything());
    sled.spec.fence_confirmed_epoch = Some(3);
    let fenced = plan(&observed(&sled, 60, silent(), &[]));
    assert_eq!(
        verdict(&fenced),
        (HealthVerdict::Fenced, Reason::FencedByOperator)
    );
    assert_eq!(fenced.status.epoch, 4);
    assert!(!actions(&fenced).contains(&Action::PowerOff));
}

#[test]
fn the_storm_guard_powers_nothing_off_but_a_sled_read_off_still_fences() {
    let storm = Storm {
        unreachable: 4,
        sleds: 6,
        limit: 2,
        since_storm: Some(Duration::ZERO),
    };
    let sled = sled(3);
    let mut observed_sled = observed(&sled, 30, Some(Power::On), &[]);
    observed_sled.storm = storm;
    let paused = plan(&observed_sled);
    assert_eq!(
        verdict(&paused),
        (HealthVerdict::Unreachable, Reason::FencingPaused)
    );
    let paused_sled = stored(&sled, &paused);
    let mut again = observed(&paused_sled, 31, Some(Power::On), &[]);
    again.storm = storm;
    let again = plan(&again);
    assert!(!again.changes_anything(), "{:?}", again.steps);
    // The count falls back: the sleds that went silent together renew over a heartbeat, so
    // nothing is powered off until the count has stayed down for half the expiry (10 s)...
    let settling = Storm {
        unreachable: 1,
        since_storm: Some(Duration::from_secs(4)),
        ..storm
    };
    let mut early = observed(&paused_sled, 32, Some(Power::On), &[]);
    early.storm = settling;
    let early = plan(&early);
    assert!(!early.changes_anything(), "{:?}", early.steps);
    assert!(early.requeue.unwrap() <= RECHECK);
    // ...and a sled that renews meanwhile is simply healthy again.
    let mut renewed = observed(&paused_sled, 0, None, &[]);
    renewed.storm = settling;
    assert_eq!(
        verdict(&plan(&renewed)),
        (HealthVerdict::Healthy, Reason::HeartbeatRenewed)
    );
    // Then the stored Unreachable is acted on.
    let mut resumed = observed(&paused_sled, 42, Some(Power::On), &[]);
    resumed.storm = Storm {
        since_storm: Some(Duration::from_secs(10)),
        ..settling
    };
    assert_eq!(actions(&plan(&resumed))[0], Action::PowerOff);
    assert_eq!(
        actions(&plan(&observed(&paused_sled, 42, Some(Power::On), &[])))[0],
        Action::PowerOff,
        "a controller that never saw the storm (it started since) acts at once"
    );
    // Off is never in doubt.
    let mut off = observed(&paused_sled, 32, Some(Power::Off), &[]);
    off.storm = storm;
    assert_eq!(
        verdict(&plan(&off)),
        (HealthVerdict::Fenced, Reason::PoweredOff)
    );
    assert_eq!(StormGuard::default().limit(6), 2);
    assert_eq!(StormGuard::default().limit(3), 2);
    assert_eq!(StormGuard::default().limit(100), 33);
}

#[test]
fn a_fenced_sled_releases_its_ended_life_within_the_budget_and_says_how_far_it_got() {
    let held = [vmm("a-v1", 3), vmm("b-v1", 3), vmm("c-v1", 2)];
    let sled = sled(3);
    let off = stored(&sled, &plan(&observed(&sled, 25, Some(Power::Off), &held)));
    let mut fencing = observed(&off, 26, Some(Power::Off), &held);
    fencing.release_budget = 2;
    let fenced = plan(&fencing);
    assert_eq!(
        actions(&fenced),
        vec![
            Action::Release {
                namespace: "default".into(),
                name: "a-v1".into()
            },
            Action::Release {
                namespace: "default".into(),
                name: "b-v1".into()
            },
        ]
    );
    assert!(fenced.requeue.unwrap() < Duration::from_secs(1));
    let fenced_sled = stored(&off, &fenced);
    // Two were released; the third is still held.
    let rest = [held[2].clone()];
    let mut next = observed(&fenced_sled, 27, None, &rest);
    next.release_budget = 2;
    let next = plan(&next);
    assert_eq!(
        actions(&next),
        vec![Action::Release {
            namespace: "default".into(),
            name: "c-v1".into()
        }]
    );
    let evacuation = next
        .status
        .health
        .as_ref()
        .unwrap()
        .evacuation
        .clone()
        .unwrap();
    assert_eq!((evacuation.total, evacuation.released), (3, 2));
    let done = plan(&observed(&stored(&fenced_sled, &next), 28, None, &[]));
    let health = done.status.health.as_ref().unwrap();
    assert_eq!(
        health.reason,
        Reason::PoweredOff,
        "the verdict keeps why it was fenced"
    );
    let evacuation = health.evacuation.as_ref().unwrap();
    assert_eq!(evacuation.released, 3);
    assert!(evacuation.completed.is_some());
    assert_eq!(done.events().next().unwrap().reason, Reason::Evacuated);
    // A Vmm placed in the sled's new life is never released.
    let new_life = [vmm("d-v1", 4)];
    let later = plan(&observed(&stored(&fenced_sled, &done), 29, None, &new_life));
    assert!(actions(&later).is_empty());
}

#[test]
fn a_fenced_sled_that_rejoins_with_a_new_epoch_is_healthy_again() {
    let sled = sled(3);
    let off = stored(&sled, &plan(&observed(&sled, 25, Some(Power::Off), &[])));
    let fenced = stored(&off, &plan(&observed(&off, 26, Some(Power::Off), &[])));
    // A zombie's renewal does not lift a fence: only a new epoch does.
    let still = plan(&observed(&fenced, 0, None, &[]));
    assert!(!still.changes_anything(), "{:?}", still.steps);
    let mut rejoined = fenced.clone();
    rejoined.status.as_mut().unwrap().epoch = 5;
    let healthy = plan(&observed(&rejoined, 0, None, &[]));
    assert_eq!(
        verdict(&healthy),
        (HealthVerdict::Healthy, Reason::SledBooted)
    );
    let conditions = &healthy.status.conditions;
    assert!(condition::is_true(conditions, SledConditionType::Ready));
    let fenced_condition = condition::find(conditions, SledConditionType::Fenced).unwrap();
    assert_eq!(fenced_condition.status, ConditionStatus::False);
    assert_eq!(healthy.status.epoch, 5);
}

#[test]
fn a_sled_is_not_judged_before_its_agent_is_late_by_its_own_lease() {
    let sled = sled(3);
    let mut short_grace = observed(&sled, 12, Some(Power::On), &[]);
    short_grace.grace = Duration::from_secs(3);
    // The agent promised to renew within 15 s: 12 s is late, not expired.
    assert_eq!(
        verdict(&plan(&short_grace)),
        (HealthVerdict::Suspect, Reason::HeartbeatLate)
    );
    short_grace.heartbeat.age = Duration::from_secs(16);
    assert_eq!(
        verdict(&plan(&short_grace)),
        (HealthVerdict::Unreachable, Reason::HeartbeatExpired)
    );
}
