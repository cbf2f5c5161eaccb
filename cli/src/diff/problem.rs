//! The report's vocabulary: which object ([`ObjectRef`]) and what differs ([`Problem`], each
//! defined in the `diff` module docs), with the words `corralctl diff` prints for them.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;

use corral_crds::{ConditionStatus, InstanceState, Reason, RunStrategy};

/// The kinds the report covers, in the order it lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Instance,
    Vmm,
    Sled,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Instance => "Instance",
            ObjectKind::Vmm => "Vmm",
            ObjectKind::Sled => "Sled",
        }
    }
}

/// Which object a difference is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(
                f,
                "{}/{}/{}",
                self.kind.as_str().to_lowercase(),
                ns,
                self.name
            ),
            None => write!(f, "{}/{}", self.kind.as_str().to_lowercase(), self.name),
        }
    }
}

/// What differs (definitions in the module docs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    NotRunning {
        run_strategy: RunStrategy,
        state: Option<InstanceState>,
    },
    RunningWhileHalted {
        state: InstanceState,
    },
    InstanceDiverged {
        reason: Reason,
        message: String,
    },
    ActiveVmmMissing {
        vmm: String,
    },
    ActiveVmmFailed {
        vmm: String,
        reason: Option<Reason>,
        message: String,
    },
    SledMismatch {
        vmm: String,
        instance_sled: Option<String>,
        vmm_sled: String,
    },
    Abandoned {
        instance: String,
        instance_exists: bool,
    },
    StaleEpoch {
        sled: String,
        vmm_epoch: u64,
        sled_epoch: u64,
    },
    UnknownSled {
        sled: String,
    },
    VmmDiverged {
        reason: Reason,
        message: String,
    },
    TerminatingTooLong {
        since: Timestamp,
        for_seconds: u64,
    },
    SledNotReady {
        status: Option<ConditionStatus>,
        reason: Option<Reason>,
        message: String,
    },
    SledDiverged {
        reason: Reason,
        message: String,
    },
    Undecodable {
        error: String,
    },
}

impl Problem {
    /// The problem's name in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Problem::NotRunning { .. } => "NotRunning",
            Problem::RunningWhileHalted { .. } => "RunningWhileHalted",
            Problem::InstanceDiverged { .. } => "Diverged",
            Problem::ActiveVmmMissing { .. } => "ActiveVmmMissing",
            Problem::ActiveVmmFailed { .. } => "ActiveVmmFailed",
            Problem::SledMismatch { .. } => "SledMismatch",
            Problem::Abandoned { .. } => "Abandoned",
            Problem::StaleEpoch { .. } => "StaleEpoch",
            Problem::UnknownSled { .. } => "UnknownSled",
            Problem::VmmDiverged { .. } => "Diverged",
            Problem::TerminatingTooLong { .. } => "TerminatingTooLong",
            Problem::SledNotReady { .. } => "NotReady",
            Problem::SledDiverged { .. } => "Diverged",
            Problem::Undecodable { .. } => "Undecodable",
        }
    }
}

fn with_message(text: String, message: &str) -> String {
    if message.is_empty() {
        text
    } else {
        format!("{text}: {message}")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Problem::NotRunning {
                run_strategy,
                state,
            } => format!(
                "runStrategy {run_strategy} wants it running; state is {}",
                state.map(|s| s.as_str()).unwrap_or("not reported")
            ),
            Problem::RunningWhileHalted { state } => {
                format!("runStrategy Halted but state is {state}")
            }
            Problem::InstanceDiverged { reason, message }
            | Problem::VmmDiverged { reason, message }
            | Problem::SledDiverged { reason, message } => {
                with_message(format!("Diverged=True ({reason})"), message)
            }
            Problem::ActiveVmmMissing { vmm } => {
                format!("names active Vmm {vmm}, which does not exist")
            }
            Problem::ActiveVmmFailed {
                vmm,
                reason,
                message,
            } => with_message(
                format!(
                    "active Vmm {vmm} is Failed{}",
                    reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ),
                message,
            ),
            Problem::SledMismatch {
                vmm,
                instance_sled,
                vmm_sled,
            } => format!(
                "status.sled is {} but active Vmm {vmm} is on {vmm_sled}",
                instance_sled.as_deref().unwrap_or("unset")
            ),
            Problem::Abandoned {
                instance,
                instance_exists: true,
            } => format!("Instance {instance} names it neither active nor target Vmm"),
            Problem::Abandoned {
                instance,
                instance_exists: false,
            } => format!("its Instance {instance} does not exist"),
            Problem::StaleEpoch {
                sled,
                vmm_epoch,
                sled_epoch,
            } => format!(
                "placed at epoch {vmm_epoch} of sled {sled}, which is now at epoch {sled_epoch}"
            ),
            Problem::UnknownSled { sled } => format!("placed on sled {sled}, which does not exist"),
            Problem::TerminatingTooLong { since, for_seconds } => format!(
                "being deleted since {since} ({}) and still there",
                corral_apimachinery::duration::human_duration(Duration::from_secs(*for_seconds))
            ),
            Problem::SledNotReady {
                status,
                reason,
                message,
            } => match status {
                None => "no Ready condition (its node-agent never reported)".to_string(),
                Some(status) => with_message(
                    format!(
                        "Ready={status}{}",
                        reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    ),
                    message,
                ),
            },
            Problem::Undecodable { error } => format!("does not decode: {error}"),
        };
        f.write_str(&text)
    }
}

/// One difference between desired and actual state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference {
    pub object: ObjectRef,
    pub problem: Problem,
}
