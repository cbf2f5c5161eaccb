//! The target end of a transfer: asks the source agent for the guest and follows its events.

use bytes::Bytes;
use corral_crds::{MigrationRole, Reason, Sled, VmmMigrationPhase, VmmState};
use http_body_util::{BodyExt, Full};
use kube::api::Api;

use crate::hypervisor::VmmId;
use crate::plan_migration::{advance, moved};
use crate::reconcile::Context;

use super::*;

/// The target end: asks the source for the guest and follows its events until `done`.
pub(super) async fn receive(
    ctx: &Context,
    uid: &VmmId,
    source_sled: &str,
    request: &TransferRequest,
) -> Result<(), String> {
    let sleds: Api<Sled> = Api::all(ctx.client.clone());
    let sled = sleds
        .get(source_sled)
        .await
        .map_err(|e| format!("reading the source sled {source_sled}: {e}"))?;
    let address = sled
        .status
        .and_then(|s| s.agent_address)
        .ok_or_else(|| format!("the source sled {source_sled} reports no agent address"))?;
    let body = serde_json::to_vec(request).expect("a transfer request serializes");
    let http_request = hyper::Request::post(format!("http://{address}/migrations"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
    let response = ctx
        .transfers
        .http
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
    let mut throttle = Throttle(None);
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
                TransferEvent::Done { progress: p } => {
                    // Not journaled (`false`) only if the Vmm no longer waits for this transfer
                    // (it is being deleted): nothing more to do either way.
                    finish(ctx, uid, MigrationRole::Target, |previous, m| {
                        let mut m = moved(m, VmmMigrationPhase::Ready, None, "");
                        m.status.progress = p;
                        let message = "the whole guest is here; waiting for the switch";
                        advance(
                            previous,
                            VmmState::Migrating,
                            Reason::Switching,
                            message,
                            m,
                            now(),
                        )
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
