//! One VMM of the QEMU driver: its record on disk, its process, its monitor and its guest
//! channel, and what they add up to ([`Vmm::info`]).
//!
//! # The record (`vmm.json` in the VMM's directory)
//! The launch, whether it was created to receive a migration (and has been resumed since),
//! when a stop was asked for, and how it ended if its process is gone because it ended (a stop
//! that had to kill it, a stop of a guest that was not running). It is written before the
//! change it describes is made, so an agent that restarts reads what it was doing.
//!
//! # The state, from what QEMU says (`query-status`) and what the guest says
//! | QEMU | VMM |
//! |---|---|
//! | process gone, no end recorded | does not exist (killed behind the agent's back) |
//! | process gone, end recorded | `Exited(<recorded>)` |
//! | `shutdown` | `Exited(Stopped)` if a stop was asked for, else `Exited(GuestShutdown)` |
//! | `guest-panicked`, `internal-error` | `Exited(GuestCrashed)` |
//! | `inmigrate`, `prelaunch`, or paused before its first resume when receiving | `Receiving` |
//! | `paused`, `postmigrate`, `finish-migrate`, … | `Paused` |
//! | `running`, a stop asked for | `Stopping` |
//! | `running`, the guest said `ready` or beat since its boot | `Running` |
//! | `running`, otherwise | `Starting` |
//!
//! A running guest that has said nothing for [`guest::HUNG_AFTER`], or a monitor that does not
//! answer, makes the VMM unresponsive.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::guest::{self, Channel};
use super::process::{self, Pid, Spec};
use super::qmp::{Event, Qmp, QmpError};
use crate::hypervisor::{
    ExitReason, GuestTransfer, HypervisorError, TransferPhase, VmmId, VmmInfo, VmmLaunch,
    VmmRunState,
};

/// The record file.
pub const RECORD: &str = "vmm.json";

/// How long a new QEMU process may take to open its monitor.
const MONITOR_BOUND: Duration = Duration::from_secs(10);

/// How soon a VMM in transition (booting, stopping) is looked at again.
const SETTLE_CHECK: Duration = Duration::from_millis(100);

/// What is kept on disk about a VMM (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub launch: VmmLaunch,
    pub receiving: bool,
    #[serde(default)]
    pub resumed: bool,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub stop_requested_at: Option<i64>,
    #[serde(default)]
    pub ended: Option<ExitReason>,
}

/// A VMM the driver runs or ran.
pub struct Vmm {
    dir: PathBuf,
    record: Mutex<Record>,
    pid: Option<Pid>,
    qmp: Option<Qmp>,
    channel: Channel,
    seen: Arc<Seen>,
}

/// What the monitor's events told, shared with its event callback.
#[derive(Default)]
struct Seen {
    /// The agent asked the guest to stop: its power-off is not a guest's own.
    stopping: AtomicBool,
    /// When the outgoing migration paused the guest for the last round (QEMU's clock, from
    /// the `MIGRATION` event's timestamp).
    paused_at: Mutex<Option<jiff::Timestamp>>,
    /// Woken by every `MIGRATION` event (a step of a transfer).
    migration_steps: tokio::sync::Notify,
}

impl Vmm {
    /// Starts a new VMM: writes its record, starts QEMU and connects to its monitor.
    pub async fn start(
        spec: &Spec<'_>,
        vmms_die_with: Option<u32>,
        changes: broadcast::Sender<VmmId>,
    ) -> Result<Vmm, HypervisorError> {
        std::fs::create_dir_all(spec.dir).map_err(|source| persist(spec.dir, source))?;
        let record = Record {
            launch: spec.launch.clone(),
            receiving: spec.receiving,
            resumed: false,
            stop_requested_at: None,
            ended: None,
        };
        write_record(spec.dir, &record)?;
        process::spawn(spec, vmms_die_with).map_err(|source| persist(spec.dir, source))?;
        let deadline = Instant::now() + MONITOR_BOUND;
        let seen = Arc::new(Seen::default());
        let qmp = loop {
            match connect(spec.dir, &spec.launch.id, &changes, &seen).await {
                Ok(qmp) => break qmp,
                Err(error) if Instant::now() >= deadline => {
                    return Err(HypervisorError::Start {
                        id: spec.launch.id.clone(),
                        why: format!(
                            "{error}; see {}",
                            spec.dir.join(process::QEMU_LOG).display()
                        ),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Ok(Vmm {
            pid: Pid::read(spec.dir),
            channel: Channel::open(
                spec.dir.join(process::SERIAL),
                spec.dir.join(process::SERIAL_LOG),
                false,
            ),
            dir: spec.dir.to_path_buf(),
            record: Mutex::new(record),
            qmp: Some(qmp),
            seen,
        })
    }

    /// Re-attaches to the VMM recorded in `dir` (an agent restart): `None` if there is no
    /// record, or if its process is gone without a recorded end (it was killed meanwhile; its
    /// directory is removed).
    pub async fn attach(dir: &Path, changes: broadcast::Sender<VmmId>) -> Option<Vmm> {
        let record: Record = serde_json::from_slice(&std::fs::read(dir.join(RECORD)).ok()?).ok()?;
        let pid = Pid::read(dir).filter(|pid| pid.is_vmm(&record.launch));
        if pid.is_none() && record.ended.is_none() {
            remove_dir(dir);
            return None;
        }
        let seen = Arc::new(Seen {
            stopping: AtomicBool::new(record.stop_requested_at.is_some()),
            ..Seen::default()
        });
        let qmp = match pid {
            Some(_) => connect(dir, &record.launch.id, &changes, &seen).await.ok(),
            None => None,
        };
        let booted = !record.receiving || record.resumed;
        Some(Vmm {
            channel: Channel::open(
                dir.join(process::SERIAL),
                dir.join(process::SERIAL_LOG),
                booted,
            ),
            dir: dir.to_path_buf(),
            record: Mutex::new(record),
            pid,
            qmp,
            seen,
        })
    }

    pub fn launch(&self) -> VmmLaunch {
        self.record.lock().expect("record lock").launch.clone()
    }

    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    pub fn guest(&self) -> guest::Seen {
        self.channel.seen()
    }

    /// Sends a line to the guest (docs/qemu.md, "The guest"); false if it cannot be heard.
    pub async fn tell_guest(&self, command: &str) -> bool {
        self.channel.send(command).await
    }

    /// What the VMM is now (see the module docs); `None` if it no longer exists. Ends a stop
    /// that outlived `stop_timeout` by killing the process.
    pub async fn info(&self, stop_timeout: Duration) -> Option<VmmInfo> {
        let record = self.record.lock().expect("record lock").clone();
        let alive = self.pid.is_some_and(|pid| pid.is_vmm(&record.launch));
        let (state, responsive) = match (record.ended, alive) {
            (Some(reason), _) => (VmmRunState::Exited(reason), true),
            (None, false) => return None,
            (None, true) => match self.status().await {
                Ok(status) => (self.state(&record, &status), true),
                Err(_) => (self.unanswered_state(&record), false),
            },
        };
        if let Some(ended) = self.stop_overdue(&record, state, stop_timeout).await {
            return Some(self.info_of(record.launch, VmmRunState::Exited(ended), true));
        }
        let seen = self.channel.seen();
        let silent = seen
            .last_line
            .is_none_or(|last| last.elapsed() > guest::HUNG_AFTER);
        let hung = state == VmmRunState::Running && silent && self.running_for_a_while();
        Some(self.info_of(record.launch, state, responsive && !hung))
    }

    fn info_of(&self, launch: VmmLaunch, state: VmmRunState, responsive: bool) -> VmmInfo {
        let settles_in =
            matches!(state, VmmRunState::Starting | VmmRunState::Stopping).then_some(SETTLE_CHECK);
        VmmInfo {
            launch,
            state,
            responsive,
            settles_in,
            dirty_bytes_per_second: self.channel.seen().dirty,
        }
    }

    /// Whether the channel has had time to hear a beat (it restarts with the agent).
    fn running_for_a_while(&self) -> bool {
        self.channel.started().elapsed() > guest::HUNG_AFTER
    }

    async fn status(&self) -> Result<String, QmpError> {
        let qmp = self.qmp.as_ref().ok_or(QmpError::Closed)?;
        let answer = qmp.execute("query-status", None).await?;
        Ok(answer
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    fn state(&self, record: &Record, status: &str) -> VmmRunState {
        let stop_asked = record.stop_requested_at.is_some();
        match status {
            "shutdown" if stop_asked => VmmRunState::Exited(ExitReason::Stopped),
            "shutdown" => VmmRunState::Exited(ExitReason::GuestShutdown),
            "guest-panicked" | "internal-error" | "io-error" => {
                VmmRunState::Exited(ExitReason::GuestCrashed)
            }
            "inmigrate" | "prelaunch" => VmmRunState::Receiving,
            "paused" if record.receiving && !record.resumed => VmmRunState::Receiving,
            "running" if stop_asked => VmmRunState::Stopping,
            "running" if self.channel.seen().booted => VmmRunState::Running,
            "running" => VmmRunState::Starting,
            _ => VmmRunState::Paused,
        }
    }

    /// The state of a VMM whose monitor does not answer: what it was asked to become.
    fn unanswered_state(&self, record: &Record) -> VmmRunState {
        if record.stop_requested_at.is_some() {
            VmmRunState::Stopping
        } else if record.receiving && !record.resumed {
            VmmRunState::Receiving
        } else {
            VmmRunState::Running
        }
    }

    async fn stop_overdue(
        &self,
        record: &Record,
        state: VmmRunState,
        stop_timeout: Duration,
    ) -> Option<ExitReason> {
        let asked = record.stop_requested_at?;
        if matches!(state, VmmRunState::Exited(_)) {
            return None;
        }
        let waited = jiff::Timestamp::now().as_millisecond() - asked;
        if waited < stop_timeout.as_millis() as i64 {
            return None;
        }
        tracing::info!(vmm = %record.launch.id, "the guest did not stop in time: killing it");
        self.end(ExitReason::Stopped).await.ok()
    }

    /// Records that the VMM ended for `reason`, then kills its process.
    pub async fn end(&self, reason: ExitReason) -> Result<ExitReason, HypervisorError> {
        self.update(|record| record.ended = Some(reason))?;
        if let Some(pid) = self.pid {
            pid.kill(&self.launch(), Duration::from_secs(5)).await;
        }
        Ok(reason)
    }

    /// Asks the guest to stop (the ACPI power button), recording when.
    pub async fn ask_to_stop(&self) -> Result<(), HypervisorError> {
        self.seen.stopping.store(true, Ordering::Release);
        self.update(|record| {
            record.stop_requested_at = Some(jiff::Timestamp::now().as_millisecond());
        })?;
        self.execute("system_powerdown", None).await.map(|_| ())
    }

    /// Resets the guest: it is `Starting` until it says `ready` again.
    pub async fn reset(&self) -> Result<(), HypervisorError> {
        self.channel.reset();
        self.execute("system_reset", None).await.map(|_| ())
    }

    pub async fn pause(&self) -> Result<(), HypervisorError> {
        self.execute("stop", None).await.map(|_| ())
    }

    /// Runs the guest again; a received guest counts as booted from here on. A source paused
    /// by an unfinished migration (an abort) gives the migration up first.
    pub async fn resume(&self) -> Result<(), HypervisorError> {
        if let Ok(transfer) = self.transfer().await
            && matches!(
                transfer.phase,
                TransferPhase::Copying
                    | TransferPhase::AwaitingSwitchover
                    | TransferPhase::Finishing
            )
        {
            self.cancel_sending().await?;
        }
        self.execute("cont", None).await?;
        let received = self.update(|record| {
            if record.receiving {
                record.resumed = true;
            }
        })?;
        if received.receiving {
            self.channel.mark_booted();
        }
        Ok(())
    }

    /// Listens for an incoming migration on a free loopback port; the URI the source sends to.
    pub async fn listen(&self) -> Result<String, HypervisorError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|source| persist(&self.dir, source))?
            .port();
        let uri = format!("tcp:127.0.0.1:{port}");
        self.execute("migrate-incoming", Some(json!({"uri": uri})))
            .await?;
        Ok(uri)
    }

    /// Starts a migration to `to`: QEMU pauses the guest when the rest fits `downtime` and
    /// waits in `pre-switchover` for [`Vmm::finish_sending`].
    pub async fn send(
        &self,
        to: &str,
        bandwidth: u64,
        downtime: Duration,
    ) -> Result<(), HypervisorError> {
        *self.seen.paused_at.lock().expect("seen lock") = None;
        self.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [
                {"capability": "pause-before-switchover", "state": true},
                {"capability": "events", "state": true},
            ]})),
        )
        .await?;
        self.execute(
            "migrate-set-parameters",
            Some(json!({
                "max-bandwidth": bandwidth,
                "downtime-limit": downtime.as_millis() as u64,
            })),
        )
        .await?;
        self.execute("migrate", Some(json!({"uri": to})))
            .await
            .map(|_| ())
    }

    /// Where the outgoing migration is (`query-migrate`).
    pub async fn transfer(&self) -> Result<GuestTransfer, HypervisorError> {
        let answer = self.execute("query-migrate", None).await?;
        let status = answer
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("none");
        let ram = answer.get("ram").cloned().unwrap_or(Value::Null);
        let number =
            |value: &Value, field: &str| value.get(field).and_then(Value::as_u64).unwrap_or(0);
        let phase = match status {
            "setup" | "active" => TransferPhase::Copying,
            "pre-switchover" => TransferPhase::AwaitingSwitchover,
            "device" => TransferPhase::Finishing,
            "completed" => TransferPhase::Completed,
            other => TransferPhase::Failed(format!(
                "migration {other}: {}",
                answer
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            )),
        };
        let downtime_ms = if phase == TransferPhase::Completed {
            number(&answer, "downtime")
        } else {
            number(&answer, "expected-downtime")
        };
        Ok(GuestTransfer {
            phase,
            memory_bytes: number(&ram, "total"),
            bytes_sent: number(&ram, "transferred"),
            bytes_remaining: number(&ram, "remaining"),
            dirty_bytes_per_second: number(&ram, "dirty-pages-rate") * number(&ram, "page-size"),
            round: number(&ram, "dirty-sync-count").max(1) as u32,
            downtime_ms,
            paused_at: *self.seen.paused_at.lock().expect("seen lock"),
        })
    }

    /// Returns at the next step of a transfer (a `MIGRATION` event), or after `bound`.
    pub async fn transfer_changed(&self, bound: Duration) {
        let _ = tokio::time::timeout(bound, self.seen.migration_steps.notified()).await;
    }

    /// Sends the rest of the paused guest.
    pub async fn finish_sending(&self) -> Result<(), HypervisorError> {
        self.execute("migrate-continue", Some(json!({"state": "pre-switchover"})))
            .await
            .map(|_| ())
    }

    /// Gives up the outgoing migration.
    pub async fn cancel_sending(&self) -> Result<(), HypervisorError> {
        self.execute("migrate_cancel", None).await.map(|_| ())
    }

    /// Kills the process and removes the directory.
    pub async fn remove(&self) {
        if let Some(pid) = self.pid {
            pid.kill(&self.launch(), Duration::from_secs(5)).await;
        }
        remove_dir(&self.dir);
    }

    async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, HypervisorError> {
        let id = self.launch().id;
        let qmp = self
            .qmp
            .as_ref()
            .ok_or_else(|| HypervisorError::NotFound(id.clone()))?;
        qmp.execute(command, arguments)
            .await
            .map_err(|error| HypervisorError::Monitor {
                id,
                why: error.to_string(),
            })
    }

    fn update(&self, change: impl FnOnce(&mut Record)) -> Result<Record, HypervisorError> {
        let mut record = self.record.lock().expect("record lock");
        change(&mut record);
        write_record(&self.dir, &record)?;
        Ok(record.clone())
    }
}

/// Connects to the monitor of the VMM in `dir`; its events announce the VMM's own ends.
async fn connect(
    dir: &Path,
    id: &VmmId,
    changes: &broadcast::Sender<VmmId>,
    seen: &Arc<Seen>,
) -> Result<Qmp, QmpError> {
    let id = id.clone();
    let changes = changes.clone();
    let seen = seen.clone();
    Qmp::connect(&dir.join(process::QMP), move |event| {
        let announce = match &event {
            Event::Gone => true,
            Event::Qemu { name, .. } if name == "GUEST_PANICKED" => true,
            Event::Qemu { name, data, .. } if name == "SHUTDOWN" => {
                data.get("guest") == Some(&json!(true)) && !seen.stopping.load(Ordering::Acquire)
            }
            Event::Qemu { name, data, at } if name == "MIGRATION" => {
                if data.get("status").and_then(Value::as_str) == Some("pre-switchover") {
                    *seen.paused_at.lock().expect("seen lock") = *at;
                }
                seen.migration_steps.notify_one();
                false
            }
            Event::Qemu { .. } => false,
        };
        if announce {
            let _ = changes.send(id.clone());
        }
    })
    .await
}

fn write_record(dir: &Path, record: &Record) -> Result<(), HypervisorError> {
    let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
    let temporary = dir.join(format!("{RECORD}.new"));
    std::fs::write(&temporary, bytes)
        .and_then(|()| std::fs::rename(&temporary, dir.join(RECORD)))
        .map_err(|source| persist(dir, source))
}

fn persist(dir: &Path, source: std::io::Error) -> HypervisorError {
    HypervisorError::Persist {
        path: dir.display().to_string(),
        source,
    }
}

fn remove_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, dir = %dir.display(), "removing a VMM's directory");
    }
}
