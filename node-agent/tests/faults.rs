//! The faults a simulated sled offers for testing failure, against a real API server on SQLite:
//! a control-path partition, a whole-sled hang, and a power controller that stops answering.
//! Each checks what the simulated machine really runs, not only what Corral wrote.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Rack, stays_false, wait_for};
use corral_crds::{SLED_LEASE_NAMESPACE, VmmState};
use corral_node_agent::power::{self, PowerControllers};
use corral_node_agent::sim::{SimSled, SledHandle, StartMode, power_faults};
use corral_node_agent::{PowerState, VmmRunState};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::Api;
use tower::ServiceExt;

/// Longer than several heartbeats and status writes of the test sleds (300 ms, 200 ms).
const QUIET: Duration = Duration::from_millis(1500);

/// The renew time of the sled's Lease.
async fn renewed(rack: &Rack, sled: &str) -> Option<MicroTime> {
    let leases: Api<Lease> = Api::namespaced(rack.client.clone(), SLED_LEASE_NAMESPACE);
    leases.get_opt(sled).await.ok()??.spec?.renew_time
}

/// The machine's VMMs by name, with their state, as the power controller sees them.
fn machine_states(sled: &SledHandle) -> Vec<(String, VmmRunState)> {
    let mut states: Vec<_> = sled
        .machine()
        .observe()
        .into_iter()
        .map(|vmm| (vmm.launch.name, vmm.state))
        .collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    states
}

/// The Sled's and the Vmm's resourceVersions: what changes if the agent writes anything.
async fn written(rack: &Rack, vmm: &str) -> (Option<String>, Option<String>) {
    let sled = rack.sleds().get("sled-1").await.unwrap();
    let vmm = rack.vmms().get(vmm).await.unwrap();
    (
        sled.metadata.resource_version,
        vmm.metadata.resource_version,
    )
}

/// What the agent has written (Lease, Sled, Vmm), once a request that was under way when the
/// fault started has landed: the first picture that stays the same for a few heartbeats.
async fn settled_writes(rack: &Rack, vmm: &str) -> Writes {
    wait_for("the agent's writes to settle", || async {
        let picture = writes(rack, vmm).await;
        let unchanged = stays_false(Duration::from_millis(700), || async {
            writes(rack, vmm).await != picture
        })
        .await;
        unchanged.then_some(picture)
    })
    .await
}

type Writes = (Option<MicroTime>, (Option<String>, Option<String>));

async fn writes(rack: &Rack, vmm: &str) -> Writes {
    (renewed(rack, "sled-1").await, written(rack, vmm).await)
}

#[tokio::test]
async fn a_partitioned_agent_keeps_its_guests_running_writes_nothing_and_heals() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.epoch();
    rack.create_vmm("web-v1", "sled-1", epoch, 1).await;
    rack.create_vmm("db-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("web-v1", VmmState::Running).await;
    rack.vmm_in("db-v1", VmmState::Running).await;
    rack.sled_status("sled-1", |status| status.vmms == 2).await;
    wait_for("the heartbeat lease", || renewed(&rack, "sled-1")).await;

    sled.partition();
    let before = settled_writes(&rack, "web-v1").await;
    let lease = before.0.clone();
    // A guest crashes while the agent is cut off: it cannot report it.
    let web = sled.machine().find("default", "web-v1").unwrap();
    sled.machine().crash(&web).unwrap();
    assert!(
        stays_false(QUIET, || async { writes(&rack, "web-v1").await != before }).await,
        "a partitioned agent wrote to the API"
    );
    let running = machine_states(&sled);
    assert!(
        running.contains(&("db-v1".to_string(), VmmRunState::Running)),
        "the other guest keeps running: {running:?}"
    );

    sled.heal();
    rack.vmm_in("web-v1", VmmState::Failed).await;
    wait_for("a renewed lease", || async {
        (renewed(&rack, "sled-1").await != lease).then_some(())
    })
    .await;
    assert!(rack.sleds().get("sled-1").await.unwrap().is_ready());
    sled.shutdown().await;
}

#[tokio::test]
async fn a_hung_sled_renews_no_lease_changes_nothing_and_continues_where_it_stopped() {
    let rack = Rack::start().await;
    let mut config = rack.config("sled-1");
    config.timing.boot_time = Duration::from_secs(2);
    config.fault_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let sled = SimSled::start(config, StartMode::ColdStart).await.unwrap();
    let epoch = rack.ready_sled("sled-1").await.epoch();
    wait_for("the heartbeat lease", || renewed(&rack, "sled-1")).await;
    rack.create_vmm("web-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("web-v1", VmmState::Starting).await;

    sled.hang().await.unwrap();
    let frozen = machine_states(&sled);
    assert_eq!(frozen, [("web-v1".to_string(), VmmRunState::Starting)]);
    let before = settled_writes(&rack, "web-v1").await;
    let lease = before.0.clone();
    // Longer than the boot: a hung machine does not finish it, its agent writes nothing.
    assert!(
        stays_false(Duration::from_millis(2500), || async {
            writes(&rack, "web-v1").await != before || machine_states(&sled) != frozen
        })
        .await,
        "a hung sled changed something"
    );
    let fault_api = sled.fault_address().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), http_get(fault_api, "/vmms"))
            .await
            .is_err(),
        "a hung sled's fault API answered"
    );

    sled.resume().await.unwrap();
    rack.vmm_in("web-v1", VmmState::Running).await;
    wait_for("a renewed lease", || async {
        (renewed(&rack, "sled-1").await != lease).then_some(())
    })
    .await;
    sled.shutdown().await;
}

#[tokio::test]
async fn power_off_ends_a_hang() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.epoch();
    rack.create_vmm("web-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("web-v1", VmmState::Running).await;

    sled.hang().await.unwrap();
    tokio::time::timeout(common::BOUND, sled.power_off())
        .await
        .expect("power off answers while the sled hangs")
        .unwrap();
    assert_eq!(sled.power_state(), PowerState::Off);
    assert!(sled.machine().observe().is_empty());
    assert!(
        !sled.agent_running().await,
        "the hung agent died with the power"
    );

    sled.power_on().await.unwrap();
    assert!(!sled.machine().is_frozen());
    rack.sled_status("sled-1", |status| status.epoch > epoch)
        .await;
    sled.shutdown().await;
}

#[tokio::test]
async fn a_power_controller_that_stops_answering_leaves_the_other_sleds_answering() {
    let rack = Rack::start().await;
    let first = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let second = SimSled::start(rack.config("sled-2"), StartMode::ColdStart)
        .await
        .unwrap();
    let controllers = PowerControllers::default();
    controllers.insert(first.clone());
    controllers.insert(second.clone());
    let router = power::router(controllers.clone()).merge(power_faults::router(controllers));

    let status = call(
        &router,
        "POST",
        "/sleds/sled-1/power-controller/stop-answering",
    )
    .await;
    assert_eq!(status, Some(StatusCode::NO_CONTENT));
    assert_eq!(call(&router, "GET", "/sleds/sled-1/power").await, None);
    assert_eq!(call(&router, "POST", "/sleds/sled-1/power/off").await, None);
    assert_eq!(
        first.power_state(),
        PowerState::On,
        "an unanswered request did nothing"
    );
    assert_eq!(
        call(&router, "GET", "/sleds/sled-2/power").await,
        Some(StatusCode::OK)
    );

    call(&router, "POST", "/sleds/sled-1/power-controller/answer").await;
    assert_eq!(
        call(&router, "GET", "/sleds/sled-1/power").await,
        Some(StatusCode::OK)
    );
    // The hang and resume faults are served there too.
    let status = call(&router, "POST", "/sleds/sled-2/hang").await;
    assert_eq!(status, Some(StatusCode::NO_CONTENT));
    assert!(second.machine().is_frozen());
    call(&router, "POST", "/sleds/sled-2/resume").await;
    assert!(!second.machine().is_frozen());
    first.shutdown().await;
    second.shutdown().await;
}

/// The status of `method uri` on `router`, or `None` if it did not answer within 300 ms.
async fn call(router: &axum::Router, method: &str, uri: &str) -> Option<StatusCode> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let answer = router.clone().oneshot(request);
    let response = tokio::time::timeout(Duration::from_millis(300), answer).await;
    response.ok().map(|response| response.unwrap().status())
}

/// A plain HTTP/1.1 GET; returns once the answer's first bytes arrive.
async fn http_get(address: std::net::SocketAddr, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0; 64];
    let read = stream.read(&mut answer).await.unwrap();
    answer.truncate(read);
    answer
}
