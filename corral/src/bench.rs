//! `corral bench`: benchmarks that print numbers and ratios.
//!
//! - [`api`]: `corral bench api` — how close the API server gets to the physical limit of its
//!   store.
//! - [`rack`]: `corral bench rack` — how long a whole rack of simulated sleds takes to run
//!   thousands of Instances, through the real processes.
//! - [`drain`]: `corral bench drain` — a drain's wall time against its modelled transfers.
//! - [`v2p`]: `corral bench v2p` — how fast a moved instance's mapping reaches every sled.
//!
//! This file holds what both share: choosing the store (`--store`, including a private etcd
//! for the run) and reading a process's CPU time and peak memory from `/proc`.

mod api;
mod drain;
mod rack;
mod v2p;

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use corral_store::StoreConfig;
use corral_store::testing::EtcdServer;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// API write rate against the raw store rate, and watch delivery latency.
    Api(api::ApiArgs),
    /// Apply thousands of Instances to a rack of simulated sleds (real apiserver, controllers
    /// and power-sim processes) and time them until all are Running.
    Rack(rack::RackArgs),
    /// Drain a sled of live-migrating instances and compare the wall time with the time the
    /// modelled transfers alone need.
    Drain(drain::DrainArgs),
    /// Move instances one after another and time how long each new V2P mapping takes to
    /// reach every sled.
    V2p(v2p::V2pArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Api(args) => api::api(args).await,
        BenchCommand::Rack(args) => rack::rack(args).await,
        BenchCommand::Drain(args) => drain::drain(args).await,
        BenchCommand::V2p(args) => v2p::v2p(args).await,
    }
}

/// What a benchmark that runs a rack of processes works in: a scratch directory (the store,
/// the sleds, every process's log), the store, the child processes, and its deadline.
///
/// # Guarantees
/// - [`Session::stop`] stops every child; no child outlives the benchmark (`rack/children.rs`).
/// - With `keep`, the scratch directory is announced at the start and kept at [`Session::end`].
struct Session {
    name: &'static str,
    scratch: tempfile::TempDir,
    store: BenchStore,
    children: rack::children::Children,
    deadline: tokio::time::Instant,
    keep: bool,
}

impl Session {
    async fn start(
        name: &'static str,
        store: Option<&str>,
        timeout: std::time::Duration,
        keep: bool,
    ) -> anyhow::Result<Session> {
        let scratch = tempfile::Builder::new()
            .prefix(&format!("corral-bench-{name}-"))
            .tempdir()?;
        if keep {
            println!(
                "keeping the scratch directory (store, sleds, logs): {}",
                scratch.path().display()
            );
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let store = BenchStore::open(store, scratch.path()).await?;
        let children = rack::children::Children::new(scratch.path().join("logs"))?;
        Ok(Session {
            name,
            scratch,
            store,
            children,
            deadline,
            keep,
        })
    }

    /// After the run: says why it failed (with the tail of every log), then stops every child.
    async fn stop<T>(&mut self, result: &anyhow::Result<T>) {
        if let Err(error) = result {
            eprintln!("corral bench {} failed: {error:#}", self.name);
            self.children.print_log_tails();
            if !self.keep {
                eprintln!("(--keep keeps every log and the store)");
            }
        }
        self.children.stop().await;
    }

    /// Keeps the scratch directory if asked.
    fn end(self) {
        if self.keep {
            let _ = self.scratch.keep();
        }
    }
}

/// The store a benchmark runs on, and the private etcd behind it if it started one.
struct BenchStore {
    /// For etcd, a prefix of its own (`/corral-bench-RANDOM`), so that runs against a shared
    /// etcd never see each other's keys.
    config: StoreConfig,
    /// Killed (and its data removed) when dropped.
    etcd: Option<EtcdServer>,
}

impl BenchStore {
    /// Resolves `--store`: none is a fresh SQLite file in `scratch`; `etcd:local` starts a
    /// private etcd; anything else is parsed as a store config.
    async fn open(arg: Option<&str>, scratch: &Path) -> anyhow::Result<BenchStore> {
        let mut etcd = None;
        let config: StoreConfig = match arg {
            None => StoreConfig::Sqlite {
                path: scratch.join("bench.db"),
            },
            Some("etcd:local") => {
                let server = EtcdServer::start()
                    .await
                    .context("starting a private etcd")?;
                let config = format!("etcd:{}", server.endpoint())
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                etcd = Some(server);
                config
            }
            Some(text) => text.parse().map_err(|e| anyhow::anyhow!("--store: {e}"))?,
        };
        let config = match config {
            StoreConfig::Etcd { endpoints, .. } => StoreConfig::Etcd {
                endpoints,
                prefix: format!("/corral-bench-{}", rand::random::<u32>()),
            },
            other => other,
        };
        Ok(BenchStore { config, etcd })
    }

    /// The process id of the private etcd, if this run started one.
    fn etcd_pid(&self) -> Option<u32> {
        self.etcd.as_ref().and_then(EtcdServer::pid)
    }
}

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system) a process (`"self"` or a pid) has used so far, from
/// `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// The peak resident memory of a process (`"self"` or a pid), from `/proc/PID/status`
/// (`VmHWM`).
fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The `p`th quantile (0..=1) of sorted values, nearest rank; NaN when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
