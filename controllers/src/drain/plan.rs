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
//!   (`Migration::is_finished`); one without a status yet is unfinished.
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

use corral_client::events::EventType;
use corral_crds::drain::Drain;
use corral_crds::{
    DrainItem, DrainItemState, DrainPhase, DrainStatus, EvictionStrategy, Instance, InstanceState,
    Migration, MigrationMode, MigrationPhase, Reason, Sled, Vmm,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::eviction::mode_for;
use super::placement::{describe, key, on_sled, reserve, target_for, usage_of};
use crate::kit::{self, Kind, Step};

/// Moves of one instance tried before its item is `Failed`.
pub const MAX_ATTEMPTS: u32 = 3;
/// While a drain runs, it is looked at this often even if nothing changes (deadline, ETA).
pub const RESYNC: Duration = Duration::from_secs(5);
/// How soon a drain waiting for its cordon to show, or for room, looks again.
pub const SHORT_RECHECK: Duration = Duration::from_millis(500);

/// One of the drain controller's own actions.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Set `spec.unschedulable` on the drained sled (with an Event on the Sled).
    Cordon { sled: String },
    /// Create this Migration ("already exists" is success).
    CreateMigration {
        namespace: String,
        name: String,
        instance: String,
        target_sled: String,
        mode: MigrationMode,
    },
    /// Set `spec.cancel` on this Migration ("already gone" is success).
    CancelMigration { namespace: String, name: String },
}

impl Kind for Action {
    fn kind(&self) -> &'static str {
        match self {
            Action::Cordon { .. } => "Cordon",
            Action::CreateMigration { .. } => "CreateMigration",
            Action::CancelMigration { .. } => "CancelMigration",
        }
    }
}

/// What to do, and the status that results.
pub type Plan = kit::Plan<DrainStatus, Action>;

/// What the controller observes of one drain.
pub struct Observed<'a> {
    pub drain: &'a Drain,
    /// Every sled (the drained one included).
    pub sleds: &'a [Arc<Sled>],
    /// Every instance.
    pub instances: &'a [Arc<Instance>],
    /// The Migrations labelled with this drain.
    pub migrations: &'a [Arc<Migration>],
    /// The Vmms on the drained sled (their agents' dirty rates feed the pre-copy prediction).
    pub vmms: &'a [Arc<Vmm>],
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
    plan: Plan,
}

impl Planner<'_> {
    fn finish_as(&mut self, phase: DrainPhase, reason: Reason, message: String) {
        let status = &mut self.plan.status;
        status.phase = Some(phase);
        status.reason = Some(reason);
        status.message = message.clone();
        status.finished_at = Some(Time(self.observed.now));
        status.eta_seconds = None;
        let type_ = match phase {
            DrainPhase::Completed | DrainPhase::Cancelled => EventType::Normal,
            _ => EventType::Warning,
        };
        self.plan.event(type_, reason, message);
    }
}

/// Computes the plan for one drain.
pub fn plan(observed: &Observed<'_>) -> Plan {
    let drain = observed.drain;
    let previous = drain.status.clone().unwrap_or_default();
    let mut planner = Planner {
        observed,
        plan: Plan::new(previous.clone()),
    };
    planner.plan.status.observed_generation = drain.metadata.generation.unwrap_or(0);
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
                planner.plan.status.moved, planner.plan.status.total
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
                planner.plan.status.moved,
                planner.plan.status.total
            ),
        );
        return finish(planner, &previous);
    }
    if !sled.spec.unschedulable {
        // Cordoned again if someone uncordoned it mid-drain: what is moved off must not come
        // back.
        planner.plan.act(Action::Cordon {
            sled: sled_name.to_string(),
        });
        if phase == DrainPhase::Pending {
            planner.plan.status.phase = Some(DrainPhase::Pending);
            planner.plan.status.message = format!("cordoning sled {sled_name}");
            // Plan only from a cache that shows the cordon: nothing lands on the sled after it.
            planner.plan.requeue_within(SHORT_RECHECK);
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
        if planner.plan.status.phase != Some(DrainPhase::Draining) {
            return finish(planner, &previous);
        }
    }
    drive(&mut planner, sled);
    finish(planner, &previous)
}

/// Writes the status first if it changed (it names the Migrations before they are created).
/// A change of the ETA alone is not written: it would wake the drain again at once.
fn finish(mut planner: Planner<'_>, previous: &DrainStatus) -> Plan {
    let mut without_eta = planner.plan.status.clone();
    without_eta.eta_seconds = previous.eta_seconds;
    if without_eta == *previous {
        planner.plan.status = without_eta;
    } else {
        let at = usize::from(matches!(
            planner.plan.steps.first(),
            Some(Step::Act(Action::Cordon { .. }))
        ));
        planner.plan.steps.insert(at, Step::WriteStatus);
    }
    planner.plan
}

/// Asks every unfinished Migration of the drain to cancel.
fn cancel_unfinished(planner: &mut Planner<'_>) {
    for migration in planner.observed.migrations {
        if !migration.is_finished() && !migration.spec.cancel {
            planner.plan.act(Action::CancelMigration {
                namespace: migration.namespace().unwrap_or_default(),
                name: migration.name_any(),
            });
        }
    }
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
    planner.plan.status.total = items.len() as u32;
    planner.plan.status.plan = items;
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
    planner.plan.status.phase = Some(DrainPhase::Draining);
    planner.plan.status.reason = Some(Reason::DrainStarted);
    planner.plan.status.started_at = Some(Time(observed.now));
    planner.plan.status.deadline = deadline.map(Time);
    let mut targets: BTreeMap<&str, usize> = BTreeMap::new();
    for item in &planner.plan.status.plan {
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
        planner.plan.status.total,
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
    planner
        .plan
        .event(EventType::Normal, Reason::DrainStarted, message);
}

/// Follows the moves under way, starts new ones within `maxParallel`, and completes or fails.
fn drive(planner: &mut Planner<'_>, sled: &Sled) {
    let observed = planner.observed;
    let sled_name = sled.name_any();
    let instances: HashMap<(String, String), &Arc<Instance>> =
        observed.instances.iter().map(|i| (key(i), i)).collect();
    admit_late_arrivals(planner, &sled_name);
    let unfinished = follow_moves(planner, &instances, &sled_name);
    let waiting = start_moves(planner, &instances, &sled_name, unfinished);
    count(planner, sled);
    conclude(planner, sled, waiting);
}

/// Late arrivals: an instance on the sled the plan does not know (placed just before the
/// cordon showed) joins the plan; its target is chosen when it moves.
fn admit_late_arrivals(planner: &mut Planner<'_>, sled_name: &str) {
    for instance in on_sled(planner.observed.instances, sled_name) {
        let (namespace, name) = key(instance);
        let known = planner
            .plan
            .status
            .plan
            .iter()
            .any(|item| item.namespace == namespace && item.instance == name);
        if known {
            continue;
        }
        let strategy = instance.spec.eviction_strategy;
        let stays = strategy == EvictionStrategy::None;
        planner.plan.status.plan.push(DrainItem {
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

/// Marks the items whose instance left the sled `Moved`, follows the moves under way (a
/// Migration named but not seen is created again), and turns failed moves into retries or
/// failures. Returns how many moves are unfinished.
fn follow_moves(
    planner: &mut Planner<'_>,
    instances: &HashMap<(String, String), &Arc<Instance>>,
    sled_name: &str,
) -> u32 {
    let observed = planner.observed;
    let migrations = migrations_by_name(observed);
    let drain_name = observed.drain.name_any();
    let mut unfinished = 0u32;
    let mut recreate = Vec::new();
    for item in &mut planner.plan.status.plan {
        let instance = instances.get(&(item.namespace.clone(), item.instance.clone()));
        if let Some(done) = done_message(instance.map(|i| i.as_ref()), sled_name) {
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
                if let (Some(target), Some(instance)) = (&item.target_sled, instance) {
                    let previous = item.attempts.checked_sub(1).and_then(|attempt| {
                        let name = self::migration_name(&drain_name, &item.instance, attempt);
                        migrations.get(&(item.namespace.clone(), name)).copied()
                    });
                    let (mode, _) = mode_for(instance, observed.vmms, observed.sleds, previous);
                    recreate.push(Action::CreateMigration {
                        namespace: item.namespace.clone(),
                        name: migration_name,
                        instance: item.instance.clone(),
                        target_sled: target.clone(),
                        mode,
                    });
                }
            }
            Some(migration) if !migration.is_finished() => unfinished += 1,
            Some(migration) => retry_or_fail(item, migration, &migration_name),
        }
    }
    for action in recreate {
        planner.plan.act(action);
    }
    unfinished
}

/// The drain's Migrations by (namespace, name).
fn migrations_by_name<'a>(observed: &Observed<'a>) -> HashMap<(String, String), &'a Migration> {
    observed
        .migrations
        .iter()
        .map(|m| {
            (
                (m.namespace().unwrap_or_default(), m.name_any()),
                m.as_ref(),
            )
        })
        .collect()
}

/// A move that ended: the item waits for another attempt, or fails after the last one. A move
/// that succeeded stays `Moving` until the instance runs elsewhere.
fn retry_or_fail(item: &mut DrainItem, migration: &Migration, migration_name: &str) {
    let status = migration.status.clone().unwrap_or_default();
    if status.phase == Some(MigrationPhase::Succeeded) {
        return;
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

/// New moves, in plan order, within `maxParallel`. Returns whether an item waits for room or
/// for its instance to run.
fn start_moves(
    planner: &mut Planner<'_>,
    instances: &HashMap<(String, String), &Arc<Instance>>,
    sled_name: &str,
    mut unfinished: u32,
) -> bool {
    let observed = planner.observed;
    let drain_name = observed.drain.name_any();
    let migrations = migrations_by_name(observed);
    let mut usage = usage_of(observed.sleds, observed.instances);
    let max_parallel = observed.drain.spec.max_parallel.max(1);
    let mut waiting = false;
    let mut created = Vec::new();
    for item in &mut planner.plan.status.plan {
        if item.state != DrainItemState::Waiting || unfinished >= max_parallel {
            continue;
        }
        let Some(instance) = instances.get(&(item.namespace.clone(), item.instance.clone())) else {
            continue;
        };
        // Only a running instance is moved (live or by a restart); one starting (or being
        // repaired) on the sled is moved once it runs.
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
                sled_name,
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
        let previous = item
            .migration
            .as_ref()
            .and_then(|name| migrations.get(&(item.namespace.clone(), name.clone())))
            .copied();
        let (mode, why) = mode_for(instance, observed.vmms, observed.sleds, previous);
        item.attempts += 1;
        item.target_sled = Some(target.clone());
        item.state = DrainItemState::Moving;
        let name = migration_name(&drain_name, &item.instance, item.attempts);
        item.migration = Some(name.clone());
        if let Some(why) = why {
            item.message = why;
        } else if item.message.starts_with("waiting") {
            item.message.clear();
        }
        created.push(Action::CreateMigration {
            namespace: item.namespace.clone(),
            name,
            instance: item.instance.clone(),
            target_sled: target,
            mode,
        });
        unfinished += 1;
    }
    for action in created {
        planner.plan.act(action);
    }
    waiting
}

/// Fails when nothing is open and something failed, completes when nothing is open and the
/// sled's agent reports no VMM, and otherwise says how far the drain is.
fn conclude(planner: &mut Planner<'_>, sled: &Sled, waiting: bool) {
    let sled_name = sled.name_any();
    let status = &planner.plan.status;
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
    let message = if open == 0 && stays.is_empty() {
        let vmms = sled.status.as_ref().map(|s| s.vmms);
        if vmms == Some(0) {
            let message = format!(
                "sled {sled_name} runs no VMM: {} instances moved",
                status.moved
            );
            planner.finish_as(DrainPhase::Completed, Reason::DrainCompleted, message);
            return;
        }
        format!(
            "every instance moved; waiting for sled {sled_name}'s node-agent to report no VMM ({} left)",
            vmms.unwrap_or(0)
        )
    } else if !stays.is_empty() && open == 0 {
        format!(
            "waiting: {} stay (evictionStrategy None) and still run on sled {sled_name}",
            stays.join(", ")
        )
    } else {
        format!(
            "moving {} of {} instances off sled {sled_name}{}",
            status.moving,
            status.total - status.moved,
            if waiting {
                "; some wait for room or to run"
            } else {
                ""
            }
        )
    };
    planner.plan.status.message = message;
    planner
        .plan
        .requeue_within(if waiting { SHORT_RECHECK } else { RESYNC });
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
    let status = &mut planner.plan.status;
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
#[path = "plan_tests.rs"]
mod tests;
