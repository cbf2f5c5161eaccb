//! The one clock. Wall-clock timestamps written into objects (`lastTransitionTime`, Lease
//! `renewTime`, Event times) are derived from `tokio::time`, so a test that pauses and advances
//! Tokio's clock moves them too, and no code mixes two clocks.
//!
//! The wall clock is read once, when the process first asks; afterwards
//! `now() = that reading + (tokio::time::Instant::now() - the instant of that reading)`.

use std::sync::OnceLock;

use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

static ORIGIN: OnceLock<(Timestamp, Instant)> = OnceLock::new();

/// The current wall-clock time, advancing with Tokio's clock.
pub fn now() -> Timestamp {
    let (wall, instant) = *ORIGIN.get_or_init(|| (Timestamp::now(), Instant::now()));
    let elapsed = Instant::now().saturating_duration_since(instant);
    wall.checked_add(SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// How long ago `then` was, by [`now`] (zero if it is in the future).
pub fn since(then: Timestamp) -> std::time::Duration {
    let elapsed = now().duration_since(then);
    std::time::Duration::try_from(elapsed).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_tokio_time() {
        let before = now();
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        assert_eq!(now().duration_since(before), SignedDuration::from_secs(90));
        assert_eq!(since(before), std::time::Duration::from_secs(90));
    }
}
