//! Write throughput of both backends: `Store::create` from many tasks, and the raw engine
//! baseline (`raw_write_rate`) beside it.
//!
//! ```text
//! cargo run --release -p corral-store --example throughput [WRITES [CONCURRENCY [VALUE_BYTES [sqlite|etcd]]]]
//! ```
//!
//! Defaults: 20000 writes, 64 in flight, 1024-byte values, both backends. SQLite runs in a temporary
//! directory; etcd is a fresh local server (`testing::EtcdServer`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use corral_store::raw::raw_write_rate;
use corral_store::testing::EtcdServer;
use corral_store::{DynStore, StoreConfig, open};
use tokio::task::JoinSet;
use tokio::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn arg(index: usize, default: usize) -> Result<usize, Error> {
    match std::env::args().nth(index) {
        Some(text) => Ok(text.parse()?),
        None => Ok(default),
    }
}

async fn create_rate(
    store: DynStore,
    writes: usize,
    concurrency: usize,
    value_size: usize,
) -> Result<Duration, Error> {
    let value = Bytes::from(vec![b'x'; value_size]);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (store, value, next) = (store.clone(), value.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= writes {
                    return Ok::<_, corral_store::StoreError>(());
                }
                store
                    .create(&format!("/bench/{index:09}"), value.clone())
                    .await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(started.elapsed())
}

fn report(what: &str, writes: usize, elapsed: Duration) {
    let rate = writes as f64 / elapsed.as_secs_f64();
    println!(
        "{what:<28} {writes:>7} writes in {:>7.3} s = {rate:>9.0} writes/s",
        elapsed.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let writes = arg(1, 20_000)?;
    let concurrency = arg(2, 64)?;
    let value_size = arg(3, 1024)?;
    let only = std::env::args().nth(4);
    let runs = |backend: &str| only.as_deref().is_none_or(|only| only == backend);
    println!("{writes} writes, {concurrency} in flight, {value_size}-byte values");

    if runs("sqlite") {
        sqlite(writes, concurrency, value_size).await?;
    }
    if runs("etcd") {
        etcd(writes, concurrency, value_size).await?;
    }
    Ok(())
}

async fn sqlite(writes: usize, concurrency: usize, value_size: usize) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let sqlite = StoreConfig::Sqlite {
        path: dir.path().join("bench.sqlite"),
    };
    let elapsed = create_rate(open(&sqlite).await?, writes, concurrency, value_size).await?;
    report("sqlite Store::create", writes, elapsed);
    let raw = raw_write_rate(&sqlite, writes, concurrency, value_size).await?;
    report("sqlite raw (1 row/txn)", raw.writes, raw.elapsed);
    Ok(())
}

async fn etcd(writes: usize, concurrency: usize, value_size: usize) -> Result<(), Error> {
    let server = EtcdServer::start().await?;
    let etcd = server.config("/bench");
    let elapsed = create_rate(open(&etcd).await?, writes, concurrency, value_size).await?;
    report("etcd Store::create", writes, elapsed);
    let raw = raw_write_rate(&etcd, writes, concurrency, value_size).await?;
    report("etcd raw (put)", raw.writes, raw.elapsed);
    Ok(())
}
