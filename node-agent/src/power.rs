//! Simulated sleds and their power controllers (the out-of-band "service processor").
//!
//! A simulated sled is a *machine* ([`SimHypervisor`], kept in the sled's data directory) plus
//! a node-agent *process* running on it (here a task: the agent under a supervisor that starts
//! it again if it fails, and the fault-injection API). [`SimSled::start`] gives a
//! [`SledHandle`], which is the sled's power controller:
//! - [`SledHandle::power_off`]: the machine loses power (its VMMs are gone at once) and the
//!   agent process dies with it (aborted, not shut down: a powered-off agent finishes nothing).
//! - [`SledHandle::power_on`]: the machine boots with a new boot id and the agent starts on it,
//!   which bumps the sled's epoch.
//! - [`SledHandle::shutdown`]: the agent process exits cleanly and the machine keeps running
//!   (what happens when the process hosting simulated sleds exits).
//!
//! # HTTP
//! [`router`] serves the power controllers of many sleds of one process:
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/sleds` | `[{"name": "sled-1", "state": "On"}]` |
//! | GET | `/sleds/{name}/power` | `{"state": "On"}` |
//! | POST | `/sleds/{name}/power/off` | powers off; `{"state": "Off"}` |
//! | POST | `/sleds/{name}/power/on` | powers on; `{"state": "On"}` |
//!
//! so a sled's `spec.powerController` is `http://ADDRESS/sleds/NAME` ([`power_controller_url`])
//! and its API is `GET/POST {url}/power`, as `SledSpec` documents. [`sled_router`] serves one
//! sled at `/power` for a process that hosts only that sled. Unknown sleds are 404; power
//! operations are idempotent.
//!
//! # Assumptions
//! - One `SledHandle` per data directory at a time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentConfig};
use crate::fault::{self, FaultState};
use crate::hypervisor::HypervisorError;
use crate::reconcile::DisplayChain;
use crate::sim::{PowerState, SimHypervisor};
use crate::v2p_table::{SimV2pTable, V2pTableError};

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
    /// Opens the machine in `config.data_dir`, powers it per `mode` and starts the agent.
    pub async fn start(config: AgentConfig, mode: StartMode) -> Result<SledHandle, SledError> {
        let machine = SimHypervisor::open(&config.data_dir, config.sim, config.capacity)?;
        if mode == StartMode::ColdStart {
            machine.power_off()?;
        }
        let boot_id = machine.power_on()?;
        let v2p = Arc::new(SimV2pTable::open(&config.data_dir, boot_id)?);
        let handle = SledHandle {
            inner: Arc::new(SledInner {
                fault_address: std::sync::Mutex::new(config.fault_listen),
                v2p,
                config,
                machine,
                process: tokio::sync::Mutex::new(None),
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
    config: AgentConfig,
    machine: Arc<SimHypervisor>,
    /// The machine's V2P table: it survives agent restarts, not a power-off.
    v2p: Arc<SimV2pTable>,
    /// Where the fault API listens; a port 0 becomes the bound port, kept across restarts.
    fault_address: std::sync::Mutex<Option<SocketAddr>>,
    process: tokio::sync::Mutex<Option<AgentProcess>>,
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
        let task = tokio::spawn(agent_process(
            self.config.clone(),
            self.machine.clone(),
            self.v2p.clone(),
            listener,
            stop.clone(),
        ));
        Ok(AgentProcess { stop, task })
    }
}

/// The agent under a supervisor (restarted with backoff when it fails), next to the fault API.
async fn agent_process(
    config: AgentConfig,
    machine: Arc<SimHypervisor>,
    v2p: Arc<SimV2pTable>,
    listener: Option<TcpListener>,
    stop: CancellationToken,
) {
    let address = listener.as_ref().and_then(|l| l.local_addr().ok());
    // The migration API is served next to the fault API by whichever agent run is up.
    let slot = crate::migration::AgentSlot::default();
    let serve = async {
        let Some(listener) = listener else { return };
        let router = fault::router(FaultState {
            machine: machine.clone(),
            heartbeats: config.heartbeats.clone(),
            v2p: v2p.clone(),
        })
        .merge(crate::migration::router(slot.clone()));
        let stopped = stop.clone();
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
        {
            tracing::warn!(sled = %config.sled_name, %error, "the fault API stopped");
        }
    };
    let supervise = async {
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut agent = Agent::new(config.clone(), machine.clone())
                .with_slot(slot.clone())
                .with_v2p_table(v2p.clone());
            if let Some(address) = address {
                agent = agent.with_address(address.to_string());
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

impl SledHandle {
    pub fn name(&self) -> &str {
        &self.inner.config.sled_name
    }

    pub fn power_state(&self) -> PowerState {
        self.inner.machine.power()
    }

    pub fn is_on(&self) -> bool {
        self.inner.machine.is_on()
    }

    /// The sled's machine (for fault injection in-process).
    pub fn machine(&self) -> &Arc<SimHypervisor> {
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
        self.inner.machine.power_off()?;
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
        let boot_id = self.inner.machine.power_on()?;
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

/// `spec.powerController` of sled `name` whose controller is served by [`router`] at `base`
/// (for example `http://127.0.0.1:7070`).
pub fn power_controller_url(base: &str, name: &str) -> String {
    format!("{}/sleds/{name}", base.trim_end_matches('/'))
}

/// The sleds whose power controllers [`router`] serves. Clones share the set.
#[derive(Clone, Default)]
pub struct PowerControllers(Arc<RwLock<BTreeMap<String, SledHandle>>>);

impl PowerControllers {
    pub fn insert(&self, sled: SledHandle) {
        self.0
            .write()
            .expect("controllers lock")
            .insert(sled.name().to_string(), sled);
    }

    pub fn remove(&self, name: &str) -> Option<SledHandle> {
        self.0.write().expect("controllers lock").remove(name)
    }

    pub fn get(&self, name: &str) -> Option<SledHandle> {
        self.0.read().expect("controllers lock").get(name).cloned()
    }

    pub fn sleds(&self) -> Vec<SledHandle> {
        self.0
            .read()
            .expect("controllers lock")
            .values()
            .cloned()
            .collect()
    }
}

/// `{"state": "On"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerStatus {
    pub state: PowerState,
}

#[derive(Serialize)]
struct SledPower {
    name: String,
    state: PowerState,
}

/// Why a power request failed.
#[derive(Debug, thiserror::Error)]
pub enum PowerApiError {
    #[error("no sled {0} here")]
    UnknownSled(String),
    #[error("power operation")]
    Sled(#[from] SledError),
}

impl IntoResponse for PowerApiError {
    fn into_response(self) -> Response {
        let code = match self {
            PowerApiError::UnknownSled(_) => StatusCode::NOT_FOUND,
            PowerApiError::Sled(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = DisplayChain(&self).to_string();
        (code, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// The power controllers of many sleds (see the module docs).
pub fn router(controllers: PowerControllers) -> Router {
    Router::new()
        .route("/sleds", get(list_sleds))
        .route("/sleds/{name}/power", get(sled_power))
        .route("/sleds/{name}/power/{operation}", post(sled_operate))
        .with_state(controllers)
}

/// The power controller of one sled, at `/power`.
pub fn sled_router(sled: SledHandle) -> Router {
    Router::new()
        .route("/power", get(power))
        .route("/power/{operation}", post(operate))
        .with_state(sled)
}

async fn list_sleds(State(controllers): State<PowerControllers>) -> axum::Json<Vec<SledPower>> {
    axum::Json(
        controllers
            .sleds()
            .into_iter()
            .map(|sled| SledPower {
                name: sled.name().to_string(),
                state: sled.power_state(),
            })
            .collect(),
    )
}

fn lookup(controllers: &PowerControllers, name: String) -> Result<SledHandle, PowerApiError> {
    controllers
        .get(&name)
        .ok_or(PowerApiError::UnknownSled(name))
}

async fn sled_power(
    State(controllers): State<PowerControllers>,
    Path(name): Path<String>,
) -> Result<axum::Json<PowerStatus>, PowerApiError> {
    power(State(lookup(&controllers, name)?)).await
}

async fn sled_operate(
    State(controllers): State<PowerControllers>,
    Path((name, operation)): Path<(String, String)>,
) -> Result<Response, PowerApiError> {
    operate(State(lookup(&controllers, name)?), Path(operation)).await
}

async fn power(State(sled): State<SledHandle>) -> Result<axum::Json<PowerStatus>, PowerApiError> {
    Ok(axum::Json(PowerStatus {
        state: sled.power_state(),
    }))
}

async fn operate(
    State(sled): State<SledHandle>,
    Path(operation): Path<String>,
) -> Result<Response, PowerApiError> {
    match operation.as_str() {
        "off" => sled.power_off().await?,
        "on" => sled.power_on().await?,
        _ => return Ok(StatusCode::NOT_FOUND.into_response()),
    }
    Ok(axum::Json(PowerStatus {
        state: sled.power_state(),
    })
    .into_response())
}
