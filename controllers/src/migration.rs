//! The migration controller: takes every Migration from `Pending` to a final phase, and shows
//! on the way where it is (docs/migration.md).
//!
//! Reads Migrations (primary), Instances and Vmms (a change of the instance, or of either end
//! of the transfer, wakes its Migration), Sleds (readiness, link bandwidth, V2P
//! acknowledgements) and VpcRoutes. Writes `Migration.status` (it alone) and Events; nothing
//! else. The decisions are [`plan::plan`]'s.
//!
//! # Invariants
//! - Admission is serialised: the limits are checked against the cache plus this controller's
//!   own admissions that the cache has not shown yet, so two Migrations reconciled at once
//!   cannot both take the last slot, and two Migrations of one instance cannot both be
//!   admitted.
//! - Never plans from a cached Migration older than its own last write to it, and never
//!   decides an Instance is gone from its absence in the cache (it reads the API first).
//!
//! # Assumptions
//! - Only the leader runs this (see `lib.rs`); a restart at any `.await` re-plans from what
//!   was written. The no-progress clock is in memory: a new leader starts it again.
//!
//! # Not responsible for
//! Starting the target and the switch-or-abort (the instance controller), the transfer (the
//! node-agents), the V2P mappings (the V2P controller).

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral_client::events::Recorder;
use corral_crds::{Instance, Migration, MigrationPhase, Sled, Vmm, VpcRoutes};
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

use crate::expectations::Expectations;
use plan::{Limits, Load, Observed, Severity, Timeouts};

/// How the migration controller runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Fault injection for tests: abort the process right after writing this phase, as a
    /// crash at that step would (`corral controllers --crash-at-migration-phase`).
    pub crash_at: Option<MigrationPhase>,
}

/// Shared by every reconcile.
pub struct Context {
    client: kube::Client,
    config: Config,
    migrations: Store<Migration>,
    instances: Store<Instance>,
    vmms: Store<Vmm>,
    sleds: Store<Sled>,
    routes: Store<VpcRoutes>,
    synced: [AtomicBool; 5],
    expectations: Expectations,
    /// Held while deciding an admission.
    admission: tokio::sync::Mutex<()>,
    /// Migrations this controller admitted, `namespace/name` → (source sled, target sled),
    /// until its cache shows them admitted.
    admitted: std::sync::Mutex<HashMap<String, (String, Option<String>)>>,
    /// Migration uid → (bytes sent, since when) for the no-progress timeout.
    progress: std::sync::Mutex<HashMap<String, (u64, Instant)>>,
    recorder: Recorder,
}

fn key(migration: &Migration) -> String {
    format!(
        "{}/{}",
        migration.namespace().unwrap_or_default(),
        migration.name_any()
    )
}

fn is_under_way(migration: &Migration) -> bool {
    migration
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p != MigrationPhase::Pending && !p.is_final())
}

impl Context {
    fn synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }

    /// The migrations under way, besides `this`, with this controller's recent admissions.
    fn load(&self, this: &Migration) -> Load {
        let mut load = Load::default();
        let mut seen = HashSet::new();
        for migration in self.migrations.state() {
            if key(&migration) == key(this) {
                continue;
            }
            if is_under_way(&migration) {
                seen.insert(key(&migration));
                let status = migration.status.as_ref();
                load.add(
                    status.and_then(|s| s.source_sled.as_deref()),
                    status
                        .and_then(|s| s.target_sled.as_deref())
                        .or(migration.spec.target_sled.as_deref()),
                );
            } else if migration
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_final())
            {
                seen.insert(key(&migration));
            }
        }
        let mut admitted = self.admitted.lock().expect("admitted lock");
        admitted.retain(|name, _| !seen.contains(name));
        for (name, (source, target)) in admitted.iter() {
            if *name != key(this) {
                load.add(Some(source), target.as_deref());
            }
        }
        load
    }

    /// The other unfinished Migrations of the same instance (admitted ones included, even if
    /// the cache does not show it yet).
    fn siblings(&self, this: &Migration) -> Vec<Arc<Migration>> {
        let admitted = self.admitted.lock().expect("admitted lock").clone();
        self.migrations
            .state()
            .into_iter()
            .filter(|m| {
                m.spec.instance == this.spec.instance
                    && m.namespace() == this.namespace()
                    && key(m) != key(this)
                    && !m
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(|p| p.is_final())
            })
            .map(|m| {
                if admitted.contains_key(&key(&m)) && !is_under_way(&m) {
                    // Admitted moments ago: count it as such.
                    let mut admitted = (*m).clone();
                    admitted.status.get_or_insert_with(Default::default).phase =
                        Some(MigrationPhase::Scheduling);
                    Arc::new(admitted)
                } else {
                    m
                }
            })
            .collect()
    }

    /// How long the transfer's bytes have not moved, as far as this controller has watched.
    fn stalled_for(&self, migration: &Migration) -> Duration {
        let Some(uid) = migration.uid() else {
            return Duration::ZERO;
        };
        if !is_under_way(migration) {
            return Duration::ZERO;
        }
        let sent = migration
            .status
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .map_or(0, |p| p.bytes_sent);
        let mut progress = self.progress.lock().expect("progress lock");
        let entry = progress.entry(uid).or_insert((sent, Instant::now()));
        if entry.0 != sent {
            *entry = (sent, Instant::now());
        }
        entry.1.elapsed()
    }
}

/// Runs the controller until `stop` fires; returns when every reconcile has finished.
pub async fn controller(client: kube::Client, config: Config, stop: CancellationToken) {
    let (migration_reader, migration_writer) = reflector::store::<Migration>();
    let (instance_reader, instance_writer) = reflector::store::<Instance>();
    let (vmm_reader, vmm_writer) = reflector::store::<Vmm>();
    let (sled_reader, sled_writer) = reflector::store::<Sled>();
    let (routes_reader, routes_writer) = reflector::store::<VpcRoutes>();
    let context = Arc::new(Context {
        client: client.clone(),
        config,
        migrations: migration_reader.clone(),
        instances: instance_reader,
        vmms: vmm_reader,
        sleds: sled_reader,
        routes: routes_reader,
        synced: Default::default(),
        expectations: Expectations::default(),
        admission: tokio::sync::Mutex::new(()),
        admitted: Default::default(),
        progress: Default::default(),
        recorder: Recorder::new(client.clone(), "migration-controller"),
    });
    let instance_events = watcher(
        Api::<Instance>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(instance_writer)
    .map_ok(listed(context.clone(), 1))
    .touched_objects();
    let vmm_events = watcher(Api::<Vmm>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(vmm_writer)
        .map_ok(listed(context.clone(), 2))
        .touched_objects();
    let sleds = watcher(Api::<Sled>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(sled_writer)
        .map_ok(listed(context.clone(), 3))
        .for_each(|_| std::future::ready(()));
    let routes = watcher(
        Api::<VpcRoutes>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(routes_writer)
    .map_ok(listed(context.clone(), 4))
    .for_each(|_| std::future::ready(()));
    let migrations = watcher(
        Api::<Migration>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(migration_writer)
    .map_ok(listed(context.clone(), 0))
    .touched_objects();
    let by_instance = migration_reader.clone();
    let controller = Controller::for_stream(migrations, migration_reader)
        .watches_stream(instance_events, move |instance: Instance| {
            // The instance's unfinished Migrations.
            let namespace = instance.namespace();
            by_instance
                .state()
                .into_iter()
                .filter(|m| {
                    m.spec.instance == instance.name_any()
                        && m.namespace() == namespace
                        && !m
                            .status
                            .as_ref()
                            .and_then(|s| s.phase)
                            .is_some_and(|p| p.is_final())
                })
                .map(|m| ObjectRef::from_obj(m.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(vmm_events, |vmm: Vmm| {
            let namespace = vmm.namespace()?;
            let name = vmm
                .spec
                .migrate_from
                .as_ref()
                .map(|m| m.migration.clone())
                .or_else(|| {
                    vmm.status
                        .as_ref()?
                        .migration
                        .as_ref()
                        .map(|m| m.migration.clone())
                })?;
            Some(ObjectRef::new(&name).within(&namespace))
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "migration reconcile");
            }
        });
    // The side caches end with the controller.
    tokio::select! {
        _ = controller => {}
        _ = async { tokio::join!(sleds, routes) } => {}
    }
}

/// Marks cache `index` as listed once its reflector has stored its first list.
fn listed<K>(
    context: Arc<Context>,
    index: usize,
) -> impl FnMut(watcher::Event<K>) -> watcher::Event<K> {
    move |event| {
        if matches!(event, watcher::Event::InitDone) {
            context.synced[index].store(true, Ordering::Release);
        }
        event
    }
}

async fn reconcile(migration: Arc<Migration>, context: Arc<Context>) -> Result<Requeue, Error> {
    if !context.synced() {
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    if context.expectations.is_stale(migration.as_ref()) {
        return Ok(Requeue::await_change());
    }
    let phase = migration.status.as_ref().and_then(|s| s.phase);
    if phase.is_some_and(|p| p.is_final()) {
        if let Some(uid) = migration.uid() {
            context.progress.lock().expect("progress lock").remove(&uid);
        }
        return Ok(Requeue::await_change());
    }
    let namespace = migration.namespace().unwrap_or_default();
    let instance_name = &migration.spec.instance;
    let mut instance = context
        .instances
        .get(&ObjectRef::new(instance_name).within(&namespace));
    if instance.is_none() {
        // Absence from a cache proves nothing.
        let api: Api<Instance> = Api::namespaced(context.client.clone(), &namespace);
        instance = api
            .get_opt(instance_name)
            .await
            .map_err(|source| Error::Api {
                operation: "reading instance",
                object: format!("{namespace}/{instance_name}"),
                source,
            })?
            .map(Arc::new);
    }
    let vmm = |name: Option<&String>| {
        name.and_then(|name| context.vmms.get(&ObjectRef::new(name).within(&namespace)))
    };
    let status = migration.status.clone().unwrap_or_default();
    let instance_status = instance.as_ref().and_then(|i| i.status.clone());
    let source = vmm(status
        .source_vmm
        .as_ref()
        .or(instance_status.as_ref().and_then(|s| s.active_vmm.as_ref())));
    let target = vmm(status
        .target_vmm
        .as_ref()
        .or(instance_status.as_ref().and_then(|s| s.target_vmm.as_ref())));
    let sleds = context.sleds.state();
    let vpcs: HashSet<&str> = instance
        .iter()
        .flat_map(|i| i.spec.nics.iter().map(|n| n.vpc.as_str()))
        .collect();
    let routes: Vec<Arc<VpcRoutes>> = vpcs
        .iter()
        .filter_map(|vpc| context.routes.get(&ObjectRef::new(vpc)))
        .collect();
    let siblings = context.siblings(&migration);
    let stalled_for = context.stalled_for(&migration);
    let pending = phase.is_none_or(|p| p == MigrationPhase::Pending);
    let _admission = if pending {
        Some(context.admission.lock().await)
    } else {
        None
    };
    let load = if pending {
        context.load(&migration)
    } else {
        Load::default()
    };
    let observed = Observed {
        migration: &migration,
        instance: instance.as_deref(),
        source: source.as_deref(),
        target: target.as_deref(),
        sleds: &sleds,
        siblings: &siblings,
        routes: &routes,
        load: &load,
        stalled_for,
        limits: context.config.limits,
        timeouts: context.config.timeouts,
        now: corral_client::clock::now(),
    };
    let plan = plan::plan(&observed);
    if plan.status != status {
        let api: Api<Migration> = Api::namespaced(context.client.clone(), &namespace);
        let mut updated = (*migration).clone();
        updated.status = Some(plan.status.clone());
        let written = api
            .replace_status(&migration.name_any(), &PostParams::default(), &updated)
            .await
            .map_err(|source| Error::Api {
                operation: "writing the status of migration",
                object: key(&migration),
                source,
            })?;
        context.expectations.expect(&written);
        if let Some(phase) = context.config.crash_at
            && plan.status.phase == Some(phase)
            && status.phase != Some(phase)
        {
            tracing::error!(migration = %key(&migration), %phase, "fault injection: crashing after writing the phase");
            std::process::abort();
        }
        if pending && plan.status.phase == Some(MigrationPhase::Scheduling) {
            context.admitted.lock().expect("admitted lock").insert(
                key(&migration),
                (
                    plan.status.source_sled.clone().unwrap_or_default(),
                    plan.status.target_sled.clone(),
                ),
            );
        }
        for (severity, reason, message) in &plan.events {
            match severity {
                Severity::Normal => context.recorder.normal(&written, *reason, message).await,
                Severity::Warning => context.recorder.warning(&written, *reason, message).await,
            }
        }
    }
    Ok(match plan.requeue {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

fn error_policy(_migration: Arc<Migration>, error: &Error, _context: Arc<Context>) -> Requeue {
    crate::error::requeue(error, "migration")
}
