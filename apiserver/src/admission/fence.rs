//! Fence tokens: the API server refuses what an ended life of a sled writes.
//!
//! `Sled.status.epoch` is a fence token. It never goes down; it rises on every boot of the sled
//! (its node-agent) and on every fence (the sled-health controller, once the sled is proven
//! unable to run anything). A node-agent that was cut off and fenced may come back and keep
//! writing as if nothing happened, and a request may be delayed in the network past the fence.
//! Every write passes the API server, so the token is checked here, as storage checks a fencing
//! token: not a courtesy of the writer.
//!
//! Definitions:
//! - A Sled write *lowers the epoch* if (and only if) the `status.epoch` it would store is below
//!   the stored one (a missing epoch is 0: erasing the token lowers it).
//! - A Vmm status write is *a report of an ended life* if (and only if) the `status.sledEpoch`
//!   it would store is present and non-zero, the Sled its `spec.sled` names exists, and that
//!   Sled's `status.epoch` is higher.
//!
//! The rules: [`SledEpochNeverFalls`] refuses every Sled write that lowers the epoch (which
//! also refuses a fenced agent's V2P acknowledgements: they ride in the same status);
//! [`VmmReportFromCurrentEpoch`] refuses every report of an ended life. Both answer 409
//! `Conflict` with `details.causes[0].field` naming the field (`status.epoch`,
//! `status.sledEpoch`), which is how a node-agent recognises that it was fenced.
//!
//! Reads: the written object and the stored one; for a Vmm status write, one store read of the
//! Sled it names. Writes: nothing (admission is pure refusal).
//!
//! # Invariants
//!
//! - The stored `status.epoch` of a Sled never goes down, whoever writes it: the check is made
//!   against the object the store write is conditional on, so no write slips in between.
//! - No Vmm status is stored that carries an agent's epoch below its Sled's current epoch as
//!   that Sled was read during the write.
//!
//! # Assumptions
//!
//! - A Vmm status with `sledEpoch` 0 is not a node-agent's report (tests and operators write
//!   such; every agent run reports its epoch, which is at least 1): it is not checked.
//! - A Vmm whose Sled does not exist has no fence token to be checked against; a write to it is
//!   not checked.
//! - The race "the rule reads epoch N, a fence raises it to N+1, the write lands" is benign.
//!   The read of the Sled is not inside the Vmm write's compare-and-swap, so such a report may
//!   be stored. But a fenced sled's Vmms are released, and their status no longer decides
//!   anything: the instance controller ends every Vmm whose sled's epoch rose past its
//!   `spec.sledEpoch`, whatever its status says (`Vmm::outlived_by`). The rule is there to stop
//!   the agent of an ended life from being told its writes still count, and to keep the API's
//!   history honest after the fence has been seen; the fence itself does not depend on it.
//! - Only main-resource writes change a Vmm's spec and metadata (finalizer removal, deletion);
//!   they are not checked, so releasing a fenced sled's Vmms is never refused. A writer other
//!   than the node-agent that must write a released Vmm's status sets `sledEpoch` to 0.
//!
//! # Not responsible for
//!
//! - Raising the epoch (the node-agent at boot, the sled-health controller on a fence).
//! - What an agent does on a refusal: it was fenced or rebooted, and stops acting for that life
//!   (the node-agent).
//!
//! This crate does not depend on `corral-crds` (it would serve any CRD): the rules read Sleds
//! and Vmms as JSON, by the field paths below, and do nothing for any other kind.

use std::sync::Arc;

use serde_json::Value;

use crate::error::{ApiError, ApiResult, Cause, Target};
use crate::object;
use crate::objects::{AdmissionRequest, AdmissionRule};

/// The API group of Sleds and Vmms.
const GROUP: &str = "corral.dev";
const SLEDS: &str = "sleds";
const VMMS: &str = "vmms";
/// The fence token of a Sled.
const SLED_EPOCH: &str = "status.epoch";
/// The epoch of the agent run that wrote a Vmm's status.
const REPORT_EPOCH: &str = "status.sledEpoch";

/// The fence-token rules, in the order they run.
pub fn rules() -> Vec<Arc<dyn AdmissionRule>> {
    vec![
        Arc::new(SledEpochNeverFalls),
        Arc::new(VmmReportFromCurrentEpoch),
    ]
}

/// Refuses every Sled write that lowers `status.epoch` (see the module docs).
pub struct SledEpochNeverFalls;

#[async_trait::async_trait]
impl AdmissionRule for SledEpochNeverFalls {
    fn name(&self) -> &'static str {
        "SledEpochNeverFalls"
    }

    async fn admit(&self, request: &AdmissionRequest<'_>) -> ApiResult<()> {
        if request.resource.group != GROUP || request.resource.plural != SLEDS {
            return Ok(());
        }
        let Some(old) = request.old else {
            return Ok(());
        };
        let stored = epoch_at(old, SLED_EPOCH);
        let written = epoch_at(request.new, SLED_EPOCH);
        if written >= stored {
            return Ok(());
        }
        let sled = object::name(request.new);
        Err(refusal(
            &request.target(),
            SLED_EPOCH,
            format!(
                "{SLED_EPOCH} never goes down: sled {sled} is at epoch {stored}, the write \
                 carries {written}"
            ),
        ))
    }
}

/// Refuses every Vmm status write that is a report of an ended life of its sled (see the
/// module docs).
pub struct VmmReportFromCurrentEpoch;

#[async_trait::async_trait]
impl AdmissionRule for VmmReportFromCurrentEpoch {
    fn name(&self) -> &'static str {
        "VmmReportFromCurrentEpoch"
    }

    async fn admit(&self, request: &AdmissionRequest<'_>) -> ApiResult<()> {
        if !request.is_status_of(GROUP, VMMS) {
            return Ok(());
        }
        let reported = epoch_at(request.new, REPORT_EPOCH);
        if reported == 0 {
            return Ok(());
        }
        let sled_name = request
            .new
            .pointer("/spec/sled")
            .and_then(Value::as_str)
            .unwrap_or("");
        if sled_name.is_empty() {
            return Ok(());
        }
        let Some(sled) = request
            .objects
            .read_object(GROUP, SLEDS, None, sled_name)
            .await?
        else {
            return Ok(());
        };
        let current = epoch_at(&sled, SLED_EPOCH);
        if reported >= current {
            return Ok(());
        }
        let vmm = match object::namespace(request.new) {
            Some(namespace) => format!("{namespace}/{}", object::name(request.new)),
            None => object::name(request.new).to_string(),
        };
        Err(refusal(
            &request.target(),
            REPORT_EPOCH,
            format!(
                "Vmm {vmm} reports from epoch {reported} of sled {sled_name}, which is at epoch \
                 {current}: the sled was fenced or rebooted since"
            ),
        ))
    }
}

/// The epoch at the dotted `field` of `object`; a missing one is 0.
fn epoch_at(object: &Value, field: &str) -> u64 {
    let pointer = format!("/{}", field.replace('.', "/"));
    object
        .pointer(&pointer)
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// 409 `Conflict` about `target`, with one cause naming `field`.
fn refusal(target: &Target, field: &str, why: String) -> ApiError {
    let mut error = ApiError::conflict(target, &why);
    error.causes = vec![Cause {
        kind: "FieldValueInvalid".into(),
        message: why,
        field: field.into(),
    }];
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_epoch_is_read_by_its_field_path_and_a_missing_one_is_zero() {
        let sled = json!({"status": {"epoch": 7}});
        assert_eq!(epoch_at(&sled, SLED_EPOCH), 7);
        assert_eq!(epoch_at(&json!({"status": {}}), SLED_EPOCH), 0);
        assert_eq!(epoch_at(&json!({}), SLED_EPOCH), 0);
        let vmm = json!({"status": {"sledEpoch": 3}});
        assert_eq!(epoch_at(&vmm, REPORT_EPOCH), 3);
    }

    #[test]
    fn a_refusal_is_a_conflict_naming_the_field() {
        let target = Target {
            group: GROUP.into(),
            plural: SLEDS.into(),
            kind: "Sled".into(),
            name: "s1".into(),
        };
        let error = refusal(&target, SLED_EPOCH, "why".into());
        let status = error.status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(status["details"]["causes"][0]["field"], "status.epoch");
        assert_eq!(
            status["message"],
            "Operation cannot be fulfilled on sleds.corral.dev \"s1\": why"
        );
    }
}
