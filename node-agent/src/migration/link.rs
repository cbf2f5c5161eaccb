//! A sled's outgoing migration [`Link`]: the modelled wire every outgoing transfer of the sled
//! shares.
//!
//! # Guarantees
//! - Sending `n` bytes reserves `n / bandwidth` of link time after the previous reservation
//!   ends, and waits until its own ends: concurrent transfers share the bandwidth, chunk by
//!   chunk, instead of each getting all of it.
//!
//! # Assumptions
//! - Bytes are modelled, not copied; all timing is `tokio::time` (paused-time tests work).

use std::sync::Mutex;

use corral_crds::migration::transfer_time;
use tokio::time::Instant;

/// A sled's outgoing migration link (see the module docs).
#[derive(Debug)]
pub struct Link {
    bandwidth: u64,
    free_at: Mutex<Instant>,
}

impl Link {
    pub fn new(bandwidth: u64) -> Link {
        Link {
            bandwidth,
            free_at: Mutex::new(Instant::now()),
        }
    }

    pub fn bandwidth(&self) -> u64 {
        self.bandwidth
    }

    /// Sends `bytes` (one chunk): returns when the link has carried them.
    pub async fn send(&self, bytes: u64) {
        let took = transfer_time(bytes, self.bandwidth);
        let ends = {
            let mut free_at = self.free_at.lock().expect("link lock");
            let ends = (*free_at).max(Instant::now()) + took;
            *free_at = ends;
            ends
        };
        tokio::time::sleep_until(ends).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use corral_crds::migration::MIB;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transfers_share_the_link() {
        let link = Arc::new(Link::new(100 * MIB));
        let start = Instant::now();
        let a = {
            let link = link.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    link.send(10 * MIB).await;
                }
                Instant::now()
            })
        };
        let b = {
            let link = link.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    link.send(10 * MIB).await;
                }
                Instant::now()
            })
        };
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        // 100 MiB over 100 MiB/s: both end near one second, neither at half a second.
        for end in [a, b] {
            let took = end - start;
            assert!(took >= Duration::from_millis(900), "{took:?}");
            assert!(took <= Duration::from_millis(1010), "{took:?}");
        }
    }
}
