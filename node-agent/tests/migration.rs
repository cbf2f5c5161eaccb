//! Live migration between two simulated sleds, agent to agent over HTTP, against a real API
//! server. The test plays the instance controller: it names the source active and the target
//! target, creates the target Vmm with `migrateFrom`, and writes the switch or the abort.

mod common;

use std::time::Duration;

use common::migration::{TwoSleds, machine_state};
use common::{Rack, stays_false, wait_for};
use corral_crds::migration::MIB;
use corral_crds::{
    Instance, InstanceSpec, MigrationRole, Reason, VmmMigrationPhase, VmmState, VmmStatus,
};
use corral_node_agent::VmmRunState;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};

/// The guests: 1 CPU, 512 MiB.
const MEMORY_MIB: u64 = 512;
/// 256 MiB/s: the first round of a 512 MiB guest takes two seconds.
const BANDWIDTH: u64 = 256 * MIB;

/// Two sleds, an Instance `web` whose active Vmm `web-v1` runs on sled-1.
type Setup = TwoSleds;

async fn setup() -> Setup {
    let setup = TwoSleds::start(BANDWIDTH).await;
    let rack = &setup.rack;
    let target_status = rack.ready_sled("sled-2").await.status.unwrap();
    assert_eq!(target_status.migration_bandwidth, BANDWIDTH);
    assert!(target_status.agent_address.is_some());

    let instances = instances(rack);
    let instance = Instance {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: InstanceSpec {
            cpus: 1,
            memory_mib: MEMORY_MIB,
            image: "debian-12".into(),
            ..Default::default()
        },
        status: None,
    };
    instances
        .create(&PostParams::default(), &instance)
        .await
        .unwrap();
    name_vmms(rack, Some("web-v1"), None).await;
    rack.create_vmm("web-v1", "sled-1", setup.source_epoch, 1)
        .await;
    let running = rack.vmm_in("web-v1", VmmState::Running).await;
    assert_eq!(running.dirty_bytes_per_second, 32 * MIB);
    setup
}

fn instances(rack: &Rack) -> Api<Instance> {
    Api::namespaced(rack.client.clone(), "default")
}

/// Writes `activeVmm` and `targetVmm` of Instance `web`, as the instance controller does.
async fn name_vmms(rack: &Rack, active: Option<&str>, target: Option<&str>) {
    let patch = serde_json::json!({
        "status": { "activeVmm": active, "targetVmm": target }
    });
    instances(rack)
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Names `web-v2` the target and creates it on sled-2 with `migrateFrom`.
async fn start_migration(setup: &Setup) {
    name_vmms(&setup.rack, Some("web-v1"), Some("web-v2")).await;
    setup.create_target(MEMORY_MIB).await;
}

fn phase(status: &VmmStatus) -> Option<VmmMigrationPhase> {
    status.migration.as_ref().map(|m| m.phase)
}

async fn delete(rack: &Rack, name: &str) {
    rack.vmms()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let vmms = rack.vmms();
    wait_for(&format!("Vmm {name} gone"), || {
        let vmms = vmms.clone();
        async move { vmms.get_opt(name).await.ok()?.is_none().then_some(()) }
    })
    .await;
}

/// Both ends report the transfer, the target holds the whole guest and the source's guest is
/// paused; returns once the target is Ready.
async fn transfer_to_ready(setup: &Setup) {
    let rack = &setup.rack;
    start_migration(setup).await;
    let target = rack
        .vmm_status("web-v2", |s| {
            s.state == Some(VmmState::Migrating)
                && phase(s) == Some(VmmMigrationPhase::Transferring)
        })
        .await;
    assert_eq!(target.migration.unwrap().role, MigrationRole::Target);
    assert_eq!(
        machine_state(&setup.target, "web-v2").await,
        Some(VmmRunState::Receiving)
    );
    let source = rack
        .vmm_status("web-v1", |s| {
            s.state == Some(VmmState::Migrating) && s.migration.is_some()
        })
        .await;
    let migration = source.migration.unwrap();
    assert_eq!(migration.role, MigrationRole::Source);
    assert_eq!(migration.migration, "web-move");
    // Progress is reported while the first round is under way.
    let progressing = rack
        .vmm_status("web-v1", |s| {
            s.migration
                .as_ref()
                .is_some_and(|m| m.progress.bytes_sent > 0)
        })
        .await;
    let progress = progressing.migration.unwrap().progress;
    assert_eq!(progress.memory_bytes, MEMORY_MIB * MIB);
    assert_eq!(progress.bandwidth_bytes_per_second, BANDWIDTH);
    assert_eq!(progress.dirty_bytes_per_second, 32 * MIB);
    assert!(progress.round >= 1);

    let ready = rack
        .vmm_status("web-v2", |s| phase(s) == Some(VmmMigrationPhase::Ready))
        .await;
    assert_eq!(ready.state, Some(VmmState::Migrating));
    let progress = ready.migration.unwrap().progress;
    assert!(progress.bytes_sent >= MEMORY_MIB * MIB, "{progress:?}");
    assert_eq!(progress.bytes_remaining, 0);
    rack.vmm_status("web-v1", |s| phase(s) == Some(VmmMigrationPhase::Ready))
        .await;
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Paused)
    );
    // The target runs nothing until the switch.
    assert_eq!(
        machine_state(&setup.target, "web-v2").await,
        Some(VmmRunState::Receiving)
    );
}

#[tokio::test]
async fn a_migration_completes_after_the_switch() {
    let setup = setup().await;
    let rack = &setup.rack;
    let source_log = rack.record_statuses("web-v1");
    let target_log = rack.record_statuses("web-v2");
    transfer_to_ready(&setup).await;
    // Without the switch nothing resumes.
    assert!(
        stays_false(Duration::from_millis(300), || async {
            machine_state(&setup.target, "web-v2").await == Some(VmmRunState::Running)
                || machine_state(&setup.source, "web-v1").await == Some(VmmRunState::Running)
        })
        .await
    );

    name_vmms(rack, Some("web-v2"), None).await;
    let target = rack
        .vmm_status("web-v2", |s| s.state == Some(VmmState::Running))
        .await;
    assert_eq!(phase(&target), Some(VmmMigrationPhase::Completed));
    assert_eq!(
        machine_state(&setup.target, "web-v2").await,
        Some(VmmRunState::Running)
    );
    // The target stamped every step (the source's pause relayed with `done`); the guest was
    // paused from the source's pause until the target ran it, the 300 ms held above included.
    let timings = target
        .migration
        .as_ref()
        .expect("the target's end")
        .timings
        .clone();
    let stamps: Vec<_> = [
        &timings.started_at,
        &timings.paused_at,
        &timings.received_at,
        &timings.resumed_at,
    ]
    .into_iter()
    .map(|at| at.as_ref().expect("every step stamped").0)
    .collect();
    assert!(stamps.is_sorted(), "{timings:?}");
    let measured = timings.measured().expect("measured");
    assert!(measured.downtime_ms >= 300, "{measured:?}");
    let source = rack
        .vmm_status("web-v1", |s| phase(s) == Some(VmmMigrationPhase::Completed))
        .await;
    assert_eq!(source.reason, Some(Reason::Switching));
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Paused)
    );

    target_log.saw(VmmState::Running).await;
    let target_states = target_log.states();
    assert_eq!(
        target_states.first(),
        Some(&VmmState::Creating),
        "{target_states:?}"
    );
    assert_eq!(
        target_states.last(),
        Some(&VmmState::Running),
        "{target_states:?}"
    );
    assert!(
        target_states.iter().all(|s| matches!(
            s,
            VmmState::Creating | VmmState::Migrating | VmmState::Running
        )),
        "{target_states:?}"
    );
    target_log.assert_generations_rise();
    source_log.assert_generations_rise();

    delete(rack, "web-v1").await;
    assert_eq!(machine_state(&setup.source, "web-v1").await, None);
    assert_eq!(
        machine_state(&setup.target, "web-v2").await,
        Some(VmmRunState::Running)
    );
    setup.shutdown().await;
}

#[tokio::test]
async fn an_abort_after_ready_resumes_the_source() {
    let setup = setup().await;
    let rack = &setup.rack;
    transfer_to_ready(&setup).await;

    name_vmms(rack, Some("web-v1"), None).await;
    let source = rack
        .vmm_status("web-v1", |s| s.state == Some(VmmState::Running))
        .await;
    assert_eq!(phase(&source), Some(VmmMigrationPhase::Aborted));
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Running)
    );
    // The abandoned target never runs the guest.
    assert_eq!(
        machine_state(&setup.target, "web-v2").await,
        Some(VmmRunState::Receiving)
    );

    delete(rack, "web-v2").await;
    assert_eq!(machine_state(&setup.target, "web-v2").await, None);
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Running)
    );
    setup.shutdown().await;
}

#[tokio::test]
async fn a_target_agent_stopped_mid_transfer_fails_it_and_the_source_runs_on() {
    let setup = setup().await;
    let rack = &setup.rack;
    start_migration(&setup).await;
    rack.vmm_status("web-v1", |s| {
        s.migration
            .as_ref()
            .is_some_and(|m| m.progress.bytes_sent > 0)
    })
    .await;

    setup.target.shutdown().await;
    let source = rack
        .vmm_status("web-v1", |s| phase(s) == Some(VmmMigrationPhase::Failed))
        .await;
    assert_eq!(source.state, Some(VmmState::Running));
    let migration = source.migration.unwrap();
    assert_eq!(migration.reason, Some(Reason::TransferFailed));
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Running)
    );
    // Never paused: the transfer broke before the stop-and-copy round.
    assert!(
        stays_false(Duration::from_millis(300), || async {
            machine_state(&setup.source, "web-v1").await != Some(VmmRunState::Running)
        })
        .await
    );

    // The restarted target agent reports the transfer broken and destroys what it received.
    setup.target.restart_agent().await.unwrap();
    let target = rack.vmm_in("web-v2", VmmState::Failed).await;
    assert_eq!(target.reason, Some(Reason::TransferFailed));
    assert_eq!(phase(&target), Some(VmmMigrationPhase::Failed));
    wait_for("the receiving VMM destroyed", || async {
        machine_state(&setup.target, "web-v2")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    setup.shutdown().await;
}

#[tokio::test]
async fn a_guest_dirtying_faster_than_the_link_does_not_converge() {
    let setup = setup().await;
    let rack = &setup.rack;
    let address = rack
        .sleds()
        .get("sled-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .agent_address
        .unwrap();
    // An in-process rack serves plain HTTP: `http://HOST:PORT`.
    let address = address
        .strip_prefix("http://")
        .expect("a plain-HTTP address");
    let response = fault(
        address,
        "/vmms/default/web-v1/dirty-rate",
        &format!(r#"{{"bytesPerSecond": {}}}"#, 2 * BANDWIDTH),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
    let reported = rack
        .vmm_status("web-v1", |s| s.dirty_bytes_per_second == 2 * BANDWIDTH)
        .await;
    assert_eq!(reported.state, Some(VmmState::Running));

    start_migration(&setup).await;
    let source = rack
        .vmm_status("web-v1", |s| phase(s) == Some(VmmMigrationPhase::Failed))
        .await;
    assert_eq!(source.state, Some(VmmState::Running));
    let migration = source.migration.unwrap();
    assert_eq!(migration.reason, Some(Reason::TransferFailed));
    assert!(
        migration.message.contains("did not converge"),
        "{}",
        migration.message
    );
    let target = rack.vmm_in("web-v2", VmmState::Failed).await;
    assert_eq!(target.reason, Some(Reason::TransferFailed));
    assert!(
        target.message.contains("did not converge"),
        "{}",
        target.message
    );
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Running)
    );
    wait_for("the receiving VMM destroyed", || async {
        machine_state(&setup.target, "web-v2")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    setup.shutdown().await;
}

/// POSTs `body` to `path` on the fault API at `address`; returns the raw response.
async fn fault(address: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(common::BOUND, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

/// Waits until the source reports bytes sent: the first round is under way.
async fn transferring(rack: &Rack) {
    rack.vmm_status("web-v1", |s| {
        s.migration
            .as_ref()
            .is_some_and(|m| m.progress.bytes_sent > 0)
    })
    .await;
}

#[tokio::test]
async fn deleting_the_target_mid_transfer_cancels_it_and_the_source_runs_on() {
    let setup = setup().await;
    let rack = &setup.rack;
    start_migration(&setup).await;
    transferring(rack).await;

    delete(rack, "web-v2").await;
    assert_eq!(machine_state(&setup.target, "web-v2").await, None);
    let source = rack
        .vmm_status("web-v1", |s| phase(s) == Some(VmmMigrationPhase::Failed))
        .await;
    assert_eq!(source.state, Some(VmmState::Running));
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Running)
    );
    setup.shutdown().await;
}

#[tokio::test]
async fn deleting_the_source_mid_transfer_fails_the_target() {
    let setup = setup().await;
    let rack = &setup.rack;
    start_migration(&setup).await;
    transferring(rack).await;

    delete(rack, "web-v1").await;
    assert_eq!(machine_state(&setup.source, "web-v1").await, None);
    let target = rack.vmm_in("web-v2", VmmState::Failed).await;
    assert_eq!(target.reason, Some(Reason::TransferFailed));
    wait_for("the receiving VMM destroyed", || async {
        machine_state(&setup.target, "web-v2")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    setup.shutdown().await;
}

#[tokio::test]
async fn restarted_agents_go_on_waiting_for_the_verdict() {
    let setup = setup().await;
    let rack = &setup.rack;
    transfer_to_ready(&setup).await;

    setup.source.restart_agent().await.unwrap();
    setup.target.restart_agent().await.unwrap();
    // The journal kept both ends Ready: nothing resumes, nothing fails.
    assert!(
        stays_false(Duration::from_millis(500), || async {
            machine_state(&setup.target, "web-v2").await != Some(VmmRunState::Receiving)
                || machine_state(&setup.source, "web-v1").await != Some(VmmRunState::Paused)
        })
        .await
    );

    name_vmms(rack, Some("web-v2"), None).await;
    let target = rack
        .vmm_status("web-v2", |s| s.state == Some(VmmState::Running))
        .await;
    assert_eq!(phase(&target), Some(VmmMigrationPhase::Completed));
    rack.vmm_status("web-v1", |s| phase(s) == Some(VmmMigrationPhase::Completed))
        .await;
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Paused)
    );
    setup.shutdown().await;
}

#[tokio::test]
async fn a_source_agent_restarted_mid_transfer_runs_the_guest_on() {
    let setup = setup().await;
    let rack = &setup.rack;
    start_migration(&setup).await;
    transferring(rack).await;

    setup.source.restart_agent().await.unwrap();
    let source = rack
        .vmm_status("web-v1", |s| phase(s) == Some(VmmMigrationPhase::Failed))
        .await;
    assert_eq!(source.state, Some(VmmState::Running));
    assert_eq!(
        source.migration.unwrap().reason,
        Some(Reason::TransferFailed)
    );
    assert_eq!(
        machine_state(&setup.source, "web-v1").await,
        Some(VmmRunState::Running)
    );
    // The target saw its connection end without `done`.
    let target = rack.vmm_in("web-v2", VmmState::Failed).await;
    assert_eq!(target.reason, Some(Reason::TransferFailed));
    setup.shutdown().await;
}

#[tokio::test]
async fn a_source_sled_losing_power_mid_transfer_fails_the_target() {
    let setup = setup().await;
    let rack = &setup.rack;
    start_migration(&setup).await;
    transferring(rack).await;

    setup.source.power_off().await.unwrap();
    let target = rack.vmm_in("web-v2", VmmState::Failed).await;
    assert_eq!(target.reason, Some(Reason::TransferFailed));
    wait_for("the receiving VMM destroyed", || async {
        machine_state(&setup.target, "web-v2")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    setup.shutdown().await;
}
