//! The agent's V2P task: keeps the sled's V2P table (a [`V2pTable`], `table.rs`) equal to
//! every VpcRoutes, and acknowledges what it applied. `plan.rs` decides, pure; this module
//! reads, programs and reports. Every scan interval it also withdraws the forwarding entries
//! of live migrations that lost their reason (`forward.rs`, docs/migration.md, "Make before
//! break").
//!
//! A VPC's table is *applied* if (and only if) it holds exactly the VpcRoutes' mappings and was
//! programmed from the VpcRoutes' current `metadata.generation`. A table is *diverged* if (and
//! only if) it was programmed at the current generation and no longer holds its mappings
//! (someone changed it behind the agent's back: on a simulated sled, the fault API's
//! `POST /v2p/corrupt`).
//!
//! Reads all VpcRoutes (a watch). Writes the table, `Sled.status.v2p` (the generation applied
//! per VPC) and `V2PConverged` (True/`V2PApplied` when every VpcRoutes is applied, False/
//! `V2PPending` otherwise), through [`SledReporter::update_now`] so that an acknowledgement
//! leaves within one write, not after the status debounce; and `DivergenceDetected` (Warning) /
//! `DivergenceRepaired` (Normal) Events on the Sled.
//!
//! [`SledReporter::update_now`]: crate::sled::SledReporter::update_now
//!
//! # Invariants
//! - The table changes only to follow VpcRoutes (or to undo a divergence): never because VMMs
//!   come and go on the sled (seed 003: the control plane alone owns the mappings).
//! - A generation is acknowledged only after the table holds it (written to the machine).
//! - A VPC is removed from the table only when the VpcRoutes list, complete, lacks it.
//! - Programming the mappings leaves the forwarding entries alone; only `forward.rs` decides
//!   them.
//!
//! # Assumptions
//! - Each pass is idempotent; the task may stop at any `.await` (the table is the machine's and
//!   stays as it was).
//!
//! # Not responsible for
//! - What the mappings are (the V2P controller, `controllers/src/v2p.rs`).
//! - Forwarding packets (the table's driver); installing a migration's forwarding entries
//!   (the source, `migration/source.rs`) and withdrawing them before a resume
//!   (`vmm/reconcile.rs`).

pub mod forward;
pub mod plan;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use corral_crds::{Reason, V2pAck, VpcRoutes};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::DisplayChain;
use crate::sled::V2pReport;
use plan::{plan, report};
use table::{V2pTable, VpcTables};

/// Runs until `stop`: a pass on every VpcRoutes change and every `check_interval`.
pub async fn run(
    ctx: Arc<Context>,
    table: Arc<dyn V2pTable>,
    check_interval: Duration,
    stop: CancellationToken,
) {
    // What the table holds is known before the list: a restarted agent keeps acknowledging it.
    let held: Vec<V2pAck> = read(&ctx, table.as_ref(), |vpcs| {
        vpcs.iter()
            .map(|(vpc, vpc_table)| V2pAck {
                vpc: vpc.clone(),
                generation: vpc_table.generation,
            })
            .collect()
    })
    .unwrap_or_default();
    ctx.sled.reporter.update_now(|report| {
        report.v2p = Some(V2pReport {
            acks: held,
            converged: false,
            message: "waiting for the list of VpcRoutes".to_string(),
        })
    });
    let (store, writer) = reflector::store::<VpcRoutes>();
    let api: Api<VpcRoutes> = Api::all(ctx.api.client.clone());
    let mut events = watcher(api, watcher::Config::default())
        .backoff(corral_client::backoff::WatchBackoff::default())
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
                        Err(error) => tracing::warn!(sled = %ctx.sled.name, %error, "watching VpcRoutes"),
                    }
                }
            }
            _ = tick.tick() => full = true,
        }
        if listed {
            pass(&ctx, table.as_ref(), &store, full).await;
            full = false;
        }
    }
}

/// What `read` makes of the table as the machine holds it now; `None` (logged) if the table
/// cannot be read: the next pass tries again.
fn read<R>(ctx: &Context, table: &dyn V2pTable, read: impl FnOnce(&VpcTables) -> R) -> Option<R> {
    table
        .read(read)
        .inspect_err(|error| {
            tracing::warn!(sled = %ctx.sled.name, error = %DisplayChain(error), "reading the V2P table");
        })
        .ok()
}

/// One pass: program what differs, report divergence, acknowledge.
async fn pass(ctx: &Context, table: &dyn V2pTable, store: &Store<VpcRoutes>, full: bool) {
    let routes = store.state();
    let Some(planned) = read(ctx, table, |vpcs| plan(vpcs, &routes, true, full)) else {
        return;
    };
    for change in planned.changes {
        if let Err(error) = table.apply(change) {
            tracing::warn!(sled = %ctx.sled.name, %error, "programming the V2P table");
        }
    }
    let Some(report) = read(ctx, table, |vpcs| report(vpcs, &routes)) else {
        return;
    };
    ctx.sled
        .reporter
        .update_now(|wanted| wanted.v2p = Some(report));
    if full {
        forward::check(ctx, table, &routes).await;
    }
    if planned.diverged.is_empty() {
        return;
    }
    let sled = ctx.sled.reporter.sled();
    for divergence in &planned.diverged {
        let found = divergence.differences.join("; ");
        ctx.api
            .recorder
            .warning(
                &sled,
                Reason::DivergenceDetected,
                format!(
                    "the V2P table of VPC {} differs from its VpcRoutes: {found}",
                    divergence.vpc
                ),
            )
            .await;
        ctx.api
            .recorder
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
