//! The node-agent of one sled: keeps the sled's machine running exactly the Vmms the API
//! assigns it (`spec.sled`), and reports what really runs (`Vmm.status`, `Sled.status`, the
//! heartbeat Lease). `docs/rack.md` is the contract it follows.
//!
//! # Start
//! 1. Open the journal; read the machine's boot id.
//! 2. Register the Sled (create it if absent; never touch an existing spec).
//! 3. Epoch: a boot id the journal has not seen is a new boot, and the epoch becomes
//!    `max(journal epoch, Sled.status.epoch) + 1`, recorded in the journal *before* it is used
//!    or reported ([`next_epoch`]). An agent restart on the same boot keeps the epoch, unless
//!    the Sled's epoch is above the journal's: the sled was fenced while this boot ran, so the
//!    start destroys every VMM on the machine, forgets every journal record and takes
//!    `Sled.status.epoch + 1` (journaled with the records' removal, in one transaction), and
//!    records a `StaleSledEpoch` Event on the Sled.
//! 4. Write `Sled.status` (epoch, capacity, allocation from the journal, `Ready=True`) at once,
//!    so that the controller places Vmms with the new epoch.
//! 5. Run, until shutdown: the reconciler over the Vmms of the sled (a kube-runtime applier on
//!    a reflector with field selector `spec.sled=NAME`, across namespaces), the divergence scan,
//!    the hypervisor's announcements, the debounced Sled status writer, the heartbeat (each
//!    renewal followed by a read of the Sled's epoch) and the V2P table (`v2p/`).
//! 6. Fenced (`fence.rs`: the run learns the sled's epoch rose above its own): the run writes
//!    nothing more, destroys every VMM on the machine at once, stops its tasks, and the agent
//!    starts again at step 1 — a new run on the same machine, with an epoch above the fence's.
//!
//! # Invariants
//! - The epoch never goes down, and a new boot or a fence always raises it.
//! - Nothing is accepted before the epoch is journaled and reported.
//! - No VMM of a fenced life of the sled outlives the agent's learning of the fence: two
//!   copies of a guest must not live on.
//!
//! # No self-fence on a lost Lease
//! An agent that cannot renew its Lease keeps its guests running, for as long as it takes. A
//! control-plane outage (the API server down, a partition between the API server and the
//! sleds) must not kill every guest in the rack (the lesson of kubernetes#28832; Nomad's
//! `stop_on_client_after` makes the opposite choice). Fencing therefore never relies on a
//! timer running on one machine agreeing with a timer on another: a hung or paused process
//! cannot keep a deadline, so "the agent will have stopped its guests by now" is never
//! assumed. A sled is fenced only once its power controller confirms it is off, or an operator
//! confirms it cannot run (the sled-health controller); its agent stops its guests only when it
//! learns of the fence, and if it never learns, the power is off anyway.
//!
//! # Assumptions
//! - The machine ([`Hypervisor`]) and its V2P table ([`V2pTable`]) are given: the agent drives
//!   them through their traits and never knows what is behind them.
//!
//! # Shutdown
//! Cancelling the token stops the watch, lets reconciles under way finish, stops the other
//! tasks and reports `Ready=False` (`AgentStopped`); VMMs keep running (they are not the
//! agent's). An agent whose machine loses power is dropped instead, finishing nothing (see
//! `migration/slot.rs`, `RunGuard`).

use std::sync::Arc;
use std::time::Duration;

use corral_client::events::Recorder;
use corral_client::idempotent::Idempotent;
use corral_client::lease::{self, LeaseConfig};
use corral_crds::{Reason, SLED_LEASE_NAMESPACE, Sled, SledSpec, Vmm};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{self, ReconcileRequest};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, HeartbeatSwitch};
use crate::context::{ApiHandles, Context, LocalSled};
use crate::error::DisplayChain;
use crate::fence::{FenceAlarm, destroy_every_vmm};
use crate::http::Endpoints;
use crate::hypervisor::{BootId, Hypervisor, HypervisorError};
use crate::journal::{EpochRecord, Journal, JournalError};
use crate::ledger::Ledger;
use crate::migration::{AgentSlot, RunGuard, Transfers};
use crate::sled::{Divergence, SledReport, SledReporter};
use crate::v2p::table::V2pTable;
use crate::vmm::{reconcile, scan};

/// How long a clean stop waits to report `Ready=False`.
const STOP_REPORT_BOUND: Duration = Duration::from_secs(2);

/// How many reconcile requests (from the scan, the hypervisor and the transfers) may wait.
const TRIGGER_QUEUE: usize = 4096;

/// How many Vmms are reconciled at once.
const RECONCILE_CONCURRENCY: u16 = 32;

/// The agent's version, reported in `Sled.status.agentVersion`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("journal")]
    Journal(#[from] JournalError),
    #[error("hypervisor")]
    Hypervisor(#[from] HypervisorError),
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

/// The epoch to run with: the journal's on the boot it recorded, unless the Sled reports a
/// higher one (the sled was fenced during this boot); one more than anything seen otherwise.
/// Always above what the Sled reports, or equal to the journal's.
pub fn next_epoch(journal: EpochRecord, reported: u64, boot_id: BootId) -> EpochRecord {
    let same_life = journal.boot_id == Some(boot_id) && reported <= journal.epoch;
    let epoch = if same_life {
        journal.epoch
    } else {
        journal.epoch.max(reported) + 1
    };
    EpochRecord {
        epoch,
        boot_id: Some(boot_id),
    }
}

/// How a run that learned its sled was fenced ended, for the next run's start.
#[derive(Clone, Copy, Debug)]
struct Fenced {
    /// The highest sled epoch the run saw above its own.
    observed: u64,
    /// The VMMs it destroyed.
    destroyed: usize,
}

/// What the start leaves for the run.
struct Started {
    journal: Journal,
    epoch: u64,
    ledger: Ledger,
    reporter: SledReporter,
    recorder: Recorder,
    fence: Arc<FenceAlarm>,
}

/// What the applier of a run consumes: the writer of the Vmm watch cache, the queue of
/// requested reconciles, and the switch that tells the scan the cache has listed once.
struct ApplierInputs {
    cache: reflector::store::Writer<Vmm>,
    requested: mpsc::Receiver<ObjectRef<Vmm>>,
    listed: watch::Sender<bool>,
}

/// One run of the node-agent over a machine and its V2P table.
pub struct Agent {
    config: AgentConfig,
    hypervisor: Arc<dyn Hypervisor>,
    /// The machine's V2P table.
    v2p: Arc<dyn V2pTable>,
    agent_address: Option<String>,
    slot: Option<AgentSlot>,
    endpoints: Endpoints,
}

impl Agent {
    pub fn new(
        config: AgentConfig,
        hypervisor: Arc<dyn Hypervisor>,
        v2p: Arc<dyn V2pTable>,
    ) -> Agent {
        Agent {
            config,
            hypervisor,
            v2p,
            agent_address: None,
            slot: None,
            endpoints: Endpoints::InsecureHttp,
        }
    }

    /// Serves the migration API (`migration::router` over `slot`) with this run's context
    /// while it runs.
    pub fn with_slot(mut self, slot: AgentSlot) -> Agent {
        self.slot = Some(slot);
        self
    }

    /// Reaches other sleds' agents (a migration's source) as `endpoints` says (plain HTTP
    /// unless told).
    pub fn with_endpoints(mut self, endpoints: Endpoints) -> Agent {
        self.endpoints = endpoints;
        self
    }

    /// Reports `address` as `Sled.status.agentAddress` (the URL where the sled's HTTP API
    /// listens, `https://HOST:PORT`).
    pub fn with_address(mut self, address: impl Into<String>) -> Agent {
        self.agent_address = Some(address.into());
        self
    }

    /// Starts (see the module docs) and runs until `shutdown`; a run that learns its sled was
    /// fenced is followed by a new one. Returns an error if the start failed or a task ended
    /// before `shutdown`; a supervisor starts it again. A shutdown during the start abandons it
    /// (every step of it is idempotent).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut fenced = None;
        loop {
            let started = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                started = self.start(fenced) => started?,
            };
            fenced = self.serve(started, shutdown.clone()).await?;
            if fenced.is_none() {
                return Ok(());
            }
        }
    }

    /// Steps 1 to 4 of the module docs; `fenced` is how the previous run ended, if it learned
    /// its sled was fenced.
    async fn start(&self, fenced: Option<Fenced>) -> Result<Started, AgentError> {
        let config = &self.config;
        let name = &config.sled_name;
        let journal = Journal::open(&config.data_dir).await?;
        let boot_id = self.hypervisor.boot_id().await?;
        ensure_namespace(&config.client, SLED_LEASE_NAMESPACE).await?;

        let sleds: Api<Sled> = Api::all(config.client.clone());
        let spec = SledSpec {
            unschedulable: false,
            failure_domain: config.failure_domain.clone(),
            power_controller: config.power_controller_url.clone(),
            fence_confirmed_epoch: None,
        };
        let sled = crate::sled::register(&sleds, name, spec, &config.labels)
            .await
            .map_err(api_error("registering the Sled"))?;
        let recorded = journal.epoch().await?;
        let reported = sled.epoch().max(fenced.map_or(0, |fenced| fenced.observed));
        let epoch = next_epoch(recorded, reported, boot_id);
        let booted = recorded.boot_id != Some(boot_id);
        // The same boot with a higher epoch: the sled was fenced while it ran.
        let new_life = !booted && epoch.epoch > recorded.epoch;
        let mut destroyed = fenced.map_or(0, |fenced| fenced.destroyed);
        if new_life {
            destroyed += destroy_every_vmm(self.hypervisor.as_ref()).await?;
            journal.new_life(epoch).await?;
        } else if epoch != recorded {
            journal.epoch_set(epoch).await?;
        }
        tracing::info!(sled = %name, epoch = epoch.epoch, %boot_id, booted, new_life, "node-agent starting");

        let mut ledger = Ledger::default();
        for record in journal.vmm_list().await? {
            ledger.records.insert(record.uid.clone(), record);
        }
        let fence = Arc::new(FenceAlarm::default());
        let reporter = self
            .first_report(sleds, sled, &ledger, epoch.epoch, fence.clone())
            .await?;
        let recorder =
            Recorder::new(config.client.clone(), format!("node-agent/{name}")).with_host(name);
        if new_life {
            recorder
                .warning(
                    &reporter.sled(),
                    Reason::StaleSledEpoch,
                    format!(
                        "the sled was fenced (epoch {reported}) while its agent ran epoch {}: \
                         destroyed the {destroyed} VMMs on the machine, forgot them, and \
                         rejoined with epoch {}",
                        recorded.epoch, epoch.epoch
                    ),
                )
                .await;
        }
        if booted {
            recorder
                .normal(
                    &reporter.sled(),
                    Reason::SledBooted,
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
            fence,
        })
    }

    /// Step 4 of the module docs: the Sled's status as the journal and the epoch make it,
    /// written at once; returns its writer.
    async fn first_report(
        &self,
        sleds: Api<Sled>,
        sled: Sled,
        ledger: &Ledger,
        epoch: u64,
        fence: Arc<FenceAlarm>,
    ) -> Result<SledReporter, AgentError> {
        let config = &self.config;
        let report = SledReport {
            capacity: config.capacity,
            allocated: ledger.allocated(),
            vmms: ledger.holding(),
            epoch,
            agent_version: AGENT_VERSION.to_string(),
            agent_address: self.agent_address.clone(),
            hypervisor: self.hypervisor.description(),
            migration_bandwidth: self.hypervisor.migration_bandwidth(),
            migration_downtime_budget_ms: self.hypervisor.downtime_budget().as_millis() as u64,
            diverged: Divergence::converged(),
            running: true,
            unknown: Vec::new(),
            v2p: None,
        };
        let reporter = SledReporter::new(sleds, sled, report, config.intervals.sled_status, fence);
        reporter
            .write_now()
            .await
            .map_err(api_error("writing the Sled status"))?;
        Ok(reporter)
    }

    /// Steps 5 and 6 of the module docs, until `shutdown` or a fence (then how it ended).
    async fn serve(
        &self,
        started: Started,
        shutdown: CancellationToken,
    ) -> Result<Option<Fenced>, AgentError> {
        let (ctx, applier_inputs) = self.context(started);
        if let Some(slot) = &self.slot {
            slot.set(Some(ctx.clone()));
        }
        let _transfers = RunGuard {
            slot: self.slot.clone(),
            ctx: ctx.clone(),
        };
        let stop = shutdown.child_token();
        let cache_listed = applier_inputs.listed.subscribe();
        let mut tasks = JoinSet::new();
        self.spawn_tasks(&mut tasks, &ctx, cache_listed.clone(), &stop);
        tasks.spawn(run_applier(
            ctx.clone(),
            applier_inputs,
            cache_listed,
            stop.clone(),
        ));
        let ended = tokio::select! {
            result = wait_for_tasks(&mut tasks, &ctx.sled.name, &shutdown, &stop) => Some(result),
            () = ctx.sled.fence.raised() => None,
        };
        let result = match ended {
            Some(result) => result.map(|()| None),
            None => {
                // Before anything else: the guests were released to restart elsewhere.
                let destroyed = destroy_on_fence(&ctx).await;
                stop.cancel();
                let _ = wait_for_tasks(&mut tasks, &ctx.sled.name, &shutdown, &stop).await;
                Ok(Some(Fenced {
                    observed: ctx.sled.fence.observed(),
                    destroyed,
                }))
            }
        };
        end_run(&ctx, self.slot.as_ref(), &shutdown).await;
        result
    }

    /// The context of this run, and what its applier consumes.
    fn context(&self, started: Started) -> (Arc<Context>, ApplierInputs) {
        let config = &self.config;
        let (vmms, cache) = reflector::store::<Vmm>();
        let (triggers, requested) = mpsc::channel(TRIGGER_QUEUE);
        let ctx = Arc::new(Context {
            sled: LocalSled {
                name: config.sled_name.clone(),
                epoch: started.epoch,
                capacity: config.capacity,
                reporter: started.reporter,
                fence: started.fence,
            },
            api: ApiHandles {
                client: config.client.clone(),
                recorder: started.recorder,
                vmms,
                triggers,
            },
            intervals: config.intervals,
            hypervisor: self.hypervisor.clone(),
            journal: started.journal,
            ledger: Mutex::new(started.ledger),
            transfers: Transfers::new(
                self.hypervisor.migration_bandwidth(),
                self.hypervisor.downtime_budget(),
                self.endpoints.clone(),
            ),
            v2p: self.v2p.clone(),
        });
        let (listed, _) = watch::channel(false);
        let inputs = ApplierInputs {
            cache,
            requested,
            listed,
        };
        (ctx, inputs)
    }

    /// Every task of the run but the applier: the Sled status writer, the heartbeat, the
    /// divergence scan (once the Vmm cache has listed), the V2P task, and the forwarding of
    /// the hypervisor's announcements.
    fn spawn_tasks(
        &self,
        tasks: &mut JoinSet<()>,
        ctx: &Arc<Context>,
        cache_listed: watch::Receiver<bool>,
        stop: &CancellationToken,
    ) {
        let config = &self.config;
        let scan_now = Arc::new(Notify::new());
        {
            let ctx = ctx.clone();
            let stop = stop.clone();
            tasks.spawn(async move { ctx.sled.reporter.run(stop).await });
        }
        tasks.spawn(heartbeat(
            ctx.clone(),
            config.heartbeats.clone(),
            stop.clone(),
        ));
        tasks.spawn(scan::run(
            ctx.clone(),
            config.intervals.scan,
            cache_listed,
            scan_now.clone(),
            stop.clone(),
        ));
        tasks.spawn(crate::v2p::run(
            ctx.clone(),
            self.v2p.clone(),
            config.intervals.scan,
            stop.clone(),
        ));
        tasks.spawn(scan::forward_changes(
            ctx.clone(),
            self.hypervisor.changes(),
            scan_now,
            stop.clone(),
        ));
    }
}

/// The reconciler: a kube-runtime applier over the sled's Vmms (watched across namespaces
/// with the field selector `spec.sled=NAME`) and the requested reconciles, until `stop`.
async fn run_applier(
    ctx: Arc<Context>,
    inputs: ApplierInputs,
    cache_listed: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let ApplierInputs {
        cache,
        requested,
        listed,
    } = inputs;
    let vmms: Api<Vmm> = Api::all(ctx.api.client.clone());
    let selector = format!("spec.sled={}", ctx.sled.name);
    let watch = reflector::reflector(
        cache,
        watcher(vmms, watcher::Config::default().fields(&selector))
            .backoff(corral_client::backoff::WatchBackoff::default()),
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
    let requested = futures::stream::unfold(requested, |mut queue| async move {
        let target = queue.recv().await?;
        Some((Ok(ReconcileRequest::from(target)), queue))
    })
    .boxed();
    let queue =
        futures::stream::select(watch, requested).take_until(stop.clone().cancelled_owned());
    let sled_name = ctx.sled.name.clone();
    let applier = controller::applier(
        |vmm, ctx| Box::pin(reconcile::reconcile(vmm, ctx)),
        reconcile::error_policy,
        ctx.clone(),
        ctx.api.vmms.clone(),
        queue,
        controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
    );
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
    // The applier ends gracefully only once its runner has started, which waits for the first
    // list. Stopped before that, nothing runs: drop it.
    let never_started = async {
        stop.cancelled().await;
        if *cache_listed.borrow() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = run => {}
        _ = never_started => {}
    }
}

/// Waits for every task of the run. One task ending means the agent is stopping: the others
/// are stopped too. An end before `shutdown` is an error (a supervisor starts the agent again).
async fn wait_for_tasks(
    tasks: &mut JoinSet<()>,
    sled_name: &str,
    shutdown: &CancellationToken,
    stop: &CancellationToken,
) -> Result<(), AgentError> {
    let mut result = Ok(());
    while let Some(ended) = tasks.join_next().await {
        if let Err(error) = ended {
            tracing::error!(sled = %sled_name, %error, "a node-agent task failed");
        }
        if !shutdown.is_cancelled() && !stop.is_cancelled() {
            result = Err(AgentError::TaskEnded);
        }
        stop.cancel();
    }
    result
}

/// Ends the run once its tasks have: the transfers end with it (a target's journal then says
/// the transfer broke, a source's that it never paused or is waiting for the verdict), a clean
/// stop reports `Ready=False` so that nothing is placed here while no agent watches, and the
/// journal closes.
async fn end_run(ctx: &Context, slot: Option<&AgentSlot>, shutdown: &CancellationToken) {
    let name = &ctx.sled.name;
    if let Some(slot) = slot {
        slot.set(None);
    }
    ctx.transfers.shutdown().await;
    if shutdown.is_cancelled() {
        let reporter = &ctx.sled.reporter;
        reporter.update(|report| report.running = false);
        match tokio::time::timeout(STOP_REPORT_BOUND, reporter.write_now()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(sled = %name, %error, "reporting the stop")
            }
            Err(_) => tracing::warn!(sled = %name, "reporting the stop timed out"),
        }
    }
    ctx.journal.close().await;
    tracing::info!(sled = %name, "node-agent stopped");
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
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .or_exists()
        .map_err(api_error("creating the lease namespace"))?;
    Ok(())
}

/// Renews the sled's Lease every `intervals.heartbeat` unless paused, and reads the Sled's
/// epoch after each renewal: one above the run's raises the fence alarm. A failed renewal is
/// logged and changes nothing else (the module docs: no self-fence on a lost Lease).
async fn heartbeat(ctx: Arc<Context>, switch: HeartbeatSwitch, shutdown: CancellationToken) {
    let sled_name = &ctx.sled.name;
    let mut config = LeaseConfig::new(
        SLED_LEASE_NAMESPACE,
        sled_name,
        &lease::identity(&format!("node-agent-{sled_name}")),
    );
    config.duration = ctx.intervals.lease_duration;
    let sleds: Api<Sled> = Api::all(ctx.api.client.clone());
    loop {
        if !switch.is_paused() {
            match lease::heartbeat(&ctx.api.client, &config).await {
                Ok(_) => crate::metrics::heartbeat_renewed(sled_name),
                Err(error) => {
                    tracing::warn!(sled = %sled_name, %error, "renewing the heartbeat lease")
                }
            }
        }
        match sleds.get_opt(sled_name).await {
            Ok(Some(sled)) if sled.epoch() > ctx.sled.epoch => ctx
                .sled
                .fence
                .raise(sled.epoch(), "the Sled's epoch is above this run's"),
            Ok(_) => {}
            Err(error) => tracing::debug!(sled = %sled_name, %error, "reading the Sled's epoch"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ctx.intervals.heartbeat) => {}
        }
    }
}

/// Destroys every VMM on the machine of a fenced run; how many there were (0 if the machine
/// could not be listed: the next start destroys them).
async fn destroy_on_fence(ctx: &Context) -> usize {
    match destroy_every_vmm(ctx.hypervisor.as_ref()).await {
        Ok(destroyed) => {
            tracing::warn!(sled = %ctx.sled.name, epoch = ctx.sled.epoch, destroyed, "fenced: destroyed every VMM on the machine");
            destroyed
        }
        Err(error) => {
            tracing::error!(sled = %ctx.sled.name, error = %DisplayChain(&error), "fenced: destroying the VMMs");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_boot_or_a_fence_raises_the_epoch_above_everything_seen() {
        let boot = BootId::random();
        let other = BootId::random();
        let cases = [
            // (journal epoch, journal boot, sled reports, expected)
            (0, None, 0, 1),
            (3, Some(other), 3, 4),
            (3, Some(other), 7, 8),
            (9, Some(other), 2, 10),
            (3, Some(boot), 3, 3),
            (3, Some(boot), 2, 3),
            // Fenced during this boot: above the fence's epoch.
            (3, Some(boot), 4, 5),
            (3, Some(boot), 7, 8),
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
