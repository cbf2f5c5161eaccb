//! The migration controller's decisions about one Migration, as a pure function of what it
//! observes. `migration.rs` gathers the inputs and writes the result.
//!
//! # Definitions
//! - A Migration is *admitted* if (and only if) it left `Pending`; *under way* if admitted
//!   and not final. Only under-way migrations count towards the limits.
//! - The instance is *movable* if (and only if) its state is `Running`, it names an active
//!   Vmm that runs, and no target.
//! - A restart migration (`spec.mode: Restart`) is *stopping* while the instance names it and
//!   its active Vmm is still the source (or none yet); it is *starting* once the instance names
//!   another active Vmm (the new one, on the target). Restarts are admitted, limited and
//!   followed like live migrations, without the pre-copy prediction and without transfer
//!   progress (no memory is copied): docs/migration.md, "Restart migrations".
//! - The V2P change of the instance's last move has *converged* if (and only if), for every
//!   NIC, its VPC's routes map the IP to the instance's sled at its current
//!   `locationGeneration`, and every Ready sled acknowledges that VPC at a generation at least
//!   the mapping's `since`.
//!
//! # Invariants
//! - Only a `Pending` Migration is given a final phase here on the controller's own judgement
//!   (refused or cancelled before anything happened). An admitted one ends only by copying the
//!   instance's `lastMigration` (docs/migration.md, "One decision point"); until then the
//!   controller can only ask for an abort, once.
//! - Admission respects the limits given the load passed in, which includes this controller's
//!   own admissions not yet in its cache.

use std::collections::HashMap;
use std::time::Duration;

use corral_client::events::EventType;
use corral_crds::migration::MIB;
use corral_crds::{
    Instance, InstanceState, Migration, MigrationAbort, MigrationMode, MigrationPhase,
    MigrationRole, MigrationStatus, Reason, Sled, TransferProgress, TransferTimes, Vmm,
    VmmMigrationPhase, VmmState, VpcRoutes,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::kit::{self, NoAction};

/// How often an under-way or waiting Migration is looked at again.
pub const RECHECK: Duration = Duration::from_millis(500);

/// Concurrency limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Migrations under way in the whole rack.
    pub rack: usize,
    /// Migrations under way out of one sled.
    pub outbound: usize,
    /// Migrations under way into one sled.
    pub inbound: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rack: 16,
            outbound: 4,
            inbound: 4,
        }
    }
}

/// Time limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Every migration may take this long...
    pub base: Duration,
    /// ...plus this much per GiB of guest memory, from admission to the switch.
    pub per_gib: Duration,
    /// No byte sent for this long (or no transfer begun this long after admission).
    pub no_progress: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            base: Duration::from_secs(60),
            per_gib: Duration::from_secs(20),
            no_progress: Duration::from_secs(20),
        }
    }
}

impl Timeouts {
    /// The whole-migration limit for a guest of `memory_mib`.
    pub fn overall(&self, memory_mib: u64) -> Duration {
        let gib = memory_mib.div_ceil(1024).max(1);
        self.base + self.per_gib * gib as u32
    }

    /// The whole-migration limit of a migration in `mode`: a restart copies no memory, so it
    /// gets the base alone (a stop and a boot), whatever the guest's size.
    pub fn limit(&self, mode: MigrationMode, memory_mib: u64) -> Duration {
        match mode {
            MigrationMode::Live => self.overall(memory_mib),
            MigrationMode::Restart => self.base,
        }
    }
}

/// Migrations under way, by where they go from and to (this one excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub rack: usize,
    pub outbound: HashMap<String, usize>,
    pub inbound: HashMap<String, usize>,
}

impl Load {
    pub fn add(&mut self, source: Option<&str>, target: Option<&str>) {
        self.rack += 1;
        if let Some(source) = source {
            *self.outbound.entry(source.to_string()).or_default() += 1;
        }
        if let Some(target) = target {
            *self.inbound.entry(target.to_string()).or_default() += 1;
        }
    }
}

/// Everything one decision depends on.
pub struct Observed<'a> {
    pub migration: &'a Migration,
    /// `None`: the Instance does not exist (the caller read the API to be sure).
    pub instance: Option<&'a Instance>,
    /// The source and target Vmms, as far as they exist.
    pub source: Option<&'a Vmm>,
    pub target: Option<&'a Vmm>,
    pub sleds: &'a [std::sync::Arc<Sled>],
    /// The other unfinished Migrations of the same instance.
    pub siblings: &'a [std::sync::Arc<Migration>],
    /// The VpcRoutes of the instance's VPCs.
    pub routes: &'a [std::sync::Arc<VpcRoutes>],
    pub load: &'a Load,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub now: Timestamp,
}

/// The new status (with [`Step::WriteStatus`](crate::kit::Step) when it changed), the Events
/// to record, and when to look again. The migration controller has no action of its own: it
/// only writes `Migration.status`.
pub type Plan = kit::Plan<MigrationStatus, NoAction>;

/// Decides what the Migration's status should be now.
pub fn plan(observed: &Observed<'_>) -> Plan {
    let migration = observed.migration;
    let previous = migration.status.clone().unwrap_or_default();
    let mut plan = Plan::new(previous.clone());
    plan.status.observed_generation = migration.metadata.generation.unwrap_or(0);
    let phase = plan.status.phase.unwrap_or(MigrationPhase::Pending);
    if !phase.is_final() {
        plan.status.phase = Some(phase);
        if phase == MigrationPhase::Pending {
            plan_pending(observed, &mut plan);
        } else {
            plan_under_way(observed, &mut plan);
        }
    }
    measure(observed, &mut plan.status);
    if !plan.status.phase.is_some_and(MigrationPhase::is_final) {
        plan.requeue = Some(RECHECK);
    }
    // Events report status changes: with no change there is nothing to write or report.
    if plan.status == previous {
        plan.steps.clear();
    } else {
        plan.write_status_at_if_changed(0, &previous);
    }
    plan
}

/// Whether a finished Migration still waits for its measurement: a live move that succeeded
/// is measured once its target runs the guest, which is after the switch that finished it.
pub fn awaits_measurement(migration: &Migration) -> bool {
    let status = migration.status.as_ref();
    migration.spec.mode == MigrationMode::Live
        && status.and_then(|s| s.phase) == Some(MigrationPhase::Succeeded)
        && status.is_some_and(|s| s.measured.is_none())
}

/// Copies the move's measurement from the target's timings, once they are all there.
fn measure(observed: &Observed<'_>, status: &mut MigrationStatus) {
    if status.measured.is_some() || status.phase != Some(MigrationPhase::Succeeded) {
        return;
    }
    let name = observed.migration.name_any();
    status.measured = observed
        .target
        .filter(|vmm| status.target_vmm.as_deref() == Some(vmm.name_any().as_str()))
        .and_then(|vmm| vmm.status.as_ref()?.migration.as_ref())
        .filter(|end| end.migration == name && end.role == MigrationRole::Target)
        .and_then(|end| end.timings.measured());
}

/// How a step of the pending path ends the reconcile, if it does.
enum Verdict {
    /// A final phase, with the reason and message.
    Finish(MigrationPhase, Reason, String),
    /// Still `Pending`, with why.
    Wait(Reason, String),
}

fn failed(reason: Reason, message: String) -> Option<Verdict> {
    Some(Verdict::Finish(MigrationPhase::Failed, reason, message))
}

fn finish(
    observed: &Observed<'_>,
    plan: &mut Plan,
    phase: MigrationPhase,
    reason: Reason,
    message: String,
) {
    let status = &mut plan.status;
    status.phase = Some(phase);
    status.reason = Some(reason);
    status.message = message.clone();
    status.finished_at = Some(Time(observed.now));
    let (type_, event) = match phase {
        MigrationPhase::Succeeded => (EventType::Normal, Reason::MigrationSucceeded),
        MigrationPhase::Cancelled => (EventType::Normal, Reason::MigrationCancelled),
        _ => (EventType::Warning, Reason::MigrationFailed),
    };
    plan.event(type_, event, message);
}

fn wait(plan: &mut Plan, reason: Reason, message: String) {
    plan.status.reason = Some(reason);
    plan.status.message = message;
}

fn sled<'a>(observed: &Observed<'a>, name: &str) -> Option<&'a Sled> {
    observed
        .sleds
        .iter()
        .find(|s| s.name_any() == name)
        .map(|s| s.as_ref())
}

/// Refuse, wait, or admit: each step below may end the reconcile with a [`Verdict`].
fn plan_pending(observed: &Observed<'_>, plan: &mut Plan) {
    let verdict = refusal(observed).or_else(|| {
        let instance = observed.instance?;
        let status = instance.status.clone().unwrap_or_default();
        let (source_vmm, source_sled) = match movable(observed, &status) {
            Ok(source) => source,
            Err(verdict) => return Some(verdict),
        };
        if let Some(verdict) = target_refusal(observed, &source_sled) {
            return Some(verdict);
        }
        let progress = match predicted(observed, instance, &source_sled) {
            Ok(progress) => progress,
            Err(verdict) => return Some(verdict),
        };
        if let Some(waiting) = v2p_waiting(observed, instance) {
            return Some(Verdict::Wait(Reason::V2PNotConverged, waiting));
        }
        if let Some(message) = throttled(observed, &source_sled) {
            let message = format!("waiting: {message}");
            return Some(Verdict::Wait(Reason::MigrationThrottled, message));
        }
        admit(observed, plan, source_vmm, source_sled, progress);
        None
    });
    match verdict {
        Some(Verdict::Finish(phase, reason, message)) => {
            finish(observed, plan, phase, reason, message)
        }
        Some(Verdict::Wait(reason, message)) => wait(plan, reason, message),
        None => {}
    }
}

/// Cancelled, the instance gone, or another migration of it first: refused before anything.
fn refusal(observed: &Observed<'_>) -> Option<Verdict> {
    let migration = observed.migration;
    if migration.spec.cancel {
        let message = "cancelled before it started".to_string();
        return Some(Verdict::Finish(
            MigrationPhase::Cancelled,
            Reason::MigrationCancelled,
            message,
        ));
    }
    if observed.instance.is_none() {
        let message = format!("instance {} does not exist", migration.spec.instance);
        return failed(Reason::InstanceNotRunning, message);
    }
    let key = |m: &Migration| (m.metadata.creation_timestamp.clone(), m.name_any());
    let other = observed.siblings.iter().find(|other| {
        let admitted = other
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p != MigrationPhase::Pending);
        admitted || key(other) < key(migration)
    })?;
    let message = format!(
        "instance {} already has an unfinished migration, {}",
        migration.spec.instance,
        other.name_any()
    );
    failed(Reason::MigrationInProgress, message)
}

/// The instance's active Vmm and sled if it is movable; else wait (on its way to running) or
/// fail.
fn movable(
    observed: &Observed<'_>,
    status: &corral_crds::InstanceStatus,
) -> Result<(String, String), Verdict> {
    let instance_name = &observed.migration.spec.instance;
    let state = status.state;
    match state {
        Some(InstanceState::Running) if status.target_vmm.is_none() => {}
        Some(
            InstanceState::Creating
            | InstanceState::Starting
            | InstanceState::Repairing
            | InstanceState::Migrating,
        ) => {
            let state = state.map(|s| s.to_string()).unwrap_or_default();
            let message = format!("waiting for the instance to run (it is {state})");
            return Err(Verdict::Wait(Reason::InstanceNotRunning, message));
        }
        _ => {
            let state = state.map_or("not running".to_string(), |s| s.to_string());
            let message = format!("instance {instance_name} does not run (it is {state})");
            return Err(Verdict::Finish(
                MigrationPhase::Failed,
                Reason::InstanceNotRunning,
                message,
            ));
        }
    }
    match (status.active_vmm.clone(), status.sled.clone()) {
        (Some(vmm), Some(sled)) => Ok((vmm, sled)),
        _ => Err(Verdict::Finish(
            MigrationPhase::Failed,
            Reason::InstanceNotRunning,
            format!("instance {instance_name} runs nowhere"),
        )),
    }
}

/// A `targetSled` that cannot be: where the instance runs, or no sled at all.
fn target_refusal(observed: &Observed<'_>, source_sled: &str) -> Option<Verdict> {
    let target = observed.migration.spec.target_sled.as_ref()?;
    let message = if *target == source_sled {
        format!("the target sled {target} is where the instance runs")
    } else if sled(observed, target).is_none() {
        format!("there is no sled {target}")
    } else {
        return None;
    };
    failed(Reason::Unschedulable, message)
}

/// The transfer as the pre-copy model predicts it, with what the source's agent reports;
/// refused if it would not converge. A restart transfers nothing: no prediction, no progress.
fn predicted(
    observed: &Observed<'_>,
    instance: &Instance,
    source_sled: &str,
) -> Result<Option<TransferProgress>, Verdict> {
    if observed.migration.spec.mode == MigrationMode::Restart {
        return Ok(None);
    }
    let mut progress =
        TransferProgress::before(instance, observed.source, sled(observed, source_sled));
    match progress.prediction() {
        Ok(None) => Ok(Some(progress)),
        Ok(Some(prediction)) => {
            progress.predicted_downtime_ms = prediction.downtime.as_millis() as u64;
            progress.eta_seconds = Some(prediction.duration.as_secs_f64().ceil() as u64);
            Ok(Some(progress))
        }
        Err(why) => Err(Verdict::Finish(
            MigrationPhase::Failed,
            Reason::WillNotConverge,
            format!("refused: the transfer would not converge: {why}"),
        )),
    }
}

/// Which concurrency limit a new migration from `source_sled` would break, if any.
fn throttled(observed: &Observed<'_>, source_sled: &str) -> Option<String> {
    let limits = observed.limits;
    let load = observed.load;
    let target = observed.migration.spec.target_sled.as_deref();
    if load.rack >= limits.rack {
        Some(format!(
            "{} migrations under way in the rack (limit {})",
            load.rack, limits.rack
        ))
    } else if load.outbound.get(source_sled).copied().unwrap_or(0) >= limits.outbound {
        Some(format!(
            "{source_sled} already sends {} migrations (limit {})",
            limits.outbound, limits.outbound
        ))
    } else if let Some(target) = target
        && load.inbound.get(target).copied().unwrap_or(0) >= limits.inbound
    {
        Some(format!(
            "{target} already receives {} migrations (limit {})",
            limits.inbound, limits.inbound
        ))
    } else {
        None
    }
}

/// Admits the migration: `Scheduling`, with its source, start and prediction.
fn admit(
    observed: &Observed<'_>,
    plan: &mut Plan,
    source_vmm: String,
    source_sled: String,
    progress: Option<TransferProgress>,
) {
    let migration = observed.migration;
    let instance = &migration.spec.instance;
    let message = match &progress {
        None => format!(
            "restarting {instance}: stopping it on {source_sled}, then starting it on another sled"
        ),
        Some(TransferProgress {
            eta_seconds: Some(eta),
            predicted_downtime_ms,
            ..
        }) => format!(
            "moving {instance} from {source_sled}: predicted {eta} s, {predicted_downtime_ms} ms downtime"
        ),
        Some(_) => format!("moving {instance} from {source_sled}"),
    };
    let status = &mut plan.status;
    status.phase = Some(MigrationPhase::Scheduling);
    status.source_vmm = Some(source_vmm);
    status.source_sled = Some(source_sled);
    status.target_sled = migration.spec.target_sled.clone();
    status.started_at = Some(Time(observed.now));
    status.progressed_at = Some(Time(observed.now));
    status.predicted = progress
        .as_ref()
        .and_then(|p| p.prediction().ok().flatten())
        .map(TransferTimes::from);
    status.progress = progress;
    status.reason = Some(Reason::MigrationStarted);
    status.message = message.clone();
    let name = migration.name_any();
    plan.event(
        EventType::Normal,
        Reason::MigrationStarted,
        format!("migration {name}: {message}"),
    );
}

/// Why the instance's last move has not converged yet, if it has not.
fn v2p_waiting(observed: &Observed<'_>, instance: &Instance) -> Option<String> {
    let status = instance.status.as_ref()?;
    let sled_name = status.sled.as_deref()?;
    for nic in &instance.spec.nics {
        let Some(routes) = observed.routes.iter().find(|r| r.name_any() == nic.vpc) else {
            return Some(format!("waiting for the V2P mappings of VPC {}", nic.vpc));
        };
        let current = routes.spec.mappings.iter().find(|m| {
            m.ip == nic.ip
                && m.sled == sled_name
                && m.location_generation >= status.location_generation
        });
        let Some(mapping) = current else {
            return Some(format!(
                "waiting for VPC {} to map {} to {sled_name}",
                nic.vpc, nic.ip
            ));
        };
        if !crate::v2p::converged_at(&nic.vpc, mapping.since, observed.sleds) {
            return Some(format!(
                "waiting for every Ready sled to apply VPC {} generation {}",
                nic.vpc, mapping.since
            ));
        }
    }
    None
}

/// Follow an admitted migration: copy the instance's decision, show progress, ask to abort.
fn plan_under_way(observed: &Observed<'_>, plan: &mut Plan) {
    let migration = observed.migration;
    let name = migration.name_any();
    let Some(instance) = observed.instance else {
        let message = format!("instance {} was deleted", migration.spec.instance);
        return finish(
            observed,
            plan,
            MigrationPhase::Failed,
            Reason::InstanceNotRunning,
            message,
        );
    };
    let status = instance.status.clone().unwrap_or_default();
    if let Some(outcome) = status.last_migration.as_ref().filter(|o| o.name == name) {
        let mut message = outcome.message.clone();
        if outcome.phase == MigrationPhase::Succeeded {
            plan.status.location_generation = Some(status.location_generation);
            if migration.spec.cancel || plan.status.abort.is_some() {
                let point = match migration.spec.mode {
                    MigrationMode::Live => "switch",
                    MigrationMode::Restart => "stop",
                };
                message = format!("{message} (the abort came after the {point})");
            }
        }
        let reason = outcome.reason.unwrap_or(Reason::MigrationFailed);
        return finish(observed, plan, outcome.phase, reason, message);
    }
    // Where it is.
    let named = status.migration.as_deref() == Some(name.as_str());
    if migration.spec.mode == MigrationMode::Restart {
        follow_restart(observed, plan, &status, named);
    } else {
        follow_live(observed, plan, &status, named);
    }
    if plan.status.abort.is_none()
        && let Some((reason, message)) = abort_reason(observed, plan)
    {
        plan.status.abort = Some(MigrationAbort {
            reason,
            message: message.clone(),
            at: Time(observed.now),
        });
        plan.status.message = format!("aborting: {message}");
        let type_ = if reason == Reason::MigrationCancelled {
            EventType::Normal
        } else {
            EventType::Warning
        };
        plan.event(
            type_,
            reason,
            format!("migration {name}: aborting: {message}"),
        );
    }
}

/// Moves the phase forward to `phase` (never back while under way), with its reason.
fn advance(observed: &Observed<'_>, plan: &mut Plan, phase: MigrationPhase) {
    let previous = plan.status.phase.unwrap_or(MigrationPhase::Pending);
    let phase = phase.max(previous);
    if phase != previous {
        plan.status.phase = Some(phase);
        plan.status.reason = Some(match phase {
            MigrationPhase::Transferring => Reason::Transferring,
            MigrationPhase::Switching => Reason::Switching,
            MigrationPhase::Stopping => Reason::ShuttingDown,
            _ => Reason::MigrationStarted,
        });
        if phase == MigrationPhase::Transferring && plan.status.transfer_started_at.is_none() {
            plan.status.transfer_started_at = Some(Time(observed.now));
        }
    }
}

/// A restart under way: stopping until the instance names a new active Vmm, then starting it.
fn follow_restart(
    observed: &Observed<'_>,
    plan: &mut Plan,
    status: &corral_crds::InstanceStatus,
    named: bool,
) {
    let active = status.active_vmm.as_ref();
    let phase = if !named {
        MigrationPhase::Scheduling
    } else if active.is_none() || active == plan.status.source_vmm.as_ref() {
        MigrationPhase::Stopping
    } else {
        plan.status.target_vmm = status.active_vmm.clone();
        plan.status.target_sled = status.sled.clone();
        MigrationPhase::TargetStarting
    };
    advance(observed, plan, phase);
}

/// A live migration under way: the phase and progress its ends report.
fn follow_live(
    observed: &Observed<'_>,
    plan: &mut Plan,
    status: &corral_crds::InstanceStatus,
    named: bool,
) {
    let name = observed.migration.name_any();
    if named {
        plan.status.target_vmm = status.target_vmm.clone();
        plan.status.target_sled = status.target_sled.clone();
    }
    let ends = ends(observed);
    let target_end = observed
        .target
        .and_then(|v| v.status.as_ref()?.migration.as_ref())
        .filter(|m| m.migration == name);
    let phase = match target_end.map(|m| m.phase) {
        _ if !named => MigrationPhase::Scheduling,
        Some(VmmMigrationPhase::Ready | VmmMigrationPhase::Completed) => MigrationPhase::Switching,
        Some(VmmMigrationPhase::Transferring) => MigrationPhase::Transferring,
        _ => MigrationPhase::TargetStarting,
    };
    advance(observed, plan, phase);
    if let Some(best) = ends.iter().max_by_key(|m| m.progress.bytes_sent)
        && best.progress.bytes_sent > 0
    {
        let mut progress = best.progress.clone();
        let sent_before = observed
            .migration
            .status
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .map_or(0, |p| p.bytes_sent);
        if progress.bytes_sent > sent_before {
            plan.status.progressed_at = Some(Time(observed.now));
        }
        if progress.memory_bytes == 0 {
            progress.memory_bytes = observed
                .instance
                .map_or(0, |i| i.spec.memory_mib)
                .saturating_mul(MIB);
        }
        plan.status.progress = Some(progress);
    }
}

/// The migration's ends as the agents report them (a live migration's source and target).
fn ends<'a>(observed: &Observed<'a>) -> Vec<&'a corral_crds::VmmMigrationStatus> {
    let name = observed.migration.name_any();
    [observed.source, observed.target]
        .into_iter()
        .flatten()
        .filter_map(|vmm| vmm.status.as_ref()?.migration.as_ref())
        .filter(|m| m.migration == name)
        .collect()
}

/// How long the transfer has not moved at `now`: since `progressedAt`, else (a status written
/// before that field existed) since the admission.
pub fn stalled_for(status: &MigrationStatus, now: Timestamp) -> Duration {
    status
        .progressed_at
        .as_ref()
        .or(status.started_at.as_ref())
        .map_or(Duration::ZERO, |since| {
            Duration::try_from(now.duration_since(since.0)).unwrap_or_default()
        })
}

/// Why the migration must stop, if it must.
fn abort_reason(observed: &Observed<'_>, plan: &Plan) -> Option<(Reason, String)> {
    let migration = observed.migration;
    if migration.spec.cancel {
        return Some((
            Reason::MigrationCancelled,
            "cancelled by request".to_string(),
        ));
    }
    let live = migration.spec.mode == MigrationMode::Live;
    if live
        && let Some(end) = ends(observed)
            .into_iter()
            .find(|m| m.phase == VmmMigrationPhase::Failed)
    {
        let message = format!(
            "the {} reports the transfer failed: {}",
            end.role.as_str().to_lowercase(),
            end.message
        );
        return Some((Reason::TransferFailed, message));
    }
    if live
        && let Some(target) = observed.target
        && target.status.as_ref().and_then(|s| s.state) == Some(VmmState::Failed)
    {
        let why = target
            .status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default();
        return Some((
            Reason::TransferFailed,
            format!("the target VMM failed: {why}"),
        ));
    }
    let status = &plan.status;
    if status.phase == Some(MigrationPhase::Switching) {
        // The target holds the whole guest and the instance controller is about to switch:
        // an abort now would only lengthen the pause.
        return None;
    }
    for sled_name in [status.source_sled.as_deref(), status.target_sled.as_deref()]
        .into_iter()
        .flatten()
    {
        if !sled(observed, sled_name).is_some_and(Sled::is_ready) {
            return Some((
                Reason::SledNotReady,
                format!("sled {sled_name} is not Ready"),
            ));
        }
    }
    let memory_mib = observed.instance.map_or(0, |i| i.spec.memory_mib);
    let limit = observed.timeouts.limit(migration.spec.mode, memory_mib);
    if let Some(started) = &status.started_at {
        let elapsed =
            Duration::try_from(observed.now.duration_since(started.0)).unwrap_or_default();
        if elapsed > limit {
            return Some((
                Reason::Timeout,
                format!(
                    "not done after {} s (limit {} s for {memory_mib} MiB)",
                    elapsed.as_secs(),
                    limit.as_secs()
                ),
            ));
        }
    }
    // A restart sends no bytes: only the overall limit applies to it.
    let stalled_for = stalled_for(status, observed.now);
    if live && stalled_for > observed.timeouts.no_progress {
        return Some((
            Reason::Timeout,
            format!("no progress for {} s", stalled_for.as_secs()),
        ));
    }
    None
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
