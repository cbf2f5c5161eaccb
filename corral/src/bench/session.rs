//! What a benchmark that runs a rack of processes works in: a scratch directory (the store, the
//! sleds, every process's log), the store, the rack (a `corral_harness::Rack` of this very
//! binary), and the deadline of the run.
//!
//! # Guarantees
//! - [`Session::run`] runs a benchmark until it ends or Ctrl-C; on a failure it says why, with
//!   the end of every process's log; then it stops every process. No process outlives the
//!   benchmark, however it ends (`corral_harness::process`).
//! - Every wait of [`Session::wait_for`] and the rack's start end by the deadline (`--timeout`),
//!   and at once when a process of the rack exits.
//! - With `keep`, the scratch directory is announced at the start and kept at [`Session::end`].
//!
//! # Assumptions
//! - `RUST_LOG` is passed on; without it the rack's processes log at `warn`, so that the
//!   benchmark measures the control plane rather than its logging.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use corral_crds::{Instance, InstanceState};
use corral_harness::wait::Unmet;
use corral_harness::{Rack, RackSpec, Scratch, SledHost};
use corral_store::StoreConfig;
use corral_store::testing::EtcdServer;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use super::measure::Pids;

/// How long a process may take to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A benchmark's run. See the module docs.
pub(crate) struct Session {
    name: &'static str,
    /// Started by [`Session::start_rack`]; stopped by [`Session::run`]. Dropped before the
    /// store it runs on.
    rack: Option<Rack>,
    pub(crate) store: BenchStore,
    pub(crate) deadline: Instant,
    keep: bool,
    // Dropped last: every process writes in it.
    scratch: tempfile::TempDir,
}

impl Session {
    pub(crate) async fn start(
        name: &'static str,
        store: Option<&str>,
        timeout: Duration,
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
        let deadline = Instant::now() + timeout;
        let store = BenchStore::open(store, scratch.path()).await?;
        Ok(Session {
            name,
            rack: None,
            store,
            deadline,
            keep,
            scratch,
        })
    }

    /// Runs `benchmark` until it ends or Ctrl-C; says why it failed (with the end of every
    /// process's log); stops every process of the rack.
    pub(crate) async fn run<T>(
        &mut self,
        benchmark: impl AsyncFnOnce(&mut Session) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let result = tokio::select! {
            result = benchmark(self) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        if let Err(error) = &result {
            eprintln!("corral bench {} failed: {error:#}", self.name);
            if let Some(rack) = &self.rack {
                rack.print_log_tails(10);
            }
            if !self.keep {
                eprintln!("(--keep keeps every log and the store)");
            }
        }
        if let Some(rack) = &mut self.rack {
            rack.stop(STOP_GRACE).await;
        }
        result
    }

    /// Keeps the scratch directory if asked.
    pub(crate) fn end(self) {
        if self.keep {
            let _ = self.scratch.keep();
        }
    }

    /// Starts the control plane as processes of this binary — `corral apiserver` on the
    /// session's store, one `corral controllers` and `corral power-sim` hosting `sleds` sleds
    /// (cold-started), as `options` say — and waits until the controllers lead and every sled
    /// is Ready. Returns a client.
    pub(crate) async fn start_rack(
        &mut self,
        sleds: usize,
        options: RackOptions,
    ) -> anyhow::Result<kube::Client> {
        let (lease_namespace, lease_name) = corral_controllers::LEADER_LEASE;
        let spec = RackSpec {
            program: std::env::current_exe().context("finding this executable")?,
            store: self.store.for_the_rack(),
            apiserver_args: Vec::new(),
            controllers: 1,
            controllers_args: [
                "--concurrency".to_string(),
                options.controller_concurrency.to_string(),
            ]
            .into_iter()
            .chain(options.controllers_args)
            .collect(),
            sleds,
            sled_host: SledHost::PowerSim,
            sled_args: options.power_sim_args,
            leader_lease: (lease_namespace.into(), lease_name.into()),
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        };
        let rack = Rack::new(spec, Scratch::at(self.scratch.path())?)?;
        let rack = self.rack.insert(rack);
        rack.start(self.deadline.saturating_duration_since(Instant::now()))
            .await?;
        Ok(rack.client().clone())
    }

    /// `admin`'s TLS client configuration for the rack (to call a sled's endpoints).
    pub(crate) fn admin_tls(&self) -> anyhow::Result<corral_harness::tls::ClientTls> {
        let rack = self.rack.as_ref().context("the rack is not started")?;
        Ok(rack.apiserver().tls().clone())
    }

    /// The processes to measure.
    pub(crate) fn pids(&self) -> Pids {
        let rack = self.rack.as_ref();
        Pids {
            apiserver: rack.and_then(|rack| rack.apiserver().pid()),
            controllers: rack.and_then(|rack| rack.controllers.first()?.pid()),
            power_sim: rack.and_then(|rack| rack.power_sim.as_ref()?.pid()),
            etcd: self.store.etcd_pid(),
        }
    }

    /// Fails, naming the process, if a process of the rack has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(rack) = &mut self.rack {
            rack.check_alive()?;
        }
        Ok(())
    }

    /// Waits until `count` Instances of `instances` are Running (on `sled`, if given).
    pub(crate) async fn wait_until_running(
        &mut self,
        instances: &Api<Instance>,
        count: usize,
        sled: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut what = format!("{count} instances Running");
        if let Some(sled) = sled {
            what.push_str(&format!(" on {sled}"));
        }
        self.wait_for(&what, Duration::from_millis(250), async || {
            let list = instances
                .list(&ListParams::default())
                .await
                .map_err(|error| format!("listing instances: {error}"))?;
            let running = list
                .items
                .iter()
                .filter_map(|instance| instance.status.as_ref())
                .filter(|status| {
                    status.state == Some(InstanceState::Running)
                        && sled.is_none_or(|sled| status.sled.as_deref() == Some(sled))
                })
                .count();
            if running == count {
                Ok(())
            } else {
                Err(format!("{running} running"))
            }
        })
        .await
    }

    /// Polls `probe` every `poll` until it answers `Ok`, until the deadline; fails at once
    /// when a process of the rack exits.
    pub(crate) async fn wait_for<T, E: Into<Unmet>>(
        &mut self,
        what: &str,
        poll: Duration,
        mut probe: impl AsyncFnMut() -> Result<T, E>,
    ) -> anyhow::Result<T> {
        let bound = self.deadline.saturating_duration_since(Instant::now());
        let (answer, _) = corral_harness::wait::wait_for_polling(what, bound, poll, async || {
            self.check_alive()
                .map_err(|exited| Unmet::Never(format!("{exited:#}")))?;
            probe().await.map_err(Into::into)
        })
        .await?;
        Ok(answer)
    }
}

/// How a benchmark's rack differs from the default one.
pub(crate) struct RackOptions {
    /// Instance reconciles the controllers run at once.
    pub(crate) controller_concurrency: u16,
    /// More `corral power-sim` flags (timing, capacity).
    pub(crate) power_sim_args: Vec<String>,
    /// More `corral controllers` flags (`--sled-grace`).
    pub(crate) controllers_args: Vec<String>,
}

impl Default for RackOptions {
    fn default() -> RackOptions {
        RackOptions {
            controller_concurrency: corral_controllers::DEFAULT_CONCURRENCY,
            power_sim_args: Vec::new(),
            controllers_args: Vec::new(),
        }
    }
}

/// The store a benchmark runs on, and the private etcd behind it if it started one.
pub(crate) struct BenchStore {
    /// For etcd, a prefix of its own (`/corral-bench-RANDOM`), so that runs against a shared
    /// etcd never see each other's keys.
    pub(crate) config: StoreConfig,
    /// Killed (and its data removed) when dropped.
    etcd: Option<EtcdServer>,
}

impl BenchStore {
    /// Resolves `--store`: none is a fresh SQLite file in `scratch`; `etcd:local` starts a
    /// private etcd; anything else is parsed as a store config.
    pub(crate) async fn open(arg: Option<&str>, scratch: &Path) -> anyhow::Result<BenchStore> {
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
            StoreConfig::Etcd { endpoints, tls, .. } => StoreConfig::Etcd {
                endpoints,
                prefix: format!("/corral-bench-{}", rand::random::<u32>()),
                tls,
            },
            other => other,
        };
        Ok(BenchStore { config, etcd })
    }

    /// The process id of the private etcd, if this run started one.
    pub(crate) fn etcd_pid(&self) -> Option<u32> {
        self.etcd.as_ref().and_then(EtcdServer::pid)
    }

    /// Whether the run has a private etcd (its CPU time is reported).
    pub(crate) fn has_etcd(&self) -> bool {
        self.etcd.is_some()
    }

    /// The store as the rack's API server is told it.
    fn for_the_rack(&self) -> corral_harness::Store {
        match &self.config {
            StoreConfig::Sqlite { path } => corral_harness::Store::Sqlite(path.clone()),
            StoreConfig::Etcd {
                endpoints, prefix, ..
            } => corral_harness::Store::Etcd {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
            },
        }
    }
}
