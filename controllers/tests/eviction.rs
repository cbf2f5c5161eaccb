//! A drain of a sled holding a `Restart` instance and a `LiveMigrate` one, in a rack that is
//! in-process but real: an API server over a SQLite file, every controller (leader election
//! included) and three simulated sleds whose agents talk HTTP to it and to each other. What
//! this shows, asking the simulated machines what they run (not only the statuses):
//!
//! - both instances end `Running` on another sled, and the drained sled's machine runs nothing;
//! - the `Restart` instance moved by a restart migration: its VMM on the drained sled was gone
//!   before its new one existed anywhere (never two at once, not even for a hand-off), and the
//!   live one by a live migration;
//! - the drain completes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_apiserver::testing::TestServer;
use corral_crds::drain::Drain;
use corral_crds::{
    DRAIN_LABEL, DrainPhase, DrainSpec, EvictionStrategy, Instance, InstanceSpec, InstanceState,
    Migration, MigrationMode, MigrationPhase, Resources, Sled,
};
use corral_node_agent::sim::{
    SimHypervisor, SimSled, SimSledConfig, SimTiming, SledHandle, StartMode,
};
use corral_node_agent::{AgentConfig, Hypervisor, Intervals, VmmRunState};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

/// Every wait gives up after this long.
const BOUND: Duration = Duration::from_secs(60);
const SLEDS: [&str; 3] = ["sled-1", "sled-2", "sled-3"];

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

/// One look at every machine: (sled, VMM name, state) of each VMM of `instance`.
type Sample = Vec<(String, String, VmmRunState)>;

/// What the machines ran, sample after sample, for one instance.
struct Recorder {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    fn start(machines: Vec<(String, Arc<SimHypervisor>)>, instance: &str) -> Recorder {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (record, until, instance) = (samples.clone(), stop.clone(), instance.to_string());
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(2));
            while !until.is_cancelled() {
                every.tick().await;
                let mut sample = Vec::new();
                for (sled, machine) in &machines {
                    for vmm in machine.list().await.unwrap_or_default() {
                        if vmm.launch.instance == instance {
                            sample.push((sled.clone(), vmm.launch.name.clone(), vmm.state));
                        }
                    }
                }
                record.lock().expect("samples lock").push(sample);
            }
        });
        Recorder {
            samples,
            stop,
            task,
        }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("the recorder stops")
            .expect("the recorder did not panic");
        self.samples.lock().expect("samples lock").clone()
    }
}

struct Rack {
    _server: TestServer,
    client: kube::Client,
    _dir: tempfile::TempDir,
    sleds: Vec<SledHandle>,
    stop: CancellationToken,
    controllers: tokio::task::JoinHandle<()>,
}

impl Rack {
    async fn start() -> Rack {
        let server = TestServer::start(corral_crds::MANIFESTS).await;
        let client = corral_client::connect(Some(&server.kubeconfig))
            .await
            .expect("a client for the test server");
        let dir = tempfile::tempdir().expect("a temporary directory");
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
        let mut sleds = Vec::new();
        for name in SLEDS {
            let agent = AgentConfig::new(client.clone(), name, dir.path().join(name));
            let mut config = SimSledConfig::new(agent);
            config.agent.capacity = Resources {
                cpus: 16,
                memory_mib: 16 * 1024,
            };
            config.agent.intervals = Intervals {
                scan: Duration::from_millis(200),
                heartbeat: Duration::from_millis(300),
                sled_status: Duration::from_millis(200),
                ..Intervals::default()
            };
            config.timing = SimTiming {
                boot_time: Duration::from_millis(100),
                stop_time: Duration::from_millis(50),
                ..SimTiming::default()
            };
            // The agents' HTTP API carries the live migration between them.
            config.fault_listen = Some("127.0.0.1:0".parse().expect("an address"));
            let sled = SimSled::start(config, StartMode::ColdStart)
                .await
                .expect("starting a simulated sled");
            sleds.push(sled);
        }
        let rack = Rack {
            _server: server,
            client,
            _dir: dir,
            sleds,
            stop,
            controllers,
        };
        for name in SLEDS {
            let sleds = rack.sleds();
            wait_for(&format!("sled {name} Ready"), || {
                let sleds = sleds.clone();
                async move {
                    let sled = sleds.get_opt(name).await.ok()??;
                    sled.is_ready_and_booted().then_some(())
                }
            })
            .await;
        }
        rack
    }

    fn sleds(&self) -> Api<Sled> {
        Api::all(self.client.clone())
    }

    fn instances(&self) -> Api<Instance> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn machines(&self) -> Vec<(String, Arc<SimHypervisor>)> {
        self.sleds
            .iter()
            .map(|sled| (sled.name().to_string(), sled.machine().clone()))
            .collect()
    }

    /// Every VMM each machine runs, as (instance, VMM, state), by sled.
    async fn machine_lists(&self) -> BTreeMap<String, Vec<(String, String, VmmRunState)>> {
        let mut lists = BTreeMap::new();
        for (sled, machine) in self.machines() {
            let vmms = machine.list().await.expect("the machine's VMMs");
            let list = vmms
                .into_iter()
                .map(|v| (v.launch.instance, v.launch.name, v.state))
                .collect();
            lists.insert(sled, list);
        }
        lists
    }

    async fn cordon(&self, sled: &str, cordoned: bool) {
        let patch = serde_json::json!({"spec": {"unschedulable": cordoned}});
        self.sleds()
            .patch(sled, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("cordoning a sled");
    }

    async fn create(&self, name: &str, eviction_strategy: EvictionStrategy) {
        let instance = Instance {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: InstanceSpec {
                cpus: 1,
                memory_mib: 512,
                image: "debian-12".into(),
                eviction_strategy,
                ..Default::default()
            },
            status: None,
        };
        self.instances()
            .create(&PostParams::default(), &instance)
            .await
            .expect("creating an instance");
    }

    /// Waits until `name` runs on a sled `on` accepts; returns (active Vmm, sled).
    async fn running(&self, name: &str, on: impl Fn(&str) -> bool) -> (String, String) {
        let api = self.instances();
        let on = &on;
        wait_for(&format!("instance {name} running"), || {
            let api = api.clone();
            async move {
                let status = api.get_opt(name).await.ok()??.status?;
                let sled = status.sled.clone()?;
                (status.state == Some(InstanceState::Running) && on(&sled))
                    .then(|| (status.active_vmm.clone().unwrap_or_default(), sled))
            }
        })
        .await
    }

    async fn stop(self) {
        for sled in &self.sleds {
            sled.shutdown().await;
        }
        self.stop.cancel();
        tokio::time::timeout(BOUND, self.controllers)
            .await
            .expect("the controllers stop")
            .expect("the controllers did not panic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_restarts_a_restart_instance_and_live_migrates_a_live_one() {
    let rack = Rack::start().await;
    // Both instances start on sled-1: the others are cordoned until they run.
    rack.cordon("sled-2", true).await;
    rack.cordon("sled-3", true).await;
    rack.create("db", EvictionStrategy::Restart).await;
    rack.create("web", EvictionStrategy::LiveMigrate).await;
    let (db_before, _) = rack.running("db", |sled| sled == "sled-1").await;
    let (web_before, _) = rack.running("web", |sled| sled == "sled-1").await;
    rack.cordon("sled-2", false).await;
    rack.cordon("sled-3", false).await;

    let recorder = Recorder::start(rack.machines(), "db");
    let drain = Drain::new(
        "sled-1-drain",
        DrainSpec {
            sled: "sled-1".into(),
            deadline: Some("10m".into()),
            max_parallel: 2,
            force: false,
            cancel: false,
        },
    );
    let drains: Api<Drain> = Api::all(rack.client.clone());
    drains
        .create(&PostParams::default(), &drain)
        .await
        .expect("creating the drain");
    let done = wait_for("the drain to end", || {
        let drains = drains.clone();
        async move {
            let drain = drains.get("sled-1-drain").await.ok()?;
            drain
                .status
                .as_ref()?
                .phase
                .filter(|p| p.is_final())
                .map(|_| drain)
        }
    })
    .await;
    let status = done.status.expect("a status");
    assert_eq!(
        status.phase,
        Some(DrainPhase::Completed),
        "{}",
        status.message
    );
    let samples = recorder.finish().await;

    // Both run elsewhere, as their statuses say and as the machines run them.
    let (db_after, db_sled) = rack.running("db", |sled| sled != "sled-1").await;
    let (web_after, web_sled) = rack.running("web", |sled| sled != "sled-1").await;
    assert_ne!(db_after, db_before);
    assert_ne!(web_after, web_before);
    let lists = rack.machine_lists().await;
    assert!(
        lists["sled-1"].is_empty(),
        "the drained sled runs {:?}",
        lists["sled-1"]
    );
    for (instance, vmm, sled) in [("db", &db_after, &db_sled), ("web", &web_after, &web_sled)] {
        let found: Vec<_> = lists
            .iter()
            .flat_map(|(on, list)| list.iter().map(move |v| (on, v)))
            .filter(|(_, (of, _, _))| of == instance)
            .collect();
        assert_eq!(found.len(), 1, "{instance} runs once: {found:?}");
        let (on, (_, name, state)) = found[0];
        assert_eq!(
            (on, name, *state),
            (sled, vmm, VmmRunState::Running),
            "{instance}"
        );
    }

    // Each moved by the mode its strategy asks for, and the moves succeeded.
    let migrations: Api<Migration> = Api::namespaced(rack.client.clone(), "default");
    let list = migrations
        .list(&ListParams::default().labels(&format!("{DRAIN_LABEL}=sled-1-drain")))
        .await
        .expect("the drain's migrations");
    let mut moves: Vec<_> = list
        .items
        .iter()
        .map(|m| {
            let phase = m.status.as_ref().and_then(|s| s.phase);
            (m.spec.instance.clone(), m.spec.mode, phase)
        })
        .collect();
    moves.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        moves,
        vec![
            (
                "db".to_string(),
                MigrationMode::Restart,
                Some(MigrationPhase::Succeeded)
            ),
            (
                "web".to_string(),
                MigrationMode::Live,
                Some(MigrationPhase::Succeeded)
            ),
        ]
    );

    // The restart: db's VMM on sled-1 was gone before the new one existed anywhere.
    for sample in &samples {
        let sleds: std::collections::BTreeSet<_> = sample.iter().map(|(sled, _, _)| sled).collect();
        assert!(sleds.len() <= 1, "db on two machines at once: {sample:?}");
    }
    let seen = |vmm: &str| {
        samples
            .iter()
            .position(|s| s.iter().any(|(_, name, _)| name == vmm))
    };
    let last_old = samples
        .iter()
        .rposition(|s| s.iter().any(|(_, name, _)| *name == db_before))
        .expect("the old VMM was seen");
    let first_new = seen(&db_after).expect("the new VMM was seen");
    assert!(
        last_old < first_new,
        "the old VMM outlived the new one's start"
    );
    assert!(
        samples[..=last_old]
            .iter()
            .any(|s| s.iter().any(|(sled, name, state)| sled == "sled-1"
                && *name == db_before
                && *state == VmmRunState::Running)),
        "db ran on sled-1 when the drain began"
    );
    rack.stop().await;
}
