//! The raw engines' write rate: the physical limit the API benchmark compares Corral against.
//!
//! [`raw_write_rate`] writes `objects` values of `value_size` bytes with `concurrency` writes in
//! flight, with no Corral code in between:
//!
//! - **etcd**: one create-if-absent transaction per value — compare `create_revision = 0`,
//!   then put; what an API create is, a conditional write, with nothing else — under a scratch
//!   prefix (`PREFIX/.raw-bench-…/`), deleted afterwards (the deletion is not timed).
//!   [`etcd_blind_put_rate`] measures plain puts the same way, for information: etcd's ceiling
//!   for writes that check nothing.
//! - **SQLite**: one-row `INSERT` transactions, one per row, into a scratch table of a
//!   *separate* database file next to the configured one (`PATH.raw-bench-PID`), with the
//!   store's own settings (WAL, `synchronous=FULL`); the file is removed afterwards. Each row
//!   is one autocommit `INSERT` (one fsync'd commit). SQLite admits one writer at a time; a
//!   few connections let one prepare its statement while another commits (measured best here
//!   at 4; more only add lock contention and the busy handler's sleeps).
//!
//! # Assumptions
//!
//! Nothing else uses the scratch prefix or file. A failed run may leave them behind (both are
//! named after this process's id and are safe to delete).
//!
//! This module is the only place outside the backends that names sqlx or etcd-client.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::sqlite::SqlitePoolOptions;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::StoreConfig;
use crate::etcd::EtcdError;
use crate::sqlite::{SqliteError, connect_options, sql_error};
use crate::{Result, StoreError};

/// Connections of the raw SQLite run (see the module docs).
const RAW_SQLITE_CONNECTIONS: u32 = 4;

/// How many writes were made and how long they took (set-up and clean-up excluded).
#[derive(Clone, Copy, Debug)]
pub struct RawReport {
    pub writes: usize,
    pub elapsed: Duration,
}

impl RawReport {
    /// Writes per second.
    pub fn rate(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// See the module docs.
pub async fn raw_write_rate(
    config: &StoreConfig,
    objects: usize,
    concurrency: usize,
    value_size: usize,
) -> Result<RawReport> {
    let concurrency = concurrency.max(1);
    match config {
        StoreConfig::Etcd {
            endpoints,
            prefix,
            tls,
        } => {
            let target = EtcdTarget {
                endpoints,
                prefix,
                tls: tls.as_ref(),
            };
            etcd_rate(
                target,
                EtcdWrite::CreateIfAbsent,
                objects,
                concurrency,
                value_size,
            )
            .await
        }
        StoreConfig::Sqlite { path } => sqlite_rate(path, objects, concurrency, value_size).await,
    }
}

/// Plain etcd puts, measured as [`raw_write_rate`] measures its transactions; `None` for a
/// store that is not etcd.
pub async fn etcd_blind_put_rate(
    config: &StoreConfig,
    objects: usize,
    concurrency: usize,
    value_size: usize,
) -> Result<Option<RawReport>> {
    let StoreConfig::Etcd {
        endpoints,
        prefix,
        tls,
    } = config
    else {
        return Ok(None);
    };
    let target = EtcdTarget {
        endpoints,
        prefix,
        tls: tls.as_ref(),
    };
    let report = etcd_rate(
        target,
        EtcdWrite::BlindPut,
        objects,
        concurrency.max(1),
        value_size,
    )
    .await?;
    Ok(Some(report))
}

/// Where the raw etcd writes go.
struct EtcdTarget<'a> {
    endpoints: &'a [String],
    prefix: &'a str,
    tls: Option<&'a crate::EtcdTls>,
}

/// What one raw etcd write is.
#[derive(Clone, Copy)]
enum EtcdWrite {
    /// A transaction: compare `create_revision = 0`, then put.
    CreateIfAbsent,
    /// A put that checks nothing.
    BlindPut,
}

fn etcd_error(error: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(Box::new(EtcdError::Request(error)))
}

fn join_error(error: tokio::task::JoinError) -> StoreError {
    StoreError::Backend(Box::new(error))
}

async fn etcd_rate(
    target: EtcdTarget<'_>,
    write: EtcdWrite,
    objects: usize,
    concurrency: usize,
    value_size: usize,
) -> Result<RawReport> {
    let options = crate::etcd::connect_options(target.tls)?;
    let client = etcd_client::Client::connect(target.endpoints, Some(options))
        .await
        .map_err(etcd_error)?;
    let scratch = format!("{}/.raw-bench-{}/", target.prefix, std::process::id());
    let value = vec![b'x'; value_size];
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for _ in 0..concurrency {
        let mut kv = client.kv_client();
        let (next, scratch, value) = (next.clone(), scratch.clone(), value.clone());
        writers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= objects {
                    return Ok::<_, etcd_client::Error>(());
                }
                let key = format!("{scratch}{index:09}");
                match write {
                    EtcdWrite::BlindPut => {
                        kv.put(key, value.clone(), None).await?;
                    }
                    EtcdWrite::CreateIfAbsent => {
                        let txn = etcd_client::Txn::new()
                            .when([etcd_client::Compare::create_revision(
                                key.clone(),
                                etcd_client::CompareOp::Equal,
                                0,
                            )])
                            .and_then([etcd_client::TxnOp::put(key, value.clone(), None)]);
                        let response = kv.txn(txn).await?;
                        if !response.succeeded() {
                            return Err(etcd_client::Error::InvalidArgs(
                                "a scratch key of the raw benchmark already existed".into(),
                            ));
                        }
                    }
                }
            }
        });
    }
    let mut outcome = Ok(());
    while let Some(joined) = writers.join_next().await {
        if let Err(error) = joined
            .map_err(join_error)
            .and_then(|r| r.map_err(etcd_error))
        {
            outcome = outcome.and(Err(error));
        }
    }
    let elapsed = started.elapsed();
    let mut kv = client.kv_client();
    let cleanup = kv
        .delete(
            scratch,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd_error);
    outcome?;
    cleanup?;
    Ok(RawReport {
        writes: objects,
        elapsed,
    })
}

async fn sqlite_rate(
    path: &std::path::Path,
    objects: usize,
    concurrency: usize,
    value_size: usize,
) -> Result<RawReport> {
    let mut scratch = path.as_os_str().to_owned();
    scratch.push(format!(".raw-bench-{}", std::process::id()));
    let scratch = PathBuf::from(scratch);
    if let Some(parent) = scratch.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(|source| {
            StoreError::Backend(Box::new(SqliteError::CreateDirectory {
                path: parent.to_owned(),
                source,
            }))
        })?;
    }
    let outcome = sqlite_inserts(&scratch, objects, concurrency, value_size).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = scratch.as_os_str().to_owned();
        file.push(suffix);
        // Missing files are fine: SQLite may already have removed the WAL.
        let _ = tokio::fs::remove_file(PathBuf::from(file)).await;
    }
    outcome
}

async fn sqlite_inserts(
    scratch: &std::path::Path,
    objects: usize,
    concurrency: usize,
    value_size: usize,
) -> Result<RawReport> {
    let options = connect_options(scratch);
    // Create the table on a connection of its own, so the timed pool starts clean.
    let mut setup = options.connect().await.map_err(sql_error)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS raw_bench (id INTEGER PRIMARY KEY, value BLOB NOT NULL)",
    )
    .execute(&mut setup)
    .await
    .map_err(sql_error)?;
    drop(setup);
    let pool = SqlitePoolOptions::new()
        .max_connections(RAW_SQLITE_CONNECTIONS.min(u32::try_from(concurrency).unwrap_or(u32::MAX)))
        .connect_with(options)
        .await
        .map_err(sql_error)?;
    let value = vec![b'x'; value_size];
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for _ in 0..concurrency {
        let (pool, next, value) = (pool.clone(), next.clone(), value.clone());
        writers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= objects {
                    return Ok::<_, sqlx::Error>(());
                }
                // In autocommit mode one statement is one transaction: one fsync'd commit.
                sqlx::query("INSERT INTO raw_bench (id, value) VALUES (?1, ?2)")
                    .bind(i64::try_from(index).unwrap_or(i64::MAX))
                    .bind(&value[..])
                    .execute(&pool)
                    .await?;
            }
        });
    }
    let mut outcome = Ok(());
    while let Some(joined) = writers.join_next().await {
        if let Err(error) = joined
            .map_err(join_error)
            .and_then(|r| r.map_err(sql_error))
        {
            outcome = outcome.and(Err(error));
        }
    }
    let elapsed = started.elapsed();
    pool.close().await;
    outcome?;
    Ok(RawReport {
        writes: objects,
        elapsed,
    })
}
