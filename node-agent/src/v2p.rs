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

use corral_crds::{Reason, V2pAck, VpcRoutes};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::reconcile::Context;
use crate::sled::V2pReport;
use crate::v2p_table::{SimV2pTable, V2pEntry, VpcTable};

/// One VPC's table differs from its VpcRoutes at the generation it was programmed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub vpc: String,
    /// `ip: found → wanted` for each entry that differs.
    pub differences: Vec<String>,
}

/// What to do to the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    /// VPCs to (re)program, with what.
    pub program: Vec<(String, VpcTable)>,
    /// VPCs no VpcRoutes names any more.
    pub remove: Vec<String>,
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
            .map(|m| {
                (
                    m.ip.clone(),
                    V2pEntry {
                        sled: m.sled.clone(),
                        location_generation: m.location_generation,
                    },
                )
            })
            .collect(),
    }
}

/// Compares the table with every VpcRoutes (`listed`: the list is complete, so a VPC it lacks
/// is gone).
pub fn plan(
    table: &BTreeMap<String, VpcTable>,
    routes: &[Arc<VpcRoutes>],
    listed: bool,
) -> TablePlan {
    let mut result = TablePlan::default();
    for vpc_routes in routes {
        let vpc = vpc_routes.name_any();
        let want = wanted(vpc_routes);
        match table.get(&vpc) {
            Some(have) if *have == want => {}
            Some(have) => {
                if have.generation == want.generation {
                    result.diverged.push(Divergence {
                        vpc: vpc.clone(),
                        differences: differences(have, &want),
                    });
                }
                result.program.push((vpc, want));
            }
            None => result.program.push((vpc, want)),
        }
    }
    if listed {
        for vpc in table.keys() {
            if !routes.iter().any(|r| r.name_any() == *vpc) {
                result.remove.push(vpc.clone());
            }
        }
    }
    result
}

fn differences(have: &VpcTable, want: &VpcTable) -> Vec<String> {
    let show = |entry: Option<&V2pEntry>| match entry {
        Some(entry) => format!("{} (location {})", entry.sled, entry.location_generation),
        None => "nothing".to_string(),
    };
    let mut ips: Vec<&String> = have.entries.keys().chain(want.entries.keys()).collect();
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .filter(|ip| have.entries.get(*ip) != want.entries.get(*ip))
        .map(|ip| {
            format!(
                "{ip}: {} instead of {}",
                show(have.entries.get(ip)),
                show(want.entries.get(ip))
            )
        })
        .collect()
}

/// The acknowledgements and `V2PConverged` of `table` against `routes`.
pub fn report(table: &BTreeMap<String, VpcTable>, routes: &[Arc<VpcRoutes>]) -> V2pReport {
    let mut acks = Vec::new();
    let mut pending = Vec::new();
    for vpc_routes in routes {
        let vpc = vpc_routes.name_any();
        let want = wanted(vpc_routes);
        match table.get(&vpc) {
            Some(have) => {
                acks.push(V2pAck {
                    vpc: vpc.clone(),
                    generation: have.generation,
                });
                if *have != want {
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
    ctx.sled.update_now(|report| {
        report.v2p = Some(V2pReport {
            acks: report.v2p.take().map(|r| r.acks).unwrap_or_default(),
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
            _ = tick.tick() => {}
        }
        if listed {
            pass(&ctx, &table, &store).await;
        }
    }
}

/// One pass: program what differs, report divergence, acknowledge.
async fn pass(ctx: &Context, table: &SimV2pTable, store: &Store<VpcRoutes>) {
    let routes = store.state();
    let planned = plan(&table.snapshot(), &routes, true);
    for (vpc, programmed) in &planned.program {
        if let Err(error) = table.program(vpc, Some(programmed.clone())) {
            tracing::warn!(sled = %ctx.sled_name, %vpc, %error, "programming the V2P table");
        }
    }
    for vpc in &planned.remove {
        if let Err(error) = table.program(vpc, None) {
            tracing::warn!(sled = %ctx.sled_name, %vpc, %error, "removing from the V2P table");
        }
    }
    let report = report(&table.snapshot(), &routes);
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

    #[test]
    fn the_table_follows_the_routes_and_a_corruption_is_a_divergence() {
        let blue = routes("blue", 2, &[("10.0.0.1", "sled-a", 1)]);
        let empty = BTreeMap::new();
        let first = plan(&empty, std::slice::from_ref(&blue), true);
        assert_eq!(first.program, vec![("blue".to_string(), wanted(&blue))]);
        assert!(first.diverged.is_empty());

        let mut table = BTreeMap::from([("blue".to_string(), wanted(&blue))]);
        assert_eq!(
            plan(&table, std::slice::from_ref(&blue), true),
            TablePlan::default()
        );
        let acked = report(&table, std::slice::from_ref(&blue));
        assert!(acked.converged);
        assert_eq!(
            acked.acks,
            vec![V2pAck {
                vpc: "blue".into(),
                generation: 2
            }]
        );

        // A newer generation: programmed, not a divergence; pending until then.
        let moved = routes("blue", 3, &[("10.0.0.1", "sled-b", 2)]);
        let next = plan(&table, std::slice::from_ref(&moved), true);
        assert_eq!(next.program.len(), 1);
        assert!(next.diverged.is_empty());
        assert!(!report(&table, std::slice::from_ref(&moved)).converged);

        // Changed behind the agent's back at the current generation: a divergence.
        table
            .get_mut("blue")
            .unwrap()
            .entries
            .get_mut("10.0.0.1")
            .unwrap()
            .sled = "sled-x".into();
        let repaired = plan(&table, std::slice::from_ref(&blue), true);
        assert_eq!(repaired.program, vec![("blue".to_string(), wanted(&blue))]);
        assert_eq!(repaired.diverged.len(), 1);
        assert!(repaired.diverged[0].differences[0].contains("sled-x"));

        // A VPC whose VpcRoutes is gone goes only once the list is complete.
        assert!(plan(&table, &[], false).remove.is_empty());
        assert_eq!(plan(&table, &[], true).remove, vec!["blue".to_string()]);
    }
}
