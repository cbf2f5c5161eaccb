//! The periodic divergence scan: compares what the machine runs with what the API assigns the
//! sled, as a whole, every `scan_interval` (and at once when the hypervisor announces a VMM it
//! cannot place, or when its announcements were lost).
//!
//! # Definitions
//! - A VMM is *unassigned* if (and only if) it runs on the machine and either the journal has
//!   no record of it, or the watch cache (once it has listed) has no Vmm with its uid. This is
//!   the table's "a VMM that no Vmm assigns to the sled", and also what a restarted agent finds
//!   of Vmms deleted while it was down ("on start, destroy local VMMs the API no longer
//!   assigns").
//!
//! # What it does
//! - Unassigned VMMs: sets the Sled's `Diverged=True` (reason `UnknownVmm`) and lists them in
//!   `status.unknownVmms`, and waits for that to be written, records `DivergenceDetected` on the Sled (and on the Instance the VMM
//!   claims to be, if it exists), destroys them, forgets their records, then sets
//!   `Diverged=False` (reason `DivergenceRepaired`), empties `unknownVmms` and records
//!   `DivergenceRepaired`.
//! - A record whose Vmm is gone from the API and whose VMM is gone from the machine is
//!   forgotten.
//! - Every other recorded Vmm whose `plan` is not a no-op (a VMM killed, ended, finished
//!   booting...) is handed to `reconcile`; the scan itself never writes a Vmm.
//!
//! # Invariants
//! - A VMM is destroyed as unassigned only if it was listed *after* the journal was found not
//!   to know it. The agent journals a Vmm before it creates its VMM and destroys a VMM before
//!   it forgets the record, so a VMM seen by that second listing cannot be one the agent is
//!   creating or tearing down concurrently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use corral_client::events::{self, EventType};
use corral_crds::{ConditionStatus, Instance, Reason, UnknownVmmReport, Vmm};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::DisplayChain;
use crate::hypervisor::{HypervisorError, VmmId, VmmInfo};
use crate::journal::JournalError;
use crate::sled::Divergence;
use crate::vmm::decision::{MigrationInput, PlanInput, VmmView};
use crate::vmm::plan;

/// How long the scan waits for `Diverged=True` to reach the API before it repairs.
const FLUSH_BOUND: Duration = Duration::from_secs(5);

/// Why one scan failed. The next one starts over.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("listing or destroying VMMs")]
    Hypervisor(#[from] HypervisorError),
    #[error("forgetting a record")]
    Journal(#[from] JournalError),
}

/// What one scan found, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    pub unassigned_destroyed: usize,
    pub records_forgotten: usize,
    pub reconciles_triggered: usize,
}

/// Runs scans until `shutdown`: the first once the watch cache has listed (`listed` turns
/// true), then every `interval` or when `now` is notified.
pub async fn run(
    ctx: Arc<Context>,
    interval: Duration,
    mut listed: watch::Receiver<bool>,
    now: Arc<Notify>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        ready = listed.wait_for(|listed| *listed) => if ready.is_err() { return },
    }
    loop {
        match scan(&ctx).await {
            Ok(outcome) if outcome != ScanOutcome::default() => {
                tracing::info!(sled = %ctx.sled.name, ?outcome, "scan");
            }
            Ok(_) => {}
            Err(ScanError::Hypervisor(HypervisorError::PoweredOff)) => {}
            Err(error) => {
                tracing::warn!(sled = %ctx.sled.name, error = %DisplayChain(&error), "scan failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = now.notified() => {}
        }
    }
}

/// Is the Vmm a record belongs to still in the (listed) watch cache?
fn assigned(ctx: &Context, namespace: &str, name: &str, uid: &VmmId) -> Option<Arc<Vmm>> {
    ctx.api
        .vmms
        .get(&ObjectRef::new(name).within(namespace))
        .filter(|vmm| vmm.uid().as_deref() == Some(uid.as_str()))
}

/// Every VMM on the machine, by id.
async fn list_machine(ctx: &Context) -> Result<HashMap<VmmId, VmmInfo>, ScanError> {
    let listed = ctx.hypervisor.list().await?;
    crate::metrics::vmms(&ctx.sled.name, &listed);
    Ok(listed
        .into_iter()
        .map(|info| (info.launch.id.clone(), info))
        .collect())
}

/// One scan (see the module docs).
pub async fn scan(ctx: &Context) -> Result<ScanOutcome, ScanError> {
    let mut outcome = ScanOutcome::default();
    let listed = list_machine(ctx).await?;
    let mut candidates = Vec::new();
    {
        let mut ledger = ctx.ledger.lock().await;
        for id in listed.keys() {
            if ledger.records.contains_key(id) {
                ledger.seen.insert(id.clone());
            }
        }
        let now = corral_client::clock::now();
        let free = ctx.sled.capacity.saturating_sub(&ledger.allocated());
        let mut forgotten = Vec::new();
        for info in listed.values() {
            if !ledger.records.contains_key(&info.launch.id) {
                candidates.push(info.launch.id.clone());
            }
        }
        for record in ledger.records.values() {
            let machine = listed.get(&record.uid);
            let Some(vmm) = assigned(ctx, &record.namespace, &record.name, &record.uid) else {
                match machine {
                    Some(_) => candidates.push(record.uid.clone()),
                    None => forgotten.push(record.uid.clone()),
                }
                continue;
            };
            let view = VmmView::new(&vmm, &record.uid, ledger.freshest(&vmm, &record.uid).0);
            let input = PlanInput {
                vmm: &view,
                record: Some(record),
                machine,
                seen_this_run: ledger.seen.contains(&record.uid),
                epoch: ctx.sled.epoch,
                free,
                now,
                stop_timeout: ctx.intervals.stop_timeout,
                migration: MigrationInput {
                    transfer_running: ctx.transfers.is_running(&record.uid),
                    instance: None,
                },
            };
            if !plan::plan(&input).is_noop() {
                ctx.trigger(record);
                outcome.reconciles_triggered += 1;
            }
        }
        for uid in forgotten {
            ctx.forget(&mut ledger, &uid).await?;
            outcome.records_forgotten += 1;
        }
    }
    if candidates.is_empty() {
        return Ok(outcome);
    }
    // Confirm with a second listing, after the journal was consulted (see the invariants).
    let relisted = list_machine(ctx).await?;
    let unassigned: Vec<VmmInfo> = candidates
        .iter()
        .filter_map(|id| relisted.get(id).cloned())
        .collect();
    if !unassigned.is_empty() {
        repair(ctx, &unassigned).await?;
        outcome.unassigned_destroyed = unassigned.len();
    }
    Ok(outcome)
}

/// Reports, destroys and forgets VMMs no Vmm assigns to the sled.
async fn repair(ctx: &Context, unassigned: &[VmmInfo]) -> Result<(), ScanError> {
    let describe = |info: &VmmInfo| {
        let launch = &info.launch;
        if launch.instance.is_empty() {
            format!("VMM {}", launch.id)
        } else {
            format!(
                "VMM {} (claiming instance {}/{})",
                launch.id, launch.namespace, launch.instance
            )
        }
    };
    let names: Vec<String> = unassigned.iter().map(describe).collect();
    let message = format!(
        "{} running on the sled but assigned by no Vmm",
        names.join(", ")
    );
    tracing::warn!(sled = %ctx.sled.name, %message, "divergence");
    let reports: Vec<UnknownVmmReport> = unassigned
        .iter()
        .map(|info| {
            let launch = &info.launch;
            let claims = !launch.instance.is_empty() && !launch.namespace.is_empty();
            UnknownVmmReport {
                id: launch.id.to_string(),
                namespace: claims.then(|| launch.namespace.clone()),
                instance: claims.then(|| launch.instance.clone()),
            }
        })
        .collect();
    ctx.sled.reporter.update(|report| {
        report.diverged = Divergence {
            status: ConditionStatus::True,
            reason: Reason::UnknownVmm,
            message: message.clone(),
        };
        report.unknown = reports;
    });
    ctx.sled.reporter.flush(FLUSH_BOUND).await;
    let sled = events::reference(&ctx.sled.reporter.sled());
    ctx.api
        .recorder
        .publish(
            sled.clone(),
            EventType::Warning,
            Reason::DivergenceDetected,
            message.clone(),
        )
        .await;
    for info in unassigned {
        let launch = &info.launch;
        if launch.instance.is_empty() || launch.namespace.is_empty() {
            continue;
        }
        let instances: Api<Instance> = Api::namespaced(ctx.api.client.clone(), &launch.namespace);
        if let Ok(Some(instance)) = instances.get_opt(&launch.instance).await {
            ctx.api
                .recorder
                .warning(
                    &instance,
                    Reason::DivergenceDetected,
                    format!(
                        "{} runs on sled {} but is not this instance's VMM",
                        describe(info),
                        ctx.sled.name
                    ),
                )
                .await;
        }
    }
    for info in unassigned {
        ctx.hypervisor.destroy(&info.launch.id).await?;
        let mut ledger = ctx.ledger.lock().await;
        if ledger.records.contains_key(&info.launch.id) {
            ctx.forget(&mut ledger, &info.launch.id).await?;
        }
    }
    let repaired = format!("destroyed {}", names.join(", "));
    ctx.sled.reporter.update(|report| {
        report.diverged = Divergence {
            status: ConditionStatus::False,
            reason: Reason::DivergenceRepaired,
            message: repaired.clone(),
        };
        report.unknown.clear();
    });
    ctx.api
        .recorder
        .publish(
            sled,
            EventType::Normal,
            Reason::DivergenceRepaired,
            repaired,
        )
        .await;
    Ok(())
}

/// Forwards the hypervisor's announcements: a VMM the journal knows gets a reconcile, anything
/// else (or lost announcements) a scan.
pub async fn forward_changes(
    ctx: Arc<Context>,
    mut changes: tokio::sync::broadcast::Receiver<VmmId>,
    scan_now: Arc<Notify>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = changes.recv() => received,
        };
        match received {
            Ok(id) => {
                let record = ctx.ledger.lock().await.records.get(&id).cloned();
                match record {
                    Some(record) => ctx.trigger(&record),
                    None => scan_now.notify_one(),
                }
            }
            Err(RecvError::Lagged(_)) => scan_now.notify_one(),
            Err(RecvError::Closed) => return,
        }
    }
}
