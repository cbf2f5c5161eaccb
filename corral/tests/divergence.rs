//! Divergence is first-class (docs/rack.md, "Divergence"): for each kind — a VMM killed behind
//! the control plane's back, a VMM that vanished while no agent watched (missing), and an
//! unknown VMM claiming an instance — this test injects it into a rack and sees it
//!
//! - *detected*: the node-agent reports it (Vmm `Failed` with the reason, or the Sled's
//!   `unknownVmms`);
//! - *shown*: the Instance has `Diverged=True` with that reason (a watch records every
//!   `Diverged` condition the Instance goes through, so a short-lived one is not missed);
//! - *repaired* per `runStrategy`: `Always` runs again on a new Vmm, `Manual` rests;
//!   an unknown VMM is destroyed while the instance's own VMM keeps running untouched;
//! - *recorded*: Events `DivergenceDetected` and `DivergenceRepaired` on the Instance.
//!
//! The rack is in-process but real: an API server over a SQLite file, the controllers (leader
//! election included) and simulated sleds with their journals, all talking HTTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_apiserver::testing::TestServer;
use corral_crds::condition;
use corral_crds::{
    ConditionStatus, Instance, InstanceConditionType, InstanceSpec, InstanceState, Reason,
    Resources, RunStrategy, UnknownVmmReport,
};
use corral_node_agent::sim::{
    SimHypervisor, SimSled, SimSledConfig, SimTiming, SledHandle, StartMode, UnknownVmm,
};
use corral_node_agent::{AgentConfig, Hypervisor, Intervals};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

/// Every wait gives up after this long.
const BOUND: Duration = Duration::from_secs(30);

/// (status, reason) of an Instance's `Diverged` condition.
type Shown = (ConditionStatus, Reason);

struct Rack {
    server: TestServer,
    client: kube::Client,
    dir: tempfile::TempDir,
    sleds: Vec<SledHandle>,
    stop: CancellationToken,
    controllers: Option<tokio::task::JoinHandle<()>>,
    /// Instance name → every `Diverged` condition a watch saw on it, in order.
    shown: Arc<Mutex<Vec<(String, Shown)>>>,
    watch: tokio::task::JoinHandle<()>,
}

impl Rack {
    /// An API server, the controllers and `sleds` simulated sleds, all Ready.
    async fn start(sleds: usize) -> Rack {
        let server = TestServer::start(corral_crds::MANIFESTS).await;
        let client = corral_client::connect(Some(&server.kubeconfig))
            .await
            .expect("a client for the test server");
        let stop = CancellationToken::new();
        let config = corral_controllers::Config {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_millis(500),
            ..Default::default()
        };
        let controllers = tokio::spawn(corral_controllers::run(
            client.clone(),
            config,
            stop.clone(),
        ));
        let shown = Arc::new(Mutex::new(Vec::new()));
        let watch = tokio::spawn(record_divergence(client.clone(), shown.clone()));
        let mut rack = Rack {
            server,
            client,
            dir: tempfile::tempdir().expect("a temporary directory"),
            sleds: Vec::new(),
            stop,
            controllers: Some(controllers),
            shown,
            watch,
        };
        for index in 1..=sleds {
            let config = rack.sled_config(&format!("sled-{index}"));
            let sled = SimSled::start(config, StartMode::ColdStart)
                .await
                .expect("starting a simulated sled");
            rack.sleds.push(sled);
        }
        for index in 1..=sleds {
            rack.sled_ready(&format!("sled-{index}")).await;
        }
        rack
    }

    /// Fast simulated timing; the Sled status debounce is the default one (1 s), as in a
    /// real rack.
    fn sled_config(&self, name: &str) -> SimSledConfig {
        let agent = AgentConfig::new(self.client.clone(), name, self.dir.path().join(name));
        let mut config = SimSledConfig::new(agent);
        config.agent.capacity = Resources {
            cpus: 16,
            memory_mib: 16 * 1024,
        };
        config.timing = SimTiming {
            boot_time: Duration::from_millis(100),
            stop_time: Duration::from_millis(50),
            ..SimTiming::default()
        };
        config.agent.intervals = Intervals {
            scan: Duration::from_millis(200),
            heartbeat: Duration::from_millis(500),
            ..Intervals::default()
        };
        config
    }

    fn sled(&self, name: &str) -> &SledHandle {
        self.sleds
            .iter()
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("no sled {name}"))
    }

    fn instances(&self) -> Api<Instance> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn sled_ready(&self, name: &str) {
        let sleds: Api<corral_crds::Sled> = Api::all(self.client.clone());
        wait_for(&format!("sled {name} Ready"), || {
            let sleds = sleds.clone();
            async move {
                let sled = sleds.get_opt(name).await.ok()??;
                sled.is_ready_and_booted().then_some(())
            }
        })
        .await;
    }

    async fn create(&self, name: &str, run_strategy: RunStrategy) {
        let instance = Instance {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: InstanceSpec {
                cpus: 1,
                memory_mib: 512,
                image: "debian-12".into(),
                run_strategy,
                ..Default::default()
            },
            status: None,
        };
        self.instances()
            .create(&PostParams::default(), &instance)
            .await
            .expect("creating an instance");
    }

    /// Waits until the Instance's status satisfies `check`; returns it.
    async fn instance(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Instance) -> bool,
    ) -> Instance {
        let api = self.instances();
        let check = &check;
        wait_for(&format!("instance {name}: {what}"), || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok()?.filter(|i| check(i)) }
        })
        .await
    }

    /// Waits until the Instance runs (and is not diverged); returns (active Vmm, sled).
    async fn running(&self, name: &str) -> (String, String) {
        let instance = self
            .instance(name, "Running and not diverged", |i| {
                let Some(status) = &i.status else {
                    return false;
                };
                status.state == Some(InstanceState::Running)
                    && !condition::is_true(&status.conditions, InstanceConditionType::Diverged)
            })
            .await;
        let status = instance.status.expect("a status");
        (
            status.active_vmm.expect("an active Vmm"),
            status.sled.expect("a sled"),
        )
    }

    /// Every `Diverged` condition the watch saw on `name`, in order.
    fn shown(&self, name: &str) -> Vec<Shown> {
        self.shown
            .lock()
            .expect("shown lock")
            .iter()
            .filter(|(instance, _)| instance == name)
            .map(|(_, shown)| *shown)
            .collect()
    }

    /// Waits until the watch saw `Diverged=True` with `reason` on `name`, then (later)
    /// `Diverged=False` with `DivergenceRepaired`.
    async fn shown_then_repaired(&self, name: &str, reason: Reason) {
        wait_for(
            &format!("{name} shown diverged ({reason}) then repaired"),
            || async move {
                let shown = self.shown(name);
                let detected = shown
                    .iter()
                    .position(|s| *s == (ConditionStatus::True, reason))?;
                shown[detected..]
                    .contains(&(ConditionStatus::False, Reason::DivergenceRepaired))
                    .then_some(())
            },
        )
        .await;
    }

    /// Waits until an Event with `reason` about `name` exists; returns its message.
    async fn event(&self, name: &str, reason: Reason) -> String {
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let events = &events;
        wait_for(&format!("an Event {reason} about {name}"), || async move {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some(name)
                        && e.reason.as_deref() == Some(reason.as_str())
                })
                .and_then(|e| e.message)
        })
        .await
    }

    async fn stop(mut self) {
        for sled in &self.sleds {
            sled.shutdown().await;
        }
        self.stop.cancel();
        if let Some(controllers) = self.controllers.take() {
            let _ = tokio::time::timeout(BOUND, controllers).await;
        }
        self.watch.abort();
        let _ = &self.server;
    }
}

/// Records every change of each Instance's `Diverged` condition.
async fn record_divergence(client: kube::Client, shown: Arc<Mutex<Vec<(String, Shown)>>>) {
    let api: Api<Instance> = Api::namespaced(client, "default");
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(item) = stream.next().await {
        let Ok(instance) = item else { continue };
        let name = instance.metadata.name.clone().unwrap_or_default();
        let Some(condition) = instance
            .status
            .as_ref()
            .and_then(|s| condition::find(&s.conditions, InstanceConditionType::Diverged).cloned())
        else {
            continue;
        };
        let entry = (condition.status, condition.reason);
        let mut shown = shown.lock().expect("shown lock");
        let last = shown
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s);
        if last != Some(entry) {
            shown.push((name, entry));
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most [`BOUND`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {BOUND:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_killed_behind_the_back_is_shown_repaired_and_recorded() {
    let rack = Rack::start(2).await;
    rack.create("web", RunStrategy::Always).await;
    rack.create("batch", RunStrategy::Manual).await;
    let (web_vmm, web_sled) = rack.running("web").await;
    let (batch_vmm, batch_sled) = rack.running("batch").await;

    for (vmm, sled) in [(&web_vmm, &web_sled), (&batch_vmm, &batch_sled)] {
        let machine = rack.sled(sled).machine();
        let id = machine
            .find("default", vmm)
            .unwrap_or_else(|| panic!("VMM of {vmm} on {sled}"));
        machine.kill(&id).expect("killing the VMM");
    }

    // Always: shown, then a new Vmm runs and the divergence is repaired.
    rack.shown_then_repaired("web", Reason::VmmKilled).await;
    let (replacement, _) = rack.running("web").await;
    assert_ne!(replacement, web_vmm, "a new Vmm replaces the killed one");
    let detected = rack.event("web", Reason::DivergenceDetected).await;
    assert!(detected.contains("VmmKilled"), "{detected}");
    rack.event("web", Reason::DivergenceRepaired).await;

    // Manual: not restarted; it stays Failed and diverged (it was started, it does not run)
    // until the user starts it again, which repairs it.
    let stopped = rack
        .instance("batch", "Failed and diverged", |i| {
            i.status.as_ref().is_some_and(|s| {
                s.state == Some(InstanceState::Failed)
                    && condition::is_true(&s.conditions, InstanceConditionType::Diverged)
            })
        })
        .await;
    let status = stopped.status.expect("a status");
    assert_eq!(status.active_vmm, None);
    assert_eq!(status.last_exit.map(|e| e.reason), Some(Reason::VmmKilled));
    let start = serde_json::json!({"spec": {"startRequest": "2026-11-21T12:00:00Z"}});
    rack.instances()
        .patch(
            "batch",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&start),
        )
        .await
        .expect("starting batch again");
    rack.shown_then_repaired("batch", Reason::VmmKilled).await;
    let (restarted, _) = rack.running("batch").await;
    assert_ne!(restarted, batch_vmm);
    rack.event("batch", Reason::DivergenceRepaired).await;
    rack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_vanished_while_no_agent_ran_is_missing_and_restarted() {
    let mut rack = Rack::start(2).await;
    rack.create("web", RunStrategy::Always).await;
    let (vmm, sled_name) = rack.running("web").await;

    // The agent process stops (the machine keeps running); meanwhile the VMM dies.
    let index = rack
        .sleds
        .iter()
        .position(|s| s.name() == sled_name)
        .expect("the sled");
    let sled = rack.sleds.remove(index);
    sled.shutdown().await;
    drop(sled);
    let config = rack.sled_config(&sled_name);
    {
        let machine =
            SimHypervisor::open(&config.agent.data_dir, config.timing, config.agent.capacity)
                .expect("opening the machine");
        let id = machine
            .find("default", &vmm)
            .expect("the VMM on the machine");
        machine.kill(&id).expect("killing the VMM");
    }
    let sled = SimSled::start(config, StartMode::Resume)
        .await
        .expect("restarting the agent");
    rack.sleds.push(sled);

    rack.shown_then_repaired("web", Reason::VmmMissing).await;
    let (replacement, _) = rack.running("web").await;
    assert_ne!(replacement, vmm);
    let detected = rack.event("web", Reason::DivergenceDetected).await;
    assert!(detected.contains("VmmMissing"), "{detected}");
    rack.event("web", Reason::DivergenceRepaired).await;
    rack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_vmm_claiming_an_instance_is_shown_on_it_and_destroyed() {
    let rack = Rack::start(2).await;
    rack.create("web", RunStrategy::Always).await;
    let (vmm, sled) = rack.running("web").await;
    let other = if sled == "sled-1" { "sled-2" } else { "sled-1" };
    let sleds: Api<corral_crds::Sled> = Api::all(rack.client.clone());

    // A second copy of "web" appears on the other sled, behind the control plane's back.
    let unknown = rack
        .sled(other)
        .machine()
        .spawn_unknown(UnknownVmm {
            namespace: Some("default".into()),
            instance: Some("web".into()),
            resources: Resources {
                cpus: 1,
                memory_mib: 512,
            },
        })
        .expect("spawning an unknown VMM");

    // Detected: the sled lists it.
    let expected = UnknownVmmReport {
        id: unknown.to_string(),
        namespace: Some("default".into()),
        instance: Some("web".into()),
    };
    let sleds_ref = &sleds;
    let expected_ref = &expected;
    wait_for(&format!("{other} listing the unknown VMM"), || async move {
        let status = sleds_ref.get_opt(other).await.ok()??.status?;
        status.unknown_vmms.contains(expected_ref).then_some(())
    })
    .await;
    // Shown on the instance it claims to be, then repaired.
    rack.shown_then_repaired("web", Reason::UnknownVmm).await;
    let detected = rack.event("web", Reason::DivergenceDetected).await;
    assert!(detected.contains(unknown.as_str()), "{detected}");
    rack.event("web", Reason::DivergenceRepaired).await;
    rack.event(other, Reason::DivergenceRepaired).await;
    // Destroyed, and the instance's own VMM is untouched.
    let machine = rack.sled(other).machine();
    wait_for("the unknown VMM destroyed", || async {
        machine
            .inspect(&unknown)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let (still, on) = rack.running("web").await;
    assert_eq!((still, on), (vmm, sled));
    let status = sleds
        .get(other)
        .await
        .expect("the sled")
        .status
        .expect("a status");
    assert!(status.unknown_vmms.is_empty(), "{:?}", status.unknown_vmms);
    rack.stop().await;
}
