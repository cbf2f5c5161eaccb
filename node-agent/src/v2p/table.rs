//! The `V2pTable` trait: what the node-agent asks of whatever holds a sled's V2P table (OPTE's
//! kernel table on a real sled: VPC → IP → sled, with the `locationGeneration` of each entry
//! and the VpcRoutes generation each VPC was programmed from).
//!
//! Besides the mappings, a VPC's table holds *forwarding entries* (`IP → sled`): the source
//! sled of a live migration forwards the packets that still reach it for the moved guest's IPs
//! to the target (docs/migration.md, "Make before break"; `v2p/forward.rs` decides them).
//!
//! The agent drives the table level-triggered, like the hypervisor: it reads what the table
//! holds ([`V2pTable::inspect`]), compares it with every VpcRoutes, and applies the changes
//! that make them equal ([`V2pTable::apply`]). The table is the machine's, not the agent's: it
//! outlives an agent restart and is empty after a new boot.
//!
//! # Guarantees a driver gives
//! - [`V2pTable::inspect`] shows what the machine's table holds now, including changes made
//!   behind the agent's back (that is how the agent finds a diverged table), and calls `read`
//!   exactly once.
//! - A change is on the machine when [`V2pTable::apply`] returns `Ok`: a generation is
//!   acknowledged only after the table holds it.
//! - Every change is applied whole or not at all, and applying the same change twice changes
//!   nothing more.
//!
//! # Not responsible for
//! Deciding what the table holds (the agent's `v2p/plan.rs`, from VpcRoutes), and forwarding
//! packets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where one IP is, as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V2pEntry {
    pub sled: String,
    pub location_generation: u64,
}

/// A forwarding entry: packets for the IP that reach this sled go on to `to_sled`, where the
/// guest moved by a live migration runs (or is about to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    /// The sled the packets go on to: the migration's target.
    pub to_sled: String,
    /// `namespace/name` of the instance that owns the IP.
    pub instance: String,
    /// `namespace/name` of the migration's source Vmm, which runs (ran) on this sled.
    pub source_vmm: String,
    /// The Migration's name.
    pub migration: String,
    /// The instance's `locationGeneration` while its guest ran here: a mapping of the IP with a
    /// higher one is the move the entry stands in for.
    pub location_generation: u64,
}

/// The table of one VPC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VpcTable {
    /// The VpcRoutes generation programmed last.
    pub generation: i64,
    pub entries: BTreeMap<String, V2pEntry>,
    /// Forwarding entries by IP; never compared with VpcRoutes (the programming of the
    /// mappings leaves them alone).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forwards: BTreeMap<String, Forward>,
}

/// Every VPC's table, by VPC name.
pub type VpcTables = BTreeMap<String, VpcTable>;

/// One change to the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TableChange {
    /// Sets the entries of `upserts`, drops those of `removals`, and records `generation`.
    Program {
        vpc: String,
        generation: i64,
        #[serde(default)]
        upserts: Vec<(String, V2pEntry)>,
        #[serde(default)]
        removals: Vec<String>,
    },
    /// Drops the VPC's table.
    Remove { vpc: String },
    /// Sets the forwarding entries of `forwards` (the VPC's generation and mappings stay).
    Forward {
        vpc: String,
        forwards: Vec<(String, Forward)>,
    },
    /// Drops each entry of `forwards` the table still holds as given (an entry replaced
    /// since stays).
    Unforward {
        vpc: String,
        forwards: Vec<(String, Forward)>,
    },
}

impl TableChange {
    /// What `vpcs` holds once the change is applied.
    pub fn apply_to(&self, vpcs: &mut VpcTables) {
        match self {
            TableChange::Program {
                vpc,
                generation,
                upserts,
                removals,
            } => {
                let table = vpcs.entry(vpc.clone()).or_default();
                table.generation = *generation;
                for ip in removals {
                    table.entries.remove(ip);
                }
                for (ip, entry) in upserts {
                    table.entries.insert(ip.clone(), entry.clone());
                }
            }
            TableChange::Remove { vpc } => {
                vpcs.remove(vpc);
            }
            TableChange::Forward { vpc, forwards } => {
                let table = vpcs.entry(vpc.clone()).or_default();
                for (ip, forward) in forwards {
                    table.forwards.insert(ip.clone(), forward.clone());
                }
            }
            TableChange::Unforward { vpc, forwards } => {
                if let Some(table) = vpcs.get_mut(vpc) {
                    for (ip, forward) in forwards {
                        if table.forwards.get(ip) == Some(forward) {
                            table.forwards.remove(ip);
                        }
                    }
                }
            }
        }
    }
}

/// The table could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the V2P table in {path}")]
pub struct V2pTableError {
    /// Where the table is (a file, a device).
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// A sled's V2P table (see the module docs). Object-safe: the agent holds an
/// `Arc<dyn V2pTable>`.
pub trait V2pTable: Send + Sync + 'static {
    /// Calls `read` once with every VPC's table as the machine holds it now.
    fn inspect(&self, read: &mut dyn FnMut(&VpcTables)) -> Result<(), V2pTableError>;

    /// Applies `change` to the machine's table; it is there when this returns `Ok`.
    fn apply(&self, change: TableChange) -> Result<(), V2pTableError>;
}

impl dyn V2pTable {
    /// What `read` makes of every VPC's table, as the machine holds it now.
    pub fn read<R>(&self, read: impl FnOnce(&VpcTables) -> R) -> Result<R, V2pTableError> {
        let mut read = Some(read);
        let mut result = None;
        self.inspect(&mut |vpcs| {
            if let Some(read) = read.take() {
                result = Some(read(vpcs));
            }
        })?;
        Ok(result.expect("a V2P table calls `read` once"))
    }
}
