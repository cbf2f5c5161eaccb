//! How a run of the agent learns that its sled was fenced, and what the run owes the rack
//! then.
//!
//! # Definitions
//! A run of the agent is *fenced* if (and only if) the sled's epoch in the API is above the
//! epoch of the run: the sled-health controller proved the sled could not run its VMMs (power
//! confirmed off, or an operator's confirmation), raised `Sled.status.epoch`, and released the
//! sled's Vmms so that their instances restart elsewhere. Whatever this run still runs is a
//! second copy of a guest that may already run on another sled.
//!
//! The run learns it from any of (each raises the [`FenceAlarm`]):
//! - the Sled's `status.epoch` above its own, seen by the Sled status writer (`sled.rs`) on any
//!   read, or by the check that follows every heartbeat renewal (`agent.rs`);
//! - the API refusing one of its writes on `status.epoch` or `status.sledEpoch`
//!   ([`refuses_epoch`]);
//! - a Vmm of its sled whose `spec.sledEpoch` is above its own (`vmm/reconcile.rs`).
//!
//! # Guarantees
//! - Once the alarm is raised, the run writes nothing more (no `Vmm.status`, no `Sled.status`)
//!   and starts nothing; the agent destroys every VMM on the machine ([`destroy_every_vmm`])
//!   and starts a new run, whose epoch is above the fence's (`agent.rs`, `next_epoch`).
//!
//! # Not responsible for
//! Deciding to fence (the sled-health controller), and losing the Lease: an agent that cannot
//! renew its Lease keeps its guests running (the agent's module docs say why).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::hypervisor::{Hypervisor, HypervisorError};

/// The fields on which the API server refuses a write from an ended life of the sled.
const EPOCH_FIELDS: [&str; 2] = ["status.epoch", "status.sledEpoch"];

/// Raised once per run, when the run learns it was fenced (see the module docs). Clones of the
/// `Arc` holding it are shared by every part of the run.
#[derive(Debug, Default)]
pub struct FenceAlarm {
    raised: CancellationToken,
    /// The highest sled epoch seen above the run's (at least the run's epoch + 1 once raised).
    observed: AtomicU64,
}

impl FenceAlarm {
    /// Raises the alarm: the API holds an epoch of at least `observed` for the sled, above the
    /// run's. `why` is logged.
    pub fn raise(&self, observed: u64, why: &str) {
        self.observed.fetch_max(observed, Ordering::SeqCst);
        if !self.raised.is_cancelled() {
            tracing::warn!(
                observed,
                why,
                "the sled was fenced: this run of the agent ends"
            );
        }
        self.raised.cancel();
    }

    pub fn is_raised(&self) -> bool {
        self.raised.is_cancelled()
    }

    /// Waits until the alarm is raised.
    pub async fn raised(&self) {
        self.raised.cancelled().await
    }

    /// The highest sled epoch seen (0 while not raised).
    pub fn observed(&self) -> u64 {
        self.observed.load(Ordering::SeqCst)
    }
}

/// Whether the API refused a write because it came from an ended life of the sled: a
/// `409 Conflict` whose first cause names `status.epoch` or `status.sledEpoch`.
pub fn refuses_epoch(error: &kube::Error) -> bool {
    let kube::Error::Api(status) = error else {
        return false;
    };
    status.code == 409
        && status
            .details
            .as_ref()
            .and_then(|details| details.causes.first())
            .is_some_and(|cause| EPOCH_FIELDS.contains(&cause.field.as_str()))
}

/// Destroys every VMM on the machine, assigned or not; returns how many there were.
pub async fn destroy_every_vmm(hypervisor: &dyn Hypervisor) -> Result<usize, HypervisorError> {
    let vmms = hypervisor.list().await?;
    for vmm in &vmms {
        hypervisor.destroy(&vmm.launch.id).await?;
    }
    Ok(vmms.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::{StatusCause, StatusDetails};

    fn refusal(code: u16, field: &str) -> kube::Error {
        let mut status = Status::failure("refused", "Conflict").with_code(code);
        status.details = Some(StatusDetails {
            causes: vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: "below the sled's epoch".into(),
                field: field.into(),
            }],
            name: "sled-1".into(),
            group: "corral.dev".into(),
            kind: "sleds".into(),
            uid: String::new(),
            retry_after_seconds: 0,
        });
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn only_a_conflict_on_an_epoch_field_is_a_fence() {
        assert!(refuses_epoch(&refusal(409, "status.sledEpoch")));
        assert!(refuses_epoch(&refusal(409, "status.epoch")));
        assert!(!refuses_epoch(&refusal(409, "metadata.resourceVersion")));
        assert!(!refuses_epoch(&refusal(422, "status.epoch")));
    }

    #[test]
    fn the_alarm_keeps_the_highest_epoch_seen() {
        let alarm = FenceAlarm::default();
        assert!(!alarm.is_raised());
        alarm.raise(5, "a");
        alarm.raise(4, "b");
        assert!(alarm.is_raised());
        assert_eq!(alarm.observed(), 5);
    }
}
