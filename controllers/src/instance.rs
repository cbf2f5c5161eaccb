//! The scheduler / instance controller: keeps every Instance that should run on exactly one
//! sled, and its `status` true to what its Vmms report.
//!
//! Reads Instances (primary), Vmms (owned: a Vmm event wakes its Instance), Sleds (for
//! placement; a Sled reporting an unknown VMM wakes the Instance the VMM claims to be) and
//! Migrations (a Migration wakes its Instance: the controller starts admitted migrations and
//! decides their outcome, docs/migration.md). Writes `Instance.status` (it alone), the instance
//! finalizer, Vmms (create, delete, `spec.rebootRequest`) and Events. The decisions are
//! [`plan::plan`]'s; this file wires the watches, observes, and carries out the controller's
//! own actions; the kit (`crate::kit`) runs the rest: readiness (nothing is placed until the
//! Vmm, Sled and Migration caches listed: the ledger would be empty), the expectations (never
//! planning from a cached Instance older than its own last write), execution and outcomes.
//!
//! # Invariants
//! - Never acts on a Vmm's or a Migration's absence from its cache without a live read (a
//!   restart elsewhere while the Vmm runs would run the instance twice).
//! - A placement whose Vmm was never created holds no capacity: a plan that fails before its
//!   create releases its reservation.
//! # Assumptions
//! - Only the leader runs this (see `lib.rs`); each step is idempotent and a reconcile may stop
//!   at any `.await`: the next one re-plans from what was written.

mod migrate;
pub mod plan;
mod planning;
mod restart;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use corral_crds::{
    DIRTY_RATE_ANNOTATION, HealthVerdict, INSTANCE_FINALIZER, INSTANCE_LABEL, Instance,
    InstanceStatus, MigrateFrom, Migration, Sled, VMM_FINALIZER, Vmm, VmmSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::kit::{
    Apply, Board, Cache, Caches, Controller, Effects, Error, Reconciled, Reconciler, Wait,
};
use crate::scheduler::{ANTI_AFFINITY_LABEL, Ledger};
pub use planning::{Action, Observed, PlaceRequest, Plan};

/// How long a created Vmm may take to show up in the cache before it counts as missing.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(30);
/// Even with nothing happening, every Instance is looked at this often.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon an instance whose cache is behind a live read is looked at again.
const CACHE_BEHIND_RETRY: Duration = Duration::from_millis(200);

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

/// What the controller knows of Vmms beyond its cache, fed by the Vmm watch: the allocation
/// ledger, the Vmms of each instance, and the Vmms it created that the cache has not shown.
struct VmmBook {
    vmms: Cache<Vmm>,
    ledger: Ledger,
    index: VmmIndex,
    /// `namespace/vmm` → when this controller created it (until the cache shows it).
    in_flight: std::sync::Mutex<HashMap<String, Instant>>,
}

impl VmmBook {
    fn observe(&self, event: &watcher::Event<Vmm>) {
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
                        self.vmms.get_in(namespace, name).is_none()
                    });
            }
            _ => {}
        }
    }

    fn vmms_of(&self, instance: &Instance) -> Vec<Arc<Vmm>> {
        let namespace = instance.namespace().unwrap_or_default();
        self.index
            .names(&namespace, &instance.name_any())
            .into_iter()
            .filter_map(|name| self.vmms.get_in(&namespace, &name))
            .collect()
    }

    fn is_in_flight(&self, namespace: &str, name: &str) -> bool {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        in_flight.retain(|_, at| at.elapsed() < IN_FLIGHT_TTL);
        in_flight.contains_key(&format!("{namespace}/{name}"))
    }

    fn set_in_flight(&self, namespace: &str, name: &str, in_flight: bool) {
        let mut map = self.in_flight.lock().expect("in-flight lock");
        let key = format!("{namespace}/{name}");
        if in_flight {
            map.insert(key, Instant::now());
        } else {
            map.remove(&key);
        }
    }
}

/// The instance controller's state beside its caches.
pub struct InstanceController {
    effects: Effects,
    book: Arc<VmmBook>,
    sleds: Cache<Sled>,
    migrations: Cache<Migration>,
}

/// Runs the controller until `stop` fires; returns when every reconcile has finished.
pub async fn controller(
    client: kube::Client,
    concurrency: u16,
    board: Board,
    stop: CancellationToken,
) {
    let mut caches = Caches::new(client.clone());
    let instances = caches.primary::<Instance>(watcher::Config::default());
    let vmms = caches.watch::<Vmm>(watcher::Config::default());
    let sleds = caches.watch::<Sled>(watcher::Config::default());
    let migrations = caches.watch::<Migration>(watcher::Config::default());
    let book = Arc::new(VmmBook {
        vmms: vmms.cache(),
        ledger: Ledger::default(),
        index: VmmIndex::default(),
        in_flight: Default::default(),
    });
    let tap = book.clone();
    let vmms = vmms.tap(move |event| tap.observe(event));
    let reconciler = InstanceController {
        effects: Effects::new(client, "instance-controller"),
        book,
        sleds: sleds.cache(),
        migrations: migrations.cache(),
    };
    let readiness = caches.readiness();
    let on_sled = SledChanges::new(instances.cache());
    Controller::<InstanceController>::new(instances, &board)
        .owns(vmms)
        .watches(sleds, move |sled: Sled| {
            let mut touched = claimed_instances(&sled);
            touched.extend(on_sled.instances_to_look_at(&sled));
            touched
        })
        .watches(migrations, |migration: Migration| {
            let namespace = migration.namespace()?;
            Some(ObjectRef::new(&migration.spec.instance).within(&namespace))
        })
        .run(reconciler, readiness, concurrency, stop)
        .await;
}

impl InstanceController {
    /// The Migrations of `instance`, from the cache.
    fn migrations_of(&self, instance: &Instance) -> Vec<Arc<Migration>> {
        let namespace = instance.namespace();
        let name = instance.name_any();
        self.migrations
            .filter(|m| m.spec.instance == name && m.namespace() == namespace)
    }

    /// Whether the object the status names is missing from the cache but exists: then the
    /// cache is behind, and nothing may be planned on its absence.
    async fn cache_is_behind<K: crate::kit::effects::Object>(
        &self,
        namespace: &str,
        named: Option<&String>,
        cached: bool,
    ) -> Result<bool, Error> {
        let Some(name) = named else {
            return Ok(false);
        };
        if cached {
            return Ok(false);
        }
        let live = self.effects.read::<K>(Some(namespace), name).await?;
        Ok(live.is_some())
    }
}

impl Reconciler for InstanceController {
    const RESYNC: Option<Duration> = Some(RESYNC);

    async fn reconcile(
        &self,
        instance: Arc<Instance>,
    ) -> Result<Reconciled<InstanceStatus, Action>, Error> {
        let namespace = instance.namespace().unwrap_or_default();
        let status = instance.status.clone().unwrap_or_default();
        let vmms = self.book.vmms_of(&instance);
        let in_flight = |name: &Option<String>| {
            name.as_ref()
                .is_some_and(|name| self.book.is_in_flight(&namespace, name))
        };
        let active_in_flight = in_flight(&status.active_vmm);
        let active_cached = vmms
            .iter()
            .any(|vmm| Some(vmm.name_any()) == status.active_vmm);
        // Absence from a cache proves nothing: read the Vmm before planning on its absence
        // (a restart elsewhere while it runs would run the instance twice).
        if self
            .cache_is_behind::<Vmm>(
                &namespace,
                status.active_vmm.as_ref(),
                active_in_flight || active_cached,
            )
            .await?
        {
            return Ok(Reconciled::Wait(
                Wait::CacheBehind,
                Some(CACHE_BEHIND_RETRY),
            ));
        }
        let target_in_flight = in_flight(&status.target_vmm);
        let migrations = self.migrations_of(&instance);
        // As for Vmms: read the Migration before planning on its absence (an abort).
        let migration_cached = migrations
            .iter()
            .any(|m| Some(m.name_any()) == status.migration);
        if self
            .cache_is_behind::<Migration>(&namespace, status.migration.as_ref(), migration_cached)
            .await?
        {
            return Ok(Reconciled::Wait(
                Wait::CacheBehind,
                Some(CACHE_BEHIND_RETRY),
            ));
        }
        let sleds = self.sleds.all();
        let observed = Observed {
            instance: &instance,
            vmms: &vmms,
            active_in_flight,
            unknown_vmms: claims_of(&sleds, &namespace, &instance.name_any()),
            migrations: &migrations,
            target_in_flight,
            sleds: &sleds,
            now: corral_client::clock::now(),
        };
        let planned = plan::plan(&observed, &mut |request: &PlaceRequest<'_>| {
            let candidates: Vec<Arc<Sled>> = sleds
                .iter()
                .filter(|sled| {
                    let name = sled.name_any();
                    request.only.is_none_or(|only| only == name)
                        && request.exclude != Some(name.as_str())
                })
                .cloned()
                .collect();
            self.book
                .ledger
                .place(&instance, request.vmm, &candidates, request.avoid)
        });
        Ok(Reconciled::Plan(planned))
    }

    fn cleanup(&self, instance: &Instance, plan: &Plan, executed: Result<(), &Error>) {
        if executed.is_ok() {
            return;
        }
        // A placement whose status was never written must not hold capacity.
        let namespace = instance.namespace().unwrap_or_default();
        for action in plan.actions() {
            if let Action::CreateVmm { name, .. } = action
                && !self.book.is_in_flight(&namespace, name)
            {
                self.book.ledger.release(&namespace, name);
            }
        }
    }
}

impl Apply for InstanceController {
    type Object = Instance;
    type Status = InstanceStatus;
    type Action = Action;

    const NAME: &'static str = "instance";
    const FINALIZER: Option<&'static str> = Some(INSTANCE_FINALIZER);

    fn effects(&self) -> &Effects {
        &self.effects
    }

    fn with_status(object: &Instance, status: &InstanceStatus) -> Instance {
        Instance {
            status: Some(status.clone()),
            ..object.clone()
        }
    }

    fn status_of(object: &Instance) -> Option<&InstanceStatus> {
        object.status.as_ref()
    }

    fn phase(status: &InstanceStatus) -> Option<String> {
        status.state.map(|s| s.to_string())
    }

    async fn apply(&self, action: &Action, instance: &Instance) -> Result<Option<Instance>, Error> {
        let namespace = instance.namespace().unwrap_or_default();
        match action {
            Action::CreateVmm {
                name,
                sled,
                migrate_from,
            } => {
                let vmm = build_vmm(instance, name, sled, migrate_from.clone(), &self.sleds);
                self.book.set_in_flight(&namespace, name, true);
                if let Err(error) = self.effects.create(&vmm).await {
                    self.book.set_in_flight(&namespace, name, false);
                    return Err(error);
                }
            }
            Action::DeleteVmm { name } => {
                self.effects.delete::<Vmm>(Some(&namespace), name).await?;
            }
            Action::RebootVmm { name, request } => {
                let patch = serde_json::json!({"spec": {"rebootRequest": request}});
                self.effects
                    .patch::<Vmm>(Some(&namespace), name, &patch)
                    .await?;
            }
        }
        Ok(None)
    }
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
fn claimed_instances(sled: &Sled) -> Vec<ObjectRef<Instance>> {
    sled.status
        .iter()
        .flat_map(|s| s.unknown_vmms.iter())
        .filter_map(|u| {
            Some(ObjectRef::new(u.instance.as_deref()?).within(u.namespace.as_deref()?))
        })
        .collect()
}

/// Which instances a change of a Sled concerns: those on it, when its epoch or its health
/// verdict changed (a fence ends their Vmms; a verdict colours their conditions). Other Sled
/// changes (allocation, V2P acknowledgements) wake nobody.
struct SledChanges {
    instances: Cache<Instance>,
    seen: std::sync::Mutex<HashMap<String, (u64, HealthVerdict)>>,
}

impl SledChanges {
    fn new(instances: Cache<Instance>) -> SledChanges {
        SledChanges {
            instances,
            seen: Default::default(),
        }
    }

    fn instances_to_look_at(&self, sled: &Sled) -> Vec<ObjectRef<Instance>> {
        let name = sled.name_any();
        let now = (sled.epoch(), sled.health());
        let before = self
            .seen
            .lock()
            .expect("sled changes lock")
            .insert(name.clone(), now);
        if before.is_none_or(|before| before == now) {
            return Vec::new();
        }
        self.instances
            .filter(|instance| {
                instance.status.as_ref().is_some_and(|status| {
                    status.sled.as_deref() == Some(name.as_str())
                        || status.target_sled.as_deref() == Some(name.as_str())
                })
            })
            .iter()
            .map(|instance| ObjectRef::from_obj(instance.as_ref()))
            .collect()
    }
}

/// The Vmm an instance's status names, for creation on `sled` at the sled's current epoch.
fn build_vmm(
    instance: &Instance,
    name: &str,
    sled: &str,
    migrate_from: Option<MigrateFrom>,
    sleds: &Cache<Sled>,
) -> Vmm {
    let epoch = sleds
        .get(sled)
        .and_then(|s| s.status.as_ref().map(|status| status.epoch))
        .unwrap_or(0);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(INSTANCE_LABEL.to_string(), instance.name_any());
    if let Some(group) = &instance.spec.anti_affinity_group {
        labels.insert(ANTI_AFFINITY_LABEL.to_string(), group.clone());
    }
    // Settings the guest is made with travel with the Vmm (the API server checked them).
    let annotations = instance
        .annotations()
        .get(DIRTY_RATE_ANNOTATION)
        .map(|rate| [(DIRTY_RATE_ANNOTATION.to_string(), rate.clone())].into());
    Vmm {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: instance.namespace(),
            labels: Some(labels),
            annotations,
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
