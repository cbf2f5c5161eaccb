//! The node-agent's local journal: a SQLite file in the sled's data directory that remembers
//! what the agent decided, so that a restarted agent forgets nothing.
//!
//! It holds the sled epoch with the boot id it belongs to, and one [`VmmRecord`] per Vmm the
//! agent has taken a decision about (accepted or refused): the status it last decided and the
//! `stateGeneration` of that decision. A Vmm that is an end of a live migration also keeps its
//! role, phase and peer ([`MigrationRecord`]), so that a restarted agent goes on waiting for the
//! verdict or knows its transfer broke.
//!
//! # Guarantees
//! - A write that returned `Ok` is durable (WAL, `synchronous=FULL`): the agent records a
//!   decision here *before* it reports it or acts on the API, so a report never names a
//!   generation the journal could forget.
//! - This is the only module of the crate that names sqlx (the node-agent's deliberate
//!   exception to "only `store/` names sqlx", see ARCHITECTURE.md).
//!
//! # Assumptions
//! - One agent at a time per data directory.
//!
//! # Not responsible for
//! Deciding anything: the agent's `plan` decides, this module stores.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use corral_crds::{Reason, Resources, VmmMigrationStatus, VmmState};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::hypervisor::{BootId, VmmId};

/// The journal file's name in the sled's data directory.
pub const JOURNAL_FILE: &str = "journal.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vmms (
    uid TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    instance TEXT NOT NULL,
    image TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    holds INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    message TEXT NOT NULL,
    state_generation INTEGER NOT NULL,
    diverged INTEGER NOT NULL,
    handled_reboot_request TEXT,
    booted_at TEXT,
    state_since TEXT NOT NULL,
    migration TEXT,
    dirty_bytes_per_second INTEGER NOT NULL DEFAULT 0
);
";

/// Columns added after the first schema, for journals written by an older agent.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("migration", "ALTER TABLE vmms ADD COLUMN migration TEXT"),
    (
        "dirty_bytes_per_second",
        "ALTER TABLE vmms ADD COLUMN dirty_bytes_per_second INTEGER NOT NULL DEFAULT 0",
    ),
];

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("creating the data directory {path}")]
    CreateDirectory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the journal {path}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal operation {operation}")]
    Sql {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal row {uid} holds an unreadable {column}: {value:?}")]
    Corrupt {
        uid: String,
        column: &'static str,
        value: String,
    },
}

/// The epoch the journal last recorded and the boot it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochRecord {
    pub epoch: u64,
    /// `None` for a new journal.
    pub boot_id: Option<BootId>,
}

/// What the agent last decided about one Vmm. Its `Vmm.status` is rendered from it.
#[derive(Clone, Debug, PartialEq)]
pub struct VmmRecord {
    pub uid: VmmId,
    pub namespace: String,
    pub name: String,
    pub instance: String,
    pub image: String,
    pub resources: Resources,
    /// Whether the Vmm holds its resources on the sled: accepted and not yet `Destroyed`.
    /// A refused Vmm never holds any.
    pub holds: bool,
    pub state: VmmState,
    pub reason: Option<Reason>,
    pub message: String,
    pub state_generation: u64,
    /// Whether the VMM diverged from the Vmm (killed, missing).
    pub diverged: bool,
    pub handled_reboot_request: Option<String>,
    pub booted_at: Option<Timestamp>,
    /// When `state` was decided.
    pub state_since: Timestamp,
    /// This Vmm's end of a live migration, while there is one (and its outcome after).
    pub migration: Option<MigrationRecord>,
    /// The guest's dirty rate when the agent last looked (reported, not decided).
    pub dirty_bytes_per_second: u64,
}

/// One end of a live migration, as the agent decided it (journaled with its Vmm as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRecord {
    /// What `Vmm.status.migration` reports (progress as of the last journal write).
    pub status: VmmMigrationStatus,
    /// The other end's Vmm (same namespace): the source names its target and vice versa.
    pub peer_vmm: String,
}

/// The journal (see the module docs).
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
    pool: SqlitePool,
}

fn sql(operation: &'static str) -> impl FnOnce(sqlx::Error) -> JournalError {
    move |source| JournalError::Sql { operation, source }
}

impl Journal {
    /// Opens (creating if missing) the journal in `data_dir`.
    pub async fn open(data_dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(data_dir).map_err(|source| JournalError::CreateDirectory {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(JOURNAL_FILE);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // One connection: the agent's writes are serialized anyway, and a hundred agents in
        // one process should not hold a hundred pools of several connections.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| JournalError::Open {
                path: path.display().to_string(),
                source,
            })?;
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(sql("creating the schema"))?;
        let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('vmms')")
            .fetch_all(&pool)
            .await
            .map_err(sql("reading the schema"))?
            .iter()
            .map(|row| row.get("name"))
            .collect();
        for (column, statement) in ADDED_COLUMNS {
            if !columns.iter().any(|c| c == column) {
                sqlx::raw_sql(*statement)
                    .execute(&pool)
                    .await
                    .map_err(sql("upgrading the schema"))?;
            }
        }
        Ok(Journal { path, pool })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded epoch (0 and no boot id for a new journal).
    pub async fn epoch(&self) -> Result<EpochRecord, JournalError> {
        let rows = sqlx::query("SELECT name, value FROM meta WHERE name IN ('epoch', 'boot_id')")
            .fetch_all(&self.pool)
            .await
            .map_err(sql("reading the epoch"))?;
        let mut record = EpochRecord {
            epoch: 0,
            boot_id: None,
        };
        for row in rows {
            let name: String = row.get("name");
            let value: String = row.get("value");
            let corrupt = || JournalError::Corrupt {
                uid: "meta".into(),
                column: "value",
                value: value.clone(),
            };
            match name.as_str() {
                "epoch" => record.epoch = value.parse().map_err(|_| corrupt())?,
                "boot_id" => {
                    record.boot_id = Some(BootId(value.parse().map_err(|_| corrupt())?));
                }
                _ => {}
            }
        }
        Ok(record)
    }

    /// Records the epoch of a boot (both in one transaction).
    pub async fn epoch_set(&self, record: EpochRecord) -> Result<(), JournalError> {
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(sql("recording the epoch"))?;
        write_epoch(&mut transaction, record).await?;
        transaction
            .commit()
            .await
            .map_err(sql("recording the epoch"))
    }

    /// Starts a new life of the sled on the same boot (after a fence): forgets every Vmm
    /// record and records the epoch, in one transaction, so that a crash leaves either the old
    /// life whole (and the next start fences again) or the new one clean.
    pub async fn new_life(&self, record: EpochRecord) -> Result<(), JournalError> {
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(sql("starting a new life"))?;
        sqlx::query("DELETE FROM vmms")
            .execute(&mut *transaction)
            .await
            .map_err(sql("forgetting every Vmm"))?;
        write_epoch(&mut transaction, record).await?;
        transaction
            .commit()
            .await
            .map_err(sql("starting a new life"))
    }

    /// Every record.
    pub async fn vmm_list(&self) -> Result<Vec<VmmRecord>, JournalError> {
        let rows = sqlx::query("SELECT * FROM vmms ORDER BY uid")
            .fetch_all(&self.pool)
            .await
            .map_err(sql("listing Vmms"))?;
        rows.iter().map(record_from_row).collect()
    }

    /// Inserts or replaces the record of `record.uid`.
    pub async fn vmm_put(&self, record: &VmmRecord) -> Result<(), JournalError> {
        sqlx::query(
            "INSERT OR REPLACE INTO vmms (uid, namespace, name, instance, image, cpus, memory_mib,
                holds, state, reason, message, state_generation, diverged,
                handled_reboot_request, booted_at, state_since, migration,
                dirty_bytes_per_second)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.uid.as_str())
        .bind(&record.namespace)
        .bind(&record.name)
        .bind(&record.instance)
        .bind(&record.image)
        .bind(i64::from(record.resources.cpus))
        .bind(record.resources.memory_mib as i64)
        .bind(record.holds)
        .bind(record.state.as_str())
        .bind(record.reason.map(|r| r.as_str()))
        .bind(&record.message)
        .bind(record.state_generation as i64)
        .bind(record.diverged)
        .bind(record.handled_reboot_request.as_deref())
        .bind(record.booted_at.map(|t| t.to_string()))
        .bind(record.state_since.to_string())
        .bind(
            record
                .migration
                .as_ref()
                .map(|m| serde_json::to_string(m).expect("a migration record serializes")),
        )
        .bind(record.dirty_bytes_per_second as i64)
        .execute(&self.pool)
        .await
        .map_err(sql("recording a Vmm"))?;
        Ok(())
    }

    /// Forgets the record of `uid` (absent is success).
    pub async fn vmm_delete(&self, uid: &VmmId) -> Result<(), JournalError> {
        sqlx::query("DELETE FROM vmms WHERE uid = ?")
            .bind(uid.as_str())
            .execute(&self.pool)
            .await
            .map_err(sql("forgetting a Vmm"))?;
        Ok(())
    }

    /// Closes the connection (waiting for writes under way).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Writes `record` (epoch and boot id) inside `transaction`.
async fn write_epoch(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    record: EpochRecord,
) -> Result<(), JournalError> {
    sqlx::query("INSERT OR REPLACE INTO meta (name, value) VALUES ('epoch', ?)")
        .bind(record.epoch.to_string())
        .execute(&mut **transaction)
        .await
        .map_err(sql("recording the epoch"))?;
    if let Some(boot_id) = record.boot_id {
        sqlx::query("INSERT OR REPLACE INTO meta (name, value) VALUES ('boot_id', ?)")
            .bind(boot_id.to_string())
            .execute(&mut **transaction)
            .await
            .map_err(sql("recording the epoch"))?;
    }
    Ok(())
}

fn record_from_row(row: &SqliteRow) -> Result<VmmRecord, JournalError> {
    let uid: String = row.get("uid");
    let corrupt = |column: &'static str, value: String| JournalError::Corrupt {
        uid: uid.clone(),
        column,
        value,
    };
    let state: String = row.get("state");
    let state = VmmState::from_str(&state).map_err(|_| corrupt("state", state))?;
    let reason = match row.get::<Option<String>, _>("reason") {
        Some(text) => Some(Reason::from_str(&text).map_err(|_| corrupt("reason", text))?),
        None => None,
    };
    let timestamp = |column: &'static str, text: String| {
        Timestamp::from_str(&text).map_err(|_| corrupt(column, text))
    };
    let booted_at = match row.get::<Option<String>, _>("booted_at") {
        Some(text) => Some(timestamp("booted_at", text)?),
        None => None,
    };
    let state_since = timestamp("state_since", row.get("state_since"))?;
    let migration = match row.get::<Option<String>, _>("migration") {
        Some(text) => Some(serde_json::from_str(&text).map_err(|_| corrupt("migration", text))?),
        None => None,
    };
    Ok(VmmRecord {
        uid: VmmId(uid.clone()),
        namespace: row.get("namespace"),
        name: row.get("name"),
        instance: row.get("instance"),
        image: row.get("image"),
        resources: Resources {
            cpus: row.get::<i64, _>("cpus") as u32,
            memory_mib: row.get::<i64, _>("memory_mib") as u64,
        },
        holds: row.get("holds"),
        state,
        reason,
        message: row.get("message"),
        state_generation: row.get::<i64, _>("state_generation") as u64,
        diverged: row.get("diverged"),
        handled_reboot_request: row.get("handled_reboot_request"),
        booted_at,
        state_since,
        migration,
        dirty_bytes_per_second: row.get::<i64, _>("dirty_bytes_per_second") as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str) -> VmmRecord {
        VmmRecord {
            uid: VmmId::from(uid),
            namespace: "default".into(),
            name: "web-v1".into(),
            instance: "web".into(),
            image: "debian".into(),
            resources: Resources {
                cpus: 2,
                memory_mib: 1024,
            },
            holds: true,
            state: VmmState::Running,
            reason: Some(Reason::VmmRunning),
            message: String::new(),
            state_generation: 3,
            diverged: false,
            handled_reboot_request: Some("r1".into()),
            booted_at: Some(Timestamp::from_second(1_700_000_000).unwrap()),
            state_since: Timestamp::from_second(1_700_000_001).unwrap(),
            migration: None,
            dirty_bytes_per_second: 0,
        }
    }

    #[tokio::test]
    async fn records_and_the_epoch_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let boot = BootId::random();
        {
            let journal = Journal::open(dir.path()).await.unwrap();
            assert_eq!(
                journal.epoch().await.unwrap(),
                EpochRecord {
                    epoch: 0,
                    boot_id: None
                }
            );
            journal
                .epoch_set(EpochRecord {
                    epoch: 4,
                    boot_id: Some(boot),
                })
                .await
                .unwrap();
            journal.vmm_put(&record("a")).await.unwrap();
            let mut b = record("b");
            b.state = VmmState::Failed;
            b.reason = None;
            b.booted_at = None;
            journal.vmm_put(&b).await.unwrap();
            b.state_generation = 4;
            journal.vmm_put(&b).await.unwrap();
            journal.vmm_put(&record("c")).await.unwrap();
            journal.vmm_delete(&VmmId::from("c")).await.unwrap();
            journal.vmm_delete(&VmmId::from("c")).await.unwrap();
            journal.close().await;
        }
        let journal = Journal::open(dir.path()).await.unwrap();
        assert_eq!(
            journal.epoch().await.unwrap(),
            EpochRecord {
                epoch: 4,
                boot_id: Some(boot)
            }
        );
        let records = journal.vmm_list().await.unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], record("a"));
        assert_eq!(records[1].state, VmmState::Failed);
        assert_eq!(records[1].state_generation, 4);
        assert_eq!(records[1].reason, None);
    }

    #[tokio::test]
    async fn a_migration_end_survives_a_reopen_and_an_old_journal_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A journal written before migrations: the first schema, one row.
            let options = SqliteConnectOptions::new()
                .filename(dir.path().join(JOURNAL_FILE))
                .create_if_missing(true);
            let pool = SqlitePool::connect_with(options).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE vmms (uid TEXT PRIMARY KEY, namespace TEXT NOT NULL,
                    name TEXT NOT NULL, instance TEXT NOT NULL, image TEXT NOT NULL,
                    cpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL, holds INTEGER NOT NULL,
                    state TEXT NOT NULL, reason TEXT, message TEXT NOT NULL,
                    state_generation INTEGER NOT NULL, diverged INTEGER NOT NULL,
                    handled_reboot_request TEXT, booted_at TEXT, state_since TEXT NOT NULL);
                 INSERT INTO vmms VALUES ('old', 'default', 'web-v1', 'web', 'debian', 1, 512, 1,
                    'Running', NULL, '', 2, 0, NULL, NULL, '2027-01-15T08:00:00Z');",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let journal = Journal::open(dir.path()).await.unwrap();
        let old = journal.vmm_list().await.unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(
            (old[0].migration.as_ref(), old[0].dirty_bytes_per_second),
            (None, 0)
        );

        let mut migrating = record("a");
        migrating.state = VmmState::Migrating;
        migrating.dirty_bytes_per_second = 32 << 20;
        migrating.migration = Some(MigrationRecord {
            status: VmmMigrationStatus {
                migration: "move".into(),
                role: corral_crds::MigrationRole::Source,
                phase: corral_crds::VmmMigrationPhase::Ready,
                progress: Default::default(),
                reason: None,
                message: String::new(),
                timings: Default::default(),
            },
            peer_vmm: "web-v2".into(),
        });
        journal.vmm_put(&migrating).await.unwrap();
        journal.close().await;
        let journal = Journal::open(dir.path()).await.unwrap();
        let records = journal.vmm_list().await.unwrap();
        assert_eq!(records[0], migrating);
    }
}
