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
//! instance, and `IpConflict` Events on the Instances that lose an IP. [`plan::plan`] decides;
//! this file wires the watches, coalesces changes and writes.
//!
//! # Invariants
//! - The rules of [`plan`] (docs/migration.md, "V2P"): never backwards, never removed on a stale
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
//! - Programming the sleds' tables (each node-agent, `node-agent/src/v2p.rs`).
//! - Holding a migration until the previous move converged (the migration controller, with
//!   [`converged_at`]).

pub mod plan;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_client::events::Recorder;
use corral_crds::{Instance, Reason, Sled, VpcRoutes, VpcRoutesSpec, VpcRoutesStatus};
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::expectations::resource_version;

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

/// Shared by the taps and the worker.
struct Context {
    client: kube::Client,
    instances: Store<Instance>,
    routes: Store<VpcRoutes>,
    sleds: Store<Sled>,
    membership: Mutex<Membership>,
    dirty: Mutex<BTreeSet<String>>,
    status_dirty: Mutex<BTreeSet<String>>,
    wake: Notify,
    /// The VpcRoutes as this controller last wrote them (newer than the cache until it
    /// catches up).
    written: Mutex<HashMap<String, VpcRoutes>>,
    /// (vpc, ip, namespace, instance) conflicts already reported.
    reported: Mutex<BTreeSet<(String, String, String, String)>>,
    /// Watches that have listed once (three: Instances, VpcRoutes, Sleds).
    listed: AtomicUsize,
    recorder: Recorder,
}

impl Context {
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
        let mut vpcs: BTreeSet<String> = self.routes.state().iter().map(|r| r.name_any()).collect();
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

    fn listed_once(&self) {
        let listed = self.listed.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::debug!(listed, "v2p controller: a watch listed");
        self.mark(self.all_vpcs());
    }

    /// The VpcRoutes of `vpc` as last stored: the cache, or our own later write.
    fn current(&self, vpc: &str) -> Option<VpcRoutes> {
        let cached = self.routes.get(&ObjectRef::new(vpc));
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
            let Some(instance) = self
                .instances
                .get(&ObjectRef::new(&name).within(&namespace))
            else {
                continue;
            };
            claims.extend(plan::claims(&instance, vpc));
            instances.insert((namespace, name), instance);
        }
        (claims, instances)
    }
}

/// Runs the controller until `stop`.
pub async fn controller(client: kube::Client, stop: CancellationToken) {
    let (instance_reader, instance_writer) = reflector::store::<Instance>();
    let (routes_reader, routes_writer) = reflector::store::<VpcRoutes>();
    let (sled_reader, sled_writer) = reflector::store::<Sled>();
    let context = Arc::new(Context {
        client: client.clone(),
        instances: instance_reader,
        routes: routes_reader,
        sleds: sled_reader,
        membership: Mutex::default(),
        dirty: Mutex::default(),
        status_dirty: Mutex::default(),
        wake: Notify::new(),
        written: Mutex::default(),
        reported: Mutex::default(),
        listed: AtomicUsize::new(0),
        recorder: Recorder::new(client.clone(), "v2p-controller"),
    });
    // The taps run after `reflect`, so that what they mark dirty is in the store when planned.
    let tap = context.clone();
    let instances = watcher(
        Api::<Instance>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(instance_writer)
    .map_ok(move |event| tap.observe_instance(&event));
    let tap = context.clone();
    let routes = watcher(
        Api::<VpcRoutes>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(routes_writer)
    .map_ok(move |event| tap.observe_routes(&event));
    let tap = context.clone();
    let sleds = watcher(Api::<Sled>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(sled_writer)
        .map_ok(move |event| tap.observe_sled(&event));
    let watches = futures::stream::select(
        futures::stream::select(instances.boxed(), routes.boxed()),
        sleds.boxed(),
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
async fn work(context: Arc<Context>, stop: CancellationToken) {
    let mut next_status = Instant::now();
    let mut next_resync = Instant::now() + RESYNC;
    loop {
        let listed = context.listed.load(Ordering::Acquire) >= 3;
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
            if context.listed.load(Ordering::Acquire) < 3 {
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
        let results: Vec<(String, Result<Outcome, Error>)> = futures::stream::iter(batch)
            .map(|vpc| {
                let context = context.clone();
                async move {
                    let result = reconcile(&vpc, &context).await;
                    (vpc, result)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (vpc, result) in results {
            match result {
                Ok(outcome) if outcome != Outcome::default() => {
                    tracing::debug!(%vpc, ?outcome, "v2p")
                }
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
    }
}

/// What one pass over a VPC did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub spec_written: bool,
    pub status_written: bool,
    pub live_reads: usize,
    pub removed: usize,
    pub conflicts: usize,
}

/// Plans and writes one VPC.
async fn reconcile(vpc: &str, context: &Context) -> Result<Outcome, Error> {
    let api: Api<VpcRoutes> = Api::all(context.client.clone());
    let api_error = |operation: &'static str| Error::api(operation, vpc);
    let mut outcome = Outcome::default();
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
    let mut planned = plan::plan(&mappings, &claims, &BTreeSet::new(), generation + 1);
    if !planned.verify.is_empty() {
        let mut removable = BTreeSet::new();
        for mapping in &planned.verify {
            let live = Api::<Instance>::namespaced(context.client.clone(), &mapping.namespace)
                .get_opt(&mapping.instance)
                .await
                .map_err(api_error("reading an instance mapped in"))?;
            outcome.live_reads += 1;
            if plan::removable_after_read(mapping, vpc, live.as_ref()) {
                removable.insert(mapping.ip.clone());
            }
        }
        if !removable.is_empty() {
            outcome.removed = removable.len();
            planned = plan::plan(&mappings, &claims, &removable, generation + 1);
        }
    }
    outcome.conflicts = planned.conflicts.len();

    let mut stored = current;
    if planned.changed {
        let written = match &stored {
            Some(routes) => {
                let mut next = routes.clone();
                next.spec.mappings = planned.mappings.clone();
                api.replace(vpc, &PostParams::default(), &next)
                    .await
                    .map_err(api_error("writing the mappings of vpc"))?
            }
            None => {
                let routes = VpcRoutes {
                    metadata: ObjectMeta {
                        name: Some(vpc.to_string()),
                        ..Default::default()
                    },
                    spec: VpcRoutesSpec {
                        mappings: planned.mappings.clone(),
                    },
                    status: None,
                };
                api.create(&PostParams::default(), &routes)
                    .await
                    .map_err(api_error("creating the routes of vpc"))?
            }
        };
        outcome.spec_written = true;
        context
            .written
            .lock()
            .expect("written lock")
            .insert(vpc.to_string(), written.clone());
        stored = Some(written);
    }
    report_conflicts(vpc, &planned.conflicts, &instances, context).await;

    let Some(routes) = stored else {
        return Ok(outcome);
    };
    let status = status_of(&routes, &context.sleds.state());
    if routes.status.as_ref() != Some(&status) {
        // A merge patch: the request is the status, not the mappings of a large VPC.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": routes.metadata.resource_version },
            "status": status,
        });
        let written = api
            .patch_status(vpc, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_error("writing the status of vpc"))?;
        outcome.status_written = true;
        context
            .written
            .lock()
            .expect("written lock")
            .insert(vpc.to_string(), written);
    }
    Ok(outcome)
}

/// The generation of `vpc` that `sled` acknowledged, if any.
pub fn acknowledged(sled: &Sled, vpc: &str) -> Option<i64> {
    sled.status
        .as_ref()?
        .v2p
        .iter()
        .find(|ack| ack.vpc == vpc)
        .map(|ack| ack.generation)
}

/// Whether every Ready sled acknowledged `vpc` at `generation` or later (the migration
/// controller's admission check, with the `since` of the instance's mapping).
pub fn converged_at(vpc: &str, generation: i64, sleds: &[Arc<Sled>]) -> bool {
    sleds
        .iter()
        .filter(|sled| sled.is_ready())
        .all(|sled| acknowledged(sled, vpc).is_some_and(|g| g >= generation))
}

/// The status `routes` should show, given the Sleds.
pub fn status_of(routes: &VpcRoutes, sleds: &[Arc<Sled>]) -> VpcRoutesStatus {
    let generation = routes.metadata.generation.unwrap_or(0);
    let vpc = routes.name_any();
    let ready: Vec<&Arc<Sled>> = sleds.iter().filter(|sled| sled.is_ready()).collect();
    let applied = ready
        .iter()
        .filter(|sled| acknowledged(sled, &vpc).is_some_and(|g| g >= generation))
        .count();
    VpcRoutesStatus {
        mappings: routes.spec.mappings.len() as u32,
        applied: format!("{applied}/{}", ready.len()),
        observed_generation: generation,
    }
}

/// One Warning per new conflict, on the Instance that does not get the IP.
async fn report_conflicts(
    vpc: &str,
    conflicts: &[plan::Conflict],
    instances: &HashMap<InstanceKey, Arc<Instance>>,
    context: &Context,
) {
    let now: BTreeSet<(String, String, String, String)> = conflicts
        .iter()
        .map(|c| {
            (
                vpc.to_string(),
                c.ip.clone(),
                c.claimant.0.clone(),
                c.claimant.1.clone(),
            )
        })
        .collect();
    let new: Vec<&plan::Conflict> = {
        let mut reported = context.reported.lock().expect("reported lock");
        reported.retain(|entry| entry.0 != vpc || now.contains(entry));
        conflicts
            .iter()
            .filter(|c| {
                reported.insert((
                    vpc.to_string(),
                    c.ip.clone(),
                    c.claimant.0.clone(),
                    c.claimant.1.clone(),
                ))
            })
            .collect()
    };
    for conflict in new {
        let Some(instance) = instances.get(&conflict.claimant) else {
            continue;
        };
        let message = format!(
            "IP {} in VPC {vpc} is already mapped to instance {}/{}; this instance gets no mapping for it",
            conflict.ip, conflict.holder.0, conflict.holder.1
        );
        context
            .recorder
            .warning(&**instance, Reason::IpConflict, message)
            .await;
    }
}
