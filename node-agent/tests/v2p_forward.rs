//! Make before break on the source sled of a live migration, with a real API server: the
//! source forwards the instance's IP to the target from the pause until every Ready sled has
//! acknowledged the move, an abort withdraws the forward before the guest resumes, and a
//! restarted agent finds its forwards in the table. The test plays the instance controller
//! (names, switch, abort) and the V2P controller (the VpcRoutes), and a third Ready sled with
//! no agent whose acknowledgement it writes by hand.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::migration::{TwoSleds, machine_state};
use common::{Rack, stays_false, wait_for};
use corral_crds::migration::MIB;
use corral_crds::{
    ConditionStatus, Instance, InstanceSpec, Nic, Reason, Sled, SledConditionType, SledSpec,
    SledStatus, V2pAck, V2pMapping, VmmMigrationPhase, VmmState, VpcRoutes, VpcRoutesSpec,
    condition,
};
use corral_node_agent::VmmRunState;
use corral_node_agent::sim::{SledHandle, V2pRow};
use kube::api::{Api, Patch, PatchParams, PostParams};

const VPC: &str = "blue";
const IP: &str = "10.0.0.5";
/// The Ready sled without an agent: it acknowledges only what the test writes.
const SILENT: &str = "sled-9";

type Setup = TwoSleds;

fn instances(rack: &Rack) -> Api<Instance> {
    Api::namespaced(rack.client.clone(), "default")
}

/// Writes Instance `web`'s status as the instance controller does.
async fn write_instance(rack: &Rack, status: serde_json::Value) {
    instances(rack)
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();
}

/// Writes the VpcRoutes as the V2P controller does: `IP` on `sled`.
async fn route(rack: &Rack, sled: &str, location_generation: u64) -> i64 {
    let api: Api<VpcRoutes> = Api::all(rack.client.clone());
    let mut routes = match api.get_opt(VPC).await.unwrap() {
        Some(routes) => routes,
        None => VpcRoutes::new(VPC, VpcRoutesSpec::default()),
    };
    let since = routes.metadata.generation.map_or(1, |g| g + 1);
    routes.spec.mappings = vec![V2pMapping {
        ip: IP.into(),
        sled: sled.into(),
        location_generation,
        namespace: "default".into(),
        instance: "web".into(),
        since,
    }];
    let written = if routes.metadata.resource_version.is_some() {
        api.replace(VPC, &PostParams::default(), &routes).await
    } else {
        api.create(&PostParams::default(), &routes).await
    };
    written.unwrap().metadata.generation.unwrap()
}

/// Writes the silent sled's status: Ready, having acknowledged `generation` of the VPC.
async fn silent_acknowledges(rack: &Rack, generation: i64) {
    let mut status = SledStatus {
        v2p: vec![V2pAck {
            vpc: VPC.into(),
            generation,
        }],
        ..Default::default()
    };
    condition::set(
        &mut status.conditions,
        SledConditionType::Ready,
        ConditionStatus::True,
        Reason::AgentReady,
        "",
        corral_client::clock::now(),
    );
    rack.sleds()
        .patch_status(
            SILENT,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();
}

async fn setup() -> Setup {
    let setup = TwoSleds::start(2048 * MIB).await;
    let rack = &setup.rack;
    rack.sleds()
        .create(
            &PostParams::default(),
            &Sled::new(SILENT, SledSpec::default()),
        )
        .await
        .unwrap();

    let mut instance = Instance::new(
        "web",
        InstanceSpec {
            cpus: 1,
            memory_mib: 512,
            image: "debian-12".into(),
            nics: vec![Nic {
                name: "net0".into(),
                vpc: VPC.into(),
                ip: IP.into(),
            }],
            ..Default::default()
        },
    );
    instance.metadata.namespace = Some("default".into());
    instances(rack)
        .create(&PostParams::default(), &instance)
        .await
        .unwrap();
    write_instance(
        rack,
        serde_json::json!({ "activeVmm": "web-v1", "sled": "sled-1", "locationGeneration": 1 }),
    )
    .await;
    let generation = route(rack, "sled-1", 1).await;
    silent_acknowledges(rack, generation).await;
    rack.create_vmm("web-v1", "sled-1", setup.source_epoch, 1)
        .await;
    rack.vmm_in("web-v1", VmmState::Running).await;
    setup
}

/// The forward of `IP` in `sled`'s table, as the fault API shows it.
async fn forward_of(sled: &SledHandle) -> Option<String> {
    let address = sled.fault_address().unwrap();
    let body = reqwest_get(address, "/v2p").await;
    let rows: Vec<V2pRow> = serde_json::from_str(&body).unwrap();
    rows.into_iter()
        .find(|row| row.vpc == VPC && row.ip == IP)
        .and_then(|row| row.forward_to)
}

/// `GET path` over a fresh HTTP/1.1 connection; returns the body.
async fn reqwest_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: sled\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Whether the source table forwards `IP` (read from the machine's table directly).
fn forwards(sled: &SledHandle) -> Option<String> {
    sled.v2p_table()
        .rows()
        .into_iter()
        .find(|row| row.vpc == VPC && row.ip == IP)
        .and_then(|row| row.forward_to)
}

/// Starts the migration of `web` to sled-2 and returns once both ends are Ready (the source
/// guest paused, the target holding the whole guest).
async fn migrate_to_ready(setup: &Setup) {
    let rack = &setup.rack;
    write_instance(
        rack,
        serde_json::json!({ "activeVmm": "web-v1", "targetVmm": "web-v2" }),
    )
    .await;
    // Nothing forwards while the guest runs on the source.
    assert_eq!(forwards(&setup.source), None);
    setup.create_target(512).await;
    // From the pause on, the source forwards (installed before the pause).
    wait_for("the source guest paused", || async {
        (machine_state(&setup.source, "web-v1").await == Some(VmmRunState::Paused)).then_some(())
    })
    .await;
    assert_eq!(forwards(&setup.source).as_deref(), Some("sled-2"));
    let ready = |s: &corral_crds::VmmStatus| {
        s.migration
            .as_ref()
            .is_some_and(|m| m.phase == VmmMigrationPhase::Ready)
    };
    rack.vmm_status("web-v2", ready).await;
    rack.vmm_status("web-v1", ready).await;
    assert_eq!(forward_of(&setup.source).await.as_deref(), Some("sled-2"));
    assert_eq!(forwards(&setup.target), None);
}

#[tokio::test]
async fn the_source_forwards_from_the_pause_until_every_ready_sled_acknowledged() {
    let setup = setup().await;
    let rack = &setup.rack;
    migrate_to_ready(&setup).await;

    // The switch: the target runs the guest; the source still forwards.
    write_instance(
        rack,
        serde_json::json!({
            "activeVmm": "web-v2", "targetVmm": null, "sled": "sled-2", "locationGeneration": 2
        }),
    )
    .await;
    rack.vmm_in("web-v2", VmmState::Running).await;
    assert_eq!(
        machine_state(&setup.target, "web-v2").await,
        Some(VmmRunState::Running)
    );
    assert_eq!(forwards(&setup.source).as_deref(), Some("sled-2"));

    // The move is in the VpcRoutes; both agents acknowledge it, the silent sled does not:
    // the forward stays, through the source's teardown too.
    let moved = route(rack, "sled-2", 2).await;
    wait_for("both agents acknowledged the move", || async {
        for name in ["sled-1", "sled-2"] {
            let status = rack.sleds().get(name).await.ok()?.status?;
            status
                .v2p
                .iter()
                .any(|ack| ack.vpc == VPC && ack.generation >= moved)
                .then_some(())?;
        }
        Some(())
    })
    .await;
    rack.vmms()
        .delete("web-v1", &Default::default())
        .await
        .unwrap();
    assert!(
        stays_false(Duration::from_millis(1000), || async {
            forwards(&setup.source).is_none()
        })
        .await,
        "the forward went before every Ready sled acknowledged"
    );

    // The last Ready sled acknowledges: the forward goes.
    silent_acknowledges(rack, moved).await;
    wait_for("the forward withdrawn", || async {
        forwards(&setup.source).is_none().then_some(())
    })
    .await;
    assert_eq!(
        machine_state(&setup.target, "web-v2").await,
        Some(VmmRunState::Running)
    );
    setup.shutdown().await;
}

#[tokio::test]
async fn an_abort_withdraws_the_forward_before_the_guest_resumes_even_after_a_restart() {
    let setup = setup().await;
    let rack = &setup.rack;
    migrate_to_ready(&setup).await;

    // A restarted agent finds its forward in the table and keeps it: the verdict is pending.
    setup.source.restart_agent().await.unwrap();
    assert!(
        stays_false(Duration::from_millis(600), || async {
            forwards(&setup.source).is_none()
        })
        .await
    );

    // Watch the machine and the table together: never the guest running with the forward.
    let both = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (both, watching) = (both.clone(), watching.clone());
        let source = setup.source.clone();
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let running = machine_state(&source, "web-v1").await == Some(VmmRunState::Running);
                // The table read after the machine: a forward seen then was there while the
                // guest ran.
                if running && forwards(&source).is_some() {
                    both.store(true, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    write_instance(
        rack,
        serde_json::json!({ "activeVmm": "web-v1", "targetVmm": null }),
    )
    .await;
    let source = rack
        .vmm_status("web-v1", |s| s.state == Some(VmmState::Running))
        .await;
    assert_eq!(
        source.migration.map(|m| m.phase),
        Some(VmmMigrationPhase::Aborted)
    );
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Running)
    );
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(
        !both.load(Ordering::Relaxed),
        "the guest ran with a forward away"
    );
    assert_eq!(forwards(&setup.source), None);
    setup.shutdown().await;
}
