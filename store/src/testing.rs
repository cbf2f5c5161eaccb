//! Test support (feature `testing`): a real etcd (one member or a cluster) on free loopback
//! ports, and the conformance suite every backend must pass.
//!
//! A backend's tests are one macro call; each case becomes its own `#[tokio::test]`:
//!
//! ```ignore
//! corral_store::conformance_tests!(sqlite, corral_store::testing::sqlite_harness);
//! corral_store::conformance_tests!(etcd, corral_store::testing::etcd_harness);
//! ```
//!
//! The second argument is anything callable as `f().await -> Harness`: a [`Harness`] owns a
//! fresh, empty store, knows how to open it again on the same data (for the restart cases) and
//! keeps alive what the store lives on (a temporary directory, an etcd process).

pub mod conformance;
mod etcd_server;
mod harness;

use std::sync::Arc;

pub use etcd_server::{EtcdCluster, EtcdServer, EtcdServerTls};
pub use harness::Harness;

use crate::DynStore;
use crate::etcd::EtcdStore;
use crate::sqlite::SqliteStore;

/// A SQLite store in a new temporary directory (in a subdirectory that does not exist yet, so
/// opening also creates it).
pub async fn sqlite_harness() -> Harness {
    let dir = match tempfile::Builder::new().prefix("corral-store-").tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("creating a temporary directory: {error}"),
    };
    let path = dir.path().join("state").join("store.sqlite");
    let harness = Harness::new(move || {
        let path = path.clone();
        async move { Ok(Arc::new(SqliteStore::open(&path).await?) as DynStore) }
    })
    .await;
    match harness {
        Ok(harness) => harness.keep(dir),
        Err(error) => panic!("opening a SQLite store: {error:?}"),
    }
}

/// An etcd store on an etcd server of its own (so compaction, which is server-wide, cannot
/// disturb another test), under a prefix.
pub async fn etcd_harness() -> Harness {
    let server = match EtcdServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("starting etcd: {error}"),
    };
    etcd_store_harness(vec![server.endpoint()], server).await
}

/// An etcd store on a 3-member etcd cluster of its own (the production layout: the client
/// knows every member and may read, write and watch through any of them), under a prefix.
pub async fn etcd_cluster_harness() -> Harness {
    let cluster = match EtcdCluster::start(3).await {
        Ok(cluster) => cluster,
        Err(error) => panic!("starting a 3-member etcd cluster: {error}"),
    };
    etcd_store_harness(cluster.endpoints(), cluster).await
}

/// A harness whose store connects to `endpoints`, keeping `etcd` (what serves them) alive.
async fn etcd_store_harness(
    endpoints: Vec<String>,
    etcd: impl std::any::Any + Send + Sync,
) -> Harness {
    let harness = Harness::new(move || {
        let endpoints = endpoints.clone();
        async move {
            Ok(Arc::new(EtcdStore::connect(&endpoints, "/conformance", None).await?) as DynStore)
        }
    })
    .await;
    match harness {
        Ok(harness) => harness.keep(etcd),
        Err(error) => panic!("connecting to etcd: {error:?}"),
    }
}

/// Generates one `#[tokio::test]` per conformance case, in a module named `$backend`.
///
/// `$harness` is callable as `$harness().await` and yields a [`Harness`]. The calling crate
/// needs `tokio` (with the `macros` and `rt-multi-thread` features).
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::__conformance_cases!(
            $backend,
            $harness,
            create_then_get,
            create_existing_key_fails_with_current,
            update_requires_current_revision,
            delete_requires_current_revision,
            racing_updates_have_one_winner,
            revisions_increase_globally,
            list_isolates_prefixes,
            list_paginates_with_count_and_more,
            list_at_older_revision_sees_old_state,
            list_at_compacted_revision_fails,
            watch_delivers_history_in_order_with_previous_values,
            watch_from_current_sees_only_new_events,
            watch_isolates_prefixes,
            watch_reports_progress_when_idle,
            watch_from_compacted_revision_fails,
            compaction_keeps_current_values,
            concurrent_creates_are_distinct_and_watched_once,
            reopen_keeps_data_and_history,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($backend:ident, $harness:expr, $($case:ident),+ $(,)?) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let harness = ($harness)().await;
                    $crate::testing::conformance::run(
                        stringify!($case),
                        $crate::testing::conformance::$case(harness),
                    )
                    .await;
                }
            )+
        }
    };
}
