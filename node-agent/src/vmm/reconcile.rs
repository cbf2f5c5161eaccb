//! `reconcile`: makes one Vmm of the sled true on the machine and in the API, by computing a
//! [`Plan`] and executing it. Called by kube-runtime's applier, at most once at a time per Vmm,
//! for every change of the Vmm, every VMM that ended on its own, every discrepancy the scan
//! finds and every requeue.
//!
//! # Reads and writes
//! - Reads the Vmm from the watch cache, the VMM from the hypervisor, the record from the
//!   [`Ledger`](crate::ledger::Ledger) (the in-memory mirror of the journal), and, for an end of a live migration
//!   waiting for its verdict, the Instance (a GET, never a cache).
//! - Writes the journal, `Vmm.status` (the agent is its only writer), Events about the Vmm, and
//!   removes the `corral.dev/node-agent` finalizer.
//!
//! # Invariants
//! - Order of effects: hypervisor command, then journal, then status, then events, then the
//!   finalizer, then forgetting the record. A crash between two steps leaves a state the next
//!   reconcile reads correctly (see `plan`'s definitions): the journal never claims a VMM the
//!   machine was not asked to run, and the finalizer never goes before the VMM.
//! - Admission is atomic: the free capacity a new Vmm is checked against and its journal record
//!   are computed and written under one hold of the ledger lock.
//! - Status is written only through `status.rs` (conditional, never backwards).
//! - Nothing is done once the run knows its sled was fenced; a Vmm placed at an epoch above
//!   the run's is how it may learn it (`fence.rs`).
//!
//! # Assumptions
//! - Cancellation at any `.await` is safe: every step is idempotent and re-derived next time.

use std::sync::Arc;
use std::time::Duration;

use corral_client::events;
use corral_client::idempotent::{Idempotent, is_conflict};
use corral_crds::{Instance, MigrationRole, VMM_FINALIZER, Vmm};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::context::Context;
use crate::error::{DisplayChain, VmmApiError, api_error};
use crate::hypervisor::{HypervisorError, VmmId, VmmLaunch};
use crate::journal::{JournalError, VmmRecord};
use crate::migration;
use crate::status::{reread, write_status};
use crate::vmm::decision::{InstanceView, MachineAction, MigrationInput, Plan, PlanInput, VmmView};
use crate::vmm::plan;

/// A requeue lands this much after a transition's deadline, so that the VMM has surely moved.
const SETTLE_MARGIN: Duration = Duration::from_millis(10);

/// Why one reconcile failed. The next one starts over.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("hypervisor")]
    Hypervisor(#[from] HypervisorError),
    #[error("journal")]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Api(#[from] VmmApiError),
    #[error("withdrawing forwarding entries")]
    V2p(#[from] crate::v2p::table::V2pTableError),
}

/// Reconciles one Vmm (see the module docs).
pub async fn reconcile(vmm: Arc<Vmm>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let Some(uid) = vmm.uid().map(VmmId) else {
        return Ok(Action::await_change());
    };
    if vmm.spec.sled != ctx.sled.name || ctx.sled.fence.is_raised() {
        return Ok(Action::await_change());
    }
    if vmm.spec.sled_epoch > ctx.sled.epoch {
        // Placed at an epoch this run never had: the sled's epoch rose behind it (a fence).
        ctx.sled
            .fence
            .raise(vmm.spec.sled_epoch, "a Vmm names an epoch above this run's");
        return Ok(Action::await_change());
    }
    let instance = read_verdict(&vmm, &uid, &ctx).await?;
    // After the verdict's GET, which may take a while: a machine read before it could miss a
    // pause the source's transfer made meanwhile, and an abort would then resume nothing.
    let machine = ctx.hypervisor.inspect(&uid).await?;
    let plan = {
        let mut ledger = ctx.ledger.lock().await;
        if machine.is_some() {
            ledger.seen.insert(uid.clone());
        }
        let view = VmmView::new(&vmm, &uid, ledger.freshest(&vmm, &uid).0);
        let input = PlanInput {
            vmm: &view,
            record: ledger.records.get(&uid),
            machine: machine.as_ref(),
            seen_this_run: ledger.seen.contains(&uid),
            epoch: ctx.sled.epoch,
            free: ctx.sled.capacity.saturating_sub(&ledger.allocated()),
            now: corral_client::clock::now(),
            stop_timeout: ctx.intervals.stop_timeout,
            migration: MigrationInput {
                transfer_running: ctx.transfers.is_running(&uid),
                instance,
            },
        };
        let plan = plan::plan(&input);
        tracing::debug!(vmm = %vmm.name_any(), ?plan, "planned");
        if plan.machine.is_none()
            && let Some(next) = plan.record.clone()
        {
            // Admission happens here, under the same hold as the free capacity it used.
            ctx.record(&mut ledger, next).await?;
        }
        plan
    };
    apply(&vmm, &uid, &plan, &ctx).await?;
    Ok(match plan.requeue {
        Some(after) => Action::requeue(after + SETTLE_MARGIN),
        None => Action::requeue(ctx.intervals.reconcile),
    })
}

/// The Instance's verdict, read with a GET, when the record of `uid` is an end of a live
/// migration waiting for it (`None` otherwise, or when the Instance is gone).
async fn read_verdict(
    vmm: &Vmm,
    uid: &VmmId,
    ctx: &Context,
) -> Result<Option<InstanceView>, ReconcileError> {
    let record = {
        let ledger = ctx.ledger.lock().await;
        ledger
            .records
            .get(uid)
            .filter(|r| migration::plan::awaits_verdict(r))
            .cloned()
    };
    let Some(record) = record else {
        return Ok(None);
    };
    if vmm.meta().deletion_timestamp.is_some() {
        return Ok(None);
    }
    let instances: Api<Instance> =
        Api::namespaced(ctx.api.client.clone(), &vmm.namespace().unwrap_or_default());
    let Some(mut instance) = instances
        .get_opt(&vmm.spec.instance)
        .await
        .map_err(api_error(vmm, "reading the Instance of"))?
    else {
        return Ok(None);
    };
    let view = |instance: &Instance| {
        let status = instance.status.clone().unwrap_or_default();
        InstanceView {
            active_vmm: status.active_vmm,
            target_vmm: status.target_vmm,
        }
    };
    let given = |instance: &Instance| migration::plan::verdict_given(&record, &view(instance));
    if !given(&instance)
        && let Some(decided) =
            first_version_where(&instances, &instance, VERDICT_WATCH, given).await
    {
        // The guest is paused while this waits: the verdict is acted on as it is written.
        instance = decided;
    }
    Ok(Some(view(&instance)))
}

/// How long a migration end waiting for its verdict watches its Instance for it in one
/// reconcile (the plan looks again at once after).
const VERDICT_WATCH: Duration = Duration::from_millis(500);

/// The first version of `instance` written after it (a watch from its resourceVersion) for
/// which `wanted` holds, if one is written within `bound`; other versions (the Instance changes
/// for other reasons too) are passed over. `None` on a timeout or any error: the caller reads
/// it again later.
async fn first_version_where(
    instances: &Api<Instance>,
    instance: &Instance,
    bound: Duration,
    wanted: impl Fn(&Instance) -> bool,
) -> Option<Instance> {
    let version = instance.resource_version()?;
    let params = WatchParams::default()
        .fields(&format!("metadata.name={}", instance.name_any()))
        .timeout(bound.as_secs().max(1) as u32);
    let next = async {
        let stream = instances.watch(&params, &version).await.ok()?;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event.ok()? {
                WatchEvent::Added(changed) | WatchEvent::Modified(changed) => {
                    if wanted(&changed) {
                        return Some(changed);
                    }
                }
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Deleted(_) | WatchEvent::Error(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(bound, next).await.ok().flatten()
}

/// Executes the parts of `plan` that `reconcile` did not already do under the lock.
async fn apply(
    vmm: &Vmm,
    uid: &VmmId,
    plan: &Plan,
    ctx: &Arc<Context>,
) -> Result<(), ReconcileError> {
    if plan.cancel_transfer {
        ctx.transfers.cancel(uid);
    }
    if let Some(action) = plan.machine {
        match action {
            MachineAction::Create | MachineAction::CreateReceiving => {
                let launch = VmmLaunch {
                    id: uid.clone(),
                    namespace: vmm.namespace().unwrap_or_default(),
                    name: vmm.name_any(),
                    instance: vmm.spec.instance.clone(),
                    resources: vmm.spec.resources,
                    image: vmm.spec.image.clone(),
                    dirty_rate: vmm
                        .annotations()
                        .get(corral_crds::DIRTY_RATE_ANNOTATION)
                        .and_then(|rate| rate.parse().ok()),
                };
                if action == MachineAction::Create {
                    ctx.hypervisor.create(&launch).await?;
                } else {
                    ctx.hypervisor.create_receiving(&launch).await?;
                }
            }
            MachineAction::Stop => ctx.hypervisor.stop(uid).await?,
            MachineAction::Destroy => ctx.hypervisor.destroy(uid).await?,
            MachineAction::Reboot => ctx.hypervisor.reboot(uid).await?,
            MachineAction::Pause => ctx.hypervisor.pause(uid).await?,
            MachineAction::Resume => {
                // A guest that runs here again has no forwarding entry pointing away.
                let name = vmm.name_any();
                let namespace = vmm.namespace().unwrap_or_default();
                crate::v2p::forward::withdraw(ctx.v2p.as_ref(), &namespace, &name)?;
                ctx.hypervisor.resume(uid).await?
            }
        }
        let mut ledger = ctx.ledger.lock().await;
        if matches!(
            action,
            MachineAction::Create | MachineAction::CreateReceiving
        ) {
            ledger.seen.insert(uid.clone());
        }
        if let Some(mut next) = plan.record.clone() {
            if action == MachineAction::Resume {
                stamp_resumed(&mut next, &ctx.sled.name);
            }
            ctx.record(&mut ledger, next).await?;
        }
    }
    if plan.report {
        let record = ctx.ledger.lock().await.records.get(uid).cloned();
        if let Some(record) = record {
            write_status(vmm, uid, &record, ctx).await?;
        }
    }
    if plan.start_transfer {
        let record = ctx.ledger.lock().await.records.get(uid).cloned();
        if let Some(record) = record {
            migration::start_target(ctx, vmm, &record);
        }
    }
    for event in &plan.events {
        ctx.api
            .recorder
            .publish(
                events::reference(vmm),
                event.type_,
                event.reason,
                event.message.clone(),
            )
            .await;
    }
    if plan.remove_finalizer {
        remove_finalizer(vmm, uid, ctx).await?;
    }
    if plan.forget {
        let mut ledger = ctx.ledger.lock().await;
        ctx.forget(&mut ledger, uid).await?;
    }
    Ok(())
}

/// A migration end whose guest runs again (the target after the switch, the source after an
/// abort) records when: now, just after the machine resumed it. The target's also records the
/// downtime, from the source's pause, in the sled's metrics.
fn stamp_resumed(record: &mut VmmRecord, sled: &str) {
    if let Some(migration) = record.migration.as_mut()
        && migration.status.timings.resumed_at.is_none()
    {
        let now = corral_client::clock::now();
        migration.status.timings.resumed_at = Some(MicroTime(now));
        if migration.status.role == MigrationRole::Target
            && let Some(paused) = &migration.status.timings.paused_at
            && let Ok(downtime) = Duration::try_from(now.duration_since(paused.0))
        {
            crate::metrics::migration_downtime(sled, downtime);
        }
    }
}

/// Removes exactly the agent's finalizer: a JSON patch that tests the entry before removing
/// it, so a stale index fails instead of removing someone else's. A failed test (or a stale
/// write) rereads once; a Vmm already gone is done.
async fn remove_finalizer(vmm: &Vmm, uid: &VmmId, ctx: &Context) -> Result<(), ReconcileError> {
    let api: Api<Vmm> =
        Api::namespaced(ctx.api.client.clone(), &vmm.namespace().unwrap_or_default());
    let name = vmm.name_any();
    let mut finalizers = vmm.finalizers().to_vec();
    for attempt in 0..2 {
        let Some(index) = finalizers.iter().position(|f| f == VMM_FINALIZER) else {
            return Ok(());
        };
        let path = format!("/metadata/finalizers/{index}");
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            { "op": "test", "path": path, "value": VMM_FINALIZER },
            { "op": "remove", "path": path },
        ]))
        .expect("a well-formed JSON patch");
        match api
            .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .or_gone()
        {
            Ok(_) => return Ok(()),
            Err(error) if (is_conflict(&error) || is_failed_test(&error)) && attempt == 0 => {
                let Some(fresh) = reread(&api, vmm, uid).await? else {
                    return Ok(());
                };
                finalizers = fresh.finalizers().to_vec();
            }
            Err(error) => return Err(api_error(vmm, "removing the finalizer of")(error).into()),
        }
    }
    Ok(())
}

/// Whether `error` is the API refusing a JSON patch whose `test` operation failed (422).
fn is_failed_test(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 422)
}

/// What to do after a failed reconcile: start over soon; the plan is recomputed from scratch.
pub fn error_policy(vmm: Arc<Vmm>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    match error {
        // The agent is about to be stopped with its machine.
        ReconcileError::Hypervisor(HypervisorError::PoweredOff) => Action::await_change(),
        _ => {
            tracing::warn!(vmm = %vmm.name_any(), error = %DisplayChain(error), "reconcile failed");
            Action::requeue(Duration::from_secs(1))
        }
    }
}
