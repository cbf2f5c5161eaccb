//! What the node-agent's tests share: a real API server, fast simulated sleds, Vmm objects as
//! the instance controller would create them, and bounded waits.

#![allow(dead_code)]

pub mod migration;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_apiserver::testing::TestServer;
use corral_crds::{
    INSTANCE_LABEL, Resources, Sled, VMM_FINALIZER, Vmm, VmmSpec, VmmState, VmmStatus,
};
use corral_node_agent::sim::{SimSledConfig, SimTiming};
use corral_node_agent::{AgentConfig, Intervals};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

/// Every wait in these tests gives up after this long.
pub const BOUND: Duration = Duration::from_secs(20);

/// A whole test gives up after this long, even if it is stuck somewhere no wait bounds (a
/// shutdown that never ends): the watchdog aborts the test process.
pub const TEST_BOUND: Duration = Duration::from_secs(120);

pub struct Rack {
    pub server: TestServer,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    _watchdog: Watchdog,
}

/// Aborts the process unless dropped within [`TEST_BOUND`].
struct Watchdog(std::sync::mpsc::Sender<()>);

impl Watchdog {
    fn start(bound: Duration) -> Watchdog {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(bound) {
                eprintln!("the test ran longer than {bound:?}; aborting");
                std::process::abort();
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Rack {
    pub async fn start() -> Rack {
        let watchdog = Watchdog::start(TEST_BOUND);
        let _ = tracing_subscriber_init();
        let server = TestServer::start(corral_crds::MANIFESTS).await;
        let client = corral_client::connect(Some(&server.kubeconfig))
            .await
            .expect("a client for the test server");
        Rack {
            server,
            client,
            dir: tempfile::tempdir().expect("a temporary directory"),
            _watchdog: watchdog,
        }
    }

    /// A sled with fast timing: boots in 100 ms, stops in 50 ms, scans every 200 ms.
    pub fn config(&self, sled: &str) -> SimSledConfig {
        let mut agent = AgentConfig::new(self.client.clone(), sled, self.dir.path().join(sled));
        agent.capacity = Resources {
            cpus: 16,
            memory_mib: 16 * 1024,
        };
        agent.intervals = Intervals {
            reconcile: Duration::from_secs(5),
            scan: Duration::from_millis(200),
            heartbeat: Duration::from_millis(300),
            lease_duration: Duration::from_secs(15),
            sled_status: Duration::from_millis(200),
            stop_timeout: Duration::from_secs(5),
        };
        agent.labels = BTreeMap::from([("rack".to_string(), "test".to_string())]);
        let mut config = SimSledConfig::new(agent);
        config.timing = SimTiming {
            boot_time: Duration::from_millis(100),
            stop_time: Duration::from_millis(50),
            ..SimTiming::default()
        };
        config
    }

    pub fn vmms(&self) -> Api<Vmm> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub fn sleds(&self) -> Api<Sled> {
        Api::all(self.client.clone())
    }

    /// Creates a Vmm as the instance controller does: finalizer and instance label set.
    pub async fn create_vmm(&self, name: &str, sled: &str, epoch: u64, cpus: u32) -> Vmm {
        let instance = name.split("-v").next().unwrap_or(name).to_string();
        let vmm = Vmm {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("default".to_string()),
                finalizers: Some(vec![VMM_FINALIZER.to_string()]),
                labels: Some(BTreeMap::from([(
                    INSTANCE_LABEL.to_string(),
                    instance.clone(),
                )])),
                ..Default::default()
            },
            spec: VmmSpec {
                instance,
                sled: sled.to_string(),
                sled_epoch: epoch,
                resources: Resources {
                    cpus,
                    memory_mib: 512 * u64::from(cpus),
                },
                image: "debian-12".to_string(),
                nics: Vec::new(),
                migrate_from: None,
                reboot_request: None,
            },
            status: None,
        };
        self.vmms()
            .create(&PostParams::default(), &vmm)
            .await
            .expect("creating a Vmm")
    }

    /// Waits until the Sled reports Ready with an epoch, and returns it.
    pub async fn ready_sled(&self, name: &str) -> Sled {
        let sleds = self.sleds();
        wait_for(&format!("sled {name} ready"), || {
            let sleds = sleds.clone();
            async move {
                let sled = sleds.get_opt(name).await.ok()??;
                sled.is_ready_and_booted().then_some(sled)
            }
        })
        .await
    }

    /// Waits until the Vmm's status satisfies `check`, and returns it.
    pub async fn vmm_status(&self, name: &str, check: impl Fn(&VmmStatus) -> bool) -> VmmStatus {
        let vmms = self.vmms();
        let check = &check;
        wait_for(&format!("the status of Vmm {name}"), || {
            let vmms = vmms.clone();
            async move {
                let vmm = vmms.get_opt(name).await.ok()??;
                vmm.status.filter(|status| check(status))
            }
        })
        .await
    }

    /// Waits until the Vmm reports `state`.
    pub async fn vmm_in(&self, name: &str, state: VmmState) -> VmmStatus {
        self.vmm_status(name, |status| status.state == Some(state))
            .await
    }

    /// Waits until the Sled's status satisfies `check`.
    pub async fn sled_status(
        &self,
        name: &str,
        check: impl Fn(&corral_crds::SledStatus) -> bool,
    ) -> corral_crds::SledStatus {
        let sleds = self.sleds();
        let check = &check;
        wait_for(&format!("the status of sled {name}"), || {
            let sleds = sleds.clone();
            async move {
                let sled = sleds.get_opt(name).await.ok()??;
                sled.status.filter(|status| check(status))
            }
        })
        .await
    }

    /// Starts recording every status the Sled `name` goes through, so that a test can wait
    /// for a state that lasts too briefly for polling to be sure to see it.
    pub fn record_sled(&self, name: &str) -> SledRecording {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(watcher(self.sleds(), config).applied_objects().for_each(
            move |sled| {
                if let Ok(Some(status)) = sled.map(|sled| sled.status) {
                    record.lock().expect("recording lock").push(status);
                }
                std::future::ready(())
            },
        ));
        SledRecording {
            name: name.to_string(),
            seen,
            task,
        }
    }

    /// The Events with `reason` about the object named `name` in `namespace`.
    pub async fn events(&self, namespace: &str, name: &str, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        events
            .list(&Default::default())
            .await
            .expect("listing events")
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// Waits until an Event with `reason` about `name` exists.
    pub async fn event(&self, namespace: &str, name: &str, reason: &str) -> Event {
        wait_for(&format!("event {reason} about {name}"), || async move {
            self.events(namespace, name, reason)
                .await
                .into_iter()
                .next()
        })
        .await
    }

    /// Records every status the API stores for Vmm `name`, in order, until dropped.
    pub fn record_statuses(&self, name: &str) -> StatusLog {
        let api = self.vmms();
        let entries: Reports = Arc::default();
        let recorded = entries.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, config).applied_objects().boxed();
            while let Some(item) = stream.next().await {
                if let Ok(vmm) = item
                    && let Some(status) = vmm.status
                {
                    let entry = (status.state, status.state_generation);
                    let mut recorded = recorded.lock().unwrap();
                    if recorded.last() != Some(&entry) {
                        recorded.push(entry);
                    }
                }
            }
        });
        StatusLog {
            entries,
            task: Some(task),
        }
    }
}

/// (state, stateGeneration) of every report a watch saw, in order.
pub type Reports = Arc<Mutex<Vec<(Option<VmmState>, u64)>>>;

/// The statuses a Vmm went through, as a watch saw them.
pub struct StatusLog {
    pub entries: Reports,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StatusLog {
    pub fn states(&self) -> Vec<VmmState> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(state, _)| *state)
            .collect()
    }

    /// Asserts that the generation rose with every report.
    pub fn assert_generations_rise(&self) {
        let entries = self.entries.lock().unwrap();
        for pair in entries.windows(2) {
            assert!(
                pair[1].1 > pair[0].1,
                "stateGeneration went backwards: {entries:?}"
            );
        }
    }

    /// Waits until the log has seen `state`.
    pub async fn saw(&self, state: VmmState) {
        wait_for(&format!("a {state} report"), || async move {
            self.states().contains(&state).then_some(())
        })
        .await
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `check` until it returns `Some`, for at most [`BOUND`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {BOUND:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `check` stays `false` for `period` (polled): for things that must not happen.
pub async fn stays_false<F, Fut>(period: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Logs to the test's output when `RUST_LOG` is set.
fn tracing_subscriber_init() -> Result<(), impl std::fmt::Debug> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init()
}

/// Every status one Sled went through since [`Rack::record_sled`].
pub struct SledRecording {
    name: String,
    seen: Arc<Mutex<Vec<corral_crds::SledStatus>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SledRecording {
    /// Waits (at most [`BOUND`]) until a recorded status passes `check`; returns the first.
    pub async fn wait_for(
        &self,
        check: impl Fn(&corral_crds::SledStatus) -> bool,
    ) -> corral_crds::SledStatus {
        let check = &check;
        wait_for(
            &format!("a status of sled {} seen by the watch", self.name),
            || async {
                let seen = self.seen.lock().expect("recording lock");
                seen.iter().find(|status| check(status)).cloned()
            },
        )
        .await
    }
}

impl Drop for SledRecording {
    fn drop(&mut self) {
        self.task.abort();
    }
}
