//! The scheduler / instance controller: keeps every Instance that should run on exactly one
//! sled, and its `status` true to what its Vmms report.
//!
//! Reads Instances (primary), Vmms (owned: a Vmm event wakes its Instance), Sleds (for
//! placement; a Sled reporting an unknown VMM wakes the Instance the VMM claims to be) and
//! Migrations (a Migration wakes its Instance: the controller starts admitted migrations and
//! decides their outcome, docs/migration.md). Writes `Instance.status` (it alone), the instance
//! finalizer, Vmms (create, delete, `spec.rebootRequest`) and Events. The decisions are
//! [`plan::plan`]'s; this file wires the watches and executes plans.
//!
//! # Invariants
//! - Never plans from a cached Instance older than its own last write to it (the
//!   *expectations*: resourceVersions in Corral are one increasing integer, docs/rack.md).
//! - Places nothing until the Vmm and Sled caches have listed once (the ledger would be empty).
//! # Assumptions
//! - Only the leader runs this (see `lib.rs`); each step is idempotent and a reconcile may stop
//!   at any `.await`: the next one re-plans from what was written.

mod migrate;
pub mod plan;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral_client::events::Recorder;
use corral_crds::{
    INSTANCE_FINALIZER, INSTANCE_LABEL, Instance, MigrateFrom, Migration, Reason, Sled,
    VMM_FINALIZER, Vmm, VmmSpec,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

use crate::expectations::Expectations;
use crate::scheduler::{ANTI_AFFINITY_LABEL, Ledger};
use plan::{Action, Observed, PlaceRequest, Severity};

/// How long a created Vmm may take to show up in the cache before it counts as missing.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(30);
/// Even with nothing happening, every Instance is looked at this often.
const RESYNC: Duration = Duration::from_secs(300);

/// The Vmms of each instance (`namespace/instance` → Vmm names), fed by the Vmm watch.
#[derive(Default)]
struct VmmIndex {
    by_instance: std::sync::Mutex<HashMap<String, BTreeSet<String>>>,
    relist: std::sync::Mutex<Option<HashMap<String, BTreeSet<String>>>>,
}

impl VmmIndex {
    fn observe(&self, event: &watcher::Event<Vmm>) {
        let key = |vmm: &Vmm| {
            format!(
                "{}/{}",
                vmm.namespace().unwrap_or_default(),
                vmm.spec.instance
            )
        };
        match event {
            watcher::Event::Apply(vmm) => {
                let mut index = self.by_instance.lock().expect("index lock");
                index.entry(key(vmm)).or_default().insert(vmm.name_any());
            }
            watcher::Event::Delete(vmm) => {
                let mut index = self.by_instance.lock().expect("index lock");
                if let Some(names) = index.get_mut(&key(vmm)) {
                    names.remove(&vmm.name_any());
                    if names.is_empty() {
                        index.remove(&key(vmm));
                    }
                }
            }
            watcher::Event::Init => *self.relist.lock().expect("index lock") = Some(HashMap::new()),
            watcher::Event::InitApply(vmm) => {
                let mut relist = self.relist.lock().expect("index lock");
                relist
                    .get_or_insert_with(HashMap::new)
                    .entry(key(vmm))
                    .or_default()
                    .insert(vmm.name_any());
            }
            watcher::Event::InitDone => {
                let fresh = self
                    .relist
                    .lock()
                    .expect("index lock")
                    .take()
                    .unwrap_or_default();
                *self.by_instance.lock().expect("index lock") = fresh;
            }
        }
    }

    fn names(&self, namespace: &str, instance: &str) -> Vec<String> {
        let index = self.by_instance.lock().expect("index lock");
        index
            .get(&format!("{namespace}/{instance}"))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Shared by every reconcile.
pub struct Context {
    client: kube::Client,
    vmms: Store<Vmm>,
    sleds: Store<Sled>,
    migrations: Store<Migration>,
    ledger: Ledger,
    index: VmmIndex,
    expectations: Expectations,
    /// `namespace/vmm` → when this controller created it (until the cache shows it).
    in_flight: std::sync::Mutex<HashMap<String, Instant>>,
    vmms_synced: AtomicBool,
    sleds_synced: AtomicBool,
    migrations_synced: AtomicBool,
    recorder: Recorder,
}

impl Context {
    fn observe_vmm(&self, event: &watcher::Event<Vmm>) {
        self.ledger.observe(event);
        self.index.observe(event);
        match event {
            watcher::Event::Apply(vmm) => {
                let key = format!("{}/{}", vmm.namespace().unwrap_or_default(), vmm.name_any());
                self.in_flight.lock().expect("in-flight lock").remove(&key);
            }
            // A relist reaches the store only at its end.
            watcher::Event::InitDone => {
                self.in_flight
                    .lock()
                    .expect("in-flight lock")
                    .retain(|key, _| {
                        let (namespace, name) = key.split_once('/').unwrap_or_default();
                        self.vmms
                            .get(&ObjectRef::new(name).within(namespace))
                            .is_none()
                    });
                self.vmms_synced.store(true, Ordering::Release);
            }
            _ => {}
        }
    }

    fn vmms_of(&self, instance: &Instance) -> Vec<Arc<Vmm>> {
        let namespace = instance.namespace().unwrap_or_default();
        self.index
            .names(&namespace, &instance.name_any())
            .into_iter()
            .filter_map(|name| self.vmms.get(&ObjectRef::new(&name).within(&namespace)))
            .collect()
    }

    /// The Migrations of `instance`, from the cache.
    fn migrations_of(&self, instance: &Instance) -> Vec<Arc<Migration>> {
        let namespace = instance.namespace().unwrap_or_default();
        let name = instance.name_any();
        self.migrations
            .state()
            .into_iter()
            .filter(|m| m.spec.instance == name && m.namespace().as_deref() == Some(&namespace))
            .collect()
    }

    fn is_in_flight(&self, namespace: &str, name: &str) -> bool {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        in_flight.retain(|_, at| at.elapsed() < IN_FLIGHT_TTL);
        in_flight.contains_key(&format!("{namespace}/{name}"))
    }
}

/// Runs the controller until `stop` fires; returns when every reconcile has finished.
pub async fn controller(client: kube::Client, concurrency: u16, stop: CancellationToken) {
    let (vmm_reader, vmm_writer) = reflector::store::<Vmm>();
    let (sled_reader, sled_writer) = reflector::store::<Sled>();
    let (migration_reader, migration_writer) = reflector::store::<Migration>();
    let context = Arc::new(Context {
        client: client.clone(),
        vmms: vmm_reader,
        sleds: sled_reader,
        migrations: migration_reader,
        ledger: Ledger::default(),
        index: VmmIndex::default(),
        expectations: Default::default(),
        in_flight: Default::default(),
        vmms_synced: AtomicBool::new(false),
        sleds_synced: AtomicBool::new(false),
        migrations_synced: AtomicBool::new(false),
        recorder: Recorder::new(client.clone(), "instance-controller"),
    });
    let tap = context.clone();
    // The taps run after `reflect`, so that whatever they announce (a Vmm seen, a cache
    // listed) is already in the store when a reconcile looks.
    let vmm_events = watcher(Api::<Vmm>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(vmm_writer)
        .map_ok(move |event| {
            tap.observe_vmm(&event);
            event
        })
        .touched_objects();
    let tap = context.clone();
    let sled_events = watcher(Api::<Sled>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(sled_writer)
        .map_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                tap.sleds_synced.store(true, Ordering::Release);
            }
            event
        })
        .touched_objects();
    let tap = context.clone();
    let migration_events = watcher(
        Api::<Migration>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(migration_writer)
    .map_ok(move |event| {
        if matches!(event, watcher::Event::InitDone) {
            tap.migrations_synced.store(true, Ordering::Release);
        }
        event
    })
    .touched_objects();
    let instances = Api::<Instance>::all(client);
    Controller::new(instances, watcher::Config::default())
        .owns_stream(vmm_events)
        .watches_stream(sled_events, claimed_instances)
        .watches_stream(migration_events, |migration: Migration| {
            let namespace = migration.namespace()?;
            Some(ObjectRef::new(&migration.spec.instance).within(&namespace))
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "instance reconcile");
            }
        })
        .await;
}

async fn reconcile(instance: Arc<Instance>, context: Arc<Context>) -> Result<Requeue, Error> {
    if !context.vmms_synced.load(Ordering::Acquire)
        || !context.sleds_synced.load(Ordering::Acquire)
        || !context.migrations_synced.load(Ordering::Acquire)
    {
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    if context.expectations.is_stale(instance.as_ref()) {
        // Our own last write will arrive through the watch and wake us again.
        return Ok(Requeue::await_change());
    }
    let namespace = instance.namespace().unwrap_or_default();
    let vmms = context.vmms_of(&instance);
    let active_in_flight = instance
        .status
        .as_ref()
        .and_then(|s| s.active_vmm.as_ref())
        .is_some_and(|name| context.is_in_flight(&namespace, name));
    if let Some(active) = instance.status.as_ref().and_then(|s| s.active_vmm.as_ref())
        && !active_in_flight
        && !vmms.iter().any(|vmm| vmm.name_any() == *active)
    {
        // Absence from a cache proves nothing: read the Vmm before planning on its absence
        // (a restart elsewhere while it runs would run the instance twice).
        let api: Api<Vmm> = Api::namespaced(context.client.clone(), &namespace);
        let live = api.get_opt(active).await.map_err(|source| Error::Api {
            operation: "reading vmm",
            object: format!("{namespace}/{active}"),
            source,
        })?;
        if live.is_some() {
            return Ok(Requeue::requeue(Duration::from_millis(200)));
        }
    }
    let status = instance.status.clone().unwrap_or_default();
    let target_in_flight = status
        .target_vmm
        .as_ref()
        .is_some_and(|name| context.is_in_flight(&namespace, name));
    let migrations = context.migrations_of(&instance);
    if let Some(name) = &status.migration
        && !migrations.iter().any(|m| m.name_any() == *name)
    {
        // As for Vmms: read the Migration before planning on its absence (an abort).
        let api: Api<Migration> = Api::namespaced(context.client.clone(), &namespace);
        let live = api.get_opt(name).await.map_err(|source| Error::Api {
            operation: "reading migration",
            object: format!("{namespace}/{name}"),
            source,
        })?;
        if live.is_some() {
            return Ok(Requeue::requeue(Duration::from_millis(200)));
        }
    }
    let sleds = context.sleds.state();
    let unknown_vmms = claims_of(&sleds, &namespace, &instance.name_any());
    let observed = Observed {
        instance: &instance,
        vmms: &vmms,
        active_in_flight,
        unknown_vmms,
        migrations: &migrations,
        target_in_flight,
        now: corral_client::clock::now(),
    };
    let plan = plan::plan(&observed, &mut |request: &PlaceRequest<'_>| {
        let candidates: Vec<Arc<Sled>> = sleds
            .iter()
            .filter(|sled| {
                let name = sled.name_any();
                request.only.is_none_or(|only| only == name)
                    && request.exclude != Some(name.as_str())
            })
            .cloned()
            .collect();
        context
            .ledger
            .place(&instance, request.vmm, &candidates, request.avoid)
    });
    let result = execute(&instance, &plan, &context).await;
    if result.is_err() {
        // A placement whose status was never written must not hold capacity.
        for action in &plan.actions {
            if let Action::CreateVmm { name, .. } = action
                && !context.is_in_flight(&namespace, name)
            {
                context.ledger.release(&namespace, name);
            }
        }
    }
    result?;
    Ok(match plan.requeue {
        Some(after) => Requeue::requeue(after),
        None => Requeue::requeue(RESYNC),
    })
}

/// The unknown VMMs the sleds report that claim to be `namespace/name`, as (sled, VMM id).
fn claims_of(sleds: &[Arc<Sled>], namespace: &str, name: &str) -> Vec<(String, String)> {
    sleds
        .iter()
        .flat_map(|sled| {
            let unknown = sled.status.iter().flat_map(|s| s.unknown_vmms.iter());
            unknown
                .filter(|u| {
                    u.namespace.as_deref() == Some(namespace) && u.instance.as_deref() == Some(name)
                })
                .map(|u| (sled.name_any(), u.id.clone()))
        })
        .collect()
}

/// The Instances a Sled's unknown VMMs claim to be.
fn claimed_instances(sled: Sled) -> Vec<ObjectRef<Instance>> {
    sled.status
        .iter()
        .flat_map(|s| s.unknown_vmms.iter())
        .filter_map(|u| {
            Some(ObjectRef::new(u.instance.as_deref()?).within(u.namespace.as_deref()?))
        })
        .collect()
}

fn error_policy(_instance: Arc<Instance>, error: &Error, _context: Arc<Context>) -> Requeue {
    crate::error::requeue(error, "instance")
}

/// Executes a plan in order; Events go last, so that they never delay the work they report.
async fn execute(instance: &Instance, plan: &plan::Plan, context: &Context) -> Result<(), Error> {
    let client = &context.client;
    let namespace = instance.namespace().unwrap_or_default();
    let name = instance.name_any();
    let instances: Api<Instance> = Api::namespaced(client.clone(), &namespace);
    let vmms: Api<Vmm> = Api::namespaced(client.clone(), &namespace);
    let api_error = |operation: &'static str, object: &str| {
        Error::api(operation, format!("{namespace}/{object}"))
    };
    let mut current = instance.clone();
    for action in &plan.actions {
        match action {
            Action::AddFinalizer | Action::RemoveFinalizer => {
                let mut finalizers: Vec<String> = current
                    .finalizers()
                    .iter()
                    .filter(|f| *f != INSTANCE_FINALIZER)
                    .cloned()
                    .collect();
                if *action == Action::AddFinalizer {
                    finalizers.push(INSTANCE_FINALIZER.to_string());
                }
                let patch = serde_json::json!({"metadata": {
                    "finalizers": finalizers,
                    "resourceVersion": current.resource_version(),
                }});
                let operation = "updating the finalizers of instance";
                match instances
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(updated) => {
                        context.expectations.expect(&updated);
                        current = updated;
                    }
                    Err(kube::Error::Api(status))
                        if status.code == 404 && *action == Action::RemoveFinalizer => {}
                    Err(error) => return Err(api_error(operation, &name)(error)),
                }
            }
            Action::WriteStatus => {
                let mut updated = current.clone();
                updated.status = Some(plan.status.clone());
                let written = instances
                    .replace_status(&name, &PostParams::default(), &updated)
                    .await
                    .map_err(api_error("writing the status of instance", &name))?;
                context.expectations.expect(&written);
                current = written;
            }
            Action::CreateVmm {
                name: vmm_name,
                sled,
                migrate_from,
            } => {
                let vmm = build_vmm(&current, vmm_name, sled, migrate_from.clone(), context);
                context
                    .in_flight
                    .lock()
                    .expect("in-flight lock")
                    .insert(format!("{namespace}/{vmm_name}"), Instant::now());
                match vmms.create(&PostParams::default(), &vmm).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(error) => {
                        context
                            .in_flight
                            .lock()
                            .expect("in-flight lock")
                            .remove(&format!("{namespace}/{vmm_name}"));
                        return Err(api_error("creating vmm", vmm_name)(error));
                    }
                }
            }
            Action::DeleteVmm { name: vmm_name } => {
                match vmms.delete(vmm_name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(api_error("deleting vmm", vmm_name)(error)),
                }
            }
            Action::RebootVmm {
                name: vmm_name,
                request,
            } => {
                let patch = serde_json::json!({"spec": {"rebootRequest": request}});
                vmms.patch(vmm_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_error("asking for a reboot of vmm", vmm_name))?;
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
            publish(context, &current, *severity, *reason, message).await;
        }
    }
    Ok(())
}

async fn publish(
    context: &Context,
    instance: &Instance,
    severity: Severity,
    reason: Reason,
    message: &str,
) {
    match severity {
        Severity::Normal => context.recorder.normal(instance, reason, message).await,
        Severity::Warning => context.recorder.warning(instance, reason, message).await,
    }
}

/// The Vmm an instance's status names, for creation on `sled` at the sled's current epoch.
fn build_vmm(
    instance: &Instance,
    name: &str,
    sled: &str,
    migrate_from: Option<MigrateFrom>,
    context: &Context,
) -> Vmm {
    let epoch = context
        .sleds
        .get(&ObjectRef::new(sled))
        .and_then(|s| s.status.as_ref().map(|status| status.epoch))
        .unwrap_or(0);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(INSTANCE_LABEL.to_string(), instance.name_any());
    if let Some(group) = &instance.spec.anti_affinity_group {
        labels.insert(ANTI_AFFINITY_LABEL.to_string(), group.clone());
    }
    Vmm {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: instance.namespace(),
            labels: Some(labels),
            finalizers: Some(vec![VMM_FINALIZER.to_string()]),
            owner_references: instance.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        spec: VmmSpec {
            instance: instance.name_any(),
            sled: sled.to_string(),
            sled_epoch: epoch,
            resources: instance.spec.resources(),
            image: instance.spec.image.clone(),
            nics: instance.spec.nics.clone(),
            migrate_from,
            // A reboot asked for before this VMM existed is not this VMM's to do.
            reboot_request: None,
        },
        status: None,
    }
}
