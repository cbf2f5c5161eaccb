//! The agent's own `Sled`: registering it, and keeping `Sled.status` equal to what the agent
//! knows, with as few writes as possible.
//!
//! Writes are the bottleneck of a large rack (a hundred sleds, ten thousand VMMs), so the
//! status is *debounced*: [`SledReporter`] keeps the report the agent wants the API to show;
//! its writer task writes it only when it changed, and at most once per `min_interval`. Many
//! changes inside one interval become one write.
//!
//! # Reads and writes
//! - Creates the Sled if it is absent (spec and labels from the config); never changes the
//!   spec or labels of an existing Sled: they belong to operators.
//! - Writes only the `Sled.status` fields the agent owns (capacity, allocated, vmms, epoch,
//!   agentVersion, agentAddress, unknownVmms, v2p, conditions `Ready`, `Diverged` and
//!   `V2PConverged`), keeping any other writer's conditions (`Fenced`) and fields
//!   (`health`). Every write is a merge patch conditional on the resourceVersion it was
//!   computed from; a conflict rereads the Sled and tries once more.
//! - `Ready` has two writers: the agent writes `Ready=True` (`AgentReady`) while it runs and
//!   `Ready=False` (`AgentStopped`) when it stops cleanly; the sled-health controller writes
//!   `Ready=False` (`HeartbeatExpired`) when the Lease expires, and lifts it when the Lease is
//!   renewed. A running agent keeps the controller's `HeartbeatExpired` instead of writing
//!   `Ready=True` over it: only the one who judged the Lease may say it is renewed.
//!
//! # Invariants
//! - Never writes an epoch below the stored one. A stored epoch above the run's means the sled
//!   was fenced: the reporter raises the run's [`FenceAlarm`] and writes nothing more, and so
//!   does a write the API refuses on `status.epoch` (`fence.rs`).
//!
//! # Guarantees
//! - [`SledReporter::flush`] returns once the report as it was at the call has been written
//!   (or the bound passed), so that a short-lived state (an unknown VMM being repaired) is
//!   seen by the API before it ends.
//! - [`SledReporter::update_now`] skips the debounce: V2P acknowledgements are written within
//!   one write's time, not a `min_interval` later (docs/migration.md, "V2P").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_client::idempotent::{Idempotent, is_conflict};
use corral_crds::condition;
use corral_crds::{
    ConditionStatus, Reason, Resources, Sled, SledConditionType, SledSpec, SledStatus,
    UnknownVmmReport, V2pAck,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fence::{FenceAlarm, refuses_epoch};

/// The part of `Sled.status` the agent owns, as it wants the API to show it.
#[derive(Clone, Debug, PartialEq)]
pub struct SledReport {
    pub capacity: Resources,
    pub allocated: Resources,
    pub vmms: u32,
    pub epoch: u64,
    pub agent_version: String,
    pub agent_address: Option<String>,
    /// What runs the VMMs (`Hypervisor::description`).
    pub hypervisor: String,
    /// The migration link's bandwidth, bytes per second.
    pub migration_bandwidth: u64,
    /// The longest pause an outgoing migration plans for, milliseconds.
    pub migration_downtime_budget_ms: u64,
    pub diverged: Divergence,
    /// The agent runs (`Ready=True`); false once it stopped cleanly.
    pub running: bool,
    /// Unassigned VMMs being repaired (`status.unknownVmms`).
    pub unknown: Vec<UnknownVmmReport>,
    /// The V2P table's acknowledgements and `V2PConverged` (`None`: not reported).
    pub v2p: Option<V2pReport>,
}

/// What the V2P table holds, for `status.v2p` and `V2PConverged`.
#[derive(Clone, Debug, PartialEq)]
pub struct V2pReport {
    pub acks: Vec<V2pAck>,
    /// Every VpcRoutes is applied at its current generation.
    pub converged: bool,
    pub message: String,
}

/// The `Diverged` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub status: ConditionStatus,
    pub reason: Reason,
    pub message: String,
}

impl Divergence {
    pub fn converged() -> Divergence {
        Divergence {
            status: ConditionStatus::False,
            reason: Reason::Converged,
            message: String::new(),
        }
    }
}

/// `base` (the status as the API last showed it) with the agent's fields set from `report`.
pub fn render_status(
    base: Option<&SledStatus>,
    report: &SledReport,
    now: jiff::Timestamp,
) -> SledStatus {
    let mut status = base.cloned().unwrap_or_default();
    status.capacity = report.capacity;
    status.allocated = report.allocated;
    status.vmms = report.vmms;
    // Never below the stored epoch (a fence raised it); the writer does not even write then.
    status.epoch = status.epoch.max(report.epoch);
    status.agent_version = report.agent_version.clone();
    status.agent_address = report.agent_address.clone();
    status.hypervisor = report.hypervisor.clone();
    status.migration_bandwidth = report.migration_bandwidth;
    status.migration_downtime_budget_ms = report.migration_downtime_budget_ms;
    status.unknown_vmms = report.unknown.clone();
    let expired =
        condition::find(&status.conditions, SledConditionType::Ready).is_some_and(|ready| {
            ready.status == ConditionStatus::False && ready.reason == Reason::HeartbeatExpired
        });
    let ready = if !report.running {
        Some((
            ConditionStatus::False,
            Reason::AgentStopped,
            "the node-agent stopped; nothing on the sled is reconciled",
        ))
    } else if expired {
        // The sled-health controller's verdict: it lifts it when it sees the Lease renewed.
        None
    } else {
        Some((
            ConditionStatus::True,
            Reason::AgentReady,
            "the node-agent runs",
        ))
    };
    if let Some((ready, reason, message)) = ready {
        condition::set(
            &mut status.conditions,
            SledConditionType::Ready,
            ready,
            reason,
            message,
            now,
        );
    }
    condition::set(
        &mut status.conditions,
        SledConditionType::Diverged,
        report.diverged.status,
        report.diverged.reason,
        report.diverged.message.clone(),
        now,
    );
    if let Some(v2p) = &report.v2p {
        status.v2p = v2p.acks.clone();
        let (converged, reason) = if v2p.converged {
            (ConditionStatus::True, Reason::V2PApplied)
        } else {
            (ConditionStatus::False, Reason::V2PPending)
        };
        condition::set(
            &mut status.conditions,
            SledConditionType::V2PConverged,
            converged,
            reason,
            v2p.message.clone(),
            now,
        );
    }
    status
}

/// Creates the Sled named `name` unless it exists; returns it as stored.
pub async fn register(
    api: &Api<Sled>,
    name: &str,
    spec: SledSpec,
    labels: &BTreeMap<String, String>,
) -> Result<Sled, kube::Error> {
    if let Some(sled) = api.get_opt(name).await? {
        return Ok(sled);
    }
    let sled = Sled {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: (!labels.is_empty()).then(|| labels.clone()),
            ..Default::default()
        },
        spec,
        status: None,
    };
    match api
        .create(&PostParams::default(), &sled)
        .await
        .or_exists()?
    {
        Some(created) => Ok(created),
        None => api.get(name).await,
    }
}

/// Keeps `Sled.status` up to date (see the module docs).
pub struct SledReporter {
    api: Api<Sled>,
    name: String,
    min_interval: Duration,
    /// The wanted report and its sequence number (bumped on every change).
    wanted: Mutex<(u64, SledReport)>,
    /// The Sled as the last write (or read) returned it.
    stored: Mutex<Sled>,
    changed: Notify,
    /// The sequence number of the last report written.
    written: watch::Sender<u64>,
    /// The next write skips the debounce (`update_now`).
    urgent: AtomicBool,
    hurry: Notify,
    /// The run's alarm: raised when a write finds the sled fenced, and then nothing is written.
    fence: Arc<FenceAlarm>,
}

impl SledReporter {
    pub fn new(
        api: Api<Sled>,
        sled: Sled,
        report: SledReport,
        min_interval: Duration,
        fence: Arc<FenceAlarm>,
    ) -> Self {
        SledReporter {
            api,
            name: sled.metadata.name.clone().unwrap_or_default(),
            min_interval,
            wanted: Mutex::new((1, report)),
            stored: Mutex::new(sled),
            changed: Notify::new(),
            written: watch::channel(0).0,
            urgent: AtomicBool::new(false),
            hurry: Notify::new(),
            fence,
        }
    }

    /// The Sled as last stored (for Event references).
    pub fn sled(&self) -> Sled {
        self.stored.lock().expect("sled lock").clone()
    }

    /// Changes the wanted report; wakes the writer if anything differs.
    pub fn update(&self, change: impl FnOnce(&mut SledReport)) {
        if self.change(change) {
            self.changed.notify_one();
        }
    }

    /// Changes the wanted report and has it written without waiting for the debounce.
    pub fn update_now(&self, change: impl FnOnce(&mut SledReport)) {
        if self.change(change) {
            self.urgent.store(true, Ordering::Release);
            self.changed.notify_one();
            self.hurry.notify_one();
        }
    }

    /// Applies `change` to the wanted report; whether it changed anything.
    fn change(&self, change: impl FnOnce(&mut SledReport)) -> bool {
        let mut wanted = self.wanted.lock().expect("report lock");
        let mut report = wanted.1.clone();
        change(&mut report);
        if report == wanted.1 {
            return false;
        }
        wanted.0 += 1;
        wanted.1 = report;
        true
    }

    /// Waits (at most `bound`) until the report as it is now has been written.
    pub async fn flush(&self, bound: Duration) {
        let target = self.wanted.lock().expect("report lock").0;
        let mut written = self.written.subscribe();
        let _ = tokio::time::timeout(bound, written.wait_for(|seq| *seq >= target)).await;
    }

    /// Writes the wanted report now.
    pub async fn write_now(&self) -> Result<(), kube::Error> {
        let (seq, report) = self.wanted.lock().expect("report lock").clone();
        self.write(&report).await?;
        self.written.send_replace(seq);
        Ok(())
    }

    /// The writer: at most one write per `min_interval`, only when the report changed.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut last_write = Instant::now();
        loop {
            let pending = self.wanted.lock().expect("report lock").0 > *self.written.borrow();
            if !pending {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.changed.notified() => continue,
                }
            }
            if !self.urgent.load(Ordering::Acquire) {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(last_write + self.min_interval) => {}
                    _ = self.hurry.notified() => {}
                }
            }
            self.urgent.store(false, Ordering::Release);
            // Everything that changed while waiting goes out in this one write.
            let (seq, report) = self.wanted.lock().expect("report lock").clone();
            last_write = Instant::now();
            match self.write(&report).await {
                Ok(()) => {
                    self.written.send_replace(seq);
                }
                Err(error) => tracing::warn!(%error, sled = %self.name, "writing the sled status"),
            }
        }
    }

    async fn write(&self, report: &SledReport) -> Result<(), kube::Error> {
        let mut base = self.sled();
        for attempt in 0..2 {
            if self.fence.is_raised() {
                return Ok(());
            }
            if base.epoch() > report.epoch {
                self.fence
                    .raise(base.epoch(), "the Sled's epoch is above this run's");
                return Ok(());
            }
            let status = render_status(base.status.as_ref(), report, corral_client::clock::now());
            let mut body = serde_json::to_value(&status).expect("a status serializes");
            // A merge patch keeps what it does not mention: clear emptied fields explicitly.
            if status.agent_address.is_none() {
                body["agentAddress"] = serde_json::Value::Null;
            }
            if status.unknown_vmms.is_empty() {
                body["unknownVmms"] = serde_json::Value::Null;
            }
            if status.v2p.is_empty() {
                body["v2p"] = serde_json::Value::Null;
            }
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": base.metadata.resource_version },
                "status": body,
            });
            match self
                .api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(stored) => {
                    *self.stored.lock().expect("sled lock") = stored;
                    return Ok(());
                }
                Err(error) if refuses_epoch(&error) => {
                    self.fence
                        .raise(report.epoch + 1, "the API refused the run's epoch");
                    return Ok(());
                }
                // A stale write: read the Sled again and write once more.
                Err(error) if is_conflict(&error) && attempt == 0 => {
                    base = self.api.get(&self.name).await?;
                    *self.stored.lock().expect("sled lock") = base.clone();
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the second attempt returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_crds::{HealthVerdict, SledHealth};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn report() -> SledReport {
        SledReport {
            capacity: Resources {
                cpus: 8,
                memory_mib: 8192,
            },
            allocated: Resources {
                cpus: 2,
                memory_mib: 1024,
            },
            vmms: 1,
            epoch: 3,
            agent_version: "0.1.0".into(),
            agent_address: Some("127.0.0.1:9000".into()),
            hypervisor: "sim".into(),
            migration_bandwidth: 1_250_000_000,
            migration_downtime_budget_ms: 300,
            diverged: Divergence::converged(),
            running: true,
            unknown: Vec::new(),
            v2p: None,
        }
    }

    #[test]
    fn the_status_keeps_other_writers_conditions_and_transition_times() {
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        let t1 = jiff::Timestamp::from_second(2_000).unwrap();
        let first = render_status(None, &report(), t0);
        assert!(condition::is_true(
            &first.conditions,
            SledConditionType::Ready
        ));
        assert_eq!(first.epoch, 3);
        let mut base = first.clone();
        condition::set(
            &mut base.conditions,
            SledConditionType::Fenced,
            ConditionStatus::False,
            Reason::Converged,
            "",
            t0,
        );
        let mut diverged = report();
        diverged.diverged = Divergence {
            status: ConditionStatus::True,
            reason: Reason::UnknownVmm,
            message: "x".into(),
        };
        let second = render_status(Some(&base), &diverged, t1);
        assert!(condition::find(&second.conditions, SledConditionType::Fenced).is_some());
        let ready = condition::find(&second.conditions, SledConditionType::Ready).unwrap();
        assert_eq!(ready.last_transition_time, Time(t0));
        let divergence = condition::find(&second.conditions, SledConditionType::Diverged).unwrap();
        assert_eq!(divergence.reason, Reason::UnknownVmm);
        assert_eq!(divergence.last_transition_time, Time(t1));
    }

    #[test]
    fn the_v2p_acknowledgements_and_condition_are_reported_only_when_known() {
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        let unknown = render_status(None, &report(), t0);
        assert!(unknown.v2p.is_empty());
        assert!(condition::find(&unknown.conditions, SledConditionType::V2PConverged).is_none());
        let mut pending = report();
        pending.v2p = Some(V2pReport {
            acks: vec![V2pAck {
                vpc: "blue".into(),
                generation: 4,
            }],
            converged: false,
            message: "not yet applied: blue".into(),
        });
        let status = render_status(Some(&unknown), &pending, t0);
        assert_eq!(status.v2p, pending.v2p.as_ref().unwrap().acks);
        let converged =
            condition::find(&status.conditions, SledConditionType::V2PConverged).unwrap();
        assert_eq!(
            (converged.status, converged.reason),
            (ConditionStatus::False, Reason::V2PPending)
        );
        pending.v2p.as_mut().unwrap().converged = true;
        let status = render_status(Some(&status), &pending, t0);
        assert!(condition::is_true(
            &status.conditions,
            SledConditionType::V2PConverged
        ));
        // A report without V2P keeps what the Sled shows.
        let kept = render_status(Some(&status), &report(), t0);
        assert_eq!(kept.v2p, status.v2p);
    }

    #[test]
    fn a_running_agent_keeps_the_expired_heartbeat_verdict_and_a_stop_overrides_it() {
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        let t1 = jiff::Timestamp::from_second(2_000).unwrap();
        let mut base = render_status(None, &report(), t0);
        condition::set(
            &mut base.conditions,
            SledConditionType::Ready,
            ConditionStatus::False,
            Reason::HeartbeatExpired,
            "the Lease expired",
            t0,
        );
        let running = render_status(Some(&base), &report(), t1);
        let ready = condition::find(&running.conditions, SledConditionType::Ready).unwrap();
        assert_eq!(
            (ready.status, ready.reason),
            (ConditionStatus::False, Reason::HeartbeatExpired)
        );
        let mut stopped = report();
        stopped.running = false;
        let stopped = render_status(Some(&base), &stopped, t1);
        let ready = condition::find(&stopped.conditions, SledConditionType::Ready).unwrap();
        assert_eq!(
            (ready.status, ready.reason),
            (ConditionStatus::False, Reason::AgentStopped)
        );
    }

    #[test]
    fn the_status_keeps_the_health_verdict_and_never_lowers_the_epoch() {
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        let mut base = render_status(None, &report(), t0);
        base.epoch = 7;
        base.health = Some(SledHealth {
            verdict: HealthVerdict::Fenced,
            reason: Reason::FencedByPowerOff,
            message: String::new(),
            since: Time(t0),
            last_renew: None,
            fenced_epoch: Some(7),
            evacuation: None,
        });
        let status = render_status(Some(&base), &report(), t0);
        assert_eq!(status.health, base.health);
        assert_eq!(status.epoch, 7);
        let mut rejoined = report();
        rejoined.epoch = 8;
        assert_eq!(render_status(Some(&base), &rejoined, t0).epoch, 8);
    }
}
