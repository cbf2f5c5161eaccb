//! The drain controller: empties one sled for maintenance, as its Drain asks, and says how far
//! it got.
//!
//! A drain *runs* if (and only if) its phase is `Pending` or `Draining`. A running drain
//! cordons its sled, plans where every instance on the sled goes (checked against the free
//! capacity of the other sleds before the first move), moves them with Migrations (reason
//! `Drain`, label [`DRAIN_LABEL`] = the drain's name, an ownerReference to the Drain; live or
//! by a restart, as the instance's `evictionStrategy` says: `drain/eviction.rs`) at most
//! `maxParallel` at a time, retries a failed move with a fresh target up to
//! [`plan::MAX_ATTEMPTS`] times, and completes when the sled's node-agent reports no VMM.
//! docs/migration.md, "Drains", is the user's view; the decisions are [`plan::plan`]'s, this
//! file wires the watches and carries out the drain's own actions, and the kit (`crate::kit`)
//! runs the rest.
//!
//! Reads Drains (primary), Migrations labelled with a drain, Instances, Sleds and Vmms (caches;
//! a Vmm's dirty rate feeds the pre-copy prediction of `LiveMigrateIfPossible`).
//! Writes `Drain.status` (it alone), `Sled.spec.unschedulable` (cordon, never uncordon),
//! Migrations (create, `spec.cancel`) and Events.
//!
//! Every move is a Migration, whatever its mode: `LiveMigrate` instances move live (or not at
//! all), `Restart` ones by a restart migration (stopped, then started on the target once their
//! VMM is gone), `LiveMigrateIfPossible` ones live unless the pre-copy model predicts the
//! transfer would not converge, then by a restart. The plan, its capacity check and the items
//! are the same for both modes.
//!
//! # Invariants
//! - The status naming a Migration is written before the Migration is created; Migration names
//!   are derived from the drain, the instance and the attempt ([`plan::migration_name`]), so a
//!   restarted controller re-creates the same one ("already exists" is success) and never a
//!   second one for the same attempt.
//! - Status writes are conditional on the Drain's resourceVersion: a plan made from a stale
//!   cached Drain fails with a conflict and is made again.
//! # Assumptions
//! - Only the leader runs this (see `lib.rs`); each step is idempotent and a reconcile may stop
//!   at any `.await`: the next one re-plans from the status and the Migrations it finds by
//!   label.
//! # Not responsible for
//! - Moving a guest (the migration controller, the instance controller and the node-agents:
//!   docs/migration.md, "The protocol"); uncordoning (`corralctl uncordon`).

mod eviction;
mod placement;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;

use corral_client::events::EventType;
use corral_crds::drain::Drain;
use corral_crds::{
    DRAIN_LABEL, DrainStatus, Instance, Migration, MigrationMode, MigrationReason, MigrationSpec,
    Reason, Sled, Vmm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::kit::{Apply, Board, Cache, Caches, Controller, Effects, Error, Reconciled, Reconciler};
use plan::{Action, Observed};

/// The drain controller's state beside its caches.
pub struct DrainController {
    effects: Effects,
    drains: Cache<Drain>,
    sleds: Cache<Sled>,
    instances: Cache<Instance>,
    migrations: Cache<Migration>,
    vmms: Cache<Vmm>,
}

/// Runs the controller until `stop` fires; returns when every reconcile has finished.
pub async fn controller(client: kube::Client, board: Board, stop: CancellationToken) {
    let mut caches = Caches::new(client.clone());
    let drains = caches.primary::<Drain>(watcher::Config::default());
    let sleds = caches.watch::<Sled>(watcher::Config::default());
    let instances = caches.watch::<Instance>(watcher::Config::default());
    let migrations = caches.watch::<Migration>(watcher::Config::default().labels(DRAIN_LABEL));
    let vmms = caches.watch::<Vmm>(watcher::Config::default());
    let reconciler = DrainController {
        effects: Effects::new(client, "drain-controller"),
        drains: drains.cache(),
        sleds: sleds.cache(),
        instances: instances.cache(),
        migrations: migrations.cache(),
        vmms: vmms.cache(),
    };
    let for_sled = reconciler.drains.clone();
    let for_instance = reconciler.drains.clone();
    let readiness = caches.readiness();
    let controller = Controller::<DrainController>::new(drains, &board)
        .watches(sleds, move |sled: Sled| {
            drains_touching(&for_sled, Some(&sled.name_any()), None)
        })
        .watches(instances, move |instance: Instance| {
            let namespace = instance.namespace().unwrap_or_default();
            let sled = instance.status.as_ref().and_then(|s| s.sled.clone());
            drains_touching(
                &for_instance,
                sled.as_deref(),
                Some((&namespace, &instance.name_any())),
            )
        })
        .watches(migrations, |migration: Migration| {
            migration
                .labels()
                .get(DRAIN_LABEL)
                .map(|drain| ObjectRef::new(drain))
        })
        .run(reconciler, readiness, 0, stop);
    // A dirty rate that changes wakes no drain: the Vmm cache only follows (it ends with the
    // controller).
    tokio::select! {
        _ = controller => {}
        _ = vmms.fill() => {}
    }
}

/// The running drains that may care about `sled` or the instance `namespace/name`.
fn drains_touching(
    drains: &Cache<Drain>,
    sled: Option<&str>,
    instance: Option<(&str, &str)>,
) -> Vec<ObjectRef<Drain>> {
    drains
        .filter(|drain| {
            if drain.is_finished() {
                return false;
            }
            sled == Some(drain.spec.sled.as_str())
                || instance.is_some_and(|(namespace, name)| {
                    drain
                        .status
                        .iter()
                        .flat_map(|s| s.plan.iter())
                        .any(|item| item.namespace == namespace && item.instance == name)
                })
        })
        .iter()
        .map(|drain| ObjectRef::from_obj(drain.as_ref()))
        .collect()
}

/// Another running drain of `drain`'s sled created before it (by creation time, then name).
fn earlier_drain(drain: &Drain, drains: &[Arc<Drain>]) -> Option<String> {
    let order = |d: &Drain| {
        (
            d.metadata.creation_timestamp.clone().map(|t| t.0),
            d.name_any(),
        )
    };
    drains
        .iter()
        .filter(|other| other.spec.sled == drain.spec.sled && other.name_any() != drain.name_any())
        .filter(|other| !other.is_finished())
        .filter(|other| order(other) < order(drain))
        .map(|other| other.name_any())
        .next()
}

impl Reconciler for DrainController {
    async fn reconcile(&self, drain: Arc<Drain>) -> Result<Reconciled<DrainStatus, Action>, Error> {
        let name = drain.name_any();
        let sleds = self.sleds.all();
        let instances = self.instances.all();
        let migrations = self
            .migrations
            .filter(|m| m.labels().get(DRAIN_LABEL) == Some(&name));
        let earlier_drain = earlier_drain(&drain, &self.drains.all());
        let observed = Observed {
            drain: &drain,
            sleds: &sleds,
            instances: &instances,
            migrations: &migrations,
            vmms: &self.vmms.filter(|vmm| vmm.spec.sled == drain.spec.sled),
            earlier_drain,
            now: corral_client::clock::now(),
        };
        Ok(Reconciled::Plan(plan::plan(&observed)))
    }
}

impl Apply for DrainController {
    type Object = Drain;
    type Status = DrainStatus;
    type Action = Action;

    const NAME: &'static str = "drain";

    fn effects(&self) -> &Effects {
        &self.effects
    }

    fn with_status(object: &Drain, status: &DrainStatus) -> Drain {
        Drain {
            status: Some(status.clone()),
            ..object.clone()
        }
    }

    fn status_of(object: &Drain) -> Option<&DrainStatus> {
        object.status.as_ref()
    }

    fn phase(status: &DrainStatus) -> Option<String> {
        status.phase.map(|p| p.to_string())
    }

    async fn apply(&self, action: &Action, drain: &Drain) -> Result<Option<Drain>, Error> {
        match action {
            Action::Cordon { sled } => {
                let patch = serde_json::json!({"spec": {"unschedulable": true}});
                // The Event records the cordon itself, so it goes as soon as the cordon is done.
                if let Some(cordoned) = self.effects.patch::<Sled>(None, sled, &patch).await? {
                    let reference = corral_client::events::reference(&cordoned);
                    let message = format!("cordoned by drain {}", drain.name_any());
                    self.effects
                        .record_about(reference, EventType::Normal, Reason::Cordoned, message)
                        .await;
                }
            }
            Action::CreateMigration {
                namespace,
                name,
                instance,
                target_sled,
                mode,
            } => {
                let migration =
                    build_migration(drain, namespace, name, instance, target_sled, *mode);
                self.effects.create(&migration).await?;
            }
            Action::CancelMigration { namespace, name } => {
                let patch = serde_json::json!({"spec": {"cancel": true}});
                self.effects
                    .patch::<Migration>(Some(namespace), name, &patch)
                    .await?;
            }
        }
        Ok(None)
    }
}

/// The Migration that moves `instance` for `drain`.
fn build_migration(
    drain: &Drain,
    namespace: &str,
    name: &str,
    instance: &str,
    target_sled: &str,
    mode: MigrationMode,
) -> Migration {
    let mut labels = BTreeMap::new();
    labels.insert(DRAIN_LABEL.to_string(), drain.name_any());
    Migration {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            owner_references: drain.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        spec: MigrationSpec {
            instance: instance.to_string(),
            target_sled: Some(target_sled.to_string()),
            reason: MigrationReason::Drain,
            mode,
            cancel: false,
        },
        status: None,
    }
}
