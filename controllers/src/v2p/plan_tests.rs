use super::*;

fn claim(ip: &str, instance: &str, sled: &str, location_generation: u64) -> Claim {
    Claim {
        ip: ip.into(),
        namespace: "default".into(),
        instance: instance.into(),
        sled: sled.into(),
        location_generation,
        created: format!("2026-01-01T00:00:0{}Z", instance.len() % 10),
    }
}

fn mapping(
    ip: &str,
    instance: &str,
    sled: &str,
    location_generation: u64,
    since: i64,
) -> V2pMapping {
    V2pMapping {
        ip: ip.into(),
        sled: sled.into(),
        location_generation,
        namespace: "default".into(),
        instance: instance.into(),
        since,
    }
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

#[test]
fn plans_mappings_table() {
    struct Case {
        name: &'static str,
        current: Vec<V2pMapping>,
        claims: Vec<Claim>,
        removable: Vec<&'static str>,
        want: Vec<V2pMapping>,
        changed: bool,
        verify: Vec<&'static str>,
        conflicts: usize,
    }
    let cases = [
        Case {
            name: "an instance placed gets a mapping since the next generation",
            current: vec![],
            claims: vec![claim("10.0.0.1", "web", "sled-a", 1)],
            removable: vec![],
            want: vec![mapping("10.0.0.1", "web", "sled-a", 1, 5)],
            changed: true,
            verify: vec![],
            conflicts: 0,
        },
        Case {
            name: "moved with a higher generation: replaced",
            current: vec![mapping("10.0.0.1", "web", "sled-a", 1, 2)],
            claims: vec![claim("10.0.0.1", "web", "sled-b", 2)],
            removable: vec![],
            want: vec![mapping("10.0.0.1", "web", "sled-b", 2, 5)],
            changed: true,
            verify: vec![],
            conflicts: 0,
        },
        Case {
            name: "a stale cached instance (lower generation): the mapping stays",
            current: vec![mapping("10.0.0.1", "web", "sled-b", 3, 2)],
            claims: vec![claim("10.0.0.1", "web", "sled-a", 2)],
            removable: vec![],
            want: vec![mapping("10.0.0.1", "web", "sled-b", 3, 2)],
            changed: false,
            verify: vec![],
            conflicts: 0,
        },
        Case {
            name: "an equal generation on another sled changes nothing",
            current: vec![mapping("10.0.0.1", "web", "sled-b", 3, 2)],
            claims: vec![claim("10.0.0.1", "web", "sled-a", 3)],
            removable: vec![],
            want: vec![mapping("10.0.0.1", "web", "sled-b", 3, 2)],
            changed: false,
            verify: vec![],
            conflicts: 0,
        },
        Case {
            name: "an instance missing from the cache: removal waits for a live read",
            current: vec![mapping("10.0.0.1", "web", "sled-a", 1, 2)],
            claims: vec![],
            removable: vec![],
            want: vec![mapping("10.0.0.1", "web", "sled-a", 1, 2)],
            changed: false,
            verify: vec!["10.0.0.1"],
            conflicts: 0,
        },
        Case {
            name: "a removal the live read confirmed",
            current: vec![
                mapping("10.0.0.1", "web", "sled-a", 1, 2),
                mapping("10.0.0.2", "db", "sled-a", 1, 1),
            ],
            claims: vec![claim("10.0.0.2", "db", "sled-a", 1)],
            removable: vec!["10.0.0.1"],
            want: vec![mapping("10.0.0.2", "db", "sled-a", 1, 1)],
            changed: true,
            verify: vec![],
            conflicts: 0,
        },
        Case {
            name: "a second instance claiming a mapped IP: the mapping stays, a conflict",
            current: vec![mapping("10.0.0.1", "web", "sled-a", 1, 2)],
            claims: vec![
                claim("10.0.0.1", "web", "sled-a", 1),
                claim("10.0.0.1", "intruder", "sled-c", 9),
            ],
            removable: vec![],
            want: vec![mapping("10.0.0.1", "web", "sled-a", 1, 2)],
            changed: false,
            verify: vec![],
            conflicts: 1,
        },
        Case {
            name: "two new claims of one IP: the instance created first gets it",
            current: vec![],
            claims: vec![
                claim("10.0.0.1", "intruder", "sled-c", 1),
                claim("10.0.0.1", "web", "sled-a", 1),
            ],
            removable: vec![],
            want: vec![mapping("10.0.0.1", "web", "sled-a", 1, 5)],
            changed: true,
            verify: vec![],
            conflicts: 1,
        },
        Case {
            name: "a mapped IP now claimed only by another instance: verified, not replaced",
            current: vec![mapping("10.0.0.1", "web", "sled-a", 1, 2)],
            claims: vec![claim("10.0.0.1", "other", "sled-c", 4)],
            removable: vec![],
            want: vec![mapping("10.0.0.1", "web", "sled-a", 1, 2)],
            changed: false,
            verify: vec!["10.0.0.1"],
            conflicts: 1,
        },
        Case {
            name: "a confirmed removal frees the IP for the next claim",
            current: vec![mapping("10.0.0.1", "web", "sled-a", 1, 2)],
            claims: vec![claim("10.0.0.1", "other", "sled-c", 4)],
            removable: vec!["10.0.0.1"],
            want: vec![mapping("10.0.0.1", "other", "sled-c", 4, 5)],
            changed: true,
            verify: vec![],
            conflicts: 0,
        },
    ];
    for case in cases {
        let removable = case.removable.iter().map(|s| s.to_string()).collect();
        let plan = merge(&case.current, &case.claims, &removable, 5);
        assert_eq!(plan.mappings, case.want, "{}", case.name);
        assert_eq!(plan.changed, case.changed, "{}", case.name);
        let verify: Vec<&str> = plan.verify.iter().map(|m| m.ip.as_str()).collect();
        assert_eq!(verify, case.verify, "{}", case.name);
        assert_eq!(plan.conflicts.len(), case.conflicts, "{}", case.name);
    }
}

#[test]
fn planning_what_was_planned_changes_nothing() {
    let claims = vec![
        claim("10.0.0.3", "c", "sled-b", 2),
        claim("10.0.0.1", "web", "sled-a", 1),
        claim("10.0.0.2", "db", "sled-a", 7),
    ];
    let first = merge(&[], &claims, &none(), 1);
    assert!(first.changed);
    let second = merge(&first.mappings, &claims, &none(), 2);
    assert!(!second.changed, "{second:?}");
    assert_eq!(second.mappings, first.mappings);
    assert!(second.verify.is_empty());
}

#[test]
fn a_live_read_allows_removal_only_when_the_instance_left() {
    use corral_crds::{InstanceSpec, InstanceStatus, Nic};
    let mapped = mapping("10.0.0.1", "web", "sled-a", 2, 1);
    let instance = |state: InstanceState, ip: &str, location_generation: u64| {
        let mut instance = Instance::new(
            "web",
            InstanceSpec {
                cpus: 1,
                memory_mib: 512,
                image: "debian".into(),
                nics: vec![Nic {
                    name: "net0".into(),
                    vpc: "blue".into(),
                    ip: ip.into(),
                }],
                ..Default::default()
            },
        );
        instance.metadata.namespace = Some("default".into());
        instance.status = Some(InstanceStatus {
            state: Some(state),
            sled: Some("sled-a".into()),
            active_vmm: Some("web-v1".into()),
            location_generation,
            ..Default::default()
        });
        instance
    };
    let cases = [
        ("gone", None, true),
        (
            "running with the IP",
            Some(instance(InstanceState::Running, "10.0.0.1", 2)),
            false,
        ),
        (
            "migrating with the IP",
            Some(instance(InstanceState::Migrating, "10.0.0.1", 2)),
            false,
        ),
        (
            "stopped",
            Some(instance(InstanceState::Stopped, "10.0.0.1", 2)),
            true,
        ),
        (
            "another IP",
            Some(instance(InstanceState::Running, "10.0.0.9", 2)),
            true,
        ),
        (
            "an earlier generation: a new instance of the name",
            Some(instance(InstanceState::Running, "10.0.0.1", 1)),
            true,
        ),
    ];
    for (name, live, want) in cases {
        assert_eq!(
            removable_after_read(&mapped, "blue", live.as_ref()),
            want,
            "{name}"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn claims() -> impl Strategy<Value = Vec<Claim>> {
        proptest::collection::vec((0..6u8, 0..4u8, 0..3u8, 0..5u64), 0..10).prop_map(|raw| {
            raw.into_iter()
                .map(|(ip, instance, sled, location_generation)| Claim {
                    ip: format!("10.0.0.{ip}"),
                    namespace: "default".into(),
                    instance: format!("i{instance}"),
                    sled: format!("sled-{sled}"),
                    location_generation,
                    created: format!("2026-01-01T00:00:0{instance}Z"),
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever the caches show, in any order: a mapping of an instance never goes back
        /// in locationGeneration, is never removed without a confirmed live read, and
        /// planning the result again changes nothing.
        #[test]
        fn mappings_never_go_backwards_nor_vanish_and_plans_settle(
            first in claims(),
            second in claims(),
            third in claims(),
        ) {
            let mut current: Vec<V2pMapping> = Vec::new();
            let mut generation = 0;
            for claims in [&first, &second, &third] {
                let planned = merge(&current, claims, &BTreeSet::new(), generation + 1);
                for before in &current {
                    let after = planned.mappings.iter().find(|m| m.ip == before.ip);
                    let after = after.expect("nothing removed without a live read");
                    if after.instance == before.instance {
                        prop_assert!(after.location_generation >= before.location_generation);
                    }
                    prop_assert_eq!(&after.instance, &before.instance);
                }
                if planned.changed {
                    generation += 1;
                }
                let again = merge(&planned.mappings, claims, &BTreeSet::new(), generation + 1);
                prop_assert!(!again.changed);
                prop_assert_eq!(&again.mappings, &planned.mappings);
                current = planned.mappings;
            }
        }
    }
}

/// A Ready sled that acknowledged `vpc` at `generation`.
fn acking_sled(name: &str, vpc: &str, generation: i64) -> Arc<Sled> {
    let mut sled: Sled = serde_json::from_value(serde_json::json!({
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Sled",
        "metadata": {"name": name},
        "spec": {},
        "status": {
            "epoch": 1,
            "v2p": [{"vpc": vpc, "generation": generation}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        },
    }))
    .expect("a sled");
    sled.metadata.name = Some(name.into());
    Arc::new(sled)
}

fn routes(
    vpc: &str,
    generation: i64,
    mappings: Vec<V2pMapping>,
    status: Option<VpcRoutesStatus>,
) -> VpcRoutes {
    let mut routes = VpcRoutes::new(vpc, corral_crds::VpcRoutesSpec { mappings });
    routes.metadata.generation = Some(generation);
    routes.status = status;
    routes
}

#[test]
fn a_vpc_plan_writes_mappings_then_the_status_of_the_generation_the_write_makes() {
    let merged = merge(&[], &[claim("10.0.0.1", "web", "sled-1", 1)], &none(), 1);
    let sleds = [
        acking_sled("sled-1", "blue", 0),
        acking_sled("sled-2", "blue", 0),
    ];
    // No VpcRoutes yet: create it with the mapping; its status is of generation 1.
    let first = plan("blue", None, &merged, &sleds, &[]);
    assert_eq!(
        first.steps,
        vec![
            Step::Act(Action::WriteMappings(merged.mappings.clone())),
            Step::WriteStatus
        ]
    );
    assert_eq!(
        (
            first.status.observed_generation,
            first.status.mappings,
            first.status.applied.as_str()
        ),
        (1, 1, "0/2")
    );
    // Stored as planned and acknowledged by one sled: only the status changes.
    let stored = routes(
        "blue",
        1,
        merged.mappings.clone(),
        Some(first.status.clone()),
    );
    let again = merge(
        &stored.spec.mappings,
        &[claim("10.0.0.1", "web", "sled-1", 1)],
        &none(),
        2,
    );
    let sleds = [
        acking_sled("sled-1", "blue", 1),
        acking_sled("sled-2", "blue", 0),
    ];
    let second = plan("blue", Some(&stored), &again, &sleds, &[]);
    assert_eq!(second.steps, vec![Step::WriteStatus]);
    assert_eq!(second.status.applied, "1/2");
    // Nothing new: nothing to do.
    let stored = routes(
        "blue",
        1,
        again.mappings.clone(),
        Some(second.status.clone()),
    );
    assert!(
        plan("blue", Some(&stored), &again, &sleds, &[])
            .steps
            .is_empty()
    );
}

#[test]
fn a_vpc_plan_with_no_routes_and_no_mapping_does_nothing_but_report_conflicts() {
    let merged = merge(&[], &[], &none(), 1);
    assert!(plan("blue", None, &merged, &[], &[]).steps.is_empty());
    let conflict = Conflict {
        ip: "10.0.0.1".into(),
        holder: ("default".into(), "web".into()),
        claimant: ("default".into(), "db".into()),
    };
    let claimant = ObjectReference {
        name: Some("db".into()),
        ..Default::default()
    };
    let planned = plan(
        "blue",
        None,
        &merged,
        &[],
        &[Report {
            conflict: &conflict,
            claimant: claimant.clone(),
        }],
    );
    let events: Vec<&kit::Event> = planned.events().collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, Reason::IpConflict);
    assert_eq!(events[0].regarding, Some(claimant));
    assert!(
        events[0]
            .message
            .contains("already mapped to instance default/web")
    );
}
