//! The source end of a transfer: `POST /migrations`, the pre-copy rounds over the sled's link
//! and the paused stop-and-copy round, streamed to the target as NDJSON events.
//!
//! # Guarantees
//! - Over TLS, only the agent of the target Vmm's sled may ask: a caller without a certificate
//!   gets `401`, and any other identity — another sled's agent, `admin` — `403` naming it,
//!   before anything is journaled. The target Vmm's sled is read with a GET, and the request's
//!   `targetSled` must be that sled (the forwarding entries point at it).
//! - The request body is at most `MAX_EVENT_BYTES`; the stream is a channel of
//!   `EVENTS_IN_FLIGHT` events.
//! - The source accepts only a Vmm that runs here, is not being deleted, and that its
//!   Instance (read with a GET) names active with the requester as target.
//! - It journals `Ready` before it pauses the guest, and never resumes it: only the plan
//!   does, on the Instance's verdict.
//! - Between journaling `Ready` and pausing, it installs a forwarding entry to the target sled
//!   for each IP of the instance (`v2p/forward.rs`, docs/migration.md "Make before break"):
//!   the target gets `done`, and so can run the guest, only once they are on the machine. A
//!   failed install ends the stream without `done` (the target fails, the instance aborts). A transfer that fails before the pause journals the
//!   guest `Running` again (migration phase `Failed`/`TransferFailed`).

mod machine;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use corral_client::tls::node_user;
use corral_crds::migration::{
    MAX_ROUNDS, MIB, NonConvergence, dirtied, fits_downtime, predict_within,
};
use corral_crds::{
    Instance, MigrationRole, Reason, TransferProgress, Vmm, VmmMigrationPhase, VmmState,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::DisplayChain;
use crate::http::{Caller, Refused};
use crate::hypervisor::{VmmId, VmmRunState};
use crate::journal::{JournalError, MigrationRecord, VmmRecord};
use crate::migration::plan::{advance, migration_status, moved, ready};
use crate::migration::progress::{
    Throttle, finish, finish_then, progress, reconcile_when_ended, report,
};
use crate::migration::protocol::{
    CHUNK, EVENTS_IN_FLIGHT, MAX_EVENT_BYTES, TransferEvent, TransferRequest, line,
};
use crate::migration::slot::AgentSlot;
use crate::v2p::forward::{forwards_for, install};
use crate::v2p::table::TableChange;

/// Why the source refuses a transfer.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the agent is not running")]
    NotRunning,
    #[error("invalid request body")]
    Body(#[source] serde_json::Error),
    #[error("this sled does not run Vmm {0} (or it is not running)")]
    NotHere(String),
    #[error("the Instance does not name {source_vmm} active and {target_vmm} target")]
    NotNamed {
        source_vmm: String,
        target_vmm: String,
    },
    #[error("reading the target Vmm or the Instance")]
    Api(#[source] kube::Error),
    #[error("journal")]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Caller(#[from] Refused),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if let Refusal::Caller(refused) = self {
            return refused.into_response();
        }
        let code = match &self {
            Refusal::Caller(_) => unreachable!("answered above"),
            Refusal::NotRunning => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Body(_) => StatusCode::BAD_REQUEST,
            Refusal::NotHere(_) => StatusCode::NOT_FOUND,
            Refusal::NotNamed { .. } => StatusCode::CONFLICT,
            Refusal::Api(_) | Refusal::Journal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = DisplayChain(&self).to_string();
        (code, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// The source agent's migration API: `POST /migrations` (see the module docs).
pub fn router(slot: AgentSlot) -> Router {
    Router::new()
        .route("/migrations", post(send))
        .layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
        .with_state(slot)
}

async fn send(
    State(slot): State<AgentSlot>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, Refusal> {
    if caller == Caller::Anonymous {
        return Err(Refused::Unauthenticated.into());
    }
    let ctx = slot.get().ok_or(Refusal::NotRunning)?;
    let request: TransferRequest = serde_json::from_slice(&body).map_err(Refusal::Body)?;
    authorize(&ctx, &caller, &request).await?;
    let (found, instance) = check(&ctx, &request).await?;
    let forwards = forwards_for(
        &instance,
        &request.source_vmm,
        &request.migration,
        &request.target_sled,
    );
    let (events, mut receiver) = mpsc::channel::<Bytes>(EVENTS_IN_FLIGHT);
    let record = begin(&ctx, &found, &request, events, forwards).await?;
    report(&ctx, &record).await;
    let stream = futures::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|item| item.map(Ok::<Bytes, Infallible>))
    });
    Ok((
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Ok if `caller` is the agent of the sled the target Vmm of `request` is placed on (a GET),
/// and `request` names that sled (see the module docs).
async fn authorize(
    ctx: &Context,
    caller: &Caller,
    request: &TransferRequest,
) -> Result<(), Refusal> {
    if *caller == Caller::Insecure {
        return Ok(());
    }
    let vmms: Api<Vmm> = Api::namespaced(ctx.api.client.clone(), &request.namespace);
    let target_sled = vmms
        .get_opt(&request.target_vmm)
        .await
        .map_err(Refusal::Api)?
        .map(|vmm| vmm.spec.sled);
    let what = format!(
        "receive a guest for Vmm {}/{} (only the agent of the sled it is placed on may)",
        request.namespace, request.target_vmm
    );
    caller.check(&what, |user| {
        target_sled
            .as_deref()
            .is_some_and(|sled| user.user == node_user(sled) && request.target_sled == sled)
    })?;
    Ok(())
}

/// The record of the Vmm `request` asks for and its Instance, if this sled may send it: it
/// runs here, is not being deleted, and its Instance (a GET) names it active and the
/// requester target.
async fn check(ctx: &Context, request: &TransferRequest) -> Result<(VmmRecord, Instance), Refusal> {
    let not_here = || Refusal::NotHere(request.source_vmm.clone());
    let found = ctx
        .ledger
        .lock()
        .await
        .records
        .values()
        .find(|r| r.namespace == request.namespace && r.name == request.source_vmm)
        .cloned()
        .ok_or_else(not_here)?;
    let machine = ctx
        .hypervisor
        .inspect(&found.uid)
        .await
        .map_err(|_| not_here())?;
    let deleting = ctx
        .api
        .vmms
        .get(&ObjectRef::new(&found.name).within(&found.namespace))
        .is_none_or(|vmm| vmm.metadata.deletion_timestamp.is_some());
    let runs = found.state == VmmState::Running
        && !deleting
        && machine.is_some_and(|m| m.state == VmmRunState::Running);
    if !runs {
        return Err(not_here());
    }
    let instances: Api<Instance> = Api::namespaced(ctx.api.client.clone(), &request.namespace);
    let instance = instances
        .get_opt(&found.instance)
        .await
        .map_err(Refusal::Api)?;
    let named = instance.filter(|i| {
        i.status.as_ref().is_some_and(|s| {
            s.active_vmm.as_deref() == Some(request.source_vmm.as_str())
                && s.target_vmm.as_deref() == Some(request.target_vmm.as_str())
        })
    });
    let Some(instance) = named else {
        return Err(Refusal::NotNamed {
            source_vmm: request.source_vmm.clone(),
            target_vmm: request.target_vmm.clone(),
        });
    };
    Ok((found, instance))
}

/// Journals `found` as the source of the migration (`Migrating`/`Transferring`) and starts
/// its task, which streams to `events` and installs `forwards` when it pauses the guest;
/// returns the new record.
async fn begin(
    ctx: &Arc<Context>,
    found: &VmmRecord,
    request: &TransferRequest,
    events: mpsc::Sender<Bytes>,
    forwards: Vec<TableChange>,
) -> Result<VmmRecord, Refusal> {
    let not_here = || Refusal::NotHere(request.source_vmm.clone());
    let mut ledger = ctx.ledger.lock().await;
    let Some(previous) = ledger.records.get(&found.uid) else {
        return Err(not_here());
    };
    if previous.state != VmmState::Running {
        return Err(not_here());
    }
    let migration = MigrationRecord {
        status: migration_status(
            &request.migration,
            MigrationRole::Source,
            VmmMigrationPhase::Transferring,
            Some(Reason::Transferring),
            "",
        ),
        peer_vmm: request.target_vmm.clone(),
    };
    let message = format!(
        "sending the guest to {} on {}",
        request.target_vmm, request.target_sled
    );
    let record = advance(
        previous,
        VmmState::Migrating,
        Reason::Transferring,
        message,
        migration,
        corral_client::clock::now(),
    );
    ctx.record(&mut ledger, record.clone()).await?;
    // Started under the ledger lock: no reconcile sees the record without its task.
    let task_ctx = ctx.clone();
    let uid = record.uid.clone();
    let memory = record.resources.memory_mib.saturating_mul(MIB);
    let incoming = request.incoming.clone();
    let started = ctx.transfers.spawn(
        &record.uid,
        move |token| async move {
            let transfer = Transfer {
                memory,
                incoming,
                forwards,
            };
            run_source(&task_ctx, &uid, transfer, events, token).await;
        },
        reconcile_when_ended(ctx, &record),
    );
    if !started {
        return Err(Refusal::NotRunning);
    }
    Ok(record)
}

/// How the source's rounds ended.
enum SourceEnd {
    /// Every byte sent.
    Done,
    /// The transfer failed before the pause; the guest runs on.
    Failed(String),
    /// Cancelled (the Vmm is being deleted, or the agent stops).
    Cancelled,
    /// The connection broke after the pause: wait for the verdict.
    BrokeAfterPause,
}

/// What one outgoing transfer is asked to do.
struct Transfer {
    /// The guest's memory, bytes.
    memory: u64,
    /// Where the target's machine listens, when the drivers move the guest themselves.
    incoming: Option<String>,
    /// The forwarding entries to install before the pause.
    forwards: Vec<TableChange>,
}

/// The source end: pre-copy rounds, then the paused stop-and-copy round.
async fn run_source(
    ctx: &Context,
    uid: &VmmId,
    transfer: Transfer,
    events: mpsc::Sender<Bytes>,
    token: CancellationToken,
) {
    let end = rounds(ctx, uid, transfer, &events, &token).await;
    match end {
        SourceEnd::Done | SourceEnd::BrokeAfterPause => {}
        SourceEnd::Cancelled => {
            let message = "the transfer was cancelled on the source (its Vmm is being deleted or its agent stops)";
            let _ = events.try_send(line(&TransferEvent::Error {
                message: message.into(),
            }));
        }
        SourceEnd::Failed(message) => {
            tracing::info!(%message, "the outgoing transfer failed; the guest runs on");
            let _ = events.try_send(line(&TransferEvent::Error {
                message: message.clone(),
            }));
            let failed = finish(ctx, uid, MigrationRole::Source, |previous, m| {
                let m = moved(
                    m,
                    VmmMigrationPhase::Failed,
                    Some(Reason::TransferFailed),
                    message.clone(),
                );
                advance(
                    previous,
                    VmmState::Running,
                    Reason::TransferFailed,
                    &message,
                    m,
                    corral_client::clock::now(),
                )
            })
            .await;
            if let Err(error) = failed {
                tracing::warn!(error = %DisplayChain(&error), "journaling a failed transfer");
            }
        }
    }
}

/// The progress of a transfer `sent` bytes in, in round `round` of `round_bytes` with
/// `remaining` bytes left of it.
fn progress_of(
    memory: u64,
    sent: u64,
    round: u32,
    remaining: u64,
    dirty: u64,
    bandwidth: u64,
    budget: Duration,
) -> TransferProgress {
    let prediction = predict_within(remaining, dirty, bandwidth, budget).ok();
    let predicted_total = prediction.map_or(sent + remaining, |p| sent + p.total_bytes);
    TransferProgress {
        memory_bytes: memory,
        bytes_sent: sent,
        bytes_remaining: remaining,
        dirty_bytes_per_second: dirty,
        bandwidth_bytes_per_second: bandwidth,
        round,
        percent: if predicted_total == 0 {
            100
        } else {
            ((sent as f64 / predicted_total as f64) * 100.0).min(100.0) as u32
        },
        eta_seconds: prediction.map(|p| p.duration.as_secs_f64().ceil() as u64),
        predicted_downtime_ms: prediction.map_or(0, |p| p.downtime.as_millis() as u64),
        downtime_budget_ms: budget.as_millis() as u64,
    }
}

/// The source's rounds: pre-copy while the guest runs, then the paused stop-and-copy round —
/// modelled over the sled's link, or carried by the machines themselves (`machine.rs`).
async fn rounds(
    ctx: &Context,
    uid: &VmmId,
    transfer: Transfer,
    events: &mpsc::Sender<Bytes>,
    token: &CancellationToken,
) -> SourceEnd {
    let mut outgoing = Outgoing {
        ctx,
        uid,
        memory: transfer.memory,
        events,
        token,
        forwards: transfer.forwards,
        sent: 0,
        paused_at: None,
    };
    if let Some(to) = transfer.incoming {
        return outgoing.by_the_machines(&to).await;
    }
    match outgoing.pre_copy().await {
        Ok((round, round_bytes)) => outgoing.stop_and_copy(round, round_bytes).await,
        Err(end) => end,
    }
}

/// One outgoing transfer under way: what its rounds share.
struct Outgoing<'a> {
    ctx: &'a Context,
    uid: &'a VmmId,
    /// The guest's memory, bytes.
    memory: u64,
    events: &'a mpsc::Sender<Bytes>,
    token: &'a CancellationToken,
    /// The forwarding entries to install before the pause.
    forwards: Vec<TableChange>,
    /// Bytes sent so far, all rounds together.
    sent: u64,
    /// When the guest paused for the last round, once it did.
    paused_at: Option<MicroTime>,
}

impl Outgoing<'_> {
    /// How fast the running source guest dirties its memory.
    async fn dirty_rate(&self) -> Result<u64, String> {
        match self.ctx.hypervisor.inspect(self.uid).await {
            Ok(Some(info)) if info.state == VmmRunState::Running => Ok(info.dirty_bytes_per_second),
            Ok(_) => Err("the source guest no longer runs".to_string()),
            Err(e) => Err(format!("inspecting the source VMM: {e}")),
        }
    }

    /// Pre-copy: the guest runs and dirties memory while each round is sent, until what is
    /// left fits the downtime. Returns the round and the bytes left for the stop-and-copy
    /// round, or how the transfer ended.
    async fn pre_copy(&mut self) -> Result<(u32, u64), SourceEnd> {
        let (ctx, uid, memory, events) = (self.ctx, self.uid, self.memory, self.events);
        let link = ctx.transfers.link();
        let bandwidth = link.bandwidth();
        let budget = ctx.transfers.downtime_budget();
        let mut round: u32 = 1;
        let mut round_bytes = memory;
        let mut throttle = Throttle::default();
        loop {
            let dirty = self.dirty_rate().await.map_err(SourceEnd::Failed)?;
            if fits_downtime(round_bytes, bandwidth, budget) {
                return Ok((round, round_bytes));
            }
            if round > MAX_ROUNDS {
                return Err(SourceEnd::Failed(format!(
                    "did not converge: {round_bytes} bytes still dirty after {MAX_ROUNDS} rounds"
                )));
            }
            if let Err(
                reason @ (NonConvergence::DirtyFasterThanLink { .. } | NonConvergence::NoBandwidth),
            ) = predict_within(round_bytes, dirty, bandwidth, budget)
            {
                return Err(SourceEnd::Failed(format!("did not converge: {reason}")));
            }
            let started = Instant::now();
            let mut remaining = round_bytes;
            while remaining > 0 {
                let chunk = remaining.min(CHUNK);
                tokio::select! {
                    _ = self.token.cancelled() => return Err(SourceEnd::Cancelled),
                    _ = link.send(chunk) => {}
                }
                remaining -= chunk;
                self.sent += chunk;
                let broke = || SourceEnd::Failed("the connection to the target broke".into());
                if events.is_closed() {
                    return Err(broke());
                }
                if throttle.due() {
                    let p = progress_of(
                        memory, self.sent, round, remaining, dirty, bandwidth, budget,
                    );
                    progress(ctx, uid, &p).await;
                    if events
                        .try_send(line(&TransferEvent::Progress { progress: p }))
                        .is_err()
                        && events.is_closed()
                    {
                        return Err(broke());
                    }
                }
            }
            let dirty = self.dirty_rate().await.map_err(SourceEnd::Failed)?;
            round_bytes = dirtied(memory, dirty, started.elapsed());
            round += 1;
        }
    }

    /// Stop-and-copy: journal Ready, install the forwarding entries, then pause; from here only
    /// the verdict resumes the guest.
    async fn stop_and_copy(&mut self, round: u32, round_bytes: u64) -> SourceEnd {
        let (ctx, uid, memory, events, token) =
            (self.ctx, self.uid, self.memory, self.events, self.token);
        let link = ctx.transfers.link();
        let bandwidth = link.bandwidth();
        let budget = ctx.transfers.downtime_budget();
        let dirty = self.dirty_rate().await.unwrap_or(0);
        if let Err(end) = self.journal_pause().await {
            return end;
        }
        self.paused_at = Some(MicroTime(corral_client::clock::now()));
        if let Err(error) = ctx.hypervisor.pause(uid).await {
            // The guest may still run here, so the target must never hold a whole guest: end
            // the stream without `done` (the target fails, the instance aborts). Journaled
            // Ready, the reconcile pauses the guest and resumes it on the abort.
            tracing::warn!(error = %error, "pausing the source guest");
            return SourceEnd::BrokeAfterPause;
        }
        let p = progress_of(
            memory,
            self.sent,
            round,
            round_bytes,
            dirty,
            bandwidth,
            budget,
        );
        if !emit(events, token, TransferEvent::Paused { progress: p }).await {
            return SourceEnd::BrokeAfterPause;
        }
        let mut remaining = round_bytes;
        while remaining > 0 {
            let chunk = remaining.min(CHUNK);
            tokio::select! {
                _ = token.cancelled() => return SourceEnd::BrokeAfterPause,
                _ = link.send(chunk) => {}
            }
            remaining -= chunk;
            self.sent += chunk;
        }
        let p = progress_of(memory, self.sent, round, 0, dirty, bandwidth, budget);
        progress(ctx, uid, &p).await;
        let done = TransferEvent::Done {
            progress: p,
            paused_at: self.paused_at.clone(),
        };
        if !emit(events, token, done).await {
            return SourceEnd::BrokeAfterPause;
        }
        crate::metrics::migration_sent(&ctx.sled.name, self.sent);
        SourceEnd::Done
    }
}

impl Outgoing<'_> {
    /// Journals `Ready` and installs the forwarding entries, before (or, when the machine
    /// pauses the guest itself, as soon as) the guest is paused. The entries go in with the
    /// journal write, under the ledger lock: the reconcile (which pauses a Ready source too)
    /// and the V2P task see `Ready` only with them on the machine.
    async fn journal_pause(&mut self) -> Result<(), SourceEnd> {
        let (ctx, uid) = (self.ctx, self.uid);
        let forwards = std::mem::take(&mut self.forwards);
        let journaled = finish_then(
            ctx,
            uid,
            MigrationRole::Source,
            |previous, m| {
                let message = "the guest is paused for the last round; waiting for the switch";
                ready(previous, m, message, corral_client::clock::now())
            },
            || install(ctx.v2p.as_ref(), forwards),
        )
        .await;
        match journaled {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(error))) => {
                // Without them the target must never hold a whole guest: end the stream
                // without `done`, as for a failed pause.
                tracing::warn!(error = %DisplayChain(&error), "installing the forwarding entries");
                Err(SourceEnd::BrokeAfterPause)
            }
            Ok(None) => Err(SourceEnd::Cancelled),
            Err(error) => Err(SourceEnd::Failed(format!("journaling the pause: {error}"))),
        }
    }
}

/// Sends an event the target must see, waiting for room in the stream unless cancelled.
/// Returns whether it was sent.
async fn emit(
    events: &mpsc::Sender<Bytes>,
    token: &CancellationToken,
    event: TransferEvent,
) -> bool {
    tokio::select! {
        _ = token.cancelled() => false,
        sent = events.send(line(&event)) => sent.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = corral_crds::migration::DOWNTIME_BUDGET;

    #[test]
    fn progress_predicts_the_rest_of_the_transfer() {
        // 64 MiB sent of a 256 MiB guest, 192 MiB left of round 1 at 256 MiB/s, 16 MiB/s dirty.
        let progress = progress_of(
            256 * MIB,
            64 * MIB,
            1,
            192 * MIB,
            16 * MIB,
            256 * MIB,
            BUDGET,
        );
        assert_eq!(progress.round, 1);
        assert_eq!(progress.bytes_remaining, 192 * MIB);
        assert!(
            progress.percent > 0 && progress.percent < 30,
            "{progress:?}"
        );
        assert_eq!(progress.eta_seconds, Some(1));
        assert!(progress.predicted_downtime_ms <= 300, "{progress:?}");
        // Nothing left: done.
        let done = progress_of(256 * MIB, 300 * MIB, 2, 0, 16 * MIB, 256 * MIB, BUDGET);
        assert_eq!(done.percent, 100);
    }
}
