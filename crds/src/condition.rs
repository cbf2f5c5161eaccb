//! Status conditions, shared by every kind.
//!
//! A condition is one observation with a type (an enum per kind, so that a typo is a compile
//! error), a status, a machine-readable [`Reason`] and a human message. Conditions are written
//! only by the writer that owns the status they live in (each kind's docs say who).
//!
//! # Invariants
//! - At most one condition of each type in a list ([`set`] replaces in place).
//! - `lastTransitionTime` changes only when `status` changes: a writer re-asserting the same
//!   status with a new message keeps the time of the transition.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

string_enum! {
    /// Whether a condition holds.
    pub enum ConditionStatus {
        True,
        False,
        Unknown,
    }
}

string_enum! {
    /// Why a condition, a state or an Event is what it is. One vocabulary for every kind, so that
    /// `corralctl events` and the conditions speak the same words.
    pub enum Reason {
        // Scheduling.
        /// A sled was chosen for the instance.
        Placed,
        /// No sled has room (or matches the selector, or is Ready and uncordoned).
        Unschedulable,
        // Lifecycle.
        /// The instance's runStrategy says it should not run.
        Halted,
        /// Waiting for a Vmm to be created on the chosen sled.
        VmmPending,
        /// The VMM is booting.
        Booting,
        /// The VMM runs.
        VmmRunning,
        /// The VMM is shutting down.
        ShuttingDown,
        /// The guest shut down cleanly.
        GuestShutdown,
        /// The guest crashed.
        GuestCrashed,
        /// The instance was restarted after its VMM stopped or failed.
        Restarted,
        /// The guest is rebooting in place.
        Rebooting,
        /// A restart waits for its backoff to expire.
        BackingOff,
        /// Someone asked the instance to start (`corralctl start`).
        StartRequested,
        /// Someone asked the instance to stop (`corralctl stop`).
        StopRequested,
        /// Someone asked the instance to reboot (`corralctl reboot`).
        RebootRequested,
        /// The instance is being deleted; its Vmms are torn down first.
        Deleting,
        /// An abandoned Vmm was deleted by the reaper.
        Reaped,
        // Sled.
        /// The node-agent runs and renews its Lease.
        AgentReady,
        /// The node-agent stopped cleanly; nothing on the sled is reconciled until it is back.
        AgentStopped,
        /// The node-agent stopped renewing its Lease for longer than the grace.
        HeartbeatExpired,
        /// The node-agent's Lease is late, still within the grace.
        HeartbeatLate,
        /// The node-agent renews its Lease again.
        HeartbeatRenewed,
        /// The sled's power controller reports its power off.
        PoweredOff,
        /// The sled's power controller does not answer.
        PowerControllerUnreachable,
        /// The control plane powered the sled off and its power controller confirmed it.
        FencedByPowerOff,
        /// An operator confirmed the sled cannot run its VMMs (`corralctl fence --confirm`).
        FencedByOperator,
        /// Too many sleds are unreachable at once: nothing is fenced automatically (the control
        /// plane is more likely the one cut off).
        FencingPaused,
        /// The instances of a fenced sled are being released to restart elsewhere.
        Evacuating,
        /// Every Vmm of a fenced sled is released.
        Evacuated,
        /// The VMM's sled failed (lost power, was fenced): not the instance's doing.
        SledFailed,
        /// An operator cordoned the sled.
        Cordoned,
        /// An operator made the sled schedulable again.
        Uncordoned,
        /// The sled powered on with a new epoch.
        SledBooted,
        /// The sled's epoch moved past the Vmm's (the sled rebooted or was fenced).
        StaleSledEpoch,
        /// The Vmm does not fit the sled's free capacity.
        InsufficientCapacity,
        // Divergence.
        /// Actual state differs from desired state.
        DivergenceDetected,
        /// Actual state matches desired state again.
        DivergenceRepaired,
        /// A VMM the control plane assigned died without being asked to stop.
        VmmKilled,
        /// A VMM the control plane assigned is not on the sled (found after an agent restart).
        VmmMissing,
        /// A VMM runs on the sled that no Vmm assigns to it.
        UnknownVmm,
        /// Nothing differs.
        Converged,
        // Migration.
        /// A migration was admitted and the instance is moving.
        MigrationStarted,
        /// The instance runs on the target; the source is torn down.
        MigrationSucceeded,
        /// The migration ended without moving the instance.
        MigrationFailed,
        /// The migration was cancelled.
        MigrationCancelled,
        /// The instance already has an unfinished migration.
        MigrationInProgress,
        /// The migration waits for a concurrency limit (rack, source sled, target sled).
        MigrationThrottled,
        /// The migration waits for the V2P change of the instance's previous move to converge.
        V2PNotConverged,
        /// The pre-copy model predicts the transfer never catches up with the guest.
        WillNotConverge,
        /// The instance does not exist or does not run.
        InstanceNotRunning,
        /// The transfer between the agents broke (a dead agent, a network fault, a refusal).
        TransferFailed,
        /// A time limit of the migration or drain passed.
        Timeout,
        /// A sled the migration needs is not Ready.
        SledNotReady,
        /// Pre-copy rounds are under way.
        Transferring,
        /// The guest is paused on the source for the last round and the switch.
        Switching,
        // Drain.
        /// The drain planned its moves and started.
        DrainStarted,
        /// The sled runs no VMM any more.
        DrainCompleted,
        /// The drain's plan does not fit the free capacity, or an instance may not be moved.
        DoesNotFit,
        /// The drain's deadline passed.
        DeadlineExceeded,
        /// The drain was cancelled.
        DrainCancelled,
        /// The drain failed.
        DrainFailed,
        // V2P.
        /// The sled's V2P table holds every VpcRoutes at its current generation.
        V2PApplied,
        /// The sled's V2P table is being brought up to date.
        V2PPending,
        /// Two instances claim one IP in a VPC.
        IpConflict,
    }
}

/// One observation about an object. `T` is the kind's condition-type enum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition<T> {
    #[serde(rename = "type")]
    pub type_: T,
    pub status: ConditionStatus,
    pub reason: Reason,
    #[serde(default)]
    pub message: String,
    pub last_transition_time: Time,
    /// The `metadata.generation` the writer had seen when it set the condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Sets a condition of `type_`, keeping its transition time unless the status changes.
/// Returns whether anything changed.
pub fn set<T: PartialEq + Copy>(
    conditions: &mut Vec<Condition<T>>,
    type_: T,
    status: ConditionStatus,
    reason: Reason,
    message: impl Into<String>,
    now: Timestamp,
) -> bool {
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status == status && existing.reason == reason && existing.message == message
            {
                return false;
            }
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status;
            existing.reason = reason;
            existing.message = message;
            true
        }
        None => {
            conditions.push(Condition {
                type_,
                status,
                reason,
                message,
                last_transition_time: Time(now),
                observed_generation: None,
            });
            true
        }
    }
}

/// The condition of `type_`, if present.
pub fn find<T: PartialEq + Copy>(conditions: &[Condition<T>], type_: T) -> Option<&Condition<T>> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The condition of `type_` if it is present and True: the one place that says what "the
/// condition holds" means, for callers that also show its reason and message.
pub fn find_true<T: PartialEq + Copy>(
    conditions: &[Condition<T>],
    type_: T,
) -> Option<&Condition<T>> {
    find(conditions, type_).filter(|c| c.status == ConditionStatus::True)
}

/// Whether the condition of `type_` is present and True ([`find_true`]).
pub fn is_true<T: PartialEq + Copy>(conditions: &[Condition<T>], type_: T) -> bool {
    find_true(conditions, type_).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    enum Kind {
        Ready,
    }

    #[test]
    fn reasons_are_their_names_on_the_wire() {
        for reason in Reason::ALL {
            let wire = serde_json::to_value(reason).unwrap();
            assert_eq!(wire, serde_json::json!(reason.as_str()));
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(*reason));
        }
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let t2 = Timestamp::from_second(3_000).unwrap();
        let mut conditions = Vec::new();
        assert!(set(
            &mut conditions,
            Kind::Ready,
            ConditionStatus::False,
            Reason::Booting,
            "a",
            t0
        ));
        assert!(set(
            &mut conditions,
            Kind::Ready,
            ConditionStatus::False,
            Reason::Booting,
            "b",
            t1
        ));
        assert_eq!(conditions[0].last_transition_time, Time(t0));
        assert!(!set(
            &mut conditions,
            Kind::Ready,
            ConditionStatus::False,
            Reason::Booting,
            "b",
            t1
        ));
        assert!(set(
            &mut conditions,
            Kind::Ready,
            ConditionStatus::True,
            Reason::AgentReady,
            "",
            t2
        ));
        assert_eq!(conditions[0].last_transition_time, Time(t2));
        assert_eq!(conditions.len(), 1);
        assert!(is_true(&conditions, Kind::Ready));
    }

    #[test]
    fn a_condition_holds_only_when_present_and_true() {
        let now = Timestamp::from_second(1_000).unwrap();
        let mut conditions = Vec::new();
        assert!(find_true(&conditions, Kind::Ready).is_none());
        for (status, holds) in [
            (ConditionStatus::False, false),
            (ConditionStatus::Unknown, false),
            (ConditionStatus::True, true),
        ] {
            set(
                &mut conditions,
                Kind::Ready,
                status,
                Reason::AgentReady,
                "up",
                now,
            );
            assert_eq!(
                find_true(&conditions, Kind::Ready).map(|c| c.message.as_str()),
                holds.then_some("up"),
                "{status}"
            );
            assert_eq!(is_true(&conditions, Kind::Ready), holds, "{status}");
        }
    }
}
