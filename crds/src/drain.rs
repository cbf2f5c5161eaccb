//! `Drain`: empty one sled for maintenance, server-side and cancellable (cluster-scoped).
//!
//! Writers: operators (`corralctl drain`) create Drains and may set `spec.cancel`; the drain
//! controller alone writes `status` (and cordons the sled, and creates the Migrations that move
//! its instances). docs/migration.md, "Drains", says how a drain runs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Reason;
use crate::instance::EvictionStrategy;

/// Moves at once, by default.
pub const DEFAULT_MAX_PARALLEL: u32 = 4;

fn default_max_parallel() -> u32 {
    DEFAULT_MAX_PARALLEL
}

string_enum! {
    /// Where a drain is.
    pub enum DrainPhase {
        /// Cordoning the sled and planning.
        Pending,
        /// Moving instances off the sled.
        Draining,
        /// The sled's node-agent reports no VMM left.
        Completed,
        /// The plan does not fit (or an instance may not be moved) and `force` is not set.
        Refused,
        /// It ended without emptying the sled (deadline passed, moves kept failing).
        Failed,
        /// It was cancelled.
        Cancelled,
    }
}

impl DrainPhase {
    /// Completed, Refused, Failed or Cancelled: nothing changes any more.
    pub fn is_final(self) -> bool {
        !matches!(self, DrainPhase::Pending | DrainPhase::Draining)
    }
}

string_enum! {
    /// Where one instance of a drain is.
    pub enum DrainItemState {
        /// Planned, not moving yet.
        Waiting,
        /// A Migration moves it.
        Moving,
        /// It runs on another sled.
        Moved,
        /// Its moves failed too often.
        Failed,
        /// Its evictionStrategy is `None`: it stays, and the drain cannot complete while it runs.
        Stays,
    }
}

/// A maintenance drain of one sled.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "Drain",
    plural = "drains",
    shortname = "dr",
    status = "DrainStatus",
    category = "corral",
    printcolumn = r#"{"name":"Sled","type":"string","jsonPath":".spec.sled"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"ETA","type":"integer","jsonPath":".status.etaSeconds"}"#,
    printcolumn = r#"{"name":"Deadline","type":"date","priority":1,"jsonPath":".status.deadline"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.sled",
    selectable = ".status.phase"
)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// The sled to empty.
    pub sled: String,
    /// How long the drain may take (`30m`, `1h`); it fails when that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Moves under way at once.
    #[serde(default = "default_max_parallel")]
    #[schemars(range(min = 1, max = 64))]
    pub max_parallel: u32,
    /// Start even when the plan does not fit everything; what does not fit waits for room.
    #[serde(default)]
    pub force: bool,
    /// Set to stop the drain: no new moves, unfinished ones are cancelled.
    #[serde(default)]
    pub cancel: bool,
}

impl Drain {
    /// Whether its status shows a final phase ([`DrainPhase::is_final`]). A Drain without a
    /// phase yet is unfinished.
    pub fn is_finished(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|status| status.phase)
            .is_some_and(DrainPhase::is_final)
    }
}

/// One instance of the sled, and where the drain moves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainItem {
    pub namespace: String,
    pub instance: String,
    pub strategy: EvictionStrategy,
    /// The sled the plan chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sled: Option<String>,
    pub state: DrainItemState,
    /// The Migration moving it now, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// Moves tried so far.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Written only by the drain controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DrainPhase>,
    /// Every instance of the sled and where it goes, computed before the first move.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<DrainItem>,
    /// `moved/total`, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub progress: String,
    #[serde(default)]
    pub total: u32,
    #[serde(default)]
    pub moved: u32,
    #[serde(default)]
    pub moving: u32,
    #[serde(default)]
    pub failed: u32,
    /// VMMs the sled's node-agent still reports.
    #[serde(default)]
    pub vmms_left: u32,
    /// Predicted seconds until the sled is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the drain fails if it has not completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Why it is in its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default)]
    pub observed_generation: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_finished_only_in_a_final_phase() {
        let mut drain = Drain::new("s1-1", DrainSpec::default());
        assert!(!drain.is_finished());
        for phase in DrainPhase::ALL {
            drain.status = Some(DrainStatus {
                phase: Some(*phase),
                ..Default::default()
            });
            let finished = !matches!(phase, DrainPhase::Pending | DrainPhase::Draining);
            assert_eq!(phase.is_final(), finished, "{phase}");
            assert_eq!(drain.is_finished(), finished, "{phase}");
        }
    }
}
