//! `SimHypervisor`: a simulated machine that runs VMMs, with fault injection.
//!
//! The machine is its power state, its boot id and the VMMs it runs. It lives in
//! `DATA_DIR/machine.json` so that it outlives the node-agent process that drives it: VMMs are
//! separate processes in the real world, and a killed agent must find them still running when
//! it comes back. Powering the machine off destroys its VMMs; powering it on gives it a new
//! boot id.
//!
//! # Timing
//! A VMM boots for [`SimTiming::boot_time`] and stops for [`SimTiming::stop_time`], measured
//! with `tokio::time`, so paused-time tests advance them. Transitions are *settled lazily*:
//! every call first moves each VMM whose deadline has passed to its next state. No background
//! task runs; a caller that wants to see a boot finish looks again after
//! [`VmmInfo::settles_in`].
//!
//! # Guarantees
//! - Every change to the set of VMMs or to an ended VMM is written to `machine.json` (through a
//!   temporary file and a rename, so a reader sees the old or the new machine, never half) before
//!   the call returns. A transition settling on its own (a boot completing, a stop ending) is
//!   not written: reloading the file settles it the same way.
//! - A machine reloaded from its file settles transitions that were under way (a boot
//!   completes, a stop ends); deadlines are not persisted.
//! - Pausing and resuming a guest, creating a VMM that receives a live migration, and a dirty
//!   rate set through the fault API are written too: a reloaded machine keeps a paused or
//!   receiving VMM as it was (no guest runs until the agent resumes it).
//! - Faults ([`SimHypervisor::crash`], [`SimHypervisor::guest_shutdown`],
//!   [`SimHypervisor::kill`], [`SimHypervisor::spawn_unknown`]) are announced on `changes()`.
//! - A frozen machine ([`SimHypervisor::freeze`], the whole sled hangs with power on) changes
//!   nothing: no transition settles, and every call of its agent (the `Hypervisor` trait) waits
//!   until [`SimHypervisor::thaw`], which shifts the deadlines under way by the time it hung,
//!   so it continues where it stopped. Power off still works, and ends the hang.
//!   [`SimHypervisor::observe`] answers even then (what the power controller sees).
//!
//! # Assumptions
//! - One `SimHypervisor` per data directory at a time (nothing locks the file).
//! - The file is small (one entry per VMM); writing it synchronously under the lock is cheaper
//!   than handing it to a blocking thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use corral_crds::Resources;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::hypervisor::{
    BootId, ExitReason, Hypervisor, HypervisorError, VmmId, VmmInfo, VmmLaunch, VmmRunState,
};
use crate::power::PowerState;
use crate::sim::switch::Switch;

/// The machine file's name in the sled's data directory.
pub const MACHINE_FILE: &str = "machine.json";

/// How long simulated VMMs take to boot and to stop, how fast their guests dirty memory, and
/// how fast the machine's migration link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimTiming {
    pub boot_time: Duration,
    pub stop_time: Duration,
    /// The dirty rate of a guest nobody set one for, bytes per second.
    pub dirty_bytes_per_second: u64,
    /// The migration link's bandwidth, bytes per second (shared by outgoing migrations).
    pub migration_bandwidth: u64,
    /// The longest pause a migration out of the machine plans for.
    pub downtime_budget: Duration,
}

/// 32 MiB/s: a mostly idle guest.
pub const DEFAULT_DIRTY_RATE: u64 = 32 * 1024 * 1024;
/// 10 Gbit/s.
pub const DEFAULT_MIGRATION_BANDWIDTH: u64 = 1_250_000_000;

impl Default for SimTiming {
    fn default() -> Self {
        SimTiming {
            boot_time: Duration::from_secs(1),
            stop_time: Duration::from_millis(500),
            dirty_bytes_per_second: DEFAULT_DIRTY_RATE,
            migration_bandwidth: DEFAULT_MIGRATION_BANDWIDTH,
            downtime_budget: corral_crds::migration::DOWNTIME_BUDGET,
        }
    }
}

/// A VMM that no Vmm assigns, for [`SimHypervisor::spawn_unknown`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnknownVmm {
    /// The namespace of the instance it claims to be, if any.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The instance it claims to be, if any.
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub resources: Resources,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Machine {
    pub(super) power: PowerState,
    boot_id: BootId,
    pub(super) vmms: BTreeMap<VmmId, SimVmm>,
    /// Since when the machine hangs (not persisted).
    #[serde(skip)]
    frozen_since: Option<Instant>,
}

impl Machine {
    /// The VMM `id`, or [`HypervisorError::NotFound`].
    fn vmm_mut(&mut self, id: &VmmId) -> Result<&mut SimVmm, HypervisorError> {
        self.vmms
            .get_mut(id)
            .ok_or_else(|| HypervisorError::NotFound(id.clone()))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SimVmm {
    pub(super) launch: VmmLaunch,
    pub(super) state: VmmRunState,
    responsive: bool,
    /// When the transition under way ends. Not persisted: a reloaded machine settles at once.
    #[serde(skip)]
    settles_at: Option<Instant>,
    /// The guest's dirty rate when set through the fault API; `SimTiming`'s otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dirty_rate: Option<u64>,
}

impl SimVmm {
    fn info(&self, now: Instant, timing: &SimTiming) -> VmmInfo {
        VmmInfo {
            launch: self.launch.clone(),
            state: self.state,
            responsive: self.responsive,
            settles_in: self
                .settles_at
                .filter(|_| self.responsive)
                .map(|at| at.saturating_duration_since(now)),
            dirty_bytes_per_second: self.dirty_rate.unwrap_or(timing.dirty_bytes_per_second),
        }
    }
}

/// A simulated machine (see the module docs).
pub struct SimHypervisor {
    path: PathBuf,
    timing: SimTiming,
    capacity: Resources,
    machine: Mutex<Machine>,
    changes: broadcast::Sender<VmmId>,
    /// On while the machine hangs: the agent's calls wait on it.
    frozen: Switch,
}

impl std::fmt::Debug for SimHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHypervisor")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SimHypervisor {
    /// Opens the machine kept in `data_dir` (creating the directory), or a new machine that is
    /// powered off.
    pub fn open(
        data_dir: &Path,
        timing: SimTiming,
        capacity: Resources,
    ) -> Result<Arc<SimHypervisor>, HypervisorError> {
        let path = data_dir.join(MACHINE_FILE);
        std::fs::create_dir_all(data_dir).map_err(|source| HypervisorError::Persist {
            path: data_dir.display().to_string(),
            source,
        })?;
        let machine = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut machine: Machine =
                    serde_json::from_slice(&bytes).map_err(|source| HypervisorError::Load {
                        path: path.display().to_string(),
                        source: Box::new(source),
                    })?;
                settle_reloaded(&mut machine);
                machine
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Machine {
                power: PowerState::Off,
                boot_id: BootId::random(),
                vmms: BTreeMap::new(),
                frozen_since: None,
            },
            Err(source) => {
                return Err(HypervisorError::Load {
                    path: path.display().to_string(),
                    source: Box::new(source),
                });
            }
        };
        let (changes, _) = broadcast::channel(1024);
        Ok(Arc::new(SimHypervisor {
            path,
            timing,
            capacity,
            machine: Mutex::new(machine),
            changes,
            frozen: Switch::default(),
        }))
    }

    pub fn power(&self) -> PowerState {
        self.lock().power
    }

    pub fn is_on(&self) -> bool {
        self.power() == PowerState::On
    }

    /// Powers the machine on with a new boot id and no VMMs. Already on: nothing changes.
    pub fn power_on(&self) -> Result<BootId, HypervisorError> {
        let mut machine = self.lock();
        if machine.power == PowerState::On {
            return Ok(machine.boot_id);
        }
        machine.power = PowerState::On;
        machine.boot_id = BootId::random();
        machine.vmms.clear();
        machine.frozen_since = None;
        self.frozen.set(false);
        self.persist(&machine)?;
        tracing::info!(path = %self.path.display(), boot_id = %machine.boot_id, "machine powered on");
        Ok(machine.boot_id)
    }

    /// Cuts the power: every VMM is gone at once. Already off: nothing changes.
    pub fn power_off(&self) -> Result<(), HypervisorError> {
        let mut machine = self.lock();
        if machine.power == PowerState::Off {
            return Ok(());
        }
        machine.power = PowerState::Off;
        machine.vmms.clear();
        // The hang ends with the power; its agent stays frozen until it dies with the power
        // (`power.rs`), so that it sends nothing it waited to send.
        machine.frozen_since = None;
        self.persist(&machine)?;
        tracing::info!(path = %self.path.display(), "machine powered off");
        Ok(())
    }

    /// Fault: the whole machine hangs with power on (see the module docs). Already frozen:
    /// nothing changes.
    pub fn freeze(&self) -> Result<(), HypervisorError> {
        let mut machine = self.powered()?;
        if machine.frozen_since.is_none() {
            machine.frozen_since = Some(Instant::now());
            self.frozen.set(true);
            tracing::info!(path = %self.path.display(), "machine hangs");
        }
        Ok(())
    }

    /// Ends a hang: the machine continues where it stopped. Not frozen: nothing changes.
    pub fn thaw(&self) -> Result<(), HypervisorError> {
        let mut machine = self.lock();
        if let Some(since) = machine.frozen_since.take() {
            let hung = Instant::now().saturating_duration_since(since);
            for vmm in machine.vmms.values_mut() {
                vmm.settles_at = vmm.settles_at.map(|at| at + hung);
            }
            tracing::info!(path = %self.path.display(), ?hung, "machine resumes");
        }
        self.frozen.set(false);
        Ok(())
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.is_on()
    }

    /// The switch that is on while the machine hangs (the sled's other doors wait on it).
    pub fn frozen(&self) -> &Switch {
        &self.frozen
    }

    /// What the machine runs now, seen from outside it: answers even while it hangs (and then
    /// shows it as it stopped). Empty when it is off.
    pub fn observe(&self) -> Vec<VmmInfo> {
        let Ok(machine) = self.powered() else {
            return Vec::new();
        };
        let now = Instant::now();
        machine
            .vmms
            .values()
            .map(|vmm| vmm.info(now, &self.timing))
            .collect()
    }

    /// The id of the VMM that runs Vmm `namespace/name`, if one does.
    pub fn find(&self, namespace: &str, name: &str) -> Option<VmmId> {
        let machine = self.lock();
        machine
            .vmms
            .values()
            .find(|vmm| vmm.launch.namespace == namespace && vmm.launch.name == name)
            .map(|vmm| vmm.launch.id.clone())
    }

    /// Fault: the guest crashes (`Exited(GuestCrashed)`).
    pub fn crash(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.end(id, ExitReason::GuestCrashed)
    }

    /// Fault: the guest shuts itself down (`Exited(GuestShutdown)`).
    pub fn guest_shutdown(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.end(id, ExitReason::GuestShutdown)
    }

    /// Fault: the VMM is killed behind the control plane's back and vanishes.
    pub fn kill(&self, id: &VmmId) -> Result<(), HypervisorError> {
        {
            let mut machine = self.powered()?;
            if machine.vmms.remove(id).is_none() {
                return Err(HypervisorError::NotFound(id.clone()));
            }
            self.persist(&machine)?;
        }
        let _ = self.changes.send(id.clone());
        Ok(())
    }

    /// Fault: the VMM stops answering; stop and reboot go unheeded, destroy still works.
    pub fn hang(&self, id: &VmmId) -> Result<(), HypervisorError> {
        let mut machine = self.powered()?;
        let vmm = machine.vmm_mut(id)?;
        vmm.responsive = false;
        self.persist(&machine)
    }

    /// Fault: a VMM appears that no Vmm assigns to the sled. It runs at once.
    pub fn spawn_unknown(&self, unknown: UnknownVmm) -> Result<VmmId, HypervisorError> {
        let id = VmmId(uuid::Uuid::new_v4().to_string());
        {
            let mut machine = self.powered()?;
            let launch = VmmLaunch {
                id: id.clone(),
                namespace: unknown.namespace.unwrap_or_default(),
                name: format!("unknown-{}", &id.0[..8]),
                instance: unknown.instance.unwrap_or_default(),
                resources: unknown.resources,
                image: "unknown".to_string(),
                dirty_rate: None,
            };
            machine.vmms.insert(
                id.clone(),
                SimVmm {
                    launch,
                    state: VmmRunState::Running,
                    responsive: true,
                    settles_at: None,
                    dirty_rate: None,
                },
            );
            self.persist(&machine)?;
        }
        let _ = self.changes.send(id.clone());
        Ok(id)
    }

    /// Fault: the guest of `id` dirties `bytes_per_second` from now on.
    pub fn set_dirty_rate(&self, id: &VmmId, bytes_per_second: u64) -> Result<(), HypervisorError> {
        let mut machine = self.powered()?;
        let vmm = machine.vmm_mut(id)?;
        vmm.dirty_rate = Some(bytes_per_second);
        self.persist(&machine)
    }

    /// Moves `id` from one of `from` to `to` (persisted); already `to` is success.
    fn transition(
        &self,
        id: &VmmId,
        from: &[VmmRunState],
        to: VmmRunState,
    ) -> Result<(), HypervisorError> {
        let mut machine = self.powered()?;
        let vmm = machine.vmm_mut(id)?;
        if vmm.state == to {
            return Ok(());
        }
        if !from.contains(&vmm.state) {
            return Err(HypervisorError::Ended(id.clone()));
        }
        vmm.state = to;
        vmm.settles_at = None;
        self.persist(&machine)
    }

    fn end(&self, id: &VmmId, reason: ExitReason) -> Result<(), HypervisorError> {
        {
            let mut machine = self.powered()?;
            let vmm = machine.vmm_mut(id)?;
            vmm.state = VmmRunState::Exited(reason);
            vmm.settles_at = None;
            self.persist(&machine)?;
        }
        let _ = self.changes.send(id.clone());
        Ok(())
    }

    /// Adds a VMM in `state` if it fits the free capacity; an existing id changes nothing.
    fn add(
        &self,
        launch: &VmmLaunch,
        state: VmmRunState,
        settles_at: Option<Instant>,
    ) -> Result<(), HypervisorError> {
        let mut machine = self.powered()?;
        if machine.vmms.contains_key(&launch.id) {
            return Ok(());
        }
        let free = self.free(&machine);
        if !launch.resources.fits_within(&free) {
            return Err(HypervisorError::NoCapacity {
                id: launch.id.clone(),
                needed: launch.resources,
                free,
            });
        }
        machine.vmms.insert(
            launch.id.clone(),
            SimVmm {
                launch: launch.clone(),
                state,
                responsive: true,
                settles_at,
                dirty_rate: launch.dirty_rate,
            },
        );
        self.persist(&machine)
    }

    /// Applies a guest command (stop, reboot) to `id`: an unresponsive VMM ignores it;
    /// `act` says whether it changed the VMM (then the machine is persisted).
    fn command(
        &self,
        id: &VmmId,
        act: impl FnOnce(&mut SimVmm) -> Result<bool, HypervisorError>,
    ) -> Result<(), HypervisorError> {
        let mut machine = self.powered()?;
        let vmm = machine.vmm_mut(id)?;
        if !vmm.responsive || !act(vmm)? {
            return Ok(());
        }
        self.persist(&machine)
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().expect("machine lock")
    }

    /// The machine, settled to now, if it has power.
    ///
    /// Settling is not persisted: the file already says what a reload makes of it (a boot
    /// under way has completed, a stop under way has ended; `settle_reloaded`). Writing the
    /// whole machine once more per boot was a quarter of `corral power-sim`'s CPU at 100 VMMs a
    /// sled (`corral bench rack`).
    fn powered(&self) -> Result<MutexGuard<'_, Machine>, HypervisorError> {
        let mut machine = self.lock();
        if machine.power == PowerState::Off {
            return Err(HypervisorError::PoweredOff);
        }
        if machine.frozen_since.is_none() {
            settle(&mut machine, Instant::now());
        }
        Ok(machine)
    }

    fn persist(&self, machine: &Machine) -> Result<(), HypervisorError> {
        let error = |source| HypervisorError::Persist {
            path: self.path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(machine).map_err(|e| error(e.into()))?;
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, bytes).map_err(error)?;
        std::fs::rename(&temporary, &self.path).map_err(error)
    }

    fn free(&self, machine: &Machine) -> Resources {
        let used = machine
            .vmms
            .values()
            .fold(Resources::default(), |sum, vmm| sum + vmm.launch.resources);
        self.capacity.saturating_sub(&used)
    }
}

/// Moves every responsive VMM whose deadline has passed to its next state.
fn settle(machine: &mut Machine, now: Instant) {
    for vmm in machine.vmms.values_mut() {
        let due = vmm.settles_at.is_some_and(|at| at <= now);
        if !due || !vmm.responsive {
            continue;
        }
        vmm.settles_at = None;
        vmm.state = match vmm.state {
            VmmRunState::Starting => VmmRunState::Running,
            VmmRunState::Stopping => VmmRunState::Exited(ExitReason::Stopped),
            other => other,
        };
    }
}

/// A machine read from its file lost its deadlines: transitions under way have finished.
fn settle_reloaded(machine: &mut Machine) {
    for vmm in machine.vmms.values_mut() {
        if !vmm.responsive {
            continue;
        }
        vmm.state = match vmm.state {
            VmmRunState::Starting => VmmRunState::Running,
            VmmRunState::Stopping => VmmRunState::Exited(ExitReason::Stopped),
            other => other,
        };
    }
}

#[async_trait]
impl Hypervisor for SimHypervisor {
    async fn boot_id(&self) -> Result<BootId, HypervisorError> {
        self.frozen.off().await;
        Ok(self.powered()?.boot_id)
    }

    async fn create(&self, launch: &VmmLaunch) -> Result<(), HypervisorError> {
        self.frozen.off().await;
        let boots_until = Instant::now() + self.timing.boot_time;
        self.add(launch, VmmRunState::Starting, Some(boots_until))
    }

    async fn stop(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.frozen.off().await;
        let stop_time = self.timing.stop_time;
        self.command(id, |vmm| match vmm.state {
            VmmRunState::Starting | VmmRunState::Running => {
                vmm.state = VmmRunState::Stopping;
                vmm.settles_at = Some(Instant::now() + stop_time);
                Ok(true)
            }
            // No guest runs: there is nothing to shut down gracefully.
            VmmRunState::Receiving | VmmRunState::Paused => {
                vmm.state = VmmRunState::Exited(ExitReason::Stopped);
                vmm.settles_at = None;
                Ok(true)
            }
            VmmRunState::Stopping | VmmRunState::Exited(_) => Ok(false),
        })
    }

    async fn destroy(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.frozen.off().await;
        let mut machine = self.powered()?;
        if machine.vmms.remove(id).is_some() {
            self.persist(&machine)?;
        }
        Ok(())
    }

    async fn reboot(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.frozen.off().await;
        let boot_time = self.timing.boot_time;
        self.command(id, |vmm| match vmm.state {
            VmmRunState::Starting | VmmRunState::Running => {
                vmm.state = VmmRunState::Starting;
                vmm.settles_at = Some(Instant::now() + boot_time);
                Ok(true)
            }
            VmmRunState::Stopping
            | VmmRunState::Exited(_)
            | VmmRunState::Receiving
            | VmmRunState::Paused => Err(HypervisorError::Ended(id.clone())),
        })
    }

    async fn inspect(&self, id: &VmmId) -> Result<Option<VmmInfo>, HypervisorError> {
        self.frozen.off().await;
        let machine = self.powered()?;
        let now = Instant::now();
        Ok(machine.vmms.get(id).map(|vmm| vmm.info(now, &self.timing)))
    }

    async fn list(&self) -> Result<Vec<VmmInfo>, HypervisorError> {
        self.frozen.off().await;
        let machine = self.powered()?;
        let now = Instant::now();
        Ok(machine
            .vmms
            .values()
            .map(|vmm| vmm.info(now, &self.timing))
            .collect())
    }

    async fn create_receiving(&self, launch: &VmmLaunch) -> Result<(), HypervisorError> {
        self.frozen.off().await;
        self.add(launch, VmmRunState::Receiving, None)
    }

    async fn pause(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.frozen.off().await;
        self.transition(id, &[VmmRunState::Running], VmmRunState::Paused)
    }

    async fn resume(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.frozen.off().await;
        self.transition(
            id,
            &[VmmRunState::Paused, VmmRunState::Receiving],
            VmmRunState::Running,
        )
    }

    fn migration_bandwidth(&self) -> u64 {
        self.timing.migration_bandwidth
    }

    fn downtime_budget(&self) -> Duration {
        self.timing.downtime_budget
    }

    fn description(&self) -> String {
        "sim".into()
    }

    fn changes(&self) -> broadcast::Receiver<VmmId> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
