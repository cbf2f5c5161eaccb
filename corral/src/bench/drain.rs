//! `corral bench drain`: how close a drain of a loaded sled comes to the time its live-migration
//! transfers alone need.
//!
//! The benchmark starts a rack as real processes (`Session::start_rack`), puts `--instances`
//! Instances of `--memory-gib` on one sled (the others cordoned while they are placed), then
//! drains that sled with `--max-parallel` moves at once and times it until the Drain is
//! `Completed` (the sled's agent reports no VMM left).
//!
//! The modelled transfer time is what the bytes alone need: every byte the drain's Migrations
//! sent (all pre-copy rounds), over the drained sled's migration link, which all its outgoing
//! transfers share. Everything else the control plane does — admission, placing and starting
//! targets, the switches, tearing sources down — is the difference. The last line is exactly
//! `drain wall/modelled: X.XX`.
//!
//! # Guarantees
//! - No child process outlives the benchmark; every wait is bounded by `--timeout`.

use std::time::Duration;

use anyhow::Context;
use corral_crds::{
    DRAIN_LABEL, Drain, DrainPhase, DrainSpec, EvictionStrategy, Instance, InstanceSpec, Migration,
    MigrationPhase, Nic, Sled,
};
use corral_harness::wait::Unmet;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::time::Instant;

use super::measure::{CpuSample, percentile};
use super::session::{RackOptions, Session};
use crate::command::parse_duration;

/// The drained sled.
const DRAINED: &str = "sled-1";
/// The benchmark's VPC.
const VPC: &str = "bench";
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct DrainArgs {
    /// `sqlite:PATH`, `etcd:URL[,URL...]`, or `etcd:local` (default: a fresh SQLite file).
    #[arg(long)]
    store: Option<String>,
    /// Simulated sleds (128 CPUs and 1 TiB each); `sled-1` is drained.
    #[arg(long, default_value_t = 8)]
    sleds: usize,
    /// Instances on the drained sled.
    #[arg(long, default_value_t = 100)]
    instances: usize,
    /// Memory of each Instance, in GiB.
    #[arg(long, default_value_t = 4)]
    memory_gib: u64,
    /// Moves at once (`Drain.spec.maxParallel`).
    #[arg(long, default_value_t = 4)]
    max_parallel: u32,
    /// Give up when the run takes longer than this.
    #[arg(long, default_value = "1200s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the scratch directory (store, sleds, logs of every process) and print its path.
    #[arg(long)]
    keep: bool,
}

pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let mut session =
        Session::start("drain", args.store.as_deref(), args.timeout, args.keep).await?;
    let last_line = session.run(async |session| run(&args, session).await).await;
    session.end();
    println!("{}", last_line?);
    Ok(())
}

async fn run(args: &DrainArgs, session: &mut Session) -> anyhow::Result<String> {
    println!(
        "corral bench drain: store {}, {} sleds, {} instances of {} GiB on {DRAINED}, maxParallel {}",
        session.store.config, args.sleds, args.instances, args.memory_gib, args.max_parallel
    );
    let client = session
        .start_rack(args.sleds, RackOptions::default())
        .await?;
    let sleds: Api<Sled> = Api::all(client.clone());
    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");

    // Every instance on the drained sled: the others are cordoned while they are placed.
    let others: Vec<String> = (2..=args.sleds).map(|i| format!("sled-{i}")).collect();
    cordon(&sleds, &others, true).await?;
    for index in 1..=args.instances {
        let instance = Instance {
            metadata: ObjectMeta {
                name: Some(format!("drain-{index:04}")),
                ..Default::default()
            },
            spec: InstanceSpec {
                cpus: 1,
                memory_mib: args.memory_gib * 1024,
                image: "debian".into(),
                nics: vec![Nic {
                    name: "eth0".into(),
                    vpc: VPC.into(),
                    ip: format!("10.1.{}.{}", index / 256, index % 256),
                }],
                eviction_strategy: EvictionStrategy::LiveMigrate,
                ..Default::default()
            },
            status: None,
        };
        instances
            .create(&PostParams::default(), &instance)
            .await
            .with_context(|| format!("creating instance {index}"))?;
    }
    let placed = Instant::now();
    session
        .wait_until_running(&instances, args.instances, Some(DRAINED))
        .await?;
    cordon(&sleds, &others, false).await?;
    println!(
        "{} instances Running on {DRAINED} after {:.1} s",
        args.instances,
        placed.elapsed().as_secs_f64()
    );
    let bandwidth = sleds
        .get(DRAINED)
        .await?
        .status
        .map(|s| s.migration_bandwidth)
        .filter(|b| *b > 0)
        .context("the drained sled reports no migration bandwidth")?;

    // The clock starts with the Drain.
    let pids = session.pids();
    let cpu_before = CpuSample::take(&pids);
    let drains: Api<Drain> = Api::all(client.clone());
    let name = "bench-drain";
    let drain = Drain {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: DrainSpec {
            sled: DRAINED.into(),
            deadline: None,
            max_parallel: args.max_parallel,
            force: false,
            cancel: false,
        },
        status: None,
    };
    let start = Instant::now();
    drains.create(&PostParams::default(), &drain).await?;
    let mut next_progress = start + PROGRESS_EVERY;
    let finished = session
        .wait_for(
            "the drain Completed",
            Duration::from_millis(100),
            async || {
                let drain = drains
                    .get(name)
                    .await
                    .map_err(|error| format!("reading the drain: {error}"))?;
                let status = drain.status.clone().unwrap_or_default();
                if let Some(phase) = status.phase.filter(|p| p.is_final()) {
                    if phase != DrainPhase::Completed {
                        return Err(Unmet::Never(format!(
                            "the drain ended {phase}: {}",
                            status.message
                        )));
                    }
                    return Ok(start.elapsed());
                }
                if Instant::now() >= next_progress {
                    println!(
                        "  {:>5.1} s: {} moved, {} moving, {} VMMs left, ETA {} s",
                        start.elapsed().as_secs_f64(),
                        status.progress,
                        status.moving,
                        status.vmms_left,
                        status.eta_seconds.map_or("?".into(), |e| e.to_string())
                    );
                    next_progress += PROGRESS_EVERY;
                }
                Err(Unmet::Yet(format!("{} moved", status.progress)))
            },
        )
        .await?;
    let cpu = CpuSample::take(&pids).minus(cpu_before);

    let migrations: Api<Migration> = Api::namespaced(client.clone(), "default");
    let moved = migrations
        .list(&ListParams::default().labels(&format!("{DRAIN_LABEL}={name}")))
        .await?;
    let mut bytes = 0u64;
    let mut succeeded = 0;
    let mut durations = Vec::new();
    for migration in &moved.items {
        let Some(status) = &migration.status else {
            continue;
        };
        if status.phase == Some(MigrationPhase::Succeeded) {
            succeeded += 1;
        }
        if let Some(progress) = &status.progress {
            bytes += progress.bytes_sent;
        }
        if let (Some(from), Some(to)) = (&status.started_at, &status.finished_at) {
            let took = to.0.duration_since(from.0).as_secs_f64();
            durations.push(took);
        }
    }
    durations.sort_by(f64::total_cmp);
    let modelled = bytes as f64 / bandwidth as f64;
    let wall = finished.as_secs_f64();
    println!(
        "drained {DRAINED}: {succeeded} migrations succeeded of {} created",
        moved.items.len()
    );
    println!(
        "bytes sent: {:.1} GiB over a {:.1} Gbit/s link (memory {:.1} GiB)",
        bytes as f64 / (1u64 << 30) as f64,
        bandwidth as f64 * 8.0 / 1e9,
        (args.instances as u64 * args.memory_gib) as f64
    );
    println!(
        "per migration (admitted to done): p50 {:.1} s, p99 {:.1} s",
        percentile(&durations, 0.5),
        percentile(&durations, 0.99)
    );
    println!(
        "CPU seconds during the drain: {}",
        cpu.describe(session.store.has_etcd())
    );
    println!("wall {wall:.1} s, modelled transfers {modelled:.1} s");
    Ok(format!("drain wall/modelled: {:.2}", wall / modelled))
}

/// Sets `spec.unschedulable` of `names`.
async fn cordon(sleds: &Api<Sled>, names: &[String], cordoned: bool) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"unschedulable": cordoned}});
    for name in names {
        sleds
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("cordoning {name}"))?;
    }
    Ok(())
}
