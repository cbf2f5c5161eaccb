//! Crash points: the one fault hook of the controllers, for tests that crash a controller
//! process at a chosen step and check that a survivor finishes the work.
//!
//! Compiled in only with the crate's `fault-injection` feature, which only test builds enable
//! (`corral`'s dev-dependencies turn it on, so the `corral` binary that `cargo test` builds
//! has it and a release build does not). Without the feature, [`after_status_write`] is
//! empty and nothing can arm it. The contract, in one place:
//!
//! - A crash point is a controller's name and a phase of its objects' status, written
//!   `controller/Phase` (for example `migration/Transferring`); `corral controllers
//!   --crash-at migration/Transferring` arms it ([`arm`]) in a test build, and refuses to start
//!   in any other.
//! - Armed, the process aborts (`SIGABRT`, no cleanup, as a crash would) right after that
//!   controller's status write that moves an object *into* that phase, and nowhere else.

#[cfg(feature = "fault-injection")]
use std::sync::OnceLock;

/// The armed crash point, if any.
#[cfg(feature = "fault-injection")]
static CRASH_AT: OnceLock<(String, String)> = OnceLock::new();

/// A crash point, `controller/Phase`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashPoint {
    pub controller: String,
    pub phase: String,
}

impl std::str::FromStr for CrashPoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (controller, phase) = text
            .split_once('/')
            .filter(|(c, p)| !c.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("a crash point is CONTROLLER/PHASE, not {text:?}"))?;
        Ok(CrashPoint {
            controller: controller.to_string(),
            phase: phase.to_string(),
        })
    }
}

/// Arms `point` for the rest of the process's life (the first arming wins).
#[cfg(feature = "fault-injection")]
pub fn arm(point: CrashPoint) -> Result<(), String> {
    tracing::warn!(controller = %point.controller, phase = %point.phase, "crash point armed");
    let _ = CRASH_AT.set((point.controller, point.phase));
    Ok(())
}

/// Refuses: this build has no crash points.
#[cfg(not(feature = "fault-injection"))]
pub fn arm(point: CrashPoint) -> Result<(), String> {
    Err(format!(
        "crash point {}/{}: this build has no crash points (they exist only in test builds)",
        point.controller, point.phase
    ))
}

/// Called by the executor after each status write of `controller`, with the status before
/// and after it; `phase` names a status's phase.
#[cfg(feature = "fault-injection")]
pub(super) fn after_status_write<S>(
    controller: &str,
    before: Option<&S>,
    after: &S,
    phase: fn(&S) -> Option<String>,
) {
    let Some((armed, crash_phase)) = CRASH_AT.get() else {
        return;
    };
    if armed != controller || phase(after).as_deref() != Some(crash_phase.as_str()) {
        return;
    }
    if before.and_then(phase).as_deref() != Some(crash_phase.as_str()) {
        tracing::error!(%controller, phase = %crash_phase, "crash point: aborting after writing the phase");
        std::process::abort();
    }
}

/// Without crash points: nothing, and nothing is computed for it.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(super) fn after_status_write<S>(
    _controller: &str,
    _before: Option<&S>,
    _after: &S,
    _phase: fn(&S) -> Option<String>,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_point_is_a_controller_and_a_phase() {
        assert_eq!(
            "migration/Transferring".parse::<CrashPoint>(),
            Ok(CrashPoint {
                controller: "migration".into(),
                phase: "Transferring".into()
            })
        );
        assert!("migration".parse::<CrashPoint>().is_err());
        assert!("/Transferring".parse::<CrashPoint>().is_err());
    }
}
