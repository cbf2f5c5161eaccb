//! The V2P controller: keeps one `VpcRoutes` per VPC mapping every IP of the VPC's instances to
//! the sled the instance really runs on, and reports how many Ready sleds applied it.
//!
//! An instance *is placed* if (and only if) its `status.state` is `Running` or `Migrating` and
//! its status names a sled and an active Vmm (during a migration that is still the source: make
//! before break). Its NICs then claim their IPs at `status.sled` with
//! `status.locationGeneration`.
//!
//! Reads Instances, VpcRoutes and Sleds (watch caches), and Instances live (before a removal).
//! Writes `VpcRoutes` (spec and status: it alone), creating one when a VPC first has a placed
//! instance, and `IpConflict` Events on the Instances that lose an IP. [`plan::merge`] and
//! [`plan::plan`] decide; this file wires the watches, coalesces changes and reads live; the
//! kit (`crate::kit`) executes each VPC's plan and keeps its outcome.
//!
//! # Invariants
//! - The rules of [`plan::merge`] (docs/migration.md, "V2P"): never backwards, never removed on a stale
//!   read (a cache that lacks an instance proves nothing: the Instance is read live first),
//!   first claim wins.
//! - Every write is conditional on the resourceVersion it was planned from, so `since` (the
//!   generation the write makes: the planned-from generation plus one) is exact.
//!
//! # Latency and coalescing
//! A change marks its VPCs *dirty*; the worker waits [`COALESCE`] for the rest of a burst, then
//! writes each dirty VPC once (VPCs in parallel). Changes arriving during a write make one more
//! write. `status.applied` follows the Sleds' acknowledgements at most every
//! [`STATUS_INTERVAL`], so a hundred acknowledgements are a few status writes, not a hundred.
//!
//! # Assumptions
//! - Only the leader runs this (`lib.rs`); a write may stop at any `.await`: the next pass plans
//!   again from what was stored.
//!
//! # Caveats
//! - One object per VPC: every change of a VPC of N instances writes its N mappings, and every
//!   node-agent's watch receives them. A VPC of thousands of instances wants sharding (several
//!   VpcRoutes per VPC), which this does not do.
//! - A VpcRoutes is never deleted, only emptied.
//!
//! # Not responsible for
//! - Programming the sleds' tables (each node-agent, `node-agent/src/v2p/`).
//! - Holding a migration until the previous move converged (the migration controller, with
//!   [`converged_at`]).

pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_crds::{Instance, Sled, VpcRoutes, VpcRoutesSpec, VpcRoutesStatus};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::kit::expectations::resource_version;
use crate::kit::{
    Apply, Board, Cache, Caches, Effects, Error, Outcome, Readiness, StatusWrite, execute,
};
use plan::{Action, Report};
pub use plan::{acknowledged, converged_at};

/// How long the worker waits after the first change for the rest of a burst.
pub const COALESCE: Duration = Duration::from_millis(5);
/// `status.applied` is rewritten at most this often per pass.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// Every VPC is planned again this often even if nothing seems to change.
pub const RESYNC: Duration = Duration::from_secs(30);
/// VPCs written at once.
const PARALLEL: usize = 16;

type InstanceKey = (String, String);

/// Which VPCs each instance is in, and the reverse, fed by the Instance watch.
#[derive(Default)]
struct Membership {
    vpcs_of: HashMap<InstanceKey, BTreeSet<String>>,
    members: HashMap<String, BTreeSet<InstanceKey>>,
}

impl Membership {
    /// Records `vpcs` as the instance's VPCs; returns the VPCs it is or was in.
    fn set(&mut self, key: &InstanceKey, vpcs: BTreeSet<String>) -> BTreeSet<String> {
        let old = self.vpcs_of.remove(key).unwrap_or_default();
        for vpc in old.difference(&vpcs) {
            if let Some(members) = self.members.get_mut(vpc) {
                members.remove(key);
            }
        }
        for vpc in &vpcs {
            self.members
                .entry(vpc.clone())
                .or_default()
                .insert(key.clone());
        }
        let touched = old.union(&vpcs).cloned().collect();
        if !vpcs.is_empty() {
            self.vpcs_of.insert(key.clone(), vpcs);
        }
        touched
    }
}

fn key_of(instance: &Instance) -> InstanceKey {
    (
        instance.namespace().unwrap_or_default(),
        instance.name_any(),
    )
}

fn vpcs_of(instance: &Instance) -> BTreeSet<String> {
    instance
        .spec
        .nics
        .iter()
        .map(|nic| nic.vpc.clone())
        .collect()
}

/// The V2P controller: its caches, and the state its taps and its worker share.
pub struct V2pController {
    effects: Effects,
    board: Board,
    readiness: Readiness,
    instances: Cache<Instance>,
    routes: Cache<VpcRoutes>,
    sleds: Cache<Sled>,
    membership: Mutex<Membership>,
    dirty: Mutex<BTreeSet<String>>,
    status_dirty: Mutex<BTreeSet<String>>,
    wake: Notify,
    /// The VpcRoutes as this controller last wrote them (newer than the cache until it
    /// catches up).
    written: Mutex<HashMap<String, VpcRoutes>>,
    /// (vpc, ip, namespace, instance) conflicts already reported.
    reported: Mutex<BTreeSet<(String, String, String, String)>>,
}

type ConflictKey = (String, String, String, String);

impl V2pController {
    fn mark(&self, vpcs: impl IntoIterator<Item = String>) {
        self.dirty.lock().expect("dirty lock").extend(vpcs);
        // Always: a wake-up the worker consumed while it could not act must not be the last.
        self.wake.notify_one();
    }

    fn mark_status(&self, vpcs: impl IntoIterator<Item = String>) {
        self.status_dirty.lock().expect("dirty lock").extend(vpcs);
        self.wake.notify_one();
    }

    fn all_vpcs(&self) -> BTreeSet<String> {
        let mut vpcs: BTreeSet<String> = self.routes.all().iter().map(|r| r.name_any()).collect();
        let membership = self.membership.lock().expect("membership lock");
        vpcs.extend(membership.members.keys().cloned());
        vpcs
    }

    fn observe_instance(&self, event: &watcher::Event<Instance>) {
        match event {
            watcher::Event::Apply(instance) | watcher::Event::InitApply(instance) => {
                let touched = self
                    .membership
                    .lock()
                    .expect("membership lock")
                    .set(&key_of(instance), vpcs_of(instance));
                if matches!(event, watcher::Event::Apply(_)) {
                    self.mark(touched);
                }
            }
            watcher::Event::Delete(instance) => {
                let touched = self
                    .membership
                    .lock()
                    .expect("membership lock")
                    .set(&key_of(instance), BTreeSet::new());
                self.mark(touched);
            }
            watcher::Event::Init => {}
            watcher::Event::InitDone => self.listed_once(),
        }
    }

    fn observe_routes(&self, event: &watcher::Event<VpcRoutes>) {
        match event {
            watcher::Event::Delete(routes) => {
                self.written
                    .lock()
                    .expect("written lock")
                    .remove(&routes.name_any());
                self.mark([routes.name_any()]);
            }
            // Someone else's write (or a cache catching up with ours): plan again.
            watcher::Event::Apply(routes) => {
                let ours = self
                    .written
                    .lock()
                    .expect("written lock")
                    .get(&routes.name_any())
                    .is_some_and(|w| resource_version(w) == resource_version(routes));
                if !ours {
                    self.mark([routes.name_any()]);
                }
            }
            watcher::Event::InitDone => self.listed_once(),
            _ => {}
        }
    }

    fn observe_sled(&self, event: &watcher::Event<Sled>) {
        match event {
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                self.mark_status(self.all_vpcs())
            }
            watcher::Event::InitDone => self.listed_once(),
            _ => {}
        }
    }

    /// A watch listed: every VPC is planned again (once every watch has, see the worker).
    fn listed_once(&self) {
        tracing::debug!("v2p controller: a watch listed");
        self.mark(self.all_vpcs());
    }

    /// The VpcRoutes of `vpc` as last stored: the cache, or our own later write.
    fn current(&self, vpc: &str) -> Option<VpcRoutes> {
        let cached = self.routes.get(vpc);
        let written = self.written.lock().expect("written lock").get(vpc).cloned();
        match (cached, written) {
            (Some(cached), Some(written))
                if resource_version(&written) > resource_version(&*cached) =>
            {
                Some(written)
            }
            (Some(cached), _) => Some((*cached).clone()),
            (None, written) => written,
        }
    }

    fn claims(&self, vpc: &str) -> (Vec<plan::Claim>, HashMap<InstanceKey, Arc<Instance>>) {
        let members: Vec<InstanceKey> = self
            .membership
            .lock()
            .expect("membership lock")
            .members
            .get(vpc)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        let mut claims = Vec::new();
        let mut instances = HashMap::new();
        for (namespace, name) in members {
            let Some(instance) = self.instances.get_in(&namespace, &name) else {
                continue;
            };
            claims.extend(plan::claims(&instance, vpc));
            instances.insert((namespace, name), instance);
        }
        (claims, instances)
    }

    /// The conflicts of `vpc` not reported before (remembering them as reported, and
    /// forgetting those that are over).
    fn new_conflicts<'c>(
        &self,
        vpc: &str,
        conflicts: &'c [plan::Conflict],
    ) -> Vec<&'c plan::Conflict> {
        let now: BTreeSet<ConflictKey> = conflicts.iter().map(|c| conflict_key(vpc, c)).collect();
        let mut reported = self.reported.lock().expect("reported lock");
        reported.retain(|entry| entry.0 != vpc || now.contains(entry));
        conflicts
            .iter()
            .filter(|c| reported.insert(conflict_key(vpc, c)))
            .collect()
    }
}

/// How a reported conflict is remembered: (vpc, ip, namespace, instance that lost).
fn conflict_key(vpc: &str, conflict: &plan::Conflict) -> ConflictKey {
    (
        vpc.to_string(),
        conflict.ip.clone(),
        conflict.claimant.0.clone(),
        conflict.claimant.1.clone(),
    )
}

/// Runs the controller until `stop`.
pub async fn controller(client: kube::Client, board: Board, stop: CancellationToken) {
    let mut caches = Caches::new(client.clone());
    let instances = caches.watch::<Instance>(watcher::Config::default());
    let routes = caches.watch::<VpcRoutes>(watcher::Config::default());
    let sleds = caches.watch::<Sled>(watcher::Config::default());
    let context = Arc::new(V2pController {
        effects: Effects::new(client, "v2p-controller"),
        board,
        readiness: caches.readiness(),
        instances: instances.cache(),
        routes: routes.cache(),
        sleds: sleds.cache(),
        membership: Mutex::default(),
        dirty: Mutex::default(),
        status_dirty: Mutex::default(),
        wake: Notify::new(),
        written: Mutex::default(),
        reported: Mutex::default(),
    });
    // The taps run after the caches store each event, so that what they mark dirty is in the
    // cache when planned.
    let tap = context.clone();
    let instances = instances.tap(move |event| tap.observe_instance(event));
    let tap = context.clone();
    let routes = routes.tap(move |event| tap.observe_routes(event));
    let tap = context.clone();
    let sleds = sleds.tap(move |event| tap.observe_sled(event));
    let watches = futures::stream::select(
        futures::stream::select(
            instances.events().map(|r| r.map(|_| ())),
            routes.events().map(|r| r.map(|_| ())),
        ),
        sleds.events().map(|r| r.map(|_| ())),
    )
    .take_until(stop.clone().cancelled_owned())
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::warn!(%error, "v2p controller: watching");
        }
    });
    tokio::join!(watches, work(context, stop.clone()));
}

/// The worker: writes dirty VPCs (see the module docs) until `stop`.
async fn work(context: Arc<V2pController>, stop: CancellationToken) {
    let mut next_status = Instant::now();
    let mut next_resync = Instant::now() + RESYNC;
    loop {
        let listed = context.readiness.is_ready();
        let pending = listed && !context.dirty.lock().expect("dirty lock").is_empty();
        if !pending {
            let has_status = !context.status_dirty.lock().expect("dirty lock").is_empty();
            // Until every watch listed, only a change (the last listing marks everything) wakes.
            let deadline = match (listed, has_status) {
                (false, _) => Instant::now() + RESYNC,
                (true, true) => next_status.min(next_resync),
                (true, false) => next_resync,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = context.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            if !context.readiness.is_ready() {
                continue;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(COALESCE) => {}
        }
        let now = Instant::now();
        if now >= next_resync {
            next_resync = now + RESYNC;
            context.mark(context.all_vpcs());
        }
        let mut batch = std::mem::take(&mut *context.dirty.lock().expect("dirty lock"));
        if now >= next_status {
            let status = std::mem::take(&mut *context.status_dirty.lock().expect("dirty lock"));
            if !status.is_empty() {
                next_status = now + STATUS_INTERVAL;
                batch.extend(status);
            }
        }
        if batch.is_empty() {
            continue;
        }
        tracing::trace!(?batch, "v2p controller: pass");
        pass(&context, batch).await;
    }
}

/// Plans and writes every VPC of `batch`, [`PARALLEL`] at a time.
async fn pass(context: &Arc<V2pController>, batch: BTreeSet<String>) {
    let results: Vec<(String, Result<Counts, Error>, std::time::Duration)> =
        futures::stream::iter(batch)
            .map(|vpc| {
                let context = context.clone();
                async move {
                    let started = tokio::time::Instant::now();
                    let result = reconcile(&vpc, &context).await;
                    (vpc, result, started.elapsed())
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    for (vpc, result, took) in results {
        let outcome = match &result {
            Ok(counts) => Outcome::applied(counts.did(), None, None),
            Err(error) => Outcome::failed(error),
        };
        context
            .board
            .activated(V2pController::NAME, format!("vpc {vpc}"), outcome, took);
        match result {
            Ok(counts) if counts != Counts::default() => tracing::debug!(%vpc, ?counts, "v2p"),
            Ok(_) => {}
            Err(error) => {
                let conflict = error.is_conflict();
                if conflict {
                    tracing::debug!(%vpc, "v2p controller: conflict");
                } else {
                    tracing::warn!(%vpc, error = %error, "v2p controller: writing");
                }
                // Plan again from the cache: our last write may have been followed by
                // someone else's, or the object deleted.
                context.written.lock().expect("written lock").remove(&vpc);
                // Planned again with the next status pass (a conflict: from what was stored).
                context.mark_status([vpc]);
            }
        }
    }
    let queued = context.dirty.lock().expect("dirty lock").len();
    context.board.set_queued(V2pController::NAME, queued as u64);
}

/// What one pass over a VPC did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub spec_written: bool,
    pub status_written: bool,
    pub live_reads: usize,
    pub removed: usize,
    pub conflicts: usize,
}

impl Counts {
    fn did(&self) -> BTreeMap<&'static str, u64> {
        [
            ("WriteMappings", u64::from(self.spec_written)),
            ("WriteStatus", u64::from(self.status_written)),
            ("LiveRead", self.live_reads as u64),
            ("Removed", self.removed as u64),
            ("Conflict", self.conflicts as u64),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// Observes, plans and executes one VPC.
async fn reconcile(vpc: &str, context: &V2pController) -> Result<Counts, Error> {
    let mut counts = Counts::default();
    let current = context.current(vpc);
    let mappings = current
        .as_ref()
        .map(|r| r.spec.mappings.clone())
        .unwrap_or_default();
    let generation = current
        .as_ref()
        .and_then(|r| r.metadata.generation)
        .unwrap_or(0);
    let (claims, instances) = context.claims(vpc);
    let mut merged = plan::merge(&mappings, &claims, &BTreeSet::new(), generation + 1);
    if !merged.verify.is_empty() {
        let mut removable = BTreeSet::new();
        for mapping in &merged.verify {
            let live = context
                .effects
                .read::<Instance>(Some(&mapping.namespace), &mapping.instance)
                .await?;
            counts.live_reads += 1;
            if plan::removable_after_read(mapping, vpc, live.as_ref()) {
                removable.insert(mapping.ip.clone());
            }
        }
        if !removable.is_empty() {
            counts.removed = removable.len();
            merged = plan::merge(&mappings, &claims, &removable, generation + 1);
        }
    }
    counts.conflicts = merged.conflicts.len();
    let new = context.new_conflicts(vpc, &merged.conflicts);
    let reports: Vec<Report<'_>> = new
        .iter()
        .filter_map(|conflict| {
            let instance = instances.get(&conflict.claimant)?;
            Some(Report {
                conflict,
                claimant: corral_client::events::reference(instance.as_ref()),
            })
        })
        .collect();
    let planned = plan::plan(
        vpc,
        current.as_ref(),
        &merged,
        &context.sleds.all(),
        &reports,
    );
    if !planned.changes_anything() && planned.events().next().is_none() {
        return Ok(counts);
    }
    let object = current.unwrap_or_else(|| empty_routes(vpc));
    match execute(context, &object, &planned).await {
        Ok(written) => {
            counts.spec_written = planned.actions().next().is_some();
            counts.status_written = planned.steps.contains(&crate::kit::Step::WriteStatus);
            if counts.spec_written || counts.status_written {
                context
                    .written
                    .lock()
                    .expect("written lock")
                    .insert(vpc.to_string(), written);
            }
            Ok(counts)
        }
        Err(error) => {
            // Not reported after all: report them with the next pass that gets through.
            let mut reported = context.reported.lock().expect("reported lock");
            for conflict in &new {
                reported.remove(&conflict_key(vpc, conflict));
            }
            Err(error)
        }
    }
}

/// A VpcRoutes for `vpc` that does not exist yet (the first write creates it).
fn empty_routes(vpc: &str) -> VpcRoutes {
    VpcRoutes {
        metadata: ObjectMeta {
            name: Some(vpc.to_string()),
            ..Default::default()
        },
        spec: VpcRoutesSpec::default(),
        status: None,
    }
}

impl Apply for V2pController {
    type Object = VpcRoutes;
    type Status = VpcRoutesStatus;
    type Action = Action;

    const NAME: &'static str = "v2p";
    // A merge patch: the request is the status, not the mappings of a large VPC.
    const STATUS_WRITE: StatusWrite = StatusWrite::MergePatch;

    fn effects(&self) -> &Effects {
        &self.effects
    }

    fn with_status(object: &VpcRoutes, status: &VpcRoutesStatus) -> VpcRoutes {
        VpcRoutes {
            status: Some(status.clone()),
            ..object.clone()
        }
    }

    fn status_of(object: &VpcRoutes) -> Option<&VpcRoutesStatus> {
        object.status.as_ref()
    }

    async fn apply(&self, action: &Action, routes: &VpcRoutes) -> Result<Option<VpcRoutes>, Error> {
        let Action::WriteMappings(mappings) = action;
        let mut next = routes.clone();
        next.spec.mappings = mappings.clone();
        let written = if routes.metadata.resource_version.is_some() {
            self.effects.replace(&next).await?
        } else {
            self.effects.create_new(&next).await?
        };
        Ok(Some(written))
    }
}
