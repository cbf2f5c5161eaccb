//! The `PowerController` trait — what switches a sled's machine off and on from outside it
//! (the out-of-band "service processor") — and the HTTP API the controllers reach it by,
//! served over any set of them.
//!
//! # Guarantees a driver gives
//! - [`PowerController::power_off`] cuts the machine's power: its VMMs are gone at once, and
//!   the agent on it dies with it (it finishes nothing). Already off: nothing changes.
//! - [`PowerController::power_on`] boots the machine with a new boot id, and the agent starts
//!   on it (which bumps the sled's epoch). Already on: nothing changes.
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
//! so a sled's `spec.powerController` is `https://ADDRESS/sleds/NAME` ([`power_controller_url`])
//! and its API is `GET/POST {url}/power`, as `SledSpec` documents. [`sled_router`] serves one
//! sled at `/power` for a process that hosts only that sled. Unknown sleds are 404; power
//! operations are idempotent. Errors are `{"error": "..."}`. Whoever serves them over TLS
//! (`http.rs`) lets only `system:masters` and the controllers (`system:corral:controllers`)
//! call them.
//!
//! # Not responsible for
//! Deciding to power a sled off (the controllers' fencing), and what a power cycle means to
//! the agent (a new boot: `agent.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::error::DisplayChain;

/// Whether a machine has power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    On,
    Off,
}

/// Why a power controller could not act.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PowerError(pub Box<dyn std::error::Error + Send + Sync>);

/// The power controller of one sled (see the module docs).
#[async_trait]
pub trait PowerController: Clone + Send + Sync + 'static {
    /// The sled whose machine it switches.
    fn sled_name(&self) -> &str;

    /// Whether the machine has power now.
    async fn power_state(&self) -> Result<PowerState, PowerError>;

    /// Cuts the power (see the module docs).
    async fn power_off(&self) -> Result<(), PowerError>;

    /// Powers on (see the module docs).
    async fn power_on(&self) -> Result<(), PowerError>;
}

/// `spec.powerController` of sled `name` whose controller is served by [`router`] at `base`
/// (for example `https://127.0.0.1:7070`).
pub fn power_controller_url(base: &str, name: &str) -> String {
    format!("{}/sleds/{name}", base.trim_end_matches('/'))
}

/// The sleds whose power controllers [`router`] serves, by sled name. Clones share the set.
#[derive(Clone)]
pub struct PowerControllers<P>(Arc<RwLock<BTreeMap<String, P>>>);

impl<P> Default for PowerControllers<P> {
    fn default() -> Self {
        PowerControllers(Arc::default())
    }
}

impl<P: PowerController> PowerControllers<P> {
    pub fn insert(&self, controller: P) {
        self.0
            .write()
            .expect("controllers lock")
            .insert(controller.sled_name().to_string(), controller);
    }

    pub fn remove(&self, name: &str) -> Option<P> {
        self.0.write().expect("controllers lock").remove(name)
    }

    pub fn get(&self, name: &str) -> Option<P> {
        self.0.read().expect("controllers lock").get(name).cloned()
    }

    pub fn sleds(&self) -> Vec<P> {
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
    Sled(#[from] PowerError),
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
pub fn router<P: PowerController>(controllers: PowerControllers<P>) -> Router {
    Router::new()
        .route("/sleds", get(list_sleds::<P>))
        .route("/sleds/{name}/power", get(sled_power::<P>))
        .route("/sleds/{name}/power/{operation}", post(sled_operate::<P>))
        .with_state(controllers)
}

/// The power controller of one sled, at `/power`.
pub fn sled_router<P: PowerController>(sled: P) -> Router {
    Router::new()
        .route("/power", get(power::<P>))
        .route("/power/{operation}", post(operate::<P>))
        .with_state(sled)
}

async fn list_sleds<P: PowerController>(
    State(controllers): State<PowerControllers<P>>,
) -> Result<axum::Json<Vec<SledPower>>, PowerApiError> {
    let mut sleds = Vec::new();
    for sled in controllers.sleds() {
        sleds.push(SledPower {
            name: sled.sled_name().to_string(),
            state: sled.power_state().await?,
        });
    }
    Ok(axum::Json(sleds))
}

fn lookup<P: PowerController>(
    controllers: &PowerControllers<P>,
    name: String,
) -> Result<P, PowerApiError> {
    controllers
        .get(&name)
        .ok_or(PowerApiError::UnknownSled(name))
}

async fn sled_power<P: PowerController>(
    State(controllers): State<PowerControllers<P>>,
    Path(name): Path<String>,
) -> Result<axum::Json<PowerStatus>, PowerApiError> {
    power(State(lookup(&controllers, name)?)).await
}

async fn sled_operate<P: PowerController>(
    State(controllers): State<PowerControllers<P>>,
    Path((name, operation)): Path<(String, String)>,
) -> Result<Response, PowerApiError> {
    operate(State(lookup(&controllers, name)?), Path(operation)).await
}

async fn power<P: PowerController>(
    State(sled): State<P>,
) -> Result<axum::Json<PowerStatus>, PowerApiError> {
    Ok(axum::Json(PowerStatus {
        state: sled.power_state().await?,
    }))
}

async fn operate<P: PowerController>(
    State(sled): State<P>,
    Path(operation): Path<String>,
) -> Result<Response, PowerApiError> {
    match operation.as_str() {
        "off" => sled.power_off().await?,
        "on" => sled.power_on().await?,
        _ => return Ok(StatusCode::NOT_FOUND.into_response()),
    }
    Ok(axum::Json(PowerStatus {
        state: sled.power_state().await?,
    })
    .into_response())
}
