//! The rules of `corralctl diff`: [`differences`] between what was asked (Instance specs) and
//! what is (Instance, Vmm and Sled status), as a pure function of the three lists and the time.
//! The definitions are in the `diff` module docs.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use corral_crds::condition::find;
use corral_crds::{
    ConditionStatus, Instance, InstanceConditionType, InstanceState, Reason, RunStrategy, Sled,
    SledConditionType, Vmm, VmmConditionType, VmmState,
};

use super::problem::{Difference, ObjectKind, ObjectRef, Problem};

/// A Vmm being deleted for longer than this is reported.
pub const TERMINATING_TOO_LONG: Duration = Duration::from_secs(5 * 60);

fn instance_ref(i: &Instance) -> ObjectRef {
    ObjectRef {
        kind: ObjectKind::Instance,
        namespace: i.metadata.namespace.clone(),
        name: i.metadata.name.clone().unwrap_or_default(),
    }
}

fn vmm_ref(v: &Vmm) -> ObjectRef {
    ObjectRef {
        kind: ObjectKind::Vmm,
        namespace: v.metadata.namespace.clone(),
        name: v.metadata.name.clone().unwrap_or_default(),
    }
}

fn sled_ref(s: &Sled) -> ObjectRef {
    ObjectRef {
        kind: ObjectKind::Sled,
        namespace: None,
        name: s.metadata.name.clone().unwrap_or_default(),
    }
}

/// Whether `instance` should be running now (definitions in the module docs).
pub fn should_run(instance: &Instance) -> bool {
    if instance.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let status = instance.status.clone().unwrap_or_default();
    let start_pending = instance.spec.start_request.is_some()
        && instance.spec.start_request != status.handled_start_request;
    let exit = status.last_exit.as_ref().map(|e| e.reason);
    match instance.spec.run_strategy {
        RunStrategy::Always => true,
        RunStrategy::Halted => false,
        RunStrategy::RerunOnFailure => {
            let shut_down =
                exit == Some(Reason::GuestShutdown) && status.state == Some(InstanceState::Stopped);
            !shut_down || start_pending
        }
        RunStrategy::Manual => {
            let exited = exit.is_some()
                && matches!(
                    status.state,
                    Some(InstanceState::Stopped) | Some(InstanceState::Failed)
                );
            !exited || start_pending
        }
    }
}

/// Every current difference, sorted by kind, namespace, name.
pub fn differences(
    instances: &[Instance],
    vmms: &[Vmm],
    sleds: &[Sled],
    now: Timestamp,
) -> Vec<Difference> {
    let mut found = Vec::new();
    let mut push = |object: ObjectRef, problem: Problem| found.push(Difference { object, problem });
    let vmm_by_key: BTreeMap<(Option<&str>, &str), &Vmm> = vmms
        .iter()
        .map(|v| {
            (
                (
                    v.metadata.namespace.as_deref(),
                    v.metadata.name.as_deref().unwrap_or(""),
                ),
                v,
            )
        })
        .collect();
    let instance_by_key: BTreeMap<(Option<&str>, &str), &Instance> = instances
        .iter()
        .map(|i| {
            (
                (
                    i.metadata.namespace.as_deref(),
                    i.metadata.name.as_deref().unwrap_or(""),
                ),
                i,
            )
        })
        .collect();
    let sled_by_name: BTreeMap<&str, &Sled> = sleds
        .iter()
        .map(|s| (s.metadata.name.as_deref().unwrap_or(""), s))
        .collect();

    for instance in instances {
        let object = instance_ref(instance);
        let status = instance.status.clone().unwrap_or_default();
        let state = status.state;
        if should_run(instance) && state != Some(InstanceState::Running) {
            push(
                object.clone(),
                Problem::NotRunning {
                    run_strategy: instance.spec.run_strategy,
                    state,
                },
            );
        }
        if instance.spec.run_strategy == RunStrategy::Halted
            && let Some(state @ (InstanceState::Running | InstanceState::Starting)) = state
        {
            push(object.clone(), Problem::RunningWhileHalted { state });
        }
        if let Some(c) = find(&status.conditions, InstanceConditionType::Diverged)
            && c.status == ConditionStatus::True
        {
            push(
                object.clone(),
                Problem::InstanceDiverged {
                    reason: c.reason,
                    message: c.message.clone(),
                },
            );
        }
        if let Some(active) = &status.active_vmm {
            match vmm_by_key.get(&(instance.metadata.namespace.as_deref(), active.as_str())) {
                None => push(
                    object.clone(),
                    Problem::ActiveVmmMissing {
                        vmm: active.clone(),
                    },
                ),
                Some(vmm) => {
                    let vmm_status = vmm.status.clone().unwrap_or_default();
                    if vmm_status.state == Some(VmmState::Failed) {
                        push(
                            object.clone(),
                            Problem::ActiveVmmFailed {
                                vmm: active.clone(),
                                reason: vmm_status.reason,
                                message: vmm_status.message.clone(),
                            },
                        );
                    }
                    if status.sled.as_deref() != Some(vmm.spec.sled.as_str()) {
                        push(
                            object.clone(),
                            Problem::SledMismatch {
                                vmm: active.clone(),
                                instance_sled: status.sled.clone(),
                                vmm_sled: vmm.spec.sled.clone(),
                            },
                        );
                    }
                }
            }
        }
    }

    for vmm in vmms {
        let object = vmm_ref(vmm);
        let name = vmm.metadata.name.as_deref().unwrap_or("");
        let status = vmm.status.clone().unwrap_or_default();
        let instance = instance_by_key.get(&(
            vmm.metadata.namespace.as_deref(),
            vmm.spec.instance.as_str(),
        ));
        let named = instance.is_some_and(|i| {
            i.status.as_ref().is_some_and(|s| {
                s.active_vmm.as_deref() == Some(name) || s.target_vmm.as_deref() == Some(name)
            })
        });
        if !named {
            push(
                object.clone(),
                Problem::Abandoned {
                    instance: vmm.spec.instance.clone(),
                    instance_exists: instance.is_some(),
                },
            );
        }
        match sled_by_name.get(vmm.spec.sled.as_str()) {
            None => push(
                object.clone(),
                Problem::UnknownSled {
                    sled: vmm.spec.sled.clone(),
                },
            ),
            Some(sled) => {
                let sled_epoch = sled.status.as_ref().map(|s| s.epoch).unwrap_or(0);
                let ended = status.state.is_some_and(VmmState::is_final);
                if sled_epoch > vmm.spec.sled_epoch && !ended {
                    push(
                        object.clone(),
                        Problem::StaleEpoch {
                            sled: vmm.spec.sled.clone(),
                            vmm_epoch: vmm.spec.sled_epoch,
                            sled_epoch,
                        },
                    );
                }
            }
        }
        if let Some(c) = find(&status.conditions, VmmConditionType::Diverged)
            && c.status == ConditionStatus::True
        {
            push(
                object.clone(),
                Problem::VmmDiverged {
                    reason: c.reason,
                    message: c.message.clone(),
                },
            );
        }
        if let Some(since) = &vmm.metadata.deletion_timestamp {
            let elapsed = now.duration_since(since.0);
            let elapsed = Duration::try_from(elapsed).unwrap_or_default();
            if elapsed > TERMINATING_TOO_LONG {
                push(
                    object.clone(),
                    Problem::TerminatingTooLong {
                        since: since.0,
                        for_seconds: elapsed.as_secs(),
                    },
                );
            }
        }
    }

    for sled in sleds {
        let object = sled_ref(sled);
        let status = sled.status.clone().unwrap_or_default();
        match find(&status.conditions, SledConditionType::Ready) {
            Some(c) if c.status == ConditionStatus::True => {}
            Some(c) => push(
                object.clone(),
                Problem::SledNotReady {
                    status: Some(c.status),
                    reason: Some(c.reason),
                    message: c.message.clone(),
                },
            ),
            None => push(
                object.clone(),
                Problem::SledNotReady {
                    status: None,
                    reason: None,
                    message: String::new(),
                },
            ),
        }
        if let Some(c) = find(&status.conditions, SledConditionType::Diverged)
            && c.status == ConditionStatus::True
        {
            push(
                object.clone(),
                Problem::SledDiverged {
                    reason: c.reason,
                    message: c.message.clone(),
                },
            );
        }
    }
    found.sort();
    found
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

    #[test]
    fn whether_an_instance_should_run_follows_its_run_strategy() {
        let exit = |reason: &str| json!({"reason": reason, "vmm": "v1", "at": T0});
        let cases = [
            (
                "Always",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown")}),
                None,
                true,
            ),
            ("Halted", json!({}), None, false),
            (
                "RerunOnFailure",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown")}),
                None,
                false,
            ),
            (
                "RerunOnFailure",
                json!({"state": "Failed", "lastExit": exit("GuestCrashed")}),
                None,
                true,
            ),
            (
                "RerunOnFailure",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown")}),
                Some("t1"),
                true,
            ),
            ("Manual", json!({"state": "Creating"}), None, true),
            (
                "Manual",
                json!({"state": "Failed", "lastExit": exit("GuestCrashed")}),
                None,
                false,
            ),
            (
                "Manual",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown"), "handledStartRequest": "t1"}),
                Some("t1"),
                false,
            ),
            (
                "Manual",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown"), "handledStartRequest": "t1"}),
                Some("t2"),
                true,
            ),
        ];
        for (strategy, status, start_request, expected) in cases {
            let mut i = instance("web", strategy, status.clone());
            i.spec.start_request = start_request.map(str::to_string);
            assert_eq!(
                should_run(&i),
                expected,
                "{strategy} {status} {start_request:?}"
            );
        }
        let mut deleting = instance("web", "Always", json!({}));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert!(!should_run(&deleting));
    }
}
