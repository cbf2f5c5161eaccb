//! The sled-health controller's decisions, as a pure function of what it observes of one sled.
//!
//! [`plan`] takes the Sled, how long ago its Lease was last seen renewed, what its power
//! controller answered (asked only once the Lease expired), how many sleds are unreachable at
//! once, and the Vmms of the sled's ended lives that still hold the node-agent's finalizer; it
//! returns the status the Sled should show and the steps that get it there.
//!
//! # The verdicts (docs/rack.md, "When a sled fails")
//! | verdict | when |
//! |---|---|
//! | `Healthy` | the Lease was renewed within half the grace |
//! | `Suspect` | the Lease is late, still within the grace |
//! | `Unreachable` | the Lease expired; the power controller says On, or does not answer |
//!
//! The grace is the configured one, but never less than the Lease's own `leaseDurationSeconds`
//! (the agent's promise): a sled is not judged before its agent is late by its own terms.
//! | `PoweredOff` | the Lease expired and the power controller says Off |
//! | `Fenced` | proven unable to run its VMMs, and its epoch raised |
//!
//! # Invariants
//! - **Verdict first, then act.** A verdict is written before anything is done on it: a sled is
//!   powered off only once `Unreachable` is stored, fenced only once `Unreachable` or
//!   `PoweredOff` is stored. So every action is visible before it happens, and a failed action
//!   leaves the verdict that explains it.
//! - **Fence only on proof.** The epoch is raised (and `Fenced` set) only when the power
//!   controller has just read `Off` — found so, or after this controller powered it off in the
//!   same plan, the fence write coming after the power-off step, which fails unless `Off` is read
//!   back — or when an operator confirmed the sled's current epoch
//!   (`spec.fenceConfirmedEpoch`). Never on a timer alone.
//! - **The storm guard.** While more sleds are late or unreachable at once than the guard allows,
//!   and until the count has stayed under it for half the expiry ([`Storm::paused_for`]), no
//!   sled is powered off automatically (the control plane is more likely the one cut off); a
//!   sled its power controller reports `Off` and an operator's confirmation are not in doubt and
//!   still fence.
//! - **Release only what a fence proved dead.** A Vmm's node-agent finalizer is removed only if
//!   its `spec.sledEpoch` is below an epoch this controller fenced the sled at; at most
//!   `release_budget` per plan (the rack-wide evacuation rate).
//! - `plan(x)` applied and planned again changes nothing more (the status keeps its messages and
//!   times while the verdict and its reason stay).

use std::sync::Arc;
use std::time::Duration;

use corral_client::events::EventType;
use corral_crds::condition;
use corral_crds::{
    ConditionStatus, Evacuation, HealthVerdict, Reason, Sled, SledConditionType, SledHealth,
    SledStatus, Vmm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::kit::{self, Kind, Step};

/// How often a sled in doubt (unreachable, paused by the storm guard) is looked at again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What the sled's power controller answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Power {
    On,
    Off,
    /// It did not answer (or answered nonsense): why.
    Unanswered(String),
    /// The sled names no power controller.
    NoController,
}

/// The Lease as this controller saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    /// Since this controller last saw `renewTime` change (or started watching, if it never
    /// did): measured on this controller's clock, so skew between machines does not matter, and
    /// a controller that starts gives every sled a full grace.
    pub age: Duration,
    /// The Lease's `leaseDurationSeconds` (the agent's promise), if it has one.
    pub lease_duration: Option<Duration>,
    /// The Lease's `renewTime`.
    pub renewed: Option<Time>,
}

impl Heartbeat {
    /// How long the Lease may go unrenewed: the grace, but never less than the agent's own
    /// promise (`leaseDurationSeconds`): a sled is not judged before its agent is late.
    pub fn expiry(&self, grace: Duration) -> Duration {
        grace.max(self.lease_duration.unwrap_or_default())
    }

    /// Whether the Lease expired.
    pub fn expired(&self, grace: Duration) -> bool {
        self.age > self.expiry(grace)
    }

    /// Whether the Lease is late (past half the grace): `Suspect` or worse. Sleds that went
    /// silent at the same moment are all late by the time the first of them expires (their
    /// renewals are spread over less than half the grace), which is what lets the storm guard
    /// see them together.
    pub fn late(&self, grace: Duration) -> bool {
        self.age > self.expiry(grace) / 2
    }
}

/// The storm guard's limit: how many sleds may be unreachable at once before nothing is fenced
/// automatically.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StormGuard {
    /// The share of the rack (default a third).
    pub fraction: f64,
    /// Never fewer than this many (default 2: in a rack of up to six, three at once is a storm).
    pub floor: usize,
}

impl Default for StormGuard {
    fn default() -> Self {
        StormGuard {
            fraction: 1.0 / 3.0,
            floor: 2,
        }
    }
}

impl StormGuard {
    /// The most sleds that may be unreachable at once in a rack of `sleds`.
    pub fn limit(&self, sleds: usize) -> usize {
        ((self.fraction * sleds as f64).floor() as usize).max(self.floor)
    }
}

/// How many sleds are in doubt at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storm {
    /// Sleds whose Lease is late ([`Heartbeat::late`]), neither fenced nor read `Off` by their
    /// power controller.
    pub unreachable: usize,
    pub sleds: usize,
    /// [`StormGuard::limit`] for this rack.
    pub limit: usize,
    /// How long ago the count was last above the limit, if this controller ever saw it so.
    pub since_storm: Option<Duration>,
}

impl Storm {
    /// Whether the count is above the limit now.
    pub fn raging(&self) -> bool {
        self.unreachable > self.limit
    }

    /// How much longer automatic fencing stays paused for a sled whose Lease expires after
    /// `expiry`: while the count is above the limit, and until it has stayed at or under it for
    /// half of `expiry`. Sleds that went silent together come back together, but their first
    /// renewals arrive over a heartbeat interval (well within half the expiry); the first few
    /// drop the count under the limit, and without the settle time a sled whose renewal is
    /// still on its way would be powered off the moment the storm ends.
    pub fn paused_for(&self, expiry: Duration) -> Option<Duration> {
        if self.raging() {
            return Some(expiry / 2);
        }
        let since = self.since_storm?;
        (expiry / 2)
            .checked_sub(since)
            .filter(|left| !left.is_zero())
    }
}

/// What the controller observed of one sled.
pub struct Observed<'a> {
    pub sled: &'a Sled,
    pub heartbeat: Heartbeat,
    /// What the power controller answered; `None`: not asked (the Lease has not expired).
    pub power: Option<Power>,
    pub storm: Storm,
    /// The sled's Vmms that still hold the node-agent's finalizer.
    pub held: &'a [Arc<Vmm>],
    /// How many Vmms this plan may release (the rack-wide evacuation rate).
    pub release_budget: usize,
    pub grace: Duration,
    pub now: jiff::Timestamp,
}

/// The sled-health controller's own actions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Power the sled off through its power controller and read `Off` back; fails otherwise
    /// (and the plan stops before the fence).
    PowerOff,
    /// Remove the node-agent's finalizer from this Vmm: its sled was fenced, nothing runs it,
    /// and its deletion need not wait for an agent that is gone.
    Release { namespace: String, name: String },
}

impl Kind for Action {
    fn kind(&self) -> &'static str {
        match self {
            Action::PowerOff => "PowerOff",
            Action::Release { .. } => "Release",
        }
    }
}

pub type Plan = kit::Plan<SledStatus, Action>;

/// A verdict about to be written: what, why, and the words for operators.
struct Verdict {
    verdict: HealthVerdict,
    reason: Reason,
    message: String,
}

/// Plans one sled (see the module docs).
pub fn plan(observed: &Observed<'_>) -> Plan {
    let sled = observed.sled;
    let previous = sled.status.clone().unwrap_or_default();
    let mut plan = Plan::new(previous.clone());
    // A sled whose agent never booted has no life to judge yet.
    if previous.epoch == 0 {
        return plan;
    }
    if !sled.is_fenced() {
        judge(observed, &mut plan);
    }
    evacuate(observed, &mut plan);
    plan.write_status_at_if_changed(first_release(&plan), &previous);
    plan
}

/// The verdict of a sled not fenced at its current epoch, and what it leads to.
fn judge(observed: &Observed<'_>, plan: &mut Plan) {
    let sled = observed.sled;
    let heartbeat = &observed.heartbeat;
    let grace = heartbeat.expiry(observed.grace);
    let suspect_after = grace / 2;
    let was = plan.status.health.as_ref().map(|health| health.verdict);
    if heartbeat.age <= suspect_after {
        plan.requeue_within(suspect_after - heartbeat.age + Duration::from_millis(1));
        let reason = match was {
            None | Some(HealthVerdict::Healthy) => current_reason(plan, Reason::AgentReady),
            Some(HealthVerdict::Fenced) => Reason::SledBooted,
            Some(_) => Reason::HeartbeatRenewed,
        };
        let message = format!("the node-agent renews its Lease (epoch {})", sled.epoch());
        set_ready(plan, true, observed.now);
        if was == Some(HealthVerdict::Fenced) {
            set_fenced(plan, None, observed.now);
        }
        return set_verdict(
            plan,
            observed,
            Verdict::new(HealthVerdict::Healthy, reason, message),
        );
    }
    if heartbeat.age <= grace {
        plan.requeue_within(grace - heartbeat.age + Duration::from_millis(1));
        let message = format!(
            "the Lease was not renewed for {}s (grace {}s)",
            heartbeat.age.as_secs(),
            grace.as_secs()
        );
        return set_verdict(
            plan,
            observed,
            Verdict::new(HealthVerdict::Suspect, Reason::HeartbeatLate, message),
        );
    }
    // The Lease expired: nothing is placed here any more, whatever the agent last wrote.
    set_ready(plan, false, observed.now);
    plan.requeue_within(RECHECK);
    expired(observed, plan, was);
}

/// The Lease expired: what the power controller and the operator say decides.
fn expired(observed: &Observed<'_>, plan: &mut Plan, was: Option<HealthVerdict>) {
    let sled = observed.sled;
    let epoch = sled.epoch();
    let silent_for = format!(
        "the Lease was not renewed for {}s (grace {}s)",
        observed.heartbeat.age.as_secs(),
        observed.heartbeat.expiry(observed.grace).as_secs()
    );
    let power = observed.power.clone().unwrap_or(Power::Unanswered(
        "the power controller was not asked".into(),
    ));
    if power == Power::Off {
        if was == Some(HealthVerdict::PoweredOff) || was == Some(HealthVerdict::Unreachable) {
            return fence(
                observed,
                plan,
                Reason::PoweredOff,
                "its power controller reads it Off",
            );
        }
        let message = format!("{silent_for}; its power controller reads it Off");
        return set_verdict(
            plan,
            observed,
            Verdict::new(HealthVerdict::PoweredOff, Reason::PoweredOff, message),
        );
    }
    let confirmed = sled.spec.fence_confirmed_epoch == Some(epoch);
    if confirmed && was == Some(HealthVerdict::Unreachable) {
        return fence(
            observed,
            plan,
            Reason::FencedByOperator,
            &format!("an operator confirmed epoch {epoch} is over"),
        );
    }
    let storm = observed.storm;
    if let Some(left) = storm.paused_for(observed.heartbeat.expiry(observed.grace)) {
        let count = if storm.raging() {
            format!(
                "{} of {} sleds are unreachable at once (more than {}): the control plane may \
                 be the one cut off, so nothing is fenced automatically",
                storm.unreachable, storm.sleds, storm.limit
            )
        } else {
            format!(
                "{} of {} sleds are unreachable now, but more than {} were until moments ago: \
                 nothing is fenced automatically until the count has stayed down, so the sleds \
                 that went silent together can renew first",
                storm.unreachable, storm.sleds, storm.limit
            )
        };
        // The stored message (and its `since`) stays while the reason does; only the recheck
        // time follows the settle time.
        plan.requeue_within(left.min(RECHECK));
        let message = format!(
            "{silent_for}; {count}; `corralctl fence {} --confirm` fences this one by hand",
            sled.name_any()
        );
        return set_verdict(
            plan,
            observed,
            Verdict::new(HealthVerdict::Unreachable, Reason::FencingPaused, message),
        );
    }
    match &power {
        Power::On if was == Some(HealthVerdict::Unreachable) => {
            plan.act(Action::PowerOff);
            fence(
                observed,
                plan,
                Reason::FencedByPowerOff,
                "it was powered off and its power controller read Off back",
            );
        }
        Power::On => {
            let message =
                format!("{silent_for}; its power controller reads it On: powering it off");
            set_verdict(
                plan,
                observed,
                Verdict::new(
                    HealthVerdict::Unreachable,
                    Reason::HeartbeatExpired,
                    message,
                ),
            );
        }
        Power::Unanswered(_) | Power::NoController => {
            let power = match &power {
                Power::Unanswered(why) => format!("its power controller does not answer ({why})"),
                _ => "it has no power controller".to_string(),
            };
            let message = format!(
                "{silent_for}; {power}: its VMMs may still run, so nothing of it restarts \
                 elsewhere until the power controller answers or an operator confirms with \
                 `corralctl fence {} --confirm`",
                sled.name_any()
            );
            set_verdict(
                plan,
                observed,
                Verdict::new(
                    HealthVerdict::Unreachable,
                    Reason::PowerControllerUnreachable,
                    message,
                ),
            );
        }
        Power::Off => unreachable!("handled above"),
    }
}

/// Raises the epoch and writes `Fenced`: the sled's current life is over.
fn fence(observed: &Observed<'_>, plan: &mut Plan, reason: Reason, proof: &str) {
    let from = plan.status.epoch;
    let epoch = from + 1;
    let outlived = observed
        .held
        .iter()
        .filter(|vmm| vmm.spec.sled_epoch < epoch)
        .count();
    plan.status.epoch = epoch;
    let message = format!(
        "fenced: {proof}; epoch {from} → {epoch}; {outlived} Vmm(s) of its ended life are \
         released to restart elsewhere"
    );
    set_fenced(plan, Some((reason, message.clone())), observed.now);
    set_verdict(
        plan,
        observed,
        Verdict::new(HealthVerdict::Fenced, reason, message),
    );
    let health = plan
        .status
        .health
        .as_mut()
        .expect("the verdict was just set");
    health.fenced_epoch = Some(epoch);
    health.evacuation = Some(Evacuation {
        started: Some(Time(observed.now)),
        total: outlived as u32,
        released: 0,
        completed: None,
    });
}

/// Releases the Vmms a fence proved dead, within the budget, and counts the progress.
fn evacuate(observed: &Observed<'_>, plan: &mut Plan) {
    let Some(fenced_epoch) = plan.status.health.as_ref().and_then(|h| h.fenced_epoch) else {
        return;
    };
    let mut outlived: Vec<&Arc<Vmm>> = observed
        .held
        .iter()
        .filter(|vmm| vmm.spec.sled_epoch < fenced_epoch)
        .collect();
    outlived.sort_by_key(|vmm| (vmm.namespace(), vmm.name_any()));
    let remaining = outlived.len();
    for vmm in outlived.iter().take(observed.release_budget) {
        plan.act(Action::Release {
            namespace: vmm.namespace().unwrap_or_default(),
            name: vmm.name_any(),
        });
    }
    if remaining > observed.release_budget {
        plan.requeue_within(RECHECK / 10);
    }
    let now = observed.now;
    let sled_name = observed.sled.name_any();
    let health = plan
        .status
        .health
        .as_mut()
        .expect("fenced_epoch implies a health");
    let Some(evacuation) = health.evacuation.as_mut() else {
        return;
    };
    let released = evacuation.total.saturating_sub(remaining as u32);
    if released > evacuation.released {
        evacuation.released = released;
    }
    if remaining == 0 && evacuation.completed.is_none() {
        evacuation.completed = Some(Time(now));
        let total = evacuation.total;
        plan.event(
            EventType::Normal,
            Reason::Evacuated,
            format!("{total} Vmm(s) of the fenced sled {sled_name} released"),
        );
    }
}

/// Where the status write goes: after the power-off (the fence needs its proof) and before the
/// first release (the fence is stored before anything relies on it) and the Events.
fn first_release(plan: &Plan) -> usize {
    plan.steps
        .iter()
        .position(|step| matches!(step, Step::Act(Action::Release { .. }) | Step::Event(_)))
        .unwrap_or(plan.steps.len())
}

impl Verdict {
    fn new(verdict: HealthVerdict, reason: Reason, message: String) -> Verdict {
        Verdict {
            verdict,
            reason,
            message,
        }
    }
}

/// The reason the stored verdict has, or `default`.
fn current_reason(plan: &Plan, default: Reason) -> Reason {
    plan.status
        .health
        .as_ref()
        .map_or(default, |health| health.reason)
}

/// Writes `verdict` unless the same verdict with the same reason is stored (then its message
/// and times stay); a change is an Event.
fn set_verdict(plan: &mut Plan, observed: &Observed<'_>, verdict: Verdict) {
    let previous = plan.status.health.clone();
    if previous
        .as_ref()
        .is_some_and(|health| health.verdict == verdict.verdict && health.reason == verdict.reason)
    {
        return;
    }
    let kept = previous.unwrap_or_else(|| SledHealth {
        verdict: verdict.verdict,
        reason: verdict.reason,
        message: String::new(),
        since: Time(observed.now),
        last_renew: None,
        fenced_epoch: None,
        evacuation: None,
    });
    let changed = kept.verdict != verdict.verdict || plan.status.health.is_none();
    let type_ = if verdict.verdict == HealthVerdict::Healthy {
        EventType::Normal
    } else {
        EventType::Warning
    };
    plan.event(
        type_,
        verdict.reason,
        format!("{}: {}", verdict.verdict, verdict.message),
    );
    plan.status.health = Some(SledHealth {
        since: if changed {
            Time(observed.now)
        } else {
            kept.since
        },
        last_renew: observed.heartbeat.renewed.clone(),
        verdict: verdict.verdict,
        reason: verdict.reason,
        message: verdict.message,
        ..kept
    });
}

/// `Ready`: lifted back to `True` only over this controller's own `HeartbeatExpired` (the agent
/// owns the condition otherwise); set `False` when the Lease expired.
fn set_ready(plan: &mut Plan, fresh: bool, now: jiff::Timestamp) {
    let conditions = &mut plan.status.conditions;
    let expired_by_us = condition::find(conditions, SledConditionType::Ready).is_some_and(|c| {
        c.status == ConditionStatus::False && c.reason == Reason::HeartbeatExpired
    });
    if fresh && expired_by_us {
        condition::set(
            conditions,
            SledConditionType::Ready,
            ConditionStatus::True,
            Reason::HeartbeatRenewed,
            "the node-agent renews its Lease again",
            now,
        );
    } else if !fresh && !expired_by_us {
        condition::set(
            conditions,
            SledConditionType::Ready,
            ConditionStatus::False,
            Reason::HeartbeatExpired,
            "the node-agent stopped renewing its Lease",
            now,
        );
    }
}

/// The `Fenced` condition: `Some((reason, message))` sets it, `None` clears a set one.
fn set_fenced(plan: &mut Plan, fenced: Option<(Reason, String)>, now: jiff::Timestamp) {
    let conditions = &mut plan.status.conditions;
    let _changed = match fenced {
        Some((reason, message)) => condition::set(
            conditions,
            SledConditionType::Fenced,
            ConditionStatus::True,
            reason,
            message,
            now,
        ),
        None if condition::is_true(conditions, SledConditionType::Fenced) => condition::set(
            conditions,
            SledConditionType::Fenced,
            ConditionStatus::False,
            Reason::SledBooted,
            "the sled rejoined with a new epoch",
            now,
        ),
        None => false,
    };
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
