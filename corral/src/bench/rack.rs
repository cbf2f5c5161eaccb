//! `corral bench rack`: how long a rack of simulated sleds takes to run thousands of Instances.
//!
//! The benchmark runs the real thing as separate processes of this very binary: `corral
//! apiserver` (a fresh SQLite file, or etcd), `corral controllers`, and `corral power-sim`
//! hosting every simulated sled and its node-agent. Once every Sled is Ready and the
//! controllers hold their Lease, it starts the clock and creates the Instances through the API
//! (kube-rs, `--concurrency` requests in flight, paced by `--apply-rate`), while a watch
//! records when each Instance is first seen placed, booting and `Running`.
//!
//! It reports the time from the first create to the last Running, each Instance's
//! create→Running latency (from just before its create request was sent) and its parts, the
//! CPU seconds and peak RSS of each process, and the store writes by resource (read from the
//! store's history once the API server has stopped). The last line is exactly
//! `all running: N instances in S s, create->running p99 X s`.
//!
//! # Guarantees
//! - No child process outlives the benchmark (`session.rs`).
//! - Every wait is bounded by `--timeout`; a run that times out says how far it got and exits
//!   non-zero.
//!
//! Code map: this file runs the benchmark; `observed.rs` holds what is observed of the
//! Instances and the store and how it is reported. Figures: `docs/benchmarks.md`.

mod observed;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use corral_crds::{Instance, InstanceSpec, InstanceState, Sled};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use tokio::time::Instant;

use super::measure::{CpuSample, peak_rss_mib, percentile};
use super::session::{RackOptions, Session};
use crate::command::parse_duration;
use observed::{Latencies, Timeline, describe_writes, writes_by_resource};

/// The label every Instance of the benchmark carries.
const BENCH_LABEL: (&str, &str) = ("corral.dev/bench", "rack");
/// What `power-sim` offers per sled by default (`rack::SledArgs`).
const SLED_CPUS: u64 = 128;
const SLED_MEMORY_MIB: u64 = 1024 * 1024;
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long counting the writes in the store's history may take.
const COUNT_BOUND: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct RackArgs {
    /// `sqlite:PATH` (a fresh file; default: one in a temporary directory), `etcd:URL[,URL...]`,
    /// or `etcd:local` to start a private etcd for the run.
    #[arg(long)]
    store: Option<String>,
    /// Simulated sleds (128 CPUs and 1 TiB each), all in one `corral power-sim` process.
    #[arg(long, default_value_t = 100)]
    sleds: usize,
    /// Instances to create.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// CPUs of each Instance.
    #[arg(long, default_value_t = 1)]
    instance_cpus: u32,
    /// Memory of each Instance, in MiB.
    #[arg(long, default_value_t = 512)]
    instance_memory_mib: u64,
    /// How long a simulated VMM takes to boot.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    boot_time: Duration,
    /// Create requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Create Instances at this rate (`N` or `N/s`; `max`: as fast as `--concurrency`
    /// allows). Paced, as Kubernetes' density tests pace pod creation: a burst of thousands
    /// measures the backlog behind it, not how long an Instance takes to run. The default
    /// applies 10,000 Instances in 50 s.
    #[arg(long, default_value = "200/s", value_parser = parse_rate)]
    apply_rate: ApplyRate,
    /// Instance reconciles the controllers run at once (`corral controllers --concurrency`).
    #[arg(long, default_value_t = corral_controllers::DEFAULT_CONCURRENCY)]
    controller_concurrency: u16,
    /// Give up when the run (start-up included) takes longer than this.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the scratch directory (store, sleds, logs of every process) and print its path.
    #[arg(long)]
    keep: bool,
}

/// Instances created per second; `None`: as fast as `--concurrency` allows.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ApplyRate(Option<f64>);

fn parse_rate(text: &str) -> Result<ApplyRate, String> {
    let number = text.trim().trim_end_matches("/s");
    if number == "max" {
        return Ok(ApplyRate(None));
    }
    match number.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(ApplyRate(Some(rate))),
        _ => Err(format!(
            "invalid rate {text:?} (use N or N/s with N > 0, or max)"
        )),
    }
}

pub async fn rack(args: RackArgs) -> anyhow::Result<()> {
    let demand_cpus = args.instances as u64 * u64::from(args.instance_cpus);
    let demand_memory = args.instances as u64 * args.instance_memory_mib;
    if demand_cpus > args.sleds as u64 * SLED_CPUS
        || demand_memory > args.sleds as u64 * SLED_MEMORY_MIB
    {
        bail!(
            "{} instances of {} CPUs and {} MiB do not fit on {} sleds of {SLED_CPUS} CPUs and {SLED_MEMORY_MIB} MiB",
            args.instances,
            args.instance_cpus,
            args.instance_memory_mib,
            args.sleds
        );
    }
    let mut session =
        Session::start("rack", args.store.as_deref(), args.timeout, args.keep).await?;
    let result = session.run(async |session| run(&args, session).await).await;
    let result = match result {
        Ok(finished) => {
            // The store's history says what was written, once the API server is gone (the
            // SQLite store admits one process at a time).
            let counted = tokio::time::timeout(
                COUNT_BOUND,
                writes_by_resource(&session.store.config, finished.revisions),
            )
            .await
            .map_err(anyhow::Error::from)
            .and_then(|counted| counted);
            println!(
                "{}",
                describe_writes(finished.revisions, args.instances, counted)
            );
            println!("{}", finished.last_line);
            Ok(())
        }
        Err(error) => Err(error),
    };
    // Announced at the start: the report's last line stays `all running: ...`.
    session.end();
    result
}

/// What a successful run leaves for the end of the report.
struct Finished {
    /// The store revisions just before the first create and once all were Running.
    revisions: (u64, u64),
    /// `all running: ...`, printed last.
    last_line: String,
}

async fn run(args: &RackArgs, session: &mut Session) -> anyhow::Result<Finished> {
    let rate = match args.apply_rate.0 {
        Some(rate) => format!("{rate}/s"),
        None => "as fast as they go".to_string(),
    };
    println!(
        "corral bench rack: store {}, {} sleds, {} instances ({} CPU, {} MiB) applied at {rate} ({} creates in flight), boot time {:?}, controller concurrency {}",
        session.store.config,
        args.sleds,
        args.instances,
        args.instance_cpus,
        args.instance_memory_mib,
        args.concurrency,
        args.boot_time,
        args.controller_concurrency,
    );

    let started = Instant::now();
    let options = RackOptions {
        controller_concurrency: args.controller_concurrency,
        power_sim_args: vec![
            "--boot-time".to_string(),
            format!("{}ms", args.boot_time.as_millis()),
        ],
        ..RackOptions::default()
    };
    let client = session.start_rack(args.sleds, options).await?;
    let (pids, deadline) = (session.pids(), session.deadline);
    println!(
        "rack ready: {} sleds Ready, controllers leading, {:.1} s after start",
        args.sleds,
        started.elapsed().as_secs_f64()
    );

    // The watch is listed before the first create, so it sees every Instance from its birth.
    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let watch = AbortOnDrop(tokio::spawn(watch_instances(
        instances.clone(),
        events_tx,
        listed_tx,
    )));
    tokio::time::timeout_at(deadline, listed)
        .await
        .context("timed out listing Instances")?
        .context("the Instance watch ended")?;
    let revision_before = store_revision(&client).await?;
    let cpu_before = CpuSample::take(&pids);

    // The clock starts here.
    let start = Instant::now();
    let created = Arc::new(AtomicUsize::new(0));
    let apply = Apply {
        count: args.instances,
        cpus: args.instance_cpus,
        memory_mib: args.instance_memory_mib,
        concurrency: args.concurrency,
        rate: args.apply_rate.0,
    };
    let creates = AbortOnDrop(tokio::spawn(create_instances(
        instances.clone(),
        apply,
        start,
        created.clone(),
    )));
    let mut creates = Some(creates);
    let mut create_phase = None;
    let mut create_requests = (f64::NAN, f64::NAN);
    let mut timelines: Vec<Timeline> = (0..args.instances).map(|_| Timeline::default()).collect();
    let mut n_running = 0;
    let mut progress = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    while n_running < args.instances || creates.is_some() {
        tokio::select! {
            seen = events.recv() => {
                let Some(seen) = seen else { bail!("the Instance watch ended") };
                if let Some(timeline) = timelines.get_mut(seen.index) {
                    let was_running = timeline.running.is_some();
                    timeline.observe(seen.state, seen.at);
                    if !was_running && timeline.running.is_some() {
                        n_running += 1;
                    }
                }
            }
            done = async { (&mut creates.as_mut().expect("guarded").0).await }, if creates.is_some() => {
                creates = None;
                let done = done.context("the create task panicked")??;
                create_phase = Some(done.finished - start);
                create_requests = (
                    percentile(&done.request_seconds, 0.5),
                    percentile(&done.request_seconds, 0.99),
                );
                for (timeline, sent) in timelines.iter_mut().zip(done.sent_at) {
                    timeline.sent = sent;
                }
            }
            _ = progress.tick() => {
                println!(
                    "{:>6.1} s: {} created, {n_running} running",
                    start.elapsed().as_secs_f64(),
                    created.load(Ordering::Relaxed),
                );
                session.check_alive()?;
            }
            _ = tokio::time::sleep_until(deadline) => {
                let mut states: BTreeMap<&str, usize> = BTreeMap::new();
                for timeline in &timelines {
                    *states.entry(timeline.last_state.map_or("none", |s| s.as_str())).or_default() += 1;
                }
                println!(
                    "timed out {:.1} s after the first create: {} created, {n_running} of {} running; last states {states:?}",
                    start.elapsed().as_secs_f64(),
                    created.load(Ordering::Relaxed),
                    args.instances
                );
                bail!("timed out after --timeout {:?}", args.timeout);
            }
        }
    }
    let all_running = timelines
        .iter()
        .filter_map(|t| t.running)
        .max()
        .map(|at| at - start)
        .unwrap_or_default();
    let cpu_phase = CpuSample::take(&pids).minus(cpu_before);
    drop(watch);
    let revision_after = store_revision(&client).await?;

    let create_to_running = Latencies::of(&timelines, |t| Some((t.sent?, t.running?)));
    let p99 = create_to_running.p99;
    let create_phase = create_phase.unwrap_or_default().as_secs_f64();
    let n = args.instances as f64;

    // Whole-run figures, read just before the processes are stopped.
    let cpu_total = CpuSample::take(&pids);
    let rss = |pid: Option<u32>| {
        pid.and_then(|pid| peak_rss_mib(&pid.to_string()))
            .unwrap_or(f64::NAN)
    };
    let with_etcd = pids.etcd.is_some();
    println!(
        "created:           {} instances in {create_phase:.1} s ({:.0}/s); create requests p50 {:.1} ms, p99 {:.1} ms",
        args.instances,
        n / create_phase,
        create_requests.0 * 1000.0,
        create_requests.1 * 1000.0
    );
    println!("create->running:   {create_to_running}");
    println!(
        "  create->placed:   {}",
        Latencies::of(&timelines, |t| Some((t.sent?, t.placed?)))
    );
    println!(
        "  placed->booting:  {}",
        Latencies::of(&timelines, |t| Some((t.placed?, t.starting?)))
    );
    println!(
        "  booting->running: {}",
        Latencies::of(&timelines, |t| Some((t.starting?, t.running?)))
    );
    println!(
        "CPU s, apply to all running ({:.1} s): {}",
        all_running.as_secs_f64(),
        cpu_phase.describe(with_etcd)
    );
    println!(
        "CPU s, whole run:                     {}",
        cpu_total.describe(with_etcd)
    );
    let mut peak = format!(
        "peak RSS: apiserver {:.0} MiB, controllers {:.0} MiB, power-sim {:.0} MiB",
        rss(pids.apiserver),
        rss(pids.controllers),
        rss(pids.power_sim)
    );
    if with_etcd {
        let _ = write!(peak, ", etcd {:.0} MiB", rss(pids.etcd));
    }
    println!("{peak}");
    Ok(Finished {
        revisions: (revision_before, revision_after),
        last_line: format!(
            "all running: {} instances in {:.1} s, create->running p99 {p99:.2} s",
            args.instances,
            all_running.as_secs_f64()
        ),
    })
}

/// The store's current revision: the resourceVersion of a consistent (uncached) list.
async fn store_revision(client: &kube::Client) -> anyhow::Result<u64> {
    let sleds: Api<Sled> = Api::all(client.clone());
    let list = sleds
        .list(&ListParams::default().limit(1))
        .await
        .context("reading the store revision")?;
    Ok(list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0))
}

fn instance_name(index: usize) -> String {
    format!("bench-{index:05}")
}

fn instance_index(name: &str) -> Option<usize> {
    name.strip_prefix("bench-")?.parse().ok()
}

/// One write to an Instance, as the watch delivered it.
struct Seen {
    index: usize,
    state: Option<InstanceState>,
    at: Instant,
}

/// Sends every write to a benchmark Instance; `listed` fires once the initial list is done.
async fn watch_instances(
    instances: Api<Instance>,
    seen: tokio::sync::mpsc::UnboundedSender<Seen>,
    listed: tokio::sync::oneshot::Sender<()>,
) {
    let config = watcher::Config::default().labels(&format!("{}={}", BENCH_LABEL.0, BENCH_LABEL.1));
    let mut listed = Some(listed);
    let mut stream = watcher(instances, config).boxed();
    while let Some(event) = stream.next().await {
        let instance = match event {
            Ok(watcher::Event::Apply(instance) | watcher::Event::InitApply(instance)) => instance,
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = listed.take() {
                    let _ = listed.send(());
                }
                continue;
            }
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(%error, "instance watch");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(index) = instance.metadata.name.as_deref().and_then(instance_index) else {
            continue;
        };
        let state = instance.status.as_ref().and_then(|status| status.state);
        let at = Instant::now();
        if seen.send(Seen { index, state, at }).is_err() {
            return;
        }
    }
}

/// What the create phase did.
struct Created {
    /// When each Instance's create request was sent, by index.
    sent_at: Vec<Option<Instant>>,
    /// How long each create request took, in seconds, sorted.
    request_seconds: Vec<f64>,
    /// When the last create returned.
    finished: Instant,
}

/// What to create, and how fast.
#[derive(Clone, Copy)]
struct Apply {
    count: usize,
    cpus: u32,
    memory_mib: u64,
    /// Requests in flight at once.
    concurrency: usize,
    /// Instances per second; `None`: as fast as the concurrency allows.
    rate: Option<f64>,
}

/// Creates the Instances, instance `i` at `start + i / rate` at the earliest when there is a
/// rate, and counts them in `created`.
async fn create_instances(
    instances: Api<Instance>,
    apply: Apply,
    start: Instant,
    created: Arc<AtomicUsize>,
) -> anyhow::Result<Created> {
    let Apply {
        count,
        cpus,
        memory_mib,
        concurrency,
        rate,
    } = apply;
    let mut sent_at = vec![None; count];
    let mut results = futures::stream::iter(0..count)
        .map(|index| {
            let instances = instances.clone();
            let created = created.clone();
            async move {
                if let Some(rate) = rate {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(index as f64 / rate))
                        .await;
                }
                let instance = Instance {
                    metadata: ObjectMeta {
                        name: Some(instance_name(index)),
                        labels: Some(
                            [(BENCH_LABEL.0.to_string(), BENCH_LABEL.1.to_string())].into(),
                        ),
                        ..Default::default()
                    },
                    spec: InstanceSpec {
                        cpus,
                        memory_mib,
                        image: "debian-12".to_string(),
                        ..Default::default()
                    },
                    status: None,
                };
                let sent = Instant::now();
                instances
                    .create(&PostParams::default(), &instance)
                    .await
                    .with_context(|| format!("creating instance {}", instance_name(index)))?;
                created.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>((index, sent, sent.elapsed().as_secs_f64()))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut request_seconds = Vec::with_capacity(count);
    while let Some((index, sent, took)) = results.try_next().await? {
        sent_at[index] = Some(sent);
        request_seconds.push(took);
    }
    request_seconds.sort_by(|a, b| a.total_cmp(b));
    Ok(Created {
        sent_at,
        request_seconds,
        finished: Instant::now(),
    })
}

/// Aborts a task when dropped (an error path must not leave it running).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_or_without_per_second() {
        assert_eq!(parse_rate("500"), Ok(ApplyRate(Some(500.0))));
        assert_eq!(parse_rate("250/s"), Ok(ApplyRate(Some(250.0))));
        assert_eq!(parse_rate("max"), Ok(ApplyRate(None)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn instance_names_round_trip() {
        assert_eq!(instance_name(42), "bench-00042");
        assert_eq!(instance_index(&instance_name(9_999)), Some(9_999));
        assert_eq!(instance_index("web-1"), None);
    }
}
