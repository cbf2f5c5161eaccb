//! Real VMs end to end (docs/qemu.md): a rack of real processes — the API server, two
//! controllers, three `corral node-agent --hypervisor qemu` sleds — whose VMMs are QEMU
//! processes running corral-guest (KVM when `/dev/kvm` is usable, TCG otherwise). QEMU is
//! installed by `scripts/setup.sh`; without it this test fails rather than skips.
//!
//! One story, each step checked on the machines — the QEMU processes in `/proc` and what each
//! guest wrote on its serial port — not only in the API:
//! 1. Three instances → `Running`, one QEMU process each, each guest beating; the one annotated
//!    `corral.dev/dirty-rate` says it dirties that rate; every Sled shows `status.hypervisor`
//!    `qemu (kvm)` or `qemu (tcg)`.
//! 2. One QEMU process killed behind Corral's back → divergence `VmmKilled`, repaired: the
//!    instance runs again in a new QEMU process.
//! 3. A guest panic (the fault API's `crash`, which makes the guest itself panic) → the exit
//!    counts toward the crash backoff, and the instance runs again.
//! 4. A live migration of the dirtying guest → `Succeeded`; its QEMU process now on another
//!    sled, beating without having booted again; the source process gone.
//! 5. A drain of the sled it moved to → `Completed`: no guest left on that sled's machine,
//!    every guest beating elsewhere.
//! 6. `kill -9` of a node-agent and a restart → the same QEMU processes (same pids) still run
//!    the guests, and nothing restarted.
//!
//! Every QEMU process dies with the test process (`--vmms-die-with`).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use corral_crds::{
    DIRTY_RATE_ANNOTATION, Drain, DrainPhase, DrainSpec, Instance, InstanceSpec, InstanceState,
    Migration, MigrationPhase, MigrationSpec, Sled, Vmm,
};
use corral_harness::wait::{Unmet, wait_for_polling};
use corral_harness::{Rack, RackSpec, Scratch, Store, Victim};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};

const SLEDS: usize = 3;
const NAMESPACE: &str = "default";
/// How long a step may take on a loaded 2-core machine running debug builds (and TCG).
const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// What the last guest is annotated to dirty, bytes per second.
const DIRTY_RATE: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guests_run_are_repaired_and_outlive_their_agent() {
    let scratch = Scratch::temporary("corral-qemu-e2e-").expect("a scratch directory");
    let mut spec = RackSpec {
        apiserver_args: vec!["--crds".into(), common::crd_dir().display().to_string()],
        ..RackSpec::for_failures(
            common::corral().to_path_buf(),
            Store::Sqlite(scratch.path().join("store.db")),
            SLEDS,
            Duration::from_secs(20),
            corral_controllers::LEADER_LEASE,
        )
    };
    spec.sled_args.extend(
        [
            "--hypervisor",
            "qemu",
            "--vmms-die-with",
            &std::process::id().to_string(),
        ]
        .map(String::from),
    );
    // The sleds' capacity: the failure rack's 64 CPUs, and memory for a few small guests.
    spec.sled_args
        .extend(["--memory-mib", "2048"].map(String::from));
    let mut rack = Rack::new(spec, scratch).expect("a rack");
    rack.start(Duration::from_secs(60))
        .await
        .expect("the rack starts");
    let instances: Api<Instance> = Api::namespaced(rack.client().clone(), NAMESPACE);
    for index in 1..=SLEDS {
        let mut instance = guest(&format!("guest-{index}"));
        if index == SLEDS {
            instance
                .annotations_mut()
                .insert(DIRTY_RATE_ANNOTATION.into(), DIRTY_RATE.to_string());
            // It moves later: no anti-affinity to pin it where it is.
            instance.spec.anti_affinity_group = None;
        }
        instances
            .create(&PostParams::default(), &instance)
            .await
            .expect("creating an instance");
    }

    // 1. Running, one QEMU process each, each guest beating.
    let running = wait_running(&rack, SLEDS, "three guests Running and beating").await;
    println!("running: {running:?}");
    let dirtying = running
        .get(&format!("guest-{SLEDS}"))
        .expect("the dirtying guest");
    assert!(
        dirtying.log.contains(&format!("dirty={DIRTY_RATE}")),
        "the annotated guest dirties {DIRTY_RATE} bytes a second: {}",
        dirtying.log
    );
    let sleds: Api<Sled> = Api::all(rack.client().clone());
    for sled in sleds.list(&ListParams::default()).await.expect("the sleds") {
        let hypervisor = sled
            .status
            .as_ref()
            .map(|s| s.hypervisor.clone())
            .unwrap_or_default();
        assert!(
            hypervisor == "qemu (kvm)" || hypervisor == "qemu (tcg)",
            "{} shows its hypervisor: {hypervisor:?}",
            sled.name_any()
        );
    }

    // 2. A QEMU process killed behind Corral's back.
    let (victim, before) = running
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    kill(before.pid);
    rack.fault(format!(
        "kill -9 the QEMU process of {victim} (pid {})",
        before.pid
    ));
    let repaired = wait_for_polling(
        "the killed guest running again",
        CONVERGE,
        POLL,
        async || {
            let now = machines(&rack).await?;
            match now.get(&victim) {
                Some(guest) if guest.pid != before.pid && guest.beats => Ok(guest.clone()),
                other => Err(format!("{victim}: {other:?}")),
            }
        },
    )
    .await
    .expect("repaired");
    let events = corral_harness::rack::events::recent_warnings(rack.client(), 50).await;
    assert!(
        events.contains("VmmKilled"),
        "a VmmKilled divergence: {events}"
    );
    println!(
        "killed {victim}'s QEMU (pid {}): now pid {}",
        before.pid, repaired.0.pid
    );

    // 3. A guest panic.
    let crashed = running.keys().nth(1).unwrap().clone();
    let sled = current_sled(&instances, &crashed).await;
    let vmm_name = instances
        .get(&crashed)
        .await
        .unwrap()
        .status
        .and_then(|s| s.active_vmm)
        .unwrap();
    rack.vmm_fault(&sled, (NAMESPACE, &vmm_name), "crash")
        .await
        .expect("the crash fault");
    wait_for_polling(
        "the panicked guest counted and running again",
        CONVERGE,
        POLL,
        async || {
            let instance = instances.get(&crashed).await.map_err(|e| e.to_string())?;
            let status = instance.status.unwrap_or_default();
            let counted = status.consecutive_failures >= 1 || status.restarts >= 1;
            let running = status.state == Some(InstanceState::Running)
                && status.active_vmm.as_deref() != Some(&vmm_name);
            if counted && running {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
    .expect("the crash counted and repaired");

    // 4. A live migration of the dirtying guest: QEMU moves it to another sled's QEMU process.
    let moving = format!("guest-{SLEDS}");
    let before = machines(&rack).await.expect("the machines")[&moving].clone();
    let migrations: Api<Migration> = Api::namespaced(rack.client().clone(), NAMESPACE);
    migrations
        .create(
            &PostParams::default(),
            &Migration::new(
                "move-guest",
                MigrationSpec {
                    instance: moving.clone(),
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("creating a migration");
    rack.fault(format!("migrate {moving} from {}", before.sled));
    let (moved, took) = wait_for_polling("the migration Succeeded", CONVERGE, POLL, async || {
        let migration = migrations
            .get("move-guest")
            .await
            .map_err(|e| e.to_string())?;
        let phase = migration.status.as_ref().and_then(|s| s.phase);
        if phase == Some(MigrationPhase::Failed) {
            return Err(Unmet::Never(format!("{:?}", migration.status)));
        }
        if phase != Some(MigrationPhase::Succeeded) {
            return Err(Unmet::Yet(format!("{:?}", migration.status)));
        }
        let now = machines(&rack).await.map_err(Unmet::Yet)?;
        match now.get(&moving) {
            Some(guest) if guest.sled != before.sled && guest.beats => Ok(guest.clone()),
            other => Err(Unmet::Yet(format!("{moving}: {other:?}"))),
        }
    })
    .await
    .expect("migrated");
    assert!(!alive(before.pid), "the source QEMU process is gone");
    let log = std::fs::read_to_string(
        rack.dir()
            .join("sleds")
            .join(&moved.sled)
            .join("qemu")
            .join(&moved.uid)
            .join("serial.log"),
    )
    .unwrap_or_default();
    assert!(
        !log.contains("corral-guest ready"),
        "the guest was moved, not booted again: {log}"
    );
    println!(
        "moved {moving} from {} (pid {}) to {} (pid {}) in {took:?}",
        before.sled, before.pid, moved.sled, moved.pid
    );

    // 5. A drain of the sled the guest moved to: every guest on it moves live; none is left.
    let drained = moved.sled.clone();
    let drains: Api<Drain> = Api::all(rack.client().clone());
    drains
        .create(
            &PostParams::default(),
            &Drain::new(
                "drain-guests",
                DrainSpec {
                    sled: drained.clone(),
                    deadline: Some("5m".into()),
                    max_parallel: 2,
                    force: false,
                    cancel: false,
                },
            ),
        )
        .await
        .expect("creating a drain");
    rack.fault(format!("drain {drained}"));
    let (_, took) = wait_for_polling("the drain Completed", CONVERGE, POLL, async || {
        let drain = drains
            .get("drain-guests")
            .await
            .map_err(|e| Unmet::Yet(e.to_string()))?;
        let phase = drain.status.as_ref().and_then(|s| s.phase);
        match phase {
            Some(DrainPhase::Completed) => {}
            Some(DrainPhase::Refused | DrainPhase::Failed) => {
                return Err(Unmet::Never(format!("{:?}", drain.status)));
            }
            _ => return Err(Unmet::Yet(format!("{:?}", drain.status))),
        }
        let now = machines(&rack).await.map_err(Unmet::Yet)?;
        let left: Vec<&String> = now
            .iter()
            .filter(|(_, guest)| guest.sled == drained)
            .map(|(name, _)| name)
            .collect();
        if left.is_empty() && now.len() == SLEDS && now.values().all(|guest| guest.beats) {
            Ok(())
        } else {
            Err(Unmet::Yet(format!(
                "on {drained}: {left:?}; machines {now:?}"
            )))
        }
    })
    .await
    .expect("drained");
    println!("drained {drained} in {took:?}");

    // 6. kill -9 of an agent, then a restart: the same processes run the guests.
    let before = machines(&rack).await.expect("the machines");
    let index = 0;
    let what = rack.kill9(Victim::Agent(index));
    rack.fault(format!("kill -9 {what}"));
    rack.restart_agent(index).expect("restarting the agent");
    rack.fault("restart the agent of sled-1");
    wait_for_polling("sled-1 Ready again", CONVERGE, POLL, async || {
        rack.sleds_ready().await
    })
    .await
    .expect("the sled Ready");
    let after = wait_running(&rack, SLEDS, "the guests Running after the agent restart").await;
    assert_eq!(
        after.iter().map(|(k, v)| (k, v.pid)).collect::<Vec<_>>(),
        before.iter().map(|(k, v)| (k, v.pid)).collect::<Vec<_>>(),
        "the same QEMU processes run the guests"
    );
    rack.stop(Duration::from_secs(5)).await;
}

fn guest(name: &str) -> Instance {
    Instance::new(
        name,
        InstanceSpec {
            cpus: 1,
            memory_mib: 128,
            image: "corral-guest".into(),
            anti_affinity_group: Some("guests".into()),
            ..Default::default()
        },
    )
}

/// One guest as its machine shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Machine {
    sled: String,
    pid: u32,
    /// Its serial log holds a heartbeat.
    beats: bool,
    /// Its serial log's first line (the guest's `ready`).
    log: String,
    /// The Vmm's uid (its directory's name).
    uid: String,
}

/// Every guest of the rack, by instance: found from the Vmms' uids in the sleds' QEMU
/// directories, alive in `/proc`.
async fn machines(rack: &Rack) -> Result<BTreeMap<String, Machine>, String> {
    let vmms: Api<Vmm> = Api::namespaced(rack.client().clone(), NAMESPACE);
    let mut found = BTreeMap::new();
    for vmm in vmms
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
    {
        let uid = vmm.uid().unwrap_or_default();
        let dir: PathBuf = rack
            .dir()
            .join("sleds")
            .join(&vmm.spec.sled)
            .join("qemu")
            .join(&uid);
        let Ok(pid) = std::fs::read_to_string(dir.join("qemu.pid")) else {
            continue;
        };
        let pid: u32 = pid.trim().parse().map_err(|e| format!("{e}"))?;
        if !alive(pid) {
            continue;
        }
        let log = std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default();
        let beats = log.lines().any(|line| line.starts_with("hb "));
        let log = log.lines().next().unwrap_or_default().to_string();
        let previous = found.insert(
            vmm.spec.instance.clone(),
            Machine {
                sled: vmm.spec.sled.clone(),
                pid,
                beats,
                log,
                uid: uid.clone(),
            },
        );
        if previous.is_some() {
            return Err(format!("{} runs in two QEMU processes", vmm.spec.instance));
        }
    }
    Ok(found)
}

/// Waits until `count` instances are Running, each in a live QEMU process whose guest beats.
async fn wait_running(rack: &Rack, count: usize, what: &str) -> BTreeMap<String, Machine> {
    let instances: Api<Instance> = Api::namespaced(rack.client().clone(), NAMESPACE);
    wait_for_polling(what, CONVERGE, POLL, async || {
        let list = instances
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let machines = machines(rack).await?;
        let running = list
            .items
            .iter()
            .filter(|i| i.status.as_ref().and_then(|s| s.state) == Some(InstanceState::Running))
            .filter(|i| machines.get(&i.name_any()).is_some_and(|m| m.beats))
            .count();
        if running == count {
            Ok(machines)
        } else {
            Err(format!(
                "{running} of {count} Running and beating; machines {machines:?}"
            ))
        }
    })
    .await
    .expect(what)
    .0
}

async fn current_sled(instances: &Api<Instance>, name: &str) -> String {
    instances
        .get(name)
        .await
        .expect("the instance")
        .status
        .and_then(|s| s.sled)
        .expect("a sled")
}

fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !state.is_some_and(|state| state.starts_with('Z') || state.starts_with('X'))
}

fn kill(pid: u32) {
    // SAFETY: a plain kill(2) of a QEMU process this test's rack started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}
