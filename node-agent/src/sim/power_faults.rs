//! The faults of simulated sleds that their power controllers serve, because the sled cannot
//! serve them itself (a hung sled answers nothing), next to `power.rs`'s power API.
//!
//! # Routes
//! [`router`] serves them for the sleds of [`PowerControllers`], under `/sleds/{name}`;
//! [`sled_router`] for one sled at the root (`corral node-agent --power-listen`). Either way
//! they sit under the sled's `spec.powerController` URL:
//! | method | path | fault |
//! |---|---|---|
//! | POST | `{url}/hang`, `{url}/resume` | the whole sled hangs with power on (agent and guests frozen; power off still works and ends it), or continues where it stopped |
//! | POST | `{url}/power-controller/stop-answering`, `{url}/power-controller/answer` | the sled's `GET/POST {url}/power` wait unanswered (until the caller gives up), or answer again |
//!
//! Faults answer 204; an unknown sled is 404, hanging a powered-off sled 409. Errors are
//! `{"error": "..."}`. Over TLS only `system:masters` may call them (`corral`'s rack commands
//! serve them so), unlike the power API beside them.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::error::DisplayChain;
use crate::hypervisor::HypervisorError;
use crate::power::PowerControllers;
use crate::sim::power::{SledError, SledHandle};

/// Why a fault request failed.
#[derive(Debug, thiserror::Error)]
pub enum PowerFaultError {
    #[error("no sled {0} here")]
    UnknownSled(String),
    #[error("no such fault: {0}")]
    UnknownFault(String),
    #[error("the sled")]
    Sled(#[from] SledError),
}

impl IntoResponse for PowerFaultError {
    fn into_response(self) -> Response {
        let code = match &self {
            PowerFaultError::UnknownSled(_) | PowerFaultError::UnknownFault(_) => {
                StatusCode::NOT_FOUND
            }
            PowerFaultError::Sled(SledError::Machine(HypervisorError::PoweredOff)) => {
                StatusCode::CONFLICT
            }
            PowerFaultError::Sled(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = DisplayChain(&self).to_string();
        (code, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// The faults of every sled of `controllers` (see the module docs).
pub fn router(controllers: PowerControllers<SledHandle>) -> Router {
    Router::new()
        .route("/sleds/{name}/{fault}", post(sled_fault))
        .route(
            "/sleds/{name}/power-controller/{fault}",
            post(sled_power_controller_fault),
        )
        .with_state(controllers)
}

/// The faults of one sled, at the root (see the module docs).
pub fn sled_router(sled: SledHandle) -> Router {
    Router::new()
        .route("/{fault}", post(fault))
        .route("/power-controller/{fault}", post(power_controller_fault))
        .with_state(sled)
}

fn lookup(
    controllers: &PowerControllers<SledHandle>,
    name: String,
) -> Result<SledHandle, PowerFaultError> {
    controllers
        .get(&name)
        .ok_or(PowerFaultError::UnknownSled(name))
}

async fn sled_fault(
    State(controllers): State<PowerControllers<SledHandle>>,
    Path((name, fault_name)): Path<(String, String)>,
) -> Result<StatusCode, PowerFaultError> {
    fault(State(lookup(&controllers, name)?), Path(fault_name)).await
}

async fn sled_power_controller_fault(
    State(controllers): State<PowerControllers<SledHandle>>,
    Path((name, fault_name)): Path<(String, String)>,
) -> Result<StatusCode, PowerFaultError> {
    power_controller_fault(State(lookup(&controllers, name)?), Path(fault_name)).await
}

async fn fault(
    State(sled): State<SledHandle>,
    Path(fault): Path<String>,
) -> Result<StatusCode, PowerFaultError> {
    match fault.as_str() {
        "hang" => sled.hang().await?,
        "resume" => sled.resume().await?,
        _ => return Err(PowerFaultError::UnknownFault(fault)),
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn power_controller_fault(
    State(sled): State<SledHandle>,
    Path(fault): Path<String>,
) -> Result<StatusCode, PowerFaultError> {
    match fault.as_str() {
        "stop-answering" => sled.stop_answering(),
        "answer" => sled.answer(),
        _ => return Err(PowerFaultError::UnknownFault(fault)),
    }
    Ok(StatusCode::NO_CONTENT)
}
