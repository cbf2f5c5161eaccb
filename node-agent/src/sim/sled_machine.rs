//! The machine under a simulated sled: the simulator's own ([`SimHypervisor`]) or real QEMU
//! processes ([`QemuHypervisor`], docs/qemu.md). Either way the sled around it is the same —
//! its power controller, its agent process, its fault API — and so are the faults: they reach
//! the simulated machine directly, and a real guest through its serial port or its process.
//!
//! | fault | simulated | QEMU |
//! |---|---|---|
//! | power off | every VMM gone | every QEMU process of the sled killed |
//! | whole-sled hang | the machine frozen | every QEMU process stopped (`SIGSTOP`) |
//! | `crash` | the VMM ends `GuestCrashed` | the guest panics (pvpanic) |
//! | `shutdown` | the VMM ends `GuestShutdown` | the guest powers itself off (ACPI S5) |
//! | `kill` | the VMM vanishes | the QEMU process is killed (`SIGKILL`) |
//! | `hang` | the VMM stops answering | the guest stops, its process lives |
//! | `dirty-rate` | the model's rate | the guest dirties that many bytes a second |
//!
//! # Invariants
//! - Both keep their state in the sled's data directory: VMMs outlive an agent restart, not a
//!   power-off.

use std::sync::Arc;

use crate::hypervisor::{BootId, Hypervisor, HypervisorError, VmmId, VmmInfo, VmmLaunch};
use crate::power::PowerState;
use crate::qemu::QemuHypervisor;
use crate::sim::machine::{SimHypervisor, UnknownVmm};
use crate::sim::switch::Switch;

/// A fault that acts on one VMM (the fault API's `POST /vmms/{namespace}/{name}/{fault}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmFault {
    Crash,
    Shutdown,
    Kill,
    Hang,
    DirtyRate(u64),
}

/// The machine of a sled (see the module docs). Clones share it.
#[derive(Clone)]
pub enum SledMachine {
    Sim(Arc<SimHypervisor>),
    Qemu {
        driver: Arc<QemuHypervisor>,
        /// On while the whole sled hangs.
        frozen: Switch,
    },
}

impl std::fmt::Debug for SledMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SledMachine::Sim(machine) => machine.fmt(f),
            SledMachine::Qemu { driver, .. } => driver.fmt(f),
        }
    }
}

impl SledMachine {
    pub fn qemu(driver: Arc<QemuHypervisor>) -> SledMachine {
        SledMachine::Qemu {
            driver,
            frozen: Switch::default(),
        }
    }

    /// The machine as the agent drives it.
    pub fn hypervisor(&self) -> Arc<dyn Hypervisor> {
        match self {
            SledMachine::Sim(machine) => machine.clone(),
            SledMachine::Qemu { driver, .. } => driver.clone(),
        }
    }

    /// The simulated machine, if this is one (tests inject faults into it in-process).
    pub fn simulated(&self) -> Option<&Arc<SimHypervisor>> {
        match self {
            SledMachine::Sim(machine) => Some(machine),
            SledMachine::Qemu { .. } => None,
        }
    }

    /// The switch that is on while the whole sled hangs.
    pub fn frozen(&self) -> &Switch {
        match self {
            SledMachine::Sim(machine) => machine.frozen(),
            SledMachine::Qemu { frozen, .. } => frozen,
        }
    }

    pub fn power(&self) -> PowerState {
        match self {
            SledMachine::Sim(machine) => machine.power(),
            SledMachine::Qemu { driver, .. } if driver.is_on() => PowerState::On,
            SledMachine::Qemu { .. } => PowerState::Off,
        }
    }

    pub fn is_on(&self) -> bool {
        self.power() == PowerState::On
    }

    /// Powers on with a new boot and no VMM; already on: nothing changes.
    pub async fn power_on(&self) -> Result<BootId, HypervisorError> {
        match self {
            SledMachine::Sim(machine) => machine.power_on(),
            SledMachine::Qemu { driver, frozen } => {
                frozen.set(false);
                driver.power_on().await
            }
        }
    }

    /// Cuts the power: every VMM is gone at once.
    pub async fn power_off(&self) -> Result<(), HypervisorError> {
        match self {
            SledMachine::Sim(machine) => machine.power_off(),
            SledMachine::Qemu { driver, .. } => {
                // A stopped process still dies of SIGKILL.
                driver.power_off().await
            }
        }
    }

    /// Fault: the whole sled hangs with power on.
    pub async fn freeze(&self) -> Result<(), HypervisorError> {
        match self {
            SledMachine::Sim(machine) => machine.freeze(),
            SledMachine::Qemu { driver, frozen } => {
                if !driver.is_on() {
                    return Err(HypervisorError::PoweredOff);
                }
                frozen.set(true);
                signal_all(driver, libc::SIGSTOP).await;
                Ok(())
            }
        }
    }

    /// Ends a hang.
    pub async fn thaw(&self) -> Result<(), HypervisorError> {
        match self {
            SledMachine::Sim(machine) => machine.thaw(),
            SledMachine::Qemu { driver, frozen } => {
                signal_all(driver, libc::SIGCONT).await;
                frozen.set(false);
                Ok(())
            }
        }
    }

    /// Every VMM the machine runs.
    pub async fn list(&self) -> Result<Vec<VmmInfo>, HypervisorError> {
        self.hypervisor().list().await
    }

    /// Injects `fault` into the VMM that runs the Vmm `namespace/name`; `Ok(false)` if none
    /// does.
    pub async fn inject(
        &self,
        namespace: &str,
        name: &str,
        fault: VmmFault,
    ) -> Result<bool, HypervisorError> {
        if !self.is_on() {
            return Err(HypervisorError::PoweredOff);
        }
        match self {
            SledMachine::Sim(machine) => {
                let Some(id) = machine.find(namespace, name) else {
                    return Ok(false);
                };
                match fault {
                    VmmFault::Crash => machine.crash(&id)?,
                    VmmFault::Shutdown => machine.guest_shutdown(&id)?,
                    VmmFault::Kill => machine.kill(&id)?,
                    VmmFault::Hang => machine.hang(&id)?,
                    VmmFault::DirtyRate(rate) => machine.set_dirty_rate(&id, rate)?,
                }
            }
            SledMachine::Qemu { driver, .. } => {
                let Some(id) = driver.find(namespace, name).await else {
                    return Ok(false);
                };
                match fault {
                    VmmFault::Crash => driver.tell_guest(&id, "panic").await?,
                    VmmFault::Shutdown => driver.tell_guest(&id, "poweroff").await?,
                    VmmFault::Hang => driver.tell_guest(&id, "hang").await?,
                    VmmFault::DirtyRate(rate) => {
                        driver.tell_guest(&id, &format!("dirty {rate}")).await?
                    }
                    VmmFault::Kill => {
                        if let Some(pid) = driver.pid(&id).await {
                            // SAFETY: a plain kill(2) of the sled's own QEMU process, behind
                            // the agent's back (the fault).
                            unsafe {
                                libc::kill(pid.0 as libc::pid_t, libc::SIGKILL);
                            }
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    /// Fault: a VMM that no Vmm assigns appears on the machine.
    pub async fn spawn_unknown(&self, unknown: UnknownVmm) -> Result<VmmId, HypervisorError> {
        match self {
            SledMachine::Sim(machine) => machine.spawn_unknown(unknown),
            SledMachine::Qemu { driver, .. } => {
                let id = VmmId(format!("unknown-{}", uuid::Uuid::new_v4()));
                let launch = VmmLaunch {
                    id: id.clone(),
                    namespace: unknown.namespace.unwrap_or_default(),
                    name: id.0.clone(),
                    instance: unknown.instance.unwrap_or_default(),
                    resources: unknown.resources,
                    image: "corral-guest".into(),
                    dirty_rate: None,
                };
                driver.create(&launch).await?;
                Ok(id)
            }
        }
    }
}

async fn signal_all(driver: &QemuHypervisor, signal: libc::c_int) {
    for pid in driver.pids().await {
        // SAFETY: plain kill(2) on the sled's own QEMU processes (their pids are checked when
        // read: `qemu::Pid`).
        unsafe {
            libc::kill(pid.0 as libc::pid_t, signal);
        }
    }
}
