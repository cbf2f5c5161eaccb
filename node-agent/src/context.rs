//! The [`Context`] of one agent run: what every part of the agent (the reconcile, the scan,
//! the V2P task, the transfers) shares, grouped by what it is about.
//!
//! - [`LocalSled`]: the sled the agent runs on — its name, the epoch of this run, what it
//!   offers, the writer of its status, and the alarm that ends the run when it was fenced.
//! - [`ApiHandles`]: the API as this run reaches it — a client, the Events recorder, the watch
//!   cache of the sled's Vmms, and the queue of reconciles.
//! - the machine (`hypervisor`), the journal with its in-memory mirror (`ledger`), the
//!   intervals, and the live-migration transfers.
//!
//! # Invariants
//! - The ledger mirrors the journal: [`Context::record`] and [`Context::forget`] write the
//!   journal first, then the ledger, then the allocation the Sled reports, all under the
//!   caller's hold of the ledger lock.
//!
//! # Not responsible for
//! Deciding or doing anything else: the modules that hold a `Context` do.

use std::sync::Arc;

use corral_client::events::Recorder;
use corral_crds::{Resources, Vmm};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Mutex, mpsc};

use crate::config::Intervals;
use crate::fence::FenceAlarm;
use crate::hypervisor::{Hypervisor, VmmId};
use crate::journal::{Journal, JournalError, VmmRecord};
use crate::ledger::Ledger;
use crate::migration::transfers::Transfers;
use crate::sled::SledReporter;
use crate::v2p::table::V2pTable;

/// Everything one agent run shares (see the module docs).
pub struct Context {
    pub sled: LocalSled,
    pub api: ApiHandles,
    pub intervals: Intervals,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub journal: Journal,
    pub ledger: Mutex<Ledger>,
    /// The live-migration transfers of this agent run.
    pub transfers: Transfers,
    /// The sled's V2P table: a migration's source installs its forwarding entries there.
    pub v2p: Arc<dyn V2pTable>,
}

/// The sled the agent runs on, as this run knows it.
pub struct LocalSled {
    pub name: String,
    /// The sled epoch of this run (journaled and reported before anything is accepted).
    pub epoch: u64,
    /// What the sled offers to VMMs.
    pub capacity: Resources,
    /// Keeps `Sled.status` equal to what the agent knows.
    pub reporter: SledReporter,
    /// Raised when the run learns the sled was fenced: it writes nothing more (`fence.rs`).
    pub fence: Arc<FenceAlarm>,
}

/// The API as this agent run reaches it.
pub struct ApiHandles {
    pub client: kube::Client,
    /// Events about the Sled and its Vmms.
    pub recorder: Recorder,
    /// The watch cache of the sled's Vmms (across namespaces).
    pub vmms: Store<Vmm>,
    /// Requests for a reconcile, merged into the applier's queue.
    pub triggers: mpsc::Sender<ObjectRef<Vmm>>,
}

impl Context {
    /// Asks for a reconcile of the Vmm `record` belongs to. A full queue drops the request:
    /// the next scan finds the same discrepancy.
    pub fn trigger(&self, record: &VmmRecord) {
        let target = ObjectRef::new(&record.name).within(&record.namespace);
        let _ = self.api.triggers.try_send(target);
    }

    /// Records `record` in the journal and the ledger, and tells the Sled reporter.
    pub async fn record(&self, ledger: &mut Ledger, record: VmmRecord) -> Result<(), JournalError> {
        self.journal.vmm_put(&record).await?;
        ledger.records.insert(record.uid.clone(), record);
        self.report_allocation(ledger);
        Ok(())
    }

    /// Forgets the record of `uid` (journal and memory).
    pub async fn forget(&self, ledger: &mut Ledger, uid: &VmmId) -> Result<(), JournalError> {
        self.journal.vmm_delete(uid).await?;
        ledger.records.remove(uid);
        ledger.seen.remove(uid);
        ledger.written.remove(uid);
        self.report_allocation(ledger);
        Ok(())
    }

    fn report_allocation(&self, ledger: &Ledger) {
        let (allocated, vmms) = (ledger.allocated(), ledger.holding());
        self.sled.reporter.update(|report| {
            report.allocated = allocated;
            report.vmms = vmms;
        });
    }
}
