//! `corral chaos`: randomized fault schedules on a real rack, and the invariants checked during
//! and after each.
//!
//! The command starts a rack as processes of this very binary (`corral apiserver` on SQLite,
//! two `corral controllers`, `--sleds` `corral node-agent`s, each with its fault API and its
//! power controller), runs `--instances` `Always` Instances, then plays `--schedules` fault
//! schedules one after another ([`schedule`]): agent kills, power losses, partitions, hangs,
//! silent power controllers, a kill of the leading controllers or of the API server, each
//! repaired before or well after the sled-health grace. After each schedule everything left
//! broken is repaired (every sled powered on, every process running) and the rack must converge.
//!
//! # The invariants ([`invariants`])
//! - **During**: no instance is ever live on two machines at once, per the machines' own files
//!   (read every 100 ms, even while an agent is down or hung).
//! - **After**: within a bound, every instance is `Running` on exactly one machine, the one its
//!   status names; no machine runs a guest no instance names (nothing leaked); every sled's
//!   `status.allocated` is what the instances on it hold (no leaked capacity); every sled is
//!   `Healthy`; every sled's V2P table maps every instance IP to the sled it runs on.
//!
//! A violation prints the schedule (with its replay command) and what broke. The last line is
//! exactly `chaos: N schedules, V violations`; the exit status is non-zero when V > 0.
//!
//! # Guarantees
//! - No child process outlives the command (`corral_harness::process`); every wait is bounded.
//! - A schedule is a pure function of `(seed, index)`: `--seed S --only I` replays it.

mod invariants;
mod schedule;

use std::time::Duration;

use anyhow::Context;
use corral_crds::{Instance, InstanceSpec, Nic};
use corral_harness::{Rack, RackSpec, Scratch, Store, Victim};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use crate::command::parse_duration;
use corral_node_agent::sim::census::Census;
use invariants::Converged;
use schedule::{Action, Fault, Limits, Schedule};

/// How long a process may take to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the census reads every machine.
const CENSUS_EVERY: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// The seed of every schedule (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How many schedules to run.
    #[arg(long, default_value_t = 10)]
    schedules: u64,
    /// Run only this schedule of the seed (a replay).
    #[arg(long)]
    only: Option<u64>,
    /// Simulated sleds, each its own `corral node-agent` process.
    #[arg(long, default_value_t = 6)]
    sleds: usize,
    /// `Always` Instances (1 CPU, 256 MiB, one NIC each).
    #[arg(long, default_value_t = 24)]
    instances: usize,
    /// The most faults in one schedule.
    #[arg(long, default_value_t = 3)]
    faults: usize,
    /// The controllers' `--sled-grace`.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    grace: Duration,
    /// How long the rack has to converge after a schedule.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    converge: Duration,
    /// Keep the scratch directory (store, sleds, every log) and print its path.
    #[arg(long)]
    keep: bool,
}

pub async fn chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let indexes: Vec<u64> = match args.only {
        Some(index) => vec![index],
        None => (0..args.schedules).collect(),
    };
    println!(
        "corral chaos: seed {seed}, {} schedules, {} sleds, {} instances, grace {} s",
        indexes.len(),
        args.sleds,
        args.instances,
        args.grace.as_secs_f64()
    );
    let scratch = Scratch::temporary("corral-chaos-")?;
    if args.keep {
        println!("keeping {}", scratch.path().display());
    }
    let mut rack = start_rack(&args, scratch).await?;
    let run = tokio::select! {
        run = run(&args, seed, &indexes, &mut rack) => run,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if run.is_err() {
        rack.print_log_tails(20);
    }
    rack.stop(STOP_GRACE).await;
    if args.keep {
        rack.keep();
    }
    let violations = run?;
    println!(
        "chaos: {} schedules, {violations} violations",
        indexes.len()
    );
    if violations > 0 {
        anyhow::bail!("{violations} violations");
    }
    Ok(())
}

async fn start_rack(args: &ChaosArgs, scratch: Scratch) -> anyhow::Result<Rack> {
    let spec = RackSpec {
        log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ..RackSpec::for_failures(
            std::env::current_exe().context("finding this executable")?,
            Store::Sqlite(scratch.path().join("store.db")),
            args.sleds,
            args.grace,
            corral_controllers::LEADER_LEASE,
        )
    };
    let mut rack = Rack::new(spec, scratch)?;
    rack.start(Duration::from_secs(60)).await?;
    let instances: Api<Instance> = Api::namespaced(rack.client().clone(), "default");
    for index in 0..args.instances {
        let instance = Instance::new(
            &format!("chaos-{index:03}"),
            InstanceSpec {
                cpus: 1,
                memory_mib: 256,
                image: "debian".into(),
                nics: vec![Nic {
                    name: "eth0".into(),
                    vpc: "chaos".into(),
                    ip: format!("10.9.{}.{}", index / 200, index % 200 + 10),
                }],
                ..Default::default()
            },
        );
        instances
            .create(&PostParams::default(), &instance)
            .await
            .with_context(|| format!("creating instance {index}"))?;
    }
    Converged::wait(&mut rack, args.instances, args.converge)
        .await
        .map_err(|why| anyhow::anyhow!("the rack did not converge before any fault: {why}"))?;
    Ok(rack)
}

/// Plays every schedule; the number of violations.
async fn run(
    args: &ChaosArgs,
    seed: u64,
    indexes: &[u64],
    rack: &mut Rack,
) -> anyhow::Result<usize> {
    let limits = Limits {
        sleds: args.sleds,
        faults: args.faults,
        grace: args.grace,
    };
    let machines = rack
        .agents
        .iter()
        .map(|agent| (agent.sled.clone(), agent.data_dir.clone()))
        .collect();
    let census = Census::start(machines, CENSUS_EVERY);
    let mut violations = 0;
    for &index in indexes {
        let schedule = Schedule::draw(seed, index, limits);
        census.take();
        let started = Instant::now();
        let broken = play(&schedule, rack).await;
        let mut found: Vec<String> = Vec::new();
        // Whatever the schedule left broken is repaired before the rack is judged.
        if let Err(why) = repair_everything(rack, &broken).await {
            found.push(format!("repairing: {why}"));
        }
        let converged = Converged::wait(rack, args.instances, args.converge).await;
        if let Err(why) = &converged {
            found.push(format!(
                "did not converge within {:?}: {why}",
                args.converge
            ));
        }
        found.extend(census.take());
        if found.is_empty() {
            println!(
                "schedule {index}: ok ({} faults, converged {:.1} s after the start)",
                broken.injected.len(),
                started.elapsed().as_secs_f64()
            );
        } else {
            violations += found.len();
            println!("VIOLATION in {schedule}");
            for what in &found {
                println!("  - {what}");
            }
        }
    }
    Ok(violations)
}

/// What a schedule did, for the repairs after it.
#[derive(Default)]
struct Broken {
    injected: Vec<Fault>,
    /// Faults whose injection or repair failed, and why (printed, not violations: a fault on a
    /// sled that is off, say).
    notes: Vec<String>,
}

/// Plays `schedule` in time.
async fn play(schedule: &Schedule, rack: &mut Rack) -> Broken {
    println!("{schedule}");
    let start = Instant::now();
    let mut broken = Broken::default();
    for step in &schedule.steps {
        tokio::time::sleep_until(start + step.at).await;
        let done = match step.action {
            Action::Inject(fault) => {
                broken.injected.push(fault);
                inject(rack, fault).await
            }
            Action::Repair(fault) => repair(rack, fault).await,
        };
        if let Err(why) = done {
            broken.notes.push(format!("{step}: {why}"));
        }
    }
    for note in &broken.notes {
        println!("  note: {note}");
    }
    broken
}

async fn inject(rack: &mut Rack, fault: Fault) -> Result<(), String> {
    let name = |sled: usize| corral_harness::rack::sled_name(sled + 1);
    match fault {
        Fault::AgentKill(sled) => {
            let killed = rack.kill9(Victim::Agent(sled));
            rack.fault(format!("kill -9 {killed}"));
            Ok(())
        }
        Fault::PowerOff(sled) => rack.power_off(&name(sled)).await,
        Fault::Partition(sled) => rack.partition(&name(sled)).await,
        Fault::Hang(sled) => rack.hang(&name(sled)).await,
        Fault::PowerControllerSilent(sled) => rack.power_controller_unresponsive(&name(sled)).await,
        Fault::LeaderKill => {
            let leader = rack.leader_index().await?;
            let killed = rack.kill9(Victim::Controllers(leader));
            rack.fault(format!("kill -9 {killed}"));
            Ok(())
        }
        Fault::ApiserverKill => {
            let killed = rack.kill9(Victim::Apiserver);
            rack.fault(format!("kill -9 {killed}"));
            Ok(())
        }
    }
}

async fn repair(rack: &mut Rack, fault: Fault) -> Result<(), String> {
    let name = |sled: usize| corral_harness::rack::sled_name(sled + 1);
    match fault {
        Fault::AgentKill(sled) => restart_dead_agent(rack, sled),
        // A sled that lost power (or was powered off to fence it) is powered on.
        Fault::PowerOff(sled) => rack.power_on(&name(sled)).await,
        Fault::Partition(sled) => rack.heal(&name(sled)).await,
        Fault::Hang(sled) => rack.resume(&name(sled)).await,
        Fault::PowerControllerSilent(sled) => rack.power_controller_answers(&name(sled)).await,
        Fault::LeaderKill => restart_dead_controllers(rack),
        Fault::ApiserverKill => rack
            .restart_apiserver()
            .await
            .map_err(|error| format!("{error:#}")),
    }
}

/// After a schedule: every process runs, and every sled a fault touched answers, is not cut
/// off, does not hang and is powered on (a sled fenced later is powered on while the rack
/// converges).
async fn repair_everything(rack: &mut Rack, broken: &Broken) -> Result<(), String> {
    if broken.injected.contains(&Fault::ApiserverKill) && rack.apiserver().pid().is_none() {
        rack.restart_apiserver()
            .await
            .map_err(|error| format!("{error:#}"))?;
    }
    restart_dead_controllers(rack)?;
    for sled in 0..rack.agents.len() {
        restart_dead_agent(rack, sled)?;
    }
    let names = rack.sled_names();
    for fault in &broken.injected {
        let Some(sled) = fault.sled() else { continue };
        let name = &names[sled];
        // Idempotent: each is a no-op on a sled that does not need it.
        let _ = rack.power_controller_answers(name).await;
        let _ = rack.resume(name).await;
        if rack.power_reads(name).await.as_deref() == Ok("Off") {
            rack.power_on(name).await?;
        }
        let _ = rack.heal(name).await;
    }
    Ok(())
}

fn restart_dead_agent(rack: &mut Rack, sled: usize) -> Result<(), String> {
    if rack.agents[sled].process.check_alive().is_err() || rack.agents[sled].process.pid().is_none()
    {
        rack.restart_agent(sled)
            .map_err(|error| format!("{error:#}"))?;
        rack.fault(format!("restart the agent of {}", rack.agents[sled].sled));
    }
    Ok(())
}

fn restart_dead_controllers(rack: &mut Rack) -> Result<(), String> {
    for index in 0..rack.controllers.len() {
        if rack.controllers[index].check_alive().is_err() || rack.controllers[index].pid().is_none()
        {
            rack.start_controllers(index, &[])
                .map_err(|error| format!("{error:#}"))?;
            rack.fault(format!("restart controllers {index}"));
        }
    }
    Ok(())
}
