//! The node-agent of one sled: keeps the sled's machine running exactly the Vmms the API
//! assigns it (`spec.sled`), and reports what really runs (`Vmm.status`, `Sled.status`, the
//! heartbeat Lease). `docs/rack.md` is the contract it follows.
//!
//! # Start
//! 1. Open the journal; read the machine's boot id.
//! 2. Register the Sled (create it if absent; never touch an existing spec).
//! 3. Epoch: a boot id the journal has not seen is a new boot, and the epoch becomes
//!    `max(journal epoch, Sled.status.epoch) + 1`, recorded in the journal *before* it is used
//!    or reported ([`next_epoch`]). An agent restart on the same boot keeps the epoch.
//! 4. Write `Sled.status` (epoch, capacity, allocation from the journal, `Ready=True`) at once,
//!    so that the controller places Vmms with the new epoch.
//! 5. Run, until shutdown: the reconciler over the Vmms of the sled (a kube-runtime applier on
//!    a reflector with field selector `spec.sled=NAME`, across namespaces), the divergence scan,
//!    the hypervisor's announcements, the debounced Sled status writer, the heartbeat and
//!    the V2P table (`v2p.rs`).
//!
//! # Invariants
//! - The epoch never goes down, and a new boot always raises it.
//! - Nothing is accepted before the epoch is journaled and reported.
//!
//! # Shutdown
//! Cancelling the token stops the watch, lets reconciles under way finish, stops the other
//! tasks and reports `Ready=False` (`AgentStopped`); VMMs keep running (they are not the
//! agent's). An agent whose machine loses power is
//! aborted instead (see `power.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral_client::events::Recorder;
use corral_client::lease::{self, LeaseConfig};
use corral_crds::{Resources, SLED_LEASE_NAMESPACE, Sled, SledSpec, Vmm};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{self, ReconcileRequest};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::hypervisor::{BootId, Hypervisor, HypervisorError};
use crate::journal::{EpochRecord, Journal, JournalError};
use crate::reconcile::{self, Context, DisplayChain, Ledger};
use crate::sim::SimTiming;
use crate::sled::{Divergence, SledReport, SledReporter};
use crate::v2p_table::{SimV2pTable, V2pTableError};

/// How long a clean stop waits to report `Ready=False`.
const STOP_REPORT_BOUND: Duration = Duration::from_secs(2);

/// The agent's version, reported in `Sled.status.agentVersion`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often the agent does what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    /// A Vmm with nothing under way is reconciled again after this long (a resync).
    pub reconcile: Duration,
    /// The divergence scan.
    pub scan: Duration,
    /// Heartbeat Lease renewals.
    pub heartbeat: Duration,
    /// The heartbeat Lease's `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// At most one `Sled.status` write per this long.
    pub sled_status: Duration,
    /// A graceful stop that takes longer ends in destroy.
    pub stop_timeout: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            reconcile: Duration::from_secs(30),
            scan: Duration::from_secs(2),
            heartbeat: Duration::from_secs(5),
            lease_duration: Duration::from_secs(15),
            sled_status: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(30),
        }
    }
}

/// Pauses and resumes the heartbeat (fault injection). Clones share the switch, so it
/// survives agent restarts of one sled.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatSwitch(Arc<AtomicBool>);

impl HeartbeatSwitch {
    pub fn pause(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a sled's agent (and its simulated machine) is configured with.
#[derive(Clone)]
pub struct AgentConfig {
    pub client: kube::Client,
    pub sled_name: String,
    /// Where the journal and the simulated machine live.
    pub data_dir: PathBuf,
    /// What the sled offers to VMMs.
    pub capacity: Resources,
    pub failure_domain: Option<String>,
    /// Written to `Sled.spec.powerController` when the agent creates the Sled.
    pub power_controller_url: Option<String>,
    /// `metadata.labels` of the Sled when the agent creates it.
    pub labels: BTreeMap<String, String>,
    /// Where the fault-injection API listens (simulated sleds only); reported as
    /// `Sled.status.agentAddress`.
    pub fault_listen: Option<std::net::SocketAddr>,
    /// Boot and stop times of the simulated machine.
    pub sim: SimTiming,
    pub intervals: Intervals,
    pub heartbeats: HeartbeatSwitch,
}

impl AgentConfig {
    /// A configuration with the defaults: 64 CPUs and 256 GiB, no failure domain, no power
    /// controller, no labels, no fault API, default timing.
    pub fn new(client: kube::Client, sled_name: impl Into<String>, data_dir: PathBuf) -> Self {
        AgentConfig {
            client,
            sled_name: sled_name.into(),
            data_dir,
            capacity: Resources {
                cpus: 64,
                memory_mib: 256 * 1024,
            },
            failure_domain: None,
            power_controller_url: None,
            labels: BTreeMap::new(),
            fault_listen: None,
            sim: SimTiming::default(),
            intervals: Intervals::default(),
            heartbeats: HeartbeatSwitch::default(),
        }
    }
}

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("journal")]
    Journal(#[from] JournalError),
    #[error("hypervisor")]
    Hypervisor(#[from] HypervisorError),
    #[error("V2P table")]
    V2pTable(#[from] V2pTableError),
    #[error("{operation}")]
    Api {
        operation: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("a node-agent task ended on its own")]
    TaskEnded,
}

fn api_error(operation: &'static str) -> impl FnOnce(kube::Error) -> AgentError {
    move |source| AgentError::Api { operation, source }
}

/// The epoch to run with: the journal's on the boot it recorded, one more than anything seen
/// on a new boot. Never lower than what the Sled reports.
pub fn next_epoch(journal: EpochRecord, reported: u64, boot_id: BootId) -> EpochRecord {
    let highest = journal.epoch.max(reported);
    let epoch = if journal.boot_id == Some(boot_id) {
        highest
    } else {
        highest + 1
    };
    EpochRecord {
        epoch,
        boot_id: Some(boot_id),
    }
}

/// What the start leaves for the run.
struct Started {
    journal: Journal,
    epoch: u64,
    ledger: Ledger,
    reporter: SledReporter,
    recorder: Recorder,
    v2p: Arc<SimV2pTable>,
}

/// One run of the node-agent over a hypervisor.
pub struct Agent {
    config: AgentConfig,
    hypervisor: Arc<dyn Hypervisor>,
    agent_address: Option<String>,
    slot: Option<crate::migration::AgentSlot>,
    /// The machine's V2P table (opened from the data directory if not given).
    v2p: Option<Arc<SimV2pTable>>,
}

impl Agent {
    pub fn new(config: AgentConfig, hypervisor: Arc<dyn Hypervisor>) -> Agent {
        Agent {
            config,
            hypervisor,
            agent_address: None,
            slot: None,
            v2p: None,
        }
    }

    /// Serves the migration API (`migration::router` over `slot`) with this run's context
    /// while it runs.
    pub fn with_slot(mut self, slot: crate::migration::AgentSlot) -> Agent {
        self.slot = Some(slot);
        self
    }

    /// Programs `table` (shared with the machine's fault API) as the sled's V2P table.
    pub fn with_v2p_table(mut self, table: Arc<SimV2pTable>) -> Agent {
        self.v2p = Some(table);
        self
    }

    /// Reports `address` as `Sled.status.agentAddress` (where the fault API really listens).
    pub fn with_address(mut self, address: impl Into<String>) -> Agent {
        self.agent_address = Some(address.into());
        self
    }

    /// Starts (see the module docs) and runs until `shutdown`. Returns an error if the start
    /// failed or a task ended before `shutdown`; a supervisor starts it again. A shutdown
    /// during the start abandons it (every step of it is idempotent).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let started = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            started = self.start() => started?,
        };
        self.serve(started, shutdown).await
    }

    /// Steps 1 to 4 of the module docs.
    async fn start(&self) -> Result<Started, AgentError> {
        let Agent {
            config,
            hypervisor,
            agent_address,
            v2p,
            ..
        } = self;
        let client = config.client.clone();
        let name = config.sled_name.clone();
        let journal = Journal::open(&config.data_dir).await?;
        let boot_id = hypervisor.boot_id().await?;
        let v2p = match v2p {
            Some(table) => {
                table.boot(boot_id)?;
                table.clone()
            }
            None => Arc::new(SimV2pTable::open(&config.data_dir, boot_id)?),
        };
        ensure_namespace(&client, SLED_LEASE_NAMESPACE).await?;

        let sleds: Api<Sled> = Api::all(client.clone());
        let spec = SledSpec {
            unschedulable: false,
            failure_domain: config.failure_domain.clone(),
            power_controller: config.power_controller_url.clone(),
        };
        let sled = crate::sled::register(&sleds, &name, spec, &config.labels)
            .await
            .map_err(api_error("registering the Sled"))?;
        let recorded = journal.epoch().await?;
        let reported = sled.status.as_ref().map_or(0, |s| s.epoch);
        let epoch = next_epoch(recorded, reported, boot_id);
        if epoch != recorded {
            journal.epoch_set(epoch).await?;
        }
        let booted = recorded.boot_id != Some(boot_id);
        tracing::info!(sled = %name, epoch = epoch.epoch, %boot_id, booted, "node-agent starting");

        let mut ledger = Ledger::default();
        for record in journal.vmm_list().await? {
            ledger.records.insert(record.uid.clone(), record);
        }
        let report = SledReport {
            capacity: config.capacity,
            allocated: ledger.allocated(),
            vmms: ledger.holding(),
            epoch: epoch.epoch,
            agent_version: AGENT_VERSION.to_string(),
            agent_address: agent_address.clone(),
            migration_bandwidth: hypervisor.migration_bandwidth(),
            diverged: Divergence::converged(),
            running: true,
            unknown: Vec::new(),
            v2p: None,
        };
        let reporter = SledReporter::new(sleds.clone(), sled, report, config.intervals.sled_status);
        reporter
            .write_now()
            .await
            .map_err(api_error("writing the Sled status"))?;
        let recorder = Recorder::new(client.clone(), format!("node-agent/{name}")).with_host(&name);
        if booted {
            recorder
                .normal(
                    &reporter.sled(),
                    corral_crds::Reason::SledBooted,
                    format!("sled booted ({boot_id}), epoch {}", epoch.epoch),
                )
                .await;
        }
        Ok(Started {
            journal,
            epoch: epoch.epoch,
            ledger,
            reporter,
            recorder,
            v2p,
        })
    }

    /// Step 5 of the module docs, until `shutdown`.
    async fn serve(self, started: Started, shutdown: CancellationToken) -> Result<(), AgentError> {
        let Agent {
            config,
            hypervisor,
            slot,
            ..
        } = self;
        let Started {
            journal,
            epoch,
            ledger,
            reporter,
            recorder,
            v2p,
        } = started;
        let client = config.client.clone();
        let name = config.sled_name.clone();
        let (store, writer) = reflector::store::<Vmm>();
        let (triggers, trigger_queue) = tokio::sync::mpsc::channel(4096);
        let ctx = Arc::new(Context {
            sled_name: name.clone(),
            epoch,
            capacity: config.capacity,
            stop_timeout: config.intervals.stop_timeout,
            reconcile_interval: config.intervals.reconcile,
            client: client.clone(),
            hypervisor: hypervisor.clone(),
            journal: journal.clone(),
            ledger: tokio::sync::Mutex::new(ledger),
            recorder,
            sled: reporter,
            store: store.clone(),
            triggers,
            transfers: crate::migration::Transfers::new(hypervisor.migration_bandwidth()),
        });
        if let Some(slot) = &slot {
            slot.set(Some(ctx.clone()));
        }
        let _transfers = crate::migration::RunGuard {
            slot: slot.clone(),
            ctx: ctx.clone(),
        };

        let stop = shutdown.child_token();
        let scan_now = Arc::new(Notify::new());
        // Whether the watch cache has listed once. (`Store::wait_until_ready` wakes only its
        // last waiter, and the applier already waits on it.)
        let (listed, cache_listed) = tokio::sync::watch::channel(false);
        let listed_rx_for_applier = cache_listed.clone();
        let mut tasks = JoinSet::new();
        {
            let ctx = ctx.clone();
            let stop = stop.clone();
            tasks.spawn(async move { ctx.sled.run(stop).await });
        }
        tasks.spawn(heartbeat(
            client.clone(),
            name.clone(),
            config.intervals,
            config.heartbeats.clone(),
            stop.clone(),
        ));
        tasks.spawn(crate::scan::run(
            ctx.clone(),
            config.intervals.scan,
            cache_listed,
            scan_now.clone(),
            stop.clone(),
        ));
        tasks.spawn(crate::v2p::run(
            ctx.clone(),
            v2p,
            config.intervals.scan,
            stop.clone(),
        ));
        tasks.spawn(crate::scan::forward_changes(
            ctx.clone(),
            hypervisor.changes(),
            scan_now,
            stop.clone(),
        ));

        let vmms: Api<Vmm> = Api::all(client);
        let selector = format!("spec.sled={name}");
        let watch = reflector::reflector(
            writer,
            watcher(vmms, watcher::Config::default().fields(&selector)).default_backoff(),
        )
        .inspect_ok(move |event| {
            // The reflector applied the first complete list to the store before yielding this.
            if matches!(event, watcher::Event::InitDone) {
                listed.send_replace(true);
            }
        })
        .applied_objects()
        .map_ok(|vmm| ReconcileRequest::from(ObjectRef::from_obj(&vmm)))
        .boxed();
        let requested = futures::stream::unfold(trigger_queue, |mut queue| async move {
            let target = queue.recv().await?;
            Some((Ok(ReconcileRequest::from(target)), queue))
        })
        .boxed();
        let queue =
            futures::stream::select(watch, requested).take_until(stop.clone().cancelled_owned());
        let applier = controller::applier(
            |vmm, ctx| Box::pin(reconcile::reconcile(vmm, ctx)),
            reconcile::error_policy,
            ctx.clone(),
            store,
            queue,
            controller::Config::default().concurrency(32),
        );
        let sled_name = name.clone();
        let applier_stop = stop.clone();
        let listed_before_stop = listed_rx_for_applier;
        tasks.spawn(async move {
            let run = applier.for_each(|result| {
                if let Err(error) = result {
                    match error {
                        // A request for a Vmm that left the cache: nothing to do.
                        controller::Error::ObjectNotFound(_) => {}
                        // The watch failed; the watcher retries with backoff.
                        controller::Error::QueueError(error) => {
                            tracing::warn!(sled = %sled_name, error = %DisplayChain(&error), "watching Vmms");
                        }
                        error => tracing::debug!(sled = %sled_name, error = %DisplayChain(&error), "applier"),
                    }
                }
                std::future::ready(())
            });
            // The applier ends gracefully only once its runner has started, which waits for
            // the first list. Stopped before that, nothing runs: drop it.
            let never_started = async {
                applier_stop.cancelled().await;
                if *listed_before_stop.borrow() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = run => {}
                _ = never_started => {}
            }
        });

        let mut result = Ok(());
        while let Some(ended) = tasks.join_next().await {
            if let Err(error) = ended {
                tracing::error!(sled = %name, %error, "a node-agent task failed");
            }
            if !shutdown.is_cancelled() && !stop.is_cancelled() {
                result = Err(AgentError::TaskEnded);
            }
            // One task ending means the agent is stopping: stop the others too.
            stop.cancel();
        }
        // Transfers end with the run: a target's journal then says the transfer broke, a
        // source's that it never paused (or is waiting for the verdict).
        if let Some(slot) = &slot {
            slot.set(None);
        }
        ctx.transfers.shutdown().await;
        if shutdown.is_cancelled() {
            // A clean stop says so, so that nothing is placed here while no agent watches.
            ctx.sled.update(|report| report.running = false);
            match tokio::time::timeout(STOP_REPORT_BOUND, ctx.sled.write_now()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(sled = %name, %error, "reporting the stop")
                }
                Err(_) => tracing::warn!(sled = %name, "reporting the stop timed out"),
            }
        }
        journal.close().await;
        tracing::info!(sled = %name, "node-agent stopped");
        result
    }
}

/// Creates `name` unless it exists (the heartbeat Leases live in `kube-node-lease`).
async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<(), AgentError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_opt(name)
        .await
        .map_err(api_error("reading the lease namespace"))?
        .is_some()
    {
        return Ok(());
    }
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(api_error("creating the lease namespace")(source)),
    }
}

/// Renews the sled's Lease every `intervals.heartbeat` unless paused.
async fn heartbeat(
    client: kube::Client,
    sled_name: String,
    intervals: Intervals,
    switch: HeartbeatSwitch,
    shutdown: CancellationToken,
) {
    let mut config = LeaseConfig::new(
        SLED_LEASE_NAMESPACE,
        &sled_name,
        &lease::identity(&format!("node-agent-{sled_name}")),
    );
    config.duration = intervals.lease_duration;
    loop {
        if !switch.is_paused()
            && let Err(error) = lease::heartbeat(&client, &config).await
        {
            tracing::warn!(sled = %sled_name, %error, "renewing the heartbeat lease");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(intervals.heartbeat) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_boot_raises_the_epoch_above_everything_seen() {
        let boot = BootId::random();
        let other = BootId::random();
        let cases = [
            // (journal epoch, journal boot, sled reports, expected)
            (0, None, 0, 1),
            (3, Some(other), 3, 4),
            (3, Some(other), 7, 8),
            (9, Some(other), 2, 10),
            (3, Some(boot), 3, 3),
            (3, Some(boot), 5, 5),
        ];
        for (journal_epoch, journal_boot, reported, expected) in cases {
            let journal = EpochRecord {
                epoch: journal_epoch,
                boot_id: journal_boot,
            };
            let next = next_epoch(journal, reported, boot);
            assert_eq!(next.epoch, expected, "{journal:?} reported {reported}");
            assert_eq!(next.boot_id, Some(boot));
        }
    }
}
