//! The drain controller against a real API server (Corral's CRDs over a temporary SQLite
//! file). Only the drain controller runs: the test plays the migration controller, the
//! instance controller and the node-agents by writing the statuses they would write. Every wait
//! is bounded.

use std::time::Duration;

use corral_apiserver::testing::TestServer;
use corral_controllers::kit::{Board, Outcome};
use corral_crds::drain::Drain;
use corral_crds::{
    DRAIN_LABEL, DrainPhase, DrainSpec, Instance, InstanceSpec, Migration, MigrationReason, Reason,
    Sled, SledSpec,
};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Every wait gives up after this long.
const BOUND: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, failing the test after [`BOUND`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let polling = async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(BOUND, polling)
        .await
        .unwrap_or_else(|_| panic!("timed out after {BOUND:?} waiting for {what}"))
}

struct Rack {
    _server: TestServer,
    client: kube::Client,
    stop: CancellationToken,
    controller: tokio::task::JoinHandle<()>,
    /// Where the controller's outcomes go.
    board: Board,
}

impl Rack {
    async fn start() -> Rack {
        let server = TestServer::start(corral_crds::MANIFESTS).await;
        let client = corral_client::connect(Some(&server.kubeconfig))
            .await
            .expect("a client for the test server");
        let stop = CancellationToken::new();
        let board = Board::default();
        let controller = tokio::spawn(corral_controllers::drain::controller(
            client.clone(),
            board.clone(),
            stop.clone(),
        ));
        Rack {
            _server: server,
            board,
            client,
            stop,
            controller,
        }
    }

    fn sleds(&self) -> Api<Sled> {
        Api::all(self.client.clone())
    }

    fn instances(&self) -> Api<Instance> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn migrations(&self) -> Api<Migration> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn drains(&self) -> Api<Drain> {
        Api::all(self.client.clone())
    }

    /// A Ready sled with `cpus` CPUs (4 GiB each), `used` of them allocated to `vmms` VMMs.
    async fn sled(&self, name: &str, cpus: u32, used: u32, vmms: u32) {
        self.sleds()
            .create(
                &PostParams::default(),
                &Sled::new(name, SledSpec::default()),
            )
            .await
            .expect("creating a sled");
        self.sled_status(name, cpus, used, vmms).await;
    }

    async fn sled_status(&self, name: &str, cpus: u32, used: u32, vmms: u32) {
        let status = json!({
            "capacity": {"cpus": cpus, "memoryMiB": cpus * 4096},
            "allocated": {"cpus": used, "memoryMiB": used * 4096},
            "vmms": vmms,
            "epoch": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        });
        self.sleds()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .expect("writing a sled's status");
    }

    /// An instance with `cpus` CPUs (4 GiB each) running on `sled`.
    async fn instance(&self, name: &str, cpus: u32, sled: &str) {
        let instance = Instance::new(
            name,
            InstanceSpec {
                cpus,
                memory_mib: cpus as u64 * 4096,
                image: "debian-12".into(),
                ..Default::default()
            },
        );
        self.instances()
            .create(&PostParams::default(), &instance)
            .await
            .expect("creating an instance");
        self.runs_on(name, sled).await;
    }

    /// Writes what the instance controller writes once `name` runs on `sled`.
    async fn runs_on(&self, name: &str, sled: &str) {
        let status =
            json!({"state": "Running", "sled": sled, "activeVmm": format!("{name}-{sled}")});
        self.instances()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .expect("writing an instance's status");
    }

    async fn drain(&self, name: &str, sled: &str, max_parallel: u32) {
        let drain = Drain::new(
            name,
            DrainSpec {
                sled: sled.into(),
                deadline: Some("10m".into()),
                max_parallel,
                force: false,
                cancel: false,
            },
        );
        self.drains()
            .create(&PostParams::default(), &drain)
            .await
            .expect("creating a drain");
    }

    async fn phase(&self, name: &str, phase: DrainPhase) -> Drain {
        let drains = self.drains();
        wait_for(&format!("drain {name} {phase}"), || {
            let drains = drains.clone();
            async move {
                let drain = drains.get(name).await.ok()?;
                (drain.status.as_ref()?.phase? == phase).then_some(drain)
            }
        })
        .await
    }

    /// The Migrations of `drain`, once there are `n`.
    async fn migrations_of(&self, drain: &str, n: usize) -> Vec<Migration> {
        let migrations = self.migrations();
        let selector = format!("{DRAIN_LABEL}={drain}");
        wait_for(&format!("{n} migrations of {drain}"), || {
            let migrations = migrations.clone();
            let selector = selector.clone();
            async move {
                let list = migrations
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                (list.items.len() == n).then_some(list.items)
            }
        })
        .await
    }

    /// Plays the migration controller and the instance controller: the migration succeeded and
    /// the instance runs on the target.
    async fn succeed(&self, migration: &Migration) {
        let name = migration.name_any();
        let target = migration
            .spec
            .target_sled
            .clone()
            .expect("a planned target");
        self.migrations()
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"phase": "Succeeded"}})),
            )
            .await
            .expect("writing a migration's status");
        self.runs_on(&migration.spec.instance, &target).await;
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(BOUND, self.controller)
            .await
            .expect("the controller stops")
            .expect("the controller did not panic");
    }

    /// Stops the controller and starts a fresh one (empty caches, nothing remembered).
    async fn restart_controller(&mut self) {
        self.stop.cancel();
        let old = std::mem::replace(&mut self.controller, tokio::spawn(async {}));
        tokio::time::timeout(BOUND, old)
            .await
            .expect("the controller stops")
            .expect("the controller did not panic");
        self.stop = CancellationToken::new();
        self.controller = tokio::spawn(corral_controllers::drain::controller(
            self.client.clone(),
            self.board.clone(),
            self.stop.clone(),
        ));
    }
}

fn event_reasons(events: &[k8s_openapi::api::core::v1::Event], name: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason.clone())
        .collect()
}

#[tokio::test]
async fn a_drain_cordons_refuses_what_does_not_fit_then_moves_everything_and_completes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rack = Rack::start().await;
    rack.sled("sled-1", 64, 28, 4).await;
    rack.sled("sled-2", 16, 4, 1).await;
    rack.sled("sled-3", 16, 8, 2).await;
    for name in ["a", "b", "c"] {
        rack.instance(name, 4, "sled-1").await;
    }
    rack.instance("db-3", 16, "sled-1").await;

    // db-3 fits nowhere: refused, with what does not fit where; the sled is cordoned anyway.
    rack.drain("first", "sled-1", 2).await;
    let refused = rack.phase("first", DrainPhase::Refused).await;
    let status = refused.status.unwrap();
    assert_eq!(status.reason, Some(Reason::DoesNotFit));
    assert!(
        status.message.contains(
            "default/db-3 (16 CPUs, 65536 MiB) fits no sled: sled-2 has 12 CPUs, 49152 MiB free, \
             sled-3 has 8 CPUs, 32768 MiB free"
        ),
        "{}",
        status.message
    );
    assert!(rack.sleds().get("sled-1").await.unwrap().spec.unschedulable);
    let none = rack
        .migrations()
        .list(&ListParams::default().labels(&format!("{DRAIN_LABEL}=first")))
        .await
        .unwrap();
    assert!(none.items.is_empty(), "a refused drain moves nothing");

    // Without db-3, the plan fits: at most two moves at a time.
    rack.instances()
        .delete("db-3", &DeleteParams::default())
        .await
        .unwrap();
    rack.sled_status("sled-1", 64, 12, 3).await;
    rack.drain("second", "sled-1", 2).await;
    rack.phase("second", DrainPhase::Draining).await;
    let first_two = rack.migrations_of("second", 2).await;
    let drain = rack.drains().get("second").await.unwrap();
    for migration in &first_two {
        assert_eq!(migration.spec.reason, MigrationReason::Drain);
        let owner = &migration.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Drain", drain.uid().unwrap().as_str())
        );
        let item = drain
            .status
            .as_ref()
            .unwrap()
            .plan
            .iter()
            .find(|i| i.instance == migration.spec.instance)
            .expect("the migration's instance is in the plan");
        assert_eq!(migration.spec.target_sled, item.target_sled);
        assert_eq!(
            migration.name_any(),
            format!("second-{}-1", migration.spec.instance)
        );
    }
    // Nothing more while both run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rack.migrations_of("second", 2).await.len(), 2);

    // One succeeds: the third starts.
    rack.succeed(&first_two[0]).await;
    let all = rack.migrations_of("second", 3).await;
    for migration in &all {
        if migration.name_any() != first_two[0].name_any() {
            rack.succeed(migration).await;
        }
    }
    // Every instance moved, but the agent still reports VMMs: not completed.
    let drains = rack.drains();
    let waiting = wait_for("every instance moved", || {
        let drains = drains.clone();
        async move {
            let drain = drains.get("second").await.ok()?;
            let status = drain.status?;
            (status.progress == "3/3").then_some(status)
        }
    })
    .await;
    assert_eq!(waiting.phase, Some(DrainPhase::Draining));
    assert!(
        waiting.message.contains("report no VMM"),
        "{}",
        waiting.message
    );
    // The node-agent reports the sled empty: completed.
    rack.sled_status("sled-1", 64, 0, 0).await;
    let completed = rack.phase("second", DrainPhase::Completed).await;
    let status = completed.status.unwrap();
    assert_eq!(status.reason, Some(Reason::DrainCompleted));
    assert_eq!((status.moved, status.total, status.vmms_left), (3, 3, 0));
    assert!(status.finished_at.is_some());

    // Events are recorded after the status they tell of: wait for the last one.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(rack.client.clone(), "default");
    let events = wait_for("the DrainCompleted event", || {
        let events = events.clone();
        async move {
            let events = events.list(&ListParams::default()).await.ok()?.items;
            event_reasons(&events, "second")
                .contains(&"DrainCompleted".to_string())
                .then_some(events)
        }
    })
    .await;
    assert!(event_reasons(&events, "first").contains(&"DoesNotFit".to_string()));
    let second = event_reasons(&events, "second");
    assert!(second.contains(&"DrainStarted".to_string()), "{second:?}");
    assert!(event_reasons(&events, "sled-1").contains(&"Cordoned".to_string()));
    rack.stop().await;
}

#[tokio::test]
async fn cancelling_a_drain_cancels_its_unfinished_migrations() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rack = Rack::start().await;
    rack.sled("sled-1", 64, 8, 2).await;
    rack.sled("sled-2", 64, 0, 0).await;
    rack.instance("a", 4, "sled-1").await;
    rack.instance("b", 4, "sled-1").await;
    rack.drain("d", "sled-1", 1).await;
    let migrations = rack.migrations_of("d", 1).await;
    rack.drains()
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cancel": true}})),
        )
        .await
        .unwrap();
    let cancelled = rack.phase("d", DrainPhase::Cancelled).await;
    assert_eq!(
        cancelled.status.unwrap().reason,
        Some(Reason::DrainCancelled)
    );
    // The status goes first (it says the drain is cancelled), then the cancel of each move.
    let name = migrations[0].name_any();
    let api = rack.migrations();
    wait_for(&format!("migration {name} asked to cancel"), || {
        let api = api.clone();
        let name = name.clone();
        async move { api.get(&name).await.ok()?.spec.cancel.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rack.migrations_of("d", 1).await.len(), 1, "no new moves");
    let value: Value = serde_json::to_value(rack.sleds().get("sled-1").await.unwrap()).unwrap();
    assert_eq!(
        value["spec"]["unschedulable"],
        json!(true),
        "stays cordoned"
    );
    rack.stop().await;
}

#[tokio::test]
async fn a_restarted_controller_resumes_from_the_status_and_the_migrations_it_finds() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut rack = Rack::start().await;
    rack.sled("sled-1", 64, 8, 2).await;
    rack.sled("sled-2", 64, 0, 0).await;
    rack.instance("a", 4, "sled-1").await;
    rack.instance("b", 4, "sled-1").await;
    rack.drain("d", "sled-1", 1).await;
    let first = rack.migrations_of("d", 1).await;
    assert_eq!(first[0].name_any(), "d-a-1");

    rack.restart_controller().await;
    // The new controller finds the move under way: no second one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rack.migrations_of("d", 1).await.len(), 1);
    rack.succeed(&first[0]).await;
    let both = rack.migrations_of("d", 2).await;
    let second = both
        .iter()
        .find(|m| m.name_any() != "d-a-1")
        .expect("the second move");
    assert_eq!(second.name_any(), "d-b-1");
    rack.succeed(second).await;
    rack.sled_status("sled-1", 64, 0, 0).await;
    let completed = rack.phase("d", DrainPhase::Completed).await;
    assert_eq!(completed.status.unwrap().progress, "2/2");
    rack.stop().await;
}

#[tokio::test]
async fn every_reconcile_of_a_drain_leaves_a_typed_outcome_on_the_board() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rack = Rack::start().await;
    rack.sled("sled-1", 16, 4, 1).await;
    rack.sled("sled-2", 16, 0, 0).await;
    rack.instance("a", 4, "sled-1").await;
    rack.drain("d", "sled-1", 1).await;
    rack.phase("d", DrainPhase::Draining).await;
    let report = wait_for(
        "the board to show the drain Draining, nothing in flight",
        || {
            let board = rack.board.clone();
            async move {
                let report = board.snapshot().remove("drain")?;
                let last = report.last.clone()?;
                let draining = matches!(
                    &last.outcome,
                    Outcome::Applied { phase: Some(phase), .. } if phase == "Draining"
                );
                // Looked at once no reconcile is in flight: one may start at any moment (the
                // Migration's creation wakes the drain again).
                (draining && last.object == "d" && report.in_flight == 0).then_some(report)
            }
        },
    )
    .await;
    assert!(report.applied >= 2, "cordon, then plan: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.in_flight, 0, "{report:?}");
    let Some(Outcome::Applied { did, .. }) = report.last.map(|r| r.outcome) else {
        unreachable!("checked above");
    };
    assert!(did.keys().all(|kind| {
        [
            "WriteStatus",
            "CreateMigration",
            "CancelMigration",
            "Cordon",
            "Event",
        ]
        .contains(kind)
    }));
    rack.stop().await;
}
