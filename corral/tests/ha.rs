//! The production layout under loss, on the script operators use: `deploy/local-cluster.sh`
//! starts 3 etcd members (TLS, etcd's own CA), 2 API servers, 2 controllers processes and 4
//! simulated sleds, each its own process (docs/ha.md).
//!
//! In order:
//! 1. Every component's `/metrics`, fetched with `curl` as an operator would, parses with
//!    Prometheus' own text-format parser (the Python client's) and has the series docs/api.md,
//!    docs/controllers.md and docs/rack.md name.
//! 2. With instances running, a drain in progress, writes in flight and `corralctl get sleds`
//!    polled throughout: `kill -9` of the etcd leader, then of an API server, then of the
//!    leading controllers process. The drain completes; every instance ends `Running` exactly
//!    once, on the machines' own VMM lists (the fault APIs' `GET /vmms`), none on the drained
//!    sled; `corralctl` answered every poll within a bounded retry; every write acknowledged
//!    2xx is still there. The drained sled's agent counted the bytes it sent.
//!
//! # Determinism
//! The kills are in a fixed order, each printed with its time (the fault schedule); the etcd
//! and controllers victims are read from the cluster (their own leader metrics), and which API
//! server dies is drawn from a seed, printed at the start (`HA_SEED=N` replays it). Every
//! wait polls with a bound. The cluster dies with the test: the script's watchdog runs `down`
//! once this process is gone (`CORRAL_CLUSTER_OWNER_PID`), and `Drop` runs it first.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_crds::{
    Drain, DrainPhase, DrainSpec, EvictionStrategy, Instance, InstanceSpec, InstanceState, Nic,
};
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::Deserialize;

const SLEDS: usize = 4;
const INSTANCES: usize = 12;
/// Large enough that each live migration of the drain takes seconds on the simulated link
/// (1.25 GB/s): the drain is still under way when the last process is killed.
const INSTANCE_MEMORY_MIB: u64 = 12 * 1024;
/// Writers in flight at once.
const WRITERS: usize = 4;
const NAMESPACE: &str = "default";
/// Bounds on the waits.
const CONVERGE: Duration = Duration::from_secs(120);
/// How often corralctl is asked, and how many tries one poll may take (one second apart).
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TRIES: usize = 5;
/// Writes in flight: one every this long.
const WRITE_EVERY: Duration = Duration::from_millis(25);
/// How long each loss is left to bite, writes in flight, before the next.
const BETWEEN_KILLS: Duration = Duration::from_secs(3);

/// A cluster of `deploy/local-cluster.sh` in a directory of its own; `down` on drop.
struct Cluster {
    dir: tempfile::TempDir,
    pids: BTreeMap<String, u32>,
    endpoints: BTreeMap<String, String>,
    started: Instant,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh")
}

/// `NAME VALUE` lines.
fn read_pairs(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.trim().to_string()))
        })
        .collect()
}

impl Cluster {
    fn up() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("corral-ha-")
            .tempdir()
            .unwrap();
        let status = Command::new("bash")
            .arg(script())
            .args(["up", &dir.path().display().to_string()])
            .args(["--sleds", &SLEDS.to_string()])
            .env("CORRAL", common::corral())
            .env("CORRAL_CLUSTER_OWNER_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .status()
            .expect("running local-cluster.sh");
        assert!(status.success(), "local-cluster.sh up failed: {status}");
        let pids = read_pairs(&dir.path().join("pids"))
            .into_iter()
            .map(|(name, pid)| (name, pid.parse().expect("a pid")))
            .collect();
        let endpoints = read_pairs(&dir.path().join("endpoints"));
        Cluster {
            dir,
            pids,
            endpoints,
            started: Instant::now(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.path("kubeconfig")
    }

    fn endpoint(&self, name: &str) -> &str {
        self.endpoints
            .get(name)
            .unwrap_or_else(|| panic!("no endpoint {name}"))
    }

    /// `kill -9` of `name`, printed in the fault schedule.
    fn kill9(&self, name: &str, why: &str) {
        let pid = self.pids[name];
        println!(
            "[{:>6.1}s] fault: kill -9 {name} (pid {pid}, {why})",
            self.started.elapsed().as_secs_f64()
        );
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 {pid}");
    }

    /// `curl` of `url` with the client certificate `identity` (a `pki/` prefix) and the CA
    /// `ca` (for https://); the body, or why not.
    fn curl(&self, url: &str, ca: &str, identity: &str) -> Result<String, String> {
        let mut command = Command::new("curl");
        command.args(["-sS", "--fail", "--max-time", "5", url]);
        if url.starts_with("https://") {
            command
                .arg("--cacert")
                .arg(self.path(ca))
                .arg("--cert")
                .arg(self.path(&format!("{identity}.crt")))
                .arg("--key")
                .arg(self.path(&format!("{identity}.key")));
        }
        let output = command.output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The metric samples of a component, as Prometheus' text parser reads them.
    fn metrics(&self, name: &str) -> Vec<Sample> {
        let url = format!("{}/metrics", self.endpoint(name));
        let text = if name.starts_with("etcd-") {
            self.curl(&url, "pki/etcd/ca.crt", "pki/etcd/apiserver-client")
        } else {
            self.curl(&url, "pki/ca.crt", "pki/admin")
        }
        .unwrap_or_else(|e| panic!("curl {url}: {e}"));
        parse_prometheus(&text).unwrap_or_else(|e| panic!("{url} does not parse: {e}"))
    }

    fn log_tails(&self) {
        for name in self.pids.keys() {
            let log =
                std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            println!("--- {name}.log (last lines)");
            for line in tail.into_iter().rev() {
                println!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.log_tails();
        }
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.dir.path().display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

/// One sample: its name (a histogram's `_bucket`, `_sum`, `_count` included) and labels.
#[derive(Debug, Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format with the Python client's parser
/// (`prometheus_client.parser`, what Prometheus' own tooling in Python uses).
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    const PARSE: &str = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = [{'name': s.name, 'labels': s.labels, 'value': s.value}\n\
               for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
        json.dump(out, sys.stdout)\n";
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes())
        .map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

fn names(samples: &[Sample]) -> BTreeSet<&str> {
    samples.iter().map(|s| s.name.as_str()).collect()
}

fn has_all(component: &str, samples: &[Sample], wanted: &[&str]) {
    let names = names(samples);
    let missing: Vec<&&str> = wanted.iter().filter(|w| !names.contains(**w)).collect();
    assert!(
        missing.is_empty(),
        "{component}'s /metrics lacks {missing:?}; it has {names:?}"
    );
}

/// The value of `name` in `samples` (labels aside), if it is there.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn wait_for<T>(
    what: &str,
    bound: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {bound:?} waiting for {what}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn instance(index: usize) -> Instance {
    Instance::new(
        &format!("ha-{index}"),
        InstanceSpec {
            cpus: 1,
            memory_mib: INSTANCE_MEMORY_MIB,
            image: "debian-12".into(),
            nics: vec![Nic {
                name: "eth0".into(),
                vpc: "ha".into(),
                ip: format!("10.7.0.{}", index + 10),
            }],
            eviction_strategy: EvictionStrategy::LiveMigrate,
            ..Default::default()
        },
    )
}

/// One VMM as a machine's fault API lists it.
#[derive(Deserialize)]
struct MachineVmm {
    launch: MachineLaunch,
    state: String,
}

#[derive(Deserialize)]
struct MachineLaunch {
    instance: String,
}

/// Every running guest on every machine: instance → the sleds it runs on.
fn machines(cluster: &Cluster) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for index in 1..=SLEDS {
        let sled = format!("sled-{index}");
        let url = format!("{}/vmms", cluster.endpoint(&sled));
        let body = cluster.curl(&url, "pki/ca.crt", "pki/admin")?;
        let vmms: Vec<MachineVmm> =
            serde_json::from_str(&body).map_err(|e| format!("{url}: {e}"))?;
        for vmm in vmms.into_iter().filter(|v| v.state == "Running") {
            running
                .entry(vmm.launch.instance)
                .or_default()
                .push(sled.clone());
        }
    }
    Ok(running)
}

/// The sled each Instance runs on, once every one runs exactly once (by the API and by the
/// machines) and none on `not_on`.
async fn each_running_once(
    cluster: &Cluster,
    api: &Api<Instance>,
    not_on: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let machines = machines(cluster)?;
    let mut placed = BTreeMap::new();
    for index in 0..INSTANCES {
        let name = format!("ha-{index}");
        let found = api.get(&name).await.map_err(|e| format!("{name}: {e}"))?;
        let status = found.status.clone().unwrap_or_default();
        if status.state != Some(InstanceState::Running) {
            return Err(format!("{name} is {:?}", status.state));
        }
        let on = machines.get(&name).cloned().unwrap_or_default();
        if on.len() != 1 || status.sled.as_deref() != Some(on[0].as_str()) {
            return Err(format!(
                "{name}: the API says {:?}, the machines run it on {on:?}",
                status.sled
            ));
        }
        if not_on == Some(on[0].as_str()) {
            return Err(format!("{name} still runs on {}", on[0]));
        }
        placed.insert(name, on[0].clone());
    }
    Ok(placed)
}

/// Asks `corralctl get sleds` every [`PROBE_EVERY`] until `stop`; a poll may take up to
/// [`PROBE_TRIES`] tries a second apart. Returns the polls made and the failures (a poll whose
/// every try failed).
fn probe_corralctl(
    kubeconfig: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let corralctl = common::corral().with_file_name("corralctl");
    assert!(
        corralctl.exists(),
        "{} is missing: the workspace test command builds it",
        corralctl.display()
    );
    std::thread::spawn(move || {
        let mut polls = 0;
        let mut failures = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            polls += 1;
            let mut last = String::new();
            let answered = (0..PROBE_TRIES).any(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_secs(1));
                }
                match Command::new(&corralctl)
                    .args(["get", "sleds"])
                    .env("KUBECONFIG", &kubeconfig)
                    .stdin(Stdio::null())
                    .output()
                {
                    Ok(output) if output.status.success() => true,
                    Ok(output) => {
                        last = String::from_utf8_lossy(&output.stderr).into_owned();
                        false
                    }
                    Err(error) => {
                        last = error.to_string();
                        false
                    }
                }
            });
            if !answered {
                failures.push(last);
            }
            std::thread::sleep(PROBE_EVERY);
        }
        (polls, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_layout_survives_losing_an_etcd_leader_an_apiserver_and_the_leading_controllers()
 {
    let seed = common::seed("HA_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = Cluster::up();
    let client = corral_client::connect(Some(&cluster.kubeconfig()))
        .await
        .expect("a client of both API servers");

    // 1. Every component's metrics.
    let apiserver = [
        "apiserver_request_total",
        "apiserver_request_duration_seconds_bucket",
        "apiserver_current_inflight_requests",
        "apiserver_registered_watchers",
        "apiserver_watch_cache_objects",
        "apiserver_watch_cache_events_received_total",
        "apiserver_storage_operation_duration_seconds_bucket",
    ];
    for name in ["apiserver-1", "apiserver-2"] {
        has_all(name, &cluster.metrics(name), &apiserver);
    }
    let leaders = wait_for("a controllers leader", CONVERGE, async || {
        let leaders: Vec<&str> = ["controllers-1", "controllers-2"]
            .into_iter()
            .filter(|name| {
                value(&cluster.metrics(name), "corral_controllers_leader", &[]) == Some(1.0)
            })
            .collect();
        if leaders.len() == 1 {
            Ok(leaders)
        } else {
            Err(format!("leaders: {leaders:?}"))
        }
    })
    .await;
    println!("controllers leader: {}", leaders[0]);
    has_all(
        leaders[0],
        &cluster.metrics(leaders[0]),
        &[
            "corral_controllers_leader",
            "corral_controller_reconciles_total",
            "corral_controller_reconcile_duration_seconds_bucket",
            "corral_controller_queue_depth",
        ],
    );
    for index in 1..=SLEDS {
        let sled = format!("sled-{index}");
        let samples = cluster.metrics(&sled);
        has_all(
            &sled,
            &samples,
            &[
                "corral_agent_vmms",
                "corral_agent_heartbeat_last_renewal_timestamp_seconds",
            ],
        );
        assert_eq!(
            value(
                &samples,
                "corral_agent_vmms",
                &[("sled", &sled), ("state", "running")]
            ),
            Some(0.0)
        );
    }

    // 2. Instances running, then a drain, writes and corralctl polls in flight, and the kills.
    let instances: Api<Instance> = Api::namespaced(client.clone(), NAMESPACE);
    for index in 0..INSTANCES {
        instances
            .create(&PostParams::default(), &instance(index))
            .await
            .unwrap_or_else(|e| panic!("creating ha-{index}: {e}"));
    }
    let placed = wait_for("every instance running once", CONVERGE, async || {
        each_running_once(&cluster, &instances, None).await
    })
    .await;
    let mut per_sled: BTreeMap<&str, usize> = BTreeMap::new();
    for sled in placed.values() {
        *per_sled.entry(sled).or_default() += 1;
    }
    let drained = per_sled
        .iter()
        .max_by_key(|(_, count)| **count)
        .map(|(sled, _)| sled.to_string())
        .unwrap();
    println!("placed: {per_sled:?}; draining {drained}");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = probe_corralctl(cluster.kubeconfig(), stop.clone());
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut failed = 0usize;
                let mut index = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    index += 1;
                    let name = format!("ha-write-{writer}-{index}");
                    let mut event = Event::default();
                    event.metadata.name = Some(name.clone());
                    event.reason = Some("Written".into());
                    event.involved_object.kind = Some("Instance".into());
                    event.involved_object.name = Some("ha-0".into());
                    event.involved_object.namespace = Some(NAMESPACE.into());
                    match events.create(&PostParams::default(), &event).await {
                        Ok(_) => acknowledged.lock().unwrap().push(name),
                        Err(_) => failed += 1,
                    }
                    tokio::time::sleep(WRITE_EVERY).await;
                }
                failed
            })
        })
        .collect();

    let drains: Api<Drain> = Api::all(client.clone());
    drains
        .create(
            &PostParams::default(),
            &Drain::new(
                &format!("drain-{drained}"),
                DrainSpec {
                    sled: drained.clone(),
                    deadline: None,
                    max_parallel: 1,
                    force: false,
                    cancel: false,
                },
            ),
        )
        .await
        .expect("creating the drain");
    println!(
        "[{:>6.1}s] drain of {drained} created",
        cluster.started.elapsed().as_secs_f64()
    );

    let etcd_leader = (1..=3)
        .map(|i| format!("etcd-{i}"))
        .find(|name| value(&cluster.metrics(name), "etcd_server_is_leader", &[]) == Some(1.0))
        .expect("an etcd leader");
    cluster.kill9(&etcd_leader, "the etcd leader");
    tokio::time::sleep(BETWEEN_KILLS).await;
    let apiserver_victim = *["apiserver-1", "apiserver-2"]
        .choose(&mut rng)
        .expect("two API servers");
    cluster.kill9(apiserver_victim, "an API server");
    tokio::time::sleep(BETWEEN_KILLS).await;
    let controllers_leader = wait_for("a controllers leader", CONVERGE, async || {
        ["controllers-1", "controllers-2"]
            .into_iter()
            .find(|name| {
                cluster
                    .curl(
                        &format!("{}/metrics", cluster.endpoint(name)),
                        "pki/ca.crt",
                        "pki/admin",
                    )
                    .ok()
                    .and_then(|text| parse_prometheus(&text).ok())
                    .and_then(|s| value(&s, "corral_controllers_leader", &[]))
                    == Some(1.0)
            })
            .ok_or_else(|| "none leads".to_string())
    })
    .await;
    let drain_name = format!("drain-{drained}");
    let phase = drains
        .get(&drain_name)
        .await
        .expect("reading the drain")
        .status
        .and_then(|s| s.phase);
    assert_ne!(
        phase,
        Some(DrainPhase::Completed),
        "the drain is to be under way at the last kill"
    );
    cluster.kill9(controllers_leader, "the leading controllers process");

    wait_for("the drain to complete", CONVERGE * 2, async || {
        let drain = drains.get(&drain_name).await.map_err(|e| e.to_string())?;
        match drain.status.as_ref().and_then(|s| s.phase) {
            Some(DrainPhase::Completed) => Ok(()),
            phase => Err(format!("{phase:?}")),
        }
    })
    .await;
    println!(
        "[{:>6.1}s] drain completed",
        cluster.started.elapsed().as_secs_f64()
    );
    let placed = wait_for(
        "every instance running once, off the drained sled",
        CONVERGE,
        async || each_running_once(&cluster, &instances, Some(&drained)).await,
    )
    .await;
    println!("placed after: {placed:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed_writes = 0;
    for writer in writers {
        failed_writes += writer.await.unwrap();
    }
    let (polls, failures) = tokio::task::spawn_blocking(move || prober.join().unwrap())
        .await
        .unwrap();
    println!("corralctl: {polls} polls, {} unanswered", failures.len());
    assert!(
        failures.is_empty(),
        "corralctl did not answer within {PROBE_TRIES} tries: {failures:?}"
    );

    let acknowledged = acknowledged.lock().unwrap().clone();
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let stored: BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .expect("listing the writes")
        .items
        .iter()
        .map(|e| e.name_any())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !stored.contains(*n))
        .collect();
    println!(
        "writes: {} acknowledged, {failed_writes} refused or failed, {} lost",
        acknowledged.len(),
        lost.len()
    );
    assert!(!acknowledged.is_empty());
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    let sent = value(
        &cluster.metrics(&drained),
        "corral_agent_migration_sent_bytes_total",
        &[("sled", &drained)],
    );
    assert!(
        sent.is_some_and(|bytes| bytes > 0.0),
        "{drained} counted the bytes it sent: {sent:?}"
    );
}
