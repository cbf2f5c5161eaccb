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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use corral_crds::migration::{MIB, transfer_time};
use corral_crds::{MigrationRole, Reason, TransferProgress, Vmm, VmmMigrationPhase, VmmState};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hypervisor::VmmId;
use crate::journal::{MigrationRecord, VmmRecord};
use crate::plan_migration::{advance, moved};
use crate::reconcile::{Context, DisplayChain, write_status};

mod source;
mod target;

pub use source::router;

/// Bytes sent per link reservation, so that concurrent transfers interleave.
pub const CHUNK: u64 = 16 * MIB;
/// How long the target waits to connect to the source agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Clears the slot and aborts the transfers of an agent run when it is dropped, however it
/// ends (a clean stop has already waited for them).
pub struct RunGuard {
    pub slot: Option<AgentSlot>,
    pub ctx: Arc<Context>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.set(None);
        }
        self.ctx.transfers.abort();
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
            http: {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
                Client::builder(TokioExecutor::new()).build(connector)
            },
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

    /// Cancels every transfer and aborts the tasks at once, for an agent run dropped without a
    /// clean stop (its machine lost power): nothing of it may run on.
    pub fn abort(&self) {
        self.stop.cancel();
        self.tasks.lock().expect("transfers lock").abort_all();
    }

    /// Runs `work` for `record`'s Vmm as a task of the agent run, unless a transfer already
    /// runs for it or the run is stopping (then `false`). Once it ends, the Vmm is reconciled.
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
                outcome = target::receive(&task_ctx, &uid, &from.sled, &request) => outcome,
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
/// record is still that end of the migration in phase `Transferring`. Returns whether it did.
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

fn line(event: &TransferEvent) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("an event serializes");
    bytes.push(b'\n');
    Bytes::from(bytes)
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
    fn progress_predicts_the_rest_of_the_transfer() {
        // 64 MiB sent of a 256 MiB guest, 192 MiB left of round 1 at 256 MiB/s, 16 MiB/s dirty.
        let progress = source::progress_of(256 * MIB, 64 * MIB, 1, 192 * MIB, 16 * MIB, 256 * MIB);
        assert_eq!(progress.round, 1);
        assert_eq!(progress.bytes_remaining, 192 * MIB);
        assert!(
            progress.percent > 0 && progress.percent < 30,
            "{progress:?}"
        );
        assert_eq!(progress.eta_seconds, Some(1));
        assert!(progress.predicted_downtime_ms <= 300, "{progress:?}");
        // Nothing left: done.
        let done = source::progress_of(256 * MIB, 300 * MIB, 2, 0, 16 * MIB, 256 * MIB);
        assert_eq!(done.percent, 100);
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
