//! How every watch of a Corral component retries after an error: quickly.
//!
//! kube's default backoff grows to 30 s and forgets its growth only after 120 s without an
//! error. A watch that lives through an API server restart meets several errors in a row (the
//! stream breaks, connections are refused while the server starts, then a 410 asks for a
//! re-list), so it waited 20–70 s before it saw the world again — longer than a sled-health
//! grace, and long enough for a controller to sleep through a fence. [`WatchBackoff`] starts at
//! 100 ms, doubles up to 2 s with jitter (so a rack's watchers do not retry in step), and starts
//! over at the first event that arrives. 2 s: a watch is back at most about 2 s after its API
//! server, and while the server is away a rack of 100 sleds (a few watches each) tries fewer
//! than 200 connections a second — each refused at once.

use std::time::Duration;

use kube::runtime::utils::Backoff;
use rand::Rng;

/// The first wait after an error.
pub const FIRST: Duration = Duration::from_millis(100);
/// The longest wait.
pub const LONGEST: Duration = Duration::from_secs(2);

/// See the module docs; use with `WatchStreamExt::backoff`.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(LONGEST);
        // Up to a quarter less, so that watchers broken together do not retry together.
        let jitter = rand::rng().random_range(0.75..=1.0);
        Some(wait.mul_f64(jitter))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_up_to_the_longest_wait_and_starts_over_on_reset() {
        let mut backoff = WatchBackoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next().unwrap()).collect();
        for (wait, ceiling) in waits.iter().zip([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]) {
            let ceiling = Duration::from_secs_f64(ceiling);
            assert!(
                *wait <= ceiling && *wait >= ceiling.mul_f64(0.75),
                "{waits:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next().unwrap() <= FIRST);
    }
}
