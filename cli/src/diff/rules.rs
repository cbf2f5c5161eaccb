//! The rules of `corralctl diff`: [`differences`] between what was asked (Instance specs) and
//! what is (Instance, Vmm and Sled status), as a pure function of the three lists and the time.
//! The definitions are in the `diff` module docs; each is one function here, and the rules that
//! controllers also apply (whether an instance should run, whether a sled is ready, whether a
//! Vmm is abandoned or has ended, whether a condition holds) are the ones on the `corral_crds`
//! types, never a copy.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use kube::Resource;

use corral_crds::condition::{Condition, find, find_true};
use corral_crds::{
    Instance, InstanceConditionType, InstanceState, Reason, RunStrategy, Sled, SledConditionType,
    Vmm, VmmConditionType, VmmState,
};

use super::problem::{Difference, ObjectKind, ObjectRef, Problem};

/// A Vmm being deleted for longer than this is reported.
pub const TERMINATING_TOO_LONG: Duration = Duration::from_secs(5 * 60);

/// Every current difference, sorted by kind, namespace, name.
pub fn differences(
    instances: &[Instance],
    vmms: &[Vmm],
    sleds: &[Sled],
    now: Timestamp,
) -> Vec<Difference> {
    let rack = Rack::index(instances, vmms, sleds);
    let mut found = Vec::new();
    for instance in instances {
        let problems = instance_problems(instance, &rack);
        found.extend(about(ObjectKind::Instance, instance, problems));
    }
    for vmm in vmms {
        let problems = vmm_problems(vmm, &rack, now);
        found.extend(about(ObjectKind::Vmm, vmm, problems));
    }
    for sled in sleds {
        found.extend(about(ObjectKind::Sled, sled, sled_problems(sled)));
    }
    found.sort();
    found
}

/// The three lists, indexed the way the rules look objects up.
struct Rack<'a> {
    /// Instances by (namespace, name).
    instances: BTreeMap<(Option<&'a str>, &'a str), &'a Instance>,
    /// Vmms by (namespace, name).
    vmms: BTreeMap<(Option<&'a str>, &'a str), &'a Vmm>,
    /// Sleds by name.
    sleds: BTreeMap<&'a str, &'a Sled>,
}

impl<'a> Rack<'a> {
    fn index(instances: &'a [Instance], vmms: &'a [Vmm], sleds: &'a [Sled]) -> Rack<'a> {
        Rack {
            instances: instances.iter().map(|i| (key(i), i)).collect(),
            vmms: vmms.iter().map(|v| (key(v), v)).collect(),
            sleds: sleds.iter().map(|s| (key(s).1, s)).collect(),
        }
    }
}

/// An object's (namespace, name).
fn key<K: Resource>(object: &K) -> (Option<&str>, &str) {
    let meta = object.meta();
    (
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// `problems`, each as a difference of `object`.
fn about<K: Resource>(
    kind: ObjectKind,
    object: &K,
    problems: Vec<Problem>,
) -> impl Iterator<Item = Difference> {
    let (namespace, name) = key(object);
    let object = ObjectRef {
        kind,
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
    };
    problems.into_iter().map(move |problem| Difference {
        object: object.clone(),
        problem,
    })
}

fn instance_problems(instance: &Instance, rack: &Rack<'_>) -> Vec<Problem> {
    let conditions = instance.status.as_ref().map(|status| &status.conditions);
    let mut problems: Vec<Problem> = [
        not_running(instance),
        running_while_halted(instance),
        diverged(conditions, InstanceConditionType::Diverged)
            .map(|(reason, message)| Problem::InstanceDiverged { reason, message }),
    ]
    .into_iter()
    .flatten()
    .collect();
    problems.extend(active_vmm_problems(instance, rack));
    problems
}

/// **NotRunning**: [`Instance::should_run`] and its state is not `Running`.
fn not_running(instance: &Instance) -> Option<Problem> {
    let state = instance.status.as_ref().and_then(|status| status.state);
    (instance.should_run() && state != Some(InstanceState::Running)).then_some(
        Problem::NotRunning {
            run_strategy: instance.spec.run_strategy,
            state,
        },
    )
}

/// **RunningWhileHalted**: `Halted`, and still `Running` or `Starting`.
fn running_while_halted(instance: &Instance) -> Option<Problem> {
    if instance.spec.run_strategy != RunStrategy::Halted {
        return None;
    }
    match instance.status.as_ref().and_then(|status| status.state) {
        Some(state @ (InstanceState::Running | InstanceState::Starting)) => {
            Some(Problem::RunningWhileHalted { state })
        }
        _ => None,
    }
}

/// The reason and message of a `Diverged=True` condition among an object's `conditions`
/// (`None`: it has no status yet) (**InstanceDiverged**, **VmmDiverged**, **SledDiverged**).
fn diverged<T: PartialEq + Copy>(
    conditions: Option<&Vec<Condition<T>>>,
    diverged_type: T,
) -> Option<(Reason, String)> {
    find_true(conditions?, diverged_type).map(|c| (c.reason, c.message.clone()))
}

/// **ActiveVmmMissing**, **ActiveVmmFailed** and **SledMismatch**: what is wrong with the Vmm
/// the instance names active.
fn active_vmm_problems(instance: &Instance, rack: &Rack<'_>) -> Vec<Problem> {
    let status = instance.status.clone().unwrap_or_default();
    let Some(active) = &status.active_vmm else {
        return Vec::new();
    };
    let namespace = instance.metadata.namespace.as_deref();
    let Some(vmm) = rack.vmms.get(&(namespace, active.as_str())) else {
        return vec![Problem::ActiveVmmMissing {
            vmm: active.clone(),
        }];
    };
    let mut problems = Vec::new();
    let vmm_status = vmm.status.clone().unwrap_or_default();
    if vmm_status.state == Some(VmmState::Failed) {
        problems.push(Problem::ActiveVmmFailed {
            vmm: active.clone(),
            reason: vmm_status.reason,
            message: vmm_status.message,
        });
    }
    if status.sled.as_deref() != Some(vmm.spec.sled.as_str()) {
        problems.push(Problem::SledMismatch {
            vmm: active.clone(),
            instance_sled: status.sled.clone(),
            vmm_sled: vmm.spec.sled.clone(),
        });
    }
    problems
}

fn vmm_problems(vmm: &Vmm, rack: &Rack<'_>, now: Timestamp) -> Vec<Problem> {
    let conditions = vmm.status.as_ref().map(|status| &status.conditions);
    [
        abandoned(vmm, rack),
        misplaced(vmm, rack),
        diverged(conditions, VmmConditionType::Diverged)
            .map(|(reason, message)| Problem::VmmDiverged { reason, message }),
        terminating_too_long(vmm, now),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// **Abandoned**: [`Vmm::is_abandoned`], given its Instance as listed.
fn abandoned(vmm: &Vmm, rack: &Rack<'_>) -> Option<Problem> {
    let namespace = vmm.metadata.namespace.as_deref();
    let instance = rack
        .instances
        .get(&(namespace, vmm.spec.instance.as_str()))
        .copied();
    vmm.is_abandoned(instance).then(|| Problem::Abandoned {
        instance: vmm.spec.instance.clone(),
        instance_exists: instance.is_some(),
    })
}

/// **UnknownSled**, or **StaleEpoch**: a Vmm that has not ended, placed at an epoch its sled
/// has moved past.
fn misplaced(vmm: &Vmm, rack: &Rack<'_>) -> Option<Problem> {
    let Some(sled) = rack.sleds.get(vmm.spec.sled.as_str()) else {
        return Some(Problem::UnknownSled {
            sled: vmm.spec.sled.clone(),
        });
    };
    let sled_epoch = sled.status.as_ref().map(|s| s.epoch).unwrap_or(0);
    (sled_epoch > vmm.spec.sled_epoch && !vmm.has_ended()).then(|| Problem::StaleEpoch {
        sled: vmm.spec.sled.clone(),
        vmm_epoch: vmm.spec.sled_epoch,
        sled_epoch,
    })
}

/// **TerminatingTooLong**: being deleted for longer than [`TERMINATING_TOO_LONG`] at `now`.
fn terminating_too_long(vmm: &Vmm, now: Timestamp) -> Option<Problem> {
    let since = vmm.metadata.deletion_timestamp.as_ref()?;
    let elapsed = Duration::try_from(now.duration_since(since.0)).unwrap_or_default();
    (elapsed > TERMINATING_TOO_LONG).then_some(Problem::TerminatingTooLong {
        since: since.0,
        for_seconds: elapsed.as_secs(),
    })
}

fn sled_problems(sled: &Sled) -> Vec<Problem> {
    let conditions = sled.status.as_ref().map(|status| &status.conditions);
    [
        not_ready(sled),
        diverged(conditions, SledConditionType::Diverged)
            .map(|(reason, message)| Problem::SledDiverged { reason, message }),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// **SledNotReady**: not [`Sled::is_ready`], with its `Ready` condition if it has one.
fn not_ready(sled: &Sled) -> Option<Problem> {
    if sled.is_ready() {
        return None;
    }
    let ready = sled
        .status
        .as_ref()
        .and_then(|status| find(&status.conditions, SledConditionType::Ready));
    Some(Problem::SledNotReady {
        status: ready.map(|c| c.status),
        reason: ready.map(|c| c.reason),
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn now() -> Timestamp {
        "2026-01-01T01:00:00Z".parse().unwrap()
    }

    fn instance(name: &str, strategy: &str, status: Value) -> Instance {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Instance",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"cpus": 1, "memoryMiB": 512, "image": "debian", "runStrategy": strategy},
            "status": status,
        }))
        .unwrap()
    }

    fn running(name: &str, vmm: &str, sled: &str) -> Instance {
        instance(
            name,
            "Always",
            json!({"state": "Running", "activeVmm": vmm, "sled": sled}),
        )
    }

    fn vmm(name: &str, instance: &str, sled: &str, epoch: u64, status: Value) -> Vmm {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Vmm",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"instance": instance, "sled": sled, "sledEpoch": epoch,
                     "resources": {"cpus": 1, "memoryMiB": 512}, "image": "debian"},
            "status": status,
        }))
        .unwrap()
    }

    fn sled(name: &str, epoch: u64, conditions: Value) -> Sled {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Sled",
            "metadata": {"name": name},
            "spec": {},
            "status": {"epoch": epoch, "conditions": conditions},
        }))
        .unwrap()
    }

    fn ready() -> Value {
        json!([{"type": "Ready", "status": "True", "reason": "AgentReady", "lastTransitionTime": T0}])
    }

    fn healthy_rack() -> (Vec<Instance>, Vec<Vmm>, Vec<Sled>) {
        (
            vec![running("web", "web-v1", "s1")],
            vec![vmm("web-v1", "web", "s1", 1, json!({"state": "Running"}))],
            vec![sled("s1", 1, ready())],
        )
    }

    /// The names of the problems found, as (object, problem) pairs.
    fn problems(found: &[Difference]) -> Vec<(String, &'static str)> {
        found
            .iter()
            .map(|d| (d.object.to_string(), d.problem.name()))
            .collect()
    }

    #[test]
    fn a_converged_rack_has_no_differences() {
        let (instances, vmms, sleds) = healthy_rack();
        assert_eq!(differences(&instances, &vmms, &sleds, now()), vec![]);
    }

    #[test]
    fn each_kind_of_difference_is_found() {
        let (_, _, sleds) = healthy_rack();
        let diverged = json!([{"type": "Diverged", "status": "True", "reason": "VmmKilled",
                               "message": "killed behind our back", "lastTransitionTime": T0}]);
        type Case = (
            &'static str,
            Vec<Instance>,
            Vec<Vmm>,
            Vec<Sled>,
            Vec<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "an Always instance that is not running",
                vec![instance("web", "Always", json!({"state": "Failed"}))],
                vec![],
                sleds.clone(),
                vec![("instance/default/web", "NotRunning")],
            ),
            (
                "a Halted instance that still runs",
                vec![instance(
                    "web",
                    "Halted",
                    json!({"state": "Running", "activeVmm": "web-v1", "sled": "s1"}),
                )],
                vec![vmm("web-v1", "web", "s1", 1, json!({"state": "Running"}))],
                sleds.clone(),
                vec![("instance/default/web", "RunningWhileHalted")],
            ),
            (
                "a diverged instance",
                vec![instance(
                    "web",
                    "Always",
                    json!({"state": "Repairing", "conditions": diverged}),
                )],
                vec![],
                sleds.clone(),
                vec![
                    ("instance/default/web", "NotRunning"),
                    ("instance/default/web", "Diverged"),
                ],
            ),
            (
                "an active Vmm that failed",
                vec![running("web", "web-v1", "s1")],
                vec![vmm(
                    "web-v1",
                    "web",
                    "s1",
                    1,
                    json!({"state": "Failed", "reason": "GuestCrashed"}),
                )],
                sleds.clone(),
                vec![("instance/default/web", "ActiveVmmFailed")],
            ),
            (
                "an active Vmm that does not exist",
                vec![running("web", "web-v1", "s1")],
                vec![],
                sleds.clone(),
                vec![("instance/default/web", "ActiveVmmMissing")],
            ),
            (
                "an instance that places itself on another sled than its Vmm",
                vec![running("web", "web-v1", "s2")],
                vec![vmm("web-v1", "web", "s1", 1, json!({"state": "Running"}))],
                sleds.clone(),
                vec![("instance/default/web", "SledMismatch")],
            ),
            (
                "a Vmm its instance does not name",
                vec![running("web", "web-v2", "s1")],
                vec![
                    vmm("web-v1", "web", "s1", 1, json!({"state": "Running"})),
                    vmm("web-v2", "web", "s1", 1, json!({"state": "Running"})),
                ],
                sleds.clone(),
                vec![("vmm/default/web-v1", "Abandoned")],
            ),
            (
                "a Vmm whose instance is gone",
                vec![],
                vec![vmm("old-v1", "old", "s1", 1, json!({"state": "Running"}))],
                sleds.clone(),
                vec![("vmm/default/old-v1", "Abandoned")],
            ),
            (
                "a Vmm from an earlier life of its sled",
                vec![running("web", "web-v1", "s1")],
                vec![vmm("web-v1", "web", "s1", 1, json!({"state": "Running"}))],
                vec![sled("s1", 2, ready())],
                vec![("vmm/default/web-v1", "StaleEpoch")],
            ),
            (
                "a Vmm on a sled that does not exist",
                vec![running("web", "web-v1", "s9")],
                vec![vmm("web-v1", "web", "s9", 1, json!({"state": "Running"}))],
                sleds.clone(),
                vec![("vmm/default/web-v1", "UnknownSled")],
            ),
            (
                "a diverged Vmm",
                vec![running("web", "web-v1", "s1")],
                vec![vmm(
                    "web-v1",
                    "web",
                    "s1",
                    1,
                    json!({"state": "Running", "conditions": diverged}),
                )],
                sleds.clone(),
                vec![("vmm/default/web-v1", "Diverged")],
            ),
            (
                "sleds that are not ready or diverged",
                vec![],
                vec![],
                vec![
                    sled(
                        "s1",
                        1,
                        json!([{"type": "Ready", "status": "Unknown", "reason": "HeartbeatExpired", "lastTransitionTime": T0}]),
                    ),
                    sled("s2", 1, json!([])),
                    sled(
                        "s3",
                        1,
                        json!([
                            {"type": "Ready", "status": "True", "reason": "AgentReady", "lastTransitionTime": T0},
                            {"type": "Diverged", "status": "True", "reason": "UnknownVmm", "lastTransitionTime": T0},
                        ]),
                    ),
                ],
                vec![
                    ("sled/s1", "NotReady"),
                    ("sled/s2", "NotReady"),
                    ("sled/s3", "Diverged"),
                ],
            ),
        ];
        for (name, instances, vmms, sleds, expected) in cases {
            let found = differences(&instances, &vmms, &sleds, now());
            let expected: Vec<(String, &str)> = expected
                .into_iter()
                .map(|(o, p)| (o.to_string(), p))
                .collect();
            assert_eq!(problems(&found), expected, "{name}");
        }
    }

    #[test]
    fn a_vmm_is_terminating_too_long_only_after_the_threshold() {
        let (instances, mut vmms, sleds) = healthy_rack();
        let mut old = vmm("web-v0", "web", "s1", 1, json!({"state": "Stopping"}));
        old.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:50:00Z".parse().unwrap(),
            ));
        vmms.push(old);
        let found = differences(&instances, &vmms, &sleds, now());
        assert_eq!(
            problems(&found),
            [
                ("vmm/default/web-v0".to_string(), "Abandoned"),
                ("vmm/default/web-v0".to_string(), "TerminatingTooLong")
            ]
        );
        let found = differences(
            &instances,
            &vmms,
            &sleds,
            "2026-01-01T00:52:00Z".parse().unwrap(),
        );
        assert_eq!(
            problems(&found),
            [("vmm/default/web-v0".to_string(), "Abandoned")]
        );
    }

    /// Every combination of run strategy, state, last exit and start request: diff reports
    /// NotRunning exactly when the instance controller's rule (`Instance::should_run`, whose
    /// own table test is in `corral_crds`) wants the instance running and it is not.
    #[test]
    fn not_running_is_reported_exactly_when_the_instance_rule_wants_it_running() {
        let (_, _, sleds) = healthy_rack();
        let states = [
            None,
            Some("Creating"),
            Some("Running"),
            Some("Stopping"),
            Some("Stopped"),
            Some("Repairing"),
            Some("Failed"),
        ];
        let exits = [
            None,
            Some("GuestShutdown"),
            Some("GuestCrashed"),
            Some("VmmKilled"),
        ];
        let requests = [
            (None, None),
            (Some("t1"), Some("t1")),
            (Some("t2"), Some("t1")),
        ];
        let (mut reported_count, mut total) = (0, 0);
        for strategy in RunStrategy::ALL {
            for state in states {
                for exit in exits {
                    for (start_request, handled) in requests {
                        let status = json!({
                            "state": state,
                            "lastExit": exit.map(|reason| json!({"reason": reason, "vmm": "web-v1", "at": T0})),
                            "handledStartRequest": handled,
                        });
                        let mut i = instance("web", strategy.as_str(), status.clone());
                        i.spec.start_request = start_request.map(str::to_string);
                        let wanted = i.should_run() && state != Some("Running");
                        let found = differences(std::slice::from_ref(&i), &[], &sleds, now());
                        let reported = problems(&found)
                            .contains(&("instance/default/web".to_string(), "NotRunning"));
                        assert_eq!(reported, wanted, "{strategy} {status} {start_request:?}");
                        reported_count += usize::from(reported);
                        total += 1;
                    }
                }
            }
        }
        assert!(0 < reported_count && reported_count < total);
        // Where diff once asked for more than the rule: a recorded exit ends a Manual instance
        // (and a clean shutdown a RerunOnFailure one) whatever state is written beside it.
        let exit = json!({"reason": "VmmKilled", "vmm": "web-v1", "at": T0});
        let manual = instance(
            "web",
            "Manual",
            json!({"state": "Repairing", "lastExit": exit}),
        );
        assert_eq!(differences(&[manual], &[], &sleds, now()), vec![]);
        let mut deleting = instance("web", "Always", json!({}));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert_eq!(differences(&[deleting], &[], &sleds, now()), vec![]);
    }
}
