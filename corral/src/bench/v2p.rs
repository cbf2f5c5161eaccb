//! `corral bench v2p`: how fast a moved instance's new V2P mapping reaches every sled.
//!
//! The benchmark starts a rack as real processes (`Session::start_rack`), runs `--instances`
//! Instances with a NIC in one VPC, then live-migrates them one after another, `--migrations`
//! times. For each move it measures, as one observer watching Instances, VpcRoutes and Sleds:
//! from the moment the Instance shows its new sled (the switch) to the moment every Ready sled
//! acknowledges a VpcRoutes generation that holds the new mapping. The last line is exactly
//! `v2p convergence p99: X ms`.
//!
//! # Guarantees
//! - No child process outlives the benchmark; every wait is bounded by `--timeout`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use corral_crds::{
    Instance, InstanceSpec, Migration, MigrationPhase, MigrationSpec, Nic, Sled, VpcRoutes,
};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use super::measure::percentile;
use super::session::{RackOptions, Session};
use crate::command::parse_duration;

/// The benchmark's VPC.
const VPC: &str = "bench";

#[derive(clap::Args)]
pub struct V2pArgs {
    /// `sqlite:PATH`, `etcd:URL[,URL...]`, or `etcd:local` (default: a fresh SQLite file).
    #[arg(long)]
    store: Option<String>,
    /// Simulated sleds, all in one `corral power-sim` process.
    #[arg(long, default_value_t = 100)]
    sleds: usize,
    /// Instances in the VPC.
    #[arg(long, default_value_t = 20)]
    instances: usize,
    /// Moves measured, one after another.
    #[arg(long, default_value_t = 40)]
    migrations: usize,
    /// Memory of each Instance, in MiB (small: the transfer is not what is measured).
    #[arg(long, default_value_t = 512)]
    memory_mib: u64,
    /// Give up when the run takes longer than this.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the scratch directory (store, sleds, logs of every process) and print its path.
    #[arg(long)]
    keep: bool,
}

pub async fn v2p(args: V2pArgs) -> anyhow::Result<()> {
    let mut session = Session::start("v2p", args.store.as_deref(), args.timeout, args.keep).await?;
    let last_line = session.run(async |session| run(&args, session).await).await;
    session.end();
    println!("{}", last_line?);
    Ok(())
}

/// What the observer knows, kept current by the watches.
#[derive(Default)]
struct View {
    /// Instance name → (sled, locationGeneration).
    located: HashMap<String, (String, u64)>,
    /// The VPC's mappings: ip → (locationGeneration, since).
    mappings: HashMap<String, (u64, i64)>,
    /// Ready sleds → the generation of the VPC they acknowledge.
    acks: HashMap<String, i64>,
}

/// One change the watches delivered.
enum Seen {
    Instance(Box<Instance>),
    Routes(Box<VpcRoutes>),
    Sled(Box<Sled>),
}

impl View {
    fn apply(&mut self, seen: Seen) {
        match seen {
            Seen::Instance(instance) => {
                let instance = *instance;
                if let Some(status) = instance.status
                    && let Some(sled) = status.sled
                    && status.state.is_some()
                {
                    self.located.insert(
                        instance.metadata.name.unwrap_or_default(),
                        (sled, status.location_generation),
                    );
                }
            }
            Seen::Routes(routes) => {
                if routes.name_any() == VPC {
                    self.mappings = routes
                        .spec
                        .mappings
                        .iter()
                        .map(|m| (m.ip.clone(), (m.location_generation, m.since)))
                        .collect();
                }
            }
            Seen::Sled(sled) => {
                let name = sled.name_any();
                if sled.is_ready() {
                    let acked = corral_controllers::v2p::acknowledged(&sled, VPC).unwrap_or(0);
                    self.acks.insert(name, acked);
                } else {
                    self.acks.remove(&name);
                }
            }
        }
    }

    /// Whether every Ready sled holds the mapping of `ip` at `generation` or later.
    fn converged(&self, ip: &str, generation: u64) -> bool {
        let Some((mapped, since)) = self.mappings.get(ip) else {
            return false;
        };
        *mapped >= generation && self.acks.values().all(|acked| acked >= since)
    }
}

async fn run(args: &V2pArgs, session: &mut Session) -> anyhow::Result<String> {
    println!(
        "corral bench v2p: store {}, {} sleds, {} instances in VPC {VPC}, {} moves",
        session.store.config, args.sleds, args.instances, args.migrations
    );
    let client = session
        .start_rack(args.sleds, RackOptions::default())
        .await?;
    let deadline = session.deadline;
    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    let ip = |index: usize| format!("10.2.{}.{}", index / 256, index % 256);
    for index in 0..args.instances {
        let instance = Instance {
            metadata: ObjectMeta {
                name: Some(format!("v2p-{index:04}")),
                ..Default::default()
            },
            spec: InstanceSpec {
                cpus: 1,
                memory_mib: args.memory_mib,
                image: "debian".into(),
                nics: vec![Nic {
                    name: "eth0".into(),
                    vpc: VPC.into(),
                    ip: ip(index),
                }],
                ..Default::default()
            },
            status: None,
        };
        instances.create(&PostParams::default(), &instance).await?;
    }
    session
        .wait_until_running(&instances, args.instances, None)
        .await?;

    // One observer: three watches merged into one stream, applied in arrival order.
    let seen = futures::stream::select_all([
        watcher(instances.clone(), watcher::Config::default())
            .applied_objects()
            .map(|r| r.map(|i| Seen::Instance(Box::new(i))))
            .boxed(),
        watcher(
            Api::<VpcRoutes>::all(client.clone()),
            watcher::Config::default(),
        )
        .applied_objects()
        .map(|r| r.map(|routes| Seen::Routes(Box::new(routes))))
        .boxed(),
        watcher(Api::<Sled>::all(client.clone()), watcher::Config::default())
            .applied_objects()
            .map(|r| r.map(|sled| Seen::Sled(Box::new(sled))))
            .boxed(),
    ]);
    let mut seen = std::pin::pin!(seen);
    let mut view = View::default();
    // The observer starts once its view holds every sled, instance and mapping.
    while view.acks.len() < args.sleds
        || view.located.len() < args.instances
        || view.mappings.len() < args.instances
    {
        let next = tokio::time::timeout_at(deadline, seen.next())
            .await
            .context("timed out listing sleds, instances and routes")?;
        let Some(next) = next else {
            bail!("the watches ended")
        };
        if let Ok(next) = next {
            view.apply(next);
        }
    }
    let migrations: Api<Migration> = Api::namespaced(client.clone(), "default");
    let mut samples = Vec::new();
    for move_index in 0..args.migrations {
        let index = move_index % args.instances;
        let instance = format!("v2p-{index:04}");
        let address = ip(index);
        // Let the last move settle (the next one is admitted only once its V2P converged).
        let migration = Migration {
            metadata: ObjectMeta {
                name: Some(format!("move-{move_index:04}")),
                ..Default::default()
            },
            spec: MigrationSpec {
                instance: instance.clone(),
                ..Default::default()
            },
            status: None,
        };
        let before = instances
            .get(&instance)
            .await?
            .status
            .map_or(0, |s| s.location_generation);
        migrations
            .create(&PostParams::default(), &migration)
            .await
            .context("creating a migration")?;
        let mut switched: Option<(Instant, u64)> = None;
        let measured = loop {
            let next = tokio::time::timeout_at(deadline, seen.next())
                .await
                .context("timed out waiting for a move to converge")?;
            let Some(next) = next else {
                bail!("the watches ended")
            };
            let Ok(next) = next else { continue };
            view.apply(next);
            if switched.is_none()
                && let Some((_, generation)) = view.located.get(&instance)
                && *generation > before
            {
                switched = Some((Instant::now(), *generation));
            }
            if let Some((at, generation)) = switched
                && view.converged(&address, generation)
            {
                break at.elapsed();
            }
            session.check_alive()?;
        };
        samples.push(measured.as_secs_f64() * 1000.0);
        let done = migrations.get(&format!("move-{move_index:04}")).await?;
        let status = done.status.unwrap_or_default();
        if let Some(phase) = status
            .phase
            .filter(|p| p.is_final() && *p != MigrationPhase::Succeeded)
        {
            bail!(
                "move {move_index} of {instance} ended {phase} ({:?}): {}",
                status.reason,
                status.message
            );
        }
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "{} moves across {} Ready sleds: switch -> every sled applied, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        samples.len(),
        view.acks.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN)
    );
    Ok(format!(
        "v2p convergence p99: {:.0} ms",
        percentile(&samples, 0.99)
    ))
}
