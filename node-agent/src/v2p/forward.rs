//! Forwarding entries: the source sled of a live migration forwards the packets that still
//! reach it for the moved guest's IPs to the target, so that a sled whose table still maps an
//! IP to the source routes it right (docs/migration.md, "Make before break").
//!
//! # Definitions
//! - A source Vmm is *paused* for a forwarding entry if (and only if) its journal record names
//!   the entry's migration as its source end in phase `Ready` (paused for the last round,
//!   waiting for the verdict); it has *left* if that phase is `Completed` (switched: paused
//!   until torn down) or the record is gone; it is *back* otherwise (the migration aborted or
//!   failed and the guest runs here again, or the record is of another migration).
//! - A forwarding entry is *acknowledged everywhere* if (and only if) the VpcRoutes maps its IP
//!   to the same instance at a higher `locationGeneration` than the entry's (the move it stands
//!   in for, or a later one), and every Ready Sled acknowledged, for the VPC, the `since` of
//!   that mapping or a later generation (a live list of the Sleds, never a cache).
//!
//! # Invariants
//! - The source installs the entries after it journals `Ready` and before it pauses the guest
//!   ([`install`], from `migration/source.rs`); the target receives the whole guest (`done`)
//!   only after that, so the entries are on the machine before the target can run the guest.
//! - A guest that resumes here has no entry pointing away: [`withdraw`] runs before every
//!   resume (`vmm/reconcile.rs`), and a failed withdrawal leaves the guest paused.
//! - An entry never outlives its reason ([`verdict`]): it goes once acknowledged everywhere,
//!   once its source is back, or once its source left and the IP maps to no instance or to
//!   another one. The V2P task checks every scan interval, from what the table holds: a
//!   restarted agent finds its entries and keeps or removes them by the same rule.
//!
//! # Not responsible for
//! Moving packets (the table's driver), the mappings themselves (`plan.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use corral_crds::{Instance, MigrationRole, Sled, V2pMapping, VmmMigrationPhase, VpcRoutes};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::context::Context;
use crate::journal::{MigrationRecord, VmmRecord};
use crate::v2p::table::{Forward, TableChange, V2pTable, V2pTableError, VpcTables};

/// Where the source Vmm of a forwarding entry stands (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Paused,
    Left,
    Back,
}

/// Why a forwarding entry goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// Every Ready sled maps the IP to where the guest moved.
    AcknowledgedEverywhere,
    /// The migration aborted or failed: the guest runs here again.
    SourceBack,
    /// The source is gone and the IP maps to no instance, or to another one.
    InstanceGone,
}

/// The forwarding entries a source installs for `instance` (every NIC's IP, one change per
/// VPC) when it pauses `source_vmm` for migration `migration` to `to_sled`.
pub fn forwards_for(
    instance: &Instance,
    source_vmm: &str,
    migration: &str,
    to_sled: &str,
) -> Vec<TableChange> {
    let namespace = instance.namespace().unwrap_or_default();
    let forward = Forward {
        to_sled: to_sled.to_string(),
        instance: format!("{namespace}/{}", instance.name_any()),
        source_vmm: format!("{namespace}/{source_vmm}"),
        migration: migration.to_string(),
        location_generation: instance
            .status
            .as_ref()
            .map_or(0, |status| status.location_generation),
    };
    let mut by_vpc: BTreeMap<&str, Vec<(String, Forward)>> = BTreeMap::new();
    for nic in &instance.spec.nics {
        by_vpc
            .entry(nic.vpc.as_str())
            .or_default()
            .push((nic.ip.clone(), forward.clone()));
    }
    by_vpc
        .into_iter()
        .map(|(vpc, forwards)| TableChange::Forward {
            vpc: vpc.to_string(),
            forwards,
        })
        .collect()
}

/// The changes that drop every forwarding entry of `source_vmm` (`namespace/name`). Each
/// drops an entry only as it was read: one installed since stays.
pub fn withdrawals_of(vpcs: &VpcTables, source_vmm: &str) -> Vec<TableChange> {
    unforward(vpcs, |_, _, forward| forward.source_vmm == source_vmm)
}

/// Where the source Vmm of `forward` stands, from its journal record (if any).
pub fn source_of(forward: &Forward, record: Option<&VmmRecord>) -> Source {
    match record {
        None => Source::Left,
        Some(record) => source_in(forward, record.migration.as_ref()),
    }
}

/// Where the source Vmm of `forward` stands, from the migration end its record holds.
fn source_in(forward: &Forward, migration: Option<&MigrationRecord>) -> Source {
    let end = migration.filter(|m| {
        m.status.migration == forward.migration && m.status.role == MigrationRole::Source
    });
    match end.map(|m| m.status.phase) {
        Some(VmmMigrationPhase::Ready) => Source::Paused,
        Some(VmmMigrationPhase::Completed) => Source::Left,
        _ => Source::Back,
    }
}

/// Whether `forward` goes, and why: `mapping` is the VpcRoutes mapping of its IP (if any),
/// `acknowledged(since)` whether every Ready sled acknowledged that generation of the VPC.
pub fn verdict(
    forward: &Forward,
    source: Source,
    mapping: Option<&V2pMapping>,
    acknowledged: impl Fn(i64) -> bool,
) -> Option<Withdrawal> {
    if source == Source::Back {
        return Some(Withdrawal::SourceBack);
    }
    let same_instance =
        mapping.filter(|m| format!("{}/{}", m.namespace, m.instance) == forward.instance);
    match same_instance {
        Some(m) if m.location_generation > forward.location_generation && acknowledged(m.since) => {
            Some(Withdrawal::AcknowledgedEverywhere)
        }
        None if source == Source::Left => Some(Withdrawal::InstanceGone),
        _ => None,
    }
}

/// Whether every Ready sled of `sleds` acknowledged generation `since` of `vpc` or a later one.
pub fn acknowledged_everywhere(sleds: &[Sled], vpc: &str, since: i64) -> bool {
    sleds.iter().filter(|sled| sled.is_ready()).all(|sled| {
        sled.status.as_ref().is_some_and(|status| {
            status
                .v2p
                .iter()
                .any(|ack| ack.vpc == vpc && ack.generation >= since)
        })
    })
}

/// The changes that drop every forwarding entry of `vpcs` whose [`verdict`] says so, given
/// the VpcRoutes, where each source stands and the Sleds.
pub fn stale(
    vpcs: &VpcTables,
    routes: &[Arc<VpcRoutes>],
    source: impl Fn(&Forward) -> Source,
    sleds: &[Sled],
) -> Vec<TableChange> {
    unforward(vpcs, |vpc, ip, forward| {
        let mapping = routes
            .iter()
            .find(|r| r.name_any() == vpc)
            .and_then(|r| r.spec.mappings.iter().find(|m| m.ip == ip));
        let found = verdict(forward, source(forward), mapping, |since| {
            acknowledged_everywhere(sleds, vpc, since)
        });
        if let Some(why) = found {
            tracing::info!(vpc, ip, to = %forward.to_sled, ?why, "withdrawing a forwarding entry");
        }
        found.is_some()
    })
}

/// One `Unforward` per VPC, of the entries `drop(vpc, ip, forward)` picks.
fn unforward(
    vpcs: &VpcTables,
    mut drop: impl FnMut(&str, &str, &Forward) -> bool,
) -> Vec<TableChange> {
    vpcs.iter()
        .filter_map(|(vpc, table)| {
            let forwards: Vec<(String, Forward)> = table
                .forwards
                .iter()
                .filter(|(ip, forward)| drop(vpc, ip, forward))
                .map(|(ip, forward)| (ip.clone(), forward.clone()))
                .collect();
            (!forwards.is_empty()).then(|| TableChange::Unforward {
                vpc: vpc.clone(),
                forwards,
            })
        })
        .collect()
}

/// Puts `changes` (from [`forwards_for`]) on the machine's table.
pub fn install(table: &dyn V2pTable, changes: Vec<TableChange>) -> Result<(), V2pTableError> {
    changes
        .into_iter()
        .try_for_each(|change| table.apply(change))
}

/// Drops every forwarding entry of the Vmm `namespace/name` from the machine's table: called
/// before its guest resumes here.
pub fn withdraw(table: &dyn V2pTable, namespace: &str, name: &str) -> Result<(), V2pTableError> {
    let source_vmm = format!("{namespace}/{name}");
    let changes = table.read(|vpcs| withdrawals_of(vpcs, &source_vmm))?;
    install(table, changes)
}

/// Drops the forwarding entries that lost their reason (the V2P task's periodic check).
pub async fn check(ctx: &Context, table: &dyn V2pTable, routes: &[Arc<VpcRoutes>]) {
    let Ok(any) = table.read(|vpcs| vpcs.values().any(|t| !t.forwards.is_empty())) else {
        return;
    };
    if !any {
        return;
    }
    let sleds = match Api::<Sled>::all(ctx.api.client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            tracing::warn!(sled = %ctx.sled.name, %error, "listing Sleds for the forwarding entries");
            return;
        }
    };
    // Held until the changes are applied: a source journals `Ready` (under this lock) before
    // it installs its entries, so every entry read here is judged against its `Ready` record,
    // never against the `Transferring` one before it.
    let ledger = ctx.ledger.lock().await;
    let source = |forward: &Forward| {
        let record = ledger
            .records
            .values()
            .find(|r| format!("{}/{}", r.namespace, r.name) == forward.source_vmm);
        source_of(forward, record)
    };
    let Ok(changes) = table.read(|vpcs| stale(vpcs, routes, source, &sleds)) else {
        return;
    };
    if let Err(error) = install(table, changes) {
        tracing::warn!(sled = %ctx.sled.name, %error, "withdrawing forwarding entries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::plan::migration_status;
    use corral_crds::{
        ConditionStatus, InstanceSpec, InstanceStatus, Nic, Reason, SledConditionType, SledStatus,
        V2pAck, VpcRoutesSpec, condition,
    };

    fn web() -> Instance {
        let mut instance = Instance::new(
            "web",
            InstanceSpec {
                nics: vec![
                    Nic {
                        name: "net0".into(),
                        vpc: "blue".into(),
                        ip: "10.0.0.5".into(),
                    },
                    Nic {
                        name: "net1".into(),
                        vpc: "green".into(),
                        ip: "10.1.0.5".into(),
                    },
                ],
                ..Default::default()
            },
        );
        instance.metadata.namespace = Some("default".into());
        instance.status = Some(InstanceStatus {
            location_generation: 3,
            ..Default::default()
        });
        instance
    }

    fn forward() -> Forward {
        Forward {
            to_sled: "sled-2".into(),
            instance: "default/web".into(),
            source_vmm: "default/web-v3".into(),
            migration: "move".into(),
            location_generation: 3,
        }
    }

    fn mapping(instance: &str, location_generation: u64, since: i64) -> V2pMapping {
        V2pMapping {
            ip: "10.0.0.5".into(),
            sled: "sled-2".into(),
            location_generation,
            namespace: "default".into(),
            instance: instance.into(),
            since,
        }
    }

    fn sled(name: &str, ready: bool, acked: i64) -> Sled {
        let mut sled = Sled::new(name, Default::default());
        let mut status = SledStatus {
            v2p: vec![V2pAck {
                vpc: "blue".into(),
                generation: acked,
            }],
            ..Default::default()
        };
        let ready = if ready {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        condition::set(
            &mut status.conditions,
            SledConditionType::Ready,
            ready,
            Reason::HeartbeatExpired,
            "",
            jiff::Timestamp::UNIX_EPOCH,
        );
        sled.status = Some(status);
        sled
    }

    #[test]
    fn a_source_forwards_every_ip_of_the_instance_to_the_target() {
        let changes = forwards_for(&web(), "web-v3", "move", "sled-2");
        assert_eq!(
            changes,
            vec![
                TableChange::Forward {
                    vpc: "blue".into(),
                    forwards: vec![("10.0.0.5".into(), forward())],
                },
                TableChange::Forward {
                    vpc: "green".into(),
                    forwards: vec![("10.1.0.5".into(), forward())],
                },
            ]
        );
        let mut vpcs = VpcTables::new();
        for change in &changes {
            change.apply_to(&mut vpcs);
        }
        // Withdrawn whole; an entry replaced since (another migration) stays.
        let withdrawals = withdrawals_of(&vpcs, "default/web-v3");
        assert_eq!(withdrawals.len(), 2);
        let mut replaced = forward();
        replaced.migration = "move-again".into();
        vpcs.get_mut("blue")
            .unwrap()
            .forwards
            .insert("10.0.0.5".into(), replaced.clone());
        for change in &withdrawals {
            change.apply_to(&mut vpcs);
        }
        assert_eq!(vpcs["blue"].forwards["10.0.0.5"], replaced);
        assert!(vpcs["green"].forwards.is_empty());
        assert!(withdrawals_of(&vpcs, "default/other").is_empty());
    }

    #[test]
    fn an_entry_goes_only_when_acknowledged_everywhere_aborted_or_its_instance_is_gone() {
        let f = forward();
        let yes = |_| true;
        let no = |_| false;
        let moved = mapping("web", 4, 7);
        let before = mapping("web", 3, 5);
        let other = mapping("db", 9, 8);
        let cases: &[(Source, Option<&V2pMapping>, bool, Option<Withdrawal>)] = &[
            // Paused for the last round: the mapping still points here.
            (Source::Paused, Some(&before), true, None),
            // Switched, not yet acknowledged by every Ready sled: kept.
            (Source::Left, Some(&moved), false, None),
            (Source::Paused, Some(&moved), false, None),
            // Acknowledged everywhere: gone, whether or not the source is torn down yet.
            (
                Source::Left,
                Some(&moved),
                true,
                Some(Withdrawal::AcknowledgedEverywhere),
            ),
            // A mapping older than the move does not count, acknowledged or not.
            (Source::Left, Some(&before), true, None),
            // Aborted: the guest runs here again.
            (
                Source::Back,
                Some(&before),
                false,
                Some(Withdrawal::SourceBack),
            ),
            // The source left and the IP maps to no instance or another one.
            (Source::Left, None, false, Some(Withdrawal::InstanceGone)),
            (
                Source::Left,
                Some(&other),
                false,
                Some(Withdrawal::InstanceGone),
            ),
            // ... but not while the source still waits for the verdict.
            (Source::Paused, None, false, None),
        ];
        for (source, found, acknowledged, expected) in cases {
            let got = if *acknowledged {
                verdict(&f, *source, *found, yes)
            } else {
                verdict(&f, *source, *found, no)
            };
            assert_eq!(got, *expected, "{source:?} {found:?} {acknowledged}");
        }
    }

    #[test]
    fn the_journal_record_says_where_the_source_stands() {
        let f = forward();
        let end = |migration: &str, role, phase| MigrationRecord {
            status: migration_status(migration, role, phase, None, ""),
            peer_vmm: "web-v4".into(),
        };
        use MigrationRole::{Source as Sending, Target as Receiving};
        use VmmMigrationPhase::{Aborted, Completed, Failed, Ready};
        assert_eq!(source_of(&f, None), Source::Left);
        let cases = [
            (Some(end("move", Sending, Ready)), Source::Paused),
            (Some(end("move", Sending, Completed)), Source::Left),
            (Some(end("move", Sending, Aborted)), Source::Back),
            (Some(end("move", Sending, Failed)), Source::Back),
            (Some(end("move", Receiving, Ready)), Source::Back),
            (Some(end("move-again", Sending, Ready)), Source::Back),
            (None, Source::Back),
        ];
        for (migration, expected) in cases {
            let found = source_in(&f, migration.as_ref());
            assert_eq!(found, expected, "{migration:?}");
        }
    }

    #[test]
    fn acknowledged_everywhere_counts_ready_sleds_only() {
        let sleds = [sled("sled-1", true, 7), sled("sled-2", true, 8)];
        assert!(acknowledged_everywhere(&sleds, "blue", 7));
        assert!(!acknowledged_everywhere(&sleds, "blue", 8));
        assert!(!acknowledged_everywhere(&sleds, "green", 1));
        let with_down = [sled("sled-1", true, 8), sled("sled-3", false, 1)];
        assert!(acknowledged_everywhere(&with_down, "blue", 8));
    }

    #[test]
    fn stale_judges_each_entry_from_routes_sources_and_sleds() {
        let mut vpcs = VpcTables::new();
        for change in forwards_for(&web(), "web-v3", "move", "sled-2") {
            change.apply_to(&mut vpcs);
        }
        let mut routes = VpcRoutes::new(
            "blue",
            VpcRoutesSpec {
                mappings: vec![mapping("web", 4, 7)],
            },
        );
        routes.metadata.generation = Some(7);
        let routes = [Arc::new(routes)];
        let sleds = [sled("sled-1", true, 7), sled("sled-2", true, 6)];
        // sled-2 has not acknowledged generation 7; green has no VpcRoutes but the source
        // waits for the verdict.
        assert!(stale(&vpcs, &routes, |_| Source::Paused, &sleds).is_empty());
        let acked = [sled("sled-1", true, 7), sled("sled-2", true, 7)];
        let blue_only = stale(&vpcs, &routes, |_| Source::Paused, &acked);
        assert_eq!(
            blue_only,
            vec![TableChange::Unforward {
                vpc: "blue".into(),
                forwards: vec![("10.0.0.5".into(), forward())],
            }]
        );
        assert_eq!(stale(&vpcs, &routes, |_| Source::Back, &sleds).len(), 2);
    }
}
