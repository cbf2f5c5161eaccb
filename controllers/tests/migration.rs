//! The migration controller and the instance controller together, against a real API server,
//! with the test playing the node-agents (it writes `Vmm.status` as agents would, and removes
//! their finalizer when a Vmm is deleted). What this shows: a Migration goes Pending →
//! Scheduling → TargetStarting → Transferring → Switching → Succeeded while the instance
//! switches to the target and its source Vmm is deleted; a cancel mid-transfer ends Cancelled
//! with the instance where it was and the target deleted.

use std::future::Future;
use std::time::Duration;

use corral_apiserver::testing::TestServer;
use corral_crds::condition;
use corral_crds::{
    ConditionStatus, Instance, InstanceSpec, InstanceState, Migration, MigrationPhase,
    MigrationRole, MigrationSpec, Reason, Resources, Sled, SledConditionType, SledSpec, SledStatus,
    TransferProgress, VMM_FINALIZER, Vmm, VmmMigrationPhase, VmmMigrationStatus, VmmState,
    VmmStatus,
};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

/// Every wait gives up after this long.
const BOUND: Duration = Duration::from_secs(20);

async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {BOUND:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Rack {
    _server: TestServer,
    client: kube::Client,
    stop: CancellationToken,
    controllers: tokio::task::JoinHandle<()>,
}

impl Rack {
    async fn start() -> Rack {
        let server = TestServer::start(corral_crds::MANIFESTS).await;
        let client = corral_client::connect(Some(&server.kubeconfig))
            .await
            .expect("a client for the test server");
        for name in ["sled-1", "sled-2", "sled-3"] {
            ready_sled(&client, name).await;
        }
        let stop = CancellationToken::new();
        let config = corral_controllers::Config {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_millis(200),
            ..Default::default()
        };
        let controllers = tokio::spawn(corral_controllers::run(
            client.clone(),
            config,
            stop.clone(),
        ));
        Rack {
            _server: server,
            client,
            stop,
            controllers,
        }
    }

    fn instances(&self) -> Api<Instance> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn vmms(&self) -> Api<Vmm> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn migrations(&self) -> Api<Migration> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Plays the agent of `name`: writes its status.
    async fn report(&self, name: &str, state: VmmState, end: Option<VmmMigrationStatus>) {
        let mut vmm = self.vmms().get(name).await.expect("the vmm");
        let generation = vmm.status.as_ref().map_or(0, |s| s.state_generation) + 1;
        vmm.status = Some(VmmStatus {
            state: Some(state),
            state_generation: generation,
            dirty_bytes_per_second: 16 << 20,
            migration: end,
            ..Default::default()
        });
        self.vmms()
            .replace_status(name, &PostParams::default(), &vmm)
            .await
            .expect("writing the vmm status");
    }

    /// An instance running as `web-v1`, as its agent would report it.
    async fn running_instance(&self) -> Instance {
        let instance = Instance::new(
            "web",
            InstanceSpec {
                cpus: 2,
                memory_mib: 1024,
                image: "debian".into(),
                ..Default::default()
            },
        );
        self.instances()
            .create(&PostParams::default(), &instance)
            .await
            .expect("creating the instance");
        wait_for("web-v1 created", || async {
            self.vmms().get_opt("web-v1").await.ok().flatten()
        })
        .await;
        self.report("web-v1", VmmState::Running, None).await;
        self.instance_in(InstanceState::Running).await
    }

    async fn instance_in(&self, state: InstanceState) -> Instance {
        wait_for(&format!("web {state}"), || async {
            let instance = self.instances().get("web").await.ok()?;
            (instance.status.as_ref()?.state == Some(state)).then_some(instance)
        })
        .await
    }

    async fn migration_in(&self, name: &str, phase: MigrationPhase) -> Migration {
        wait_for(&format!("migration {name} {phase}"), || async {
            let migration = self.migrations().get(name).await.ok()?;
            (migration.status.as_ref()?.phase == Some(phase)).then_some(migration)
        })
        .await
    }

    async fn migrate(&self, name: &str) {
        let migration = Migration::new(
            name,
            MigrationSpec {
                instance: "web".into(),
                ..Default::default()
            },
        );
        self.migrations()
            .create(&PostParams::default(), &migration)
            .await
            .expect("creating the migration");
    }

    /// Plays the agent tearing down a deleted Vmm: waits for the deletion, drops the finalizer.
    async fn torn_down(&self, name: &str) {
        wait_for(&format!("{name} deleted"), || async {
            let vmm = self.vmms().get_opt(name).await.ok()??;
            vmm.metadata.deletion_timestamp.is_some().then_some(())
        })
        .await;
        let patch = serde_json::json!({"metadata": {"finalizers": []}});
        let _ = self
            .vmms()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        wait_for(&format!("{name} gone"), || async {
            self.vmms()
                .get_opt(name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(BOUND, self.controllers).await;
    }
}

async fn ready_sled(client: &kube::Client, name: &str) {
    let sleds: Api<Sled> = Api::all(client.clone());
    let sled = sleds
        .create(
            &PostParams::default(),
            &Sled::new(name, SledSpec::default()),
        )
        .await
        .expect("creating a sled");
    let mut status = SledStatus {
        capacity: Resources {
            cpus: 16,
            memory_mib: 16 * 1024,
        },
        epoch: 1,
        migration_bandwidth: 1_250_000_000,
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
    let mut ready = sled;
    ready.status = Some(status);
    sleds
        .replace_status(name, &PostParams::default(), &ready)
        .await
        .expect("writing the sled status");
}

fn end(role: MigrationRole, phase: VmmMigrationPhase, sent: u64) -> VmmMigrationStatus {
    VmmMigrationStatus {
        migration: "move".into(),
        role,
        phase,
        progress: TransferProgress {
            memory_bytes: 1 << 30,
            bytes_sent: sent,
            round: 1,
            percent: 50,
            ..Default::default()
        },
        reason: None,
        message: String::new(),
        timings: Default::default(),
    }
}

#[tokio::test]
async fn a_migration_moves_the_instance_and_the_source_goes() {
    let rack = Rack::start().await;
    let before = rack.running_instance().await;
    let source_sled = before.status.as_ref().unwrap().sled.clone().unwrap();

    rack.migrate("move").await;
    // The instance controller names the target and creates it with migrateFrom.
    let target = wait_for("the target vmm", || async {
        rack.vmms().get_opt("web-v2").await.ok().flatten()
    })
    .await;
    let from = target
        .spec
        .migrate_from
        .clone()
        .expect("a migration target");
    assert_eq!(
        (from.vmm.as_str(), from.migration.as_str()),
        ("web-v1", "move")
    );
    assert_ne!(target.spec.sled, source_sled, "never onto the source sled");
    assert!(target.finalizers().contains(&VMM_FINALIZER.to_string()));
    let migrating = rack.instance_in(InstanceState::Migrating).await;
    assert_eq!(
        migrating.status.as_ref().unwrap().target_vmm.as_deref(),
        Some("web-v2")
    );
    rack.migration_in("move", MigrationPhase::TargetStarting)
        .await;

    rack.report(
        "web-v2",
        VmmState::Migrating,
        Some(end(
            MigrationRole::Target,
            VmmMigrationPhase::Transferring,
            1 << 29,
        )),
    )
    .await;
    let transferring = rack
        .migration_in("move", MigrationPhase::Transferring)
        .await;
    let progress = transferring.status.unwrap().progress.unwrap();
    assert_eq!((progress.bytes_sent, progress.percent), (1 << 29, 50));

    // The target holds the whole guest: the instance switches, the source goes.
    rack.report(
        "web-v2",
        VmmState::Migrating,
        Some(end(
            MigrationRole::Target,
            VmmMigrationPhase::Ready,
            1 << 30,
        )),
    )
    .await;
    rack.torn_down("web-v1").await;
    let done = rack.migration_in("move", MigrationPhase::Succeeded).await;
    let instance = rack.instances().get("web").await.unwrap();
    let status = instance.status.unwrap();
    assert_eq!(status.active_vmm.as_deref(), Some("web-v2"));
    assert_eq!(status.sled.as_deref(), Some(target.spec.sled.as_str()));
    assert_eq!(
        status.location_generation,
        before.status.unwrap().location_generation + 1
    );
    assert_eq!(
        done.status.unwrap().location_generation,
        Some(status.location_generation)
    );
    rack.report("web-v2", VmmState::Running, None).await;
    rack.instance_in(InstanceState::Running).await;
    rack.stop().await;
}

#[tokio::test]
async fn a_cancel_mid_transfer_leaves_the_instance_where_it_runs() {
    let rack = Rack::start().await;
    let before = rack.running_instance().await;
    rack.migrate("move").await;
    wait_for("the target vmm", || async {
        rack.vmms().get_opt("web-v2").await.ok().flatten()
    })
    .await;
    rack.report(
        "web-v2",
        VmmState::Migrating,
        Some(end(
            MigrationRole::Target,
            VmmMigrationPhase::Transferring,
            1 << 20,
        )),
    )
    .await;
    rack.migration_in("move", MigrationPhase::Transferring)
        .await;

    let patch = serde_json::json!({"spec": {"cancel": true}});
    rack.migrations()
        .patch("move", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    rack.torn_down("web-v2").await;
    let cancelled = rack.migration_in("move", MigrationPhase::Cancelled).await;
    assert_eq!(
        cancelled.status.unwrap().reason,
        Some(Reason::MigrationCancelled)
    );
    let instance = rack.instance_in(InstanceState::Running).await;
    let status = instance.status.unwrap();
    let was = before.status.unwrap();
    assert_eq!(status.active_vmm.as_deref(), Some("web-v1"));
    assert_eq!(status.sled, was.sled);
    assert_eq!(status.location_generation, was.location_generation);
    assert!(rack.vmms().get_opt("web-v1").await.unwrap().is_some());

    // One unfinished migration per instance: a new one after the end is admitted again.
    rack.migrate("again").await;
    rack.migration_in("again", MigrationPhase::TargetStarting)
        .await;
    let _ = rack.vmms().delete("web-v3", &DeleteParams::default()).await;
    rack.stop().await;
}
