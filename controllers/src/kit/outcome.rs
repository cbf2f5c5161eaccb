//! What the controllers did, for operators: a typed [`Outcome`] for every reconcile, and a
//! [`Board`] that keeps, per controller, the counts, the last outcome, the last failure, the
//! reconciles in flight and the work queued (served as `/debug/controllers` by
//! `corral controllers` and `corral up`).
//!
//! # Definitions
//! - An object is *queued* for a controller if (and only if) a watch event mapped to it after
//!   its last reconcile started, and it still exists in the controller's primary cache (kube
//!   runtime drops the triggers of deleted objects). Scheduled requeues are not queued work.
//!
//! # Caveats
//! - Counts are since the process started leading; they are for reading, not for decisions.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// Why a reconcile planned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Wait {
    /// A cache the controller plans from has not listed yet.
    CachesListing,
    /// The cached object is older than the controller's own last write to it.
    OwnWriteNotSeen,
    /// A live read found an object the cache does not show yet.
    CacheBehind,
    /// Nothing is left to do for the object (a final phase).
    Settled,
}

/// What one reconcile came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "result"
)]
pub enum Outcome {
    /// Nothing was planned.
    Waited { why: Wait },
    /// A plan was executed to its end.
    Applied {
        /// Steps and other work done, by kind (`WriteStatus`, `CreateVmm`, `LiveRead`, ...).
        did: BTreeMap<&'static str, u64>,
        /// The object's phase (or state) after the plan, if its kind has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
        /// When it is looked at again without a change; `None`: on the next change.
        #[serde(skip_serializing_if = "Option::is_none")]
        requeue_ms: Option<u64>,
    },
    /// A step failed; the error policy decides when to try again.
    Failed { error: String },
}

impl Outcome {
    /// An applied plan's outcome from its counts.
    pub fn applied(
        did: BTreeMap<&'static str, u64>,
        phase: Option<String>,
        requeue: Option<Duration>,
    ) -> Outcome {
        Outcome::Applied {
            did,
            phase,
            requeue_ms: requeue.map(|d| d.as_millis() as u64),
        }
    }

    /// The outcome of a failure, with the whole chain of causes.
    pub fn failed(error: &dyn std::error::Error) -> Outcome {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Outcome::Failed { error: text }
    }
}

/// One reconcile, as the board keeps it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The object (`namespace/name`), or what an activation covered (`vpc web`, `all`).
    pub object: String,
    pub at: jiff::Timestamp,
    pub outcome: Outcome,
}

/// One controller's report.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub reconciles: u64,
    pub applied: u64,
    pub waited: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub queued: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Record>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Record>,
}

/// Whether a queued key still names an object (see "queued" in the module docs).
type Exists = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Default)]
struct Entry {
    report: Report,
    queued: HashSet<String>,
    exists: Option<Exists>,
}

/// Every controller's report.
#[derive(Clone, Default)]
pub struct Board {
    entries: Arc<Mutex<BTreeMap<&'static str, Entry>>>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").finish_non_exhaustive()
    }
}

impl Board {
    fn with<T>(&self, controller: &'static str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = self.entries.lock().expect("board lock");
        f(entries.entry(controller).or_default())
    }

    /// Registers how to tell whether a queued key of `controller` still names an object.
    pub fn track_queue(&self, controller: &'static str, exists: Exists) {
        self.with(controller, |entry| entry.exists = Some(exists));
    }

    /// A watch event mapped to `key`.
    pub fn queued(&self, controller: &'static str, key: String) {
        self.with(controller, |entry| {
            entry.queued.insert(key);
            queue_depth(controller, entry.queued.len());
        });
    }

    /// A reconcile of `key` started.
    pub fn started(&self, controller: &'static str, key: &str) {
        self.with(controller, |entry| {
            entry.queued.remove(key);
            entry.report.in_flight += 1;
            queue_depth(controller, entry.queued.len());
        });
    }

    /// A reconcile of `object` ended with `outcome` after `took`.
    pub fn finished(
        &self,
        controller: &'static str,
        object: String,
        outcome: Outcome,
        took: std::time::Duration,
    ) {
        measure(controller, &outcome, took);
        self.with(controller, |entry| {
            entry.report.in_flight = entry.report.in_flight.saturating_sub(1);
            record(&mut entry.report, object, outcome);
        });
    }

    /// An activation (not a reconcile of one object: a V2P pass, a reaper scan) ended after
    /// `took`.
    pub fn activated(
        &self,
        controller: &'static str,
        object: String,
        outcome: Outcome,
        took: std::time::Duration,
    ) {
        measure(controller, &outcome, took);
        self.with(controller, |entry| {
            record(&mut entry.report, object, outcome)
        });
    }

    /// Work waiting outside kube-runtime's queue (the V2P controller's dirty VPCs).
    pub fn set_queued(&self, controller: &'static str, queued: u64) {
        queue_depth(controller, queued as usize);
        self.with(controller, |entry| {
            entry.queued.clear();
            entry.report.queued = queued;
        });
    }

    /// Every controller's report now.
    pub fn snapshot(&self) -> BTreeMap<&'static str, Report> {
        let mut entries = self.entries.lock().expect("board lock");
        entries
            .iter_mut()
            .map(|(name, entry)| {
                if let Some(exists) = &entry.exists {
                    entry.queued.retain(|key| exists(key));
                    entry.report.queued = entry.queued.len() as u64;
                }
                (*name, entry.report.clone())
            })
            .collect()
    }
}

/// The metric names (docs/controllers.md, "Metrics").
pub const RECONCILES: &str = "corral_controller_reconciles_total";
pub const RECONCILE_DURATION: &str = "corral_controller_reconcile_duration_seconds";
pub const QUEUE_DEPTH: &str = "corral_controller_queue_depth";
pub const LEADER: &str = "corral_controllers_leader";

/// Counts and times one reconcile (or activation) by its result: `applied`, `waited`,
/// `failed`.
fn measure(controller: &'static str, outcome: &Outcome, took: std::time::Duration) {
    let result = match outcome {
        Outcome::Applied { .. } => "applied",
        Outcome::Waited { .. } => "waited",
        Outcome::Failed { .. } => "failed",
    };
    metrics::counter!(RECONCILES, "controller" => controller, "result" => result).increment(1);
    metrics::histogram!(RECONCILE_DURATION, "controller" => controller).record(took.as_secs_f64());
}

/// Describes the controllers' series (their `# HELP` lines).
pub fn describe_metrics() {
    metrics::describe_counter!(
        RECONCILES,
        "Reconciles (and activations) ended, by controller and result: applied, waited, failed."
    );
    metrics::describe_histogram!(
        RECONCILE_DURATION,
        metrics::Unit::Seconds,
        "How long reconciles took, by controller."
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Objects waiting for a reconcile, by controller."
    );
    metrics::describe_gauge!(
        LEADER,
        "1 while this process holds the controllers' leader Lease, else 0."
    );
}

fn queue_depth(controller: &'static str, depth: usize) {
    metrics::gauge!(QUEUE_DEPTH, "controller" => controller).set(depth as f64);
}

fn record(report: &mut Report, object: String, outcome: Outcome) {
    report.reconciles += 1;
    match &outcome {
        Outcome::Waited { .. } => report.waited += 1,
        Outcome::Applied { .. } => report.applied += 1,
        Outcome::Failed { .. } => report.failed += 1,
    }
    let record = Record {
        object,
        at: corral_client::clock::now(),
        outcome,
    };
    if matches!(record.outcome, Outcome::Failed { .. }) {
        report.last_failure = Some(record.clone());
    }
    report.last = Some(record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_counts_outcomes_and_keeps_the_last_failure() {
        let board = Board::default();
        board.started("drain", "d1");
        board.finished(
            "drain",
            "d1".into(),
            Outcome::failed(&std::io::Error::other("refused")),
            std::time::Duration::ZERO,
        );
        board.started("drain", "d1");
        board.finished(
            "drain",
            "d1".into(),
            Outcome::Waited {
                why: Wait::CachesListing,
            },
            std::time::Duration::ZERO,
        );
        let report = &board.snapshot()["drain"];
        assert_eq!(
            (
                report.reconciles,
                report.failed,
                report.waited,
                report.in_flight
            ),
            (2, 1, 1, 0)
        );
        assert_eq!(
            report.last_failure.as_ref().map(|r| &r.outcome),
            Some(&Outcome::Failed {
                error: "refused".into()
            })
        );
        assert!(matches!(
            report.last.as_ref().map(|r| &r.outcome),
            Some(Outcome::Waited { .. })
        ));
    }

    #[test]
    fn queued_work_is_what_was_triggered_and_not_yet_started_of_objects_that_exist() {
        let board = Board::default();
        board.track_queue("instance", Arc::new(|key: &str| key != "default/gone"));
        board.queued("instance", "default/a".into());
        board.queued("instance", "default/a".into());
        board.queued("instance", "default/b".into());
        board.queued("instance", "default/gone".into());
        assert_eq!(board.snapshot()["instance"].queued, 2);
        board.started("instance", "default/a");
        assert_eq!(board.snapshot()["instance"].queued, 1);
    }
}
