//! Simulated sleds and their power controllers (the out-of-band "service processor").
//!
//! A simulated sled is a *machine* ([`SimHypervisor`] and its [`SimV2pTable`], kept in the
//! sled's data directory) plus a node-agent *process* running on it (here a task: the agent
//! under a supervisor that starts it again if it fails, next to the sled's HTTP API — the
//! fault-injection API and the agent's migration API). [`SimSled::start`] gives a
//! [`SledHandle`], which is the sled's [`PowerController`]:
//! - [`SledHandle::power_off`]: the machine loses power (its VMMs are gone at once) and the
//!   agent process dies with it (aborted, not shut down: a powered-off agent finishes nothing).
//! - [`SledHandle::power_on`]: the machine boots with a new boot id and the agent starts on it,
//!   which bumps the sled's epoch.
//! - [`SledHandle::shutdown`]: the agent process exits cleanly and the machine keeps running
//!   (what happens when the process hosting simulated sleds exits).
//!
//! The faults that the sled cannot serve itself live here too, with the power controller that
//! owns the machine (`power_faults.rs` serves them over HTTP):
//! - [`SledHandle::hang`] / [`SledHandle::resume`]: the whole sled hangs with power on — its
//!   machine is frozen (`machine.rs`), its agent's API client waits unsent
//!   (`control_path.rs`), its HTTP API (faults and migrations) answers nothing. Power off still
//!   works, and ends the hang.
//! - [`SledHandle::partition`] / [`SledHandle::heal`]: the agent is cut off from the API
//!   server (every request fails at once); its guests run on and its fault API answers.
//! - [`SledHandle::stop_answering`] / [`SledHandle::answer`]: its power controller's
//!   `GET/POST .../power` wait, unanswered, until the caller gives up.
//!
//! The crate's `power.rs` serves these power controllers over HTTP like any other.
//!
//! # Assumptions
//! - One `SledHandle` per data directory at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::config::AgentConfig;
use crate::error::DisplayChain;
use crate::http::{Endpoints, Rule, authorize};
use crate::hypervisor::HypervisorError;
use crate::migration::AgentSlot;
use crate::power::{PowerController, PowerError, PowerState};
use crate::qemu::{QemuConfig, QemuHypervisor};
use crate::sim::control_path::ControlPath;
use crate::sim::fault::{self, FaultState};
use crate::sim::machine::{SimHypervisor, SimTiming};
use crate::sim::sled_machine::SledMachine;
use crate::sim::switch::Switch;
use crate::sim::v2p_table::SimV2pTable;
use crate::v2p::table::V2pTableError;

/// What a simulated sled is: the configuration of its agent, the timing of its machine, and
/// where its HTTP API listens.
#[derive(Clone)]
pub struct SimSledConfig {
    pub agent: AgentConfig,
    /// Boot and stop times of the machine, its guests' dirty rate, its migration link.
    pub timing: SimTiming,
    /// Real QEMU processes instead of the simulated machine (docs/qemu.md); `timing` then
    /// does not apply.
    pub qemu: Option<QemuConfig>,
    /// Where the sled's HTTP API (the fault-injection API and the agent's migration API)
    /// listens, reported as `Sled.status.agentAddress`; `None`: it does not listen.
    pub fault_listen: Option<SocketAddr>,
    /// How that API is served (TLS with the sled's serving certificate, callers authorized:
    /// faults only to `system:masters`, a migration only to its target's agent), and how the
    /// agent reaches other sleds'. `corral up`, `corral node-agent` and `corral power-sim`
    /// serve TLS; [`SimSledConfig::new`] leaves plain HTTP, for in-process racks whose API
    /// server is plain HTTP too.
    pub endpoints: Endpoints,
}

impl SimSledConfig {
    /// A sled whose agent has `agent`, with default timing and no HTTP API.
    pub fn new(agent: AgentConfig) -> SimSledConfig {
        SimSledConfig {
            agent,
            timing: SimTiming::default(),
            qemu: None,
            fault_listen: None,
            endpoints: Endpoints::InsecureHttp,
        }
    }
}

/// How a simulated sled comes up when its process starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// Power-cycle the machine: whatever it ran is gone, it boots anew (new boot id, new
    /// epoch). What `corral up` does: restarting it is a cold start of the rack.
    ColdStart,
    /// Keep a machine that is on, with its VMMs (the agent process restarted); power on one
    /// that is off.
    Resume,
}

/// Why a sled could not be started or powered.
#[derive(Debug, thiserror::Error)]
pub enum SledError {
    #[error("machine")]
    Machine(#[from] HypervisorError),
    #[error("the machine's V2P table")]
    V2pTable(#[from] V2pTableError),
    #[error("binding the fault API to {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts simulated sleds.
pub struct SimSled;

impl SimSled {
    /// Opens the machine in `config.agent.data_dir`, powers it per `mode` and starts the agent.
    pub async fn start(config: SimSledConfig, mode: StartMode) -> Result<SledHandle, SledError> {
        let agent = &config.agent;
        let machine = match &config.qemu {
            None => SledMachine::Sim(SimHypervisor::open(
                &agent.data_dir,
                config.timing,
                agent.capacity,
            )?),
            Some(qemu) => {
                SledMachine::qemu(QemuHypervisor::open(&agent.data_dir, qemu.clone()).await?)
            }
        };
        if mode == StartMode::ColdStart {
            machine.power_off().await?;
        }
        let boot_id = machine.power_on().await?;
        let v2p = Arc::new(SimV2pTable::open(&agent.data_dir, boot_id)?);
        let handle = SledHandle {
            inner: Arc::new(SledInner {
                fault_address: std::sync::Mutex::new(config.fault_listen),
                v2p,
                config,
                machine,
                process: tokio::sync::Mutex::new(None),
                partitioned: Switch::default(),
                power_silent: Switch::default(),
            }),
        };
        {
            let mut process = handle.inner.process.lock().await;
            *process = Some(handle.inner.spawn_agent().await?);
        }
        Ok(handle)
    }
}

/// A simulated sled and its power controller. Clones share the sled.
#[derive(Clone)]
pub struct SledHandle {
    inner: Arc<SledInner>,
}

struct SledInner {
    config: SimSledConfig,
    machine: SledMachine,
    /// The machine's V2P table: it survives agent restarts, not a power-off.
    v2p: Arc<SimV2pTable>,
    /// Where the fault API listens; a port 0 becomes the bound port, kept across restarts.
    fault_address: std::sync::Mutex<Option<SocketAddr>>,
    process: tokio::sync::Mutex<Option<AgentProcess>>,
    /// On while the agent is cut off from the API server.
    partitioned: Switch,
    /// On while the power controller does not answer.
    power_silent: Switch,
}

/// The agent "process": its supervisor and fault API, in one task.
struct AgentProcess {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for SledInner {
    fn drop(&mut self) {
        // A safety net: `shutdown` is the way to stop a sled.
        if let Some(process) = self.process.get_mut().take() {
            process.stop.cancel();
        }
    }
}

impl SledInner {
    async fn spawn_agent(&self) -> Result<AgentProcess, SledError> {
        let wanted = *self.fault_address.lock().expect("address lock");
        let listener = match wanted {
            Some(address) => {
                let listener = TcpListener::bind(address)
                    .await
                    .map_err(|source| SledError::Bind { address, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| SledError::Bind { address, source })?;
                *self.fault_address.lock().expect("address lock") = Some(bound);
                Some(listener)
            }
            None => None,
        };
        let stop = CancellationToken::new();
        let control_path = ControlPath {
            partitioned: self.partitioned.clone(),
            frozen: self.machine.frozen().clone(),
        };
        let mut agent = self.config.agent.clone();
        agent.client = control_path.client(agent.client);
        let task = tokio::spawn(agent_process(
            agent,
            self.machine.clone(),
            self.v2p.clone(),
            (listener, self.config.endpoints.clone()),
            (stop.clone(), self.partitioned.clone()),
        ));
        Ok(AgentProcess { stop, task })
    }
}

/// The agent under a supervisor (restarted with backoff when it fails), next to the fault API.
async fn agent_process(
    config: AgentConfig,
    machine: SledMachine,
    v2p: Arc<SimV2pTable>,
    (listener, endpoints): (Option<TcpListener>, Endpoints),
    (stop, partitioned): (CancellationToken, Switch),
) {
    let address = listener.as_ref().and_then(|l| l.local_addr().ok());
    // The migration API is served next to the fault API by whichever agent run is up.
    let slot = AgentSlot::default();
    let serve = async {
        let Some(listener) = listener else { return };
        let faults = fault::router(FaultState {
            machine: machine.clone(),
            heartbeats: config.heartbeats.clone(),
            v2p: v2p.clone(),
            partitioned,
        });
        let router = authorize(faults, Rule::Masters, "use the fault-injection API")
            .merge(crate::migration::router(slot.clone()))
            .merge(authorize(
                crate::metrics::router(),
                Rule::Monitoring,
                "read the sled's metrics",
            ))
            .layer(axum::middleware::from_fn_with_state(
                machine.frozen().clone(),
                answer_unless_frozen,
            ));
        let served = crate::http::serve(listener, router, endpoints.clone(), stop.clone());
        if let Err(error) = served.await {
            tracing::warn!(sled = %config.sled_name, %error, "the fault API stopped");
        }
    };
    let supervise = async {
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut agent = Agent::new(config.clone(), machine.hypervisor(), v2p.clone())
                .with_slot(slot.clone())
                .with_endpoints(endpoints.clone());
            if let Some(address) = address {
                agent = agent.with_address(format!("{}://{address}", endpoints.scheme()));
            }
            match agent.run(stop.clone()).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(sled = %config.sled_name, error = %DisplayChain(&error), ?backoff, "node-agent failed; starting it again");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    };
    tokio::join!(serve, supervise);
}

/// A hung sled's HTTP API answers nothing until it resumes.
async fn answer_unless_frozen(
    axum::extract::State(frozen): axum::extract::State<Switch>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    frozen.off().await;
    next.run(request).await
}

impl SledHandle {
    /// Fault: the whole sled hangs with power on (see the module docs). A powered-off sled
    /// cannot hang.
    pub async fn hang(&self) -> Result<(), SledError> {
        Ok(self.inner.machine.freeze().await?)
    }

    /// Ends a hang: the sled continues where it stopped.
    pub async fn resume(&self) -> Result<(), SledError> {
        Ok(self.inner.machine.thaw().await?)
    }

    /// Fault: the agent is cut off from the API server.
    pub fn partition(&self) {
        self.inner.partitioned.set(true);
    }

    /// Ends a partition.
    pub fn heal(&self) {
        self.inner.partitioned.set(false);
    }

    /// Fault: the power controller stops answering.
    pub fn stop_answering(&self) {
        self.inner.power_silent.set(true);
    }

    /// The power controller answers again (the requests that waited are answered now).
    pub fn answer(&self) {
        self.inner.power_silent.set(false);
    }

    pub fn name(&self) -> &str {
        &self.inner.config.agent.sled_name
    }

    pub fn power_state(&self) -> PowerState {
        self.inner.machine.power()
    }

    pub fn is_on(&self) -> bool {
        self.inner.machine.is_on()
    }

    /// The sled's simulated machine (for fault injection in-process).
    ///
    /// # Panics
    /// On a sled of QEMU processes ([`SledHandle::sled_machine`] serves both).
    pub fn machine(&self) -> &Arc<SimHypervisor> {
        self.inner
            .machine
            .simulated()
            .expect("a simulated machine (this sled runs QEMU processes)")
    }

    /// The sled's machine, simulated or QEMU.
    pub fn sled_machine(&self) -> &SledMachine {
        &self.inner.machine
    }

    /// The machine's V2P table (for tests in-process).
    pub fn v2p_table(&self) -> &Arc<SimV2pTable> {
        &self.inner.v2p
    }

    /// Where the fault API listens, if it does.
    pub fn fault_address(&self) -> Option<SocketAddr> {
        *self.inner.fault_address.lock().expect("address lock")
    }

    /// Whether an agent process runs on the sled.
    pub async fn agent_running(&self) -> bool {
        self.inner.process.lock().await.is_some()
    }

    /// Cuts the power: the machine's VMMs are gone and the agent dies (see the module docs).
    pub async fn power_off(&self) -> Result<(), SledError> {
        let mut process = self.inner.process.lock().await;
        self.inner.machine.power_off().await?;
        self.inner.v2p.power_off()?;
        if let Some(process) = process.take() {
            process.task.abort();
            let _ = process.task.await;
        }
        tracing::info!(sled = %self.name(), "powered off");
        Ok(())
    }

    /// Powers on: a new boot, and the agent starts on it. Already on: nothing changes.
    pub async fn power_on(&self) -> Result<(), SledError> {
        let mut process = self.inner.process.lock().await;
        let boot_id = self.inner.machine.power_on().await?;
        self.inner.v2p.boot(boot_id)?;
        if process.is_none() {
            *process = Some(self.inner.spawn_agent().await?);
        }
        tracing::info!(sled = %self.name(), "powered on");
        Ok(())
    }

    /// Stops the agent process cleanly and starts a new one on the same machine and data
    /// directory (a "kill and restart the node-agent", with the VMMs left running).
    pub async fn restart_agent(&self) -> Result<(), SledError> {
        let mut process = self.inner.process.lock().await;
        if let Some(running) = process.take() {
            running.stop.cancel();
            let _ = running.task.await;
        }
        if self.inner.machine.is_on() {
            *process = Some(self.inner.spawn_agent().await?);
        }
        Ok(())
    }

    /// Stops the agent process cleanly; the machine and its VMMs stay as they are.
    pub async fn shutdown(&self) {
        let mut process = self.inner.process.lock().await;
        if let Some(running) = process.take() {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }
}

#[async_trait]
impl PowerController for SledHandle {
    fn sled_name(&self) -> &str {
        self.name()
    }

    async fn power_state(&self) -> Result<PowerState, PowerError> {
        self.inner.power_silent.off().await;
        Ok(SledHandle::power_state(self))
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        self.inner.power_silent.off().await;
        SledHandle::power_off(self).await.map_err(power_error)
    }

    async fn power_on(&self) -> Result<(), PowerError> {
        self.inner.power_silent.off().await;
        SledHandle::power_on(self).await.map_err(power_error)
    }
}

fn power_error(error: SledError) -> PowerError {
    PowerError(Box::new(error))
}
