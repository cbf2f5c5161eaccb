//! The transfer of a live migration between two node-agents (docs/migration.md, "Agent to
//! agent" and "The pre-copy model"): the target agent asks the source agent for the guest
//! (`POST /migrations` on the source's `Sled.status.agentAddress`), and the source answers with
//! a stream of newline-delimited JSON [`TransferEvent`]s while it runs the pre-copy rounds over
//! its sled's modelled [`Link`].
//!
//! # What it promises
//! - The source pauses the guest only for the stop-and-copy round, and journals `Ready` before
//!   it pauses: a restarted agent finds the guest paused (or pauses it) and waits for the
//!   verdict. Nothing here ever resumes a guest: only `plan` does, on the Instance's verdict.
//! - A transfer that breaks before the pause leaves the source guest running (`Running`,
//!   migration phase `Failed`/`TransferFailed`) and makes the target fail (the plan destroys
//!   its receiving VMM). A transfer that breaks after the pause changes nothing: the target
//!   may hold the whole guest, and only the Instance decides.
//! - Every transfer is a task of [`Transfers`], owned by the agent run and cancelled when it
//!   stops or when its Vmm is deleted (a target drops its connection; a source ends its stream
//!   with an `error` event).
//!
//! # Invariants
//! - A task writes a journal record only while the record is still the migration end it
//!   started from (same role, phase `Transferring`): a deletion or a verdict decided by the
//!   plan is never overwritten.
//! - The bytes of all outgoing transfers of a sled share its link: each chunk reserves its
//!   time after the previous reservation (see [`Link`]).
//!
//! # Assumptions
//! - Bytes are modelled, not copied; all timing is `tokio::time` (paused-time tests work).
//! - The Instance read for the checks is a GET, never the cache.
//!
//! # Not responsible for
//! Deciding the outcome (the instance controller's switch-or-abort), resuming or destroying
//! VMMs (`plan_migration.rs` through the reconcile), progress in `Migration.status` (the
//! migration controller copies it from `Vmm.status.migration`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use corral_crds::migration::{
    MAX_ROUNDS, MIB, NonConvergence, dirtied, fits_downtime, predict, transfer_time,
};
use corral_crds::{
    Instance, MigrationRole, Reason, Sled, TransferProgress, Vmm, VmmMigrationPhase, VmmState,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hypervisor::{VmmId, VmmRunState};
use crate::journal::{MigrationRecord, VmmRecord};
use crate::plan_migration::{advance, migration_status, moved};
use crate::reconcile::{Context, DisplayChain, write_status};

/// Bytes sent per link reservation, so that concurrent transfers interleave.
pub const CHUNK: u64 = 16 * MIB;
/// At most one progress report (status write, stream event) per this long.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// One event of the source's answer, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TransferEvent {
    Progress {
        progress: TransferProgress,
    },
    /// The guest is paused on the source; the stop-and-copy round is under way.
    Paused {
        progress: TransferProgress,
    },
    /// Every byte is sent: the target holds the whole guest.
    Done {
        progress: TransferProgress,
    },
    Error {
        message: String,
    },
}

/// What the target asks the source for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRequest {
    pub migration: String,
    pub namespace: String,
    pub source_vmm: String,
    pub target_vmm: String,
    pub target_sled: String,
}

/// A sled's outgoing migration link: sending `n` bytes reserves `n / bandwidth` of link time
/// after the previous reservation ends, and waits until its own ends.
#[derive(Debug)]
pub struct Link {
    bandwidth: u64,
    free_at: Mutex<Instant>,
}

impl Link {
    pub fn new(bandwidth: u64) -> Link {
        Link {
            bandwidth,
            free_at: Mutex::new(Instant::now()),
        }
    }

    pub fn bandwidth(&self) -> u64 {
        self.bandwidth
    }

    /// Sends `bytes` (one chunk): returns when the link has carried them.
    pub async fn send(&self, bytes: u64) {
        let took = transfer_time(bytes, self.bandwidth);
        let ends = {
            let mut free_at = self.free_at.lock().expect("link lock");
            let ends = (*free_at).max(Instant::now()) + took;
            *free_at = ends;
            ends
        };
        tokio::time::sleep_until(ends).await;
    }
}

/// Where the agent run that serves `/migrations` is (set while it runs; the HTTP server
/// outlives agent restarts).
#[derive(Clone, Default)]
pub struct AgentSlot(Arc<Mutex<Option<Arc<Context>>>>);

impl AgentSlot {
    pub fn set(&self, ctx: Option<Arc<Context>>) {
        *self.0.lock().expect("agent slot lock") = ctx;
    }

    fn get(&self) -> Option<Arc<Context>> {
        self.0.lock().expect("agent slot lock").clone()
    }
}

/// The transfer tasks of one agent run.
pub struct Transfers {
    stop: CancellationToken,
    running: Mutex<HashMap<VmmId, CancellationToken>>,
    tasks: Mutex<JoinSet<()>>,
    link: Link,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Transfers {
    pub fn new(bandwidth: u64) -> Transfers {
        Transfers {
            stop: CancellationToken::new(),
            running: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            link: Link::new(bandwidth),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Whether a transfer task works for `uid`.
    pub fn is_running(&self, uid: &VmmId) -> bool {
        self.running
            .lock()
            .expect("transfers lock")
            .contains_key(uid)
    }

    /// Cancels the transfer of `uid`, if one runs.
    pub fn cancel(&self, uid: &VmmId) {
        if let Some(token) = self.running.lock().expect("transfers lock").get(uid) {
            token.cancel();
        }
    }

    /// Cancels every transfer and waits for the tasks to end.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("transfers lock"));
        while tasks.join_next().await.is_some() {}
    }

    /// Runs `work` for `uid` as a task of the agent run; a transfer already running for `uid`
    /// is success. Once it ends, the Vmm is reconciled.
    fn spawn<F, Fut>(&self, ctx: &Arc<Context>, record: &VmmRecord, work: F) -> bool
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let token = self.stop.child_token();
        {
            let mut running = self.running.lock().expect("transfers lock");
            if running.contains_key(&record.uid) || self.stop.is_cancelled() {
                return false;
            }
            running.insert(record.uid.clone(), token.clone());
        }
        let future = work(token);
        let ctx = ctx.clone();
        let record = record.clone();
        let mut tasks = self.tasks.lock().expect("transfers lock");
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            future.await;
            ctx.transfers
                .running
                .lock()
                .expect("transfers lock")
                .remove(&record.uid);
            ctx.trigger(&record);
        });
        true
    }

    /// Starts the target's transfer of `vmm` (see the module docs).
    pub fn start_target(&self, ctx: &Arc<Context>, vmm: &Vmm, record: &VmmRecord) {
        let Some(from) = vmm.spec.migrate_from.clone() else {
            return;
        };
        let request = TransferRequest {
            migration: from.migration.clone(),
            namespace: record.namespace.clone(),
            source_vmm: from.vmm.clone(),
            target_vmm: record.name.clone(),
            target_sled: ctx.sled_name.clone(),
        };
        let task_ctx = ctx.clone();
        let uid = record.uid.clone();
        self.spawn(ctx, record, move |token| async move {
            let outcome = tokio::select! {
                _ = token.cancelled() => return,
                outcome = receive(&task_ctx, &uid, &from.sled, &request) => outcome,
            };
            if let Err(message) = outcome {
                tracing::info!(vmm = %request.target_vmm, %message, "the transfer failed");
                let failed = finish(&task_ctx, &uid, MigrationRole::Target, |previous, m| {
                    let m = moved(
                        m,
                        VmmMigrationPhase::Failed,
                        Some(Reason::TransferFailed),
                        message.clone(),
                    );
                    let reason = Reason::TransferFailed;
                    advance(previous, VmmState::Migrating, reason, &message, m, now())
                })
                .await;
                if let Err(error) = failed {
                    tracing::warn!(error = %DisplayChain(&error), "journaling a failed transfer");
                }
            }
        });
    }
}

fn now() -> jiff::Timestamp {
    corral_client::clock::now()
}

/// Records the next decision about the migration end `uid` (journal, then status), if its
/// record is still that end of the migration in phase `Transferring` (or `Ready` for a
/// source). Returns whether it did.
async fn finish(
    ctx: &Context,
    uid: &VmmId,
    role: MigrationRole,
    next: impl FnOnce(&VmmRecord, &MigrationRecord) -> VmmRecord,
) -> Result<bool, crate::journal::JournalError> {
    let record = {
        let mut ledger = ctx.ledger.lock().await;
        let Some(previous) = ledger.records.get(uid) else {
            return Ok(false);
        };
        let Some(migration) = previous.migration.as_ref() else {
            return Ok(false);
        };
        let current = previous.state == VmmState::Migrating
            && migration.status.role == role
            && migration.status.phase == VmmMigrationPhase::Transferring;
        if !current {
            return Ok(false);
        }
        let record = next(previous, migration);
        ctx.record(&mut ledger, record.clone()).await?;
        record
    };
    report(ctx, &record).await;
    ctx.trigger(&record);
    Ok(true)
}

/// Writes the status of `record`'s Vmm now (a failure is logged; the reconcile reports again).
async fn report(ctx: &Context, record: &VmmRecord) {
    let target = ObjectRef::<Vmm>::new(&record.name).within(&record.namespace);
    let Some(vmm) = ctx.store.get(&target) else {
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
async fn progress(ctx: &Context, uid: &VmmId, progress: &TransferProgress) {
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

/// Throttles progress reports to one per [`PROGRESS_INTERVAL`].
struct Throttle(Option<Instant>);

impl Throttle {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.0.is_some_and(|last| now < last + PROGRESS_INTERVAL) {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// The target end: asks the source for the guest and follows its events until `done`.
async fn receive(
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
                    let done = finish(ctx, uid, MigrationRole::Target, |previous, m| {
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
                    let _ = done;
                    return Ok(());
                }
                TransferEvent::Error { message } => return Err(message),
            }
        }
    }
}

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
    #[error("reading the Instance")]
    Api(#[source] kube::Error),
    #[error("journal")]
    Journal(#[from] crate::journal::JournalError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let code = match &self {
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
        .with_state(slot)
}

async fn send(State(slot): State<AgentSlot>, body: Bytes) -> Result<Response, Refusal> {
    let ctx = slot.get().ok_or(Refusal::NotRunning)?;
    let request: TransferRequest = serde_json::from_slice(&body).map_err(Refusal::Body)?;
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
    let runs = found.state == VmmState::Running
        && machine.is_some_and(|m| m.state == VmmRunState::Running);
    if !runs {
        return Err(not_here());
    }
    let instances: Api<Instance> = Api::namespaced(ctx.client.clone(), &request.namespace);
    let instance = instances
        .get_opt(&found.instance)
        .await
        .map_err(Refusal::Api)?;
    let named = instance.and_then(|i| i.status).is_some_and(|s| {
        s.active_vmm.as_deref() == Some(request.source_vmm.as_str())
            && s.target_vmm.as_deref() == Some(request.target_vmm.as_str())
    });
    if !named {
        return Err(Refusal::NotNamed {
            source_vmm: request.source_vmm.clone(),
            target_vmm: request.target_vmm.clone(),
        });
    }
    let (events, mut receiver) = mpsc::channel::<Bytes>(16);
    let record = {
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
            now(),
        );
        ctx.record(&mut ledger, record.clone()).await?;
        // Started under the ledger lock: no reconcile sees the record without its task.
        let task_ctx = ctx.clone();
        let uid = record.uid.clone();
        let memory = record.resources.memory_mib * MIB;
        let started = ctx.transfers.spawn(&ctx, &record, move |token| async move {
            run_source(&task_ctx, &uid, memory, events, token).await;
        });
        if !started {
            return Err(Refusal::NotRunning);
        }
        record
    };
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

fn line(event: &TransferEvent) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("an event serializes");
    bytes.push(b'\n');
    Bytes::from(bytes)
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

/// The source end: pre-copy rounds, then the paused stop-and-copy round.
async fn run_source(
    ctx: &Context,
    uid: &VmmId,
    memory: u64,
    events: mpsc::Sender<Bytes>,
    token: CancellationToken,
) {
    let end = rounds(ctx, uid, memory, &events, &token).await;
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
                    now(),
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
) -> TransferProgress {
    let prediction = predict(remaining, dirty, bandwidth).ok();
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
    }
}

async fn rounds(
    ctx: &Context,
    uid: &VmmId,
    memory: u64,
    events: &mpsc::Sender<Bytes>,
    token: &CancellationToken,
) -> SourceEnd {
    let link = &ctx.transfers.link;
    let bandwidth = link.bandwidth();
    let mut round: u32 = 1;
    let mut round_bytes = memory;
    let mut sent: u64 = 0;
    let mut throttle = Throttle(None);
    let dirty_rate = || async {
        match ctx.hypervisor.inspect(uid).await {
            Ok(Some(info)) if info.state == VmmRunState::Running => Ok(info.dirty_bytes_per_second),
            Ok(_) => Err("the source guest no longer runs".to_string()),
            Err(e) => Err(format!("inspecting the source VMM: {e}")),
        }
    };
    // Pre-copy: the guest runs and dirties memory while each round is sent.
    loop {
        let dirty = match dirty_rate().await {
            Ok(dirty) => dirty,
            Err(message) => return SourceEnd::Failed(message),
        };
        if fits_downtime(round_bytes, bandwidth) {
            break;
        }
        if round > MAX_ROUNDS {
            return SourceEnd::Failed(format!(
                "did not converge: {round_bytes} bytes still dirty after {MAX_ROUNDS} rounds"
            ));
        }
        if let Err(
            reason @ (NonConvergence::DirtyFasterThanLink { .. } | NonConvergence::NoBandwidth),
        ) = predict(round_bytes, dirty, bandwidth)
        {
            return SourceEnd::Failed(format!("did not converge: {reason}"));
        }
        let started = Instant::now();
        let mut remaining = round_bytes;
        while remaining > 0 {
            let chunk = remaining.min(CHUNK);
            tokio::select! {
                _ = token.cancelled() => return SourceEnd::Cancelled,
                _ = link.send(chunk) => {}
            }
            remaining -= chunk;
            sent += chunk;
            if events.is_closed() {
                return SourceEnd::Failed("the connection to the target broke".into());
            }
            if throttle.due() {
                let p = progress_of(memory, sent, round, remaining, dirty, bandwidth);
                progress(ctx, uid, &p).await;
                if events
                    .try_send(line(&TransferEvent::Progress { progress: p }))
                    .is_err()
                    && events.is_closed()
                {
                    return SourceEnd::Failed("the connection to the target broke".into());
                }
            }
        }
        let dirty = match dirty_rate().await {
            Ok(dirty) => dirty,
            Err(message) => return SourceEnd::Failed(message),
        };
        round_bytes = dirtied(memory, dirty, started.elapsed());
        round += 1;
    }
    // Stop-and-copy: journal Ready, then pause; from here only the verdict resumes the guest.
    let dirty = dirty_rate().await.unwrap_or(0);
    let ready = finish(ctx, uid, MigrationRole::Source, |previous, m| {
        let m = moved(m, VmmMigrationPhase::Ready, None, "");
        let message = "the guest is paused for the last round; waiting for the switch";
        advance(
            previous,
            VmmState::Migrating,
            Reason::Switching,
            message,
            m,
            now(),
        )
    })
    .await;
    match ready {
        Ok(true) => {}
        Ok(false) => return SourceEnd::Cancelled,
        Err(error) => return SourceEnd::Failed(format!("journaling the pause: {error}")),
    }
    if let Err(error) = ctx.hypervisor.pause(uid).await {
        // Journaled Ready: the reconcile pauses it (or the verdict decides).
        tracing::warn!(error = %error, "pausing the source guest");
    }
    let p = progress_of(memory, sent, round, round_bytes, dirty, bandwidth);
    if events
        .send(line(&TransferEvent::Paused { progress: p }))
        .await
        .is_err()
    {
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
        sent += chunk;
    }
    let p = progress_of(memory, sent, round, 0, dirty, bandwidth);
    progress(ctx, uid, &p).await;
    if events
        .send(line(&TransferEvent::Done { progress: p }))
        .await
        .is_err()
    {
        return SourceEnd::BrokeAfterPause;
    }
    SourceEnd::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transfers_share_the_link() {
        let link = Arc::new(Link::new(100 * MIB));
        let start = Instant::now();
        let a = {
            let link = link.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    link.send(10 * MIB).await;
                }
                Instant::now()
            })
        };
        let b = {
            let link = link.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    link.send(10 * MIB).await;
                }
                Instant::now()
            })
        };
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        // 100 MiB over 100 MiB/s: both end near one second, neither at half a second.
        for end in [a, b] {
            let took = end - start;
            assert!(took >= Duration::from_millis(900), "{took:?}");
            assert!(took <= Duration::from_millis(1010), "{took:?}");
        }
    }

    #[test]
    fn events_are_one_json_object_a_line() {
        let text = line(&TransferEvent::Error {
            message: "did not converge".into(),
        });
        assert_eq!(
            &text[..],
            b"{\"type\":\"error\",\"message\":\"did not converge\"}\n"
        );
    }
}
