//! The source end of a transfer that the machines carry themselves (QEMU's `migrate`): the
//! target's machine listens (`TransferRequest::incoming`), the source's driver sends, and the
//! agent follows, reporting progress on the same stream and journal as a modelled transfer.
//!
//! # Guarantees (those of the modelled transfer, `source.rs`)
//! - The driver pauses the guest itself when the rest fits the sled's downtime budget and
//!   holds it there; the agent journals `Ready` and installs the forwarding entries before it lets the
//!   rest go (`finish_sending`), and only then tells the target `paused`, then `done`. The
//!   target cannot hold the whole guest before the journal says the source is paused.
//! - A transfer that fails before the pause leaves the guest running (the driver resumes it);
//!   after the pause nothing here resumes it: only the plan does, on the verdict.
//! - Cancelled before the pause, the driver's transfer is given up; so is one still copying
//!   after [`MAX_ROUNDS`] passes over memory (it does not converge), as a modelled one.

use std::time::Duration;

use corral_crds::TransferProgress;
use corral_crds::migration::MAX_ROUNDS;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use super::{Outgoing, SourceEnd, emit};
use crate::hypervisor::{GuestTransfer, TransferPhase};
use crate::migration::progress::{Throttle, progress};
use crate::migration::protocol::{TransferEvent, line};

/// How often the driver's transfer is looked at (at once when the driver announces a step).
const POLL: Duration = Duration::from_millis(25);

impl Outgoing<'_> {
    /// The whole transfer, by the machines, to the target machine listening at `to`.
    pub(super) async fn by_the_machines(&mut self, to: &str) -> SourceEnd {
        let (ctx, uid, events, token) = (self.ctx, self.uid, self.events, self.token);
        let bandwidth = ctx.transfers.link().bandwidth();
        let budget = ctx.transfers.downtime_budget();
        if let Err(error) = ctx.hypervisor.send_guest(uid, to, bandwidth, budget).await {
            return SourceEnd::Failed(format!("starting the transfer: {error}"));
        }
        let mut throttle = Throttle::default();
        // Pre-copy, the guest running.
        loop {
            tokio::select! {
                _ = token.cancelled() => {
                    let _ = ctx.hypervisor.cancel_sending(uid).await;
                    return SourceEnd::Cancelled;
                }
                _ = ctx.hypervisor.transfer_changed(uid, POLL) => {}
            }
            if events.is_closed() {
                let _ = ctx.hypervisor.cancel_sending(uid).await;
                return SourceEnd::Failed("the connection to the target broke".into());
            }
            let transfer = match ctx.hypervisor.guest_transfer(uid).await {
                Ok(transfer) => transfer,
                Err(error) => return SourceEnd::Failed(format!("reading the transfer: {error}")),
            };
            match &transfer.phase {
                TransferPhase::Copying if transfer.round > MAX_ROUNDS => {
                    let _ = ctx.hypervisor.cancel_sending(uid).await;
                    return SourceEnd::Failed(format!(
                        "did not converge: {} bytes still dirty after {MAX_ROUNDS} rounds",
                        transfer.bytes_remaining
                    ));
                }
                TransferPhase::Copying => {
                    if throttle.due() {
                        let p = progress_of(&transfer, bandwidth, budget);
                        progress(ctx, uid, &p).await;
                        let _ = events.try_send(line(&TransferEvent::Progress { progress: p }));
                    }
                }
                TransferPhase::AwaitingSwitchover
                | TransferPhase::Finishing
                | TransferPhase::Completed => {
                    let paused = transfer.paused_at.unwrap_or_else(corral_client::clock::now);
                    self.paused_at = Some(MicroTime(paused));
                    break;
                }
                TransferPhase::Failed(why) => return SourceEnd::Failed(why.clone()),
            }
        }
        // The driver paused the guest: journal it before the rest may go.
        if let Err(end) = self.journal_pause().await {
            return end;
        }
        let paused = ctx.hypervisor.guest_transfer(uid).await;
        let p = paused.as_ref().map_or_else(
            |_| TransferProgress::default(),
            |t| progress_of(t, bandwidth, budget),
        );
        if !emit(events, token, TransferEvent::Paused { progress: p }).await {
            return SourceEnd::BrokeAfterPause;
        }
        if paused.is_ok_and(|t| t.phase == TransferPhase::AwaitingSwitchover)
            && let Err(error) = ctx.hypervisor.finish_sending(uid).await
        {
            tracing::warn!(%error, "letting the rest of the paused guest go");
            return SourceEnd::BrokeAfterPause;
        }
        loop {
            let transfer = match ctx.hypervisor.guest_transfer(uid).await {
                Ok(transfer) => transfer,
                Err(error) => {
                    tracing::warn!(%error, "reading the transfer after the pause");
                    return SourceEnd::BrokeAfterPause;
                }
            };
            match &transfer.phase {
                TransferPhase::Completed => {
                    let p = progress_of(&transfer, bandwidth, budget);
                    tracing::info!(
                        vmm = %uid,
                        downtime_ms = transfer.downtime_ms,
                        bytes = transfer.bytes_sent,
                        "the machines moved the guest"
                    );
                    progress(ctx, uid, &p).await;
                    let done = TransferEvent::Done {
                        progress: p,
                        paused_at: self.paused_at.clone(),
                    };
                    if !emit(events, token, done).await {
                        return SourceEnd::BrokeAfterPause;
                    }
                    crate::metrics::migration_sent(&ctx.sled.name, transfer.bytes_sent);
                    return SourceEnd::Done;
                }
                TransferPhase::Failed(why) => {
                    tracing::warn!(%why, "the transfer failed after the pause");
                    return SourceEnd::BrokeAfterPause;
                }
                _ => {}
            }
            tokio::select! {
                _ = token.cancelled() => return SourceEnd::BrokeAfterPause,
                _ = ctx.hypervisor.transfer_changed(uid, POLL) => {}
            }
        }
    }
}

/// A driver's transfer as the protocol reports progress.
fn progress_of(transfer: &GuestTransfer, bandwidth: u64, budget: Duration) -> TransferProgress {
    let total = transfer.bytes_sent + transfer.bytes_remaining;
    TransferProgress {
        memory_bytes: transfer.memory_bytes,
        bytes_sent: transfer.bytes_sent,
        bytes_remaining: transfer.bytes_remaining,
        dirty_bytes_per_second: transfer.dirty_bytes_per_second,
        bandwidth_bytes_per_second: bandwidth,
        round: transfer.round,
        percent: (transfer.bytes_sent * 100)
            .checked_div(total)
            .map_or(100, |percent| percent.min(100) as u32),
        eta_seconds: (bandwidth > 0).then(|| transfer.bytes_remaining.div_ceil(bandwidth)),
        predicted_downtime_ms: transfer.downtime_ms,
        downtime_budget_ms: budget.as_millis() as u64,
    }
}
