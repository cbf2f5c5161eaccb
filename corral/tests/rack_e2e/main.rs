//! The rack end to end, with real processes: one `corral apiserver`, two `corral controllers`
//! (leader-elected on a short Lease) and eight `corral node-agent`s (simulated sleds, each with
//! its fault API), driven through kube-rs the way a user would. Each story runs twice: with the
//! API server on a SQLite file (`corral up`'s store), and on a real 3-member etcd cluster on
//! loopback (the production layout of `deploy/`; the API server is given every member and may
//! use any of them).
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
//! 6. `kill -9` of the API server, down for 3 s while the controllers and agents run → once
//!    it is back, new Instances run within 10 s (no controller stays blind after an outage).
//! 7. `kill -9` of the whole rack, then a restart of everything with the agents powering their
//!    machines on afresh (`--cold-start`) → every Instance that should run runs again, on the
//!    sleds' new epochs, exactly once.
//! 8. `kill -9` of the leading controllers process (found from the Lease) → the other one takes
//!    the Lease within its duration plus a small margin, and a new Instance then runs.
//!
//! # The invariant checker
//! After every step, every machine's `GET /vmms` (the fault API: what really runs) is compared
//! with the API: each Instance that should run (`Instance::should_run`, the controller's rule;
//! the story's Instances are `Always` or `Halted`) is `Running` with exactly one VMM, the one
//! its `status.activeVmm` names on its `status.sled`; an Instance that should not run has none;
//! and every VMM on every machine belongs to an existing Instance (nothing leaked).
//!
//! # Determinism
//! Random choices (which sled, which instances, the kill order) come from one seed, printed at
//! the start; `RACK_E2E_SEED=N` replays it. Every fault is printed with its time (the fault
//! schedule), and every measured duration is printed. Every wait polls a condition with a bound;
//! on a timeout the test fails with what was still wrong and the recent Warning Events, and on
//! any failure it prints the tail of every process's log. The rack is a `corral_harness::Rack`:
//! every process is killed when the test ends, even on a panic, and if the test process dies;
//! the logs, the sleds' data and the store are then kept for a post-mortem.
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
use std::time::{Duration, Instant};

use corral_crds::{Instance, InstanceSpec, InstanceState, RunStrategy, Sled, Vmm, VmmState};
use corral_harness::rack::{Agent, sled_name};
use corral_harness::wait::wait_for_polling;
use corral_harness::{Rack, RackSpec, Scratch, SledHost, Store, Victim};
use corral_store::testing::EtcdCluster;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

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
/// How long the API server stays down (step 6), and how soon after it is back new Instances
/// run: a controller that stopped looking at its watches while they failed would take up to
/// 30 s (kube-runtime's trigger backoff).
const OUTAGE: Duration = Duration::from_secs(3);
const AFTER_OUTAGE: Duration = Duration::from_secs(10);
/// The whole story gives up after this long, even if it is stuck where no wait bounds it.
const STORY_BOUND: Duration = Duration::from_secs(300);

/// Where a story's API server keeps its state.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// A SQLite file, as `corral up` runs.
    Sqlite,
    /// A 3-member etcd cluster on loopback, as `deploy/` runs.
    EtcdCluster,
}

impl Layout {
    /// The layout's etcd cluster, if it has one: started here, kept by the caller for as long
    /// as the rack runs on it.
    async fn start_etcd(self) -> Option<EtcdCluster> {
        match self {
            Layout::Sqlite => None,
            Layout::EtcdCluster => {
                let cluster = EtcdCluster::start(3)
                    .await
                    .expect("starting a 3-member etcd cluster");
                println!(
                    "etcd members {:?} (data and logs in {})",
                    cluster.endpoints(),
                    cluster.dir().display()
                );
                Some(cluster)
            }
        }
    }
}

/// Starts the story's rack — the API server on `etcd` (every member) or else on a SQLite file,
/// two controllers processes on a [`LEADER_LEASE`] Lease, a node-agent per sled — and waits
/// until every sled is Ready and a leader holds the Lease.
async fn start_rack(etcd: Option<&EtcdCluster>) -> Rack {
    let started = Instant::now();
    let scratch = Scratch::temporary("corral-rack-e2e-").expect("a temporary directory");
    let (lease_namespace, lease_name) = corral_controllers::LEADER_LEASE;
    let spec = RackSpec {
        program: common::corral().to_path_buf(),
        store: match etcd {
            Some(cluster) => Store::Etcd {
                endpoints: cluster.endpoints(),
                prefix: "/rack-e2e".into(),
            },
            None => Store::Sqlite(scratch.path().join("store.db")),
        },
        apiserver_args: vec!["--crds".into(), common::crd_dir().display().to_string()],
        controllers: 2,
        controllers_args: vec![
            "--lease-duration".into(),
            format!("{}ms", LEADER_LEASE.as_millis()),
        ],
        sleds: SLEDS,
        sled_host: SledHost::Agents,
        sled_args: [
            "--cpus",
            &SLED_CPUS.to_string(),
            "--memory-mib",
            &SLED_MEMORY_MIB.to_string(),
            "--boot-time",
            "200ms",
            "--stop-time",
            "100ms",
        ]
        .map(String::from)
        .to_vec(),
        leader_lease: (lease_namespace.into(), lease_name.into()),
        log_filter: "info".into(),
    };
    let mut rack = Rack::new(spec, scratch).expect("a rack");
    println!("logs, sled data and the store in {}", rack.dir().display());
    if let Err(error) = rack.start(START_BOUND).await {
        panic!("starting the rack: {:#}", anyhow::Error::from(error));
    }
    rack.record("rack started (8 sleds Ready, a leader)", started.elapsed());
    rack
}

// ---------------------------------------------------------------------------------------------
// What the story reads and writes through the API, and its checks.

fn instance_api(rack: &Rack) -> Api<Instance> {
    Api::namespaced(rack.client().clone(), NAMESPACE)
}

async fn list_instances(rack: &Rack) -> Result<Vec<Instance>, String> {
    instance_api(rack)
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|error| format!("listing instances: {error}"))
}

async fn list_vmms(rack: &Rack) -> Result<Vec<Vmm>, String> {
    Api::<Vmm>::namespaced(rack.client().clone(), NAMESPACE)
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|error| format!("listing vmms: {error}"))
}

async fn list_sleds(rack: &Rack) -> Result<Vec<Sled>, String> {
    Api::<Sled>::all(rack.client().clone())
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|error| format!("listing sleds: {error}"))
}

/// Creates Instances of 1 to 4 CPUs (by name), a few at a time.
async fn create_instances(rack: &Rack, names: &[String]) {
    let api = instance_api(rack);
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

async fn set_run_strategy(rack: &Rack, name: &str, strategy: RunStrategy) {
    let patch = json!({"spec": {"runStrategy": strategy.as_str()}});
    instance_api(rack)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|error| panic!("setting runStrategy {strategy} on {name}: {error}"));
}

async fn set_unschedulable(rack: &Rack, sled: &str, unschedulable: bool) {
    let patch = json!({"spec": {"unschedulable": unschedulable}});
    Api::<Sled>::all(rack.client().clone())
        .patch(sled, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|error| panic!("cordoning {sled} ({unschedulable}): {error}"));
}

/// `count` instances that run now, chosen by `rng`, sorted.
async fn pick_running(rack: &Rack, rng: &mut StdRng, count: usize) -> Vec<String> {
    let mut running: Vec<String> = list_instances(rack)
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

async fn vmm_names_on(rack: &Rack, sled: &str) -> BTreeSet<String> {
    list_vmms(rack)
        .await
        .expect("listing vmms")
        .iter()
        .filter(|vmm| vmm.spec.sled == sled)
        .map(|vmm| vmm.name_any())
        .collect()
}

async fn sled_epochs(rack: &Rack) -> BTreeMap<String, u64> {
    list_sleds(rack)
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
async fn vmm_serials(rack: &Rack) -> BTreeMap<String, u64> {
    list_instances(rack)
        .await
        .expect("listing instances")
        .iter()
        .map(|i| (i.name_any(), i.status.as_ref().map_or(0, |s| s.vmm_serial)))
        .collect()
}

async fn sled_epoch(rack: &Rack, sled: &str) -> u64 {
    sled_epochs(rack).await[sled]
}

/// Ok when exactly `expected` Instances exist and every one that should run is Running.
async fn all_running(rack: &Rack, expected: usize) -> Result<(), String> {
    let instances = list_instances(rack).await?;
    let not_running: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.should_run() && state(i) != Some(InstanceState::Running))
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
async fn instance_in_state(rack: &Rack, name: &str, wanted: InstanceState) -> Result<(), String> {
    let instance = instance_api(rack)
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
async fn stopped_without_vmms(rack: &Rack, names: &[String]) -> Result<(), String> {
    let instances = list_instances(rack).await?;
    let vmms = list_vmms(rack).await?;
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
async fn gone_with_their_vmms(rack: &Rack, names: &[String]) -> Result<(), String> {
    let instances = list_instances(rack).await?;
    let vmms = list_vmms(rack).await?;
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
async fn vmms_on_their_way_up(rack: &Rack, sled: &str) -> usize {
    let params = ListParams::default().fields(&format!("spec.sled={sled}"));
    let api = Api::<Vmm>::namespaced(rack.client().clone(), NAMESPACE);
    let what = format!("a Vmm on its way up on {sled}");
    let poll = Duration::from_millis(20);
    wait_for_polling(&what, Duration::from_secs(5), poll, async || {
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
            Ok(booting)
        } else {
            Err("none yet")
        }
    })
    .await
    .map_or(0, |(booting, _)| booting)
}

/// Ok when the active Vmm of `name` has a deletionTimestamp (the controller asked its sled
/// to tear it down).
async fn vmm_deletion_requested(rack: &Rack, name: &str) -> Result<(), String> {
    let vmms = list_vmms(rack).await?;
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
async fn check_allocation(rack: &Rack) -> Result<u32, String> {
    all_running(rack, list_instances(rack).await?.len()).await?;
    let instances = list_instances(rack).await?;
    let sleds = list_sleds(rack).await?;
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
async fn machines(rack: &Rack) -> Result<BTreeMap<String, Vec<MachineVmm>>, String> {
    let mut by_instance: BTreeMap<String, Vec<MachineVmm>> = BTreeMap::new();
    for agent in &rack.agents {
        for vmm in machine(rack, agent).await? {
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
async fn check_rack(rack: &Rack) -> Result<(), String> {
    let instances = list_instances(rack).await?;
    let mut machines = machines(rack).await?;
    let mut problems = Vec::new();
    for instance in &instances {
        let name = instance.name_any();
        let copies = machines
            .remove(&format!("{NAMESPACE}/{name}"))
            .unwrap_or_default();
        let status = instance.status.clone().unwrap_or_default();
        if !instance.should_run() {
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

/// The client the tests ask the sleds' fault APIs with: HTTPS as `admin`.
fn fault_http(rack: &Rack) -> corral_e2e::http::Http {
    corral_e2e::http::Http::with_tls(rack.apiserver().tls().config())
}

/// What the machine of `agent` runs (its fault API's `GET /vmms`).
async fn machine(rack: &Rack, agent: &Agent) -> Result<Vec<FaultApiVmm>, String> {
    fault_http(rack)
        .get_json(&format!("https://{}", agent.fault), "/vmms")
        .await
        .map_err(|error| {
            format!(
                "GET /vmms of {}: {:#}",
                agent.sled,
                anyhow::Error::from(error)
            )
        })
}

fn state(instance: &Instance) -> Option<InstanceState> {
    instance.status.as_ref().and_then(|s| s.state)
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
