//! The agent's V2P task: keeps the sled's V2P table ([`SimV2pTable`]) equal to every VpcRoutes,
//! and acknowledges what it applied.
//!
//! A VPC's table is *applied* if (and only if) it holds exactly the VpcRoutes' mappings and was
//! programmed from the VpcRoutes' current `metadata.generation`. A table is *diverged* if (and
//! only if) it was programmed at the current generation and no longer holds its mappings
//! (someone changed it behind the agent's back: the fault API's `POST /v2p/corrupt`).
//!
//! Reads all VpcRoutes (a watch). Writes the table, `Sled.status.v2p` (the generation applied
//! per VPC) and `V2PConverged` (True/`V2PApplied` when every VpcRoutes is applied, False/
//! `V2PPending` otherwise), through [`SledReporter::update_now`] so that an acknowledgement
//! leaves within one write, not after the status debounce; and `DivergenceDetected` (Warning) /
//! `DivergenceRepaired` (Normal) Events on the Sled.
//!
//! # Invariants
//! - The table changes only to follow VpcRoutes (or to undo a divergence): never because VMMs
//!   come and go on the sled (seed 003: the control plane alone owns the mappings).
//! - A generation is acknowledged only after the table holds it (written to the machine).
//! - A VPC is removed from the table only when the VpcRoutes list, complete, lacks it.
//!
//! # Assumptions
//! - Each pass is idempotent; the task may stop at any `.await` (the table is the machine's and
//!   stays as it was).
//!
//! # Not responsible for
//! - What the mappings are (the V2P controller, `controllers/src/v2p.rs`).
//! - Forwarding packets (simulated: nothing reads the table but the fault API).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corral_crds::{Reason, V2pAck, V2pMapping, VpcRoutes};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::reconcile::Context;
use crate::sled::V2pReport;
use crate::v2p_table::{SimV2pTable, TableChange, V2pEntry, VpcTable};

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
pub fn plan(
    table: &BTreeMap<String, VpcTable>,
    routes: &[Arc<VpcRoutes>],
    listed: bool,
    full: bool,
) -> TablePlan {
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
pub fn report(table: &BTreeMap<String, VpcTable>, routes: &[Arc<VpcRoutes>]) -> V2pReport {
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

/// Runs until `stop`: a pass on every VpcRoutes change and every `check_interval`.
pub async fn run(
    ctx: Arc<Context>,
    table: Arc<SimV2pTable>,
    check_interval: Duration,
    stop: CancellationToken,
) {
    // What the table holds is known before the list: a restarted agent keeps acknowledging it.
    let held: Vec<V2pAck> = table.inspect(|vpcs| {
        vpcs.iter()
            .map(|(vpc, vpc_table)| V2pAck {
                vpc: vpc.clone(),
                generation: vpc_table.generation,
            })
            .collect()
    });
    ctx.sled.update_now(|report| {
        report.v2p = Some(V2pReport {
            acks: held,
            converged: false,
            message: "waiting for the list of VpcRoutes".to_string(),
        })
    });
    let (store, writer) = reflector::store::<VpcRoutes>();
    let api: Api<VpcRoutes> = Api::all(ctx.client.clone());
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .ready_chunks(256)
        .boxed();
    let mut listed = false;
    let mut full = false;
    let mut tick = tokio::time::interval(check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            chunk = events.next() => {
                let Some(chunk) = chunk else { return };
                for event in chunk {
                    match event {
                        Ok(watcher::Event::InitDone) => listed = true,
                        Ok(_) => {}
                        Err(error) => tracing::warn!(sled = %ctx.sled_name, %error, "watching VpcRoutes"),
                    }
                }
            }
            _ = tick.tick() => full = true,
        }
        if listed {
            pass(&ctx, &table, &store, full).await;
            full = false;
        }
    }
}

/// One pass: program what differs, report divergence, acknowledge.
async fn pass(ctx: &Context, table: &SimV2pTable, store: &Store<VpcRoutes>, full: bool) {
    let routes = store.state();
    let planned = table.inspect(|vpcs| plan(vpcs, &routes, true, full));
    for change in planned.changes {
        if let Err(error) = table.change(change) {
            tracing::warn!(sled = %ctx.sled_name, %error, "programming the V2P table");
        }
    }
    let report = table.inspect(|vpcs| report(vpcs, &routes));
    ctx.sled.update_now(|wanted| wanted.v2p = Some(report));
    if planned.diverged.is_empty() {
        return;
    }
    let sled = ctx.sled.sled();
    for divergence in &planned.diverged {
        let found = divergence.differences.join("; ");
        ctx.recorder
            .warning(
                &sled,
                Reason::DivergenceDetected,
                format!(
                    "the V2P table of VPC {} differs from its VpcRoutes: {found}",
                    divergence.vpc
                ),
            )
            .await;
        ctx.recorder
            .normal(
                &sled,
                Reason::DivergenceRepaired,
                format!(
                    "the V2P table of VPC {} was programmed again from its VpcRoutes",
                    divergence.vpc
                ),
            )
            .await;
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
    fn applied(
        mut table: BTreeMap<String, VpcTable>,
        planned: &TablePlan,
    ) -> BTreeMap<String, VpcTable> {
        for change in &planned.changes {
            match change {
                TableChange::Program {
                    vpc,
                    generation,
                    upserts,
                    removals,
                } => {
                    let vpc_table = table.entry(vpc.clone()).or_default();
                    vpc_table.generation = *generation;
                    for ip in removals {
                        vpc_table.entries.remove(ip);
                    }
                    vpc_table.entries.extend(upserts.iter().cloned());
                }
                TableChange::Remove { vpc } => {
                    table.remove(vpc);
                }
            }
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
        let first = plan(&BTreeMap::new(), blue, true, false);
        assert!(first.diverged.is_empty());
        let mut table = applied(BTreeMap::new(), &first);
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
