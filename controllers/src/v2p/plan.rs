//! The V2P controller's decisions for one VPC, as a pure function of the VpcRoutes as written
//! and the instances as the cache shows them.
//!
//! [`claims`] turns cached Instances into [`Claim`]s (an IP of the VPC at a sled, from an
//! instance whose active Vmm runs); [`plan`] merges the claims into the current mappings and
//! returns the mappings to write, the mappings whose removal needs a live read of their
//! Instance first, and the IP conflicts to report. `v2p.rs` does the reads and the writes.
//!
//! # Invariants
//! - **Never backwards.** A mapping is replaced only by a claim of the same instance with a
//!   higher `locationGeneration`; a stale cache (a lower one) changes nothing.
//! - **Never removed on a stale read.** A mapping with no claim of its instance stays and is
//!   listed in [`Plan::verify`]; it goes only when the caller passes its IP in `removable`,
//!   after a live read of the Instance showed it gone, not running, without that IP, or an
//!   earlier life of it ([`removable_after_read`]).
//! - **First claim wins.** Two instances claiming one IP: the existing mapping stays; with none,
//!   the instance created first gets it. The others are [`Plan::conflicts`].
//! - `since` is `next_generation` for every changed or new mapping and kept otherwise;
//!   `plan(current = plan(..).mappings)` changes nothing (tests).

use std::collections::{BTreeMap, BTreeSet};

use corral_crds::{Instance, InstanceState, V2pMapping};
use kube::ResourceExt;

/// One instance IP in a VPC, as the cache shows the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub ip: String,
    pub namespace: String,
    pub instance: String,
    pub sled: String,
    pub location_generation: u64,
    /// The Instance's creation time (RFC 3339), which orders claims of one IP.
    pub created: String,
}

impl Claim {
    fn is_of(&self, mapping: &V2pMapping) -> bool {
        self.namespace == mapping.namespace && self.instance == mapping.instance
    }
}

/// Two instances claiming one IP: `holder` keeps it, `claimant` does not get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub ip: String,
    pub holder: (String, String),
    pub claimant: (String, String),
}

/// What to write for one VPC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The spec's mappings after the plan, sorted by IP.
    pub mappings: Vec<V2pMapping>,
    /// Whether `mappings` differs from the current spec (a write is due).
    pub changed: bool,
    /// Mappings no cached claim supports: removed only once a live read confirms it.
    pub verify: Vec<V2pMapping>,
    pub conflicts: Vec<Conflict>,
}

/// Whether the instance runs somewhere: its active Vmm runs (`Running`, or `Migrating` while the
/// source still runs it) and it names its sled.
pub fn is_placed(instance: &Instance) -> bool {
    instance.status.as_ref().is_some_and(|status| {
        matches!(
            status.state,
            Some(InstanceState::Running) | Some(InstanceState::Migrating)
        ) && status.sled.is_some()
            && status.active_vmm.is_some()
    })
}

/// The claims `instance` makes in `vpc` (none unless it is placed and not being deleted).
pub fn claims(instance: &Instance, vpc: &str) -> Vec<Claim> {
    if !is_placed(instance) || instance.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let status = instance
        .status
        .as_ref()
        .expect("a placed instance has a status");
    let created = instance
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    instance
        .spec
        .nics
        .iter()
        .filter(|nic| nic.vpc == vpc)
        .map(|nic| Claim {
            ip: nic.ip.clone(),
            namespace: instance.namespace().unwrap_or_default(),
            instance: instance.name_any(),
            sled: status.sled.clone().unwrap_or_default(),
            location_generation: status.location_generation,
            created: created.clone(),
        })
        .collect()
}

/// Whether a live read of the mapping's Instance (`None`: it does not exist) allows removing
/// `mapping` from `vpc`.
pub fn removable_after_read(mapping: &V2pMapping, vpc: &str, live: Option<&Instance>) -> bool {
    let Some(instance) = live else {
        return true;
    };
    if instance.metadata.deletion_timestamp.is_some() || !is_placed(instance) {
        return true;
    }
    let has_ip = instance
        .spec
        .nics
        .iter()
        .any(|nic| nic.vpc == vpc && nic.ip == mapping.ip);
    // A lower locationGeneration than the mapping's is a later instance of the same name (the
    // generation of one Instance never goes down).
    let earlier_life = instance
        .status
        .as_ref()
        .is_some_and(|s| s.location_generation < mapping.location_generation);
    !has_ip || earlier_life
}

/// Merges `claims` into `current` (see the module docs). `removable` holds the IPs whose
/// removal a live read confirmed; `next_generation` is the generation the write will make.
pub fn plan(
    current: &[V2pMapping],
    claims: &[Claim],
    removable: &BTreeSet<String>,
    next_generation: i64,
) -> Plan {
    let mut by_ip: BTreeMap<&str, Vec<&Claim>> = BTreeMap::new();
    for claim in claims {
        by_ip.entry(claim.ip.as_str()).or_default().push(claim);
    }
    for list in by_ip.values_mut() {
        list.sort_by(|a, b| {
            (&a.created, &a.namespace, &a.instance).cmp(&(&b.created, &b.namespace, &b.instance))
        });
        list.dedup_by(|a, b| a.namespace == b.namespace && a.instance == b.instance);
    }
    let mut result = Plan::default();
    let mut seen = BTreeSet::new();
    for mapping in current {
        let ip_claims = by_ip.get(mapping.ip.as_str()).cloned().unwrap_or_default();
        let own = ip_claims.iter().find(|claim| claim.is_of(mapping));
        if own.is_none() && removable.contains(&mapping.ip) {
            // Removed: the IP is free for the claims below.
            result.changed = true;
            continue;
        }
        seen.insert(mapping.ip.as_str());
        for other in ip_claims.iter().filter(|claim| !claim.is_of(mapping)) {
            result.conflicts.push(Conflict {
                ip: mapping.ip.clone(),
                holder: (mapping.namespace.clone(), mapping.instance.clone()),
                claimant: (other.namespace.clone(), other.instance.clone()),
            });
        }
        match own {
            Some(claim) if claim.location_generation > mapping.location_generation => {
                result.mappings.push(V2pMapping {
                    sled: claim.sled.clone(),
                    location_generation: claim.location_generation,
                    since: next_generation,
                    ..mapping.clone()
                });
                result.changed = true;
            }
            Some(_) => result.mappings.push(mapping.clone()),
            None => {
                result.verify.push(mapping.clone());
                result.mappings.push(mapping.clone());
            }
        }
    }
    for (ip, ip_claims) in &by_ip {
        if seen.contains(ip) {
            continue;
        }
        let (first, others) = ip_claims.split_first().expect("a claimed IP has a claim");
        for other in others {
            result.conflicts.push(Conflict {
                ip: ip.to_string(),
                holder: (first.namespace.clone(), first.instance.clone()),
                claimant: (other.namespace.clone(), other.instance.clone()),
            });
        }
        result.mappings.push(V2pMapping {
            ip: ip.to_string(),
            sled: first.sled.clone(),
            location_generation: first.location_generation,
            namespace: first.namespace.clone(),
            instance: first.instance.clone(),
            since: next_generation,
        });
        result.changed = true;
    }
    result.mappings.sort_by(|a, b| a.ip.cmp(&b.ip));
    result
}

#[cfg(test)]
mod tests {
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
            let plan = plan(&case.current, &case.claims, &removable, 5);
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
        let first = plan(&[], &claims, &none(), 1);
        assert!(first.changed);
        let second = plan(&first.mappings, &claims, &none(), 2);
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
                    let planned = plan(&current, claims, &BTreeSet::new(), generation + 1);
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
                    let again = plan(&planned.mappings, claims, &BTreeSet::new(), generation + 1);
                    prop_assert!(!again.changed);
                    prop_assert_eq!(&again.mappings, &planned.mappings);
                    current = planned.mappings;
                }
            }
        }
    }
}
