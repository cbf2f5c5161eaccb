//! When a sled fails, end to end with real processes (`RackSpec::for_failures`): one `corral
//! apiserver` on a SQLite file, two `corral controllers` (`--sled-grace 4s`), six `corral
//! node-agent`s (simulated sleds, each with its fault API and its own power controller, renewing
//! their Leases every 500 ms), driven through kube-rs and the faults of docs/rack.md.
//!
//! One story, in order:
//! 1. **Power lost behind the control plane's back** → the sled is judged, fenced (epoch
//!    raised) and every instance it ran runs elsewhere within grace + fence + 5 s; powered on
//!    again it rejoins with a new epoch, its machine running nothing of its old life, and a Vmm
//!    report carrying the old epoch changes nothing (the API server refuses it, 409 naming
//!    `status.sledEpoch`).
//! 2. **An agent cut off from the API server while its guests run** → the sled is powered off
//!    (its power controller reads `Off`) before any of its instances runs elsewhere.
//! 3. **An agent killed and restarted within the grace** → no verdict worse than `Suspect`, no
//!    fence, nothing moves.
//! 4. **The storm guard**: four of six sleds stop heartbeating at once → none is fenced,
//!    nothing moves, each shows `FencingPaused`; when they resume, nothing was lost.
//!
//! # The census
//! Throughout, a sampler reads every sled's machine (its `machine.json`, so even a dead or hung
//! agent's machine is read) every 100 ms and records every instance found live on two machines
//! at once; the story ends with none.
//!
//! # Determinism
//! The victims come from one seed, printed at the start (`SLED_FAILURE_SEED=N` replays it); every
//! fault is printed with its time, and every measured duration. Every wait is bounded.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use corral_crds::{HealthVerdict, Instance, InstanceSpec, InstanceState, Nic, Reason, Sled, Vmm};
use corral_harness::rack::sled_name;
use corral_harness::wait::{Unmet, wait_for_polling};
use corral_harness::{Rack, RackSpec, Scratch, Store, Victim};
use corral_node_agent::sim::census::{Census, guests_in};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

const SLEDS: usize = 6;
const INSTANCES: usize = 24;
const NAMESPACE: &str = "default";
const GRACE: Duration = Duration::from_secs(4);
/// How long a step may take to converge on a loaded 2-core machine running debug builds.
const CONVERGE: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(100);

/// Where each instance runs: (sled, active Vmm).
type Placement = BTreeMap<String, (Option<String>, Option<String>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_sled_is_fenced_before_its_instances_run_elsewhere() {
    let seed = common::seed("SLED_FAILURE_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let scratch = Scratch::temporary("corral-sled-failure-").expect("a scratch directory");
    let spec = RackSpec {
        apiserver_args: vec!["--crds".into(), common::crd_dir().display().to_string()],
        ..RackSpec::for_failures(
            common::corral().to_path_buf(),
            Store::Sqlite(scratch.path().join("store.db")),
            SLEDS,
            GRACE,
            corral_controllers::LEADER_LEASE,
        )
    };
    let mut rack = Rack::new(spec, scratch).expect("a rack");
    rack.start(Duration::from_secs(60))
        .await
        .expect("the rack starts");
    let client = rack.client().clone();
    let instances: Api<Instance> = Api::namespaced(client.clone(), NAMESPACE);
    for index in 0..INSTANCES {
        instances
            .create(
                &PostParams::default(),
                &instance(&format!("web-{index:02}"), index),
            )
            .await
            .expect("creating an instance");
    }
    wait_all_running(&instances, INSTANCES, "every instance Running").await;
    let machines = rack
        .agents
        .iter()
        .map(|agent| (agent.sled.clone(), agent.data_dir.clone()))
        .collect();
    let census = Census::start(machines, POLL);

    power_lost(&mut rack, &mut rng).await;
    cut_off(&mut rack, &mut rng).await;
    agent_restarted_within_the_grace(&mut rack, &mut rng).await;
    storm(&mut rack, &mut rng).await;

    let twice = census.take();
    assert!(
        twice.is_empty(),
        "instances live on two machines at once: {twice:#?}"
    );
    println!("census: no instance was ever live on two machines");
    rack.stop(Duration::from_secs(5)).await;
}

/// Step 1 (see the module docs).
async fn power_lost(rack: &mut Rack, rng: &mut StdRng) {
    let client = rack.client().clone();
    let instances: Api<Instance> = Api::namespaced(client.clone(), NAMESPACE);
    let sleds: Api<Sled> = Api::all(client.clone());
    let victim = busy_sled(&instances, rng).await;
    let before = placement(&instances).await;
    let on_victim = on_sled(&before, &victim);
    let epoch = sleds.get(&victim).await.expect("the sled").epoch();
    let start = Instant::now();
    rack.power_off(&victim).await.expect("power off");
    let mut detected = None;
    let mut fenced = None;
    wait_for_polling(
        "every instance of the powered-off sled Running elsewhere",
        CONVERGE,
        POLL,
        async || {
            let sled = sleds.get(&victim).await.map_err(|e| e.to_string())?;
            match sled.health() {
                HealthVerdict::Unreachable | HealthVerdict::PoweredOff => {
                    detected.get_or_insert(start.elapsed());
                }
                HealthVerdict::Fenced => {
                    detected.get_or_insert(start.elapsed());
                    fenced.get_or_insert(start.elapsed());
                }
                _ => {}
            }
            running_elsewhere(&instances, &on_victim, &victim).await
        },
    )
    .await
    .expect("the instances run elsewhere");
    let all_elsewhere = start.elapsed();
    let (detected, fenced) = (detected.expect("detected"), fenced.expect("fenced"));
    let fence = fenced.saturating_sub(detected);
    println!(
        "power lost on {victim} ({} instances): detected {:.2} s, fenced {:.2} s, all running \
         elsewhere {:.2} s (bound grace {} s + fence {:.2} s + 5 s)",
        on_victim.len(),
        detected.as_secs_f64(),
        fenced.as_secs_f64(),
        all_elsewhere.as_secs_f64(),
        GRACE.as_secs(),
        fence.as_secs_f64()
    );
    assert!(
        all_elsewhere <= GRACE + fence + Duration::from_secs(5),
        "took {all_elsewhere:?}"
    );
    let fenced_sled = sleds.get(&victim).await.expect("the sled");
    let fenced_epoch = fenced_sled.epoch();
    assert!(fenced_epoch > epoch, "the fence raised the epoch");
    let health = fenced_sled.status.unwrap().health.unwrap();
    assert_eq!(health.fenced_epoch, Some(fenced_epoch));
    assert_eq!(health.evacuation.unwrap().total as usize, on_victim.len());
    let exits = restarts_after(&instances, &on_victim).await;
    assert!(
        exits.iter().all(|failures| *failures == 0),
        "a sled failure is no crash"
    );

    // Powered on again: a new epoch, nothing of the old life on the machine.
    rack.power_on(&victim).await.expect("power on");
    let rejoined = wait_healthy(&sleds, &victim, fenced_epoch).await;
    println!("{victim} rejoined at epoch {rejoined} (fenced at {fenced_epoch})");
    let agent = rack.agents.iter().find(|a| a.sled == victim).unwrap();
    let old = guests_in(&agent.data_dir).expect("reading the machine");
    assert!(
        old.iter().all(|guest| !on_victim.contains(&guest.instance)),
        "{old:?}"
    );

    // A Vmm report from the old life changes nothing.
    let vmm = place_on(rack, &victim).await;
    let vmms: Api<Vmm> = Api::namespaced(client.clone(), NAMESPACE);
    let stored = vmms.get(&vmm).await.expect("the Vmm");
    let stale = json!({"status": {"state": "Failed", "reason": "GuestCrashed",
                                  "stateGeneration": 1000, "sledEpoch": fenced_epoch - 1}});
    let refused = vmms
        .patch_status(&vmm, &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .expect_err("a report from an ended life is refused");
    let kube::Error::Api(status) = refused else {
        panic!("not a Status: {refused:?}")
    };
    assert_eq!(status.code, 409, "{status:?}");
    assert!(
        status.message.contains("fenced or rebooted"),
        "{}",
        status.message
    );
    let after = vmms.get(&vmm).await.expect("the Vmm");
    assert_eq!(after.resource_version(), stored.resource_version());
    assert_eq!(after.status, stored.status);
}

/// Step 2 (see the module docs).
async fn cut_off(rack: &mut Rack, rng: &mut StdRng) {
    let client = rack.client().clone();
    let instances: Api<Instance> = Api::namespaced(client.clone(), NAMESPACE);
    let sleds: Api<Sled> = Api::all(client.clone());
    let victim = busy_sled(&instances, rng).await;
    let on_victim = on_sled(&placement(&instances).await, &victim);
    let epoch = sleds.get(&victim).await.expect("the sled").epoch();
    let start = Instant::now();
    rack.partition(&victim).await.expect("partition");
    let mut off_at = None;
    let mut first_elsewhere = None;
    wait_for_polling(
        "every instance of the cut-off sled Running elsewhere",
        CONVERGE,
        POLL,
        async || {
            if off_at.is_none() && rack.power_reads(&victim).await.ok().as_deref() == Some("Off") {
                off_at = Some(start.elapsed());
            }
            let answer = running_elsewhere(&instances, &on_victim, &victim).await;
            let moved = moved(&instances, &on_victim, &victim).await;
            if moved > 0 {
                first_elsewhere.get_or_insert(start.elapsed());
            }
            answer
        },
    )
    .await
    .expect("the instances run elsewhere");
    let off_at = off_at.expect("the power controller read Off");
    let first_elsewhere = first_elsewhere.expect("moved");
    println!(
        "{victim} cut off ({} instances): powered off at {:.2} s, first instance elsewhere at \
         {:.2} s",
        on_victim.len(),
        off_at.as_secs_f64(),
        first_elsewhere.as_secs_f64()
    );
    assert!(off_at <= first_elsewhere, "fenced before anything moved");
    let fenced = sleds.get(&victim).await.expect("the sled");
    assert_eq!(fenced.health(), HealthVerdict::Fenced);
    let reason = fenced
        .status
        .as_ref()
        .unwrap()
        .health
        .as_ref()
        .unwrap()
        .reason;
    assert_eq!(reason, Reason::FencedByPowerOff);
    rack.power_on(&victim).await.expect("power on");
    rack.heal(&victim).await.expect("heal");
    let rejoined = wait_healthy(&sleds, &victim, epoch + 1).await;
    println!("{victim} rejoined at epoch {rejoined}");
}

/// Step 3 (see the module docs).
async fn agent_restarted_within_the_grace(rack: &mut Rack, rng: &mut StdRng) {
    let client = rack.client().clone();
    let instances: Api<Instance> = Api::namespaced(client.clone(), NAMESPACE);
    let sleds: Api<Sled> = Api::all(client.clone());
    let victim = busy_sled(&instances, rng).await;
    let index = rack.agents.iter().position(|a| a.sled == victim).unwrap();
    let before = placement(&instances).await;
    let epoch = sleds.get(&victim).await.expect("the sled").epoch();
    let killed = rack.kill9(Victim::Agent(index));
    rack.fault(format!("kill -9 {killed}"));
    rack.restart_agent(index).expect("restarting the agent");
    rack.fault(format!("restart the agent of {victim}"));
    // Watched for twice the grace: it never goes further than Suspect.
    let watched = observe(2 * GRACE, async || {
        let sled = sleds.get(&victim).await.map_err(|e| e.to_string())?;
        match sled.health() {
            HealthVerdict::Healthy | HealthVerdict::Suspect if sled.epoch() == epoch => Ok(()),
            verdict => Err(format!("{victim} is {verdict} at epoch {}", sled.epoch())),
        }
    })
    .await;
    watched.expect("a restart within the grace fences nothing");
    assert_eq!(placement(&instances).await, before, "nothing moved");
    wait_all_running(&instances, INSTANCES + 1, "every instance still Running").await;
    println!("{victim}'s agent restarted within the grace: no fence, nothing moved");
}

/// Step 4 (see the module docs).
async fn storm(rack: &mut Rack, rng: &mut StdRng) {
    let client = rack.client().clone();
    let instances: Api<Instance> = Api::namespaced(client.clone(), NAMESPACE);
    let sleds: Api<Sled> = Api::all(client.clone());
    let mut names: Vec<String> = (1..=SLEDS).map(sled_name).collect();
    names.shuffle(rng);
    let silent: Vec<String> = names.into_iter().take(4).collect();
    let before = placement(&instances).await;
    let epochs: BTreeMap<String, u64> = sleds
        .list(&ListParams::default())
        .await
        .expect("sleds")
        .items
        .iter()
        .map(|sled| (sled.name_any(), sled.epoch()))
        .collect();
    for sled in &silent {
        rack.stop_heartbeat(sled)
            .await
            .expect("stopping a heartbeat");
    }
    let all_paused = async || {
        let mut paused = 0;
        for sled in sleds
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
        {
            let name = sled.name_any();
            if sled.epoch() != epochs[&name] || sled.health() == HealthVerdict::Fenced {
                return Err(Unmet::Never(format!("{name} was fenced")));
            }
            let reason = sled
                .status
                .as_ref()
                .and_then(|s| s.health.as_ref())
                .map(|h| h.reason);
            if silent.contains(&name) && reason == Some(Reason::FencingPaused) {
                paused += 1;
            }
        }
        if paused == silent.len() {
            Ok(())
        } else {
            Err(Unmet::Yet(format!("{paused} of {} paused", silent.len())))
        }
    };
    wait_for_polling("the storm guard holding", CONVERGE, POLL, all_paused)
        .await
        .expect("every silent sled shows FencingPaused, none fenced");
    // Held for another grace: nothing is fenced, nothing moves, every power controller reads On.
    observe(GRACE, async || {
        for sled in &silent {
            let read = rack.power_reads(sled).await?;
            if read != "On" {
                return Err(format!("{sled} reads {read}"));
            }
        }
        Ok(())
    })
    .await
    .expect("nothing is powered off in a storm");
    assert_eq!(placement(&instances).await, before, "nothing moved");
    println!(
        "storm: {} of {SLEDS} sleds silent, none fenced, nothing moved",
        silent.len()
    );
    for sled in &silent {
        rack.resume_heartbeat(sled)
            .await
            .expect("resuming a heartbeat");
    }
    for sled in &silent {
        wait_healthy(&sleds, sled, epochs[sled]).await;
    }
    assert_eq!(placement(&instances).await, before, "nothing moved");
    wait_all_running(&instances, INSTANCES + 1, "nothing was lost").await;
}

fn instance(name: &str, index: usize) -> Instance {
    Instance::new(
        name,
        InstanceSpec {
            cpus: 1,
            memory_mib: 256,
            image: "debian".into(),
            nics: vec![Nic {
                name: "eth0".into(),
                vpc: "blue".into(),
                ip: format!("10.0.0.{}", index + 10),
            }],
            ..Default::default()
        },
    )
}

/// Where every instance runs now.
async fn placement(instances: &Api<Instance>) -> Placement {
    instances
        .list(&ListParams::default())
        .await
        .expect("listing instances")
        .items
        .into_iter()
        .map(|instance| {
            let status = instance.status.clone().unwrap_or_default();
            (instance.name_any(), (status.sled, status.active_vmm))
        })
        .collect()
}

fn on_sled(placement: &Placement, sled: &str) -> Vec<String> {
    placement
        .iter()
        .filter(|(_, (on, _))| on.as_deref() == Some(sled))
        .map(|(name, _)| name.clone())
        .collect()
}

/// A sled running at least two instances, chosen by the seed.
async fn busy_sled(instances: &Api<Instance>, rng: &mut StdRng) -> String {
    let placement = placement(instances).await;
    let busy: Vec<String> = (1..=SLEDS)
        .map(sled_name)
        .filter(|sled| on_sled(&placement, sled).len() >= 2)
        .collect();
    assert!(
        !busy.is_empty(),
        "no sled runs two instances: {placement:?}"
    );
    busy[rng.random_range(0..busy.len())].clone()
}

/// Whether every one of `names` is Running on a sled other than `sled`.
async fn running_elsewhere(
    instances: &Api<Instance>,
    names: &[String],
    sled: &str,
) -> Result<(), String> {
    let moved = moved(instances, names, sled).await;
    if moved == names.len() {
        Ok(())
    } else {
        Err(format!("{moved} of {} running elsewhere", names.len()))
    }
}

/// How many of `names` are Running on a sled other than `sled`.
async fn moved(instances: &Api<Instance>, names: &[String], sled: &str) -> usize {
    let Ok(list) = instances.list(&ListParams::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|instance| names.contains(&instance.name_any()))
        .filter_map(|instance| instance.status.as_ref())
        .filter(|status| {
            status.state == Some(InstanceState::Running)
                && status.sled.as_deref().is_some_and(|on| on != sled)
        })
        .count()
}

/// The crash count of each of `names` (a sled's failure must not count).
async fn restarts_after(instances: &Api<Instance>, names: &[String]) -> Vec<u32> {
    let list = instances
        .list(&ListParams::default())
        .await
        .expect("instances");
    list.items
        .iter()
        .filter(|instance| names.contains(&instance.name_any()))
        .map(|instance| {
            instance
                .status
                .as_ref()
                .map_or(0, |s| s.consecutive_failures)
        })
        .collect()
}

async fn wait_all_running(instances: &Api<Instance>, count: usize, what: &str) {
    wait_for_polling(what, CONVERGE, POLL, async || {
        let list = instances
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let running = list
            .items
            .iter()
            .filter(|i| i.status.as_ref().and_then(|s| s.state) == Some(InstanceState::Running))
            .count();
        if running == count {
            Ok(())
        } else {
            Err(format!("{running} of {count} Running"))
        }
    })
    .await
    .expect(what);
}

/// Waits until `sled` is Healthy and Ready at an epoch of at least `epoch`; its epoch.
async fn wait_healthy(sleds: &Api<Sled>, sled: &str, epoch: u64) -> u64 {
    let (epoch, _) = wait_for_polling(
        &format!("{sled} Healthy again"),
        CONVERGE,
        POLL,
        async || {
            let found = sleds.get(sled).await.map_err(|e| e.to_string())?;
            if found.health() == HealthVerdict::Healthy
                && found.is_ready_and_booted()
                && found.epoch() >= epoch
            {
                Ok(found.epoch())
            } else {
                Err(format!("{} at epoch {}", found.health(), found.epoch()))
            }
        },
    )
    .await
    .expect("the sled is Healthy again");
    epoch
}

/// Places one more instance, on `sled` alone (the others cordoned meanwhile); its Vmm.
async fn place_on(rack: &Rack, sled: &str) -> String {
    let client = rack.client().clone();
    let sleds: Api<Sled> = Api::all(client.clone());
    let instances: Api<Instance> = Api::namespaced(client, NAMESPACE);
    let cordon = |on: bool| json!({"spec": {"unschedulable": on}});
    let others: Vec<String> = (1..=SLEDS).map(sled_name).filter(|s| s != sled).collect();
    for other in &others {
        sleds
            .patch(other, &PatchParams::default(), &Patch::Merge(&cordon(true)))
            .await
            .expect("cordon");
    }
    instances
        .create(&PostParams::default(), &instance("pinned", 200))
        .await
        .expect("creating an instance");
    let (vmm, _) = wait_for_polling("the pinned instance Running", CONVERGE, POLL, async || {
        let found = instances.get("pinned").await.map_err(|e| e.to_string())?;
        let status = found.status.unwrap_or_default();
        let conditions = serde_json::to_string(&status.conditions).unwrap_or_default();
        match (status.state, status.sled.as_deref(), status.active_vmm) {
            (Some(InstanceState::Running), Some(on), Some(vmm)) if on == sled => Ok(vmm),
            other => Err(format!("{other:?} {conditions}")),
        }
    })
    .await
    .expect("the pinned instance runs");
    for other in &others {
        sleds
            .patch(
                other,
                &PatchParams::default(),
                &Patch::Merge(&cordon(false)),
            )
            .await
            .expect("uncordon");
    }
    vmm
}

/// Checks `holds` every [`POLL`] for `period`: the first failure, if any. (Something that must
/// *not* happen can only be watched for a while.)
async fn observe(
    period: Duration,
    mut holds: impl AsyncFnMut() -> Result<(), String>,
) -> Result<(), String> {
    let end = Instant::now() + period;
    let mut ticks = tokio::time::interval(POLL);
    while Instant::now() < end {
        ticks.tick().await;
        holds().await?;
    }
    Ok(())
}
