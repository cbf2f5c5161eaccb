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
//! The ledger keeps each sled's totals up to date as entries come and go, so that a placement
//! costs in proportion to the number of sleds, not of Vmms (recomputing the totals at every
//! placement made placing 10,000 instances quadratic: `corral bench rack`).
//!
//! # Invariants
//! - A Vmm is counted once, whether it is seen as a reservation, a watched object, or both.
//! - Each sled's totals are the sum of its entries.
//! - Reservations whose Vmm never appears are dropped after [`RESERVATION_TTL`] (a placement
//!   whose Vmm creation was abandoned), so capacity cannot leak forever.
//!
//! Not responsible for: the agent's own check (it refuses a Vmm that does not fit its real free
//! capacity, reason `InsufficientCapacity`), which guards against a ledger that is wrong.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use corral_crds::{HealthVerdict, Instance, Resources, Sled, Vmm};
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
    /// Change only through `insert`, `remove` and `replace_all`, which keep the totals.
    entries: HashMap<String, Entry>,
    /// Entries collected during a relist, swapped in at its end.
    relist: Option<HashMap<String, Entry>>,
    /// The sum of the entries of each sled.
    usage: HashMap<String, Usage>,
    /// How many entries of each (sled, anti-affinity group) there are: a group leaves a sled's
    /// `groups` with its last entry there.
    group_counts: HashMap<(String, String), usize>,
    /// Reservations in the order they were made, so that expiring them scans only those due.
    reservations: VecDeque<(Instant, String)>,
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
                inner.insert(key, entry_of(vmm));
            }
            Event::Delete(vmm) => {
                let key = vmm_key(&vmm.namespace().unwrap_or_default(), &vmm.name_any());
                inner.remove(&key);
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
                inner.replace_all(fresh);
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
        let chosen = choose(instance, sleds, &inner.usage, avoid)?;
        let key = vmm_key(&instance.namespace().unwrap_or_default(), vmm_name);
        if !inner.entries.contains_key(&key) {
            let entry = Entry {
                sled: chosen.sled.clone(),
                resources: instance.spec.resources(),
                group: instance.spec.anti_affinity_group.clone(),
                reserved_at: Some(Instant::now()),
            };
            inner.insert(key, entry);
        }
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
            inner.remove(&key);
        }
    }

    /// The allocation of each sled (for tests and `corralctl`-like reports).
    pub fn allocated(&self) -> BTreeMap<String, Resources> {
        let inner = self.inner.lock().expect("ledger lock");
        inner
            .usage
            .iter()
            .filter(|(_, usage)| usage.allocated != Resources::default())
            .map(|(sled, usage)| (sled.clone(), usage.allocated))
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
    /// Sets the entry of `key` (replacing any), and adds it to its sled's totals.
    fn insert(&mut self, key: String, entry: Entry) {
        self.remove(&key);
        let usage = self.usage.entry(entry.sled.clone()).or_default();
        // Saturating: Vmms a client wrote with huge resources make the sled full, never wrap
        // its total round to little (the schema's maxima keep real totals far below this).
        usage.allocated = usage.allocated.saturating_add(&entry.resources);
        if let Some(group) = &entry.group {
            usage.groups.insert(group.clone());
            *self
                .group_counts
                .entry((entry.sled.clone(), group.clone()))
                .or_default() += 1;
        }
        if let Some(at) = entry.reserved_at {
            self.reservations.push_back((at, key.clone()));
        }
        self.entries.insert(key, entry);
    }

    /// Removes the entry of `key`, if any, from the entries and its sled's totals.
    fn remove(&mut self, key: &str) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        let Some(usage) = self.usage.get_mut(&entry.sled) else {
            return;
        };
        usage.allocated = usage.allocated.saturating_sub(&entry.resources);
        if let Some(group) = entry.group {
            let counted = (entry.sled, group);
            if let Some(count) = self.group_counts.get_mut(&counted) {
                *count -= 1;
                if *count == 0 {
                    self.group_counts.remove(&counted);
                    usage.groups.remove(&counted.1);
                }
            }
        }
    }

    /// Replaces every entry (the end of a relist).
    fn replace_all(&mut self, entries: HashMap<String, Entry>) {
        self.entries.clear();
        self.usage.clear();
        self.group_counts.clear();
        self.reservations.clear();
        for (key, entry) in entries {
            self.insert(key, entry);
        }
    }

    fn expire_reservations(&mut self) {
        while let Some((at, _)) = self.reservations.front()
            && at.elapsed() >= RESERVATION_TTL
        {
            let (at, key) = self.reservations.pop_front().expect("just looked");
            // Only the reservation itself expires, not a watched Vmm or a newer reservation
            // under the same key.
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.reserved_at == Some(at))
            {
                self.remove(&key);
            }
        }
    }
}

/// Why a sled cannot take an instance (the rules of the module docs, in their order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Its agent does not report `Ready=True`, or the Sled is being deleted.
    NotReady,
    Cordoned,
    /// Its labels do not include the instance's `sledSelector`.
    Selector,
    /// A Vmm of the instance's anti-affinity group is on it.
    AntiAffinity(String),
    /// Its free capacity (capacity minus allocation) does not fit the instance.
    Capacity {
        free: Resources,
    },
}

impl Rejections {
    fn count(&mut self, why: &Ineligible) {
        match why {
            Ineligible::NotReady => self.not_ready += 1,
            Ineligible::Cordoned => self.cordoned += 1,
            Ineligible::Selector => self.selector += 1,
            Ineligible::AntiAffinity(_) => self.anti_affinity += 1,
            Ineligible::Capacity { .. } => self.capacity += 1,
        }
    }
}

/// Whether `sled` is eligible for `instance` given the allocation `usage`; its free capacity
/// if it is.
pub fn eligibility(
    instance: &Instance,
    sled: &Sled,
    usage: &HashMap<String, Usage>,
) -> Result<Resources, Ineligible> {
    let Some(status) = sled.status.as_ref() else {
        return Err(Ineligible::NotReady);
    };
    // A sled the sled-health controller does not judge Healthy (late, unreachable, off,
    // fenced) gets nothing new, whatever its agent last wrote.
    if !sled.is_ready()
        || sled.health() != HealthVerdict::Healthy
        || sled.metadata.deletion_timestamp.is_some()
    {
        return Err(Ineligible::NotReady);
    }
    if sled.spec.unschedulable {
        return Err(Ineligible::Cordoned);
    }
    let labels = sled.labels();
    if !instance
        .spec
        .sled_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return Err(Ineligible::Selector);
    }
    let used = usage.get(&sled.name_any());
    if let Some(group) = &instance.spec.anti_affinity_group
        && used.is_some_and(|used| used.groups.contains(group))
    {
        return Err(Ineligible::AntiAffinity(group.clone()));
    }
    let allocated = used.map(|used| used.allocated).unwrap_or_default();
    let free = status.capacity.saturating_sub(&allocated);
    if !instance.spec.resources().fits_within(&free) {
        return Err(Ineligible::Capacity { free });
    }
    Ok(free)
}

/// The pure placement decision (see the module docs for the rules).
pub fn choose(
    instance: &Instance,
    sleds: &[std::sync::Arc<Sled>],
    usage: &HashMap<String, Usage>,
    avoid: Option<&str>,
) -> Result<Placement, Rejections> {
    let mut rejections = Rejections::default();
    let mut best: Option<(bool, u32, &str, &Sled, Resources)> = None;
    for sled in sleds {
        let name = sled.name_any();
        let free = match eligibility(instance, sled, usage) {
            Ok(free) => free,
            Err(why) => {
                rejections.count(&why);
                continue;
            }
        };
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
        ConditionStatus, InstanceSpec, Reason, SledConditionType, SledSpec, SledStatus,
        condition::Condition,
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

    fn vmm(name: &str, sled: &str, cpus: u32, group: Option<&str>) -> Vmm {
        let mut vmm = Vmm::new(
            name,
            corral_crds::VmmSpec {
                instance: name.into(),
                sled: sled.into(),
                sled_epoch: 3,
                resources: Resources {
                    cpus,
                    memory_mib: 1024,
                },
                image: "debian".into(),
                nics: Vec::new(),
                migrate_from: None,
                reboot_request: None,
            },
        );
        vmm.metadata.namespace = Some("default".into());
        if let Some(group) = group {
            vmm.labels_mut()
                .insert(ANTI_AFFINITY_LABEL.into(), group.into());
        }
        vmm
    }

    #[test]
    fn huge_vmms_fill_their_sled_instead_of_overflowing_its_total() {
        use kube::runtime::watcher::Event;
        let sleds = vec![sled("a", 64, true, false)];
        let ledger = Ledger::default();
        for name in ["h1-v1", "h2-v1"] {
            let mut huge = vmm(name, "a", u32::MAX, None);
            huge.spec.resources.memory_mib = u64::MAX;
            ledger.observe(&Event::Apply(huge));
        }
        let total = ledger.allocated()["a"];
        assert_eq!((total.cpus, total.memory_mib), (u32::MAX, u64::MAX));
        let refused = ledger
            .place(&instance("small", 1), "small-v1", &sleds, None)
            .unwrap_err();
        assert_eq!(refused.capacity, 1);
    }

    #[test]
    fn the_totals_follow_watch_events_reservations_and_relists() {
        use kube::runtime::watcher::Event;
        let sleds = vec![sled("a", 64, true, false), sled("b", 8, true, false)];
        let ledger = Ledger::default();
        let mut grouped = instance("i", 2);
        grouped.spec.anti_affinity_group = Some("web".into());
        assert_eq!(
            ledger.place(&grouped, "i-v1", &sleds, None).unwrap().sled,
            "a"
        );
        // The watch replaces the reservation: counted once.
        ledger.observe(&Event::Apply(vmm("i-v1", "a", 2, Some("web"))));
        ledger.observe(&Event::Apply(vmm("j-v1", "a", 3, Some("web"))));
        assert_eq!(ledger.allocated()["a"].cpus, 5);
        // The group stays on the sled while one of its Vmms does.
        ledger.observe(&Event::Delete(vmm("i-v1", "a", 2, Some("web"))));
        let mut other = instance("k", 1);
        other.spec.anti_affinity_group = Some("web".into());
        assert_eq!(
            ledger.place(&other, "k-v1", &sleds, None).unwrap().sled,
            "b"
        );
        ledger.observe(&Event::Delete(vmm("j-v1", "a", 3, Some("web"))));
        let mut last = instance("l", 1);
        last.spec.anti_affinity_group = Some("web".into());
        assert_eq!(ledger.place(&last, "l-v1", &sleds, None).unwrap().sled, "a");
        // A relist recounts from what it listed, keeping the reservations it did not see.
        ledger.observe(&Event::Init);
        ledger.observe(&Event::InitApply(vmm("m-v1", "b", 4, None)));
        ledger.observe(&Event::InitDone);
        let allocated = ledger.allocated();
        assert_eq!(allocated["a"].cpus, 1, "l-v1 reserved");
        assert_eq!(allocated["b"].cpus, 5, "k-v1 reserved, m-v1 listed");
        ledger.release("default", "l-v1");
        assert!(!ledger.allocated().contains_key("a"));
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
