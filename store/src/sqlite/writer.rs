//! The single writer of a SQLite store: group commit of conditional writes, and compaction.
//!
//! # Invariants
//!
//! - **Commit order is revision order.** Only this task writes, revisions come from its
//!   counter, and it publishes a revision only after the transaction holding it committed.
//! - **A batch is all or nothing on disk, one by one in outcome.** The writes of one batch are
//!   evaluated in arrival order against the state left by the ones before them (read from the
//!   database, then tracked in memory), so each condition is checked exactly as if the writes
//!   had run one per transaction; a failed condition fails only its write. If the transaction
//!   fails, every write of the batch fails and none is visible.
//! - **Every answer follows the commit.** A caller hears `Ok` only after its write is durable
//!   and published; it hears a failed condition only after the batch that decided it committed.
//! - **Compaction never stalls writers for long.** It runs in chunks of
//!   `SqliteOptions::compaction_chunk` revisions, one transaction each, with write batches in
//!   between.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};

use super::error::{SqliteError, sql_error};
use super::options::SqliteOptions;
use super::schema::REVISIONS_SQL;
use crate::{KeyValue, Result, Revision, StoreError};

/// Rows per multi-row statement; smaller remainders go in power-of-two pieces so only a few
/// distinct statements are ever prepared (and all stay in the statement cache).
const ROWS_PER_STATEMENT: usize = 128;
/// A batch stops growing once it holds this many value bytes.
const MAX_BATCH_BYTES: usize = 16 << 20;

pub(super) enum WriteOp {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        expected: Revision,
        value: Bytes,
    },
    Delete {
        key: String,
        expected: Revision,
    },
}

impl WriteOp {
    fn key(&self) -> &str {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key,
        }
    }

    fn size(&self) -> usize {
        match self {
            WriteOp::Create { key, value } | WriteOp::Update { key, value, .. } => {
                key.len() + value.len()
            }
            WriteOp::Delete { key, .. } => key.len(),
        }
    }
}

pub(super) enum Command {
    Write {
        op: WriteOp,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// One row of the log, as the writer produces it.
struct LogRow {
    revision: Revision,
    key: String,
    value: Bytes,
    create_revision: Revision,
    prev_revision: Revision,
    deleted: bool,
}

impl LogRow {
    /// A create (`prev_revision` 0) or an update of `key` to `value`.
    fn put(
        revision: Revision,
        key: &str,
        value: &Bytes,
        create_revision: Revision,
        prev_revision: Revision,
    ) -> LogRow {
        LogRow {
            revision,
            key: key.to_owned(),
            value: value.clone(),
            create_revision,
            prev_revision,
            deleted: false,
        }
    }

    /// The delete of `existing`: it stores no value (its value is its previous row's).
    fn tombstone(revision: Revision, existing: &KeyValue) -> LogRow {
        LogRow {
            revision,
            key: existing.key.clone(),
            value: Bytes::new(),
            create_revision: existing.create_revision,
            prev_revision: existing.mod_revision,
            deleted: true,
        }
    }

    /// The key's value after a put.
    fn key_value(&self) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.revision,
        }
    }
}

struct Compaction {
    target: Revision,
    /// Revisions up to here have been examined; the first chunk records the target.
    scanned: Option<Revision>,
    reply: oneshot::Sender<Result<()>>,
}

pub(super) struct Writer {
    conn: SqliteConnection,
    /// Held for as long as this writer lives: no other process writes the file meanwhile.
    _lock: std::fs::File,
    current: Revision,
    compacted: Revision,
    committed: watch::Sender<Revision>,
    max_batch: usize,
    compaction_chunk: Revision,
    compactions: VecDeque<(Revision, oneshot::Sender<Result<()>>)>,
    compaction: Option<Compaction>,
    /// After a failed transaction the counters are re-read before the next write.
    resync: bool,
}

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        lock: std::fs::File,
        current: Revision,
        compacted: Revision,
        committed: watch::Sender<Revision>,
        options: &SqliteOptions,
    ) -> Writer {
        Writer {
            conn,
            _lock: lock,
            current,
            compacted,
            committed,
            max_batch: options.max_batch.max(1),
            compaction_chunk: options.compaction_chunk.max(1),
            compactions: VecDeque::new(),
            compaction: None,
            resync: false,
        }
    }

    /// Serves commands until every sender is gone, then closes the connection.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut ops = Vec::new();
        let mut replies = Vec::new();
        loop {
            let idle = self.compaction.is_none() && self.compactions.is_empty();
            if idle {
                match commands.recv().await {
                    Some(command) => self.accept(command, &mut ops, &mut replies),
                    None => break,
                }
            }
            // Group commit: take everything else that is already waiting.
            let mut bytes = ops.iter().map(WriteOp::size).sum::<usize>();
            while ops.len() < self.max_batch && bytes < MAX_BATCH_BYTES {
                match commands.try_recv() {
                    Ok(command) => {
                        if let Command::Write { op, .. } = &command {
                            bytes += op.size();
                        }
                        self.accept(command, &mut ops, &mut replies);
                    }
                    Err(_) => break,
                }
            }
            if !ops.is_empty() {
                self.apply_batch(std::mem::take(&mut ops), std::mem::take(&mut replies))
                    .await;
            }
            self.compaction_step().await;
        }
        if let Err(error) = self.conn.close().await {
            tracing::warn!(%error, "closing the SQLite writer connection failed");
        }
    }

    fn accept(
        &mut self,
        command: Command,
        ops: &mut Vec<WriteOp>,
        replies: &mut Vec<oneshot::Sender<Result<KeyValue>>>,
    ) {
        match command {
            Command::Write { op, reply } => {
                ops.push(op);
                replies.push(reply);
            }
            Command::Compact { revision, reply } => self.compactions.push_back((revision, reply)),
        }
    }

    async fn apply_batch(
        &mut self,
        ops: Vec<WriteOp>,
        replies: Vec<oneshot::Sender<Result<KeyValue>>>,
    ) {
        if self.resync
            && let Err(error) = self.resync().await
        {
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(Box::new(
                    SqliteError::Transaction(error.clone()),
                ))));
            }
            return;
        }
        match self.try_apply(&ops).await {
            Ok((results, revision)) => {
                if revision > self.current {
                    self.current = revision;
                    self.committed.send_replace(revision);
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    // The caller may have gone away; its write stands regardless.
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                tracing::error!(%error, writes = ops.len(), "SQLite write batch failed");
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(Box::new(
                        SqliteError::Transaction(error.clone()),
                    ))));
                }
                self.resync = true;
            }
        }
    }

    /// Re-reads the counters after a failed transaction (a failed COMMIT may or may not have
    /// reached the disk).
    async fn resync(&mut self) -> Result<(), Arc<sqlx::Error>> {
        let row = sqlx::query(REVISIONS_SQL)
            .fetch_one(&mut self.conn)
            .await
            .map_err(Arc::new)?;
        let newest: i64 = row.try_get(0).map_err(Arc::new)?;
        let compacted: i64 = row.try_get(1).map_err(Arc::new)?;
        self.current = newest.max(compacted);
        self.compacted = compacted;
        self.committed.send_if_modified(|published| {
            let changed = *published != self.current;
            *published = self.current;
            changed
        });
        self.resync = false;
        Ok(())
    }

    /// Applies `ops` in one transaction; returns each write's outcome and the new revision.
    async fn try_apply(
        &mut self,
        ops: &[WriteOp],
    ) -> Result<(Vec<Result<KeyValue>>, Revision), sqlx::Error> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut state = read_state(&mut tx, ops).await?;
        let Decided {
            results,
            log,
            revision,
        } = decide(ops, &mut state, self.current);
        if log.is_empty() {
            tx.rollback().await?;
            return Ok((results, self.current));
        }
        insert_log(&mut tx, &log).await?;
        write_kv(&mut tx, &log, &state).await?;
        tx.commit().await?;
        Ok((results, revision))
    }

    /// Advances the running compaction by one chunk, or starts the next queued one.
    async fn compaction_step(&mut self) {
        if self.compaction.is_none() {
            let Some((target, reply)) = self.compactions.pop_front() else {
                return;
            };
            if target > self.current {
                let _ = reply.send(Err(StoreError::FutureRevision {
                    requested: target,
                    current: self.current,
                }));
                return;
            }
            if target <= self.compacted {
                // Already compacted at least this far: nothing to do.
                let _ = reply.send(Ok(()));
                return;
            }
            self.compaction = Some(Compaction {
                target,
                scanned: None,
                reply,
            });
        }
        let Some(compaction) = self.compaction.as_mut() else {
            return;
        };
        let target = compaction.target;
        let first = compaction.scanned.is_none();
        let outcome = compact_chunk(
            &mut self.conn,
            target,
            compaction.scanned,
            self.compaction_chunk,
        )
        .await;
        match outcome {
            Ok(scanned) => {
                if first {
                    self.compacted = target;
                }
                if scanned >= target {
                    if let Some(done) = self.compaction.take() {
                        tracing::debug!(revision = target, "compacted SQLite store");
                        let _ = done.reply.send(Ok(()));
                    }
                } else if let Some(compaction) = self.compaction.as_mut() {
                    compaction.scanned = Some(scanned);
                }
            }
            Err(error) => {
                tracing::error!(%error, revision = target, "SQLite compaction failed");
                if let Some(failed) = self.compaction.take() {
                    let _ = failed.reply.send(Err(sql_error(error)));
                }
                self.resync = true;
            }
        }
    }
}

/// The current value of every key `ops` touch, read inside the batch's transaction.
async fn read_state(
    conn: &mut SqliteConnection,
    ops: &[WriteOp],
) -> Result<HashMap<String, KeyValue>, sqlx::Error> {
    let mut keys: Vec<&str> = Vec::with_capacity(ops.len());
    let mut seen = HashSet::with_capacity(ops.len());
    for op in ops {
        if seen.insert(op.key()) {
            keys.push(op.key());
        }
    }
    let mut state: HashMap<String, KeyValue> = HashMap::with_capacity(keys.len());
    for chunk in statement_chunks(&keys) {
        let sql = format!(
            "SELECT k.key, l.value, k.create_revision, k.mod_revision \
             FROM kv AS k JOIN log AS l ON l.revision = k.mod_revision WHERE k.key IN ({})",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for key in chunk {
            query = query.bind(key.as_bytes());
        }
        for row in query.fetch_all(&mut *conn).await? {
            let key: Vec<u8> = row.try_get(0)?;
            let value: Vec<u8> = row.try_get(1)?;
            let key = String::from_utf8(key)
                .map_err(|e| sqlx::Error::Decode(Box::new(SqliteError::KeyNotUtf8(e))))?;
            let kv = KeyValue {
                key: key.clone(),
                value: Bytes::from(value),
                create_revision: row.try_get(2)?,
                mod_revision: row.try_get(3)?,
            };
            state.insert(key, kv);
        }
    }
    Ok(state)
}

/// What a batch does: each write's outcome, the log rows to insert and the revision after
/// the last of them.
struct Decided {
    results: Vec<Result<KeyValue>>,
    log: Vec<LogRow>,
    revision: Revision,
}

/// Evaluates `ops` in order against `state` (each key's current value, updated as the writes
/// succeed), numbering the successful ones from `current + 1`. Touches no database.
fn decide(ops: &[WriteOp], state: &mut HashMap<String, KeyValue>, current: Revision) -> Decided {
    let mut revision = current;
    let mut log = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = match op {
            WriteOp::Create { key, value } => match state.get(key) {
                Some(existing) => Err(StoreError::AlreadyExists {
                    key: key.clone(),
                    current: existing.clone(),
                }),
                None => {
                    revision += 1;
                    let row = LogRow::put(revision, key, value, revision, 0);
                    let kv = row.key_value();
                    log.push(row);
                    state.insert(key.clone(), kv.clone());
                    Ok(kv)
                }
            },
            WriteOp::Update {
                key,
                expected,
                value,
            } => match expect_revision(state, key, *expected) {
                Err(error) => Err(error),
                Ok(existing) => {
                    revision += 1;
                    let row = LogRow::put(
                        revision,
                        key,
                        value,
                        existing.create_revision,
                        existing.mod_revision,
                    );
                    let kv = row.key_value();
                    log.push(row);
                    state.insert(key.clone(), kv.clone());
                    Ok(kv)
                }
            },
            WriteOp::Delete { key, expected } => match expect_revision(state, key, *expected) {
                Err(error) => Err(error),
                Ok(existing) => {
                    revision += 1;
                    log.push(LogRow::tombstone(revision, existing));
                    let deleted = KeyValue {
                        mod_revision: revision,
                        ..existing.clone()
                    };
                    state.remove(key);
                    Ok(deleted)
                }
            },
        };
        results.push(outcome);
    }
    Decided {
        results,
        log,
        revision,
    }
}

/// The condition of an update or delete: `key` exists at revision `expected`.
fn expect_revision<'a>(
    state: &'a HashMap<String, KeyValue>,
    key: &str,
    expected: Revision,
) -> Result<&'a KeyValue> {
    match state.get(key) {
        None => Err(StoreError::NotFound {
            key: key.to_owned(),
        }),
        Some(existing) if existing.mod_revision != expected => Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            current: Some(existing.clone()),
        }),
        Some(existing) => Ok(existing),
    }
}

async fn insert_log(conn: &mut SqliteConnection, log: &[LogRow]) -> Result<(), sqlx::Error> {
    for chunk in statement_chunks(log) {
        let sql = format!(
            "INSERT INTO log (revision, key, value, create_revision, prev_revision, deleted) \
             VALUES {}",
            rows_placeholders(6, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.revision)
                .bind(row.key.as_bytes())
                .bind(&row.value[..])
                .bind(row.create_revision)
                .bind(row.prev_revision)
                .bind(row.deleted);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes the final state of every key the batch changed to `kv`: live keys are upserted,
/// deleted ones removed.
async fn write_kv(
    conn: &mut SqliteConnection,
    log: &[LogRow],
    state: &HashMap<String, KeyValue>,
) -> Result<(), sqlx::Error> {
    let mut touched: Vec<&str> = Vec::new();
    let mut touched_set = HashSet::new();
    for row in log {
        if touched_set.insert(row.key.as_str()) {
            touched.push(&row.key);
        }
    }
    let (live, gone): (Vec<&str>, Vec<&str>) = touched
        .into_iter()
        .partition(|key| state.contains_key(*key));
    let live: Vec<&KeyValue> = live.iter().filter_map(|key| state.get(*key)).collect();
    for chunk in statement_chunks(&live) {
        let sql = format!(
            "INSERT INTO kv (key, create_revision, mod_revision) VALUES {} \
             ON CONFLICT (key) DO UPDATE SET \
             create_revision = excluded.create_revision, mod_revision = excluded.mod_revision",
            rows_placeholders(3, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for kv in chunk {
            query = query
                .bind(kv.key.as_bytes())
                .bind(kv.create_revision)
                .bind(kv.mod_revision);
        }
        query.execute(&mut *conn).await?;
    }
    for chunk in statement_chunks(&gone) {
        let sql = format!(
            "DELETE FROM kv WHERE key IN ({})",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for key in chunk {
            query = query.bind(key.as_bytes());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// One compaction transaction. The first (`scanned` is `None`) records the target as the
/// compacted revision before deleting anything and starts at the oldest row of the log (rows
/// below the previous compacted revision may have been superseded since). Returns the
/// revision examined up to.
async fn compact_chunk(
    conn: &mut SqliteConnection,
    target: Revision,
    scanned: Option<Revision>,
    chunk: Revision,
) -> Result<Revision, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let from = match scanned {
        Some(scanned) => scanned,
        None => {
            sqlx::query("UPDATE meta SET value = ?1 WHERE name = 'compacted'")
                .bind(target)
                .execute(&mut *tx)
                .await?;
            let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(revision) FROM log")
                .fetch_one(&mut *tx)
                .await?;
            oldest.map_or(target, |oldest| oldest - 1)
        }
    };
    let to = from.saturating_add(chunk).min(target);
    sqlx::query(
        "DELETE FROM log WHERE revision > ?1 AND revision <= ?2 AND (deleted = 1 OR EXISTS \
         (SELECT 1 FROM log AS newer WHERE newer.key = log.key \
          AND newer.revision > log.revision AND newer.revision <= ?3))",
    )
    .bind(from)
    .bind(to)
    .bind(target)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(to)
}

/// Splits `items` into pieces of [`ROWS_PER_STATEMENT`], then powers of two.
fn statement_chunks<T>(items: &[T]) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let size = if rest.len() >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            // The largest power of two that fits.
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// `?, ?, ?` with `count` placeholders.
fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

/// `(?, ?), (?, ?)` for `rows` rows of `columns` columns.
fn rows_placeholders(columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_chunks_use_few_distinct_sizes() {
        let items: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = statement_chunks(&items).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![128, 128, 32, 8, 4]);
        assert_eq!(sizes.iter().sum::<usize>(), 300);
        assert!(statement_chunks::<u32>(&[]).is_empty());
    }

    #[test]
    fn a_batch_is_decided_write_by_write_against_the_writes_before_it() {
        let put = |key: &str, text: &'static str| WriteOp::Create {
            key: key.to_string(),
            value: Bytes::from_static(text.as_bytes()),
        };
        let update = |key: &str, expected: Revision| WriteOp::Update {
            key: key.to_string(),
            expected,
            value: Bytes::from_static(b"new"),
        };
        let delete = |key: &str, expected: Revision| WriteOp::Delete {
            key: key.to_string(),
            expected,
        };
        let mut state = HashMap::new();
        state.insert(
            "old".to_string(),
            KeyValue {
                key: "old".to_string(),
                value: Bytes::from_static(b"v"),
                create_revision: 3,
                mod_revision: 7,
            },
        );
        let ops = [
            put("a", "1"),
            put("a", "2"),
            update("a", 11),
            update("old", 6),
            delete("old", 7),
            delete("old", 7),
            update("missing", 1),
        ];
        let decided = decide(&ops, &mut state, 10);
        let outcome: Vec<&str> = decided
            .results
            .iter()
            .map(|result| match result {
                Ok(_) => "ok",
                Err(StoreError::AlreadyExists { .. }) => "exists",
                Err(StoreError::Conflict { .. }) => "conflict",
                Err(StoreError::NotFound { .. }) => "not found",
                Err(_) => "other",
            })
            .collect();
        assert_eq!(
            outcome,
            [
                "ok",
                "exists",
                "ok",
                "conflict",
                "ok",
                "not found",
                "not found"
            ]
        );
        assert_eq!(decided.revision, 13, "three writes succeeded after 10");
        let rows: Vec<(Revision, &str, Revision, Revision, bool)> = decided
            .log
            .iter()
            .map(|r| {
                (
                    r.revision,
                    r.key.as_str(),
                    r.create_revision,
                    r.prev_revision,
                    r.deleted,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (11, "a", 11, 0, false),
                (12, "a", 11, 11, false),
                (13, "old", 3, 7, true),
            ]
        );
        assert!(!state.contains_key("old"));
        assert_eq!(state["a"].mod_revision, 12);
        assert!(matches!(&decided.results[4], Ok(kv) if kv.mod_revision == 13 && kv.value == "v"));
    }

    #[test]
    fn placeholders_have_the_right_shape() {
        assert_eq!(placeholders(3), "?, ?, ?");
        assert_eq!(rows_placeholders(2, 2), "(?, ?), (?, ?)");
    }
}
