//! The drain controller's decisions, as a pure function of what it observes.
//!
//! [`plan`] takes a Drain, the sleds, the instances, the Migrations labelled with the drain and
//! the time, and returns the [`Plan`]: the new `Drain.status` and the ordered actions (cordon,
//! write the status, create or cancel Migrations, Events). No I/O happens here; `drain.rs`
//! executes the plan in order and stops at the first failure, so a partly executed plan is
//! simply re-planned from what was written.
//!
//! # Definitions
//! - An instance is *on the sled* if (and only if) its `status.sled` names the drained sled.
//! - An item is *done* if (and only if) its instance runs (`Running`) on another sled, or no
//!   longer exists, or is no longer on the sled (it stopped): state `Moved`.
//! - A Migration is *unfinished* if (and only if) its phase is not final
//!   ([`MigrationPhase::is_final`]); one without a status yet is unfinished.
//!
//! # Invariants
//! - The plan (every item and its target) is computed and checked against the free capacity of
//!   the other eligible sleds before the first Migration is created; it is written to the
//!   status in the same step that names the first moves, and the status naming a Migration is
//!   written before the Migration is created (its name is derived from the drain, the instance
//!   and the attempt, so a restart re-creates the same one, and "already exists" is success).
//! - At most `maxParallel` Migrations of the drain are unfinished at once.
//! - `Completed` only when every item is done and the sled's node-agent reports no VMM
//!   (`Sled.status.vmms == 0`): confirmed, not merely requested.
//! - Once the phase is `Cancelled` or `Failed` no Migration is created, and every unfinished
//!   Migration of the drain is asked to cancel (again, until it is final).
//! - A final phase never changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use corral_crds::drain::Drain;
use corral_crds::{
    DrainItem, DrainItemState, DrainPhase, DrainStatus, EvictionStrategy, Instance, InstanceState,
    Migration, MigrationPhase, Reason, Sled, SledConditionType, condition,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::scheduler::{self, Usage};

/// Moves of one instance tried before its item is `Failed`.
pub const MAX_ATTEMPTS: u32 = 3;
/// While a drain runs, it is looked at this often even if nothing changes (deadline, ETA).
pub const RESYNC: Duration = Duration::from_secs(5);
/// How soon a drain waiting for its cordon to show, or for room, looks again.
pub const SHORT_RECHECK: Duration = Duration::from_millis(500);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Set `spec.unschedulable` on the drained sled (with an Event on the Sled).
    Cordon { sled: String },
    /// Write the plan's status (conditional on the Drain's resourceVersion).
    WriteStatus,
    /// Create this Migration ("already exists" is success).
    CreateMigration {
        namespace: String,
        name: String,
        instance: String,
        target_sled: String,
    },
    /// Set `spec.cancel` on this Migration.
    CancelMigration { namespace: String, name: String },
    /// Record an Event about the Drain.
    Event {
        severity: Severity,
        reason: Reason,
        message: String,
    },
}

/// What to do, and the status that results.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: DrainStatus,
    pub actions: Vec<Action>,
    /// Look again after this long even if nothing changes.
    pub requeue: Option<Duration>,
}

/// What the controller observes of one drain.
pub struct Observed<'a> {
    pub drain: &'a Drain,
    /// Every sled (the drained one included).
    pub sleds: &'a [Arc<Sled>],
    /// Every instance.
    pub instances: &'a [Arc<Instance>],
    /// The Migrations labelled with this drain.
    pub migrations: &'a [Arc<Migration>],
    /// Another running drain of the same sled that was created first, if any.
    pub earlier_drain: Option<String>,
    pub now: Timestamp,
}

/// The name of the Migration of `instance`'s `attempt`-th move by `drain`.
pub fn migration_name(drain: &str, instance: &str, attempt: u32) -> String {
    format!("{drain}-{instance}-{attempt}")
}

/// Parses `spec.deadline`: Go-style durations (`30m`, `1h30m`, `90s`) or plain seconds.
pub fn parse_deadline(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let signed: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|_| format!("spec.deadline {text:?} is not a duration (try 30m or 1h)"))?;
    Duration::try_from(signed).map_err(|_| format!("spec.deadline {text:?} may not be negative"))
}

struct Planner<'a> {
    observed: &'a Observed<'a>,
    status: DrainStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
}

impl Planner<'_> {
    fn event(&mut self, severity: Severity, reason: Reason, message: impl Into<String>) {
        self.actions.push(Action::Event {
            severity,
            reason,
            message: message.into(),
        });
    }

    fn requeue_within(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    fn finish_as(&mut self, phase: DrainPhase, reason: Reason, message: String) {
        self.status.phase = Some(phase);
        self.status.reason = Some(reason);
        self.status.message = message.clone();
        self.status.finished_at = Some(Time(self.observed.now));
        self.status.eta_seconds = None;
        let severity = match phase {
            DrainPhase::Completed | DrainPhase::Cancelled => Severity::Normal,
            _ => Severity::Warning,
        };
        self.event(severity, reason, message);
    }
}

/// Computes the plan for one drain.
pub fn plan(observed: &Observed<'_>) -> Plan {
    let drain = observed.drain;
    let previous = drain.status.clone().unwrap_or_default();
    let mut planner = Planner {
        observed,
        status: previous.clone(),
        actions: Vec::new(),
        requeue: None,
    };
    planner.status.observed_generation = drain.metadata.generation.unwrap_or(0);
    let phase = previous.phase.unwrap_or(DrainPhase::Pending);
    if phase.is_final() {
        if matches!(phase, DrainPhase::Cancelled | DrainPhase::Failed) {
            cancel_unfinished(&mut planner);
        }
        return finish(planner, &previous);
    }
    let sled_name = drain.spec.sled.as_str();
    if drain.spec.cancel {
        cancel_unfinished(&mut planner);
        planner.finish_as(
            DrainPhase::Cancelled,
            Reason::DrainCancelled,
            format!(
                "cancelled with {} of {} moved; sled {sled_name} stays cordoned",
                planner.status.moved, planner.status.total
            ),
        );
        return finish(planner, &previous);
    }
    let Some(sled) = observed.sleds.iter().find(|s| s.name_any() == sled_name) else {
        planner.finish_as(
            DrainPhase::Failed,
            Reason::DrainFailed,
            format!("sled {sled_name} does not exist"),
        );
        return finish(planner, &previous);
    };
    if let Some(deadline) = &previous.deadline
        && observed.now >= deadline.0
    {
        cancel_unfinished(&mut planner);
        planner.finish_as(
            DrainPhase::Failed,
            Reason::DeadlineExceeded,
            format!(
                "the deadline ({}) passed with {} of {} moved; sled {sled_name} stays cordoned",
                drain.spec.deadline.as_deref().unwrap_or("?"),
                planner.status.moved,
                planner.status.total
            ),
        );
        return finish(planner, &previous);
    }
    if !sled.spec.unschedulable {
        // Cordoned again if someone uncordoned it mid-drain: what is moved off must not come
        // back.
        planner.actions.push(Action::Cordon {
            sled: sled_name.to_string(),
        });
        if phase == DrainPhase::Pending {
            planner.status.phase = Some(DrainPhase::Pending);
            planner.status.message = format!("cordoning sled {sled_name}");
            // Plan only from a cache that shows the cordon: nothing lands on the sled after it.
            planner.requeue_within(SHORT_RECHECK);
            return finish(planner, &previous);
        }
    }
    if phase == DrainPhase::Pending {
        if let Some(earlier) = &observed.earlier_drain {
            // Two drains would move the same instances twice.
            planner.finish_as(
                DrainPhase::Refused,
                Reason::DrainFailed,
                format!("sled {sled_name} is already being drained by {earlier}"),
            );
            return finish(planner, &previous);
        }
        start(&mut planner, sled);
        if planner.status.phase != Some(DrainPhase::Draining) {
            return finish(planner, &previous);
        }
    }
    drive(&mut planner, sled);
    finish(planner, &previous)
}

/// Writes the status first if it changed (it names the Migrations before they are created).
/// A change of the ETA alone is not written: it would wake the drain again at once.
fn finish(mut planner: Planner<'_>, previous: &DrainStatus) -> Plan {
    let mut without_eta = planner.status.clone();
    without_eta.eta_seconds = previous.eta_seconds;
    if without_eta == *previous {
        planner.status = without_eta;
    } else {
        let at = usize::from(matches!(
            planner.actions.first(),
            Some(Action::Cordon { .. })
        ));
        planner.actions.insert(at, Action::WriteStatus);
    }
    Plan {
        status: planner.status,
        actions: planner.actions,
        requeue: planner.requeue,
    }
}

/// Asks every unfinished Migration of the drain to cancel.
fn cancel_unfinished(planner: &mut Planner<'_>) {
    for migration in planner.observed.migrations {
        if !is_finished(migration) && !migration.spec.cancel {
            planner.actions.push(Action::CancelMigration {
                namespace: migration.namespace().unwrap_or_default(),
                name: migration.name_any(),
            });
        }
    }
}

fn is_finished(migration: &Migration) -> bool {
    migration
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(MigrationPhase::is_final)
}

fn key(instance: &Instance) -> (String, String) {
    (
        instance.namespace().unwrap_or_default(),
        instance.name_any(),
    )
}

fn describe(instance: &Instance) -> String {
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
fn usage_of(sleds: &[Arc<Sled>], instances: &[Arc<Instance>]) -> HashMap<String, Usage> {
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

fn reserve(usage: &mut HashMap<String, Usage>, sled: &str, instance: &Instance) {
    let entry = usage.entry(sled.to_string()).or_default();
    entry.allocated += instance.spec.resources();
    if let Some(group) = &instance.spec.anti_affinity_group {
        entry.groups.insert(group.clone());
    }
}

/// Why `sled` cannot take `instance`, in words, or `None` if it can.
pub fn why_not(instance: &Instance, sled: &Sled, usage: &HashMap<String, Usage>) -> Option<String> {
    let name = sled.name_any();
    let Some(status) = sled.status.as_ref() else {
        return Some(format!("{name} is not Ready"));
    };
    if !condition::is_true(&status.conditions, SledConditionType::Ready)
        || sled.metadata.deletion_timestamp.is_some()
    {
        return Some(format!("{name} is not Ready"));
    }
    if sled.spec.unschedulable {
        return Some(format!("{name} is cordoned"));
    }
    let labels = sled.labels();
    if !instance
        .spec
        .sled_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return Some(format!("{name} does not match its sledSelector"));
    }
    let empty = Usage::default();
    let used = usage.get(&name).unwrap_or(&empty);
    if let Some(group) = &instance.spec.anti_affinity_group
        && used.groups.contains(group)
    {
        return Some(format!("{name} already runs anti-affinity group {group}"));
    }
    let free = status.capacity.saturating_sub(&used.allocated);
    if !instance.spec.resources().fits_within(&free) {
        return Some(format!(
            "{name} has {} CPUs, {} MiB free",
            free.cpus, free.memory_mib
        ));
    }
    None
}

/// Chooses a target for `instance` among the sleds other than the drained one (the scheduler's
/// rules: the most free CPUs wins), or says why none fits.
fn target_for(
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
fn on_sled<'a>(instances: &'a [Arc<Instance>], sled: &str) -> Vec<&'a Arc<Instance>> {
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

/// Plans every instance of the sled and either refuses the drain or starts it.
fn start(planner: &mut Planner<'_>, sled: &Sled) {
    let observed = planner.observed;
    let drain = observed.drain;
    let sled_name = sled.name_any();
    let deadline = match drain.spec.deadline.as_deref().map(parse_deadline) {
        None => None,
        Some(Ok(after)) => Some(
            observed
                .now
                .checked_add(
                    jiff::SignedDuration::try_from(after).unwrap_or(jiff::SignedDuration::MAX),
                )
                .unwrap_or(Timestamp::MAX),
        ),
        Some(Err(message)) => {
            planner.finish_as(DrainPhase::Refused, Reason::DrainFailed, message);
            return;
        }
    };
    let mut usage = usage_of(observed.sleds, observed.instances);
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for instance in on_sled(observed.instances, &sled_name) {
        let (namespace, name) = key(instance);
        let strategy = instance.spec.eviction_strategy;
        let mut item = DrainItem {
            namespace,
            instance: name,
            strategy,
            target_sled: None,
            state: DrainItemState::Waiting,
            migration: None,
            attempts: 0,
            message: String::new(),
        };
        if strategy == EvictionStrategy::None {
            item.state = DrainItemState::Stays;
            item.message = "evictionStrategy None: it stays".into();
            problems.push(format!("{} has evictionStrategy None", describe(instance)));
        } else {
            match target_for(instance, &sled_name, observed.sleds, &usage, None) {
                Ok(target) => {
                    reserve(&mut usage, &target, instance);
                    item.target_sled = Some(target);
                }
                Err(message) => {
                    item.message = message.clone();
                    problems.push(message);
                }
            }
        }
        items.push(item);
    }
    planner.status.total = items.len() as u32;
    planner.status.plan = items;
    if !problems.is_empty() && !drain.spec.force {
        planner.finish_as(
            DrainPhase::Refused,
            Reason::DoesNotFit,
            format!(
                "draining sled {sled_name} would strand instances: {} (set force to drain anyway)",
                problems.join("; ")
            ),
        );
        return;
    }
    planner.status.phase = Some(DrainPhase::Draining);
    planner.status.reason = Some(Reason::DrainStarted);
    planner.status.started_at = Some(Time(observed.now));
    planner.status.deadline = deadline.map(Time);
    let mut targets: BTreeMap<&str, usize> = BTreeMap::new();
    for item in &planner.status.plan {
        if let Some(target) = &item.target_sled {
            *targets.entry(target.as_str()).or_default() += 1;
        }
    }
    let spread: Vec<String> = targets
        .iter()
        .map(|(sled, n)| format!("{n} to {sled}"))
        .collect();
    let mut message = format!(
        "draining sled {sled_name}: {} instances to move ({}), at most {} at a time",
        planner.status.total,
        if spread.is_empty() {
            "none".to_string()
        } else {
            spread.join(", ")
        },
        drain.spec.max_parallel
    );
    if !problems.is_empty() {
        message.push_str(&format!("; forced despite: {}", problems.join("; ")));
    }
    planner.event(Severity::Normal, Reason::DrainStarted, message);
}

/// Follows the moves under way, starts new ones within `maxParallel`, and completes or fails.
fn drive(planner: &mut Planner<'_>, sled: &Sled) {
    let observed = planner.observed;
    let drain = observed.drain;
    let drain_name = drain.name_any();
    let sled_name = sled.name_any();
    let instances: HashMap<(String, String), &Arc<Instance>> =
        observed.instances.iter().map(|i| (key(i), i)).collect();
    let migrations: HashMap<(String, String), &Arc<Migration>> = observed
        .migrations
        .iter()
        .map(|m| ((m.namespace().unwrap_or_default(), m.name_any()), m))
        .collect();

    // Late arrivals: an instance on the sled the plan does not know (placed just before the
    // cordon showed) joins the plan; its target is chosen when it moves.
    for instance in on_sled(observed.instances, &sled_name) {
        let (namespace, name) = key(instance);
        let known = planner
            .status
            .plan
            .iter()
            .any(|item| item.namespace == namespace && item.instance == name);
        if !known {
            let strategy = instance.spec.eviction_strategy;
            let stays = strategy == EvictionStrategy::None;
            planner.status.plan.push(DrainItem {
                namespace,
                instance: name,
                strategy,
                target_sled: None,
                state: if stays {
                    DrainItemState::Stays
                } else {
                    DrainItemState::Waiting
                },
                migration: None,
                attempts: 0,
                message: if stays {
                    "evictionStrategy None: it stays".into()
                } else {
                    String::new()
                },
            });
        }
    }

    let mut unfinished = 0u32;
    let mut recreate = Vec::new();
    for item in &mut planner.status.plan {
        let instance = instances.get(&(item.namespace.clone(), item.instance.clone()));
        if let Some(done) = done_message(instance.map(|i| i.as_ref()), &sled_name) {
            if item.state != DrainItemState::Moved {
                item.state = DrainItemState::Moved;
                item.message = done;
            }
            continue;
        }
        if item.state != DrainItemState::Moving {
            continue;
        }
        let Some(migration_name) = item.migration.clone() else {
            item.state = DrainItemState::Waiting;
            continue;
        };
        match migrations.get(&(item.namespace.clone(), migration_name.clone())) {
            None => {
                // Named in the status but not seen: created just now (the cache lags), or
                // never created before a restart. Creating it again is harmless.
                unfinished += 1;
                if let Some(target) = &item.target_sled {
                    recreate.push(Action::CreateMigration {
                        namespace: item.namespace.clone(),
                        name: migration_name,
                        instance: item.instance.clone(),
                        target_sled: target.clone(),
                    });
                }
            }
            Some(migration) if !is_finished(migration) => unfinished += 1,
            Some(migration) => {
                let status = migration.status.clone().unwrap_or_default();
                if status.phase == Some(MigrationPhase::Succeeded) {
                    // The instance's status follows; until it runs elsewhere, it is moving.
                    continue;
                }
                let why = format!(
                    "migration {migration_name} {}{}",
                    status.phase.map(|p| p.as_str()).unwrap_or("ended"),
                    if status.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", status.message)
                    }
                );
                if item.attempts >= MAX_ATTEMPTS {
                    item.state = DrainItemState::Failed;
                    item.message = format!("gave up after {} attempts; last: {why}", item.attempts);
                } else {
                    item.state = DrainItemState::Waiting;
                    item.message = format!("retrying: {why}");
                }
            }
        }
    }
    planner.actions.extend(recreate);

    // New moves, in plan order, within maxParallel.
    let mut usage = usage_of(observed.sleds, observed.instances);
    let max_parallel = drain.spec.max_parallel.max(1);
    let mut waiting = false;
    let mut created = Vec::new();
    for item in &mut planner.status.plan {
        if item.state != DrainItemState::Waiting || unfinished >= max_parallel {
            continue;
        }
        let Some(instance) = instances.get(&(item.namespace.clone(), item.instance.clone())) else {
            continue;
        };
        // Only a running instance can move live; one starting (or being repaired) on the sled
        // is moved once it runs.
        let state = instance.status.as_ref().and_then(|s| s.state);
        if state != Some(InstanceState::Running) {
            item.message = format!(
                "waiting for it to run (it is {})",
                state.map(|s| s.as_str()).unwrap_or("unknown")
            );
            waiting = true;
            continue;
        }
        // The first move goes where the plan said; a retry (or a forced item that did not
        // fit) gets a fresh target, away from the one that failed.
        let target = match (&item.target_sled, item.attempts) {
            (Some(target), 0) => Ok(target.clone()),
            (previous, _) => target_for(
                instance,
                &sled_name,
                observed.sleds,
                &usage,
                previous.as_deref(),
            ),
        };
        let target = match target {
            Ok(target) => target,
            Err(message) => {
                item.message = format!("waiting for room: {message}");
                waiting = true;
                continue;
            }
        };
        reserve(&mut usage, &target, instance);
        item.attempts += 1;
        item.target_sled = Some(target.clone());
        item.state = DrainItemState::Moving;
        let name = migration_name(&drain_name, &item.instance, item.attempts);
        item.migration = Some(name.clone());
        if item.message.starts_with("waiting") {
            item.message.clear();
        }
        created.push(Action::CreateMigration {
            namespace: item.namespace.clone(),
            name,
            instance: item.instance.clone(),
            target_sled: target,
        });
        unfinished += 1;
    }
    planner.actions.extend(created);

    count(planner, sled);
    let status = &planner.status;
    let open = status
        .plan
        .iter()
        .filter(|i| matches!(i.state, DrainItemState::Waiting | DrainItemState::Moving))
        .count();
    let stays: Vec<String> = status
        .plan
        .iter()
        .filter(|i| i.state == DrainItemState::Stays)
        .map(|i| format!("{}/{}", i.namespace, i.instance))
        .collect();
    if open == 0 && status.failed > 0 {
        let failed: Vec<String> = status
            .plan
            .iter()
            .filter(|i| i.state == DrainItemState::Failed)
            .map(|i| format!("{}/{} ({})", i.namespace, i.instance, i.message))
            .collect();
        let message = format!(
            "{} of {} instances could not be moved off sled {sled_name}: {}",
            failed.len(),
            status.total,
            failed.join("; ")
        );
        planner.finish_as(DrainPhase::Failed, Reason::DrainFailed, message);
        return;
    }
    if open == 0 && stays.is_empty() {
        let vmms = sled.status.as_ref().map(|s| s.vmms);
        if vmms == Some(0) {
            let message = format!(
                "sled {sled_name} runs no VMM: {} instances moved",
                status.moved
            );
            planner.finish_as(DrainPhase::Completed, Reason::DrainCompleted, message);
            return;
        }
        planner.status.message = format!(
            "every instance moved; waiting for sled {sled_name}'s node-agent to report no VMM ({} left)",
            vmms.unwrap_or(0)
        );
    } else if !stays.is_empty() && open == 0 {
        planner.status.message = format!(
            "waiting: {} stay (evictionStrategy None) and still run on sled {sled_name}",
            stays.join(", ")
        );
    } else {
        planner.status.message = format!(
            "moving {} of {} instances off sled {sled_name}{}",
            status.moving,
            status.total - status.moved,
            if waiting {
                "; some wait for room or to run"
            } else {
                ""
            }
        );
    }
    planner.requeue_within(if waiting { SHORT_RECHECK } else { RESYNC });
}

/// Why an item is done, or `None` while its instance is still on the sled.
fn done_message(instance: Option<&Instance>, sled: &str) -> Option<String> {
    let Some(instance) = instance else {
        return Some("the instance was deleted".into());
    };
    let status = instance.status.as_ref();
    match status.and_then(|s| s.sled.as_deref()) {
        Some(on) if on == sled => None,
        Some(on) => (status.and_then(|s| s.state) == Some(InstanceState::Running))
            .then(|| format!("runs on {on}")),
        None => Some("no longer runs".into()),
    }
}

/// Counts, progress and ETA.
fn count(planner: &mut Planner<'_>, sled: &Sled) {
    let status = &mut planner.status;
    let of = |state| status.plan.iter().filter(|i| i.state == state).count() as u32;
    let (moved, moving, failed) = (
        of(DrainItemState::Moved),
        of(DrainItemState::Moving),
        of(DrainItemState::Failed),
    );
    let stays = of(DrainItemState::Stays);
    status.total = status.plan.len() as u32;
    status.moved = moved;
    status.moving = moving;
    status.failed = failed;
    status.progress = format!("{moved}/{}", status.total);
    status.vmms_left = sled.status.as_ref().map(|s| s.vmms).unwrap_or(0);
    let left = status.total.saturating_sub(moved + failed + stays);
    status.eta_seconds = match &status.started_at {
        Some(started) if moved > 0 => {
            let elapsed = planner
                .observed
                .now
                .duration_since(started.0)
                .as_secs_f64()
                .max(0.0);
            Some((elapsed / moved as f64 * left as f64).ceil() as u64)
        }
        _ => None,
    };
}

#[cfg(test)]
mod tests {
    use corral_crds::{
        ConditionStatus, DrainSpec, InstanceSpec, InstanceStatus, MigrationSpec, MigrationStatus,
        Resources, SledSpec, SledStatus, condition::Condition,
    };

    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn later(seconds: i64) -> Timestamp {
        now()
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap()
    }

    /// A Ready sled with `cpus` CPUs (4 GiB each), `used` CPUs of them allocated.
    fn sled(name: &str, cpus: u32, used: u32) -> Arc<Sled> {
        let mut sled = Sled::new(name, SledSpec::default());
        sled.status = Some(SledStatus {
            capacity: Resources {
                cpus,
                memory_mib: cpus as u64 * 4096,
            },
            allocated: Resources {
                cpus: used,
                memory_mib: used as u64 * 4096,
            },
            vmms: used,
            epoch: 1,
            conditions: vec![Condition {
                type_: SledConditionType::Ready,
                status: ConditionStatus::True,
                reason: Reason::AgentReady,
                message: String::new(),
                last_transition_time: Time(now()),
                observed_generation: None,
            }],
            ..Default::default()
        });
        Arc::new(sled)
    }

    fn cordoned(sled: Arc<Sled>) -> Arc<Sled> {
        let mut sled = (*sled).clone();
        sled.spec.unschedulable = true;
        Arc::new(sled)
    }

    fn not_ready(sled: Arc<Sled>) -> Arc<Sled> {
        let mut sled = (*sled).clone();
        sled.status.as_mut().unwrap().conditions[0].status = ConditionStatus::False;
        Arc::new(sled)
    }

    fn with_vmms(sled: Arc<Sled>, vmms: u32) -> Arc<Sled> {
        let mut sled = (*sled).clone();
        sled.status.as_mut().unwrap().vmms = vmms;
        Arc::new(sled)
    }

    /// An instance with `cpus` CPUs (4 GiB each) running on `on`.
    fn instance(name: &str, cpus: u32, on: &str) -> Arc<Instance> {
        let mut instance = Instance::new(
            name,
            InstanceSpec {
                cpus,
                memory_mib: cpus as u64 * 4096,
                image: "debian".into(),
                ..Default::default()
            },
        );
        instance.metadata.namespace = Some("default".into());
        instance.status = Some(InstanceStatus {
            state: Some(InstanceState::Running),
            sled: Some(on.into()),
            active_vmm: Some(format!("{name}-v1")),
            ..Default::default()
        });
        Arc::new(instance)
    }

    fn with_strategy(instance: Arc<Instance>, strategy: EvictionStrategy) -> Arc<Instance> {
        let mut instance = (*instance).clone();
        instance.spec.eviction_strategy = strategy;
        Arc::new(instance)
    }

    fn drain(max_parallel: u32) -> Drain {
        let mut drain = Drain::new(
            "d",
            DrainSpec {
                sled: "sled-1".into(),
                deadline: None,
                max_parallel,
                force: false,
                cancel: false,
            },
        );
        drain.metadata.generation = Some(1);
        drain
    }

    fn migration(name: &str, instance: &str, phase: Option<MigrationPhase>) -> Arc<Migration> {
        let mut migration = Migration::new(
            name,
            MigrationSpec {
                instance: instance.into(),
                target_sled: None,
                reason: corral_crds::MigrationReason::Drain,
                cancel: false,
            },
        );
        migration.metadata.namespace = Some("default".into());
        migration.status = Some(MigrationStatus {
            phase,
            message: if phase == Some(MigrationPhase::Failed) {
                "the transfer broke".into()
            } else {
                String::new()
            },
            ..Default::default()
        });
        Arc::new(migration)
    }

    fn run(
        drain: &Drain,
        sleds: &[Arc<Sled>],
        instances: &[Arc<Instance>],
        migrations: &[Arc<Migration>],
        at: Timestamp,
    ) -> Plan {
        plan(&Observed {
            drain,
            sleds,
            instances,
            migrations,
            earlier_drain: None,
            now: at,
        })
    }

    /// The drain with the plan's status written.
    fn applied(drain: &Drain, plan: &Plan) -> Drain {
        let mut drain = drain.clone();
        drain.status = Some(plan.status.clone());
        drain
    }

    /// The Migrations a plan creates, as (name, instance, target).
    fn created(plan: &Plan) -> Vec<(String, String, String)> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateMigration {
                    name,
                    instance,
                    target_sled,
                    ..
                } => Some((name.clone(), instance.clone(), target_sled.clone())),
                _ => None,
            })
            .collect()
    }

    fn cancelled(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::CancelMigration { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    fn events(plan: &Plan) -> Vec<Reason> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn state_of(plan: &Plan, instance: &str) -> DrainItemState {
        plan.status
            .plan
            .iter()
            .find(|i| i.instance == instance)
            .unwrap_or_else(|| panic!("{instance} not in the plan"))
            .state
    }

    /// `instance` after a move to `to`.
    fn moved(instance: &Arc<Instance>, to: &str) -> Arc<Instance> {
        let mut instance = (**instance).clone();
        instance.status.as_mut().unwrap().sled = Some(to.into());
        Arc::new(instance)
    }

    #[test]
    fn a_drain_first_cordons_the_sled_and_plans_only_once_the_cordon_shows() {
        let sleds = [sled("sled-1", 16, 4), sled("sled-2", 16, 0)];
        let instances = [instance("a", 4, "sled-1")];
        let plan = run(&drain(4), &sleds, &instances, &[], now());
        assert_eq!(
            plan.actions,
            vec![
                Action::Cordon {
                    sled: "sled-1".into()
                },
                Action::WriteStatus
            ]
        );
        assert_eq!(plan.status.phase, Some(DrainPhase::Pending));
        assert!(plan.status.plan.is_empty());
        assert_eq!(plan.requeue, Some(SHORT_RECHECK));
    }

    #[test]
    fn a_plan_that_fits_spreads_targets_by_free_capacity_and_starts_within_max_parallel() {
        let sleds = [
            cordoned(sled("sled-1", 32, 12)),
            sled("sled-2", 16, 0),
            sled("sled-3", 16, 6),
        ];
        let instances = [
            instance("a", 4, "sled-1"),
            instance("b", 4, "sled-1"),
            instance("c", 4, "sled-1"),
            instance("elsewhere", 4, "sled-2"),
        ];
        let drain = drain(2);
        let plan = run(&drain, &sleds, &instances, &[], now());
        assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
        assert_eq!(plan.status.reason, Some(Reason::DrainStarted));
        // sled-2 has 16 CPUs free and sled-3 10: a and b go to sled-2 (16, then 12 free), c to
        // sled-3 (10 > 8).
        let targets: Vec<(&str, Option<&str>)> = plan
            .status
            .plan
            .iter()
            .map(|i| (i.instance.as_str(), i.target_sled.as_deref()))
            .collect();
        assert_eq!(
            targets,
            vec![
                ("a", Some("sled-2")),
                ("b", Some("sled-2")),
                ("c", Some("sled-3"))
            ]
        );
        assert_eq!(plan.actions[0], Action::WriteStatus, "name before create");
        assert_eq!(
            created(&plan),
            vec![
                ("d-a-1".into(), "a".into(), "sled-2".into()),
                ("d-b-1".into(), "b".into(), "sled-2".into()),
            ]
        );
        assert_eq!(plan.status.progress, "0/3");
        assert_eq!((plan.status.moving, plan.status.total), (2, 3));
        assert_eq!(plan.status.vmms_left, 12);
        assert_eq!(events(&plan), vec![Reason::DrainStarted]);

        // Planned again on its own result with the Migrations seen: nothing more to do.
        let migrations = [
            migration("d-a-1", "a", Some(MigrationPhase::Transferring)),
            migration("d-b-1", "b", None),
        ];
        let again = run(
            &applied(&drain, &plan),
            &sleds,
            &instances,
            &migrations,
            later(1),
        );
        assert_eq!(again.actions, vec![], "{again:?}");
        // Not seen yet (the cache lags, or a restart before the create): created again.
        let lagging = run(&applied(&drain, &plan), &sleds, &instances, &[], later(1));
        assert_eq!(created(&lagging).len(), 2);
        assert!(!lagging.actions.contains(&Action::WriteStatus));
    }

    #[test]
    fn a_plan_that_does_not_fit_is_refused_naming_the_instance_and_every_sled() {
        let labelled = |name: &str, cpus: u32, used: u32, rack: &str| {
            let mut sled = (*sled(name, cpus, used)).clone();
            sled.labels_mut().insert("rack".into(), rack.into());
            Arc::new(sled)
        };
        let sleds = [
            cordoned(sled("sled-1", 32, 20)),
            labelled("sled-2", 16, 12, "1"),
            cordoned(sled("sled-3", 64, 0)),
            not_ready(sled("sled-4", 64, 0)),
            labelled("sled-5", 64, 0, "2"),
        ];
        let mut big = (*instance("db-3", 16, "sled-1")).clone();
        big.spec.sled_selector.insert("rack".into(), "1".into());
        let instances = [Arc::new(big), instance("small", 4, "sled-1")];
        let plan = run(&drain(4), &sleds, &instances, &[], now());
        assert_eq!(plan.status.phase, Some(DrainPhase::Refused));
        assert_eq!(plan.status.reason, Some(Reason::DoesNotFit));
        assert!(
            plan.status.message.contains(
                "default/db-3 (16 CPUs, 65536 MiB) fits no sled: sled-2 has 4 CPUs, 16384 MiB free, \
                 sled-3 is cordoned, sled-4 is not Ready, sled-5 does not match its sledSelector"
            ),
            "{}",
            plan.status.message
        );
        assert!(!plan.status.message.contains("small"), "small fits sled-2");
        assert!(created(&plan).is_empty());
        assert_eq!(events(&plan), vec![Reason::DoesNotFit]);
        assert!(plan.status.finished_at.is_some());
        // Refused is final.
        let again = run(
            &applied(&drain(4), &plan),
            &sleds,
            &instances,
            &[],
            later(9),
        );
        assert_eq!(again.actions, vec![]);
    }

    #[test]
    fn an_instance_that_may_not_move_refuses_the_drain_unless_forced() {
        let sleds = [cordoned(sled("sled-1", 32, 8)), sled("sled-2", 16, 0)];
        let instances = [
            with_strategy(instance("pinned", 4, "sled-1"), EvictionStrategy::None),
            with_strategy(instance("batch", 4, "sled-1"), EvictionStrategy::Restart),
        ];
        let plan = run(&drain(4), &sleds, &instances, &[], now());
        assert_eq!(plan.status.phase, Some(DrainPhase::Refused));
        assert!(
            plan.status
                .message
                .contains("default/pinned (4 CPUs, 16384 MiB) has evictionStrategy None"),
            "{}",
            plan.status.message
        );

        let mut forced = drain(4);
        forced.spec.force = true;
        let plan = run(&forced, &sleds, &instances, &[], now());
        assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
        assert_eq!(state_of(&plan, "pinned"), DrainItemState::Stays);
        // Restart is moved by a Migration too.
        assert_eq!(
            created(&plan),
            vec![("d-batch-1".into(), "batch".into(), "sled-2".into())]
        );
        // Once batch has moved, the drain waits for pinned, which still runs there.
        let forced = applied(&forced, &plan);
        let instances = [instances[0].clone(), moved(&instances[1], "sled-2")];
        let migrations = [migration(
            "d-batch-1",
            "batch",
            Some(MigrationPhase::Succeeded),
        )];
        let sleds = [with_vmms(sleds[0].clone(), 1), sleds[1].clone()];
        let plan = run(&forced, &sleds, &instances, &migrations, later(10));
        assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
        assert_eq!(state_of(&plan, "batch"), DrainItemState::Moved);
        assert!(
            plan.status.message.contains("default/pinned"),
            "{}",
            plan.status.message
        );
    }

    #[test]
    fn max_parallel_bounds_the_unfinished_migrations() {
        let sleds = [cordoned(sled("sled-1", 64, 20)), sled("sled-2", 64, 0)];
        let instances: Vec<Arc<Instance>> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|name| instance(name, 4, "sled-1"))
            .collect();
        let drain = drain(2);
        let first = run(&drain, &sleds, &instances, &[], now());
        assert_eq!(created(&first).len(), 2);
        let drain = applied(&drain, &first);
        // Both still run: nothing new.
        let running = [
            migration("d-a-1", "a", Some(MigrationPhase::Transferring)),
            migration("d-b-1", "b", Some(MigrationPhase::Pending)),
        ];
        let plan = run(&drain, &sleds, &instances, &running, later(10));
        assert!(created(&plan).is_empty(), "{plan:?}");
        // a succeeded and runs on sled-2: one more starts.
        let mut after = instances.clone();
        after[0] = moved(&instances[0], "sled-2");
        let done = [
            migration("d-a-1", "a", Some(MigrationPhase::Succeeded)),
            running[1].clone(),
        ];
        let plan = run(&drain, &sleds, &after, &done, later(10));
        assert_eq!(
            created(&plan),
            vec![("d-c-1".into(), "c".into(), "sled-2".into())]
        );
        assert_eq!(plan.status.progress, "1/5");
        assert_eq!((plan.status.moved, plan.status.moving), (1, 2));
        // One moved in 10 s, four left: about 40 s.
        assert_eq!(plan.status.eta_seconds, Some(40));
    }

    #[test]
    fn a_failed_migration_is_retried_elsewhere_then_the_item_fails() {
        let sleds = [
            cordoned(sled("sled-1", 64, 4)),
            sled("sled-2", 64, 0),
            sled("sled-3", 32, 0),
        ];
        let instances = [instance("a", 4, "sled-1")];
        let mut drain = drain(1);
        let plan = run(&drain, &sleds, &instances, &[], now());
        assert_eq!(
            created(&plan),
            vec![("d-a-1".into(), "a".into(), "sled-2".into())]
        );
        drain = applied(&drain, &plan);
        for attempt in 1..MAX_ATTEMPTS {
            let name = format!("d-a-{attempt}");
            let failed = [migration(&name, "a", Some(MigrationPhase::Failed))];
            let plan = run(&drain, &sleds, &instances, &failed, later(5));
            let create = created(&plan);
            assert_eq!(create.len(), 1, "{plan:?}");
            assert_eq!(create[0].0, format!("d-a-{}", attempt + 1));
            // A fresh target, away from the one that failed.
            let previous = drain.status.as_ref().unwrap().plan[0].target_sled.clone();
            assert_ne!(Some(create[0].2.clone()), previous);
            assert_eq!(state_of(&plan, "a"), DrainItemState::Moving);
            drain = applied(&drain, &plan);
        }
        let name = format!("d-a-{MAX_ATTEMPTS}");
        let failed = [migration(&name, "a", Some(MigrationPhase::Failed))];
        let plan = run(&drain, &sleds, &instances, &failed, later(5));
        assert!(created(&plan).is_empty());
        assert_eq!(state_of(&plan, "a"), DrainItemState::Failed);
        assert_eq!(plan.status.phase, Some(DrainPhase::Failed));
        assert_eq!(plan.status.reason, Some(Reason::DrainFailed));
        assert!(
            plan.status.message.contains("the transfer broke"),
            "{}",
            plan.status.message
        );
    }

    #[test]
    fn the_drain_completes_only_when_the_sled_reports_no_vmm() {
        let sleds = [cordoned(sled("sled-1", 64, 4)), sled("sled-2", 64, 0)];
        let instances = [instance("a", 4, "sled-1")];
        let drain = drain(4);
        let plan = run(&drain, &sleds, &instances, &[], now());
        let drain = applied(&drain, &plan);
        let instances = [moved(&instances[0], "sled-2")];
        let migrations = [migration("d-a-1", "a", Some(MigrationPhase::Succeeded))];
        // Moved, but the agent still reports the source VMM.
        let plan = run(&drain, &sleds, &instances, &migrations, later(20));
        assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
        assert_eq!(plan.status.progress, "1/1");
        assert!(
            plan.status.message.contains("4 left"),
            "{}",
            plan.status.message
        );
        let drain = applied(&drain, &plan);
        let empty = [with_vmms(sleds[0].clone(), 0), sleds[1].clone()];
        let plan = run(&drain, &empty, &instances, &migrations, later(21));
        assert_eq!(plan.status.phase, Some(DrainPhase::Completed));
        assert_eq!(plan.status.reason, Some(Reason::DrainCompleted));
        assert_eq!(events(&plan), vec![Reason::DrainCompleted]);
        assert_eq!(plan.status.vmms_left, 0);
    }

    #[test]
    fn a_running_instance_still_on_the_sled_is_not_moved_because_its_migration_succeeded() {
        let sleds = [
            cordoned(with_vmms(sled("sled-1", 64, 4), 0)),
            sled("sled-2", 64, 0),
        ];
        let instances = [instance("a", 4, "sled-1")];
        let drain = drain(4);
        let plan = run(&drain, &sleds, &instances, &[], now());
        let drain = applied(&drain, &plan);
        let migrations = [migration("d-a-1", "a", Some(MigrationPhase::Succeeded))];
        let plan = run(&drain, &sleds, &instances, &migrations, later(3));
        assert_eq!(state_of(&plan, "a"), DrainItemState::Moving);
        assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
    }

    #[test]
    fn cancel_stops_new_moves_and_cancels_unfinished_ones() {
        let sleds = [cordoned(sled("sled-1", 64, 12)), sled("sled-2", 64, 0)];
        let instances = [
            instance("a", 4, "sled-1"),
            instance("b", 4, "sled-1"),
            instance("c", 4, "sled-1"),
        ];
        let drain = drain(2);
        let plan = run(&drain, &sleds, &instances, &[], now());
        let mut drain = applied(&drain, &plan);
        drain.spec.cancel = true;
        let migrations = [
            migration("d-a-1", "a", Some(MigrationPhase::Succeeded)),
            migration("d-b-1", "b", Some(MigrationPhase::Transferring)),
        ];
        let plan = run(&drain, &sleds, &instances, &migrations, later(5));
        assert_eq!(plan.status.phase, Some(DrainPhase::Cancelled));
        assert_eq!(plan.status.reason, Some(Reason::DrainCancelled));
        assert_eq!(cancelled(&plan), vec!["d-b-1".to_string()]);
        assert!(created(&plan).is_empty());
        assert_eq!(events(&plan), vec![Reason::DrainCancelled]);
        // After a restart, a Migration not yet cancelled is cancelled again; nothing else.
        let drain = applied(&drain, &plan);
        let again = run(&drain, &sleds, &instances, &migrations, later(6));
        assert_eq!(
            again.actions,
            vec![Action::CancelMigration {
                namespace: "default".into(),
                name: "d-b-1".into()
            }]
        );
    }

    #[test]
    fn a_passed_deadline_fails_the_drain_and_cancels_its_moves() {
        let sleds = [cordoned(sled("sled-1", 64, 8)), sled("sled-2", 64, 0)];
        let instances = [instance("a", 4, "sled-1"), instance("b", 4, "sled-1")];
        let mut drain = drain(1);
        drain.spec.deadline = Some("30m".into());
        let plan = run(&drain, &sleds, &instances, &[], now());
        assert_eq!(plan.status.deadline, Some(Time(later(1800))));
        let drain = applied(&drain, &plan);
        let migrations = [migration("d-a-1", "a", Some(MigrationPhase::Transferring))];
        let plan = run(&drain, &sleds, &instances, &migrations, later(1799));
        assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
        let plan = run(&drain, &sleds, &instances, &migrations, later(1800));
        assert_eq!(plan.status.phase, Some(DrainPhase::Failed));
        assert_eq!(plan.status.reason, Some(Reason::DeadlineExceeded));
        assert_eq!(cancelled(&plan), vec!["d-a-1".to_string()]);
        assert!(created(&plan).is_empty());

        let mut bad = self::drain(1);
        bad.spec.deadline = Some("soon".into());
        let plan = run(&bad, &sleds, &instances, &[], now());
        assert_eq!(plan.status.phase, Some(DrainPhase::Refused));
        assert!(plan.status.message.contains("soon"));
    }

    #[test]
    fn an_empty_sled_completes_at_once_and_a_missing_sled_fails() {
        let sleds = [cordoned(sled("sled-1", 64, 0)), sled("sled-2", 64, 0)];
        let plan = run(&drain(4), &sleds, &[], &[], now());
        assert_eq!(plan.status.phase, Some(DrainPhase::Completed));
        assert_eq!(plan.status.progress, "0/0");
        let plan = run(&drain(4), &sleds[1..], &[], &[], now());
        assert_eq!(plan.status.phase, Some(DrainPhase::Failed));
        assert!(plan.status.message.contains("sled-1 does not exist"));
    }

    #[test]
    fn a_sled_uncordoned_mid_drain_is_cordoned_again_and_the_drain_goes_on() {
        let sleds = [cordoned(sled("sled-1", 64, 8)), sled("sled-2", 64, 0)];
        let instances = [instance("a", 4, "sled-1"), instance("b", 4, "sled-1")];
        let drain = drain(1);
        let plan = run(&drain, &sleds, &instances, &[], now());
        let drain = applied(&drain, &plan);
        let uncordoned = [sled("sled-1", 64, 8), sleds[1].clone()];
        let migrations = [migration("d-a-1", "a", Some(MigrationPhase::Transferring))];
        let plan = run(&drain, &uncordoned, &instances, &migrations, later(2));
        assert_eq!(
            plan.actions,
            vec![Action::Cordon {
                sled: "sled-1".into()
            }]
        );
        assert_eq!(plan.status.phase, Some(DrainPhase::Draining));
    }

    #[test]
    fn a_second_drain_of_a_sled_is_refused() {
        let sleds = [cordoned(sled("sled-1", 64, 4)), sled("sled-2", 64, 0)];
        let instances = [instance("a", 4, "sled-1")];
        let plan = plan(&Observed {
            drain: &drain(4),
            sleds: &sleds,
            instances: &instances,
            migrations: &[],
            earlier_drain: Some("sled-1-1".into()),
            now: now(),
        });
        assert_eq!(plan.status.phase, Some(DrainPhase::Refused));
        assert!(
            plan.status
                .message
                .contains("already being drained by sled-1-1")
        );
        assert!(created(&plan).is_empty());
    }

    proptest::proptest! {
        /// Whatever the sizes: a started plan never puts more on a sled than it has free, and
        /// planning again on its own result (the Migrations seen) does nothing more.
        #[test]
        fn a_started_plan_fits_the_free_capacity_and_is_stable(
            sizes in proptest::collection::vec(1u32..=16, 0..12),
            others in proptest::collection::vec((1u32..=64, 0u32..=64), 1..5),
            max_parallel in 1u32..=6,
        ) {
            let mut sleds = vec![cordoned(sled("sled-1", 256, sizes.iter().sum()))];
            for (index, (cpus, used)) in others.iter().enumerate() {
                sleds.push(sled(&format!("sled-{}", index + 2), *cpus, (*used).min(*cpus)));
            }
            let instances: Vec<Arc<Instance>> = sizes
                .iter()
                .enumerate()
                .map(|(index, cpus)| instance(&format!("i{index}"), *cpus, "sled-1"))
                .collect();
            let drain = drain(max_parallel);
            let plan = run(&drain, &sleds, &instances, &[], now());
            match plan.status.phase {
                Some(DrainPhase::Refused) => {
                    proptest::prop_assert!(created(&plan).is_empty());
                    proptest::prop_assert!(plan.status.message.contains("fits no sled"));
                }
                Some(DrainPhase::Draining) => {
                    let mut planned: HashMap<String, u32> = HashMap::new();
                    for item in &plan.status.plan {
                        let target = item.target_sled.clone().expect("every item has a target");
                        let cpus = instances.iter().find(|i| i.name_any() == item.instance).unwrap().spec.cpus;
                        *planned.entry(target).or_default() += cpus;
                    }
                    for sled in &sleds[1..] {
                        let free = sled.status.as_ref().map(|s| s.capacity.cpus - s.allocated.cpus).unwrap();
                        let put = planned.get(&sled.name_any()).copied().unwrap_or(0);
                        proptest::prop_assert!(put <= free, "{} gets {put} CPUs, has {free}", sled.name_any());
                    }
                    let made = created(&plan);
                    proptest::prop_assert!(made.len() as u32 <= max_parallel);
                    let seen: Vec<Arc<Migration>> = made
                        .iter()
                        .map(|(name, instance, _)| migration(name, instance, Some(MigrationPhase::Pending)))
                        .collect();
                    let again = run(&applied(&drain, &plan), &sleds, &instances, &seen, later(1));
                    proptest::prop_assert_eq!(again.actions, vec![]);
                }
                Some(DrainPhase::Completed) => proptest::prop_assert!(sizes.is_empty()),
                other => proptest::prop_assert!(false, "unexpected phase {:?}", other),
            }
        }
    }

    #[test]
    fn parse_deadline_takes_go_durations_and_seconds() {
        assert_eq!(parse_deadline("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_deadline("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_deadline("90"), Ok(Duration::from_secs(90)));
        assert!(parse_deadline("-5m").is_err());
        assert!(parse_deadline("later").is_err());
    }
}
