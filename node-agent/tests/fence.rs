//! The node-agent of a fenced sled, against a real API server on SQLite: an agent that learns
//! its sled's epoch rose behind it destroys every VMM on its machine (what the simulated
//! machine runs, not what the status says) and rejoins with an epoch above the fence's.

mod common;

use std::time::Duration;

use common::{Rack, stays_false, wait_for};
use corral_crds::{Reason, VmmState};
use corral_node_agent::Hypervisor;
use corral_node_agent::sim::{SimSled, SledHandle, StartMode};
use kube::api::{Patch, PatchParams};

/// A sled with two running VMMs; returns it and its epoch.
async fn sled_with_two_guests(rack: &Rack) -> (SledHandle, u64) {
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.epoch();
    rack.create_vmm("web-v1", "sled-1", epoch, 2).await;
    rack.create_vmm("db-v1", "sled-1", epoch, 2).await;
    rack.vmm_in("web-v1", VmmState::Running).await;
    rack.vmm_in("db-v1", VmmState::Running).await;
    assert_eq!(sled.machine().list().await.unwrap().len(), 2);
    (sled, epoch)
}

/// Waits until the machine of `sled` runs no VMM.
async fn machine_empties(sled: &SledHandle) {
    wait_for("the machine to run no VMM", || async {
        sled.machine()
            .list()
            .await
            .ok()
            .filter(|vmms| vmms.is_empty())
    })
    .await;
}

#[tokio::test]
async fn an_agent_fenced_behind_its_back_destroys_its_vmms_and_rejoins_above_the_fence() {
    let rack = Rack::start().await;
    let (sled, epoch) = sled_with_two_guests(&rack).await;

    // What the sled-health controller does once the fence is proven.
    let fenced_epoch = epoch + 1;
    let patch = serde_json::json!({ "status": { "epoch": fenced_epoch } });
    rack.sleds()
        .patch_status("sled-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    machine_empties(&sled).await;
    let rejoined = rack
        .sled_status("sled-1", |status| status.epoch > fenced_epoch)
        .await;
    assert_eq!(rejoined.epoch, fenced_epoch + 1);
    assert_eq!(
        rejoined.vmms, 0,
        "the new run holds nothing of the old life"
    );
    let event = rack.event("default", "sled-1", "StaleSledEpoch").await;
    let message = event.message.unwrap_or_default();
    assert!(message.contains("destroyed the 2 VMMs"), "{message}");

    // The old life's Vmms are refused by the new run, never run again.
    let refused = rack.vmm_in("web-v1", VmmState::Failed).await;
    assert_eq!(refused.reason, Some(Reason::StaleSledEpoch));
    assert_eq!(refused.sled_epoch, fenced_epoch + 1);
    assert!(
        stays_false(Duration::from_millis(500), || async {
            !sled.machine().list().await.unwrap().is_empty()
        })
        .await,
        "a VMM of the fenced life came back"
    );
    sled.shutdown().await;
}

#[tokio::test]
async fn a_vmm_placed_above_the_runs_epoch_tells_the_agent_it_was_fenced() {
    let rack = Rack::start().await;
    let (sled, epoch) = sled_with_two_guests(&rack).await;

    // A Vmm placed after a fence this agent has not seen in the Sled yet.
    rack.create_vmm("api-v1", "sled-1", epoch + 3, 1).await;

    machine_empties(&sled).await;
    let rejoined = rack
        .sled_status("sled-1", |status| status.epoch > epoch)
        .await;
    assert_eq!(rejoined.epoch, epoch + 4);
    rack.event("default", "sled-1", "StaleSledEpoch").await;
    sled.shutdown().await;
}

#[tokio::test]
async fn a_restarted_agent_of_a_sled_fenced_while_it_was_away_starts_a_new_life() {
    let rack = Rack::start().await;
    let (sled, epoch) = sled_with_two_guests(&rack).await;
    sled.shutdown().await;

    let patch = serde_json::json!({ "status": { "epoch": epoch + 1 } });
    rack.sleds()
        .patch_status("sled-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    sled.restart_agent().await.unwrap();

    let rejoined = rack
        .sled_status("sled-1", |status| status.epoch > epoch + 1)
        .await;
    assert_eq!(rejoined.epoch, epoch + 2);
    assert!(sled.machine().list().await.unwrap().is_empty());
    sled.shutdown().await;
}
