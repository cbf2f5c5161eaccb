//! The target end of a transfer: asks the source agent for the guest (`POST /migrations` on
//! the source's `Sled.status.agentAddress`) and follows its events until `done`, as a task of
//! the agent run ([`start_target`]).
//!
//! # Guarantees
//! - The target journals `Ready` only on the source's `done` (it then holds the whole guest),
//!   and `Failed`/`TransferFailed` on anything else that ends the transfer; a cancelled task
//!   (its Vmm is being deleted, or the run stops) journals nothing: the plan decides then.

use std::sync::Arc;

use bytes::Bytes;
use corral_crds::{MigrationRole, Reason, Sled, TransferTimings, Vmm, VmmMigrationPhase, VmmState};
use http_body_util::{BodyExt, Full};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::Api;

use crate::context::Context;
use crate::error::DisplayChain;
use crate::hypervisor::VmmId;
use crate::journal::VmmRecord;
use crate::migration::plan::{advance, moved, ready};
use crate::migration::progress::{Throttle, finish, progress, reconcile_when_ended};
use crate::migration::protocol::{TransferEvent, TransferRequest};

/// Starts the target's transfer of `vmm` (whose record is `record`) as a task of the agent
/// run; once it ends, the Vmm is reconciled.
pub fn start_target(ctx: &Arc<Context>, vmm: &Vmm, record: &VmmRecord) {
    let Some(from) = vmm.spec.migrate_from.clone() else {
        return;
    };
    let request = TransferRequest {
        migration: from.migration.clone(),
        namespace: record.namespace.clone(),
        source_vmm: from.vmm.clone(),
        target_vmm: record.name.clone(),
        target_sled: ctx.sled.name.clone(),
        incoming: None,
    };
    let task_ctx = ctx.clone();
    let uid = record.uid.clone();
    ctx.transfers.spawn(
        &record.uid,
        move |token| async move {
            let outcome = tokio::select! {
                _ = token.cancelled() => return,
                outcome = receive(&task_ctx, &uid, &from.sled, &request) => outcome,
            };
            if let Err(message) = outcome {
                tracing::info!(vmm = %request.target_vmm, %message, "the transfer failed");
                fail(&task_ctx, &uid, &message).await;
            }
        },
        reconcile_when_ended(ctx, record),
    );
}

/// Journals (and reports) that the target's transfer failed.
async fn fail(ctx: &Context, uid: &VmmId, message: &str) {
    let failed = finish(ctx, uid, MigrationRole::Target, |previous, m| {
        let m = moved(
            m,
            VmmMigrationPhase::Failed,
            Some(Reason::TransferFailed),
            message,
        );
        let reason = Reason::TransferFailed;
        let now = corral_client::clock::now();
        advance(previous, VmmState::Migrating, reason, message, m, now)
    })
    .await;
    if let Err(error) = failed {
        tracing::warn!(error = %DisplayChain(&error), "journaling a failed transfer");
    }
}

/// The target end: asks the source for the guest and follows its events until `done`.
async fn receive(
    ctx: &Context,
    uid: &VmmId,
    source_sled: &str,
    request: &TransferRequest,
) -> Result<(), String> {
    let sleds: Api<Sled> = Api::all(ctx.api.client.clone());
    let sled = sleds
        .get(source_sled)
        .await
        .map_err(|e| format!("reading the source sled {source_sled}: {e}"))?;
    let address = sled
        .status
        .and_then(|s| s.agent_address)
        .ok_or_else(|| format!("the source sled {source_sled} reports no agent address"))?;
    // A driver that moves guests itself listens for this one first (QEMU's -incoming).
    let incoming = ctx
        .hypervisor
        .listen_for_guest(uid)
        .await
        .map_err(|e| format!("listening for the guest: {e}"))?;
    let request = TransferRequest {
        incoming,
        ..request.clone()
    };
    let started_at = MicroTime(corral_client::clock::now());
    let body = serde_json::to_vec(&request).expect("a transfer request serializes");
    let http_request = hyper::Request::post(format!("http://{address}/migrations"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
    let response = ctx
        .transfers
        .http()
        .request(http_request)
        .await
        .map_err(|e| format!("asking the source agent at {address}: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!(
            "the source agent refused ({status}): {}",
            text.trim()
        ));
    }
    let mut buffer = Vec::new();
    let mut throttle = Throttle::default();
    loop {
        let frame = match body.frame().await {
            None => return Err("the source ended the transfer without finishing it".into()),
            Some(Err(e)) => return Err(format!("the connection to the source broke: {e}")),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: TransferEvent = serde_json::from_slice(&line)
                .map_err(|e| format!("an unreadable event from the source: {e}"))?;
            match event {
                TransferEvent::Progress { progress: p } | TransferEvent::Paused { progress: p } => {
                    if throttle.due() {
                        progress(ctx, uid, &p).await;
                    }
                }
                TransferEvent::Done {
                    progress: p,
                    paused_at,
                } => {
                    let received_at = MicroTime(corral_client::clock::now());
                    // Not journaled (`false`) only if the Vmm no longer waits for this transfer
                    // (it is being deleted): nothing more to do either way.
                    finish(ctx, uid, MigrationRole::Target, |previous, m| {
                        let mut m = m.clone();
                        m.status.progress = p;
                        m.status.timings = TransferTimings {
                            started_at: Some(started_at.clone()),
                            paused_at: paused_at.clone(),
                            received_at: Some(received_at.clone()),
                            resumed_at: None,
                        };
                        let message = "the whole guest is here; waiting for the switch";
                        ready(previous, &m, message, corral_client::clock::now())
                    })
                    .await
                    .map_err(|e| format!("journaling the received guest: {e}"))?;
                    return Ok(());
                }
                TransferEvent::Error { message } => return Err(message),
            }
        }
    }
}
