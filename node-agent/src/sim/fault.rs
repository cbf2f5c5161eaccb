//! The fault-injection API of a simulated sled, for tests and demos. It is served next to the
//! agent (on `SimSledConfig::fault_listen`, reported as `Sled.status.agentAddress`) and dies with
//! it when the sled loses power.
//!
//! # Routes
//! | method | path | effect |
//! |---|---|---|
//! | GET | `/vmms` | the machine's VMMs: `[{"launch": {...}, "state": "Running", "responsive": true}]` |
//! | POST | `/vmms/{namespace}/{name}/crash` | the guest of Vmm `namespace/name` crashes (`Failed`/`GuestCrashed`) |
//! | POST | `/vmms/{namespace}/{name}/shutdown` | the guest shuts down cleanly (`Stopped`/`GuestShutdown`) |
//! | POST | `/vmms/{namespace}/{name}/kill` | the VMM is killed behind the control plane's back (`Failed`/`VmmKilled`) |
//! | POST | `/vmms/{namespace}/{name}/hang` | the VMM stops answering stop and reboot |
//! | POST | `/vmms/{namespace}/{name}/dirty-rate` | body `{"bytesPerSecond": N}`: the guest dirties N bytes/s from now on (what a live migration must keep up with) |
//! | POST | `/vmms/unknown` | a VMM no Vmm assigns appears; optional body `{"namespace": "default", "instance": "web", "resources": {"cpus": 1, "memoryMiB": 512}}`; answers `{"id": "..."}` |
//! | GET | `/v2p` | the sled's V2P table: `[{"vpc": "blue", "ip": "10.0.0.5", "sled": "sled-03", "locationGeneration": 2}]`, with `"forwardTo": "sled-04"` on an IP this sled forwards (a live migration's source) |
//! | POST | `/v2p/corrupt` | overwrites (or adds) one V2P mapping behind the control plane's back; body `{"vpc": "blue", "ip": "10.0.0.5", "sled": "sled-99"}` (the agent's check restores it, with `DivergenceDetected`/`DivergenceRepaired` Events on the Sled) |
//! | GET | `/heartbeat` | `{"paused": false}` |
//! | POST | `/migrations` | not a fault: the source side of a live migration (`migration/source.rs`) |
//! | POST | `/heartbeat/stop`, `/heartbeat/resume` | stop or resume renewing the sled's Lease |
//! | GET | `/partition` | `{"partitioned": false}` |
//! | POST | `/partition`, `/partition/heal` | cut the agent off from the API server (every request of its API client fails at once, as a dropped connection; its guests run on and this API answers), or end it |
//!
//! A hung sled (its power controller's `POST .../hang`, `power_faults.rs`) answers none of
//! these until it resumes.
//!
//! Over TLS (`http.rs`), only `system:masters` (`admin`) may call these: anyone else gets
//! `401` (no client certificate) or `403`. `POST /migrations` has its own rule (its target's
//! agent only, `migration/source.rs`).
//!
//! Fault requests answer 204; a Vmm with no VMM on the machine is 404, a powered-off machine
//! 409. Errors are `{"error": "..."}`.
//!
//! # Not responsible for
//! Power, and the faults a sled cannot serve itself (a hang, a power controller that does not
//! answer): the power controller's API, `power.rs` and `sim/power_faults.rs` over
//! `sim/power.rs`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::config::HeartbeatSwitch;
use crate::hypervisor::{HypervisorError, VmmId, VmmInfo};
use crate::sim::machine::UnknownVmm;
use crate::sim::sled_machine::{SledMachine, VmmFault};
use crate::sim::switch::Switch;
use crate::sim::v2p_table::{SimV2pTable, V2pRow};
use crate::v2p::table::V2pTableError;

/// What the fault API acts on.
#[derive(Clone, Debug)]
pub struct FaultState {
    pub machine: SledMachine,
    pub heartbeats: HeartbeatSwitch,
    /// The machine's V2P table.
    pub v2p: Arc<SimV2pTable>,
    /// On while the agent is cut off from the API server (`control_path.rs`).
    pub partitioned: Switch,
}

/// Why a fault request failed.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("no VMM of Vmm {namespace}/{name} runs on the machine")]
    NoVmm { namespace: String, name: String },
    #[error("invalid request body")]
    Body(#[source] serde_json::Error),
    #[error("hypervisor")]
    Hypervisor(#[from] HypervisorError),
    #[error("V2P table")]
    V2pTable(#[from] V2pTableError),
}

impl IntoResponse for FaultError {
    fn into_response(self) -> Response {
        let code = match &self {
            FaultError::NoVmm { .. } | FaultError::Hypervisor(HypervisorError::NotFound(_)) => {
                StatusCode::NOT_FOUND
            }
            FaultError::Body(_) => StatusCode::BAD_REQUEST,
            FaultError::Hypervisor(HypervisorError::PoweredOff) => StatusCode::CONFLICT,
            FaultError::Hypervisor(_) | FaultError::V2pTable(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match self.source_message() {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        };
        (code, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}

impl FaultError {
    fn source_message(&self) -> Option<String> {
        std::error::Error::source(self).map(|cause| cause.to_string())
    }
}

/// The fault-injection routes (see the module docs).
pub fn router(state: FaultState) -> Router {
    Router::new()
        .route("/vmms", get(list))
        .route("/vmms/unknown", post(spawn_unknown))
        .route("/vmms/{namespace}/{name}/{fault}", post(inject))
        .route("/v2p", get(v2p_list))
        .route("/v2p/corrupt", post(v2p_corrupt))
        .route("/heartbeat", get(heartbeat))
        .route("/heartbeat/stop", post(heartbeat_stop))
        .route("/heartbeat/resume", post(heartbeat_resume))
        .route("/partition", get(partition).post(partition_start))
        .route("/partition/heal", post(partition_heal))
        .with_state(state)
}

async fn list(State(state): State<FaultState>) -> Result<axum::Json<Vec<VmmInfo>>, FaultError> {
    Ok(axum::Json(state.machine.list().await?))
}

/// The body of a `dirty-rate` fault.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirtyRate {
    bytes_per_second: u64,
}

/// The fault a path names, without its body.
fn vmm_fault(text: &str, body: &[u8]) -> Result<Option<VmmFault>, FaultError> {
    Ok(Some(match text {
        "crash" => VmmFault::Crash,
        "shutdown" => VmmFault::Shutdown,
        "kill" => VmmFault::Kill,
        "hang" => VmmFault::Hang,
        "dirty-rate" => VmmFault::DirtyRate(
            serde_json::from_slice::<DirtyRate>(body)
                .map_err(FaultError::Body)?
                .bytes_per_second,
        ),
        _ => return Ok(None),
    }))
}

async fn inject(
    State(state): State<FaultState>,
    Path((namespace, name, fault)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<StatusCode, FaultError> {
    let Some(fault) = vmm_fault(&fault, &body)? else {
        return Ok(StatusCode::NOT_FOUND);
    };
    if state.machine.inject(&namespace, &name, fault).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(FaultError::NoVmm { namespace, name })
    }
}

#[derive(Serialize)]
struct Spawned {
    id: VmmId,
}

async fn spawn_unknown(
    State(state): State<FaultState>,
    body: Bytes,
) -> Result<axum::Json<Spawned>, FaultError> {
    let unknown = if body.is_empty() {
        UnknownVmm::default()
    } else {
        serde_json::from_slice(&body).map_err(FaultError::Body)?
    };
    let id = state.machine.spawn_unknown(unknown).await?;
    Ok(axum::Json(Spawned { id }))
}

async fn v2p_list(State(state): State<FaultState>) -> axum::Json<Vec<V2pRow>> {
    axum::Json(state.v2p.rows())
}

/// The body of `POST /v2p/corrupt`.
#[derive(Deserialize)]
struct Corruption {
    vpc: String,
    ip: String,
    sled: String,
}

async fn v2p_corrupt(
    State(state): State<FaultState>,
    body: Bytes,
) -> Result<StatusCode, FaultError> {
    let corruption: Corruption = serde_json::from_slice(&body).map_err(FaultError::Body)?;
    if !state.machine.is_on() {
        return Err(HypervisorError::PoweredOff.into());
    }
    state
        .v2p
        .corrupt(&corruption.vpc, &corruption.ip, &corruption.sled)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct HeartbeatState {
    paused: bool,
}

async fn heartbeat(State(state): State<FaultState>) -> axum::Json<HeartbeatState> {
    axum::Json(HeartbeatState {
        paused: state.heartbeats.is_paused(),
    })
}

async fn heartbeat_stop(State(state): State<FaultState>) -> StatusCode {
    state.heartbeats.pause();
    StatusCode::NO_CONTENT
}

async fn heartbeat_resume(State(state): State<FaultState>) -> StatusCode {
    state.heartbeats.resume();
    StatusCode::NO_CONTENT
}

#[derive(Serialize)]
struct PartitionState {
    partitioned: bool,
}

async fn partition(State(state): State<FaultState>) -> axum::Json<PartitionState> {
    axum::Json(PartitionState {
        partitioned: state.partitioned.is_on(),
    })
}

async fn partition_start(State(state): State<FaultState>) -> StatusCode {
    state.partitioned.set(true);
    StatusCode::NO_CONTENT
}

async fn partition_heal(State(state): State<FaultState>) -> StatusCode {
    state.partitioned.set(false);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{ExitReason, Hypervisor, VmmLaunch, VmmRunState};
    use crate::sim::machine::{SimHypervisor, SimTiming};
    use axum::body::Body;
    use axum::http::Request;
    use corral_crds::Resources;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(router: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn inspect(machine: &SimHypervisor, id: &str) -> VmmInfo {
        machine.inspect(&VmmId::from(id)).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn faults_reach_the_machine_by_vmm_name() {
        let dir = tempfile::tempdir().unwrap();
        let machine = SimHypervisor::open(
            dir.path(),
            SimTiming::default(),
            Resources {
                cpus: 8,
                memory_mib: 8192,
            },
        )
        .unwrap();
        let boot_id = machine.power_on().unwrap();
        let v2p = Arc::new(SimV2pTable::open(dir.path(), boot_id).unwrap());
        machine
            .create(&VmmLaunch {
                id: VmmId::from("uid-a"),
                namespace: "default".into(),
                name: "web-v1".into(),
                instance: "web".into(),
                resources: Resources {
                    cpus: 1,
                    memory_mib: 512,
                },
                image: "debian".into(),
                dirty_rate: None,
            })
            .await
            .unwrap();
        let heartbeats = HeartbeatSwitch::default();
        let partitioned = Switch::default();
        let router = router(FaultState {
            machine: SledMachine::Sim(machine.clone()),
            heartbeats: heartbeats.clone(),
            v2p: v2p.clone(),
            partitioned: partitioned.clone(),
        });

        let (status, body) = call(&router, "GET", "/vmms", "").await;
        assert_eq!(status, StatusCode::OK);
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(listed[0]["launch"]["name"], "web-v1");
        assert_eq!(listed[0]["state"], "Starting");

        let (status, _) = call(&router, "POST", "/vmms/default/web-v1/crash", "").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let info = inspect(&machine, "uid-a").await;
        assert_eq!(info.state, VmmRunState::Exited(ExitReason::GuestCrashed));

        let (status, _) = call(
            &router,
            "POST",
            "/vmms/default/web-v1/dirty-rate",
            r#"{"bytesPerSecond": 1048576}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let info = inspect(&machine, "uid-a").await;
        assert_eq!(info.dirty_bytes_per_second, 1048576);
        let (status, _) = call(&router, "POST", "/vmms/default/web-v1/dirty-rate", "{}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, body) = call(&router, "POST", "/vmms/default/nope/kill", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

        let (status, body) = call(
            &router,
            "POST",
            "/vmms/unknown",
            r#"{"namespace":"default","instance":"web"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let spawned: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = VmmId(spawned["id"].as_str().unwrap().to_string());
        assert!(machine.inspect(&id).await.unwrap().is_some());

        let (status, body) = call(
            &router,
            "POST",
            "/v2p/corrupt",
            r#"{"vpc":"blue","ip":"10.0.0.5","sled":"sled-99"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (_, body) = call(&router, "GET", "/v2p", "").await;
        assert_eq!(
            body,
            r#"[{"vpc":"blue","ip":"10.0.0.5","sled":"sled-99","locationGeneration":0}]"#
        );
        let (status, _) = call(&router, "POST", "/v2p/corrupt", "{}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _) = call(&router, "POST", "/heartbeat/stop", "").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(heartbeats.is_paused());
        let (_, body) = call(&router, "GET", "/heartbeat", "").await;
        assert_eq!(body, r#"{"paused":true}"#);
        call(&router, "POST", "/heartbeat/resume", "").await;
        assert!(!heartbeats.is_paused());

        let (status, _) = call(&router, "POST", "/partition", "").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(partitioned.is_on());
        let (_, body) = call(&router, "GET", "/partition", "").await;
        assert_eq!(body, r#"{"partitioned":true}"#);
        call(&router, "POST", "/partition/heal", "").await;
        assert!(!partitioned.is_on());

        machine.power_off().unwrap();
        let (status, _) = call(&router, "POST", "/vmms/default/web-v1/kill", "").await;
        assert_eq!(status, StatusCode::CONFLICT);
    }
}
