//! Simulated sleds' power controllers and fault API against a real API server: a power cycle
//! is a new boot with a new epoch, and faults injected over HTTP reach the agent.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Rack, stays_false, wait_for};
use corral_crds::{Reason, SLED_LEASE_NAMESPACE, VmmState};
use corral_node_agent::power::{self, PowerControllers};
use corral_node_agent::sim::{SimSled, StartMode};
use corral_node_agent::{Hypervisor, HypervisorError, PowerState};
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

async fn call(router: &axum::Router, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn a_power_cycle_bumps_the_epoch_and_refuses_the_old_vmms() {
    let rack = Rack::start().await;
    let mut config = rack.config("sled-1");
    config.agent.power_controller_url =
        Some(power::power_controller_url("http://power.test", "sled-1"));
    let sled = SimSled::start(config, StartMode::ColdStart).await.unwrap();
    let registered = rack.ready_sled("sled-1").await;
    assert_eq!(
        registered.spec.power_controller.as_deref(),
        Some("http://power.test/sleds/sled-1")
    );
    let epoch = registered.status.unwrap().epoch;
    rack.create_vmm("web-v1", "sled-1", epoch, 2).await;
    rack.vmm_in("web-v1", VmmState::Running).await;

    let controllers = PowerControllers::default();
    controllers.insert(sled.clone());
    let router = power::router(controllers);
    let (status, body) = call(&router, "GET", "/sleds/sled-1/power").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({ "state": "On" }));

    let (status, body) = call(&router, "POST", "/sleds/sled-1/power/off").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({ "state": "Off" }));
    assert_eq!(sled.power_state(), PowerState::Off);
    assert!(!sled.agent_running().await);
    assert!(matches!(
        sled.machine().list().await,
        Err(HypervisorError::PoweredOff)
    ));
    // Powered off, nobody reports: the Vmm still says Running (the sled-health controller's
    // business, through the Lease).
    let status = rack.vmms().get("web-v1").await.unwrap().status.unwrap();
    assert_eq!(status.state, Some(VmmState::Running));

    let (status, body) = call(&router, "POST", "/sleds/sled-1/power/on").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({ "state": "On" }));
    let rebooted = rack
        .sled_status("sled-1", |status| status.epoch == epoch + 1)
        .await;
    let failed = rack.vmm_in("web-v1", VmmState::Failed).await;
    assert_eq!(failed.reason, Some(Reason::StaleSledEpoch));
    assert!(sled.machine().list().await.unwrap().is_empty());
    rack.event("default", "sled-1", "SledBooted").await;
    // The failed Vmm holds its place until deleted; a Vmm for the new epoch runs.
    assert_eq!(rebooted.vmms, 1);
    rack.create_vmm("web-v2", "sled-1", epoch + 1, 2).await;
    rack.vmm_in("web-v2", VmmState::Running).await;

    let (status, _) = call(&router, "GET", "/sleds/nope/power").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = call(&router, "GET", "/sleds").await;
    assert_eq!(
        body,
        serde_json::json!([{ "name": "sled-1", "state": "On" }])
    );
    sled.shutdown().await;
}

#[tokio::test]
async fn a_cold_start_is_a_new_boot_and_a_resume_is_not() {
    let rack = Rack::start().await;
    let config = rack.config("sled-1");
    let sled = SimSled::start(config.clone(), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    rack.create_vmm("web-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("web-v1", VmmState::Running).await;
    sled.shutdown().await;
    drop(sled);

    let sled = SimSled::start(config.clone(), StartMode::Resume)
        .await
        .unwrap();
    let status = rack.sled_status("sled-1", |status| status.vmms == 1).await;
    assert_eq!(status.epoch, epoch);
    sled.shutdown().await;
    drop(sled);

    let sled = SimSled::start(config, StartMode::ColdStart).await.unwrap();
    rack.sled_status("sled-1", |status| status.epoch == epoch + 1)
        .await;
    let failed = rack.vmm_in("web-v1", VmmState::Failed).await;
    assert_eq!(failed.reason, Some(Reason::StaleSledEpoch));
    sled.shutdown().await;
}

/// One HTTP/1.1 request over a fresh connection; returns the status code.
async fn http(address: std::net::SocketAddr, method: &str, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: sled\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn faults_injected_over_http_reach_the_agent() {
    let rack = Rack::start().await;
    let mut config = rack.config("sled-1");
    config.fault_listen = Some("127.0.0.1:0".parse().unwrap());
    let sled = SimSled::start(config, StartMode::ColdStart).await.unwrap();
    let address = sled.fault_address().unwrap();
    let registered = rack.ready_sled("sled-1").await;
    let status = registered.status.unwrap();
    // An in-process rack's sleds serve plain HTTP, as its API server does.
    assert_eq!(status.agent_address, Some(format!("http://{address}")));
    rack.create_vmm("web-v1", "sled-1", status.epoch, 1).await;
    rack.vmm_in("web-v1", VmmState::Running).await;

    assert_eq!(
        http(address, "POST", "/vmms/default/web-v1/crash").await,
        204
    );
    let failed = rack.vmm_in("web-v1", VmmState::Failed).await;
    assert_eq!(failed.reason, Some(Reason::GuestCrashed));
    assert_eq!(http(address, "GET", "/vmms").await, 200);
    assert_eq!(http(address, "POST", "/vmms/default/nope/kill").await, 404);

    // Heartbeats stop and resume.
    let leases: Api<Lease> = Api::namespaced(rack.client.clone(), SLED_LEASE_NAMESPACE);
    let renewed = |leases: Api<Lease>| async move {
        leases
            .get_opt("sled-1")
            .await
            .ok()
            .flatten()
            .and_then(|lease| lease.spec?.renew_time)
    };
    wait_for("a heartbeat", || renewed(leases.clone())).await;
    assert_eq!(http(address, "POST", "/heartbeat/stop").await, 204);
    // A renewal already under way may land; after that, none.
    let mut quiet = false;
    for _ in 0..3 {
        let before = renewed(leases.clone()).await;
        quiet = stays_false(Duration::from_millis(900), || {
            let leases = leases.clone();
            let before = before.clone();
            async move { renewed(leases).await != before }
        })
        .await;
        if quiet {
            break;
        }
    }
    assert!(
        quiet,
        "the lease was still renewed after the heartbeat stopped"
    );
    let last = renewed(leases.clone()).await;
    assert_eq!(http(address, "POST", "/heartbeat/resume").await, 204);
    wait_for("heartbeats again", || {
        let leases = leases.clone();
        let last = last.clone();
        async move { (renewed(leases).await != last).then_some(()) }
    })
    .await;

    // The fault API dies with the power and comes back on the same address.
    sled.power_off().await.unwrap();
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
    sled.power_on().await.unwrap();
    assert_eq!(sled.fault_address(), Some(address));
    wait_for("the fault API back", || async move {
        tokio::net::TcpStream::connect(address)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    sled.shutdown().await;
}
