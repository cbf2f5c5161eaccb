//! The node-agent against a real API server: the life of a Vmm, refusals, divergence, and
//! agent restarts. Vmms are created here as the instance controller would create them.

mod common;

use std::time::Duration;

use common::{Rack, stays_false, wait_for};
use corral_crds::condition;
use corral_crds::{
    ConditionStatus, Instance, InstanceSpec, Reason, Resources, SLED_LEASE_NAMESPACE,
    SledConditionType, VMM_FINALIZER, VmmConditionType, VmmState,
};
use corral_node_agent::sim::{SimHypervisor, SimSled, StartMode, UnknownVmm};
use corral_node_agent::{Hypervisor, VmmId, VmmRunState};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};

#[tokio::test]
async fn a_vmm_runs_and_its_reports_only_move_forward() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let registered = rack.ready_sled("sled-1").await;
    assert_eq!(
        registered.labels().get("rack").map(String::as_str),
        Some("test")
    );
    let epoch = registered.status.unwrap().epoch;

    let log = rack.record_statuses("web-v1");
    let vmm = rack.create_vmm("web-v1", "sled-1", epoch, 2).await;
    let running = rack.vmm_in("web-v1", VmmState::Running).await;
    assert_eq!(running.reason, Some(Reason::VmmRunning));
    assert!(running.booted_at.is_some());
    log.saw(VmmState::Running).await;
    assert_eq!(
        log.states(),
        [VmmState::Creating, VmmState::Starting, VmmState::Running]
    );
    log.assert_generations_rise();

    let status = rack.sled_status("sled-1", |status| status.vmms == 1).await;
    assert_eq!(
        status.allocated,
        Resources {
            cpus: 2,
            memory_mib: 1024
        }
    );
    assert_eq!(status.agent_version, corral_node_agent::AGENT_VERSION);
    let machine = sled.machine().list().await.unwrap();
    assert_eq!(machine.len(), 1);
    assert_eq!(machine[0].launch.id, VmmId(vmm.uid().unwrap()));

    let leases: Api<Lease> = Api::namespaced(rack.client.clone(), SLED_LEASE_NAMESPACE);
    let lease = wait_for("the heartbeat lease", || {
        let leases = leases.clone();
        async move { leases.get_opt("sled-1").await.ok()? }
    })
    .await;
    assert!(lease.spec.unwrap().renew_time.is_some());
    sled.shutdown().await;
}

#[tokio::test]
async fn deleting_a_vmm_stops_it_and_releases_the_finalizer() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    rack.create_vmm("web-v1", "sled-1", epoch, 2).await;
    rack.vmm_in("web-v1", VmmState::Running).await;
    rack.sled_status("sled-1", |status| status.vmms == 1).await;

    let log = rack.record_statuses("web-v1");
    rack.vmms()
        .delete("web-v1", &DeleteParams::default())
        .await
        .unwrap();
    let vmms = rack.vmms();
    wait_for("the Vmm to be gone", || {
        let vmms = vmms.clone();
        async move { vmms.get_opt("web-v1").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let states = log.states();
    assert!(
        states.ends_with(&[VmmState::Stopping, VmmState::Destroyed]),
        "{states:?}"
    );
    log.assert_generations_rise();
    assert!(sled.machine().list().await.unwrap().is_empty());
    let status = rack.sled_status("sled-1", |status| status.vmms == 0).await;
    assert_eq!(status.allocated, Resources::default());
    sled.shutdown().await;
}

#[tokio::test]
async fn a_vmm_of_an_older_epoch_is_refused() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    rack.create_vmm("old-v1", "sled-1", epoch - 1, 1).await;
    let failed = rack.vmm_in("old-v1", VmmState::Failed).await;
    assert_eq!(failed.reason, Some(Reason::StaleSledEpoch));
    assert!(sled.machine().list().await.unwrap().is_empty());
    rack.event("default", "old-v1", "StaleSledEpoch").await;

    // A refused Vmm still lets go of its finalizer when deleted.
    rack.vmms()
        .delete("old-v1", &DeleteParams::default())
        .await
        .unwrap();
    let vmms = rack.vmms();
    wait_for("the refused Vmm to be gone", || {
        let vmms = vmms.clone();
        async move { vmms.get_opt("old-v1").await.ok()?.is_none().then_some(()) }
    })
    .await;
    sled.shutdown().await;
}

#[tokio::test]
async fn a_vmm_that_does_not_fit_is_refused() {
    let rack = Rack::start().await;
    let mut config = rack.config("sled-1");
    config.agent.capacity = Resources {
        cpus: 4,
        memory_mib: 8192,
    };
    let sled = SimSled::start(config, StartMode::ColdStart).await.unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    rack.create_vmm("big-v1", "sled-1", epoch, 3).await;
    rack.vmm_in("big-v1", VmmState::Running).await;
    rack.create_vmm("more-v1", "sled-1", epoch, 2).await;
    let failed = rack.vmm_in("more-v1", VmmState::Failed).await;
    assert_eq!(failed.reason, Some(Reason::InsufficientCapacity));
    let status = rack.sled_status("sled-1", |status| status.vmms == 1).await;
    assert_eq!(status.allocated.cpus, 3);
    assert_eq!(sled.machine().list().await.unwrap().len(), 1);
    sled.shutdown().await;
}

#[tokio::test]
async fn a_vmm_killed_behind_the_back_is_reported_diverged() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    let vmm = rack.create_vmm("web-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("web-v1", VmmState::Running).await;

    sled.machine().kill(&VmmId(vmm.uid().unwrap())).unwrap();
    let failed = rack.vmm_in("web-v1", VmmState::Failed).await;
    assert_eq!(failed.reason, Some(Reason::VmmKilled));
    let diverged = condition::find(&failed.conditions, VmmConditionType::Diverged).unwrap();
    assert_eq!(diverged.status, ConditionStatus::True);
    assert_eq!(diverged.reason, Reason::VmmKilled);
    rack.event("default", "web-v1", "DivergenceDetected").await;
    sled.shutdown().await;
}

#[tokio::test]
async fn a_guest_crash_and_a_guest_shutdown_are_reported() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    let crashing = rack.create_vmm("crash-v1", "sled-1", epoch, 1).await;
    let stopping = rack.create_vmm("stop-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("crash-v1", VmmState::Running).await;
    rack.vmm_in("stop-v1", VmmState::Running).await;

    sled.machine()
        .crash(&VmmId(crashing.uid().unwrap()))
        .unwrap();
    sled.machine()
        .guest_shutdown(&VmmId(stopping.uid().unwrap()))
        .unwrap();
    let crashed = rack.vmm_in("crash-v1", VmmState::Failed).await;
    assert_eq!(crashed.reason, Some(Reason::GuestCrashed));
    let stopped = rack.vmm_in("stop-v1", VmmState::Stopped).await;
    assert_eq!(stopped.reason, Some(Reason::GuestShutdown));
    // Ended VMMs hold their resources until their Vmms are deleted.
    let status = rack.sled_status("sled-1", |status| status.vmms == 2).await;
    assert_eq!(status.allocated.cpus, 2);
    sled.shutdown().await;
}

#[tokio::test]
async fn a_reboot_request_reboots_the_guest_in_place() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    let vmm = rack.create_vmm("web-v1", "sled-1", epoch, 1).await;
    let first = rack.vmm_in("web-v1", VmmState::Running).await;

    let log = rack.record_statuses("web-v1");
    let patch = serde_json::json!({ "spec": { "rebootRequest": "r1" } });
    rack.vmms()
        .patch("web-v1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rebooted = rack
        .vmm_status("web-v1", |status| {
            status.handled_reboot_request.as_deref() == Some("r1")
                && status.state == Some(VmmState::Running)
        })
        .await;
    // `bootedAt` has whole seconds on the wire: it cannot go down, and the generation rose.
    assert!(rebooted.booted_at >= first.booted_at);
    assert!(rebooted.state_generation > first.state_generation);
    log.saw(VmmState::Starting).await;
    log.assert_generations_rise();
    let machine = sled.machine().list().await.unwrap();
    assert_eq!(machine.len(), 1, "rebooted in place, not recreated");
    assert_eq!(machine[0].launch.id, VmmId(vmm.uid().unwrap()));
    sled.shutdown().await;
}

#[tokio::test]
async fn an_unknown_vmm_is_destroyed_and_the_divergence_repaired() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    rack.ready_sled("sled-1").await;
    let instances: Api<Instance> = Api::namespaced(rack.client.clone(), "default");
    let instance = Instance {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        },
        spec: InstanceSpec {
            cpus: 1,
            memory_mib: 512,
            image: "debian-12".into(),
            ..Default::default()
        },
        status: None,
    };
    instances
        .create(&PostParams::default(), &instance)
        .await
        .unwrap();

    // The divergence lasts as long as the repair: a watch sees it, polling might not.
    let recording = rack.record_sled("sled-1");
    recording.wait_for(|_| true).await;
    let unknown = sled
        .machine()
        .spawn_unknown(UnknownVmm {
            namespace: Some("default".into()),
            instance: Some("web".into()),
            resources: Resources {
                cpus: 1,
                memory_mib: 512,
            },
        })
        .unwrap();
    let diverged = recording
        .wait_for(|status| condition::is_true(&status.conditions, SledConditionType::Diverged))
        .await;
    let condition = condition::find(&diverged.conditions, SledConditionType::Diverged).unwrap();
    assert_eq!(condition.reason, Reason::UnknownVmm);
    assert!(condition.message.contains(unknown.as_str()));

    let repaired = rack
        .sled_status("sled-1", |status| {
            condition::find(&status.conditions, SledConditionType::Diverged)
                .is_some_and(|c| c.status == ConditionStatus::False)
        })
        .await;
    let condition = condition::find(&repaired.conditions, SledConditionType::Diverged).unwrap();
    assert_eq!(condition.reason, Reason::DivergenceRepaired);
    assert!(sled.machine().inspect(&unknown).await.unwrap().is_none());
    rack.event("default", "sled-1", "DivergenceDetected").await;
    rack.event("default", "sled-1", "DivergenceRepaired").await;
    rack.event("default", "web", "DivergenceDetected").await;
    sled.shutdown().await;
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_running_vmms() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    let first = rack.create_vmm("a-v1", "sled-1", epoch, 1).await;
    rack.create_vmm("b-v1", "sled-1", epoch, 1).await;
    let before = rack.vmm_in("a-v1", VmmState::Running).await;
    rack.vmm_in("b-v1", VmmState::Running).await;

    sled.restart_agent().await.unwrap();
    assert!(sled.agent_running().await);
    // The new agent finds both VMMs: no report changes, no second copy, the same epoch.
    let vmms = rack.vmms();
    let unchanged = stays_false(Duration::from_secs(1), || {
        let vmms = vmms.clone();
        async move {
            let status = vmms.get("a-v1").await.unwrap().status.unwrap();
            status.state_generation != before.state_generation
        }
    })
    .await;
    assert!(
        unchanged,
        "the restarted agent rewrote a running Vmm's status"
    );
    assert_eq!(sled.machine().list().await.unwrap().len(), 2);
    let status = rack.sled_status("sled-1", |status| status.vmms == 2).await;
    assert_eq!(status.epoch, epoch);

    // The new agent has seen the VMM: a kill now is a kill, not a VMM missing.
    sled.machine().kill(&VmmId(first.uid().unwrap())).unwrap();
    let failed = rack.vmm_in("a-v1", VmmState::Failed).await;
    assert_eq!(failed.reason, Some(Reason::VmmKilled));
    rack.vmm_in("b-v1", VmmState::Running).await;
    sled.shutdown().await;
}

#[tokio::test]
async fn a_vmm_that_vanished_while_no_agent_ran_is_missing() {
    let rack = Rack::start().await;
    let config = rack.config("sled-1");
    let sled = SimSled::start(config.clone(), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    let gone = rack.create_vmm("gone-v1", "sled-1", epoch, 1).await;
    rack.create_vmm("kept-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("gone-v1", VmmState::Running).await;
    let kept = rack.vmm_in("kept-v1", VmmState::Running).await;
    // The process hosting the sled exits; the machine keeps running.
    sled.shutdown().await;
    drop(sled);

    // While no agent runs, one VMM dies (the machine is a separate process).
    {
        let machine =
            SimHypervisor::open(&config.agent.data_dir, config.timing, config.agent.capacity)
                .unwrap();
        assert!(machine.is_on());
        assert_eq!(machine.list().await.unwrap().len(), 2);
        machine.kill(&VmmId(gone.uid().unwrap())).unwrap();
    }
    let sled = SimSled::start(config, StartMode::Resume).await.unwrap();
    let failed = rack.vmm_in("gone-v1", VmmState::Failed).await;
    assert_eq!(failed.reason, Some(Reason::VmmMissing));
    assert!(condition::is_true(
        &failed.conditions,
        VmmConditionType::Diverged
    ));
    let still = rack.vmm_in("kept-v1", VmmState::Running).await;
    assert_eq!(still.state_generation, kept.state_generation);
    let machine = sled.machine().list().await.unwrap();
    assert_eq!(machine.len(), 1);
    assert_eq!(machine[0].state, VmmRunState::Running);
    assert_eq!(
        rack.sleds()
            .get("sled-1")
            .await
            .unwrap()
            .status
            .unwrap()
            .epoch,
        epoch
    );
    sled.shutdown().await;
}

#[tokio::test]
async fn a_vmm_deleted_while_no_agent_ran_is_destroyed_on_start() {
    let rack = Rack::start().await;
    let config = rack.config("sled-1");
    let sled = SimSled::start(config.clone(), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    rack.create_vmm("web-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("web-v1", VmmState::Running).await;
    sled.shutdown().await;

    // Deleted, and its finalizer forced off, while the agent was down.
    rack.vmms()
        .delete("web-v1", &DeleteParams::default())
        .await
        .unwrap();
    let patch = serde_json::json!({ "metadata": { "finalizers": null } });
    rack.vmms()
        .patch("web-v1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(sled.machine().list().await.unwrap().len(), 1);

    sled.power_on().await.unwrap();
    assert!(
        sled.agent_running().await,
        "power_on of a machine that is on starts its agent"
    );
    let machine = sled.machine().clone();
    wait_for("the unassigned VMM to be destroyed", || {
        let machine = machine.clone();
        async move { machine.list().await.ok()?.is_empty().then_some(()) }
    })
    .await;
    rack.event("default", "sled-1", "DivergenceRepaired").await;
    rack.sled_status("sled-1", |status| status.vmms == 0).await;
    sled.shutdown().await;
}

#[tokio::test]
async fn the_sled_status_is_not_rewritten_while_nothing_changes() {
    let rack = Rack::start().await;
    let sled = SimSled::start(rack.config("sled-1"), StartMode::ColdStart)
        .await
        .unwrap();
    let epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
    rack.create_vmm("web-v1", "sled-1", epoch, 1).await;
    rack.vmm_in("web-v1", VmmState::Running).await;
    let settled = rack.sled_status("sled-1", |status| status.vmms == 1).await;
    let version = rack.sleds().get("sled-1").await.unwrap().resource_version();

    // Several scans, heartbeats and status intervals pass: the Sled is not written again.
    let sleds = rack.sleds();
    let untouched = stays_false(Duration::from_secs(1), || {
        let sleds = sleds.clone();
        let version = version.clone();
        async move { sleds.get("sled-1").await.unwrap().resource_version() != version }
    })
    .await;
    assert!(untouched, "the Sled was written while nothing changed");
    assert_eq!(settled.allocated.cpus, 1);
    let vmm = rack.vmms().get("web-v1").await.unwrap();
    assert_eq!(vmm.finalizers(), [VMM_FINALIZER]);
    sled.shutdown().await;
}
