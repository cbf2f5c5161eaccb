//! Where a drained sled's instances can go: what every sled has promised ([`usage_of`]), the
//! target the scheduler's rules choose for one instance ([`target_for`]), and, when none
//! fits, why not in words ([`why_not`]). Pure, like the rest of the drain's plan.
//!
//! # Invariants
//! - The rules are the scheduler's (`scheduler::eligibility`, `scheduler::choose`): a drain
//!   never plans a move the scheduler would refuse, and its refusal says what the scheduler
//!   saw.

use std::collections::HashMap;
use std::sync::Arc;

use corral_crds::{Instance, Sled};
use kube::ResourceExt;

use crate::scheduler::{self, Ineligible, Usage};

pub(super) fn key(instance: &Instance) -> (String, String) {
    (
        instance.namespace().unwrap_or_default(),
        instance.name_any(),
    )
}

pub(super) fn describe(instance: &Instance) -> String {
    let (namespace, name) = key(instance);
    let want = instance.spec.resources();
    format!(
        "{namespace}/{name} ({} CPUs, {} MiB)",
        want.cpus, want.memory_mib
    )
}

fn sled_of(instance: &Instance) -> Option<&str> {
    instance.status.as_ref().and_then(|s| s.sled.as_deref())
}

/// What every sled has promised: the allocation its agent reports, and the anti-affinity
/// groups of the instances on it.
pub(super) fn usage_of(sleds: &[Arc<Sled>], instances: &[Arc<Instance>]) -> HashMap<String, Usage> {
    let mut usage: HashMap<String, Usage> = sleds
        .iter()
        .map(|sled| {
            let allocated = sled
                .status
                .as_ref()
                .map(|s| s.allocated)
                .unwrap_or_default();
            (
                sled.name_any(),
                Usage {
                    allocated,
                    groups: Default::default(),
                },
            )
        })
        .collect();
    for instance in instances {
        if let (Some(sled), Some(group)) = (sled_of(instance), &instance.spec.anti_affinity_group) {
            usage
                .entry(sled.to_string())
                .or_default()
                .groups
                .insert(group.clone());
        }
    }
    usage
}

pub(super) fn reserve(usage: &mut HashMap<String, Usage>, sled: &str, instance: &Instance) {
    let entry = usage.entry(sled.to_string()).or_default();
    entry.allocated += instance.spec.resources();
    if let Some(group) = &instance.spec.anti_affinity_group {
        entry.groups.insert(group.clone());
    }
}

/// Why `sled` cannot take `instance`, in words, or `None` if it can.
pub fn why_not(instance: &Instance, sled: &Sled, usage: &HashMap<String, Usage>) -> Option<String> {
    let name = sled.name_any();
    let why = scheduler::eligibility(instance, sled, usage).err()?;
    Some(match why {
        Ineligible::NotReady => format!("{name} is not Ready"),
        Ineligible::Cordoned => format!("{name} is cordoned"),
        Ineligible::Selector => format!("{name} does not match its sledSelector"),
        Ineligible::AntiAffinity(group) => {
            format!("{name} already runs anti-affinity group {group}")
        }
        Ineligible::Capacity { free } => {
            format!(
                "{name} has {} CPUs, {} MiB free",
                free.cpus, free.memory_mib
            )
        }
    })
}

/// Chooses a target for `instance` among the sleds other than the drained one (the scheduler's
/// rules: the most free CPUs wins), or says why none fits.
pub(super) fn target_for(
    instance: &Instance,
    drained: &str,
    sleds: &[Arc<Sled>],
    usage: &HashMap<String, Usage>,
    avoid: Option<&str>,
) -> Result<String, String> {
    // By name, so that the message reads the same whatever order the cache lists them in.
    let mut others: Vec<Arc<Sled>> = sleds
        .iter()
        .filter(|s| s.name_any() != drained)
        .cloned()
        .collect();
    others.sort_by_key(|s| s.name_any());
    match scheduler::choose(instance, &others, usage, avoid) {
        Ok(placement) => Ok(placement.sled),
        Err(_) => {
            let reasons: Vec<String> = others
                .iter()
                .filter_map(|sled| why_not(instance, sled, usage))
                .collect();
            let reasons = if reasons.is_empty() {
                "there is no other sled".to_string()
            } else {
                reasons.join(", ")
            };
            Err(format!("{} fits no sled: {reasons}", describe(instance)))
        }
    }
}

/// The instances on the sled, largest first (so that the plan packs the hardest ones while
/// there is most room), then by name.
pub(super) fn on_sled<'a>(instances: &'a [Arc<Instance>], sled: &str) -> Vec<&'a Arc<Instance>> {
    let mut on: Vec<&Arc<Instance>> = instances
        .iter()
        .filter(|i| sled_of(i) == Some(sled))
        .collect();
    on.sort_by_key(|i| {
        let want = i.spec.resources();
        (
            std::cmp::Reverse(want.cpus),
            std::cmp::Reverse(want.memory_mib),
            key(i),
        )
    });
    on
}
