//! Bounded waits: poll a condition until it holds, for at most a bound, and say what was
//! awaited (and what was still wrong) when it never held.
//!
//! A probe answers `Ok(value)` when the condition holds, [`Unmet::Yet`] (or any `String`)
//! with what is still wrong, or [`Unmet::Never`] when waiting longer cannot help (a process
//! the condition needs has exited), which ends the wait at once.
//!
//! # Guarantees
//! - The probe runs at least once, and again every poll interval until the bound has passed;
//!   an async probe that hangs is abandoned after [`PROBE_BOUND`] and counts as unmet.
//! - [`wait_for`] runs on `tokio::time`, so a test with paused time advances through it.
//! - An error names what was awaited, the bound, and the probe's last complaint.
//!
//! [`wait_for_blocking`] is the same wait for synchronous tests (a plain `#[test]` that runs
//! `kubectl`), on the thread's own clock; [`block_on`] lets such a test await the harness's
//! async operations.

use std::future::Future;
use std::time::Duration;

/// How often [`wait_for`] asks.
pub const POLL: Duration = Duration::from_millis(250);
/// How often [`wait_for_blocking`] asks: a synchronous test's conditions are local and cheap
/// (a file, a child's status, one request).
pub const BLOCKING_POLL: Duration = Duration::from_millis(50);
/// How long one async probe may take before it counts as unmet.
pub const PROBE_BOUND: Duration = Duration::from_secs(10);

/// Why a probe's condition does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmet {
    /// Not yet: what is still wrong.
    Yet(String),
    /// Never will: waiting longer cannot help.
    Never(String),
}

impl From<String> for Unmet {
    fn from(complaint: String) -> Unmet {
        Unmet::Yet(complaint)
    }
}

impl From<&str> for Unmet {
    fn from(complaint: &str) -> Unmet {
        Unmet::Yet(complaint.to_string())
    }
}

/// Why a wait ended without its condition.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {bound:?} waiting for {what}: {last}")]
    TimedOut {
        what: String,
        bound: Duration,
        last: String,
    },
    #[error("gave up waiting for {what}: {reason}")]
    Hopeless { what: String, reason: String },
}

/// Polls `probe` every [`POLL`] until it answers `Ok`, for at most `bound`; returns the
/// answer and how long the wait took.
pub async fn wait_for<T, E: Into<Unmet>>(
    what: &str,
    bound: Duration,
    probe: impl AsyncFnMut() -> Result<T, E>,
) -> Result<(T, Duration), WaitError> {
    wait_for_polling(what, bound, POLL, probe).await
}

/// [`wait_for`], asking every `poll`.
pub async fn wait_for_polling<T, E: Into<Unmet>>(
    what: &str,
    bound: Duration,
    poll: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> Result<(T, Duration), WaitError> {
    let started = tokio::time::Instant::now();
    loop {
        let unmet = match tokio::time::timeout(PROBE_BOUND, probe()).await {
            Ok(Ok(answer)) => return Ok((answer, started.elapsed())),
            Ok(Err(unmet)) => unmet.into(),
            Err(_) => Unmet::Yet(format!("a probe took longer than {PROBE_BOUND:?}")),
        };
        if let Some(error) = give_up(what, bound, started.elapsed(), unmet) {
            return Err(error);
        }
        tokio::time::sleep(poll).await;
    }
}

/// [`wait_for`] for synchronous code, on the thread's own clock.
pub fn wait_for_blocking<T, E: Into<Unmet>>(
    what: &str,
    bound: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
) -> Result<(T, Duration), WaitError> {
    let started = std::time::Instant::now();
    loop {
        let unmet = match probe() {
            Ok(answer) => return Ok((answer, started.elapsed())),
            Err(unmet) => unmet.into(),
        };
        if let Some(error) = give_up(what, bound, started.elapsed(), unmet) {
            return Err(error);
        }
        std::thread::sleep(BLOCKING_POLL);
    }
}

/// The error that ends a wait after `unmet` at `elapsed`, if it ends.
fn give_up(what: &str, bound: Duration, elapsed: Duration, unmet: Unmet) -> Option<WaitError> {
    match unmet {
        Unmet::Never(reason) => Some(WaitError::Hopeless {
            what: what.to_string(),
            reason,
        }),
        Unmet::Yet(last) if elapsed >= bound => Some(WaitError::TimedOut {
            what: what.to_string(),
            bound,
            last,
        }),
        Unmet::Yet(_) => None,
    }
}

/// Runs `future` to completion on a runtime of its own and returns its output: how a
/// synchronous test (a plain `#[test]`) awaits the harness.
///
/// # Panics
/// When called inside a runtime (async code awaits instead).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a runtime for block_on")
        .block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_returns_the_answer_once_the_condition_holds() {
        let mut asked = 0;
        let (answer, took) = wait_for("the third ask", Duration::from_secs(10), async || {
            asked += 1;
            if asked == 3 {
                Ok(asked)
            } else {
                Err(format!("asked {asked} times"))
            }
        })
        .await
        .unwrap();
        assert_eq!(answer, 3);
        assert_eq!(took, POLL * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_says_what_was_awaited_and_what_was_still_wrong() {
        let error = wait_for("a miracle", Duration::from_secs(2), async || {
            Err::<(), _>("no miracle yet")
        })
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "timed out after 2s waiting for a miracle: no miracle yet"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hopeless_condition_ends_the_wait_at_once() {
        let started = tokio::time::Instant::now();
        let error = wait_for("a dead process", Duration::from_secs(60), async || {
            Err::<(), _>(Unmet::Never("it exited".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "gave up waiting for a dead process: it exited"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_probe_counts_as_unmet() {
        let error = wait_for("an answer", Duration::from_secs(1), async || {
            std::future::pending::<Result<(), String>>().await
        })
        .await
        .unwrap_err();
        assert!(
            error.to_string().ends_with("a probe took longer than 10s"),
            "{error}"
        );
    }

    #[test]
    fn the_blocking_wait_and_block_on_give_the_same_answers() {
        let mut asked = 0;
        let (answer, _) = wait_for_blocking("the second ask", Duration::from_secs(10), || {
            asked += 1;
            if asked == 2 {
                Ok(asked)
            } else {
                Err("not yet")
            }
        })
        .unwrap();
        assert_eq!(answer, 2);
        let error = block_on(wait_for("nothing", Duration::ZERO, async || {
            Err::<(), _>("no")
        }))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "timed out after 0ns waiting for nothing: no"
        );
    }
}
