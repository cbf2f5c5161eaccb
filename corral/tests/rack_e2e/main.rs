//! The rack end to end, with real processes: one `corral apiserver` on a SQLite file, two
//! `corral controllers` (leader-elected on a short Lease) and eight `corral node-agent`s
//! (simulated sleds, each with its fault API), driven through kube-rs the way a user would.
//!
//! One story, in order (the numbers are the acceptance items):
//! 1. 200 Instances are created → every one is `Running`.
//! 2. A sled is cordoned → the Instances created afterwards get no Vmm on it; its VMMs stay.
//! 3. `runStrategy: Halted` on some → `Stopped`, their Vmms gone; `Always` again → `Running`.
//! 4. Deleting Instances frees capacity: their Vmms are gone and every sled's
//!    `status.allocated` is the sum of the resources of the Instances running on it.
//! 5. `kill -9` of one node-agent (its machine keeps running) while Vmms of a burst of new
//!    Instances are on their way up on its sled, a change to one of its instances while it is
//!    down, then a restart on the same data directory → the burst runs, the change is carried
//!    out, and nothing else moved: no duplicate, no leaked VMM, no restart.
//! 6. `kill -9` of the whole rack, then a restart of everything with the agents powering their
//!    machines on afresh (`--cold-start`) → every Instance that should run runs again, on the
//!    sleds' new epochs, exactly once.
//! 7. `kill -9` of the leading controllers process (found from the Lease) → the other one takes
//!    the Lease within its duration plus a small margin, and a new Instance then runs.
//!
//! # The invariant checker
//! After every step, every machine's `GET /vmms` (the fault API: what really runs) is compared
//! with the API: each Instance that should run is `Running` with exactly one VMM, the one its
//! `status.activeVmm` names on its `status.sled`; an Instance that should not run has none; and
//! every VMM on every machine belongs to an existing Instance (nothing leaked).
//!
//! # Determinism
//! Random choices (which sled, which instances, the kill order) come from one seed, printed at
//! the start; `RACK_E2E_SEED=N` replays it. Every fault is printed with its time (the fault
//! schedule), and every measured duration is printed. Every wait polls a condition with a bound;
//! on a timeout the test fails with what was still wrong and the recent Warning Events, and on
//! any failure it prints the tail of every process's log. Every process is killed when the test
//! ends, even on a panic (`Drop`), and if the test process dies (parent-death signal); the logs,
//! the sleds' data and the store are then kept for a post-mortem.
//!
//! # Assumptions
//! - Step 2 writes the cordon before creating the late Instances, and counts on the controller's
//!   Sled watch delivering it before the Instances' watch delivers them (milliseconds against
//!   a round trip more): nothing the API shows says that the controller has seen a cordon.

#[path = "../common/mod.rs"]
mod common;
mod migration;
mod story;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Apiserver, Backend, Process, free_port};
use corral_crds::{Instance, InstanceSpec, InstanceState, RunStrategy, Sled, Vmm, VmmState};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SLEDS: usize = 8;
const INSTANCES: usize = 200;
const NAMESPACE: &str = "default";
/// The controllers' leader Lease duration: short, so that a fail-over is quick.
const LEADER_LEASE: Duration = Duration::from_secs(4);
/// How much longer than [`LEADER_LEASE`] a fail-over may take: the survivor polls every
/// 2/15 of the duration and must see the Lease unchanged for a whole duration.
const FAILOVER_MARGIN: Duration = Duration::from_secs(3);
const SLED_CPUS: u32 = 128;
const SLED_MEMORY_MIB: u64 = 256 * 1024;
const INSTANCE_MEMORY_MIB: u64 = 256;
/// Instances created just before a node-agent is killed (step 5).
const BURST: usize = 40;

/// Bounds of the waits: generous for a loaded 2-core CI machine running debug builds.
const CONVERGE_MANY: Duration = Duration::from_secs(90);
const CONVERGE_FEW: Duration = Duration::from_secs(45);
const START_BOUND: Duration = Duration::from_secs(30);
/// The whole story gives up after this long, even if it is stuck where no wait bounds it.
const STORY_BOUND: Duration = Duration::from_secs(300);
/// One probe of a wait (a few API calls) gives up after this long.
const PROBE_BOUND: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(250);

/// One simulated sled: its node-agent process, data directory and fault API.
struct SledAgent {
    sled: String,
    data_dir: PathBuf,
    fault: SocketAddr,
    process: Process,
}

/// A process of the rack, for the fault schedule.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Apiserver,
    Controllers(usize),
    Agent(usize),
}

struct Rack {
    started: Instant,
    dir: tempfile::TempDir,
    apiserver: Apiserver,
    controllers: Vec<Process>,
    agents: Vec<SledAgent>,
    client: Client,
    schedule: Vec<String>,
    timings: Vec<(String, Duration)>,
}

fn sled_name(index: usize) -> String {
    format!("sled-{index}")
}

impl Rack {
    /// Starts the API server, both controllers and every node-agent, and waits until every
    /// sled is Ready and a leader holds the Lease.
    async fn start() -> Rack {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let apiserver = Apiserver::start_tied_to_thread(Backend::Sqlite);
        let client = corral_client::connect(Some(&apiserver.kubeconfig()))
            .await
            .expect("a client from the kubeconfig");
        let mut rack = Rack {
            started,
            dir,
            apiserver,
            controllers: Vec::new(),
            agents: Vec::new(),
            client,
            schedule: Vec::new(),
            timings: Vec::new(),
        };
        for index in 0..2 {
            let log = rack
                .dir
                .path()
                .join(format!("controllers-{}.log", index + 1));
            let process = Process::spawn(
                &format!("controllers-{}", index + 1),
                corral(),
                &rack.controllers_args(),
                &log,
            );
            rack.controllers.push(process);
        }
        for index in 0..SLEDS {
            let sled = sled_name(index + 1);
            let data_dir = rack.dir.path().join(&sled);
            let fault = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let args = rack.agent_args(&sled, &data_dir, fault, true);
            let log = rack.dir.path().join(format!("{sled}.log"));
            let process = Process::spawn(&format!("node-agent {sled}"), corral(), &args, &log);
            rack.agents.push(SledAgent {
                sled,
                data_dir,
                fault,
                process,
            });
        }
        println!("logs and sled data in {}", rack.dir.path().display());
        rack.wait_for("every sled Ready", START_BOUND, async || {
            rack.sleds_ready().await
        })
        .await;
        rack.wait_for("a leader", START_BOUND, async || rack.leader_index().await)
            .await;
        rack.record("rack started (8 sleds Ready, a leader)", started.elapsed());
        rack
    }

    fn controllers_args(&self) -> Vec<String> {
        vec![
            "controllers".into(),
            "--kubeconfig".into(),
            self.apiserver.kubeconfig().display().to_string(),
            "--lease-duration".into(),
            format!("{}ms", LEADER_LEASE.as_millis()),
        ]
    }

    fn agent_args(
        &self,
        sled: &str,
        data_dir: &std::path::Path,
        fault: SocketAddr,
        cold_start: bool,
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "node-agent".into(),
            "--kubeconfig".into(),
            self.apiserver.kubeconfig().display().to_string(),
            "--sled".into(),
            sled.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--fault-listen".into(),
            fault.to_string(),
            "--cpus".into(),
            SLED_CPUS.to_string(),
            "--memory-mib".into(),
            SLED_MEMORY_MIB.to_string(),
            "--boot-time".into(),
            "200ms".into(),
            "--stop-time".into(),
            "100ms".into(),
        ];
        if cold_start {
            args.push("--cold-start".into());
        }
        args
    }

    /// Starts the `index`th controllers process again.
    fn start_controllers(&mut self, index: usize) {
        let args = self.controllers_args();
        self.controllers[index].respawn(&args);
    }

    /// Starts the `index`th node-agent again, on the same machine (or power-cycling it).
    fn start_agent(&mut self, index: usize, cold_start: bool) {
        let agent = &self.agents[index];
        let args = self.agent_args(&agent.sled, &agent.data_dir, agent.fault, cold_start);
        self.agents[index].process.respawn(&args);
    }

    /// Kills one process with SIGKILL; returns what it was, for the schedule.
    fn kill9(&mut self, victim: Victim) -> String {
        match victim {
            Victim::Apiserver => {
                let pid = self.apiserver.pid();
                self.apiserver.kill9();
                format!("apiserver (pid {pid:?})")
            }
            Victim::Controllers(index) => {
                let process = &mut self.controllers[index];
                let pid = process.pid();
                process.kill9();
                format!("{} (pid {pid:?})", process.name)
            }
            Victim::Agent(index) => {
                let process = &mut self.agents[index].process;
                let pid = process.pid();
                process.kill9();
                format!("{} (pid {pid:?})", process.name)
            }
        }
    }

    /// Starts the API server again on its address and store, with a fresh client.
    async fn restart_apiserver(&mut self) {
        self.apiserver.restart();
        self.client = corral_client::connect(Some(&self.apiserver.kubeconfig()))
            .await
            .expect("a client from the kubeconfig");
    }

    /// Prints and remembers a fault (or operator action), with its time since the start.
    fn fault(&mut self, what: impl Into<String>) {
        let line = format!(
            "[{:>8.3}s] {}",
            self.started.elapsed().as_secs_f64(),
            what.into()
        );
        println!("fault schedule: {line}");
        self.schedule.push(line);
    }

    fn record(&mut self, what: &str, took: Duration) {
        println!("timing: {what}: {took:.2?}");
        self.timings.push((what.to_string(), took));
    }

    async fn print_summary(&self) {
        match self.list_events().await {
            Ok(events) => {
                let mut by_reason: BTreeMap<String, i32> = BTreeMap::new();
                for event in events
                    .iter()
                    .filter(|e| e.type_.as_deref() == Some("Warning"))
                {
                    *by_reason
                        .entry(event.reason.clone().unwrap_or_default())
                        .or_default() += event.count.unwrap_or(1);
                }
                println!("--- Warning events by reason: {by_reason:?}");
            }
            Err(error) => println!("--- Warning events: {error}"),
        }
        println!("--- fault schedule");
        for line in &self.schedule {
            println!("{line}");
        }
        println!("--- timings");
        for (what, took) in &self.timings {
            println!("{took:>10.2?}  {what}");
        }
        println!("total {:.2?}", self.started.elapsed());
    }

    /// Polls `probe` until it answers `Ok`, for at most `bound`; returns the answer and how
    /// long it took. On a timeout, fails with the probe's last complaint and recent Warnings.
    async fn wait_for<T>(
        &self,
        what: &str,
        bound: Duration,
        mut probe: impl AsyncFnMut() -> Result<T, String>,
    ) -> (T, Duration) {
        let started = Instant::now();
        let mut last: String;
        loop {
            match tokio::time::timeout(PROBE_BOUND, probe()).await {
                Ok(Ok(answer)) => return (answer, started.elapsed()),
                Ok(Err(complaint)) => last = complaint,
                Err(_) => last = format!("a probe took longer than {PROBE_BOUND:?}"),
            }
            if started.elapsed() >= bound {
                let warnings = self.recent_warnings().await;
                panic!(
                    "timed out after {bound:?} waiting for {what}: {last}\n--- recent Warning events\n{warnings}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last Warning Events, newest last, for a failure message.
    async fn recent_warnings(&self) -> String {
        let events = match tokio::time::timeout(PROBE_BOUND, self.list_events()).await {
            Ok(Ok(events)) => events,
            Ok(Err(error)) => return format!("({error})"),
            Err(_) => return "(listing events timed out)".into(),
        };
        let mut warnings: Vec<&Event> = events
            .iter()
            .filter(|event| event.type_.as_deref() == Some("Warning"))
            .collect();
        warnings.sort_by_key(|event| {
            event
                .resource_version()
                .and_then(|rv| rv.parse::<u64>().ok())
        });
        let lines: Vec<String> = warnings
            .iter()
            .map(|event| {
                format!(
                    "{} {}/{} x{}: {}",
                    event.reason.as_deref().unwrap_or("-"),
                    event.involved_object.kind.as_deref().unwrap_or("-"),
                    event.involved_object.name.as_deref().unwrap_or("-"),
                    event.count.unwrap_or(1),
                    event.message.as_deref().unwrap_or("")
                )
            })
            .collect();
        common::tail(&lines.join("\n"), 25)
    }

    async fn list_events(&self) -> Result<Vec<Event>, String> {
        Api::<Event>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|error| format!("listing events: {error}"))
    }

    fn instances(&self) -> Api<Instance> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, String> {
        self.instances()
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|error| format!("listing instances: {error}"))
    }

    async fn list_vmms(&self) -> Result<Vec<Vmm>, String> {
        Api::<Vmm>::namespaced(self.client.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|error| format!("listing vmms: {error}"))
    }

    async fn list_sleds(&self) -> Result<Vec<Sled>, String> {
        Api::<Sled>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|error| format!("listing sleds: {error}"))
    }

    /// Creates Instances of 1 to 4 CPUs (by name), a few at a time.
    async fn create_instances(&self, names: &[String]) {
        let api = self.instances();
        futures::stream::iter(names.iter().enumerate())
            .map(|(index, name)| {
                let api = api.clone();
                let instance = Instance::new(
                    name,
                    InstanceSpec {
                        cpus: 1 + (index % 4) as u32,
                        memory_mib: INSTANCE_MEMORY_MIB,
                        image: "debian-12".into(),
                        ..Default::default()
                    },
                );
                async move {
                    api.create(&PostParams::default(), &instance)
                        .await
                        .map_err(|error| format!("creating instance {name}: {error}"))
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await
            .expect("creating instances");
    }

    async fn set_run_strategy(&self, name: &str, strategy: RunStrategy) {
        let patch = json!({"spec": {"runStrategy": strategy.as_str()}});
        self.instances()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|error| panic!("setting runStrategy {strategy} on {name}: {error}"));
    }

    async fn set_unschedulable(&self, sled: &str, unschedulable: bool) {
        let patch = json!({"spec": {"unschedulable": unschedulable}});
        Api::<Sled>::all(self.client.clone())
            .patch(sled, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|error| panic!("cordoning {sled} ({unschedulable}): {error}"));
    }

    /// `count` instances that run now, chosen by `rng`, sorted.
    async fn pick_running(&self, rng: &mut StdRng, count: usize) -> Vec<String> {
        let mut running: Vec<String> = self
            .list_instances()
            .await
            .expect("listing instances")
            .iter()
            .filter(|i| state(i) == Some(InstanceState::Running))
            .map(|i| i.name_any())
            .collect();
        running.sort();
        let mut picked: Vec<String> = running.choose_multiple(rng, count).cloned().collect();
        assert_eq!(
            picked.len(),
            count,
            "not enough running instances to pick from"
        );
        picked.sort();
        picked
    }

    async fn vmm_names_on(&self, sled: &str) -> BTreeSet<String> {
        self.list_vmms()
            .await
            .expect("listing vmms")
            .iter()
            .filter(|vmm| vmm.spec.sled == sled)
            .map(|vmm| vmm.name_any())
            .collect()
    }

    async fn sled_epochs(&self) -> BTreeMap<String, u64> {
        self.list_sleds()
            .await
            .expect("listing sleds")
            .iter()
            .map(|sled| {
                let epoch = sled.status.as_ref().map_or(0, |s| s.epoch);
                (sled.name_any(), epoch)
            })
            .collect()
    }

    /// `status.vmmSerial` of every Instance: how many Vmms it has had.
    async fn vmm_serials(&self) -> BTreeMap<String, u64> {
        self.list_instances()
            .await
            .expect("listing instances")
            .iter()
            .map(|i| (i.name_any(), i.status.as_ref().map_or(0, |s| s.vmm_serial)))
            .collect()
    }

    async fn sled_epoch(&self, sled: &str) -> u64 {
        self.sled_epochs().await[sled]
    }

    /// Ok when every sled's agent reports Ready=True with an epoch.
    async fn sleds_ready(&self) -> Result<(), String> {
        let sleds = self.list_sleds().await?;
        let ready = sleds
            .iter()
            .filter(|sled| {
                sled.status.as_ref().is_some_and(|status| {
                    status.epoch > 0
                        && status.conditions.iter().any(|c| {
                            c.type_ == corral_crds::SledConditionType::Ready
                                && c.status == corral_crds::ConditionStatus::True
                        })
                })
            })
            .count();
        if ready == SLEDS {
            Ok(())
        } else {
            Err(format!("{ready} of {SLEDS} sleds Ready"))
        }
    }

    /// Which controllers process holds the leader Lease (its identity is
    /// `controllers-{pid}-{suffix}`).
    async fn leader_index(&self) -> Result<usize, String> {
        let (namespace, name) = corral_controllers::LEADER_LEASE;
        let lease = Api::<Lease>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|error| format!("reading the leader Lease: {error}"))?
            .ok_or("no leader Lease yet")?;
        let holder = lease
            .spec
            .and_then(|spec| spec.holder_identity)
            .ok_or("the leader Lease has no holder")?;
        let pid: Option<u32> = holder
            .strip_prefix("controllers-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse().ok());
        self.controllers
            .iter()
            .position(|process| process.pid().is_some() && process.pid() == pid)
            .ok_or_else(|| format!("the Lease is held by {holder}, not a live controllers process"))
    }

    /// Ok when exactly `expected` Instances exist and every one that should run is Running.
    async fn all_running(&self, expected: usize) -> Result<(), String> {
        let instances = self.list_instances().await?;
        let not_running: Vec<&Instance> = instances
            .iter()
            .filter(|i| should_run(i) && state(i) != Some(InstanceState::Running))
            .collect();
        if instances.len() != expected {
            return Err(format!(
                "{} Instances, expected {expected}",
                instances.len()
            ));
        }
        if not_running.is_empty() {
            return Ok(());
        }
        let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
        for instance in &not_running {
            *by_state
                .entry(state(instance).map_or("-".into(), |s| s.to_string()))
                .or_default() += 1;
        }
        let examples: Vec<String> = not_running.iter().take(5).map(|i| describe(i)).collect();
        Err(format!(
            "{} of {} should run but do not: {by_state:?}; for example\n  {}",
            not_running.len(),
            instances.len(),
            examples.join("\n  ")
        ))
    }

    /// Ok when the Instance `name` is in `wanted`.
    async fn instance_in_state(&self, name: &str, wanted: InstanceState) -> Result<(), String> {
        let instance = self
            .instances()
            .get(name)
            .await
            .map_err(|error| format!("reading instance {name}: {error}"))?;
        if state(&instance) == Some(wanted) {
            Ok(())
        } else {
            Err(describe(&instance))
        }
    }

    /// Ok when every named Instance is Stopped, names no Vmm, and has no Vmm object.
    async fn stopped_without_vmms(&self, names: &[String]) -> Result<(), String> {
        let instances = self.list_instances().await?;
        let vmms = self.list_vmms().await?;
        let mut problems = Vec::new();
        for instance in instances.iter().filter(|i| names.contains(&i.name_any())) {
            let active = instance.status.as_ref().and_then(|s| s.active_vmm.as_ref());
            if state(instance) != Some(InstanceState::Stopped) || active.is_some() {
                problems.push(describe(instance));
            }
        }
        for vmm in vmms.iter().filter(|vmm| names.contains(&vmm.spec.instance)) {
            problems.push(format!(
                "Vmm {} of {} still exists on {}",
                vmm.name_any(),
                vmm.spec.instance,
                vmm.spec.sled
            ));
        }
        summarize(problems)
    }

    /// Ok when none of the named Instances exists, nor any Vmm of theirs.
    async fn gone_with_their_vmms(&self, names: &[String]) -> Result<(), String> {
        let instances = self.list_instances().await?;
        let vmms = self.list_vmms().await?;
        let mut problems: Vec<String> = instances
            .iter()
            .filter(|i| names.contains(&i.name_any()))
            .map(|i| format!("still there: {}", describe(i)))
            .collect();
        problems.extend(
            vmms.iter()
                .filter(|vmm| names.contains(&vmm.spec.instance))
                .map(|vmm| {
                    format!(
                        "Vmm {} of {} still exists",
                        vmm.name_any(),
                        vmm.spec.instance
                    )
                }),
        );
        summarize(problems)
    }

    /// Waits (briefly, polling fast) until a Vmm of `sled` is on its way up — no state yet,
    /// `Creating` or `Starting` — and returns how many are; 0 if none was caught within the
    /// bound (the kill that follows then hits an idle agent, which the schedule says).
    async fn vmms_on_their_way_up(&self, sled: &str) -> usize {
        let params = ListParams::default().fields(&format!("spec.sled={sled}"));
        let api = Api::<Vmm>::namespaced(self.client.clone(), NAMESPACE);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let vmms = api.list(&params).await.expect("listing the sled's vmms");
            let booting = vmms
                .items
                .iter()
                .filter(|vmm| vmm.metadata.deletion_timestamp.is_none())
                .filter(|vmm| {
                    matches!(
                        vmm.status.as_ref().and_then(|s| s.state),
                        None | Some(VmmState::Creating | VmmState::Starting)
                    )
                })
                .count();
            if booting > 0 {
                return booting;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        0
    }

    /// Ok when the active Vmm of `name` has a deletionTimestamp (the controller asked its sled
    /// to tear it down).
    async fn vmm_deletion_requested(&self, name: &str) -> Result<(), String> {
        let vmms = self.list_vmms().await?;
        let of_instance: Vec<&Vmm> = vmms.iter().filter(|v| v.spec.instance == name).collect();
        if !of_instance.is_empty()
            && of_instance
                .iter()
                .all(|vmm| vmm.metadata.deletion_timestamp.is_some())
        {
            Ok(())
        } else {
            Err(format!(
                "Vmms of {name}: {:?}",
                of_instance
                    .iter()
                    .map(|v| (v.name_any(), v.metadata.deletion_timestamp.is_some()))
                    .collect::<Vec<_>>()
            ))
        }
    }

    /// Ok (with the total of allocated CPUs) when every instance that should run is Running and
    /// each sled's `status.allocated` is the sum of the resources of the instances on it.
    async fn check_allocation(&self) -> Result<u32, String> {
        self.all_running(self.list_instances().await?.len()).await?;
        let instances = self.list_instances().await?;
        let sleds = self.list_sleds().await?;
        let mut problems = Vec::new();
        let mut total_cpus = 0;
        let mut running_cpus = 0;
        for sled in &sleds {
            let name = sled.name_any();
            let on_sled: Vec<&Instance> = instances
                .iter()
                .filter(|i| {
                    state(i) == Some(InstanceState::Running)
                        && i.status.as_ref().and_then(|s| s.sled.as_deref()) == Some(&name)
                })
                .collect();
            let cpus: u32 = on_sled.iter().map(|i| i.spec.cpus).sum();
            let memory: u64 = on_sled.iter().map(|i| i.spec.memory_mib).sum();
            let allocated = sled
                .status
                .as_ref()
                .map(|s| s.allocated)
                .unwrap_or_default();
            total_cpus += allocated.cpus;
            running_cpus += cpus;
            if allocated.cpus != cpus || allocated.memory_mib != memory {
                problems.push(format!(
                    "{name}: allocated {allocated:?}, its {} running instances take {cpus} CPUs and {memory} MiB",
                    on_sled.len()
                ));
            }
        }
        if total_cpus != running_cpus {
            problems.push(format!(
                "allocated CPUs across the rack {total_cpus} ≠ running instances' CPUs {running_cpus}"
            ));
        }
        summarize(problems).map(|()| total_cpus)
    }

    /// What every machine runs (its fault API), by `namespace/instance`.
    async fn machines(&self) -> Result<BTreeMap<String, Vec<MachineVmm>>, String> {
        let mut by_instance: BTreeMap<String, Vec<MachineVmm>> = BTreeMap::new();
        for agent in &self.agents {
            let body = get(agent.fault, "/vmms")
                .await
                .map_err(|error| format!("GET /vmms of {}: {error}", agent.sled))?;
            let listed: Vec<FaultApiVmm> = serde_json::from_str(&body)
                .map_err(|error| format!("GET /vmms of {}: {error}: {body}", agent.sled))?;
            for vmm in listed {
                by_instance
                    .entry(format!("{}/{}", vmm.launch.namespace, vmm.launch.instance))
                    .or_default()
                    .push(MachineVmm {
                        sled: agent.sled.clone(),
                        name: vmm.launch.name,
                        state: vmm.state,
                    });
            }
        }
        Ok(by_instance)
    }

    /// The invariant checker (see the module docs). Ok when the machines and the API agree.
    async fn check_rack(&self) -> Result<(), String> {
        let instances = self.list_instances().await?;
        let mut machines = self.machines().await?;
        let mut problems = Vec::new();
        for instance in &instances {
            let name = instance.name_any();
            let copies = machines
                .remove(&format!("{NAMESPACE}/{name}"))
                .unwrap_or_default();
            let status = instance.status.clone().unwrap_or_default();
            if !should_run(instance) {
                if !copies.is_empty() {
                    problems.push(format!("{name} should not run but runs {copies:?}"));
                }
                continue;
            }
            if status.state != Some(InstanceState::Running) {
                problems.push(describe(instance));
            }
            match copies.as_slice() {
                [one]
                    if Some(&one.name) == status.active_vmm.as_ref()
                        && Some(&one.sled) == status.sled.as_ref()
                        && one.state == "Running" => {}
                _ => problems.push(format!(
                    "{name} (active {:?} on {:?}) has {} VMMs on the machines: {copies:?}",
                    status.active_vmm,
                    status.sled,
                    copies.len()
                )),
            }
        }
        for (instance, copies) in machines {
            problems.push(format!(
                "leaked: {instance} does not exist but runs {copies:?}"
            ));
        }
        summarize(problems)
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.dir.disable_cleanup(true);
        self.apiserver.dir.disable_cleanup(true);
        eprintln!(
            "--- the test failed; logs and sled data kept in {}, the store in {}",
            self.dir.path().display(),
            self.apiserver.dir.path().display()
        );
        eprintln!("--- fault schedule so far:");
        for line in &self.schedule {
            eprintln!("{line}");
        }
        eprintln!(
            "--- apiserver log (tail)\n{}",
            common::tail(&self.apiserver.log(), 40)
        );
        for process in &self.controllers {
            eprintln!("--- {} log (tail)\n{}", process.name, process.log_tail(40));
        }
        for agent in &self.agents {
            eprintln!(
                "--- {} log (tail)\n{}",
                agent.process.name,
                agent.process.log_tail(25)
            );
        }
    }
}

/// One VMM as a machine's fault API lists it (the fields the checker needs).
#[derive(Deserialize)]
struct FaultApiVmm {
    launch: FaultApiLaunch,
    state: String,
}

#[derive(Deserialize)]
struct FaultApiLaunch {
    namespace: String,
    name: String,
    instance: String,
}

/// One VMM on one machine.
#[derive(Debug)]
#[allow(dead_code)] // Read through `Debug` in failure messages.
struct MachineVmm {
    sled: String,
    name: String,
    state: String,
}

fn corral() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_corral"))
}

fn state(instance: &Instance) -> Option<InstanceState> {
    instance.status.as_ref().and_then(|s| s.state)
}

fn should_run(instance: &Instance) -> bool {
    instance.spec.run_strategy == RunStrategy::Always
        && instance.metadata.deletion_timestamp.is_none()
}

/// One line about an Instance, for failure messages.
fn describe(instance: &Instance) -> String {
    let status = instance.status.clone().unwrap_or_default();
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={}({})", c.type_, c.status, c.reason))
        .collect();
    format!(
        "{} [{}] state {:?} active {:?} on {:?} restarts {} lastExit {:?} conditions {}",
        instance.name_any(),
        instance.spec.run_strategy,
        status.state,
        status.active_vmm,
        status.sled,
        status.restarts,
        status.last_exit.map(|exit| exit.reason),
        conditions.join(" ")
    )
}

/// Ok if there is no problem; otherwise the count and the first few.
fn summarize(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    let shown: Vec<&String> = problems.iter().take(8).collect();
    Err(format!(
        "{} problems:\n  {}",
        problems.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    ))
}

/// A plain HTTP GET on loopback (the fault API); the body on a 200.
async fn get(address: SocketAddr, path: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("connecting: {error}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("writing: {error}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|error| format!("reading: {error}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5s".to_string())??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(body.to_string())
}
