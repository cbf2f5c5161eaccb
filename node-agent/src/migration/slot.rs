//! Where the migration API finds the agent run it serves: the HTTP server outlives agent
//! restarts, the [`Context`] does not.
//!
//! # Guarantees
//! - While a run is up its context is in the slot; once the run ends, however it ends (a clean
//!   stop, an error, a power-off that drops it), the slot is empty and the run's transfers are
//!   aborted ([`RunGuard`]).

use std::sync::{Arc, Mutex};

use crate::context::Context;

/// Where the agent run that serves `/migrations` is (set while it runs). Clones share the slot.
#[derive(Clone, Default)]
pub struct AgentSlot(Arc<Mutex<Option<Arc<Context>>>>);

impl AgentSlot {
    pub fn set(&self, ctx: Option<Arc<Context>>) {
        *self.0.lock().expect("agent slot lock") = ctx;
    }

    pub(crate) fn get(&self) -> Option<Arc<Context>> {
        self.0.lock().expect("agent slot lock").clone()
    }
}

/// Clears the slot and aborts the transfers of an agent run when it is dropped, however it
/// ends (a clean stop has already waited for them).
pub struct RunGuard {
    pub slot: Option<AgentSlot>,
    pub ctx: Arc<Context>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.set(None);
        }
        self.ctx.transfers.abort();
    }
}
