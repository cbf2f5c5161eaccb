//! What a transfer task records about its Vmm: its progress (in memory, reported at most once
//! per [`PROGRESS_INTERVAL`]) and the decisions it takes itself (journaled, then reported).
//!
//! # Invariants
//! - A task writes a journal record only while the record is still the migration end it
//!   started from (same role, phase `Transferring`): a deletion or a verdict decided by the
//!   plan is never overwritten ([`finish`]).
//! - A report is a status write like any other (`status.rs`): never backwards, and a failure
//!   is only logged (the reconcile reports again).

use std::sync::Arc;
use std::time::Duration;

use corral_crds::{MigrationRole, TransferProgress, Vmm, VmmMigrationPhase, VmmState};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use crate::context::Context;
use crate::error::DisplayChain;
use crate::hypervisor::VmmId;
use crate::journal::{JournalError, MigrationRecord, VmmRecord};
use crate::status::write_status;

/// At most one progress report (status write, stream event) per this long.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Records the next decision about the migration end `uid` (journal, then status), if its
/// record is still that end of the migration in phase `Transferring`. Returns whether it did.
pub async fn finish(
    ctx: &Context,
    uid: &VmmId,
    role: MigrationRole,
    next: impl FnOnce(&VmmRecord, &MigrationRecord) -> VmmRecord,
) -> Result<bool, JournalError> {
    let done = finish_then(ctx, uid, role, next, || ()).await?;
    Ok(done.is_some())
}

/// [`finish`], and `then` right after the journal write, under the same ledger lock: nothing
/// that reads the ledger (the reconcile, the V2P task) sees the new record before `then` is
/// done. Returns what `then` returned, if the decision was recorded.
pub async fn finish_then<T>(
    ctx: &Context,
    uid: &VmmId,
    role: MigrationRole,
    next: impl FnOnce(&VmmRecord, &MigrationRecord) -> VmmRecord,
    then: impl FnOnce() -> T,
) -> Result<Option<T>, JournalError> {
    let (record, done) = {
        let mut ledger = ctx.ledger.lock().await;
        let Some(previous) = ledger.records.get(uid) else {
            return Ok(None);
        };
        let Some(migration) = previous.migration.as_ref() else {
            return Ok(None);
        };
        let current = previous.state == VmmState::Migrating
            && migration.status.role == role
            && migration.status.phase == VmmMigrationPhase::Transferring;
        if !current {
            return Ok(None);
        }
        let record = next(previous, migration);
        ctx.record(&mut ledger, record.clone()).await?;
        (record, then())
    };
    report(ctx, &record).await;
    ctx.trigger(&record);
    Ok(Some(done))
}

/// Writes the status of `record`'s Vmm now (a failure is logged; the reconcile reports again).
pub async fn report(ctx: &Context, record: &VmmRecord) {
    let target = ObjectRef::<Vmm>::new(&record.name).within(&record.namespace);
    let Some(vmm) = ctx.api.vmms.get(&target) else {
        return;
    };
    if vmm.uid().as_deref() != Some(record.uid.as_str()) {
        return;
    }
    if let Err(error) = write_status(&vmm, &record.uid, record, ctx).await {
        tracing::debug!(vmm = %record.name, error = %DisplayChain(&error), "reporting transfer progress");
    }
}

/// Sets the progress of `uid`'s migration end in memory and reports it.
pub async fn progress(ctx: &Context, uid: &VmmId, progress: &TransferProgress) {
    let record = {
        let mut ledger = ctx.ledger.lock().await;
        let Some(record) = ledger.records.get_mut(uid) else {
            return;
        };
        let Some(migration) = record.migration.as_mut() else {
            return;
        };
        migration.status.progress = progress.clone();
        record.clone()
    };
    report(ctx, &record).await;
}

/// What a transfer task does once it ends: the Vmm of `record` is reconciled (the plan then
/// sees that no transfer runs for it).
pub fn reconcile_when_ended(
    ctx: &Arc<Context>,
    record: &VmmRecord,
) -> impl FnOnce() + Send + 'static {
    let ctx = ctx.clone();
    let record = record.clone();
    move || ctx.trigger(&record)
}

/// Throttles progress reports to one per [`PROGRESS_INTERVAL`].
#[derive(Default)]
pub struct Throttle(Option<Instant>);

impl Throttle {
    /// Whether a report is due now (and if so, the next one is an interval away).
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.0.is_some_and(|last| now < last + PROGRESS_INTERVAL) {
            return false;
        }
        self.0 = Some(now);
        true
    }
}
