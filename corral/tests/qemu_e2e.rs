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
//!    sled, beating without having booted again; the source process gone; the Migration
//!    records the measured transfer time and downtime beside the admission's prediction.
//! 5. A migration cancelled while QEMU copies → `Cancelled`; the guest runs on in the same
//!    process, beating (never left paused), and the target's QEMU process is gone.
//! 6. The target's node-agent `kill -9`'d while QEMU copies (then restarted) → the migration
//!    does not succeed; the guest runs on where it was, beating, alone.
//! 7. A drain of the sled the guest moved to → `Completed`: no guest left on that sled's
//!    machine, every guest beating elsewhere.
//! 8. `kill -9` of a node-agent and a restart → the same QEMU processes (same pids) still run
//!    the guests, and nothing restarted.
//!
//! The sleds' migration link is slow (`--migration-bandwidth`, 20 MiB/s) so that a transfer
//! lasts long enough to be broken. Every QEMU process dies with the test process
//! (`--vmms-die-with`).

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
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const SLEDS: usize = 3;
const NAMESPACE: &str = "default";
/// How long a step may take on a loaded 2-core machine running debug builds (and TCG).
const CONVERGE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// What the last guest is annotated to dirty, bytes per second.
const DIRTY_RATE: u64 = 1 << 20;
/// The sleds' migration link, bytes per second: a 128 MiB guest takes about 6 s to move.
const LINK: u64 = 20 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guests_run_move_and_are_repaired_and_outlive_their_agent() {
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
            // Memory for a few small guests (the failure rack has 64 CPUs a sled).
            "--memory-mib",
            "2048",
            // A slow link, so that a transfer lasts long enough to be broken in the middle.
            "--migration-bandwidth",
            &LINK.to_string(),
        ]
        .map(String::from),
    );
    let mut rack = Rack::new(spec, scratch).expect("a rack");
    rack.start(Duration::from_secs(60))
        .await
        .expect("the rack starts");

    let running = guests_run(&rack).await;
    a_killed_qemu_is_repaired(&mut rack, &running).await;
    a_guest_panic_is_counted_and_repaired(&mut rack, &running).await;
    let moved = a_live_migration_moves_the_guest(&mut rack).await;
    a_cancel_mid_transfer_leaves_the_guest_running_where_it_was(&mut rack).await;
    a_target_agent_killed_mid_transfer_leaves_the_guest_running(&mut rack).await;
    a_drain_moves_every_guest_off_the_sled(&mut rack, &moved.sled).await;
    an_agent_restart_keeps_the_same_processes(&mut rack).await;
    rack.stop(Duration::from_secs(5)).await;
}

/// Step 1: three instances Running, one QEMU process each, each guest beating.
async fn guests_run(rack: &Rack) -> BTreeMap<String, Machine> {
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
    let running = wait_running(rack, SLEDS, "three guests Running and beating").await;
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
    running
}

/// Step 2: a QEMU process killed behind Corral's back.
async fn a_killed_qemu_is_repaired(rack: &mut Rack, running: &BTreeMap<String, Machine>) {
    let (victim, before) = running.iter().next().expect("a guest");
    kill(before.pid);
    rack.fault(format!(
        "kill -9 the QEMU process of {victim} (pid {})",
        before.pid
    ));
    let (repaired, _) = wait_for_polling(
        "the killed guest running again",
        CONVERGE,
        POLL,
        async || {
            let now = machines(rack).await?;
            match now.get(victim) {
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
        before.pid, repaired.pid
    );
}

/// Step 3: a guest panic (the guest itself panics) counts toward the crash backoff.
async fn a_guest_panic_is_counted_and_repaired(
    rack: &mut Rack,
    running: &BTreeMap<String, Machine>,
) {
    let instances: Api<Instance> = Api::namespaced(rack.client().clone(), NAMESPACE);
    let crashed = running.keys().nth(1).expect("a second guest").clone();
    let (sled, vmm_name) = active_vmm(&instances, &crashed).await;
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
}

/// Step 4: a live migration of the dirtying guest; returns where it runs after.
async fn a_live_migration_moves_the_guest(rack: &mut Rack) -> Machine {
    let moving = format!("guest-{SLEDS}");
    let before = machines(rack).await.expect("the machines")[&moving].clone();
    migrate(rack, "move-guest", &moving).await;
    let (moved, took) = wait_for_polling("the migration Succeeded", CONVERGE, POLL, async || {
        match final_phase(rack, "move-guest").await? {
            MigrationPhase::Succeeded => {}
            other => return Err(Unmet::Never(format!("the migration ended {other}"))),
        }
        let now = machines(rack).await.map_err(Unmet::Yet)?;
        match now.get(&moving) {
            Some(guest) if guest.sled != before.sled && guest.beats => Ok(guest.clone()),
            other => Err(Unmet::Yet(format!("{moving}: {other:?}"))),
        }
    })
    .await
    .expect("migrated");
    assert!(!alive(before.pid), "the source QEMU process is gone");
    let log = serial_log(rack, &moved);
    assert!(
        !log.contains("corral-guest ready"),
        "the guest was moved, not booted again: {log}"
    );
    // The move's ends measured it: the pause (source paused -> target running) and the whole
    // transfer, beside what the model predicted at admission.
    let (status, _) = wait_for_polling("the move measured", CONVERGE, POLL, async || {
        let status = Api::<Migration>::namespaced(rack.client().clone(), NAMESPACE)
            .get("move-guest")
            .await
            .map_err(|e| Unmet::Yet(e.to_string()))?
            .status
            .unwrap_or_default();
        match status.measured {
            Some(_) => Ok(status),
            None => Err(Unmet::Yet("not measured yet".into())),
        }
    })
    .await
    .expect("the measured downtime recorded");
    let measured = status.measured.expect("measured");
    let predicted = status.predicted.expect("the prediction made at admission");
    assert!(
        measured.downtime_ms > 0 && measured.downtime_ms < measured.transfer_ms,
        "a pause, shorter than the whole move: {measured:?}"
    );
    assert!(
        measured.transfer_ms as u128 <= took.as_millis(),
        "the transfer fits in the time the move took: {measured:?}, {took:?}"
    );
    println!(
        "moved {moving} from {} (pid {}) to {} (pid {}) in {took:?}: transfer {} ms, downtime {} ms (predicted {} ms, {} ms)",
        before.sled,
        before.pid,
        moved.sled,
        moved.pid,
        measured.transfer_ms,
        measured.downtime_ms,
        predicted.transfer_ms,
        predicted.downtime_ms
    );
    moved
}

/// Step 5: a migration cancelled while QEMU copies: the guest runs on where it was, never
/// paused past the abort, and the target's QEMU process goes.
async fn a_cancel_mid_transfer_leaves_the_guest_running_where_it_was(rack: &mut Rack) {
    let name = "guest-1";
    fill_memory(rack, name).await;
    let before = machines(rack).await.expect("the machines")[name].clone();
    migrate(rack, "cancelled", name).await;
    wait_transferring(rack, "cancelled").await;
    Api::<Migration>::namespaced(rack.client().clone(), NAMESPACE)
        .patch(
            "cancelled",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await
        .expect("cancelling the migration");
    rack.fault(format!("cancel the migration of {name} mid-transfer"));
    let phase = wait_final(rack, "cancelled").await;
    assert_eq!(phase, MigrationPhase::Cancelled);
    runs_on_where_it_was(rack, name, &before).await;
}

/// Step 6: the target's agent `kill -9`'d while QEMU copies: the guest runs on where it was.
async fn a_target_agent_killed_mid_transfer_leaves_the_guest_running(rack: &mut Rack) {
    let name = "guest-1";
    let before = machines(rack).await.expect("the machines")[name].clone();
    migrate(rack, "target-killed", name).await;
    let target = wait_transferring(rack, "target-killed").await;
    let index = rack
        .agents
        .iter()
        .position(|agent| agent.sled == target)
        .expect("the target's agent");
    let what = rack.kill9(Victim::Agent(index));
    rack.fault(format!("kill -9 {what}, the target of {name}'s migration"));
    let phase = wait_final(rack, "target-killed").await;
    assert_ne!(phase, MigrationPhase::Succeeded, "the transfer broke");
    rack.restart_agent(index).expect("restarting the agent");
    rack.fault(format!("restart the agent of {target}"));
    runs_on_where_it_was(rack, name, &before).await;
}

/// Step 7: a drain of the sled the guest moved to: every guest on it moves live.
async fn a_drain_moves_every_guest_off_the_sled(rack: &mut Rack, drained: &str) {
    let drains: Api<Drain> = Api::all(rack.client().clone());
    drains
        .create(
            &PostParams::default(),
            &Drain::new(
                "drain-guests",
                DrainSpec {
                    sled: drained.to_string(),
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
        match drain.status.as_ref().and_then(|s| s.phase) {
            Some(DrainPhase::Completed) => {}
            Some(DrainPhase::Refused | DrainPhase::Failed) => {
                return Err(Unmet::Never(format!("{:?}", drain.status)));
            }
            _ => return Err(Unmet::Yet(format!("{:?}", drain.status))),
        }
        let now = machines(rack).await.map_err(Unmet::Yet)?;
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
}

/// Step 8: `kill -9` of an agent, then a restart: the same processes run the guests.
async fn an_agent_restart_keeps_the_same_processes(rack: &mut Rack) {
    let before = machines(rack).await.expect("the machines");
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
    let after = wait_running(rack, SLEDS, "the guests Running after the agent restart").await;
    assert_eq!(
        after.iter().map(|(k, v)| (k, v.pid)).collect::<Vec<_>>(),
        before.iter().map(|(k, v)| (k, v.pid)).collect::<Vec<_>>(),
        "the same QEMU processes run the guests"
    );
}

/// Makes the guest `name` write every page of its memory (QEMU sends only the pages that are
/// not zero: an idle guest moves in a blink), then dirty slowly enough to converge.
async fn fill_memory(rack: &mut Rack, name: &str) {
    let instances: Api<Instance> = Api::namespaced(rack.client().clone(), NAMESPACE);
    let (sled, vmm) = active_vmm(&instances, name).await;
    rack.vmm_dirty_rate(&sled, (NAMESPACE, &vmm), 128 << 20)
        .await
        .expect("dirtying fast");
    let guest = machines(rack).await.expect("the machines")[name].clone();
    // Two passes over its memory at 128 MiB/s: a little over two seconds of its own beats.
    let beats = beat_count(&serial_log(rack, &guest));
    wait_for_polling("the guest's memory written", CONVERGE, POLL, async || {
        let now = beat_count(&serial_log(rack, &guest));
        if now >= beats + 12 {
            Ok(())
        } else {
            Err(format!("{now} beats"))
        }
    })
    .await
    .expect("the memory written");
    rack.vmm_dirty_rate(&sled, (NAMESPACE, &vmm), DIRTY_RATE)
        .await
        .expect("dirtying slowly");
    // A migration is admitted on the rate the Vmm reports: wait for the slow one.
    let vmms: Api<Vmm> = Api::namespaced(rack.client().clone(), NAMESPACE);
    wait_for_polling("the slow dirty rate reported", CONVERGE, POLL, async || {
        let reported = vmms
            .get(&vmm)
            .await
            .map_err(|e| e.to_string())?
            .status
            .map_or(0, |s| s.dirty_bytes_per_second);
        if reported == DIRTY_RATE {
            Ok(())
        } else {
            Err(format!("reports {reported} B/s"))
        }
    })
    .await
    .expect("the slow rate reported");
}

/// Creates the Migration `name` of `instance`.
async fn migrate(rack: &mut Rack, name: &str, instance: &str) {
    Api::<Migration>::namespaced(rack.client().clone(), NAMESPACE)
        .create(
            &PostParams::default(),
            &Migration::new(
                name,
                MigrationSpec {
                    instance: instance.to_string(),
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("creating a migration");
    rack.fault(format!("migrate {instance} ({name})"));
}

/// The final phase of Migration `name`; not final yet is `Unmet::Yet`.
async fn final_phase(rack: &Rack, name: &str) -> Result<MigrationPhase, Unmet> {
    let migration = Api::<Migration>::namespaced(rack.client().clone(), NAMESPACE)
        .get(name)
        .await
        .map_err(|e| Unmet::Yet(e.to_string()))?;
    match migration.status.as_ref().and_then(|s| s.phase) {
        Some(phase) if phase.is_final() => Ok(phase),
        _ => Err(Unmet::Yet(format!("{:?}", migration.status))),
    }
}

async fn wait_final(rack: &Rack, name: &str) -> MigrationPhase {
    wait_for_polling("the migration ended", CONVERGE, POLL, async || {
        final_phase(rack, name).await
    })
    .await
    .expect("the migration ends")
    .0
}

/// Waits until QEMU copies the guest of Migration `name`; returns its target sled.
async fn wait_transferring(rack: &Rack, name: &str) -> String {
    let migrations: Api<Migration> = Api::namespaced(rack.client().clone(), NAMESPACE);
    wait_for_polling(
        "the transfer under way",
        CONVERGE,
        Duration::from_millis(20),
        async || {
            let migration = migrations
                .get(name)
                .await
                .map_err(|e| Unmet::Yet(e.to_string()))?;
            let status = migration.status.unwrap_or_default();
            let sent = status.progress.as_ref().map_or(0, |p| p.bytes_sent);
            match (status.phase, status.target_sled) {
                (Some(MigrationPhase::Transferring), Some(target)) if sent > 0 => Ok(target),
                (Some(phase), _) if phase.is_final() => Err(Unmet::Never(format!(
                    "it ended {phase} before it could be broken"
                ))),
                (phase, _) => Err(Unmet::Yet(format!("{phase:?}, {sent} bytes sent"))),
            }
        },
    )
    .await
    .expect("a transfer under way")
    .0
}

/// Waits until `name` runs in the same QEMU process as `before` and beats on (it was never
/// left paused), with no other QEMU process of it anywhere.
async fn runs_on_where_it_was(rack: &Rack, name: &str, before: &Machine) {
    let beats_then = beat_count(&serial_log(rack, before));
    wait_for_polling(
        "the guest beating where it was, alone",
        CONVERGE,
        POLL,
        async || {
            let now = machines(rack).await?;
            let guest = now
                .get(name)
                .ok_or_else(|| format!("{name} runs nowhere"))?;
            if guest.pid != before.pid {
                return Err(format!(
                    "{name} now runs in pid {} (was {})",
                    guest.pid, before.pid
                ));
            }
            let beats = beat_count(&serial_log(rack, guest));
            let processes = qemu_processes(rack);
            if beats >= beats_then + 5 && processes == SLEDS {
                Ok(())
            } else {
                Err(format!(
                    "{beats} beats (had {beats_then}); {processes} QEMU processes on the sleds"
                ))
            }
        },
    )
    .await
    .expect("the guest runs on");
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

/// The guest's serial log (the lines it wrote, as its agent read them).
fn serial_log(rack: &Rack, guest: &Machine) -> String {
    std::fs::read_to_string(
        rack.dir()
            .join("sleds")
            .join(&guest.sled)
            .join("qemu")
            .join(&guest.uid)
            .join("serial.log"),
    )
    .unwrap_or_default()
}

fn beat_count(log: &str) -> usize {
    log.lines().filter(|line| line.starts_with("hb ")).count()
}

/// How many QEMU processes of the rack's sleds are alive, from their pid files.
fn qemu_processes(rack: &Rack) -> usize {
    let Ok(sleds) = std::fs::read_dir(rack.dir().join("sleds")) else {
        return 0;
    };
    sleds
        .flatten()
        .filter_map(|sled| std::fs::read_dir(sled.path().join("qemu")).ok())
        .flat_map(|vmms| vmms.flatten())
        .filter_map(|vmm| std::fs::read_to_string(vmm.path().join("qemu.pid")).ok())
        .filter_map(|pid| pid.trim().parse().ok())
        .filter(|pid| alive(*pid))
        .count()
}

/// Where the instance `name` runs: its sled and its active Vmm.
async fn active_vmm(instances: &Api<Instance>, name: &str) -> (String, String) {
    let status = instances
        .get(name)
        .await
        .expect("the instance")
        .status
        .unwrap_or_default();
    (
        status.sled.expect("a sled"),
        status.active_vmm.expect("an active Vmm"),
    )
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
