//! Live migration and drains end to end, on the same real-process rack (see the crate docs),
//! with the connectivity checker (`corral-e2e`) watching every sled's V2P table against where
//! each guest really runs. In order:
//!
//! - (d) A drain that cannot fit is refused by `corralctl drain`, with a message naming what
//!   does not fit where; nothing moves.
//! - (a) A sled running 50 instances is drained with `corralctl drain` while the checker runs
//!   and `corralctl get drains` is polled: the drain completes, every instance ends `Running` on
//!   another sled exactly once, the sled's agent reports no VMM, no mapping is wrong for longer
//!   than the guest's pause plus 10 ms (make before break: a sled that still maps a moved IP to
//!   the source reaches the guest through the source's forwarding entry), and `get drains`
//!   showed progress on the way.
//! - (b) The target node-agent is killed (SIGKILL) mid-transfer: the Migration fails with the
//!   reason, the source keeps running, the V2P mapping never moved, and once the agent is back
//!   the target is reaped. A cancel mid-transfer ends the same way, `Cancelled`.
//! - (c) The controllers are crashed right after writing each phase (`--crash-at migration/
//!   phase`, both processes): every migration still ends in a final phase and the instance runs
//!   exactly once.

use std::path::PathBuf;
use std::process::Stdio;

use corral_crds::{
    Drain, DrainPhase, EvictionStrategy, Migration, MigrationPhase, MigrationSpec, Nic, VpcRoutes,
};
use corral_e2e::connectivity;

use super::*;

/// The VPC every instance of this story is in.
const VPC: &str = "e2e";
/// Instances on the drained sled.
const DRAINED_INSTANCES: usize = 50;
/// The longest a mapping may stay wrong beyond the guest's pause (the longest stretch the
/// checker saw a guest run nowhere): make before break leaves no wrong route after it.
const BEYOND_THE_PAUSE: Duration = Duration::from_millis(10);
/// The whole story gives up after this long.
const MIGRATION_STORY_BOUND: Duration = Duration::from_secs(420);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_end_to_end() {
    migration_story(Layout::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_end_to_end_on_a_three_member_etcd() {
    migration_story(Layout::EtcdCluster).await;
}

async fn migration_story(layout: Layout) {
    println!("store: {layout:?}");
    let seed = common::seed("MIGRATION_E2E_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    // Declared before the rack, so dropped after it: the store outlives its users.
    let etcd = layout.start_etcd().await;
    let mut rack = start_rack(etcd.as_ref()).await;
    tokio::time::timeout(MIGRATION_STORY_BOUND, async {
        refused_drain(&mut rack, &mut rng).await;
        drain_with_checker(&mut rack, &mut rng).await;
        target_agent_killed_mid_transfer(&mut rack, &mut rng).await;
        cancel_mid_transfer(&mut rack, &mut rng).await;
        controllers_crash_at_each_phase(&mut rack).await;
    })
    .await
    .unwrap_or_else(|_| panic!("the story ran longer than {MIGRATION_STORY_BOUND:?}"));
    rack.print_summary().await;
}

fn corralctl() -> PathBuf {
    let path = common::corral().with_file_name("corralctl");
    assert!(
        path.exists(),
        "{} is missing: the workspace test command builds it (cargo nextest run --workspace)",
        path.display()
    );
    path
}

/// Runs corralctl with the rack's kubeconfig; (exit code, stdout, stderr).
async fn run_corralctl(rack: &Rack, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(corralctl())
        .args(args)
        .env("KUBECONFIG", rack.kubeconfig())
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(CONVERGE_MANY, output)
        .await
        .unwrap_or_else(|_| panic!("corralctl {args:?} ran longer than {CONVERGE_MANY:?}"))
        .expect("running corralctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn nic(index: usize) -> Nic {
    Nic {
        name: "eth0".into(),
        vpc: VPC.into(),
        ip: format!("10.9.{}.{}", index / 256, index % 256),
    }
}

/// Creates Instances (1 CPU, `memory_mib`, a NIC in [`VPC`], live-migrated on drains).
async fn create(rack: &Rack, names: &[String], first_ip: usize, memory_mib: u64) {
    for (offset, name) in names.iter().enumerate() {
        let instance = Instance::new(
            name,
            InstanceSpec {
                cpus: 1,
                memory_mib,
                image: "debian-12".into(),
                nics: vec![nic(first_ip + offset)],
                eviction_strategy: EvictionStrategy::LiveMigrate,
                ..Default::default()
            },
        );
        instance_api(rack)
            .create(&PostParams::default(), &instance)
            .await
            .unwrap_or_else(|error| panic!("creating {name}: {error}"));
    }
}

async fn instance(rack: &Rack, name: &str) -> Instance {
    instance_api(rack)
        .get(name)
        .await
        .unwrap_or_else(|error| panic!("reading {name}: {error}"))
}

/// Ok when every Instance of `names` runs, on a sled other than `not_on`.
async fn running_elsewhere(rack: &Rack, names: &[String], not_on: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    for name in names {
        let instance = instance_api(rack)
            .get(name)
            .await
            .map_err(|error| format!("reading {name}: {error}"))?;
        let status = instance.status.clone().unwrap_or_default();
        if status.state != Some(InstanceState::Running) || status.sled.as_deref() == Some(not_on) {
            problems.push(describe(&instance));
        }
    }
    summarize(problems)
}

async fn migration_phase(rack: &Rack, name: &str) -> Result<Migration, String> {
    Api::<Migration>::namespaced(rack.client().clone(), NAMESPACE)
        .get(name)
        .await
        .map_err(|error| format!("reading migration {name}: {error}"))
}

/// Waits until Migration `name` is in one of `phases`.
async fn wait_phase(
    rack: &Rack,
    name: &str,
    phases: &[MigrationPhase],
    bound: Duration,
) -> Migration {
    rack.wait_for(
        &format!("migration {name} in {phases:?}"),
        bound,
        async || {
            let migration = migration_phase(rack, name).await?;
            let phase = migration.status.as_ref().and_then(|s| s.phase);
            match phase {
                Some(phase) if phases.contains(&phase) => Ok(migration),
                Some(phase) if phase.is_final() => Err(format!(
                    "ended {phase} instead: {}",
                    migration
                        .status
                        .as_ref()
                        .map(|s| s.message.clone())
                        .unwrap_or_default()
                )),
                other => Err(format!("phase {other:?}")),
            }
        },
    )
    .await
    .0
}

async fn create_migration(rack: &Rack, name: &str, instance: &str, target: Option<&str>) {
    let migration = Migration::new(
        name,
        MigrationSpec {
            instance: instance.into(),
            target_sled: target.map(String::from),
            ..Default::default()
        },
    );
    Api::<Migration>::namespaced(rack.client().clone(), NAMESPACE)
        .create(&PostParams::default(), &migration)
        .await
        .unwrap_or_else(|error| panic!("creating migration {name}: {error}"));
}

/// Moves every instance of `names` that does not run on `sled` there, and waits until all of
/// them run there. The cordons that steer new instances onto one sled reach the scheduler on
/// another watch than the Instances do, so one created right after them may still be placed
/// elsewhere: it is moved, as an operator would.
async fn gather_on(rack: &Rack, sled: &str, names: &[String]) {
    let mut strays = Vec::new();
    for name in names {
        let instance = instance(rack, name).await;
        if instance.status.as_ref().and_then(|s| s.sled.as_deref()) != Some(sled) {
            strays.push(name.clone());
        }
    }
    if !strays.is_empty() {
        println!("placed elsewhere despite the cordons, moved to {sled}: {strays:?}");
    }
    for name in &strays {
        create_migration(rack, &format!("gather-{name}"), name, Some(sled)).await;
    }
    for name in &strays {
        wait_phase(
            rack,
            &format!("gather-{name}"),
            &[MigrationPhase::Succeeded],
            CONVERGE_MANY,
        )
        .await;
    }
    rack.wait_for(
        &format!("{} instances Running on {sled}", names.len()),
        CONVERGE_MANY,
        async || {
            all_running(rack, names.len()).await?;
            let on = vmm_names_on(rack, sled).await.len();
            (on == names.len())
                .then_some(())
                .ok_or(format!("{on} Vmms on {sled}"))
        },
    )
    .await;
}

/// The sled VpcRoutes maps `ip` to, if any.
async fn mapped_to(rack: &Rack, ip: &str) -> Option<String> {
    let routes = Api::<VpcRoutes>::all(rack.client().clone())
        .get_opt(VPC)
        .await
        .ok()??;
    routes
        .spec
        .mappings
        .iter()
        .find(|m| m.ip == ip)
        .map(|m| m.sled.clone())
}

/// (d) A drain that cannot fit is refused, naming what does not fit where.
async fn refused_drain(rack: &mut Rack, rng: &mut StdRng) {
    let started = Instant::now();
    // One 100-CPU instance per sled: none fits beside another.
    let bigs: Vec<String> = (1..=SLEDS).map(|i| format!("big-{i}")).collect();
    for name in &bigs {
        let instance = Instance::new(
            name,
            InstanceSpec {
                cpus: 100,
                memory_mib: 1024,
                image: "debian-12".into(),
                ..Default::default()
            },
        );
        instance_api(rack)
            .create(&PostParams::default(), &instance)
            .await
            .expect("creating a big instance");
    }
    rack.wait_for("the big instances Running", CONVERGE_FEW, async || {
        all_running(rack, SLEDS).await
    })
    .await;
    let sled = sled_name(rng.random_range(1..=SLEDS));
    let (code, stdout, stderr) = run_corralctl(rack, &["drain", &sled]).await;
    rack.fault(format!("corralctl drain {sled} (it cannot fit)"));
    let said = format!("{stdout}{stderr}");
    assert_ne!(code, 0, "a drain that cannot fit must fail:\n{said}");
    let on_sled = list_instances(rack)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.status.as_ref().and_then(|s| s.sled.as_deref()) == Some(sled.as_str()))
        .expect("a big instance on the sled")
        .name_any();
    assert!(
        said.contains(&on_sled),
        "the refusal names {on_sled}:\n{said}"
    );
    assert!(
        said.contains("100"),
        "the refusal says what does not fit:\n{said}"
    );
    let drains = Api::<Drain>::all(rack.client().clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let drain = drains
        .items
        .iter()
        .find(|d| d.spec.sled == sled)
        .expect("the Drain");
    assert_eq!(
        drain.status.as_ref().and_then(|s| s.phase),
        Some(DrainPhase::Refused)
    );
    let migrations = Api::<Migration>::all(rack.client().clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(migrations.items.is_empty(), "a refused drain moves nothing");
    println!("refused: {}", said.trim());
    let (code, _, stderr) = run_corralctl(rack, &["uncordon", &sled]).await;
    assert_eq!(code, 0, "uncordon: {stderr}");
    for name in &bigs {
        instance_api(rack)
            .delete(name, &DeleteParams::default())
            .await
            .expect("deleting a big instance");
    }
    rack.wait_for("the big instances gone", CONVERGE_FEW, async || {
        gone_with_their_vmms(rack, &bigs).await
    })
    .await;
    rack.record("d. a drain that does not fit is refused", started.elapsed());
}

/// (a) Drain a sled of 50 instances while the checker runs.
async fn drain_with_checker(rack: &mut Rack, rng: &mut StdRng) {
    let drained = sled_name(rng.random_range(1..=SLEDS));
    // Every instance on the drained sled: the others are cordoned while they are placed.
    let others: Vec<String> = (1..=SLEDS)
        .map(sled_name)
        .filter(|s| *s != drained)
        .collect();
    for sled in &others {
        set_unschedulable(rack, sled, true).await;
    }
    let names: Vec<String> = (0..DRAINED_INSTANCES)
        .map(|i| format!("drain-{i:02}"))
        .collect();
    create(rack, &names, 0, INSTANCE_MEMORY_MIB).await;
    rack.wait_for("50 instances Running", CONVERGE_MANY, async || {
        all_running(rack, DRAINED_INSTANCES).await
    })
    .await;
    gather_on(rack, &drained, &names).await;
    for sled in &others {
        set_unschedulable(rack, sled, false).await;
    }

    let checker = connectivity::start(
        rack.client().clone(),
        fault_http(rack),
        connectivity::DEFAULT_INTERVAL,
    );
    let started = Instant::now();
    rack.fault(format!(
        "corralctl drain {drained} ({DRAINED_INSTANCES} instances)"
    ));
    let kubeconfig = rack.kubeconfig();
    let drain = tokio::process::Command::new(corralctl())
        .args(["drain", &drained])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .output();
    let mut drain = std::pin::pin!(tokio::time::timeout(CONVERGE_MANY * 2, drain));
    let mut seen_progress = Vec::new();
    let output = loop {
        tokio::select! {
            output = &mut drain => break output,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                // Every drain of the sled (an earlier, refused one may be listed too).
                let (_, stdout, _) = run_corralctl(rack, &["get", "drains"]).await;
                seen_progress.extend(
                    stdout.lines().filter(|l| l.contains(&drained)).map(String::from),
                );
            }
        }
    };
    let output = output
        .expect("corralctl drain finished within its bound")
        .expect("running corralctl drain");
    let took = started.elapsed();
    let report = checker.stop().await;
    println!("corralctl get drains on the way:");
    for line in &seen_progress {
        println!("  {line}");
    }
    print!("{report}");
    assert!(
        output.status.success(),
        "corralctl drain failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let partial = seen_progress.iter().any(|line| {
        line.split_whitespace().any(|word| {
            word.split_once('/').is_some_and(|(moved, total)| {
                total == DRAINED_INSTANCES.to_string()
                    && moved
                        .parse::<usize>()
                        .is_ok_and(|m| m > 0 && m < DRAINED_INSTANCES)
            })
        })
    });
    assert!(
        partial,
        "corralctl get drains never showed progress on the way: {seen_progress:?}"
    );
    assert!(
        report.double_runs.is_empty(),
        "a guest ran twice:\n{report}"
    );
    assert!(
        report.checks > 0 && report.rounds > 10,
        "the checker checked:\n{report}"
    );
    // The guest's pause as the machines showed it: the longest stretch a guest ran nowhere.
    let pause = report.longest_pause;
    let bound = pause + BEYOND_THE_PAUSE;
    println!(
        "longest guest pause {pause:?}, longest wrong mapping {:?} (bound {bound:?})",
        report.longest().map(|e| e.lasted)
    );
    let long = report.longer_than(bound);
    assert!(
        long.is_empty(),
        "mappings wrong longer than the pause plus {BEYOND_THE_PAUSE:?} ({bound:?}): {long:?}"
    );
    rack.wait_for(
        "every drained instance on another sled",
        CONVERGE_FEW,
        async || running_elsewhere(rack, &names, &drained).await,
    )
    .await;
    rack.wait_for("the machines to match the API", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    let sled = list_sleds(rack).await.unwrap();
    let left = sled
        .iter()
        .find(|s| s.name_any() == drained)
        .and_then(|s| s.status.as_ref())
        .map(|s| s.vmms);
    assert_eq!(left, Some(0), "the drained sled's agent reports no VMM");
    let (code, _, stderr) = run_corralctl(rack, &["uncordon", &drained]).await;
    assert_eq!(code, 0, "uncordon: {stderr}");
    rack.record(
        &format!(
            "a. drain of {DRAINED_INSTANCES} instances (longest wrong mapping {:?})",
            report.longest().map(|e| e.lasted)
        ),
        took,
    );
}

/// An instance big enough that its transfer lasts seconds, running; (name, sled, ip).
async fn big_mover(rack: &Rack, name: &str, ip_index: usize) -> (String, String, String) {
    create(rack, &[name.to_string()], ip_index, 8 * 1024).await;
    rack.wait_for(&format!("{name} Running"), CONVERGE_FEW, async || {
        instance_in_state(rack, name, InstanceState::Running).await
    })
    .await;
    let sled = instance(rack, name).await.status.unwrap().sled.unwrap();
    (name.to_string(), sled, nic(ip_index).ip)
}

/// After a failed or cancelled migration: the source kept running, nothing moved.
async fn nothing_moved(rack: &Rack, name: &str, source: &str, ip: &str, generation: u64) {
    let status = instance(rack, name).await.status.unwrap();
    assert_eq!(
        status.sled.as_deref(),
        Some(source),
        "{name} stayed on {source}"
    );
    assert_eq!(
        status.location_generation, generation,
        "{name} never switched"
    );
    assert_eq!(
        mapped_to(rack, ip).await.as_deref(),
        Some(source),
        "V2P unchanged"
    );
    // The source's machine (the target's agent may be down).
    let agent = rack
        .agents
        .iter()
        .find(|a| a.sled == source)
        .expect("the source agent");
    let listed = machine(rack, agent).await.expect("the source machine");
    let states: Vec<&str> = listed
        .iter()
        .filter(|vmm| vmm.launch.instance == name)
        .map(|vmm| vmm.state.as_str())
        .collect();
    assert_eq!(
        states,
        ["Running"],
        "{name} still runs on {source}, never paused"
    );
}

/// (b) The target agent dies mid-transfer.
async fn target_agent_killed_mid_transfer(rack: &mut Rack, rng: &mut StdRng) {
    let (name, source, ip) = big_mover(rack, "mover", 200).await;
    let generation = instance(rack, &name)
        .await
        .status
        .unwrap()
        .location_generation;
    let target_index = loop {
        let index = rng.random_range(0..SLEDS);
        if sled_name(index + 1) != source {
            break index;
        }
    };
    let target = sled_name(target_index + 1);
    let started = Instant::now();
    create_migration(rack, "killed-target", &name, Some(&target)).await;
    wait_phase(
        rack,
        "killed-target",
        &[MigrationPhase::Transferring],
        CONVERGE_FEW,
    )
    .await;
    let killed = rack.kill9(Victim::Agent(target_index));
    rack.fault(format!(
        "kill -9 {killed}, the target of {name}, mid-transfer"
    ));
    let failed = wait_phase(
        rack,
        "killed-target",
        &[MigrationPhase::Failed],
        CONVERGE_FEW,
    )
    .await;
    let status = failed.status.unwrap();
    println!("failed: {:?} {}", status.reason, status.message);
    assert!(status.reason.is_some() && !status.message.is_empty());
    nothing_moved(rack, &name, &source, &ip, generation).await;
    rack.restart_agent(target_index)
        .expect("restarting the node-agent");
    rack.fault(format!("restart node-agent {target}"));
    let target_vmm = status.target_vmm.clone();
    rack.wait_for("the target reaped", CONVERGE_FEW, async || {
        let on_target = vmm_names_on(rack, &target).await;
        match &target_vmm {
            Some(vmm) if on_target.contains(vmm) => Err(format!("{vmm} still on {target}")),
            _ => check_rack(rack).await,
        }
    })
    .await;
    rack.record(
        "b. target agent killed mid-transfer: Failed, source untouched",
        started.elapsed(),
    );
}

/// (b) A cancel mid-transfer.
async fn cancel_mid_transfer(rack: &mut Rack, _rng: &mut StdRng) {
    let name = "mover";
    let status = instance(rack, name).await.status.unwrap();
    let (source, generation) = (status.sled.unwrap(), status.location_generation);
    let ip = nic(200).ip;
    let started = Instant::now();
    create_migration(rack, "cancelled", name, None).await;
    wait_phase(
        rack,
        "cancelled",
        &[MigrationPhase::Transferring],
        CONVERGE_FEW,
    )
    .await;
    let patch = json!({"spec": {"cancel": true}});
    Api::<Migration>::namespaced(rack.client().clone(), NAMESPACE)
        .patch("cancelled", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("cancelling");
    rack.fault("cancel migration cancelled mid-transfer");
    let cancelled = wait_phase(
        rack,
        "cancelled",
        &[MigrationPhase::Cancelled],
        CONVERGE_FEW,
    )
    .await;
    println!("cancelled: {}", cancelled.status.as_ref().unwrap().message);
    nothing_moved(rack, name, &source, &ip, generation).await;
    rack.wait_for("the target reaped", CONVERGE_FEW, async || {
        check_rack(rack).await
    })
    .await;
    rack.record(
        "b. cancel mid-transfer: Cancelled, source untouched",
        started.elapsed(),
    );
}

/// (c) The controllers crash right after writing each phase.
async fn controllers_crash_at_each_phase(rack: &mut Rack) {
    create(rack, &["hopper".to_string()], 300, 2048).await;
    rack.wait_for("hopper Running", CONVERGE_FEW, async || {
        instance_in_state(rack, "hopper", InstanceState::Running).await
    })
    .await;
    let checker = connectivity::start(
        rack.client().clone(),
        fault_http(rack),
        connectivity::DEFAULT_INTERVAL,
    );
    for phase in [
        MigrationPhase::Scheduling,
        MigrationPhase::TargetStarting,
        MigrationPhase::Transferring,
        MigrationPhase::Switching,
    ] {
        let started = Instant::now();
        let crash = ["--crash-at".to_string(), format!("migration/{phase}")];
        for index in 0..rack.controllers.len() {
            rack.start_controllers(index, &crash)
                .expect("starting controllers");
        }
        rack.fault(format!(
            "both controllers restarted to crash after writing {phase}"
        ));
        rack.wait_for("a leader", CONVERGE_FEW, async || rack.leader_index().await)
            .await;
        let name = format!("crash-at-{}", phase.as_str().to_lowercase());
        create_migration(rack, &name, "hopper", None).await;
        let done = wait_phase(
            rack,
            &name,
            &[
                MigrationPhase::Succeeded,
                MigrationPhase::Failed,
                MigrationPhase::Cancelled,
            ],
            CONVERGE_MANY,
        )
        .await;
        let crashed = rack
            .controllers
            .iter_mut()
            .filter_map(|p| {
                p.exit_status()
                    .map(|status| format!("{} {status}", p.name()))
            })
            .collect::<Vec<_>>();
        rack.fault(format!(
            "{name} ended {:?}; crashed: {crashed:?}",
            done.status.as_ref().and_then(|s| s.phase)
        ));
        rack.wait_for("hopper runs exactly once", CONVERGE_FEW, async || {
            instance_in_state(rack, "hopper", InstanceState::Running).await?;
            check_rack(rack).await
        })
        .await;
        rack.record(
            &format!("c. controllers crashed at {phase}"),
            started.elapsed(),
        );
    }
    let report = checker.stop().await;
    print!("{report}");
    assert!(
        report.double_runs.is_empty(),
        "a guest ran twice:\n{report}"
    );
    for index in 0..rack.controllers.len() {
        rack.start_controllers(index, &[])
            .expect("starting controllers");
    }
}
