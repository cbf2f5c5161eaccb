//! SQLite durability across `kill -9`: every write acknowledged before the kill is there after.
//!
//! The test re-runs its own binary as a child (`writer_child`, selected by an environment
//! variable) that creates keys from 64 tasks and prints `ACK <key> <revision>` after each
//! acknowledged create. The parent SIGKILLs it in the middle of the burst, reopens the store,
//! and checks every acknowledged key, the revision sequence and the watch history.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_store::sqlite::SqliteStore;
use corral_store::{Store, WatchOptions};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;
use tokio::time::Instant;

const CHILD_ENV: &str = "CORRAL_STORE_DURABILITY_DB";
/// The child stops by itself after this many writes, should the parent never kill it.
const CHILD_MAX_WRITES: usize = 200_000;
/// The parent kills the child after this many acknowledgements.
const KILL_AFTER: usize = 3_000;

/// Not a test of its own: the writer process of `acknowledged_writes_survive_sigkill`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return; // Run directly: nothing to do.
    };
    let store = Arc::new(SqliteStore::open(&PathBuf::from(path)).await.expect("open"));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = JoinSet::new();
    for _ in 0..64 {
        let (store, next, stdout) = (store.clone(), next.clone(), stdout.clone());
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= CHILD_MAX_WRITES {
                    return;
                }
                let key = format!("/durable/{index:07}");
                let kv = store
                    .create(&key, Bytes::from(vec![b'd'; 1024]))
                    .await
                    .expect("create");
                let mut out = stdout.lock().expect("stdout lock");
                writeln!(out, "ACK {key} {}", kv.mod_revision).expect("write ACK");
                out.flush().expect("flush ACK");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("durable.sqlite");
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the writer child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = BTreeMap::new();
    // Records an acknowledgement; other lines (the test harness's own output) do not count.
    let mut record = |line: &str| -> bool {
        let mut parts = line.split_whitespace();
        if let (Some("ACK"), Some(key), Some(revision)) = (parts.next(), parts.next(), parts.next())
        {
            let revision: i64 = revision.parse().expect("an ACK names a revision");
            acked.insert(key.to_owned(), revision);
            return true;
        }
        false
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut count = 0;
    while count < KILL_AFTER {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                if record(&line) {
                    count += 1;
                }
            }
            Ok(Ok(None)) => panic!("the writer exited after {count} acknowledgements"),
            Ok(Err(error)) => panic!("reading the writer's output: {error}"),
            Err(_) => panic!("only {count} acknowledgements within 60 s"),
        }
    }
    child.kill().await.expect("SIGKILL the writer");
    // Acknowledgements printed before the kill are still in the pipe.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                record(&line);
            }
            Ok(Ok(None)) => break,
            Ok(Err(error)) => panic!("reading the writer's output: {error}"),
            Err(_) => panic!("the writer's output did not end after SIGKILL"),
        }
    }
    assert!(acked.len() >= KILL_AFTER);

    let store = SqliteStore::open(&path)
        .await
        .expect("reopen after SIGKILL");
    let current = store.current_revision().await.expect("current_revision");
    let highest_ack = acked.values().copied().max().unwrap_or(0);
    assert!(
        current >= highest_ack,
        "current {current} is below an acknowledged {highest_ack}"
    );
    for (key, revision) in &acked {
        let kv = store.get(key).await.expect("get");
        let kv = kv.unwrap_or_else(|| panic!("acknowledged {key} is missing after SIGKILL"));
        assert_eq!(kv.mod_revision, *revision, "{key} has another revision");
    }
    // No gaps: the history from 0 holds exactly one create per revision up to the current one.
    let mut stream = store
        .watch(
            "/durable/",
            WatchOptions {
                after: 0,
                progress_interval: Duration::from_millis(100),
            },
        )
        .await
        .expect("watch");
    let mut seen = 0;
    while seen < current {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch response in time")
            .expect("watch open")
            .expect("watch response");
        for event in response.events {
            seen += 1;
            assert_eq!(event.revision(), seen, "the history has a gap or a repeat");
        }
    }
    println!(
        "{} acknowledged before SIGKILL, {current} survived",
        acked.len()
    );
}
