//! Placement: which sled a Vmm goes to, and the ledger of what each sled has promised.
//!
//! A sled is *eligible* for an instance if (and only if) its agent reports `Ready=True`, it is
//! not cordoned (`spec.unschedulable`), its `metadata.labels` include the instance's
//! `sledSelector`, its free capacity (capacity minus the ledger's allocation) fits the
//! instance, and no Vmm of the instance's anti-affinity group is on it. Among eligible sleds
//! the one with the most free CPUs wins (spreading load, as Kubernetes' default
//! "least allocated" scoring does); a sled the instance just failed on is used only when no
//! other fits; ties go to the sled name, so the choice is deterministic.
//!
//! # The ledger
//! The allocation of a sled is the sum of the resources of every Vmm on it that still exists
//! (a Vmm frees its sled when its object is gone — the agent removes its finalizer only after
//! freeing the resources). The ledger is fed by the controller's Vmm watch and, so that two
//! placements in quick succession cannot both take the last room, a placement *reserves* its
//! Vmm at once; the Vmm's watch event later replaces the reservation under the same key.
//!
//! # Invariants
//! - A Vmm is counted once, whether it is seen as a reservation, a watched object, or both.
//! - Reservations whose Vmm never appears are dropped after [`RESERVATION_TTL`] (a placement
//!   whose Vmm creation was abandoned), so capacity cannot leak forever.
//!
//! Not responsible for: the agent's own check (it refuses a Vmm that does not fit its real free
//! capacity, reason `InsufficientCapacity`), which guards against a ledger that is wrong.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use corral_crds::{Instance, Resources, Sled, SledConditionType, Vmm, condition};
use kube::ResourceExt;
use tokio::time::Instant;

/// How long a reservation without a watched Vmm is kept.
pub const RESERVATION_TTL: Duration = Duration::from_secs(60);

/// The label naming a Vmm's anti-affinity group (copied from its Instance).
pub const ANTI_AFFINITY_LABEL: &str = "corral.dev/anti-affinity-group";

/// What one Vmm takes from its sled.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    sled: String,
    resources: Resources,
    group: Option<String>,
    /// `Some` for a reservation not yet seen in the watch.
    reserved_at: Option<Instant>,
}

/// The allocation of every sled, by Vmm (`namespace/name`).
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Default)]
struct LedgerInner {
    entries: HashMap<String, Entry>,
    /// Entries collected during a relist, swapped in at its end.
    relist: Option<HashMap<String, Entry>>,
}

fn vmm_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn entry_of(vmm: &Vmm) -> Entry {
    Entry {
        sled: vmm.spec.sled.clone(),
        resources: vmm.spec.resources,
        group: vmm.labels().get(ANTI_AFFINITY_LABEL).cloned(),
        reserved_at: None,
    }
}

/// Why no sled was chosen, for the `Scheduled=False` message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejections {
    pub not_ready: usize,
    pub cordoned: usize,
    pub selector: usize,
    pub capacity: usize,
    pub anti_affinity: usize,
}

impl std::fmt::Display for Rejections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.capacity, "too little free capacity"),
            (self.not_ready, "not Ready"),
            (self.cordoned, "cordoned"),
            (self.selector, "not matching sledSelector"),
            (
                self.anti_affinity,
                "already running its anti-affinity group",
            ),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect();
        if parts.is_empty() {
            f.write_str("no sleds")
        } else {
            write!(f, "sleds: {}", parts.join(", "))
        }
    }
}

/// A placement decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub sled: String,
    pub epoch: u64,
    /// Why this sled, for the `Placed` Event.
    pub because: String,
}

impl Ledger {
    /// Feeds one watch event of the controller's Vmm watch.
    pub fn observe(&self, event: &kube::runtime::watcher::Event<Vmm>) {
        use kube::runtime::watcher::Event;
        let mut inner = self.inner.lock().expect("ledger lock");
        match event {
            Event::Apply(vmm) => {
                let key = vmm_key(&vmm.namespace().unwrap_or_default(), &vmm.name_any());
                inner.entries.insert(key, entry_of(vmm));
            }
            Event::Delete(vmm) => {
                let key = vmm_key(&vmm.namespace().unwrap_or_default(), &vmm.name_any());
                inner.entries.remove(&key);
            }
            Event::Init => inner.relist = Some(HashMap::new()),
            Event::InitApply(vmm) => {
                let key = vmm_key(&vmm.namespace().unwrap_or_default(), &vmm.name_any());
                let entry = entry_of(vmm);
                inner
                    .relist
                    .get_or_insert_with(HashMap::new)
                    .insert(key, entry);
            }
            Event::InitDone => {
                let mut fresh = inner.relist.take().unwrap_or_default();
                // Reservations made during the relist are still owed.
                for (key, entry) in &inner.entries {
                    if entry.reserved_at.is_some() && !fresh.contains_key(key) {
                        fresh.insert(key.clone(), entry.clone());
                    }
                }
                inner.entries = fresh;
            }
        }
    }

    /// Chooses a sled for `instance` among `sleds` and reserves its Vmm `vmm_name` there.
    /// `avoid` is a sled used only when nothing else fits.
    pub fn place(
        &self,
        instance: &Instance,
        vmm_name: &str,
        sleds: &[std::sync::Arc<Sled>],
        avoid: Option<&str>,
    ) -> Result<Placement, Rejections> {
        let mut inner = self.inner.lock().expect("ledger lock");
        inner.expire_reservations();
        let usage = inner.usage();
        let chosen = choose(instance, sleds, &usage, avoid)?;
        let key = vmm_key(&instance.namespace().unwrap_or_default(), vmm_name);
        inner.entries.entry(key).or_insert(Entry {
            sled: chosen.sled.clone(),
            resources: instance.spec.resources(),
            group: instance.spec.anti_affinity_group.clone(),
            reserved_at: Some(Instant::now()),
        });
        Ok(chosen)
    }

    /// Drops the reservation of a Vmm that will not be created after all.
    pub fn release(&self, namespace: &str, vmm_name: &str) {
        let mut inner = self.inner.lock().expect("ledger lock");
        let key = vmm_key(namespace, vmm_name);
        if inner
            .entries
            .get(&key)
            .is_some_and(|e| e.reserved_at.is_some())
        {
            inner.entries.remove(&key);
        }
    }

    /// The allocation of each sled (for tests and `corralctl`-like reports).
    pub fn allocated(&self) -> BTreeMap<String, Resources> {
        let inner = self.inner.lock().expect("ledger lock");
        inner
            .usage()
            .into_iter()
            .map(|(sled, usage)| (sled, usage.allocated))
            .collect()
    }
}

/// What a sled has promised.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub allocated: Resources,
    pub groups: HashSet<String>,
}

impl LedgerInner {
    fn expire_reservations(&mut self) {
        self.entries.retain(|_, e| {
            e.reserved_at
                .is_none_or(|at| at.elapsed() < RESERVATION_TTL)
        });
    }

    fn usage(&self) -> HashMap<String, Usage> {
        let mut usage: HashMap<String, Usage> = HashMap::new();
        for entry in self.entries.values() {
            let sled = usage.entry(entry.sled.clone()).or_default();
            sled.allocated += entry.resources;
            if let Some(group) = &entry.group {
                sled.groups.insert(group.clone());
            }
        }
        usage
    }
}

/// The pure placement decision (see the module docs for the rules).
pub fn choose(
    instance: &Instance,
    sleds: &[std::sync::Arc<Sled>],
    usage: &HashMap<String, Usage>,
    avoid: Option<&str>,
) -> Result<Placement, Rejections> {
    let want = instance.spec.resources();
    let mut rejections = Rejections::default();
    let mut best: Option<(bool, u32, &str, &Sled, Resources)> = None;
    let empty = Usage::default();
    for sled in sleds {
        let name = sled.name_any();
        let Some(status) = sled.status.as_ref() else {
            rejections.not_ready += 1;
            continue;
        };
        if !condition::is_true(&status.conditions, SledConditionType::Ready)
            || sled.metadata.deletion_timestamp.is_some()
        {
            rejections.not_ready += 1;
            continue;
        }
        if sled.spec.unschedulable {
            rejections.cordoned += 1;
            continue;
        }
        let labels = sled.labels();
        if !instance
            .spec
            .sled_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            rejections.selector += 1;
            continue;
        }
        let used = usage.get(&name).unwrap_or(&empty);
        if let Some(group) = &instance.spec.anti_affinity_group
            && used.groups.contains(group)
        {
            rejections.anti_affinity += 1;
            continue;
        }
        let free = status.capacity.saturating_sub(&used.allocated);
        if !want.fits_within(&free) {
            rejections.capacity += 1;
            continue;
        }
        let preferred = avoid != Some(name.as_str());
        let candidate = (
            preferred,
            free.cpus,
            sled.metadata.name.as_deref().unwrap_or(""),
            sled.as_ref(),
            free,
        );
        let better = match &best {
            None => true,
            Some((p, cpus, n, _, _)) => {
                (preferred, free.cpus, std::cmp::Reverse(candidate.2))
                    > (*p, *cpus, std::cmp::Reverse(*n))
            }
        };
        if better {
            best = Some(candidate);
        }
    }
    match best {
        Some((_, _, name, sled, free)) => Ok(Placement {
            sled: name.to_string(),
            epoch: sled.status.as_ref().map(|s| s.epoch).unwrap_or(0),
            because: format!(
                "most free capacity among eligible sleds ({} CPUs, {} MiB free before this instance)",
                free.cpus, free.memory_mib
            ),
        }),
        None => Err(rejections),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use corral_crds::{
        ConditionStatus, InstanceSpec, Reason, SledSpec, SledStatus, condition::Condition,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn sled(name: &str, cpus: u32, ready: bool, cordoned: bool) -> Arc<Sled> {
        let mut sled = Sled::new(
            name,
            SledSpec {
                unschedulable: cordoned,
                ..Default::default()
            },
        );
        sled.status = Some(SledStatus {
            capacity: Resources {
                cpus,
                memory_mib: cpus as u64 * 4096,
            },
            epoch: 3,
            conditions: vec![Condition {
                type_: SledConditionType::Ready,
                status: if ready {
                    ConditionStatus::True
                } else {
                    ConditionStatus::False
                },
                reason: Reason::AgentReady,
                message: String::new(),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..Default::default()
        });
        Arc::new(sled)
    }

    fn instance(name: &str, cpus: u32) -> Instance {
        let mut instance = Instance::new(
            name,
            InstanceSpec {
                cpus,
                memory_mib: 1024,
                image: "debian".into(),
                ..Default::default()
            },
        );
        instance.metadata.namespace = Some("default".into());
        instance
    }

    #[test]
    fn placement_prefers_the_sled_with_most_free_cpus_and_skips_ineligible_ones() {
        let sleds = vec![
            sled("a", 8, true, false),
            sled("b", 16, true, false),
            sled("c", 64, false, false),
            sled("d", 64, true, true),
        ];
        let ledger = Ledger::default();
        let placed = ledger
            .place(&instance("i", 2), "i-v1", &sleds, None)
            .unwrap();
        assert_eq!(placed.sled, "b");
        assert_eq!(placed.epoch, 3);
    }

    #[test]
    fn reservations_count_until_the_watch_replaces_them() {
        let sleds = vec![sled("a", 4, true, false)];
        let ledger = Ledger::default();
        ledger
            .place(&instance("i", 3), "i-v1", &sleds, None)
            .unwrap();
        let refused = ledger
            .place(&instance("j", 2), "j-v1", &sleds, None)
            .unwrap_err();
        assert_eq!(refused.capacity, 1);
        assert_eq!(refused.to_string(), "sleds: 1 too little free capacity");
        ledger.release("default", "i-v1");
        ledger
            .place(&instance("j", 2), "j-v1", &sleds, None)
            .unwrap();
        assert_eq!(ledger.allocated()["a"].cpus, 2);
    }

    #[test]
    fn a_sled_to_avoid_is_used_only_when_nothing_else_fits() {
        let sleds = vec![sled("a", 64, true, false), sled("b", 8, true, false)];
        let ledger = Ledger::default();
        assert_eq!(
            ledger
                .place(&instance("i", 1), "i-v1", &sleds, Some("a"))
                .unwrap()
                .sled,
            "b"
        );
        assert_eq!(
            ledger
                .place(&instance("j", 16), "j-v1", &sleds, Some("a"))
                .unwrap()
                .sled,
            "a"
        );
    }

    #[test]
    fn anti_affinity_groups_spread_and_selectors_filter() {
        let mut labelled = (*sled("a", 64, true, false)).clone();
        labelled.labels_mut().insert("rack".into(), "1".into());
        let sleds = vec![Arc::new(labelled), sled("b", 8, true, false)];
        let ledger = Ledger::default();
        let mut first = instance("i", 1);
        first.spec.anti_affinity_group = Some("web".into());
        let mut second = first.clone();
        second.metadata.name = Some("j".into());
        assert_eq!(
            ledger.place(&first, "i-v1", &sleds, None).unwrap().sled,
            "a"
        );
        assert_eq!(
            ledger.place(&second, "j-v1", &sleds, None).unwrap().sled,
            "b"
        );
        let mut third = instance("k", 1);
        third.spec.anti_affinity_group = Some("web".into());
        assert_eq!(
            ledger
                .place(&third, "k-v1", &sleds, None)
                .unwrap_err()
                .anti_affinity,
            2
        );
        let mut selective = instance("l", 1);
        selective
            .spec
            .sled_selector
            .insert("rack".into(), "2".into());
        assert_eq!(
            ledger
                .place(&selective, "l-v1", &sleds, None)
                .unwrap_err()
                .selector,
            2
        );
    }
}
