//! `SimV2pTable`: the simulated V2P table of a sled's machine, the stand-in for OPTE's kernel
//! table (VPC → IP → sled, with the `locationGeneration` and the VpcRoutes generation it was
//! programmed from).
//!
//! Like the kernel table it belongs to the machine, not to the agent: it lives in
//! the sled's data directory tagged with the machine's boot id, so it outlives an agent restart
//! (in-process or of the whole process) and is empty on a new boot (a table written under
//! another boot id is dropped when opened or when the machine powers on again:
//! [`SimV2pTable::boot`]).
//!
//! # Guarantees
//! - Every change is on disk before the call returns: appended to `v2p.log` as one JSON line
//!   (a move of one instance costs one short line, not the whole table of a large VPC), folded
//!   into the `v2p.json` snapshot (a temporary file and a rename) every `COMPACT_AFTER`
//!   changes. A torn last line is ignored on reading.
//! - Nothing in here decides what the table holds: the agent programs it from VpcRoutes
//!   (`v2p/`, through the [`V2pTable`] trait), and the fault API may corrupt it
//!   ([`SimV2pTable::corrupt`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::hypervisor::BootId;
use crate::v2p::table::{TableChange, V2pEntry, V2pTable, V2pTableError, VpcTables};

/// The table's snapshot file in the sled's data directory.
pub const V2P_FILE: &str = "v2p.json";
/// The changes since the snapshot, one JSON line each.
pub const V2P_LOG: &str = "v2p.log";

/// One row of the table, as `GET /v2p` shows it: the mapping of an IP and its forwarding
/// entry, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V2pRow {
    pub vpc: String,
    pub ip: String,
    /// The sled the IP maps to; empty for an IP with a forwarding entry and no mapping.
    pub sled: String,
    pub location_generation: u64,
    /// The sled a packet for the IP that reaches this one goes on to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_to: Option<String>,
}

/// The log is folded into the snapshot once it holds this many changes.
const COMPACT_AFTER: usize = 1024;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TableFile {
    boot_id: Option<BootId>,
    vpcs: VpcTables,
}

#[derive(Debug)]
struct State {
    file: TableFile,
    /// Changes appended to the log since the last snapshot.
    logged: usize,
}

/// A sled's simulated V2P table (see the module docs).
#[derive(Debug)]
pub struct SimV2pTable {
    path: PathBuf,
    log_path: PathBuf,
    state: Mutex<State>,
}

impl SimV2pTable {
    /// Opens the table in `data_dir` for the machine's boot `boot_id`: the table of another boot
    /// is dropped.
    pub fn open(data_dir: &Path, boot_id: BootId) -> Result<SimV2pTable, V2pTableError> {
        let path = data_dir.join(V2P_FILE);
        let log_path = data_dir.join(V2P_LOG);
        std::fs::create_dir_all(data_dir).map_err(|source| V2pTableError {
            path: data_dir.display().to_string(),
            source,
        })?;
        // An unreadable table is an empty one: the agent programs it again from VpcRoutes.
        let mut file = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<TableFile>(&bytes).ok())
            .unwrap_or_default();
        let mut logged = 0;
        if let Ok(log) = std::fs::read_to_string(&log_path) {
            // A torn last line (a process killed mid-write) is a change that never happened.
            for change in log
                .lines()
                .map_while(|line| serde_json::from_str::<TableChange>(line).ok())
            {
                change.apply_to(&mut file.vpcs);
                logged += 1;
            }
        }
        let table = SimV2pTable {
            path,
            log_path,
            state: Mutex::new(State { file, logged }),
        };
        table.boot(boot_id)?;
        Ok(table)
    }

    /// The machine booted as `boot_id`: a table of an earlier boot is gone.
    pub fn boot(&self, boot_id: BootId) -> Result<(), V2pTableError> {
        let mut state = self.lock();
        if state.file.boot_id == Some(boot_id) {
            return Ok(());
        }
        state.file = TableFile {
            boot_id: Some(boot_id),
            vpcs: BTreeMap::new(),
        };
        self.snapshot_to_disk(&mut state)
    }

    /// The machine lost power: the table is empty until the next boot.
    pub fn power_off(&self) -> Result<(), V2pTableError> {
        let mut state = self.lock();
        state.file = TableFile::default();
        self.snapshot_to_disk(&mut state)
    }

    /// Runs `read` over every VPC's table (under the table's lock: keep it short).
    pub fn read<R>(&self, read: impl FnOnce(&VpcTables) -> R) -> R {
        read(&self.lock().file.vpcs)
    }

    /// Every VPC's table (a copy).
    pub fn snapshot(&self) -> VpcTables {
        self.read(Clone::clone)
    }

    /// Every row (each IP with a mapping or a forwarding entry), sorted by VPC and IP.
    pub fn rows(&self) -> Vec<V2pRow> {
        self.read(|vpcs| {
            vpcs.iter()
                .flat_map(|(vpc, vpc_table)| {
                    let ips: std::collections::BTreeSet<&String> = vpc_table
                        .entries
                        .keys()
                        .chain(vpc_table.forwards.keys())
                        .collect();
                    ips.into_iter().map(move |ip| {
                        let entry = vpc_table.entries.get(ip);
                        V2pRow {
                            vpc: vpc.clone(),
                            ip: ip.clone(),
                            sled: entry.map(|e| e.sled.clone()).unwrap_or_default(),
                            location_generation: entry.map_or(0, |e| e.location_generation),
                            forward_to: vpc_table.forwards.get(ip).map(|f| f.to_sled.clone()),
                        }
                    })
                })
                .collect()
        })
    }

    /// Applies `change` and records it on disk before returning.
    pub fn change(&self, change: TableChange) -> Result<(), V2pTableError> {
        let mut state = self.lock();
        change.apply_to(&mut state.file.vpcs);
        if state.logged >= COMPACT_AFTER {
            return self.snapshot_to_disk(&mut state);
        }
        let mut line = serde_json::to_vec(&change).expect("a table change serializes");
        line.push(b'\n');
        let error = |source| V2pTableError {
            path: self.log_path.display().to_string(),
            source,
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(error)?;
        log.write_all(&line).map_err(error)?;
        state.logged += 1;
        Ok(())
    }

    /// Overwrites (or adds) the entry of `ip` in `vpc` behind the control plane's back (fault
    /// injection). The entry keeps its `locationGeneration` (0 for a new one) and the VPC its
    /// generation.
    pub fn corrupt(&self, vpc: &str, ip: &str, sled: &str) -> Result<(), V2pTableError> {
        let (generation, location_generation) = self.read(|vpcs| {
            let table = vpcs.get(vpc);
            (
                table.map_or(0, |t| t.generation),
                table
                    .and_then(|t| t.entries.get(ip))
                    .map_or(0, |entry| entry.location_generation),
            )
        });
        self.change(TableChange::Program {
            vpc: vpc.to_string(),
            generation,
            upserts: vec![(
                ip.to_string(),
                V2pEntry {
                    sled: sled.to_string(),
                    location_generation,
                },
            )],
            removals: Vec::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("v2p table lock")
    }

    /// Writes the whole table (a temporary file and a rename) and empties the log.
    fn snapshot_to_disk(&self, state: &mut State) -> Result<(), V2pTableError> {
        let error = |source| V2pTableError {
            path: self.path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec(&state.file).map_err(|e| error(e.into()))?;
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, bytes).map_err(error)?;
        std::fs::rename(&temporary, &self.path).map_err(error)?;
        match std::fs::remove_file(&self.log_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(e)),
        }
        state.logged = 0;
        Ok(())
    }
}

impl V2pTable for SimV2pTable {
    fn inspect(&self, read: &mut dyn FnMut(&VpcTables)) -> Result<(), V2pTableError> {
        SimV2pTable::read(self, read);
        Ok(())
    }

    fn apply(&self, change: TableChange) -> Result<(), V2pTableError> {
        self.change(change)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::v2p::table::VpcTable;

    fn table_of(sled: &str) -> VpcTable {
        VpcTable {
            generation: 3,
            entries: BTreeMap::from([(
                "10.0.0.1".to_string(),
                V2pEntry {
                    sled: sled.into(),
                    location_generation: 2,
                },
            )]),
            forwards: BTreeMap::new(),
        }
    }

    #[test]
    fn the_table_outlives_the_agent_but_not_the_boot() {
        let dir = tempfile::tempdir().unwrap();
        let boot = BootId::random();
        let first = SimV2pTable::open(dir.path(), boot).unwrap();
        first
            .change(TableChange::Program {
                vpc: "blue".into(),
                generation: 3,
                upserts: table_of("sled-a").entries.into_iter().collect(),
                removals: Vec::new(),
            })
            .unwrap();
        assert_eq!(first.snapshot()["blue"], table_of("sled-a"));
        first.corrupt("blue", "10.0.0.1", "sled-x").unwrap();

        let reopened = SimV2pTable::open(dir.path(), boot).unwrap();
        assert_eq!(
            reopened.rows(),
            vec![V2pRow {
                vpc: "blue".into(),
                ip: "10.0.0.1".into(),
                sled: "sled-x".into(),
                location_generation: 2,
                forward_to: None,
            }]
        );

        // A torn last line is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(V2P_LOG))
            .unwrap()
            .write_all(b"{\"program\":{\"vpc\":")
            .unwrap();
        assert_eq!(
            SimV2pTable::open(dir.path(), boot).unwrap().rows(),
            reopened.rows()
        );

        let rebooted = SimV2pTable::open(dir.path(), BootId::random()).unwrap();
        assert!(rebooted.rows().is_empty());

        reopened.power_off().unwrap();
        assert!(reopened.snapshot().is_empty());
    }

    #[test]
    fn the_agent_sees_through_the_trait_what_the_machine_holds() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Arc::new(SimV2pTable::open(dir.path(), BootId::random()).unwrap());
        let table: Arc<dyn V2pTable> = sim.clone();
        table
            .apply(TableChange::Program {
                vpc: "blue".into(),
                generation: 3,
                upserts: table_of("sled-a").entries.into_iter().collect(),
                removals: Vec::new(),
            })
            .unwrap();
        assert_eq!(
            table.read(|vpcs| vpcs["blue"].clone()).unwrap(),
            table_of("sled-a")
        );
        // A change behind the agent's back is what the agent reads next.
        sim.corrupt("blue", "10.0.0.1", "sled-x").unwrap();
        assert_eq!(
            table.read(|vpcs| vpcs["blue"].clone()).unwrap(),
            table_of("sled-x")
        );
        table
            .apply(TableChange::Remove { vpc: "blue".into() })
            .unwrap();
        assert!(table.read(|vpcs| vpcs.is_empty()).unwrap());
    }
}
