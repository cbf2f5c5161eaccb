//! `SimV2pTable`: the simulated V2P table of a sled's machine, the stand-in for OPTE's kernel
//! table (VPC → IP → sled, with the `locationGeneration` and the VpcRoutes generation it was
//! programmed from).
//!
//! Like the kernel table it belongs to the machine, not to the agent: it lives in
//! `DATA_DIR/v2p.json` tagged with the machine's boot id, so it outlives an agent restart and is
//! empty on a new boot (a table written under another boot id is dropped when opened or when
//! the machine powers on again: [`SimV2pTable::boot`]).
//!
//! # Guarantees
//! - Every change is written to the file (a temporary file and a rename) before the call
//!   returns.
//! - Nothing in here decides what the table holds: the agent programs it from VpcRoutes
//!   (`v2p.rs`), and the fault API may corrupt it ([`SimV2pTable::corrupt`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::hypervisor::BootId;

/// The table file's name in the sled's data directory.
pub const V2P_FILE: &str = "v2p.json";

/// Where one IP is, as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V2pEntry {
    pub sled: String,
    pub location_generation: u64,
}

/// The table of one VPC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VpcTable {
    /// The VpcRoutes generation programmed last.
    pub generation: i64,
    pub entries: BTreeMap<String, V2pEntry>,
}

/// One row of the table, as `GET /v2p` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V2pRow {
    pub vpc: String,
    pub ip: String,
    pub sled: String,
    pub location_generation: u64,
}

/// The table file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the V2P table in {path}")]
pub struct V2pTableError {
    path: String,
    #[source]
    source: std::io::Error,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TableFile {
    boot_id: Option<BootId>,
    vpcs: BTreeMap<String, VpcTable>,
}

/// A sled's simulated V2P table (see the module docs).
#[derive(Debug)]
pub struct SimV2pTable {
    path: PathBuf,
    table: Mutex<TableFile>,
}

impl SimV2pTable {
    /// Opens the table in `data_dir` for the machine's boot `boot_id`: the table of another boot
    /// is dropped.
    pub fn open(data_dir: &Path, boot_id: BootId) -> Result<SimV2pTable, V2pTableError> {
        let path = data_dir.join(V2P_FILE);
        let error = |source| V2pTableError {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(error)?;
        // An unreadable table is an empty one: the agent programs it again from VpcRoutes.
        let table = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<TableFile>(&bytes).ok())
            .unwrap_or_default();
        let table = SimV2pTable {
            path,
            table: Mutex::new(table),
        };
        table.boot(boot_id)?;
        Ok(table)
    }

    /// The machine booted as `boot_id`: a table of an earlier boot is gone.
    pub fn boot(&self, boot_id: BootId) -> Result<(), V2pTableError> {
        let mut table = self.lock();
        if table.boot_id == Some(boot_id) {
            return Ok(());
        }
        *table = TableFile {
            boot_id: Some(boot_id),
            vpcs: BTreeMap::new(),
        };
        self.persist(&table)
    }

    /// The machine lost power: the table is empty until the next boot.
    pub fn power_off(&self) -> Result<(), V2pTableError> {
        let mut table = self.lock();
        *table = TableFile::default();
        self.persist(&table)
    }

    /// Every VPC's table.
    pub fn snapshot(&self) -> BTreeMap<String, VpcTable> {
        self.lock().vpcs.clone()
    }

    /// Every row, sorted by VPC and IP.
    pub fn rows(&self) -> Vec<V2pRow> {
        let table = self.lock();
        table
            .vpcs
            .iter()
            .flat_map(|(vpc, vpc_table)| {
                vpc_table.entries.iter().map(move |(ip, entry)| V2pRow {
                    vpc: vpc.clone(),
                    ip: ip.clone(),
                    sled: entry.sled.clone(),
                    location_generation: entry.location_generation,
                })
            })
            .collect()
    }

    /// Replaces the table of `vpc` (`None`: removes it).
    pub fn program(&self, vpc: &str, programmed: Option<VpcTable>) -> Result<(), V2pTableError> {
        let mut table = self.lock();
        match programmed {
            Some(vpc_table) => table.vpcs.insert(vpc.to_string(), vpc_table),
            None => table.vpcs.remove(vpc),
        };
        self.persist(&table)
    }

    /// Overwrites (or adds) the entry of `ip` in `vpc` behind the control plane's back (fault
    /// injection). The entry keeps its `locationGeneration` (0 for a new one).
    pub fn corrupt(&self, vpc: &str, ip: &str, sled: &str) -> Result<(), V2pTableError> {
        let mut table = self.lock();
        let vpc_table = table.vpcs.entry(vpc.to_string()).or_default();
        let location_generation = vpc_table
            .entries
            .get(ip)
            .map_or(0, |entry| entry.location_generation);
        vpc_table.entries.insert(
            ip.to_string(),
            V2pEntry {
                sled: sled.to_string(),
                location_generation,
            },
        );
        self.persist(&table)
    }

    fn lock(&self) -> MutexGuard<'_, TableFile> {
        self.table.lock().expect("v2p table lock")
    }

    fn persist(&self, table: &TableFile) -> Result<(), V2pTableError> {
        let error = |source| V2pTableError {
            path: self.path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec(table).map_err(|e| error(e.into()))?;
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, bytes).map_err(error)?;
        std::fs::rename(&temporary, &self.path).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(sled: &str) -> VpcTable {
        VpcTable {
            generation: 3,
            entries: BTreeMap::from([(
                "10.0.0.1".to_string(),
                V2pEntry {
                    sled: sled.into(),
                    location_generation: 2,
                },
            )]),
        }
    }

    #[test]
    fn the_table_outlives_the_agent_but_not_the_boot() {
        let dir = tempfile::tempdir().unwrap();
        let boot = BootId::random();
        let first = SimV2pTable::open(dir.path(), boot).unwrap();
        first.program("blue", Some(table("sled-a"))).unwrap();
        first.corrupt("blue", "10.0.0.1", "sled-x").unwrap();

        let reopened = SimV2pTable::open(dir.path(), boot).unwrap();
        assert_eq!(
            reopened.rows(),
            vec![V2pRow {
                vpc: "blue".into(),
                ip: "10.0.0.1".into(),
                sled: "sled-x".into(),
                location_generation: 2,
            }]
        );

        let rebooted = SimV2pTable::open(dir.path(), BootId::random()).unwrap();
        assert!(rebooted.rows().is_empty());

        reopened.power_off().unwrap();
        assert!(reopened.snapshot().is_empty());
    }
}
