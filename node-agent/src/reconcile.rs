//! `reconcile`: makes one Vmm of the sled true on the machine and in the API, by computing a
//! [`Plan`] and executing it. Called by kube-runtime's applier, at most once at a time per Vmm,
//! for every change of the Vmm, every VMM that ended on its own, every discrepancy the scan
//! finds and every requeue.
//!
//! # Reads and writes
//! - Reads the Vmm from the watch cache, the VMM from the hypervisor, the record from the
//!   [`Ledger`] (the in-memory mirror of the journal), and, for an end of a live migration
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
//! - Every status write is a PUT to `/status` conditional on the freshest resourceVersion the
//!   agent knows (the watch cache's or the one its own last write returned), and carries a
//!   `stateGeneration` above the API's: a stale cache costs at most one conflict, never a
//!   report that goes backwards.
//!
//! # Assumptions
//! - resourceVersions are one increasing integer (Corral's store revision; see
//!   `docs/rack.md`, "Stale caches"), so the fresher of two is the larger.
//! - Cancellation at any `.await` is safe: every step is idempotent and re-derived next time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use corral_client::events::{self, Recorder};
use corral_crds::condition;
use corral_crds::{
    ConditionStatus, Instance, Reason, Resources, VMM_FINALIZER, Vmm, VmmConditionType, VmmStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::hypervisor::{Hypervisor, HypervisorError, VmmId, VmmLaunch};
use crate::journal::{Journal, JournalError, VmmRecord};
use crate::plan::{self, InstanceView, MachineAction, MigrationInput, Plan, PlanInput, VmmView};
use crate::sled::SledReporter;

/// A requeue lands this much after a transition's deadline, so that the VMM has surely moved.
const SETTLE_MARGIN: Duration = Duration::from_millis(10);

/// Why one reconcile failed. The next one starts over.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("hypervisor")]
    Hypervisor(#[from] HypervisorError),
    #[error("journal")]
    Journal(#[from] JournalError),
    #[error("{operation} Vmm {namespace}/{name}")]
    Api {
        operation: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The last status the agent wrote for a Vmm, with the resourceVersion the write returned.
#[derive(Clone, Debug)]
pub struct Written {
    pub resource_version: u64,
    pub status: VmmStatus,
}

/// What the agent knows in memory: the journal's records (mirrored), which VMMs this run has
/// seen on the machine, and the statuses it wrote.
#[derive(Debug, Default)]
pub struct Ledger {
    pub records: HashMap<VmmId, VmmRecord>,
    pub seen: HashSet<VmmId>,
    pub written: HashMap<VmmId, Written>,
}

impl Ledger {
    /// The resources held by accepted Vmms that are not destroyed.
    pub fn allocated(&self) -> Resources {
        self.records
            .values()
            .filter(|r| r.holds)
            .fold(Resources::default(), |sum, r| sum + r.resources)
    }

    /// How many Vmms hold resources.
    pub fn holding(&self) -> u32 {
        self.records.values().filter(|r| r.holds).count() as u32
    }

    /// What the plan needs of `vmm`, with the freshest status the agent knows the API holds.
    pub fn view(&self, vmm: &Vmm, uid: &VmmId) -> VmmView {
        let (status, _) = freshest(vmm, self.written.get(uid));
        VmmView {
            uid: uid.clone(),
            namespace: vmm.namespace().unwrap_or_default(),
            name: vmm.name_any(),
            instance: vmm.spec.instance.clone(),
            image: vmm.spec.image.clone(),
            sled_epoch: vmm.spec.sled_epoch,
            resources: vmm.spec.resources,
            reboot_request: vmm.spec.reboot_request.clone(),
            migrate_from: vmm.spec.migrate_from.clone(),
            deleting: vmm.meta().deletion_timestamp.is_some(),
            has_finalizer: vmm.finalizers().iter().any(|f| f == VMM_FINALIZER),
            reported_state: status.state,
            reported_generation: status.state_generation,
        }
    }
}

/// Everything a reconcile (and the scan) shares, for one agent run.
pub struct Context {
    pub sled_name: String,
    pub epoch: u64,
    pub capacity: Resources,
    pub stop_timeout: Duration,
    pub reconcile_interval: Duration,
    pub client: kube::Client,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub journal: Journal,
    pub ledger: tokio::sync::Mutex<Ledger>,
    pub recorder: Recorder,
    pub sled: SledReporter,
    pub store: Store<Vmm>,
    pub triggers: mpsc::Sender<ObjectRef<Vmm>>,
    /// The live-migration transfers of this agent run.
    pub transfers: crate::migration::Transfers,
}

impl Context {
    /// Asks for a reconcile of the Vmm `record` belongs to. A full queue drops the request:
    /// the next scan finds the same discrepancy.
    pub fn trigger(&self, record: &VmmRecord) {
        let target = ObjectRef::new(&record.name).within(&record.namespace);
        let _ = self.triggers.try_send(target);
    }

    /// Records `record` in the journal and the ledger, and tells the Sled reporter.
    pub async fn record(&self, ledger: &mut Ledger, record: VmmRecord) -> Result<(), JournalError> {
        self.journal.vmm_put(&record).await?;
        ledger.records.insert(record.uid.clone(), record);
        self.report_allocation(ledger);
        Ok(())
    }

    /// Forgets the record of `uid` (journal and memory).
    pub async fn forget(&self, ledger: &mut Ledger, uid: &VmmId) -> Result<(), JournalError> {
        self.journal.vmm_delete(uid).await?;
        ledger.records.remove(uid);
        ledger.seen.remove(uid);
        ledger.written.remove(uid);
        self.report_allocation(ledger);
        Ok(())
    }

    fn report_allocation(&self, ledger: &Ledger) {
        let (allocated, vmms) = (ledger.allocated(), ledger.holding());
        self.sled.update(|report| {
            report.allocated = allocated;
            report.vmms = vmms;
        });
    }

    fn vmms(&self, namespace: &str) -> Api<Vmm> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

/// The status the API holds, as far as the agent knows, and the resourceVersion to write on.
fn freshest<'a>(vmm: &'a Vmm, written: Option<&'a Written>) -> (&'a VmmStatus, String) {
    static EMPTY: std::sync::OnceLock<VmmStatus> = std::sync::OnceLock::new();
    let cached_version = vmm.resource_version().unwrap_or_default();
    let cached = vmm
        .status
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(VmmStatus::default));
    match written {
        Some(written)
            if cached_version
                .parse::<u64>()
                .is_ok_and(|cached| written.resource_version > cached) =>
        {
            (&written.status, written.resource_version.to_string())
        }
        _ => (cached, cached_version),
    }
}

/// The status that reports `record`, keeping the conditions `base` has.
pub fn render_status(record: &VmmRecord, base: &VmmStatus, now: jiff::Timestamp) -> VmmStatus {
    let mut conditions = base.conditions.clone();
    if record.diverged {
        condition::set(
            &mut conditions,
            VmmConditionType::Diverged,
            ConditionStatus::True,
            record.reason.unwrap_or(Reason::DivergenceDetected),
            record.message.clone(),
            now,
        );
    }
    VmmStatus {
        state: Some(record.state),
        state_generation: record.state_generation,
        reason: record.reason,
        message: record.message.clone(),
        booted_at: record.booted_at.map(Time),
        handled_reboot_request: record.handled_reboot_request.clone(),
        dirty_bytes_per_second: record.dirty_bytes_per_second,
        migration: record
            .migration
            .as_ref()
            .map(|m| m.status.clone())
            .or_else(|| base.migration.clone()),
        conditions,
    }
}

/// Reconciles one Vmm (see the module docs).
pub async fn reconcile(vmm: Arc<Vmm>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let Some(uid) = vmm.uid().map(VmmId) else {
        return Ok(Action::await_change());
    };
    if vmm.spec.sled != ctx.sled_name {
        return Ok(Action::await_change());
    }
    let machine = ctx.hypervisor.inspect(&uid).await?;
    let awaits_verdict = {
        let ledger = ctx.ledger.lock().await;
        ledger
            .records
            .get(&uid)
            .is_some_and(crate::plan_migration::awaits_verdict)
    };
    let instance = if awaits_verdict && vmm.meta().deletion_timestamp.is_none() {
        let instances: Api<Instance> =
            Api::namespaced(ctx.client.clone(), &vmm.namespace().unwrap_or_default());
        instances
            .get_opt(&vmm.spec.instance)
            .await
            .map_err(api_error(&vmm, "reading the Instance of"))?
            .map(|instance| {
                let status = instance.status.unwrap_or_default();
                InstanceView {
                    active_vmm: status.active_vmm,
                    target_vmm: status.target_vmm,
                }
            })
    } else {
        None
    };
    let plan = {
        let mut ledger = ctx.ledger.lock().await;
        if machine.is_some() {
            ledger.seen.insert(uid.clone());
        }
        let view = ledger.view(&vmm, &uid);
        let input = PlanInput {
            vmm: &view,
            record: ledger.records.get(&uid),
            machine: machine.as_ref(),
            seen_this_run: ledger.seen.contains(&uid),
            epoch: ctx.epoch,
            free: ctx.capacity.saturating_sub(&ledger.allocated()),
            now: corral_client::clock::now(),
            stop_timeout: ctx.stop_timeout,
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
        None => Action::requeue(ctx.reconcile_interval),
    })
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
            MachineAction::Resume => ctx.hypervisor.resume(uid).await?,
        }
        let mut ledger = ctx.ledger.lock().await;
        if matches!(
            action,
            MachineAction::Create | MachineAction::CreateReceiving
        ) {
            ledger.seen.insert(uid.clone());
        }
        if let Some(next) = plan.record.clone() {
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
            ctx.transfers.start_target(ctx, vmm, &record);
        }
    }
    for event in &plan.events {
        ctx.recorder
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

fn api_error(vmm: &Vmm, operation: &'static str) -> impl FnOnce(kube::Error) -> ReconcileError {
    let namespace = vmm.namespace().unwrap_or_default();
    let name = vmm.name_any();
    move |source| ReconcileError::Api {
        operation,
        namespace,
        name,
        source,
    }
}

fn is_status(error: &kube::Error, codes: &[u16]) -> bool {
    matches!(error, kube::Error::Api(status) if codes.contains(&status.code))
}

/// Writes `Vmm.status` from `record`, conditional on the freshest resourceVersion. A conflict
/// rereads the Vmm and tries once more if the API is still behind.
pub(crate) async fn write_status(
    vmm: &Vmm,
    uid: &VmmId,
    record: &VmmRecord,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let api = ctx.vmms(&vmm.namespace().unwrap_or_default());
    let name = vmm.name_any();
    let (base, resource_version) = {
        let ledger = ctx.ledger.lock().await;
        let (status, version) = freshest(vmm, ledger.written.get(uid));
        (status.clone(), version)
    };
    let mut object = vmm.clone();
    object.metadata.resource_version = Some(resource_version);
    object.status = Some(render_status(record, &base, corral_client::clock::now()));
    let stored = match api
        .replace_status(&name, &PostParams::default(), &object)
        .await
    {
        Ok(stored) => stored,
        Err(error) if is_status(&error, &[404]) => return Ok(()),
        Err(error) if is_status(&error, &[409]) => {
            let Some(fresh) = api
                .get_opt(&name)
                .await
                .map_err(api_error(vmm, "reading"))?
            else {
                return Ok(());
            };
            let fresh_status = fresh.status.clone().unwrap_or_default();
            if fresh.uid() != Some(uid.0.clone())
                || fresh_status.state_generation >= record.state_generation
            {
                return Ok(());
            }
            let mut object = fresh;
            object.status = Some(render_status(
                record,
                &fresh_status,
                corral_client::clock::now(),
            ));
            api.replace_status(&name, &PostParams::default(), &object)
                .await
                .map_err(api_error(vmm, "writing the status of"))?
        }
        Err(error) => return Err(api_error(vmm, "writing the status of")(error)),
    };
    if let Some(version) = stored
        .resource_version()
        .and_then(|v| v.parse::<u64>().ok())
    {
        ctx.ledger.lock().await.written.insert(
            uid.clone(),
            Written {
                resource_version: version,
                status: stored.status.unwrap_or_default(),
            },
        );
    }
    Ok(())
}

/// Removes exactly the agent's finalizer: a JSON patch that tests the entry before removing
/// it, so a stale index fails instead of removing someone else's. A failed test rereads once.
async fn remove_finalizer(vmm: &Vmm, uid: &VmmId, ctx: &Context) -> Result<(), ReconcileError> {
    let api = ctx.vmms(&vmm.namespace().unwrap_or_default());
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
        {
            Ok(_) => return Ok(()),
            Err(error) if is_status(&error, &[404]) => return Ok(()),
            Err(error) if is_status(&error, &[409, 422]) && attempt == 0 => {
                let Some(fresh) = api
                    .get_opt(&name)
                    .await
                    .map_err(api_error(vmm, "reading"))?
                else {
                    return Ok(());
                };
                if fresh.uid() != Some(uid.0.clone()) {
                    return Ok(());
                }
                finalizers = fresh.finalizers().to_vec();
            }
            Err(error) => return Err(api_error(vmm, "removing the finalizer of")(error)),
        }
    }
    Ok(())
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

/// Displays an error with its sources, for logs.
pub struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
