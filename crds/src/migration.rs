//! `Migration`: move one running instance to another sled, live or by a restart (namespaced).
//!
//! Writers: users (`corralctl migrate`) and the drain controller create Migrations and may set
//! `spec.cancel`; the migration controller alone writes `status`. The outcome of an admitted
//! migration is decided by the instance controller's switch-or-abort write of
//! `Instance.status` and copied here from `Instance.status.lastMigration` (docs/migration.md,
//! "One decision point").
//!
//! [`predict`] is the pre-copy model the controller refuses with, the agents run the rounds by,
//! and the ETA is computed from; [`TransferProgress::before`] gathers its inputs for one
//! instance, and [`TransferProgress::prediction`] is the one rule for "would a live move of it
//! converge" (the migration controller's admission and the drain's choice of mode).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Reason;
use crate::{Instance, Sled, Vmm};

/// The downtime budget: pre-copy ends (the guest pauses for the last round) once the next
/// round would take at most this long.
pub const DOWNTIME_BUDGET: Duration = Duration::from_millis(300);
/// Pre-copy rounds before a transfer that has not converged fails.
pub const MAX_ROUNDS: u32 = 16;
/// One MiB, in bytes.
pub const MIB: u64 = 1024 * 1024;

string_enum! {
    /// Why a migration was asked for.
    pub enum MigrationReason {
        /// A user asked (`corralctl migrate`).
        User,
        /// A drain moves the instance off its sled.
        Drain,
        /// Rebalancing the rack.
        Rebalance,
    }
}

#[allow(clippy::derivable_impls)]
impl Default for MigrationReason {
    fn default() -> Self {
        MigrationReason::User
    }
}

string_enum! {
    /// How a migration moves the instance.
    pub enum MigrationMode {
        /// The guest moves while it runs (pre-copy rounds, then a short pause); refused when
        /// the pre-copy model predicts it would not converge.
        Live,
        /// The guest is stopped on its sled and started again on another once its VMM is gone:
        /// no memory is copied, the guest reboots (docs/migration.md, "Restart migrations").
        Restart,
    }
}

#[allow(clippy::derivable_impls)]
impl Default for MigrationMode {
    fn default() -> Self {
        MigrationMode::Live
    }
}

string_enum! {
    /// Where a migration is.
    pub enum MigrationPhase {
        /// Waiting for admission (limits, the previous move's V2P change) or being checked.
        Pending,
        /// Admitted; the instance controller is placing the target (live) or deciding the stop
        /// (restart).
        Scheduling,
        /// Restart only: the instance's VMM is being stopped on the source sled; nothing is
        /// placed until its Vmm is gone.
        Stopping,
        /// The target Vmm exists and its agent is preparing to receive (live), or the new Vmm
        /// boots (restart).
        TargetStarting,
        /// Pre-copy rounds are under way.
        Transferring,
        /// The guest is paused on the source and whole on the target; the instance switches.
        Switching,
        /// The instance runs on the target; the source is torn down.
        Succeeded,
        /// It ended without moving the instance, which still runs on the source (a restart that
        /// failed after its stop starts the instance by the ordinary rules instead).
        Failed,
        /// It was cancelled before anything moved; the instance still runs on the source.
        Cancelled,
    }
}

impl MigrationPhase {
    /// Succeeded, Failed or Cancelled: nothing changes any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationPhase::Succeeded | MigrationPhase::Failed | MigrationPhase::Cancelled
        )
    }
}

/// A migration of one instance, live or by a restart.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "Migration",
    plural = "migrations",
    shortname = "mig",
    namespaced,
    status = "MigrationStatus",
    category = "corral",
    printcolumn = r#"{"name":"Instance","type":"string","jsonPath":".spec.instance"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"From","type":"string","jsonPath":".status.sourceSled"}"#,
    printcolumn = r#"{"name":"To","type":"string","jsonPath":".status.targetSled"}"#,
    printcolumn = r#"{"name":"Progress","type":"integer","jsonPath":".status.progress.percent"}"#,
    printcolumn = r#"{"name":"ETA","type":"integer","jsonPath":".status.progress.etaSeconds"}"#,
    printcolumn = r#"{"name":"Round","type":"integer","priority":1,"jsonPath":".status.progress.round"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Downtime-ms","type":"integer","priority":1,"jsonPath":".status.measured.downtimeMs"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.instance",
    selectable = ".status.phase"
)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// The Instance (same namespace) to move.
    pub instance: String,
    /// Where to; chosen by the scheduler when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sled: Option<String>,
    #[serde(default)]
    pub reason: MigrationReason,
    /// `Live` (the default) or `Restart`.
    #[serde(default)]
    pub mode: MigrationMode,
    /// Set to stop the migration; the instance stays on the source (unless the switch, or a
    /// restart's stop, has already happened).
    #[serde(default)]
    pub cancel: bool,
}

impl Migration {
    /// Whether its status shows a final phase ([`MigrationPhase::is_final`]). A Migration
    /// without a phase yet is unfinished.
    pub fn is_finished(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|status| status.phase)
            .is_some_and(MigrationPhase::is_final)
    }
}

/// How far a transfer is, as the agents report it and the migration controller shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferProgress {
    /// The guest's memory.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Bytes sent so far, every round included.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Bytes left in the current round.
    #[serde(default)]
    pub bytes_remaining: u64,
    /// How fast the guest dirties memory, bytes per second.
    #[serde(default)]
    pub dirty_bytes_per_second: u64,
    /// The link's bandwidth for this transfer, bytes per second.
    #[serde(default)]
    pub bandwidth_bytes_per_second: u64,
    /// The pre-copy round under way (1 is the whole memory).
    #[serde(default)]
    pub round: u32,
    /// Percent of the predicted bytes sent (0-100).
    #[serde(default)]
    pub percent: u32,
    /// Predicted seconds until the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Predicted guest downtime of the stop-and-copy round.
    #[serde(default)]
    pub predicted_downtime_ms: u64,
    /// The source sled's downtime budget: pre-copy ends once the rest fits it. 0: the default,
    /// [`DOWNTIME_BUDGET`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub downtime_budget_ms: u64,
}

pub(crate) fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl TransferProgress {
    /// The pre-copy model's inputs for moving `instance` live off `sled`: its memory, the dirty
    /// rate its `source` VMM's agent last reported, the sled's migration bandwidth.
    pub fn before(instance: &Instance, source: Option<&Vmm>, sled: Option<&Sled>) -> Self {
        TransferProgress {
            memory_bytes: instance.spec.memory_mib.saturating_mul(MIB),
            dirty_bytes_per_second: source
                .and_then(|v| v.status.as_ref())
                .map_or(0, |s| s.dirty_bytes_per_second),
            bandwidth_bytes_per_second: sled
                .and_then(|s| s.status.as_ref())
                .map_or(0, |s| s.migration_bandwidth),
            downtime_budget_ms: sled
                .and_then(|s| s.status.as_ref())
                .map_or(0, |s| s.migration_downtime_budget_ms),
            ..Default::default()
        }
    }

    /// The downtime budget these inputs name ([`DOWNTIME_BUDGET`] if none).
    pub fn budget(&self) -> Duration {
        budget_or_default(self.downtime_budget_ms)
    }

    /// What [`predict`] says of a transfer with these inputs; `Ok(None)` when the sled reports
    /// no bandwidth (nothing to predict from: the transfer is tried).
    pub fn prediction(&self) -> Result<Option<Prediction>, NonConvergence> {
        if self.bandwidth_bytes_per_second == 0 {
            return Ok(None);
        }
        predict_within(
            self.memory_bytes,
            self.dirty_bytes_per_second,
            self.bandwidth_bytes_per_second,
            self.budget(),
        )
        .map(Some)
    }
}

/// An abort the migration controller asked the instance controller for. Never taken back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationAbort {
    /// `Cancelled`, `TransferFailed`, `Timeout`, `SledNotReady`, ...
    pub reason: Reason,
    #[serde(default)]
    pub message: String,
    pub at: Time,
}

/// Written only by the migration controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_vmm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sled: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vmm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sled: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TransferProgress>,
    /// Set when the controller asked for an abort; the final phase follows the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<MigrationAbort>,
    /// Why it is in its phase (waiting, refused, failed, cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When it was admitted (left Pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the agents began the transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_started_at: Option<Time>,
    /// When the transfer last moved: its `bytesSent` last grew (at first, the admission). The
    /// no-progress timeout counts from here; kept in status, so a new leader of the controllers
    /// goes on counting where the last one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressed_at: Option<Time>,
    /// When it reached its final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The instance's `locationGeneration` after the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_generation: Option<u64>,
    /// What the pre-copy model predicted at admission (`progress` follows the transfer and
    /// changes; this does not). Absent for a restart, or without a bandwidth to predict from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<TransferTimes>,
    /// What the live move took, as its ends measured it; written once the target runs the
    /// guest, which may be just after the migration `Succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<TransferTimes>,
    #[serde(default)]
    pub observed_generation: i64,
}

/// A live move's two durations, predicted or measured (docs/migration.md, "Measured").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferTimes {
    /// From the first byte to the whole guest on the target (the stop-and-copy round
    /// included).
    pub transfer_ms: u64,
    /// From the guest paused on the source to the guest running on the target.
    pub downtime_ms: u64,
}

impl From<Prediction> for TransferTimes {
    fn from(prediction: Prediction) -> Self {
        TransferTimes {
            transfer_ms: prediction.duration.as_millis() as u64,
            downtime_ms: prediction.downtime.as_millis() as u64,
        }
    }
}

/// When one end of a live move saw each step, on its sled's clock (the source's pause is
/// relayed to the target with `done`). Only the target's, all four present, measure the move:
/// the transfer from `startedAt` to `receivedAt`, the downtime from `pausedAt` to `resumedAt`.
/// Across two sleds the downtime carries the offset of their clocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferTimings {
    /// The target asked the source for the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<MicroTime>,
    /// The source paused the guest for the last round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<MicroTime>,
    /// The whole guest was on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<MicroTime>,
    /// The guest ran on the target (after the switch), or on the source again (after an
    /// abort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<MicroTime>,
}

impl TransferTimings {
    pub fn is_empty(&self) -> bool {
        *self == TransferTimings::default()
    }

    /// The move's measured durations, once every step is stamped.
    pub fn measured(&self) -> Option<TransferTimes> {
        Some(TransferTimes {
            transfer_ms: between_ms(&self.started_at, &self.received_at)?,
            downtime_ms: between_ms(&self.paused_at, &self.resumed_at)?,
        })
    }

    /// Of the downtime, the last round's copy: paused to received.
    pub fn copy_ms(&self) -> Option<u64> {
        between_ms(&self.paused_at, &self.received_at)
    }
}

/// Whole milliseconds from `from` to `to`, if both are stamped; 0 if the clocks disagree.
fn between_ms(from: &Option<MicroTime>, to: &Option<MicroTime>) -> Option<u64> {
    let (from, to) = (from.as_ref()?.0, to.as_ref()?.0);
    let micros = to
        .as_microsecond()
        .saturating_sub(from.as_microsecond())
        .max(0);
    Some(micros as u64 / 1000)
}

/// What the pre-copy model predicts for one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// Rounds including the stop-and-copy one.
    pub rounds: u32,
    /// Bytes sent over every round.
    pub total_bytes: u64,
    /// Time from the first byte to the end of the stop-and-copy round.
    pub duration: Duration,
    /// How long the guest is paused (the last round).
    pub downtime: Duration,
}

/// Why a transfer will not converge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NonConvergence {
    #[error("the link has no bandwidth")]
    NoBandwidth,
    #[error(
        "the guest dirties {dirty} bytes/s and the link carries {bandwidth} bytes/s: pre-copy never catches up"
    )]
    DirtyFasterThanLink { dirty: u64, bandwidth: u64 },
    #[error(
        "after {rounds} rounds {left} bytes would still be dirty (the downtime budget allows {budget})"
    )]
    TooManyRounds { rounds: u32, left: u64, budget: u64 },
}

/// The time `bytes` take at `bandwidth` bytes per second ([`Duration::MAX`] if that is more
/// than a `Duration` holds, or the link has no bandwidth).
pub fn transfer_time(bytes: u64, bandwidth: u64) -> Duration {
    if bandwidth == 0 {
        return Duration::MAX;
    }
    Duration::try_from_secs_f64(bytes as f64 / bandwidth as f64).unwrap_or(Duration::MAX)
}

/// The bytes the next round sends, after a round that took `elapsed`.
pub fn dirtied(memory: u64, dirty_rate: u64, elapsed: Duration) -> u64 {
    ((dirty_rate as f64 * elapsed.as_secs_f64()) as u64).min(memory)
}

/// `budget_ms` as a budget; 0 is the default, [`DOWNTIME_BUDGET`].
pub fn budget_or_default(budget_ms: u64) -> Duration {
    match budget_ms {
        0 => DOWNTIME_BUDGET,
        ms => Duration::from_millis(ms),
    }
}

/// Whether a round of `bytes` fits the downtime `budget` (and so is the stop-and-copy round).
pub fn fits_downtime(bytes: u64, bandwidth: u64, budget: Duration) -> bool {
    transfer_time(bytes, bandwidth) <= budget
}

/// [`predict_within`] the default budget, [`DOWNTIME_BUDGET`].
pub fn predict(memory: u64, dirty_rate: u64, bandwidth: u64) -> Result<Prediction, NonConvergence> {
    predict_within(memory, dirty_rate, bandwidth, DOWNTIME_BUDGET)
}

/// Predicts a pre-copy transfer of `memory` bytes over `bandwidth` bytes/s while the guest
/// dirties `dirty_rate` bytes/s, ending once a round fits the downtime `budget` (see
/// docs/migration.md, "The pre-copy model").
pub fn predict_within(
    memory: u64,
    dirty_rate: u64,
    bandwidth: u64,
    budget: Duration,
) -> Result<Prediction, NonConvergence> {
    if bandwidth == 0 {
        return Err(NonConvergence::NoBandwidth);
    }
    if memory > 0 && dirty_rate >= bandwidth {
        return Err(NonConvergence::DirtyFasterThanLink {
            dirty: dirty_rate,
            bandwidth,
        });
    }
    let mut round_bytes = memory;
    let mut total = 0u64;
    let mut duration = Duration::ZERO;
    for round in 1..=MAX_ROUNDS {
        let took = transfer_time(round_bytes, bandwidth);
        total = total.saturating_add(round_bytes);
        duration = duration.saturating_add(took);
        if fits_downtime(round_bytes, bandwidth, budget) {
            return Ok(Prediction {
                rounds: round,
                total_bytes: total,
                duration,
                downtime: took,
            });
        }
        round_bytes = dirtied(memory, dirty_rate, took);
    }
    Err(NonConvergence::TooManyRounds {
        rounds: MAX_ROUNDS,
        left: round_bytes,
        budget: (bandwidth as f64 * budget.as_secs_f64()) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * MIB;
    /// 10 Gbit/s.
    const TEN_GBIT: u64 = 1_250_000_000;

    #[test]
    fn huge_transfers_take_the_longest_time_instead_of_panicking() {
        assert!(transfer_time(u64::MAX, 1) > Duration::from_secs(u64::MAX / 2));
        assert_eq!(transfer_time(1, 0), Duration::MAX);
        // Rounds too long for any budget: the prediction gives up, its sums do not overflow.
        let refused = predict_within(u64::MAX, 1, 2, Duration::ZERO);
        assert!(
            matches!(refused, Err(NonConvergence::TooManyRounds { .. })),
            "{refused:?}"
        );
        let slow = predict_within(u64::MAX, 1, 2, Duration::MAX).expect("one round fits");
        assert_eq!(slow.rounds, 1);
    }

    #[test]
    fn a_quiet_guest_converges_in_a_few_rounds() {
        let p = predict(4 * GIB, 64 * MIB, TEN_GBIT).unwrap();
        assert!(p.rounds >= 2 && p.rounds <= 4, "{p:?}");
        assert!(p.downtime <= DOWNTIME_BUDGET);
        assert!(p.total_bytes > 4 * GIB);
        // The first round alone is 4 GiB at 10 Gbit/s: about 3.4 s.
        assert!(p.duration > Duration::from_millis(3400), "{p:?}");
        assert!(p.duration < Duration::from_millis(3800), "{p:?}");
    }

    #[test]
    fn a_guest_dirtying_faster_than_the_link_never_converges() {
        assert_eq!(
            predict(4 * GIB, TEN_GBIT, TEN_GBIT),
            Err(NonConvergence::DirtyFasterThanLink {
                dirty: TEN_GBIT,
                bandwidth: TEN_GBIT
            })
        );
        // Just below the link: converges in principle, but not within the round limit.
        assert!(matches!(
            predict(4 * GIB, TEN_GBIT - TEN_GBIT / 50, TEN_GBIT),
            Err(NonConvergence::TooManyRounds { .. })
        ));
        assert_eq!(predict(GIB, 0, 0), Err(NonConvergence::NoBandwidth));
    }

    #[test]
    fn timings_measure_only_once_every_step_is_stamped() {
        let at = |ms: i64| {
            Some(MicroTime(
                jiff::Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap(),
            ))
        };
        let mut timings = TransferTimings {
            started_at: at(0),
            paused_at: at(900),
            received_at: at(950),
            resumed_at: None,
        };
        assert_eq!(timings.measured(), None);
        timings.resumed_at = at(960);
        assert_eq!(
            timings.measured(),
            Some(TransferTimes {
                transfer_ms: 950,
                downtime_ms: 60
            })
        );
        // Clocks that disagree never make a negative duration.
        timings.resumed_at = at(800);
        assert_eq!(timings.measured().map(|t| t.downtime_ms), Some(0));
    }

    #[test]
    fn a_migration_is_finished_only_in_a_final_phase() {
        let mut migration = Migration::new("web-1", MigrationSpec::default());
        assert!(!migration.is_finished());
        for phase in MigrationPhase::ALL {
            migration.status = Some(MigrationStatus {
                phase: Some(*phase),
                ..Default::default()
            });
            let finished = matches!(
                phase,
                MigrationPhase::Succeeded | MigrationPhase::Failed | MigrationPhase::Cancelled
            );
            assert_eq!(phase.is_final(), finished, "{phase}");
            assert_eq!(migration.is_finished(), finished, "{phase}");
        }
    }

    #[test]
    fn a_prediction_needs_a_bandwidth_and_says_whether_a_live_move_converges() {
        let instance = Instance::new(
            "web",
            crate::InstanceSpec {
                memory_mib: 4096,
                ..Default::default()
            },
        );
        let sled = |bandwidth: u64| {
            let mut sled = Sled::new("s1", Default::default());
            sled.status = Some(crate::SledStatus {
                migration_bandwidth: bandwidth,
                ..Default::default()
            });
            sled
        };
        let vmm = |dirty: u64| {
            let mut vmm = Vmm::new("web-v1", Default::default());
            vmm.status = Some(crate::VmmStatus {
                dirty_bytes_per_second: dirty,
                ..Default::default()
            });
            vmm
        };
        let cases = [
            // No bandwidth reported: nothing to predict from.
            (None, 0, None),
            (Some(vmm(64 * MIB)), 0, None),
            (Some(vmm(64 * MIB)), TEN_GBIT, Some(true)),
            (None, TEN_GBIT, Some(true)),
            (Some(vmm(TEN_GBIT)), TEN_GBIT, Some(false)),
        ];
        for (source, bandwidth, converges) in cases {
            let sled = sled(bandwidth);
            let inputs = TransferProgress::before(&instance, source.as_ref(), Some(&sled));
            assert_eq!(inputs.memory_bytes, 4 * GIB);
            let got = match inputs.prediction() {
                Ok(None) => None,
                Ok(Some(_)) => Some(true),
                Err(_) => Some(false),
            };
            assert_eq!(got, converges, "{inputs:?}");
        }
    }

    #[test]
    fn a_migration_is_live_unless_it_says_restart() {
        let spec: MigrationSpec =
            serde_json::from_value(serde_json::json!({"instance": "web"})).unwrap();
        assert_eq!(spec.mode, MigrationMode::Live);
        let spec: MigrationSpec =
            serde_json::from_value(serde_json::json!({"instance": "web", "mode": "Restart"}))
                .unwrap();
        assert_eq!(spec.mode, MigrationMode::Restart);
    }

    #[test]
    fn a_small_guest_is_one_stop_and_copy_round() {
        let p = predict(256 * MIB, 10 * MIB, TEN_GBIT).unwrap();
        assert_eq!(p.rounds, 1);
        assert_eq!(p.total_bytes, 256 * MIB);
        assert_eq!(p.downtime, p.duration);
    }
}
