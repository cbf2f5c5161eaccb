//! The [`Ledger`]: what one agent run knows in memory about the sled's Vmms — the journal's
//! records (mirrored), which VMMs it has seen on the machine, and the last status it wrote for
//! each Vmm.
//!
//! # Definitions
//! - The *freshest* status of a Vmm is the one its own last write returned if that write's
//!   resourceVersion is newer than the watch cache's, the cache's otherwise
//!   ([`Ledger::freshest`]).
//!
//! # Invariants
//! - `records` equals the journal: the context writes the journal first, then the ledger, under
//!   one hold of the ledger's lock (`Context::record`, `Context::forget`).
//!
//! # Assumptions
//! - resourceVersions are one increasing integer (Corral's store revision; see
//!   `docs/rack.md`, "Stale caches"), so the fresher of two is the larger.
//!
//! # Not responsible for
//! Writing anything: the journal is written through the context, the API by `status.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use corral_crds::{Resources, Vmm, VmmStatus};
use kube::ResourceExt;

use crate::hypervisor::VmmId;
use crate::journal::VmmRecord;

/// The last status the agent wrote for a Vmm, with the resourceVersion the write returned.
#[derive(Clone, Debug)]
pub struct Written {
    pub resource_version: u64,
    pub status: VmmStatus,
}

/// What the agent knows in memory (see the module docs).
#[derive(Debug, Default)]
pub struct Ledger {
    pub records: HashMap<VmmId, VmmRecord>,
    pub seen: HashSet<VmmId>,
    pub written: HashMap<VmmId, Written>,
}

impl Ledger {
    /// The resources held by accepted Vmms that are not destroyed.
    pub fn allocated(&self) -> Resources {
        self.records
            .values()
            .filter(|r| r.holds)
            .fold(Resources::default(), |sum, r| sum + r.resources)
    }

    /// How many Vmms hold resources.
    pub fn holding(&self) -> u32 {
        self.records.values().filter(|r| r.holds).count() as u32
    }

    /// The status the API holds for `vmm` (whose uid is `uid`), as far as the agent knows, and
    /// the resourceVersion to write on.
    pub fn freshest<'a>(&'a self, vmm: &'a Vmm, uid: &VmmId) -> (&'a VmmStatus, String) {
        static EMPTY: OnceLock<VmmStatus> = OnceLock::new();
        let cached_version = vmm.resource_version().unwrap_or_default();
        let cached = vmm
            .status
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(VmmStatus::default));
        match self.written.get(uid) {
            Some(written)
                if cached_version
                    .parse::<u64>()
                    .is_ok_and(|cached| written.resource_version > cached) =>
            {
                (&written.status, written.resource_version.to_string())
            }
            _ => (cached, cached_version),
        }
    }
}
