//! `corral bench failover`: how long a rack takes to run the instances of a sled that lost its
//! power somewhere else.
//!
//! The benchmark starts a rack as real processes (`Session::start_rack`, the controllers with
//! `--sled-grace`), runs `--instances` `Always` Instances on `--sleds` sleds, then powers the
//! busiest sled off through its power controller, behind the control plane's back (as a failed
//! power supply would), and starts the clock. Watches record, from that moment: when the
//! sled-health controller judged the sled (*detect*: `Unreachable` or `PoweredOff`), when it
//! fenced it (*fence*), and when each of the sled's instances was first seen `Running` on
//! another sled (*restart*). It prints those times (p50, p99, max for the restarts) and ends
//! with exactly `failover: N instances in S s (grace G s)`, S being the time until the last
//! one ran elsewhere.
//!
//! # Guarantees
//! - No child process outlives the benchmark; every wait is bounded by `--timeout`.
//! - The times are measured here, on one clock, from the power-off request's answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use corral_crds::{HealthVerdict, Instance, InstanceSpec, InstanceState, Sled};
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use super::measure::percentile;
use super::session::{RackOptions, Session};
use crate::command::parse_duration;

/// Creates in flight at once while the instances are applied.
const CREATES_IN_FLIGHT: usize = 32;
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// `sqlite:PATH`, `etcd:URL[,URL...]`, or `etcd:local` (default: a fresh SQLite file).
    #[arg(long)]
    store: Option<String>,
    /// Simulated sleds (128 CPUs and 1 TiB each), all in one `corral power-sim` process.
    #[arg(long, default_value_t = 100)]
    sleds: usize,
    /// `Always` Instances (1 CPU, 256 MiB each), spread by the scheduler.
    #[arg(long, default_value_t = 2000)]
    instances: usize,
    /// The controllers' `--sled-grace`.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    grace: Duration,
    /// Give up when the run takes longer than this.
    #[arg(long, default_value = "1200s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the scratch directory (store, sleds, logs of every process) and print its path.
    #[arg(long)]
    keep: bool,
}

pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    let mut session =
        Session::start("failover", args.store.as_deref(), args.timeout, args.keep).await?;
    let last_line = session.run(async |session| run(&args, session).await).await;
    session.end();
    println!("{}", last_line?);
    Ok(())
}

/// When things happened after the power-off, as the watches saw them.
#[derive(Default)]
struct Seen {
    detected: Option<Duration>,
    fenced: Option<Duration>,
    /// Each of the failed sled's instances: when it was first seen Running elsewhere.
    restarted: BTreeMap<String, Duration>,
}

async fn run(args: &FailoverArgs, session: &mut Session) -> anyhow::Result<String> {
    println!(
        "corral bench failover: store {}, {} sleds, {} instances, grace {} s",
        session.store.config,
        args.sleds,
        args.instances,
        args.grace.as_secs_f64()
    );
    let options = RackOptions {
        controllers_args: vec![
            "--sled-grace".into(),
            format!("{}ms", args.grace.as_millis()),
        ],
        ..RackOptions::default()
    };
    let client = session.start_rack(args.sleds, options).await?;
    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    let sleds: Api<Sled> = Api::all(client.clone());
    let applied = Instant::now();
    futures::stream::iter(1..=args.instances)
        .map(|index| {
            let instances = instances.clone();
            async move {
                let instance = Instance {
                    metadata: ObjectMeta {
                        name: Some(format!("failover-{index:05}")),
                        ..Default::default()
                    },
                    spec: InstanceSpec {
                        cpus: 1,
                        memory_mib: 256,
                        image: "debian".into(),
                        ..Default::default()
                    },
                    status: None,
                };
                instances
                    .create(&PostParams::default(), &instance)
                    .await
                    .with_context(|| format!("creating instance {index}"))
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    session
        .wait_until_running(&instances, args.instances, None)
        .await?;
    println!(
        "{} instances Running after {:.1} s",
        args.instances,
        applied.elapsed().as_secs_f64()
    );

    // The busiest sled, and the instances on it.
    let list = instances.list(&ListParams::default()).await?;
    let mut by_sled: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for instance in &list.items {
        if let Some(sled) = instance.status.as_ref().and_then(|s| s.sled.clone()) {
            by_sled.entry(sled).or_default().insert(instance.name_any());
        }
    }
    let (victim, on_victim) = by_sled
        .into_iter()
        .max_by_key(|(_, names)| names.len())
        .context("no instance is placed")?;
    let power_controller = sleds
        .get(&victim)
        .await?
        .spec
        .power_controller
        .with_context(|| format!("{victim} has no power controller"))?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let clock = Arc::new(Mutex::new(None::<Instant>));
    let listening = Arc::new(Mutex::new((false, false)));
    let watches = tokio::spawn(watch(
        client.clone(),
        victim.clone(),
        on_victim.clone(),
        seen.clone(),
        clock.clone(),
        listening.clone(),
    ));
    // The clock starts only once both watches deliver.
    session
        .wait_for(
            "the watches delivering",
            Duration::from_millis(20),
            async || match *listening.lock().expect("listening lock") {
                (true, true) => Ok(()),
                _ => Err("not yet".to_string()),
            },
        )
        .await?;
    power_off(&power_controller, &session.admin_tls()?).await?;
    let start = Instant::now();
    *clock.lock().expect("clock lock") = Some(start);
    println!(
        "powered {victim} off ({} instances on it) behind the control plane's back",
        on_victim.len()
    );

    let mut next_progress = start + PROGRESS_EVERY;
    let result = session
        .wait_for(
            "every instance of the failed sled Running elsewhere",
            Duration::from_millis(100),
            async || {
                let seen = seen.lock().expect("seen lock");
                if seen.restarted.len() == on_victim.len() {
                    return Ok(());
                }
                if Instant::now() >= next_progress {
                    println!(
                        "  {:>5.1} s: detected {}, fenced {}, {} of {} running elsewhere",
                        start.elapsed().as_secs_f64(),
                        seen.detected.is_some(),
                        seen.fenced.is_some(),
                        seen.restarted.len(),
                        on_victim.len()
                    );
                    next_progress += PROGRESS_EVERY;
                }
                Err(format!(
                    "{} of {} restarted",
                    seen.restarted.len(),
                    on_victim.len()
                ))
            },
        )
        .await;
    watches.abort();
    result?;

    let seen = seen.lock().expect("seen lock");
    let mut restarts: Vec<f64> = seen.restarted.values().map(Duration::as_secs_f64).collect();
    restarts.sort_by(f64::total_cmp);
    let seconds =
        |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "detect (Unreachable or PoweredOff): {}",
        seconds(seen.detected)
    );
    println!(
        "fence (Fenced, epoch raised):        {}",
        seconds(seen.fenced)
    );
    let first = restarts.first().copied().unwrap_or(f64::NAN);
    let last = restarts.last().copied().unwrap_or(f64::NAN);
    println!(
        "restart elsewhere: first {first:.2} s, p50 {:.2} s, p99 {:.2} s, max {last:.2} s",
        percentile(&restarts, 0.5),
        percentile(&restarts, 0.99),
    );
    if let Some(fenced) = seen.fenced {
        println!(
            "after the fence: every instance running elsewhere {:.2} s later",
            last - fenced.as_secs_f64()
        );
    }
    Ok(format!(
        "failover: {} instances in {last:.1} s (grace {} s)",
        on_victim.len(),
        args.grace.as_secs_f64()
    ))
}

/// Records, against the clock once it is set, the verdicts on `victim` and every instance of
/// `on_victim` first seen Running elsewhere.
async fn watch(
    client: kube::Client,
    victim: String,
    on_victim: BTreeSet<String>,
    seen: Arc<Mutex<Seen>>,
    clock: Arc<Mutex<Option<Instant>>>,
    listening: Arc<Mutex<(bool, bool)>>,
) {
    let since = move || {
        clock
            .lock()
            .expect("clock lock")
            .map(|start| start.elapsed())
    };
    let sleds = watcher::watcher(Api::<Sled>::all(client.clone()), watcher::Config::default())
        .applied_objects()
        .filter_map(|sled| async move { sled.ok() });
    let instances = watcher::watcher(
        Api::<Instance>::namespaced(client, "default"),
        watcher::Config::default(),
    )
    .applied_objects()
    .filter_map(|instance| async move { instance.ok() });
    enum Change {
        Sled(Box<Sled>),
        Instance(Box<Instance>),
    }
    let mut changes = futures::stream::select(
        sleds.map(|s| Change::Sled(Box::new(s))),
        instances.map(|i| Change::Instance(Box::new(i))),
    )
    .boxed();
    while let Some(change) = changes.next().await {
        {
            let mut listening = listening.lock().expect("listening lock");
            match change {
                Change::Sled(_) => listening.0 = true,
                Change::Instance(_) => listening.1 = true,
            }
        }
        let Some(at) = since() else {
            continue;
        };
        let mut seen = seen.lock().expect("seen lock");
        match change {
            Change::Sled(sled) if sled.name_any() == victim => match sled.health() {
                HealthVerdict::Unreachable | HealthVerdict::PoweredOff => {
                    seen.detected.get_or_insert(at);
                }
                HealthVerdict::Fenced => {
                    seen.detected.get_or_insert(at);
                    seen.fenced.get_or_insert(at);
                }
                _ => {}
            },
            Change::Sled(_) => {}
            Change::Instance(instance) => {
                let name = instance.name_any();
                let status = instance.status.clone().unwrap_or_default();
                if on_victim.contains(&name)
                    && status.state == Some(InstanceState::Running)
                    && status.sled.as_deref().is_some_and(|sled| sled != victim)
                {
                    seen.restarted.entry(name).or_insert(at);
                }
            }
        }
    }
}

/// `POST {url}/power/off` (a simulated sled's power controller).
/// `POST {url}/power/off` as `admin` (the power controller speaks HTTPS, or HTTP on a
/// plain-HTTP rack).
async fn power_off(url: &str, tls: &corral_harness::tls::ClientTls) -> anyhow::Result<()> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.config().as_ref().clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let request = hyper::Request::post(format!("{url}/power/off")).body(Empty::new())?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("power off: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
