//! Writing `Vmm.status`: the one way the agent reports a Vmm, from its journal record. The
//! agent is the only writer of `Vmm.status`; the reconcile and the transfer tasks both report
//! through [`write_status`].
//!
//! # Guarantees
//! - Every write is a PUT to `/status` conditional on the freshest resourceVersion the agent
//!   knows (the watch cache's or the one its own last write returned, see `ledger.rs`), and
//!   carries the record's `stateGeneration`, which is above the API's: a stale cache costs at
//!   most one conflict, never a report that goes backwards.
//! - A conflict rereads the Vmm and writes once more only if the API is still behind the
//!   record (a lower `stateGeneration`) and the Vmm is the same object (same uid).
//! - A Vmm that is gone is not an error: there is nothing left to report to.
//! - Nothing is written once the run knows its sled was fenced; a write the API refuses on
//!   `status.sledEpoch` raises that alarm (`fence.rs`) and is not an error either.
//! - The resourceVersion and status each write returned are kept in the ledger (`written`).
//!
//! # Not responsible for
//! Deciding the status (the plan decides, the record carries it) or the finalizer (the
//! reconcile).

use corral_client::idempotent::{Idempotent, is_conflict};
use corral_crds::condition;
use corral_crds::{ConditionStatus, Reason, Vmm, VmmConditionType, VmmStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use crate::context::Context;
use crate::error::{VmmApiError, api_error};
use crate::fence::refuses_epoch;
use crate::hypervisor::VmmId;
use crate::journal::VmmRecord;
use crate::ledger::Written;

/// The status that reports `record` from this run of the agent (sled epoch `epoch`), keeping
/// the conditions `base` has.
pub fn render_status(
    record: &VmmRecord,
    base: &VmmStatus,
    epoch: u64,
    now: jiff::Timestamp,
) -> VmmStatus {
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
        sled_epoch: epoch,
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

/// Writes `Vmm.status` of `vmm` (whose uid is `uid`) from `record` (see the module docs).
pub async fn write_status(
    vmm: &Vmm,
    uid: &VmmId,
    record: &VmmRecord,
    ctx: &Context,
) -> Result<(), VmmApiError> {
    if ctx.sled.fence.is_raised() {
        return Ok(());
    }
    let api: Api<Vmm> =
        Api::namespaced(ctx.api.client.clone(), &vmm.namespace().unwrap_or_default());
    let name = vmm.name_any();
    let (base, resource_version) = {
        let ledger = ctx.ledger.lock().await;
        let (status, version) = ledger.freshest(vmm, uid);
        (status.clone(), version)
    };
    let mut object = vmm.clone();
    object.metadata.resource_version = Some(resource_version);
    object.status = Some(render_status(
        record,
        &base,
        ctx.sled.epoch,
        corral_client::clock::now(),
    ));
    let stored = match api
        .replace_status(&name, &PostParams::default(), &object)
        .await
        .or_gone()
    {
        Ok(Some(stored)) => stored,
        Ok(None) => return Ok(()),
        Err(error) if refuses_epoch(&error) => {
            ctx.sled.fence.raise(
                ctx.sled.epoch + 1,
                "the API refused a Vmm report of this run's epoch",
            );
            return Ok(());
        }
        // A stale write: read again, and write only if the API is still behind.
        Err(error) if is_conflict(&error) => {
            let Some(fresh) = reread(&api, vmm, uid).await? else {
                return Ok(());
            };
            let fresh_status = fresh.status.clone().unwrap_or_default();
            if fresh_status.state_generation >= record.state_generation {
                return Ok(());
            }
            let mut object = fresh;
            object.status = Some(render_status(
                record,
                &fresh_status,
                ctx.sled.epoch,
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

/// `vmm` as the API holds it now, if it is still the object whose uid is `uid` (`None`: it is
/// gone, or another object took its name). What a conditional write about a Vmm reads again
/// after a conflict.
pub async fn reread(api: &Api<Vmm>, vmm: &Vmm, uid: &VmmId) -> Result<Option<Vmm>, VmmApiError> {
    let fresh = api
        .get_opt(&vmm.name_any())
        .await
        .map_err(api_error(vmm, "reading"))?;
    Ok(fresh.filter(|fresh| fresh.uid().as_deref() == Some(uid.as_str())))
}
