//! The drain controller: empties one sled for maintenance, as its Drain asks, and says how far
//! it got.
//!
//! A drain *runs* if (and only if) its phase is `Pending` or `Draining`. A running drain
//! cordons its sled, plans where every instance on the sled goes (checked against the free
//! capacity of the other sleds before the first move), moves them with Migrations (reason
//! `Drain`, label [`DRAIN_LABEL`] = the drain's name, an ownerReference to the Drain) at most
//! `maxParallel` at a time, retries a failed move with a fresh target up to
//! [`plan::MAX_ATTEMPTS`] times, and completes when the sled's node-agent reports no VMM.
//! docs/migration.md, "Drains", is the user's view; the decisions are [`plan::plan`]'s, and
//! this file wires the watches and executes plans.
//!
//! Reads Drains (primary), Migrations labelled with a drain, Instances and Sleds (caches).
//! Writes `Drain.status` (it alone), `Sled.spec.unschedulable` (cordon, never uncordon),
//! Migrations (create, `spec.cancel`) and Events.
//!
//! `Restart` instances are moved by a Migration too, for now: the migration path is the one
//! that keeps an instance running on exactly one sled, and a stop-and-start elsewhere would be
//! a second path to get right.
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

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral_client::events::Recorder;
use corral_crds::drain::Drain;
use corral_crds::{
    DRAIN_LABEL, DrainPhase, Instance, Migration, MigrationReason, MigrationSpec, Reason, Sled,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

use plan::{Action, Observed, Severity};

/// Shared by every reconcile.
pub struct Context {
    client: kube::Client,
    sleds: Store<Sled>,
    instances: Store<Instance>,
    migrations: Store<Migration>,
    sleds_synced: AtomicBool,
    instances_synced: AtomicBool,
    migrations_synced: AtomicBool,
    /// The controller's own cache of Drains (set once the controller is built).
    drains: std::sync::OnceLock<Store<Drain>>,
    recorder: Recorder,
}

impl Context {
    fn synced(&self) -> bool {
        self.sleds_synced.load(Ordering::Acquire)
            && self.instances_synced.load(Ordering::Acquire)
            && self.migrations_synced.load(Ordering::Acquire)
    }
}

/// A watch of `K` into `writer` that sets `synced` once it has listed.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    context: Arc<Context>,
    synced: fn(&Context) -> &AtomicBool,
) -> impl futures::Stream<Item = Result<K, watcher::Error>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .map_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                synced(&context).store(true, Ordering::Release);
            }
            event
        })
        .touched_objects()
}

/// The running drains that may care about `sled` or the instance `namespace/name`.
fn drains_touching(
    drains: &Store<Drain>,
    sled: Option<&str>,
    instance: Option<(&str, &str)>,
) -> Vec<ObjectRef<Drain>> {
    drains
        .state()
        .iter()
        .filter(|drain| {
            let phase = drain.status.as_ref().and_then(|s| s.phase);
            if phase.is_some_and(DrainPhase::is_final) {
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
        .map(|drain| ObjectRef::from_obj(drain.as_ref()))
        .collect()
}

/// Runs the controller until `stop` fires; returns when every reconcile has finished.
pub async fn controller(client: kube::Client, stop: CancellationToken) {
    let (sled_reader, sled_writer) = reflector::store::<Sled>();
    let (instance_reader, instance_writer) = reflector::store::<Instance>();
    let (migration_reader, migration_writer) = reflector::store::<Migration>();
    let context = Arc::new(Context {
        client: client.clone(),
        sleds: sled_reader,
        instances: instance_reader,
        migrations: migration_reader,
        sleds_synced: AtomicBool::new(false),
        instances_synced: AtomicBool::new(false),
        migrations_synced: AtomicBool::new(false),
        drains: std::sync::OnceLock::new(),
        recorder: Recorder::new(client.clone(), "drain-controller"),
    });
    let controller = Controller::new(
        Api::<Drain>::all(client.clone()),
        watcher::Config::default(),
    );
    let drains = controller.store();
    let _ = context.drains.set(drains.clone());

    let sled_events = reflected(
        Api::<Sled>::all(client.clone()),
        watcher::Config::default(),
        sled_writer,
        context.clone(),
        |c| &c.sleds_synced,
    );
    let instance_events = reflected(
        Api::<Instance>::all(client.clone()),
        watcher::Config::default(),
        instance_writer,
        context.clone(),
        |c| &c.instances_synced,
    );
    let migration_events = reflected(
        Api::<Migration>::all(client.clone()),
        watcher::Config::default().labels(DRAIN_LABEL),
        migration_writer,
        context.clone(),
        |c| &c.migrations_synced,
    );
    let for_sled = drains.clone();
    let for_instance = drains.clone();
    controller
        .watches_stream(sled_events, move |sled: Sled| {
            drains_touching(&for_sled, Some(&sled.name_any()), None)
        })
        .watches_stream(instance_events, move |instance: Instance| {
            let namespace = instance.namespace().unwrap_or_default();
            let sled = instance.status.as_ref().and_then(|s| s.sled.clone());
            drains_touching(
                &for_instance,
                sled.as_deref(),
                Some((&namespace, &instance.name_any())),
            )
        })
        .watches_stream(migration_events, |migration: Migration| {
            migration
                .labels()
                .get(DRAIN_LABEL)
                .map(|drain| ObjectRef::new(drain))
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "drain reconcile");
            }
        })
        .await;
}

async fn reconcile(drain: Arc<Drain>, context: Arc<Context>) -> Result<Requeue, Error> {
    if !context.synced() {
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    let name = drain.name_any();
    let sleds = context.sleds.state();
    let instances = context.instances.state();
    let migrations: Vec<Arc<Migration>> = context
        .migrations
        .state()
        .into_iter()
        .filter(|m| m.labels().get(DRAIN_LABEL) == Some(&name))
        .collect();
    let earlier_drain = context
        .drains
        .get()
        .and_then(|drains| earlier_drain(&drain, &drains.state()));
    let observed = Observed {
        drain: &drain,
        sleds: &sleds,
        instances: &instances,
        migrations: &migrations,
        earlier_drain,
        now: corral_client::clock::now(),
    };
    let plan = plan::plan(&observed);
    execute(&drain, &plan, &context).await?;
    Ok(match plan.requeue {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
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
        .filter(|other| {
            let phase = other.status.as_ref().and_then(|s| s.phase);
            !phase.is_some_and(DrainPhase::is_final)
        })
        .filter(|other| order(other) < order(drain))
        .map(|other| other.name_any())
        .next()
}

fn error_policy(_drain: Arc<Drain>, error: &Error, _context: Arc<Context>) -> Requeue {
    crate::error::requeue(error, "drain")
}

/// Executes a plan in order; Events go last, so that they never delay the work they report.
async fn execute(drain: &Drain, plan: &plan::Plan, context: &Context) -> Result<(), Error> {
    let client = &context.client;
    let name = drain.name_any();
    let mut current = drain.clone();
    for action in &plan.actions {
        match action {
            Action::Cordon { sled } => {
                let api: Api<Sled> = Api::all(client.clone());
                let patch = serde_json::json!({"spec": {"unschedulable": true}});
                let cordoned = api
                    .patch(sled, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| Error::Api {
                        operation: "cordoning sled",
                        object: sled.clone(),
                        source,
                    })?;
                context
                    .recorder
                    .normal(
                        &cordoned,
                        Reason::Cordoned,
                        format!("cordoned by drain {name}"),
                    )
                    .await;
            }
            Action::WriteStatus => {
                let api: Api<Drain> = Api::all(client.clone());
                let mut updated = current.clone();
                updated.status = Some(plan.status.clone());
                current = api
                    .replace_status(&name, &PostParams::default(), &updated)
                    .await
                    .map_err(|source| Error::Api {
                        operation: "writing the status of drain",
                        object: name.clone(),
                        source,
                    })?;
            }
            Action::CreateMigration {
                namespace,
                name: migration,
                instance,
                target_sled,
            } => {
                let api: Api<Migration> = Api::namespaced(client.clone(), namespace);
                let object = build_migration(&current, namespace, migration, instance, target_sled);
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(source) => {
                        return Err(Error::Api {
                            operation: "creating migration",
                            object: format!("{namespace}/{migration}"),
                            source,
                        });
                    }
                }
            }
            Action::CancelMigration {
                namespace,
                name: migration,
            } => {
                let api: Api<Migration> = Api::namespaced(client.clone(), namespace);
                let patch = serde_json::json!({"spec": {"cancel": true}});
                match api
                    .patch(migration, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(source) => {
                        return Err(Error::Api {
                            operation: "cancelling migration",
                            object: format!("{namespace}/{migration}"),
                            source,
                        });
                    }
                }
            }
            Action::Event { .. } => {}
        }
    }
    for action in &plan.actions {
        if let Action::Event {
            severity,
            reason,
            message,
        } = action
        {
            match severity {
                Severity::Normal => context.recorder.normal(&current, *reason, message).await,
                Severity::Warning => context.recorder.warning(&current, *reason, message).await,
            }
        }
    }
    Ok(())
}

/// The Migration that moves `instance` for `drain`.
fn build_migration(
    drain: &Drain,
    namespace: &str,
    name: &str,
    instance: &str,
    target_sled: &str,
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
            cancel: false,
        },
        status: None,
    }
}
