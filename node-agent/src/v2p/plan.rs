//! The V2P task's decisions, pure: what changes make a sled's V2P table equal to every
//! VpcRoutes ([`plan`]), which VPCs diverged, and what the Sled acknowledges ([`report`]).
//!
//! # Definitions
//! - A VPC's table is *applied* if (and only if) it holds exactly the VpcRoutes' mappings and
//!   was programmed from the VpcRoutes' current `metadata.generation`.
//! - A table is *diverged* if (and only if) it was programmed at the current generation and no
//!   longer holds its mappings (someone changed it behind the agent's back).
//!
//! # Invariants
//! - The plan changes the table only to follow VpcRoutes (or to undo a divergence).
//! - A VPC is removed only when the VpcRoutes list, complete, lacks it.

use std::sync::Arc;

use corral_crds::{V2pAck, V2pMapping, VpcRoutes};
use kube::ResourceExt;

use crate::sled::V2pReport;
use crate::v2p::table::{TableChange, V2pEntry, VpcTable, VpcTables};

/// One VPC's table differs from its VpcRoutes at the generation it was programmed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub vpc: String,
    /// `ip: found instead of wanted` for each entry that differs.
    pub differences: Vec<String>,
}

/// What to do to the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    /// The changes that make the table equal to the VpcRoutes.
    pub changes: Vec<TableChange>,
    pub diverged: Vec<Divergence>,
}

/// The table `routes` wants.
pub fn wanted(routes: &VpcRoutes) -> VpcTable {
    VpcTable {
        generation: routes.metadata.generation.unwrap_or(0),
        entries: routes
            .spec
            .mappings
            .iter()
            .map(|m| (m.ip.clone(), entry_of(m)))
            .collect(),
        forwards: Default::default(),
    }
}

fn entry_of(mapping: &V2pMapping) -> V2pEntry {
    V2pEntry {
        sled: mapping.sled.clone(),
        location_generation: mapping.location_generation,
    }
}

/// Compares the table with every VpcRoutes. A VPC whose table was programmed at the VpcRoutes'
/// generation is compared entry by entry only when `full` (the periodic check): a change of
/// VpcRoutes costs the VPCs that changed, not the whole table. `listed`: the list is complete,
/// so a VPC it lacks is gone.
pub fn plan(table: &VpcTables, routes: &[Arc<VpcRoutes>], listed: bool, full: bool) -> TablePlan {
    let mut result = TablePlan::default();
    for vpc_routes in routes {
        let vpc = vpc_routes.name_any();
        let generation = vpc_routes.metadata.generation.unwrap_or(0);
        let empty = VpcTable::default();
        let (have, known) = match table.get(&vpc) {
            Some(have) => (have, true),
            None => (&empty, false),
        };
        let current = known && have.generation == generation;
        if current && !full {
            continue;
        }
        let mut upserts = Vec::new();
        let mut differences = Vec::new();
        for mapping in &vpc_routes.spec.mappings {
            let want = entry_of(mapping);
            let found = have.entries.get(&mapping.ip);
            if found != Some(&want) {
                differences.push(difference(&mapping.ip, found, Some(&want)));
                upserts.push((mapping.ip.clone(), want));
            }
        }
        let mut removals = Vec::new();
        if have.entries.len()
            + upserts
                .iter()
                .filter(|(ip, _)| !have.entries.contains_key(ip))
                .count()
            != vpc_routes.spec.mappings.len()
        {
            let wanted_ips: std::collections::HashSet<&str> = vpc_routes
                .spec
                .mappings
                .iter()
                .map(|m| m.ip.as_str())
                .collect();
            for (ip, entry) in &have.entries {
                if !wanted_ips.contains(ip.as_str()) {
                    differences.push(difference(ip, Some(entry), None));
                    removals.push(ip.clone());
                }
            }
        }
        if current && upserts.is_empty() && removals.is_empty() {
            continue;
        }
        if current {
            result.diverged.push(Divergence {
                vpc: vpc.clone(),
                differences,
            });
        }
        result.changes.push(TableChange::Program {
            vpc,
            generation,
            upserts,
            removals,
        });
    }
    if listed {
        let names: std::collections::HashSet<String> =
            routes.iter().map(|r| r.name_any()).collect();
        for vpc in table.keys() {
            if !names.contains(vpc) {
                result
                    .changes
                    .push(TableChange::Remove { vpc: vpc.clone() });
            }
        }
    }
    result
}

fn difference(ip: &str, found: Option<&V2pEntry>, wanted: Option<&V2pEntry>) -> String {
    let show = |entry: Option<&V2pEntry>| match entry {
        Some(entry) => format!("{} (location {})", entry.sled, entry.location_generation),
        None => "nothing".to_string(),
    };
    format!("{ip}: {} instead of {}", show(found), show(wanted))
}

/// The acknowledgements and `V2PConverged` of `table` against `routes`, once the table was
/// programmed (a VPC counts as applied when its table holds the current generation).
pub fn report(table: &VpcTables, routes: &[Arc<VpcRoutes>]) -> V2pReport {
    let mut acks = Vec::new();
    let mut pending = Vec::new();
    for vpc_routes in routes {
        let vpc = vpc_routes.name_any();
        let generation = vpc_routes.metadata.generation.unwrap_or(0);
        match table.get(&vpc) {
            Some(have) => {
                acks.push(V2pAck {
                    vpc: vpc.clone(),
                    generation: have.generation,
                });
                if have.generation != generation {
                    pending.push(vpc);
                }
            }
            None => pending.push(vpc),
        }
    }
    acks.sort_by(|a, b| a.vpc.cmp(&b.vpc));
    let message = if pending.is_empty() {
        format!("{} VPCs applied", acks.len())
    } else {
        format!("not yet applied: {}", pending.join(", "))
    };
    V2pReport {
        acks,
        converged: pending.is_empty(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_crds::{V2pMapping, VpcRoutesSpec};

    fn routes(vpc: &str, generation: i64, mappings: &[(&str, &str, u64)]) -> Arc<VpcRoutes> {
        let mut routes = VpcRoutes::new(
            vpc,
            VpcRoutesSpec {
                mappings: mappings
                    .iter()
                    .map(|(ip, sled, location_generation)| V2pMapping {
                        ip: ip.to_string(),
                        sled: sled.to_string(),
                        location_generation: *location_generation,
                        namespace: "default".into(),
                        instance: "web".into(),
                        since: generation,
                    })
                    .collect(),
            },
        );
        routes.metadata.generation = Some(generation);
        Arc::new(routes)
    }

    /// Applies a plan's changes to a table, as `pass` does.
    fn applied(mut table: VpcTables, planned: &TablePlan) -> VpcTables {
        for change in &planned.changes {
            change.apply_to(&mut table);
        }
        table
    }

    #[test]
    fn the_table_follows_the_routes_and_a_corruption_is_a_divergence() {
        let blue = routes(
            "blue",
            2,
            &[("10.0.0.1", "sled-a", 1), ("10.0.0.2", "sled-b", 1)],
        );
        let blue = std::slice::from_ref(&blue);
        let first = plan(&VpcTables::new(), blue, true, false);
        assert!(first.diverged.is_empty());
        let mut table = applied(VpcTables::new(), &first);
        assert_eq!(table["blue"], wanted(&blue[0]));
        assert_eq!(plan(&table, blue, true, true), TablePlan::default());
        let acked = report(&table, blue);
        assert!(acked.converged);
        assert_eq!(
            acked.acks,
            vec![V2pAck {
                vpc: "blue".into(),
                generation: 2
            }]
        );

        // A newer generation: only what changed, not a divergence; pending until applied.
        let moved = routes("blue", 3, &[("10.0.0.1", "sled-c", 2)]);
        let moved = std::slice::from_ref(&moved);
        assert!(!report(&table, moved).converged);
        let next = plan(&table, moved, true, false);
        assert!(next.diverged.is_empty());
        assert_eq!(
            next.changes,
            vec![TableChange::Program {
                vpc: "blue".into(),
                generation: 3,
                upserts: vec![(
                    "10.0.0.1".into(),
                    V2pEntry {
                        sled: "sled-c".into(),
                        location_generation: 2
                    }
                )],
                removals: vec!["10.0.0.2".into()],
            }]
        );
        assert_eq!(applied(table.clone(), &next)["blue"], wanted(&moved[0]));

        // Changed behind the agent's back at the current generation: seen by the full check
        // only, a divergence, repaired.
        table
            .get_mut("blue")
            .unwrap()
            .entries
            .get_mut("10.0.0.1")
            .unwrap()
            .sled = "sled-x".into();
        assert_eq!(plan(&table, blue, true, false), TablePlan::default());
        let repaired = plan(&table, blue, true, true);
        assert_eq!(repaired.diverged.len(), 1);
        assert!(repaired.diverged[0].differences[0].contains("sled-x"));
        assert_eq!(applied(table.clone(), &repaired)["blue"], wanted(&blue[0]));

        // A VPC whose VpcRoutes is gone goes only once the list is complete.
        assert!(plan(&table, &[], false, true).changes.is_empty());
        assert_eq!(
            plan(&table, &[], true, true).changes,
            vec![TableChange::Remove { vpc: "blue".into() }]
        );
    }
}
