//! [`Transfers`]: the transfer tasks of one agent run, the sled's outgoing [`Link`] they share,
//! and how a target reaches its source ([`Endpoints`]: TLS and this sled's identity).
//!
//! # Guarantees
//! - At most one transfer task runs per Vmm, and none starts once the run is stopping.
//! - A task is no longer [`Transfers::is_running`] by the time the work it was given ends, so
//!   whatever it does then (the caller's `ended`) sees it gone.
//! - Every task is cancelled when the run stops ([`Transfers::shutdown`] waits for them,
//!   [`Transfers::abort`] does not) or when its Vmm's transfer is cancelled.
//!
//! # Not responsible for
//! What a transfer does (`source.rs`, `target.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::http::Endpoints;
use crate::hypervisor::VmmId;
use crate::migration::link::Link;

/// How long the target waits to connect to the source agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The transfer tasks of one agent run (see the module docs).
pub struct Transfers {
    stop: CancellationToken,
    running: Arc<Mutex<HashMap<VmmId, CancellationToken>>>,
    tasks: Mutex<JoinSet<()>>,
    link: Link,
    downtime_budget: Duration,
    endpoints: Endpoints,
}

impl Transfers {
    /// Transfers over a link of `bandwidth` bytes/s that plan for pauses of `downtime_budget`,
    /// reaching sources as `endpoints` says.
    pub fn new(bandwidth: u64, downtime_budget: Duration, endpoints: Endpoints) -> Transfers {
        Transfers {
            downtime_budget,
            stop: CancellationToken::new(),
            running: Arc::default(),
            tasks: Mutex::new(JoinSet::new()),
            link: Link::new(bandwidth),
            endpoints,
        }
    }

    /// The longest pause an outgoing transfer plans for.
    pub fn downtime_budget(&self) -> Duration {
        self.downtime_budget
    }

    /// The sled's outgoing link.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// How a target reaches its source.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Whether a transfer task works for `uid`.
    pub fn is_running(&self, uid: &VmmId) -> bool {
        self.running
            .lock()
            .expect("transfers lock")
            .contains_key(uid)
    }

    /// Cancels the transfer of `uid`, if one runs.
    pub fn cancel(&self, uid: &VmmId) {
        if let Some(token) = self.running.lock().expect("transfers lock").get(uid) {
            token.cancel();
        }
    }

    /// Cancels every transfer and waits for the tasks to end.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("transfers lock"));
        while tasks.join_next().await.is_some() {}
    }

    /// Cancels every transfer and aborts the tasks at once, for an agent run dropped without a
    /// clean stop (its machine lost power): nothing of it may run on.
    pub fn abort(&self) {
        self.stop.cancel();
        self.tasks.lock().expect("transfers lock").abort_all();
    }

    /// Runs `work` for `uid` as a task of the agent run, unless a transfer already runs for it
    /// or the run is stopping (then `false`). Once `work` ends, `uid` no longer runs, and then
    /// `ended` runs.
    pub fn spawn<F, Fut>(&self, uid: &VmmId, work: F, ended: impl FnOnce() + Send + 'static) -> bool
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let token = self.stop.child_token();
        {
            let mut running = self.running.lock().expect("transfers lock");
            if running.contains_key(uid) || self.stop.is_cancelled() {
                return false;
            }
            running.insert(uid.clone(), token.clone());
        }
        let future = work(token);
        let running = self.running.clone();
        let uid = uid.clone();
        let mut tasks = self.tasks.lock().expect("transfers lock");
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            future.await;
            running.lock().expect("transfers lock").remove(&uid);
            ended();
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn one_transfer_a_vmm_ended_once_it_no_longer_runs_and_none_once_stopping() {
        let transfers = Arc::new(Transfers::new(
            1,
            corral_crds::migration::DOWNTIME_BUDGET,
            Endpoints::InsecureHttp,
        ));
        let uid = VmmId::from("a");
        let (ended, was_running) = oneshot::channel();
        let ended = {
            let (transfers, uid) = (transfers.clone(), uid.clone());
            move || {
                let _ = ended.send(transfers.is_running(&uid));
            }
        };
        let started = transfers.spawn(&uid, |token| async move { token.cancelled().await }, ended);
        assert!(started);
        assert!(transfers.is_running(&uid));
        assert!(
            !transfers.spawn(&uid, |_| async {}, || {}),
            "a second transfer of the same Vmm"
        );

        transfers.cancel(&uid);
        assert_eq!(was_running.await, Ok(false));
        assert!(!transfers.is_running(&uid));

        transfers.shutdown().await;
        assert!(
            !transfers.spawn(&VmmId::from("b"), |_| async {}, || {}),
            "a transfer of a stopping run"
        );
    }
}
