//! The migration controller: takes every Migration from `Pending` to a final phase, and shows
//! on the way where it is (docs/migration.md).
//!
//! Reads Migrations (primary), Instances and Vmms (a change of the instance, or of either end
//! of the transfer, wakes its Migration), Sleds (readiness, link bandwidth, V2P
//! acknowledgements) and VpcRoutes. Writes `Migration.status` (it alone) and Events; nothing
//! else. The decisions are [`plan::plan`]'s; the kit (`crate::kit`) runs the rest.
//!
//! # Invariants
//! - Admission is serialised: the limits are checked against the cache plus this controller's
//!   own admissions that the cache has not shown yet, so two Migrations reconciled at once
//!   cannot both take the last slot, and two Migrations of one instance cannot both be
//!   admitted.
//! - Never decides an Instance is gone from its absence in the cache (it reads the API first).
//!
//! # Assumptions
//! - Only the leader runs this (see `lib.rs`); a restart at any `.await` re-plans from what
//!   was written. Every clock a decision reads is in the status (`startedAt`,
//!   `progressedAt`), so a new leader decides as the old one would have.
//!
//! # Not responsible for
//! Starting the target and the switch-or-abort (the instance controller), the transfer (the
//! node-agents), the V2P mappings (the V2P controller).

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use corral_crds::{Instance, Migration, MigrationPhase, MigrationStatus, Sled, Vmm, VpcRoutes};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use crate::kit::effects::key_of;
use crate::kit::{
    Apply, Board, Cache, Caches, Controller, Effects, Error, NoAction, Reconciled, Reconciler, Wait,
};
use plan::{Limits, Load, Observed, Timeouts};

/// How the migration controller runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub limits: Limits,
    pub timeouts: Timeouts,
}

/// The migration controller's state beside its caches.
pub struct MigrationController {
    effects: Effects,
    config: Config,
    migrations: Cache<Migration>,
    instances: Cache<Instance>,
    vmms: Cache<Vmm>,
    sleds: Cache<Sled>,
    routes: Cache<VpcRoutes>,
    /// Held from deciding an admission until its status write is done (or failed), so that
    /// two reconciles cannot both take the last slot.
    admission: Arc<tokio::sync::Mutex<()>>,
    /// The admission lock, while a reconcile holds it, by Migration (`namespace/name`): taken
    /// in `reconcile`, given back in `cleanup`.
    holds: std::sync::Mutex<HashMap<String, tokio::sync::OwnedMutexGuard<()>>>,
    /// Migrations this controller admitted, `namespace/name` → (source sled, target sled),
    /// until its cache shows them admitted.
    admitted: std::sync::Mutex<HashMap<String, (String, Option<String>)>>,
}

fn is_under_way(migration: &Migration) -> bool {
    migration
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p != MigrationPhase::Pending && !p.is_final())
}

/// Runs the controller until `stop` fires; returns when every reconcile has finished.
pub async fn controller(
    client: kube::Client,
    config: Config,
    board: Board,
    stop: CancellationToken,
) {
    let mut caches = Caches::new(client.clone());
    let migrations = caches.primary::<Migration>(watcher::Config::default());
    let instances = caches.watch::<Instance>(watcher::Config::default());
    let vmms = caches.watch::<Vmm>(watcher::Config::default());
    let sleds = caches.watch::<Sled>(watcher::Config::default());
    let routes = caches.watch::<VpcRoutes>(watcher::Config::default());
    let reconciler = MigrationController {
        effects: Effects::new(client, "migration-controller"),
        config,
        migrations: migrations.cache(),
        instances: instances.cache(),
        vmms: vmms.cache(),
        sleds: sleds.cache(),
        routes: routes.cache(),
        admission: Arc::new(tokio::sync::Mutex::new(())),
        holds: Default::default(),
        admitted: Default::default(),
    };
    let by_instance = reconciler.migrations.clone();
    let controller = Controller::<MigrationController>::new(migrations, &board)
        .watches(instances, move |instance: Instance| {
            // The instance's unfinished Migrations.
            let namespace = instance.namespace();
            by_instance
                .filter(|m| {
                    m.spec.instance == instance.name_any()
                        && m.namespace() == namespace
                        && !m.is_finished()
                })
                .iter()
                .map(|m| ObjectRef::from_obj(m.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(vmms, |vmm: Vmm| {
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
        });
    let readiness = caches.readiness();
    // The side caches end with the controller.
    tokio::select! {
        _ = controller.run(reconciler, readiness, 0, stop) => {}
        _ = async { tokio::join!(sleds.fill(), routes.fill()) } => {}
    }
}

impl MigrationController {
    /// The migrations under way, besides `this`, with this controller's recent admissions.
    fn load(&self, this: &Migration) -> Load {
        let mut load = Load::default();
        // Admitted here, but still Pending in the cache: only those count from memory. One the
        // cache shows admitted or finished counts from the cache; one deleted meanwhile not at
        // all (remembered, it would hold a slot for ever).
        let mut still_pending = HashSet::new();
        if !is_under_way(this) && !this.is_finished() {
            still_pending.insert(key_of(this));
        }
        for migration in self.migrations.all() {
            if key_of(migration.as_ref()) == key_of(this) {
                continue;
            }
            if is_under_way(&migration) {
                let status = migration.status.as_ref();
                load.add(
                    status.and_then(|s| s.source_sled.as_deref()),
                    status
                        .and_then(|s| s.target_sled.as_deref())
                        .or(migration.spec.target_sled.as_deref()),
                );
            } else if !migration.is_finished() {
                still_pending.insert(key_of(migration.as_ref()));
            }
        }
        let mut admitted = self.admitted.lock().expect("admitted lock");
        admitted.retain(|name, _| still_pending.contains(name));
        for (name, (source, target)) in admitted.iter() {
            if *name != key_of(this) {
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
            .filter(|m| {
                m.spec.instance == this.spec.instance
                    && m.namespace() == this.namespace()
                    && key_of(m) != key_of(this)
                    && !m.is_finished()
            })
            .into_iter()
            .map(|m| {
                if admitted.contains_key(&key_of(m.as_ref())) && !is_under_way(&m) {
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

    /// The Instance, from the cache or, if the cache lacks it, the API.
    async fn instance_of(&self, migration: &Migration) -> Result<Option<Arc<Instance>>, Error> {
        let namespace = migration.namespace().unwrap_or_default();
        let name = &migration.spec.instance;
        if let Some(instance) = self.instances.get_in(&namespace, name) {
            return Ok(Some(instance));
        }
        // Absence from a cache proves nothing.
        let live = self
            .effects
            .read::<Instance>(Some(&namespace), name)
            .await?;
        Ok(live.map(Arc::new))
    }

    /// Records an admission the cache does not show yet (see the invariants).
    fn remember_admission(&self, migration: &Migration, planned: &MigrationStatus) {
        self.admitted.lock().expect("admitted lock").insert(
            key_of(migration),
            (
                planned.source_sled.clone().unwrap_or_default(),
                planned.target_sled.clone(),
            ),
        );
    }
}

impl Reconciler for MigrationController {
    async fn reconcile(
        &self,
        migration: Arc<Migration>,
    ) -> Result<Reconciled<MigrationStatus, NoAction>, Error> {
        let phase = migration.status.as_ref().and_then(|s| s.phase);
        if migration.is_finished() && !plan::awaits_measurement(&migration) {
            return Ok(Reconciled::Wait(Wait::Settled, None));
        }
        let namespace = migration.namespace().unwrap_or_default();
        let instance = self.instance_of(&migration).await?;
        let vmm = |name: Option<&String>| name.and_then(|name| self.vmms.get_in(&namespace, name));
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
        let sleds = self.sleds.all();
        let vpcs: HashSet<&str> = instance
            .iter()
            .flat_map(|i| i.spec.nics.iter().map(|n| n.vpc.as_str()))
            .collect();
        let routes: Vec<Arc<VpcRoutes>> =
            vpcs.iter().filter_map(|vpc| self.routes.get(vpc)).collect();
        let siblings = self.siblings(&migration);
        let pending = phase.is_none_or(|p| p == MigrationPhase::Pending);
        if pending {
            // Given back by `cleanup`, once the plan's status write is done.
            let hold = self.admission.clone().lock_owned().await;
            self.holds
                .lock()
                .expect("holds lock")
                .insert(key_of(migration.as_ref()), hold);
        }
        let load = if pending {
            self.load(&migration)
        } else {
            Load::default()
        };
        let planned = plan::plan(&Observed {
            migration: &migration,
            instance: instance.as_deref(),
            source: source.as_deref(),
            target: target.as_deref(),
            sleds: &sleds,
            siblings: &siblings,
            routes: &routes,
            load: &load,
            limits: self.config.limits,
            timeouts: self.config.timeouts,
            now: corral_client::clock::now(),
        });
        Ok(Reconciled::Plan(planned))
    }

    fn cleanup(&self, migration: &Migration, plan: &plan::Plan, executed: Result<(), &Error>) {
        let key = key_of(migration);
        let pending = migration
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_none_or(|p| p == MigrationPhase::Pending);
        if executed.is_ok() && pending && plan.status.phase == Some(MigrationPhase::Scheduling) {
            self.remember_admission(migration, &plan.status);
        }
        // The admission lock goes last, once the admission is remembered.
        self.holds.lock().expect("holds lock").remove(&key);
    }
}

impl Apply for MigrationController {
    type Object = Migration;
    type Status = MigrationStatus;
    type Action = NoAction;

    const NAME: &'static str = "migration";

    fn effects(&self) -> &Effects {
        &self.effects
    }

    fn with_status(object: &Migration, status: &MigrationStatus) -> Migration {
        Migration {
            status: Some(status.clone()),
            ..object.clone()
        }
    }

    fn status_of(object: &Migration) -> Option<&MigrationStatus> {
        object.status.as_ref()
    }

    fn phase(status: &MigrationStatus) -> Option<String> {
        status.phase.map(|p| p.to_string())
    }

    async fn apply(&self, action: &NoAction, _: &Migration) -> Result<Option<Migration>, Error> {
        match *action {}
    }
}
