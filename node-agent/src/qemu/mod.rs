//! The QEMU driver (docs/qemu.md): a [`Hypervisor`] whose VMMs are QEMU processes on the
//! sled's own machine, each running corral-guest, with KVM when `/dev/kvm` is usable and TCG
//! otherwise.
//!
//! # Layout
//! - `mod.rs` — [`QemuHypervisor`]: the machine (power, boot id, capacity) and its VMMs.
//! - `vmm.rs` — one VMM: its record, process, monitor, guest channel, and state.
//! - `process.rs` — QEMU's command line, its start, its pid.
//! - `qmp.rs` — the monitor client.
//! - `guest.rs` — corral-guest: its image, its lines, its channel.
//!
//! # Guarantees
//! - What `inspect` and `list` say is asked of QEMU and of the guest at that moment
//!   (`query-status`, the guest's last line), never only remembered.
//! - An agent that restarts re-attaches to every QEMU process of the sled's current boot
//!   ([`QemuHypervisor::open`]): a guest does not restart because its agent did.
//! - A VMM whose process is killed behind the agent's back vanishes (and is announced on
//!   [`Hypervisor::changes`], as are a guest's panic and its own power-off).
//! - A powered-off machine runs no QEMU process of this sled ([`QemuHypervisor::power_off`]
//!   kills them all) and answers every call with [`HypervisorError::PoweredOff`].
//!
//! # Assumptions
//! - The data directory is this sled's alone. `qemu-system-x86_64` and qboot come from
//!   Debian's `qemu-system-x86` (`scripts/setup.sh`).
//! - Live migration is QEMU's own (`migrate` over TCP between the sleds' QEMU processes,
//!   loopback addresses only for now), driven by the agents' migration protocol
//!   (`migration/source.rs`): the guest pauses in `pre-switchover` until the source agent has
//!   journaled its pause.

pub mod guest;
pub mod process;
pub mod qmp;
mod vmm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use corral_crds::Resources;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::hypervisor::{
    BootId, GuestTransfer, Hypervisor, HypervisorError, VmmId, VmmInfo, VmmLaunch,
};
use process::Spec;
pub use process::{Accel, Pid};
use vmm::Vmm;

/// The machine's record.
const MACHINE: &str = "machine.json";

/// How a QEMU sled is set up.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The firmware (qboot).
    pub firmware: PathBuf,
    pub accel: Accel,
    /// What the sled offers its VMMs.
    pub capacity: Resources,
    /// How long a guest has to power off after the ACPI power button before it is killed.
    pub stop_timeout: Duration,
    /// The sled's lifeline: when this process is gone, so are the sled's VMMs (see
    /// `process.rs`). `None`: they outlive everything but the machine.
    pub vmms_die_with: Option<u32>,
    /// The migration link's bandwidth, bytes per second.
    pub migration_bandwidth: u64,
    /// QEMU's `downtime-limit`: the longest pause a migration out of the sled plans for.
    pub downtime_budget: Duration,
}

/// A QEMU sled's default downtime budget: small enough that the whole pause, the control
/// plane's switch included, stays near 50 ms on a fast link (docs/qemu.md, "Downtime").
pub const QEMU_DOWNTIME_BUDGET: Duration = Duration::from_millis(20);

impl QemuConfig {
    /// Debian's QEMU and qboot, KVM if usable, a 10 s stop timeout.
    pub fn new(capacity: Resources) -> QemuConfig {
        QemuConfig {
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            firmware: PathBuf::from("/usr/share/qemu/qboot.rom"),
            accel: Accel::detect(),
            capacity,
            stop_timeout: Duration::from_secs(10),
            vmms_die_with: None,
            // 10 Gbit/s: a rack's migration network.
            migration_bandwidth: 1_250_000_000,
            downtime_budget: QEMU_DOWNTIME_BUDGET,
        }
    }
}

/// Whether the machine is on, and the id of its current boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Machine {
    boot_id: BootId,
    powered: bool,
}

/// The QEMU driver (see the module docs).
pub struct QemuHypervisor {
    dir: PathBuf,
    guest: PathBuf,
    config: QemuConfig,
    machine: Mutex<Machine>,
    vmms: tokio::sync::Mutex<BTreeMap<VmmId, Arc<Vmm>>>,
    changes: broadcast::Sender<VmmId>,
}

impl std::fmt::Debug for QemuHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuHypervisor")
            .field("dir", &self.dir)
            .field("accel", &self.config.accel)
            .finish_non_exhaustive()
    }
}

impl QemuHypervisor {
    /// Opens the machine in `data_dir/qemu` (on, with a new boot, the first time) and
    /// re-attaches to every VMM it runs.
    pub async fn open(
        data_dir: &Path,
        config: QemuConfig,
    ) -> Result<Arc<QemuHypervisor>, HypervisorError> {
        let dir = data_dir.join("qemu");
        std::fs::create_dir_all(&dir).map_err(|source| persist(&dir, source))?;
        let guest = dir.join(process::GUEST);
        std::fs::write(&guest, guest::IMAGE).map_err(|source| persist(&guest, source))?;
        let machine = match std::fs::read(dir.join(MACHINE)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| HypervisorError::Load {
                    path: dir.join(MACHINE).display().to_string(),
                    source: Box::new(source),
                })?
            }
            Err(_) => Machine {
                boot_id: BootId::random(),
                powered: true,
            },
        };
        let (changes, _) = broadcast::channel(1024);
        let driver = QemuHypervisor {
            guest,
            config,
            machine: Mutex::new(machine.clone()),
            vmms: tokio::sync::Mutex::new(BTreeMap::new()),
            changes,
            dir,
        };
        driver.save_machine(&machine)?;
        tracing::info!(dir = %driver.dir.display(), accel = driver.config.accel.as_str(), "QEMU driver");
        if machine.powered {
            driver.attach_all().await;
        }
        Ok(Arc::new(driver))
    }

    /// How guests are accelerated here.
    pub fn accel(&self) -> Accel {
        self.config.accel
    }

    /// Powers the machine off: every QEMU process of the sled is killed.
    pub async fn power_off(&self) -> Result<(), HypervisorError> {
        let mut vmms = self.vmms.lock().await;
        for vmm in vmms.values() {
            vmm.remove().await;
        }
        vmms.clear();
        let machine = Machine {
            powered: false,
            ..self.machine.lock().expect("machine lock").clone()
        };
        self.save_machine(&machine)
    }

    /// Whether the machine is on.
    pub fn is_on(&self) -> bool {
        self.machine.lock().expect("machine lock").powered
    }

    /// Powers the machine on: a new boot, with no VMM. Already on: nothing changes.
    pub async fn power_on(&self) -> Result<BootId, HypervisorError> {
        let _vmms = self.vmms.lock().await;
        if let Ok(boot_id) = self.boot_id().await {
            return Ok(boot_id);
        }
        let machine = Machine {
            boot_id: BootId::random(),
            powered: true,
        };
        self.save_machine(&machine)?;
        Ok(machine.boot_id)
    }

    /// The pid of a VMM's QEMU process.
    pub async fn pid(&self, id: &VmmId) -> Option<Pid> {
        self.vmms.lock().await.get(id).and_then(|vmm| vmm.pid())
    }

    /// The pids of every VMM's QEMU process.
    pub async fn pids(&self) -> Vec<Pid> {
        self.vmms
            .lock()
            .await
            .values()
            .filter_map(|vmm| vmm.pid())
            .collect()
    }

    /// The VMM that runs the Vmm `namespace/name`, if one does.
    pub async fn find(&self, namespace: &str, name: &str) -> Option<VmmId> {
        self.vmms.lock().await.iter().find_map(|(id, vmm)| {
            let launch = vmm.launch();
            (launch.namespace == namespace && launch.name == name).then(|| id.clone())
        })
    }

    /// What a VMM's guest said lately.
    pub async fn guest(&self, id: &VmmId) -> Option<guest::Seen> {
        self.vmms.lock().await.get(id).map(|vmm| vmm.guest())
    }

    /// Sends a line to a VMM's guest (docs/qemu.md, "The guest"): how faults reach a real
    /// guest (`panic`, `poweroff`, `hang`, `dirty N`).
    pub async fn tell_guest(&self, id: &VmmId, command: &str) -> Result<(), HypervisorError> {
        let vmm = self.vmm(id).await?;
        if vmm.tell_guest(command).await {
            Ok(())
        } else {
            Err(HypervisorError::Monitor {
                id: id.clone(),
                why: "the guest's serial port is not connected".into(),
            })
        }
    }

    async fn attach_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut vmms = self.vmms.lock().await;
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if let Some(vmm) = Vmm::attach(&path, self.changes.clone()).await {
                tracing::info!(vmm = %vmm.launch().id, pid = ?vmm.pid(), "re-attached");
                vmms.insert(vmm.launch().id, Arc::new(vmm));
            }
        }
    }

    fn powered(&self) -> Result<(), HypervisorError> {
        if self.machine.lock().expect("machine lock").powered {
            Ok(())
        } else {
            Err(HypervisorError::PoweredOff)
        }
    }

    fn save_machine(&self, machine: &Machine) -> Result<(), HypervisorError> {
        let path = self.dir.join(MACHINE);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(machine).expect("serializes"),
        )
        .map_err(|source| persist(&path, source))?;
        *self.machine.lock().expect("machine lock") = machine.clone();
        Ok(())
    }

    async fn vmm(&self, id: &VmmId) -> Result<Arc<Vmm>, HypervisorError> {
        self.powered()?;
        self.vmms
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| HypervisorError::NotFound(id.clone()))
    }

    async fn add(&self, launch: &VmmLaunch, receiving: bool) -> Result<(), HypervisorError> {
        self.powered()?;
        let mut vmms = self.vmms.lock().await;
        if vmms.contains_key(&launch.id) {
            return Ok(());
        }
        let used = vmms.values().fold(Resources::default(), |used, vmm| {
            used + vmm.launch().resources
        });
        let free = Resources {
            cpus: self.config.capacity.cpus.saturating_sub(used.cpus),
            memory_mib: self
                .config
                .capacity
                .memory_mib
                .saturating_sub(used.memory_mib),
        };
        if launch.resources.cpus > free.cpus || launch.resources.memory_mib > free.memory_mib {
            return Err(HypervisorError::NoCapacity {
                id: launch.id.clone(),
                needed: launch.resources,
                free,
            });
        }
        let dir = self.dir.join(launch.id.as_str());
        let spec = Spec {
            qemu: &self.config.qemu,
            firmware: &self.config.firmware,
            guest: &self.guest,
            dir: &dir,
            launch,
            accel: self.config.accel,
            receiving,
            dirty: launch.dirty_rate.unwrap_or(0),
        };
        let vmm = Vmm::start(&spec, self.config.vmms_die_with, self.changes.clone()).await?;
        vmms.insert(launch.id.clone(), Arc::new(vmm));
        Ok(())
    }
}

#[async_trait]
impl Hypervisor for QemuHypervisor {
    async fn boot_id(&self) -> Result<BootId, HypervisorError> {
        self.powered()?;
        Ok(self.machine.lock().expect("machine lock").boot_id)
    }

    async fn create(&self, launch: &VmmLaunch) -> Result<(), HypervisorError> {
        self.add(launch, false).await
    }

    async fn stop(&self, id: &VmmId) -> Result<(), HypervisorError> {
        use crate::hypervisor::{ExitReason, VmmRunState};
        let vmm = self.vmm(id).await?;
        let Some(info) = vmm.info(self.config.stop_timeout).await else {
            return Err(HypervisorError::NotFound(id.clone()));
        };
        match info.state {
            VmmRunState::Starting | VmmRunState::Running => vmm.ask_to_stop().await,
            // No guest runs: there is nothing to shut down gracefully.
            VmmRunState::Receiving | VmmRunState::Paused => {
                vmm.end(ExitReason::Stopped).await.map(|_| ())
            }
            VmmRunState::Stopping | VmmRunState::Exited(_) => Ok(()),
        }
    }

    async fn destroy(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.powered()?;
        let removed = self.vmms.lock().await.remove(id);
        if let Some(vmm) = removed {
            vmm.remove().await;
        }
        Ok(())
    }

    async fn reboot(&self, id: &VmmId) -> Result<(), HypervisorError> {
        use crate::hypervisor::VmmRunState;
        let vmm = self.vmm(id).await?;
        match vmm
            .info(self.config.stop_timeout)
            .await
            .map(|info| info.state)
        {
            Some(VmmRunState::Starting | VmmRunState::Running) => vmm.reset().await,
            Some(_) => Err(HypervisorError::Ended(id.clone())),
            None => Err(HypervisorError::NotFound(id.clone())),
        }
    }

    async fn create_receiving(&self, launch: &VmmLaunch) -> Result<(), HypervisorError> {
        self.add(launch, true).await
    }

    async fn pause(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.vmm(id).await?.pause().await
    }

    async fn resume(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.vmm(id).await?.resume().await
    }

    fn migration_bandwidth(&self) -> u64 {
        self.config.migration_bandwidth
    }

    fn downtime_budget(&self) -> Duration {
        self.config.downtime_budget
    }

    fn description(&self) -> String {
        format!("qemu ({})", self.config.accel.as_str())
    }

    async fn listen_for_guest(&self, id: &VmmId) -> Result<Option<String>, HypervisorError> {
        self.vmm(id).await?.listen().await.map(Some)
    }

    async fn send_guest(
        &self,
        id: &VmmId,
        to: &str,
        bandwidth: u64,
        downtime: Duration,
    ) -> Result<(), HypervisorError> {
        self.vmm(id).await?.send(to, bandwidth, downtime).await
    }

    async fn guest_transfer(&self, id: &VmmId) -> Result<GuestTransfer, HypervisorError> {
        self.vmm(id).await?.transfer().await
    }

    async fn transfer_changed(&self, id: &VmmId, bound: Duration) {
        match self.vmm(id).await {
            Ok(vmm) => vmm.transfer_changed(bound).await,
            Err(_) => tokio::time::sleep(bound).await,
        }
    }

    async fn finish_sending(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.vmm(id).await?.finish_sending().await
    }

    async fn cancel_sending(&self, id: &VmmId) -> Result<(), HypervisorError> {
        self.vmm(id).await?.cancel_sending().await
    }

    async fn inspect(&self, id: &VmmId) -> Result<Option<VmmInfo>, HypervisorError> {
        self.powered()?;
        let Some(vmm) = self.vmms.lock().await.get(id).cloned() else {
            return Ok(None);
        };
        let info = vmm.info(self.config.stop_timeout).await;
        if info.is_none() {
            self.forget(id, &vmm).await;
        }
        Ok(info)
    }

    async fn list(&self) -> Result<Vec<VmmInfo>, HypervisorError> {
        self.powered()?;
        let vmms: Vec<(VmmId, Arc<Vmm>)> = self
            .vmms
            .lock()
            .await
            .iter()
            .map(|(id, vmm)| (id.clone(), vmm.clone()))
            .collect();
        let mut infos = Vec::with_capacity(vmms.len());
        for (id, vmm) in vmms {
            match vmm.info(self.config.stop_timeout).await {
                Some(info) => infos.push(info),
                None => self.forget(&id, &vmm).await,
            }
        }
        Ok(infos)
    }

    fn changes(&self) -> broadcast::Receiver<VmmId> {
        self.changes.subscribe()
    }
}

impl QemuHypervisor {
    /// Drops a VMM whose process vanished (killed behind the agent's back): it no longer
    /// exists; its directory goes too. Announced here as well as by its monitor closing:
    /// whichever notices first, the news is not lost with the monitor.
    async fn forget(&self, id: &VmmId, vmm: &Arc<Vmm>) {
        let mut vmms = self.vmms.lock().await;
        if vmms
            .get(id)
            .is_some_and(|current| Arc::ptr_eq(current, vmm))
        {
            vmms.remove(id);
            vmm.remove().await;
            let _ = self.changes.send(id.clone());
        }
    }
}

fn persist(path: &Path, source: std::io::Error) -> HypervisorError {
    HypervisorError::Persist {
        path: path.display().to_string(),
        source,
    }
}
