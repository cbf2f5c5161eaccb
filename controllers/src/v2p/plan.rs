//! The V2P controller's decisions for one VPC, as a pure function of the VpcRoutes as written
//! and the instances as the cache shows them.
//!
//! [`claims`] turns cached Instances into [`Claim`]s (an IP of the VPC at a sled, from an
//! instance whose active Vmm runs); [`merge`] merges the claims into the current mappings and
//! returns the mappings to write, the mappings whose removal needs a live read of their
//! Instance first, and the IP conflicts to report; [`plan`] turns a merge into the VPC's
//! [`Plan`] (the mappings to write, the status to show, the conflicts to report).
//! `v2p.rs` does the reads; the kit executes the plan.
//!
//! # Invariants
//! - **Never backwards.** A mapping is replaced only by a claim of the same instance with a
//!   higher `locationGeneration`; a stale cache (a lower one) changes nothing.
//! - **Never removed on a stale read.** A mapping with no claim of its instance stays and is
//!   listed in [`Merge::verify`]; it goes only when the caller passes its IP in `removable`,
//!   after a live read of the Instance showed it gone, not running, without that IP, or an
//!   earlier life of it ([`removable_after_read`]).
//! - **First claim wins.** Two instances claiming one IP: the existing mapping stays; with none,
//!   the instance created first gets it. The others are [`Merge::conflicts`].
//! - `since` is `next_generation` for every changed or new mapping and kept otherwise;
//!   `merge(current = merge(..).mappings)` changes nothing (tests).

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use corral_client::events::EventType;
use corral_crds::{Instance, InstanceState, Reason, Sled, V2pMapping, VpcRoutes, VpcRoutesStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;

use crate::kit::{self, Kind, Step};

/// One instance IP in a VPC, as the cache shows the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub ip: String,
    pub namespace: String,
    pub instance: String,
    pub sled: String,
    pub location_generation: u64,
    /// The Instance's creation time (RFC 3339), which orders claims of one IP.
    pub created: String,
}

impl Claim {
    fn is_of(&self, mapping: &V2pMapping) -> bool {
        self.namespace == mapping.namespace && self.instance == mapping.instance
    }
}

/// Two instances claiming one IP: `holder` keeps it, `claimant` does not get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub ip: String,
    pub holder: (String, String),
    pub claimant: (String, String),
}

/// What the mappings of one VPC become.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merge {
    /// The spec's mappings after the plan, sorted by IP.
    pub mappings: Vec<V2pMapping>,
    /// Whether `mappings` differs from the current spec (a write is due).
    pub changed: bool,
    /// Mappings no cached claim supports: removed only once a live read confirms it.
    pub verify: Vec<V2pMapping>,
    pub conflicts: Vec<Conflict>,
}

/// Whether the instance runs somewhere: its active Vmm runs (`Running`, or `Migrating` while the
/// source still runs it) and it names its sled.
pub fn is_placed(instance: &Instance) -> bool {
    instance.status.as_ref().is_some_and(|status| {
        matches!(
            status.state,
            Some(InstanceState::Running) | Some(InstanceState::Migrating)
        ) && status.sled.is_some()
            && status.active_vmm.is_some()
    })
}

/// The claims `instance` makes in `vpc` (none unless it is placed and not being deleted).
pub fn claims(instance: &Instance, vpc: &str) -> Vec<Claim> {
    if !is_placed(instance) || instance.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let status = instance
        .status
        .as_ref()
        .expect("a placed instance has a status");
    let created = instance
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    instance
        .spec
        .nics
        .iter()
        .filter(|nic| nic.vpc == vpc)
        .map(|nic| Claim {
            ip: nic.ip.clone(),
            namespace: instance.namespace().unwrap_or_default(),
            instance: instance.name_any(),
            sled: status.sled.clone().unwrap_or_default(),
            location_generation: status.location_generation,
            created: created.clone(),
        })
        .collect()
}

/// Whether a live read of the mapping's Instance (`None`: it does not exist) allows removing
/// `mapping` from `vpc`.
pub fn removable_after_read(mapping: &V2pMapping, vpc: &str, live: Option<&Instance>) -> bool {
    let Some(instance) = live else {
        return true;
    };
    if instance.metadata.deletion_timestamp.is_some() || !is_placed(instance) {
        return true;
    }
    let has_ip = instance
        .spec
        .nics
        .iter()
        .any(|nic| nic.vpc == vpc && nic.ip == mapping.ip);
    // A lower locationGeneration than the mapping's is a later instance of the same name (the
    // generation of one Instance never goes down).
    let earlier_life = instance
        .status
        .as_ref()
        .is_some_and(|s| s.location_generation < mapping.location_generation);
    !has_ip || earlier_life
}

/// Merges `claims` into `current` (see the module docs). `removable` holds the IPs whose
/// removal a live read confirmed; `next_generation` is the generation the write will make.
pub fn merge(
    current: &[V2pMapping],
    claims: &[Claim],
    removable: &BTreeSet<String>,
    next_generation: i64,
) -> Merge {
    let mut by_ip: BTreeMap<&str, Vec<&Claim>> = BTreeMap::new();
    for claim in claims {
        by_ip.entry(claim.ip.as_str()).or_default().push(claim);
    }
    for list in by_ip.values_mut() {
        list.sort_by(|a, b| {
            (&a.created, &a.namespace, &a.instance).cmp(&(&b.created, &b.namespace, &b.instance))
        });
        list.dedup_by(|a, b| a.namespace == b.namespace && a.instance == b.instance);
    }
    let mut result = Merge::default();
    let mut seen = BTreeSet::new();
    for mapping in current {
        let ip_claims = by_ip.get(mapping.ip.as_str()).cloned().unwrap_or_default();
        let own = ip_claims.iter().find(|claim| claim.is_of(mapping));
        if own.is_none() && removable.contains(&mapping.ip) {
            // Removed: the IP is free for the claims below.
            result.changed = true;
            continue;
        }
        seen.insert(mapping.ip.as_str());
        for other in ip_claims.iter().filter(|claim| !claim.is_of(mapping)) {
            result.conflicts.push(Conflict {
                ip: mapping.ip.clone(),
                holder: (mapping.namespace.clone(), mapping.instance.clone()),
                claimant: (other.namespace.clone(), other.instance.clone()),
            });
        }
        match own {
            Some(claim) if claim.location_generation > mapping.location_generation => {
                result.mappings.push(V2pMapping {
                    sled: claim.sled.clone(),
                    location_generation: claim.location_generation,
                    since: next_generation,
                    ..mapping.clone()
                });
                result.changed = true;
            }
            Some(_) => result.mappings.push(mapping.clone()),
            None => {
                result.verify.push(mapping.clone());
                result.mappings.push(mapping.clone());
            }
        }
    }
    for (ip, ip_claims) in &by_ip {
        if seen.contains(ip) {
            continue;
        }
        let (first, others) = ip_claims.split_first().expect("a claimed IP has a claim");
        for other in others {
            result.conflicts.push(Conflict {
                ip: ip.to_string(),
                holder: (first.namespace.clone(), first.instance.clone()),
                claimant: (other.namespace.clone(), other.instance.clone()),
            });
        }
        result.mappings.push(V2pMapping {
            ip: ip.to_string(),
            sled: first.sled.clone(),
            location_generation: first.location_generation,
            namespace: first.namespace.clone(),
            instance: first.instance.clone(),
            since: next_generation,
        });
        result.changed = true;
    }
    result.mappings.sort_by(|a, b| a.ip.cmp(&b.ip));
    result
}

/// The V2P controller's own action.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write these mappings as the VPC's spec (creating its VpcRoutes if there is none yet).
    WriteMappings(Vec<V2pMapping>),
}

impl Kind for Action {
    fn kind(&self) -> &'static str {
        match self {
            Action::WriteMappings(_) => "WriteMappings",
        }
    }
}

/// What to do for one VPC: its mappings, its status, the conflicts to report.
pub type Plan = kit::Plan<VpcRoutesStatus, Action>;

/// An IP conflict to report, with the Instance that does not get the IP.
pub struct Report<'a> {
    pub conflict: &'a Conflict,
    pub claimant: ObjectReference,
}

/// The plan of `vpc`: write `merged` if it changed, then the status the Sleds' acknowledgements
/// give, then one Warning per conflict in `new_conflicts` (those not reported before).
pub fn plan(
    vpc: &str,
    current: Option<&VpcRoutes>,
    merged: &Merge,
    sleds: &[Arc<Sled>],
    new_conflicts: &[Report<'_>],
) -> Plan {
    let generation = current.and_then(|r| r.metadata.generation).unwrap_or(0);
    let mut plan = Plan::new(VpcRoutesStatus::default());
    if merged.changed {
        plan.act(Action::WriteMappings(merged.mappings.clone()));
    }
    if current.is_some() || merged.changed {
        // The status of the object as it will be stored: a spec write makes the next
        // generation (every write is conditional on the one it was planned from).
        let generation = if merged.changed {
            generation + 1
        } else {
            generation
        };
        let mapped = merged.mappings.len() as u32;
        plan.status = status_of(vpc, generation, mapped, sleds);
        if current.and_then(|r| r.status.as_ref()) != Some(&plan.status) {
            plan.steps.push(Step::WriteStatus);
        }
    }
    for report in new_conflicts {
        let conflict = report.conflict;
        let message = format!(
            "IP {} in VPC {vpc} is already mapped to instance {}/{}; this instance gets no mapping for it",
            conflict.ip, conflict.holder.0, conflict.holder.1
        );
        plan.event_about(
            report.claimant.clone(),
            EventType::Warning,
            Reason::IpConflict,
            message,
        );
    }
    plan
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

/// The status a VpcRoutes of `vpc` at `generation` with `mapped` mappings should show, given
/// the Sleds.
pub fn status_of(vpc: &str, generation: i64, mapped: u32, sleds: &[Arc<Sled>]) -> VpcRoutesStatus {
    let ready: Vec<&Arc<Sled>> = sleds.iter().filter(|sled| sled.is_ready()).collect();
    let applied = ready
        .iter()
        .filter(|sled| acknowledged(sled, vpc).is_some_and(|g| g >= generation))
        .count();
    VpcRoutesStatus {
        mappings: mapped,
        applied: format!("{applied}/{}", ready.len()),
        observed_generation: generation,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
