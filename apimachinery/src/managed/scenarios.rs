//! Scenario tests for [`apply`] and [`update`]: sequences of applies and writes by several
//! managers, checked against what Kubernetes does for the same sequence.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

pub(super) const API_VERSION: &str = "corral.dev/v1";

/// An Instance-like CRD schema with one field of every kind.
pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": {
                "cpus": {"type": "integer"},
                "memory": {"type": "string"},
                "nics": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {
                        "name": {"type": "string"},
                        "ip": {"type": "string"},
                        "mtu": {"type": "integer"}
                    }}
                },
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "args": {"type": "array", "items": {"type": "string"}},
                "selector": {
                    "type": "object",
                    "x-kubernetes-map-type": "atomic",
                    "additionalProperties": {"type": "string"}
                },
                "disks": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {"size": {"type": "integer"}, "bus": {"type": "string"}}
                }},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }},
            "status": {"type": "object", "properties": {
                "phase": {"type": "string"},
                "ready": {"type": "boolean"}
            }}
        }
    })
}

/// An Instance named `vm` with the given spec.
pub(super) fn instance(spec: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "Instance", "metadata": {"name": "vm"}, "spec": spec})
}

fn with(mut object: Value, pointer_parent: &str, key: &str, value: Value) -> Value {
    object
        .pointer_mut(pointer_parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert(key.to_owned(), value);
    object
}

/// RFC 7386, enough for the tests.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

enum Step {
    Apply(&'static str, Value),
    ForceApply(&'static str, Value),
    ApplyStatus(&'static str, Value),
    /// A merge patch through the main resource.
    Update(&'static str, Value),
    UpdateStatus(&'static str, Value),
    /// An apply that must fail with these (manager, field) conflicts and change nothing.
    Conflicts(&'static str, Value, Vec<(&'static str, &'static str)>),
    /// A client clears `metadata.managedFields` (the API server treats `[]` as a reset).
    ResetManagedFields,
}

#[derive(Default)]
struct World {
    object: Option<Value>,
    managed: Vec<ManagedFieldsEntry>,
    clock: u32,
}

impl World {
    fn now(&mut self) -> String {
        self.clock += 1;
        format!("2025-01-01T00:00:{:02}Z", self.clock)
    }

    fn apply(
        &mut self,
        manager: &str,
        config: &Value,
        force: bool,
        subresource: Option<&str>,
    ) -> Result<(), ApplyError> {
        let opts = ApplyOptions {
            force,
            subresource: subresource.map(str::to_owned),
            api_version: API_VERSION.to_owned(),
            now: self.now(),
        };
        let applied = apply(
            self.object.as_ref(),
            config,
            manager,
            &self.managed,
            opts,
            &schema(),
        )?;
        self.object = Some(applied.object);
        self.managed = applied.managed_fields;
        Ok(())
    }

    fn update(&mut self, manager: &str, patch: &Value, subresource: Option<&str>) {
        let mut new = self.object.clone().unwrap_or_else(|| json!({}));
        merge_patch(&mut new, patch);
        let opts = UpdateOptions {
            subresource: subresource.map(str::to_owned),
            api_version: API_VERSION.to_owned(),
            now: self.now(),
        };
        self.managed = update(
            self.object.as_ref(),
            &new,
            manager,
            &self.managed,
            opts,
            &schema(),
        );
        self.object = Some(new);
    }

    fn run(&mut self, case: &str, step: &Step) {
        let result = match step {
            Step::Apply(manager, config) => self.apply(manager, config, false, None),
            Step::ForceApply(manager, config) => self.apply(manager, config, true, None),
            Step::ApplyStatus(manager, config) => {
                self.apply(manager, config, false, Some("status"))
            }
            Step::Update(manager, patch) => {
                self.update(manager, patch, None);
                Ok(())
            }
            Step::ResetManagedFields => {
                self.managed.clear();
                Ok(())
            }
            Step::UpdateStatus(manager, patch) => {
                self.update(manager, patch, Some("status"));
                Ok(())
            }
            Step::Conflicts(manager, config, expected) => {
                let before = (self.object.clone(), self.managed.clone());
                let Err(ApplyError::Conflicts(conflicts)) =
                    self.apply(manager, config, false, None)
                else {
                    panic!("{case}: expected conflicts");
                };
                let got: Vec<(&str, &str)> = conflicts
                    .iter()
                    .map(|c| (c.manager.as_str(), c.field.as_str()))
                    .collect();
                assert_eq!(got, *expected, "{case}");
                assert_eq!(
                    (self.object.clone(), self.managed.clone()),
                    before,
                    "{case}"
                );
                Ok(())
            }
        };
        result.unwrap_or_else(|e| panic!("{case}: {e}"));
    }

    /// `manager/Operation[/subresource]` → fieldsV1.
    fn owners(&self) -> BTreeMap<String, Value> {
        let name = |e: &ManagedFieldsEntry| match &e.subresource {
            Some(sub) => format!("{}/{:?}/{sub}", e.manager, e.operation),
            None => format!("{}/{:?}", e.manager, e.operation),
        };
        self.managed
            .iter()
            .map(|e| (name(e), e.fields_v1.to_fields_v1()))
            .collect()
    }
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    /// JSON pointers into the final object and their values (`None`: absent).
    object: Vec<(&'static str, Option<Value>)>,
    owners: Vec<(&'static str, Value)>,
}

fn cases() -> Vec<Case> {
    use Step::*;
    let nic = |name: &str, ip: &str| json!({"name": name, "ip": ip});
    let status = |status: Value| {
        let metadata = json!({"name": "vm"});
        json!({"apiVersion": API_VERSION, "kind": "Instance", "metadata": metadata, "status": status})
    };
    vec![
        Case {
            name: "create_via_apply_owns_exactly_the_applied_leaves",
            steps: vec![Apply(
                "a",
                with(
                    instance(json!({"cpus": 2, "memory": "4Gi"})),
                    "/metadata",
                    "labels",
                    json!({"app": "web"}),
                ),
            )],
            object: vec![
                ("/spec", Some(json!({"cpus": 2, "memory": "4Gi"}))),
                ("/metadata/labels/app", Some(json!("web"))),
            ],
            owners: vec![(
                "a/Apply",
                json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:cpus": {}, "f:memory": {}}}),
            )],
        },
        Case {
            name: "reapply_with_a_changed_value_changes_it",
            steps: vec![
                Apply("a", instance(json!({"cpus": 2}))),
                Apply("a", instance(json!({"cpus": 4}))),
            ],
            object: vec![("/spec/cpus", Some(json!(4)))],
            owners: vec![("a/Apply", json!({"f:spec": {"f:cpus": {}}}))],
        },
        Case {
            name: "field_the_applier_drops_is_removed",
            steps: vec![
                Apply(
                    "a",
                    instance(json!({"cpus": 2, "memory": "4Gi", "disks": {"d1": {"size": 1}}})),
                ),
                Apply("a", instance(json!({"cpus": 2}))),
            ],
            object: vec![("/spec", Some(json!({"cpus": 2})))],
            owners: vec![("a/Apply", json!({"f:spec": {"f:cpus": {}}}))],
        },
        Case {
            name: "same_value_from_two_appliers_is_shared_without_conflict",
            steps: vec![
                Apply("a", instance(json!({"cpus": 2}))),
                Apply("b", instance(json!({"cpus": 2}))),
            ],
            object: vec![("/spec/cpus", Some(json!(2)))],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:cpus": {}}})),
                ("b/Apply", json!({"f:spec": {"f:cpus": {}}})),
            ],
        },
        Case {
            name: "different_value_conflicts_with_the_owner",
            steps: vec![
                Apply(
                    "a",
                    instance(json!({"cpus": 2, "nics": [nic("eth0", "10.0.0.1")]})),
                ),
                Conflicts(
                    "b",
                    instance(json!({"cpus": 4, "nics": [nic("eth0", "10.0.0.2")]})),
                    vec![("a", ".spec.cpus"), ("a", ".spec.nics[name=\"eth0\"].ip")],
                ),
            ],
            object: vec![("/spec/cpus", Some(json!(2)))],
            owners: vec![(
                "a/Apply",
                json!({"f:spec": {"f:cpus": {}, "f:nics": {
                    "k:{\"name\":\"eth0\"}": {".": {}, "f:ip": {}, "f:name": {}}
                }}}),
            )],
        },
        Case {
            name: "force_moves_ownership_to_the_applier",
            steps: vec![
                Apply("a", instance(json!({"cpus": 2, "memory": "4Gi"}))),
                ForceApply("b", instance(json!({"cpus": 4}))),
            ],
            object: vec![
                ("/spec/cpus", Some(json!(4))),
                ("/spec/memory", Some(json!("4Gi"))),
            ],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:memory": {}}})),
                ("b/Apply", json!({"f:spec": {"f:cpus": {}}})),
            ],
        },
        Case {
            name: "dropping_a_field_another_manager_owns_keeps_it",
            steps: vec![
                Apply("a", instance(json!({"cpus": 2, "memory": "4Gi"}))),
                Apply("b", instance(json!({"cpus": 2}))),
                Apply("a", instance(json!({"memory": "4Gi"}))),
            ],
            object: vec![("/spec", Some(json!({"cpus": 2, "memory": "4Gi"})))],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:memory": {}}})),
                ("b/Apply", json!({"f:spec": {"f:cpus": {}}})),
            ],
        },
        Case {
            name: "map_list_merges_item_by_key",
            steps: vec![
                Apply("a", instance(json!({"nics": [nic("eth0", "10.0.0.1")]}))),
                Apply(
                    "b",
                    instance(
                        json!({"nics": [nic("eth1", "10.0.0.2"), {"name": "eth0", "mtu": 9000}]}),
                    ),
                ),
            ],
            object: vec![(
                "/spec/nics",
                Some(
                    json!([{"name": "eth1", "ip": "10.0.0.2"}, {"name": "eth0", "ip": "10.0.0.1", "mtu": 9000}]),
                ),
            )],
            owners: vec![
                (
                    "a/Apply",
                    json!({"f:spec": {"f:nics": {"k:{\"name\":\"eth0\"}": {".": {}, "f:ip": {}, "f:name": {}}}}}),
                ),
                (
                    "b/Apply",
                    json!({"f:spec": {"f:nics": {
                        "k:{\"name\":\"eth0\"}": {".": {}, "f:mtu": {}, "f:name": {}},
                        "k:{\"name\":\"eth1\"}": {".": {}, "f:ip": {}, "f:name": {}}
                    }}}),
                ),
            ],
        },
        Case {
            name: "map_list_item_the_applier_drops_is_removed",
            steps: vec![
                Apply(
                    "a",
                    instance(json!({"nics": [nic("eth0", "10.0.0.1"), nic("eth1", "10.0.0.2")]})),
                ),
                Apply("a", instance(json!({"nics": [nic("eth1", "10.0.0.2")]}))),
            ],
            object: vec![("/spec/nics", Some(json!([nic("eth1", "10.0.0.2")])))],
            owners: vec![(
                "a/Apply",
                json!({"f:spec": {"f:nics": {"k:{\"name\":\"eth1\"}": {".": {}, "f:ip": {}, "f:name": {}}}}}),
            )],
        },
        Case {
            name: "set_items_union_and_a_dropped_item_goes",
            steps: vec![
                Apply("a", instance(json!({"tags": ["a", "b"]}))),
                Apply("b", instance(json!({"tags": ["c", "a"]}))),
                Apply("a", instance(json!({"tags": ["a"]}))),
            ],
            object: vec![("/spec/tags", Some(json!(["c", "a"])))],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:tags": {"v:\"a\"": {}}}})),
                (
                    "b/Apply",
                    json!({"f:spec": {"f:tags": {"v:\"a\"": {}, "v:\"c\"": {}}}}),
                ),
            ],
        },
        Case {
            name: "atomic_list_and_map_are_replaced_whole_and_owned_whole",
            steps: vec![
                Apply(
                    "a",
                    instance(json!({"args": ["x", "y"], "selector": {"k": "v", "l": "w"}})),
                ),
                Apply(
                    "a",
                    instance(json!({"args": ["z"], "selector": {"k": "v2"}})),
                ),
                Conflicts(
                    "b",
                    instance(json!({"args": ["z", "q"], "selector": {"k": "v2"}})),
                    vec![("a", ".spec.args")],
                ),
            ],
            object: vec![
                ("/spec/args", Some(json!(["z"]))),
                ("/spec/selector", Some(json!({"k": "v2"}))),
            ],
            owners: vec![(
                "a/Apply",
                json!({"f:spec": {"f:args": {}, "f:selector": {}}}),
            )],
        },
        Case {
            name: "unknown_fields_below_preserve_unknown_are_granular_maps",
            steps: vec![
                Apply("a", instance(json!({"extra": {"x": {"y": 1, "z": [1]}}}))),
                Apply("b", instance(json!({"extra": {"x": {"w": 2}}}))),
            ],
            object: vec![(
                "/spec/extra",
                Some(json!({"x": {"y": 1, "z": [1], "w": 2}})),
            )],
            owners: vec![
                (
                    "a/Apply",
                    json!({"f:spec": {"f:extra": {"f:x": {".": {}, "f:y": {}, "f:z": {}}}}}),
                ),
                (
                    "b/Apply",
                    json!({"f:spec": {"f:extra": {"f:x": {".": {}, "f:w": {}}}}}),
                ),
            ],
        },
        Case {
            name: "status_is_ignored_by_an_apply_to_the_main_resource",
            steps: vec![
                Apply(
                    "a",
                    with(
                        instance(json!({"cpus": 2})),
                        "",
                        "status",
                        json!({"phase": "Bogus"}),
                    ),
                ),
                UpdateStatus("ctl", json!({"status": {"phase": "Running"}})),
                Apply(
                    "a",
                    with(
                        instance(json!({"cpus": 2})),
                        "",
                        "status",
                        json!({"phase": "Stopped"}),
                    ),
                ),
            ],
            object: vec![("/status", Some(json!({"phase": "Running"})))],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:cpus": {}}})),
                (
                    "ctl/Update/status",
                    json!({"f:status": {".": {}, "f:phase": {}}}),
                ),
            ],
        },
        Case {
            name: "apply_to_status_applies_only_status_and_prunes_only_status",
            steps: vec![
                Apply("a", instance(json!({"cpus": 2}))),
                ApplyStatus(
                    "ctl",
                    with(
                        status(json!({"phase": "Running"})),
                        "",
                        "spec",
                        json!({"cpus": 99}),
                    ),
                ),
                ApplyStatus("ctl", status(json!({"ready": true}))),
            ],
            object: vec![
                ("/spec", Some(json!({"cpus": 2}))),
                ("/status", Some(json!({"ready": true}))),
            ],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:cpus": {}}})),
                ("ctl/Apply/status", json!({"f:status": {"f:ready": {}}})),
            ],
        },
        Case {
            name: "update_after_apply_takes_the_field_so_the_next_apply_conflicts",
            steps: vec![
                Apply("kubectl", instance(json!({"cpus": 2, "memory": "4Gi"}))),
                Update("kubectl-edit", json!({"spec": {"cpus": 3}})),
                Conflicts(
                    "kubectl",
                    instance(json!({"cpus": 2, "memory": "4Gi"})),
                    vec![("kubectl-edit", ".spec.cpus")],
                ),
                // Re-applying the value the editor set is not a conflict.
                Apply("kubectl", instance(json!({"cpus": 3, "memory": "4Gi"}))),
            ],
            object: vec![("/spec/cpus", Some(json!(3)))],
            owners: vec![
                ("kubectl-edit/Update", json!({"f:spec": {"f:cpus": {}}})),
                (
                    "kubectl/Apply",
                    json!({"f:spec": {"f:cpus": {}, "f:memory": {}}}),
                ),
            ],
        },
        Case {
            name: "field_an_updater_also_set_survives_the_applier_dropping_it",
            steps: vec![
                Apply(
                    "a",
                    with(
                        instance(json!({"cpus": 2})),
                        "/metadata",
                        "labels",
                        json!({"app": "web"}),
                    ),
                ),
                Update(
                    "labeler",
                    json!({"metadata": {"labels": {"team": "infra"}}}),
                ),
                Apply("a", instance(json!({"cpus": 2}))),
            ],
            object: vec![
                ("/metadata/labels", Some(json!({"team": "infra"}))),
                ("/metadata/name", Some(json!("vm"))),
            ],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:cpus": {}}})),
                (
                    "labeler/Update",
                    json!({"f:metadata": {"f:labels": {"f:team": {}}}}),
                ),
            ],
        },
        Case {
            name: "create_by_update_owns_every_field_and_node",
            steps: vec![Update(
                "creator",
                with(
                    instance(json!({"cpus": 2, "nics": [nic("eth0", "1")]})),
                    "/metadata",
                    "labels",
                    json!({"app": "web"}),
                ),
            )],
            object: vec![("/spec/cpus", Some(json!(2)))],
            owners: vec![(
                "creator/Update",
                json!({
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {".": {}, "f:cpus": {}, "f:nics": {
                        ".": {},
                        "k:{\"name\":\"eth0\"}": {".": {}, "f:ip": {}, "f:name": {}}
                    }}
                }),
            )],
        },
        Case {
            name: "update_that_changes_nothing_records_nothing_and_removal_is_lost_by_all",
            steps: vec![
                Apply("a", instance(json!({"cpus": 2, "memory": "4Gi"}))),
                Update("b", json!({"spec": {"cpus": 2}})),
                Update("c", json!({"spec": {"memory": null}})),
            ],
            object: vec![("/spec", Some(json!({"cpus": 2})))],
            owners: vec![("a/Apply", json!({"f:spec": {"f:cpus": {}}}))],
        },
        Case {
            name: "update_to_status_owns_only_status",
            steps: vec![
                Apply("a", instance(json!({"cpus": 2}))),
                UpdateStatus(
                    "ctl",
                    json!({"spec": {"cpus": 5}, "status": {"phase": "Running"}}),
                ),
            ],
            object: vec![("/status/phase", Some(json!("Running")))],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:cpus": {}}})),
                (
                    "ctl/Update/status",
                    json!({"f:status": {".": {}, "f:phase": {}}}),
                ),
            ],
        },
        Case {
            // Kubernetes' `before-first-apply`: updates do not start tracking an object whose
            // managedFields were reset, and its first apply credits what exists to that manager.
            name: "untracked_object_is_credited_to_before_first_apply",
            steps: vec![
                Apply("a", instance(json!({"cpus": 2, "memory": "4Gi"}))),
                ResetManagedFields,
                Update("b", json!({"spec": {"memory": "8Gi"}})),
                Conflicts(
                    "a",
                    instance(json!({"cpus": 3})),
                    vec![("before-first-apply", ".spec.cpus")],
                ),
                ForceApply("a", instance(json!({"cpus": 3}))),
            ],
            object: vec![("/spec", Some(json!({"cpus": 3, "memory": "8Gi"})))],
            owners: vec![
                ("a/Apply", json!({"f:spec": {"f:cpus": {}}})),
                (
                    "before-first-apply/Update",
                    json!({"f:spec": {".": {}, "f:memory": {}}}),
                ),
            ],
        },
    ]
}

#[test]
fn apply_and_update_scenarios() {
    for case in cases() {
        let mut world = World::default();
        for step in &case.steps {
            world.run(case.name, step);
        }
        let object = world.object.as_ref().unwrap();
        for (pointer, expected) in &case.object {
            assert_eq!(
                object.pointer(pointer),
                expected.as_ref(),
                "{}: {pointer}",
                case.name
            );
        }
        let expected: BTreeMap<String, Value> = case
            .owners
            .iter()
            .map(|(name, fields)| (name.to_string(), fields.clone()))
            .collect();
        assert_eq!(world.owners(), expected, "{}", case.name);
    }
}

#[test]
fn entries_are_ordered_and_timed_like_kubernetes() {
    let mut world = World::default();
    world
        .apply("a", &instance(json!({"cpus": 2})), false, None)
        .unwrap(); // :01
    world.update("b", &json!({"spec": {"memory": "1Gi"}}), None); // :02
    world
        .apply("c", &instance(json!({"tags": ["x"]})), false, None)
        .unwrap(); // :03
    let order = |world: &World| -> Vec<(String, Option<String>)> {
        world
            .managed
            .iter()
            .map(|e| (e.manager.clone(), e.time.clone()))
            .collect()
    };
    let at = |second: u32| Some(format!("2025-01-01T00:00:{second:02}Z"));
    assert_eq!(
        order(&world),
        [
            ("a".into(), at(1)),
            ("c".into(), at(3)),
            ("b".into(), at(2))
        ],
        "Apply entries come before Update entries, each by time"
    );

    // Re-applying the same configuration changes nothing, so the time stays.
    world
        .apply("a", &instance(json!({"cpus": 2})), false, None)
        .unwrap(); // :04
    assert_eq!(order(&world)[0], ("a".into(), at(1)));
    // A write that takes nothing leaves the writer without an entry.
    world.update("d", &json!({"spec": {"memory": "1Gi"}}), None); // :05
    assert_eq!(world.managed.len(), 3);
    // A changing apply moves the entry's time, and with it its place.
    world
        .apply("a", &instance(json!({"cpus": 3})), false, None)
        .unwrap(); // :06
    assert_eq!(
        order(&world),
        [
            ("c".into(), at(3)),
            ("a".into(), at(6)),
            ("b".into(), at(2))
        ]
    );
}

#[test]
fn finalizers_and_owner_references_merge_across_managers() {
    let meta = |metadata: Value| json!({"apiVersion": API_VERSION, "kind": "Instance", "metadata": metadata});
    let mut world = World::default();
    let first = meta(
        json!({"name": "vm", "finalizers": ["a"], "ownerReferences": [{"uid": "1", "name": "x"}]}),
    );
    world.apply("m1", &first, false, None).unwrap();
    let second = meta(
        json!({"name": "vm", "finalizers": ["b"], "ownerReferences": [{"uid": "2", "name": "y"}]}),
    );
    world.apply("m2", &second, false, None).unwrap();
    let object = world.object.clone().unwrap();
    assert_eq!(object["metadata"]["finalizers"], json!(["a", "b"]));
    assert_eq!(
        object["metadata"]["ownerReferences"],
        json!([{"uid": "1", "name": "x"}, {"uid": "2", "name": "y"}])
    );
    // m1 lets go of its finalizer: it goes, m2's stays.
    world
        .apply("m1", &meta(json!({"name": "vm"})), false, None)
        .unwrap();
    let object = world.object.clone().unwrap();
    assert_eq!(object["metadata"]["finalizers"], json!(["b"]));
    assert_eq!(object["metadata"]["name"], json!("vm"));
    assert!(
        !world.owners().contains_key("m1/Apply"),
        "an apply owning nothing leaves no entry"
    );
}

fn arb_spec() -> impl Strategy<Value = Value> {
    let nic = (
        "eth[0-2]",
        prop::option::of("10\\.0\\.0\\.[0-9]"),
        prop::option::of(1000..9000i64),
    )
        .prop_map(|(name, ip, mtu)| {
            let mut nic = json!({"name": name});
            if let Some(ip) = ip {
                nic["ip"] = json!(ip);
            }
            if let Some(mtu) = mtu {
                nic["mtu"] = json!(mtu);
            }
            nic
        });
    (
        prop::option::of(1..8i64),
        prop::option::of("[1-4]Gi"),
        // Empty granular lists are left out: as in Kubernetes, applying `nics: []` owns nothing,
        // so the list is pruned and a second apply puts the `[]` back.
        prop::option::of(prop::collection::vec(nic, 1..3)),
        prop::option::of(prop::collection::btree_set("[a-c]", 1..3)),
        prop::option::of(prop::collection::vec("[xy]", 0..3)),
        prop::option::of(prop::collection::btree_map("[pq]", 0..3i64, 0..2)),
    )
        .prop_map(|(cpus, memory, nics, tags, args, extra)| {
            let mut spec = json!({});
            let mut set = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    spec[key] = value;
                }
            };
            set("cpus", cpus.map(|c| json!(c)));
            set("memory", memory.map(|m| json!(m)));
            // Map-list keys must be unique in an applied configuration.
            let nics = nics.map(|nics| {
                let mut seen = std::collections::BTreeSet::new();
                nics.into_iter()
                    .filter(|n| seen.insert(n["name"].to_string()))
                    .collect::<Vec<_>>()
            });
            set("nics", nics.map(|n| json!(n)));
            set("tags", tags.map(|t| json!(t)));
            set("args", args.map(|a| json!(a)));
            set("extra", extra.map(|e| json!(e)));
            spec
        })
}

proptest! {
    /// Applying a configuration owns exactly its fields, sets exactly its values, and applying
    /// it again changes nothing, whatever another manager forced in between.
    #[test]
    fn apply_owns_its_fields_and_is_idempotent(first in arb_spec(), other in arb_spec(), second in arb_spec()) {
        let mut world = World::default();
        world.apply("a", &instance(first), false, None).unwrap();
        world.apply("b", &instance(other), true, None).unwrap();
        let config = instance(second);
        world.apply("a", &config, true, None).unwrap();
        let own = |world: &World| world.managed.iter().find(|e| e.manager == "a").map(|e| e.fields_v1.clone());
        let fields = fields_of(&config, &schema());
        prop_assert_eq!(own(&world).unwrap_or_default(), fields.clone());
        let object = world.object.clone().unwrap();
        for (key, value) in config["spec"].as_object().unwrap() {
            if !matches!(key.as_str(), "nics" | "tags" | "extra") {
                prop_assert_eq!(&object["spec"][key], value);
            }
        }

        let before = (world.object.clone(), world.managed.clone());
        world.apply("a", &config, false, None).unwrap();
        prop_assert_eq!(&world.object, &before.0);
        let sets = |m: &[ManagedFieldsEntry]| {
            m.iter().map(|e| (e.manager.clone(), e.fields_v1.clone())).collect::<Vec<_>>()
        };
        prop_assert_eq!(sets(&world.managed), sets(&before.1));

        // A write that changes nothing changes no ownership.
        let object = world.object.clone().unwrap();
        let opts = UpdateOptions {
            subresource: None,
            api_version: API_VERSION.to_owned(),
            now: "2030-01-01T00:00:00Z".to_owned(),
        };
        let after = update(Some(&object), &object, "c", &world.managed, opts, &schema());
        prop_assert_eq!(after, world.managed.clone());
    }
}
