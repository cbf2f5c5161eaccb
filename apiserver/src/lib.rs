//! A generic Kubernetes-compatible API server for custom resources, on a Corral [`Store`].
//!
//! It serves every kind described by a CustomResourceDefinition (plus built-in namespaces,
//! events and leases) with the wire behaviour real clients depend on — `shared/k8s-api.md` is
//! the contract: discovery, OpenAPI v3, CRUD, the status subresource, merge/JSON patch,
//! server-side apply, validation and defaulting, Tables, selectors, pagination, watches with
//! bookmarks, finalizers, garbage collection, dry runs and `Status` errors.
//!
//! # Invariants
//!
//! - Only this crate touches the store; it knows no Corral kind (it would serve any CRD).
//! - Every write is conditional on the revision it was computed from; read-modify-write
//!   operations (patch, apply, finalizer removal, GC) retry on conflict from a fresh read.
//! - Any number of API servers may share one etcd: all state is in the store, and every
//!   background task (GC, compaction) is idempotent and conditional.
//!
//! # Entry points
//!
//! [`ApiServer::start`] builds the state and spawns the background tasks; [`router`] gives
//! the axum `Router` (handler tests drive it without a socket); [`serve`] runs it on a
//! listener until a shutdown future completes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use corral_store::{DynStore, StoreError};
use tokio::task::JoinSet;

pub mod cache;
pub mod error;
pub mod filter;
mod gc;
mod handlers;
pub mod object;
pub mod query;
pub mod resource;
#[cfg(feature = "testing")]
pub mod testing;

use cache::{CacheConfig, Cacher};
use resource::{Registry, ResourceType};

/// How an API server behaves; the defaults are Kubernetes'.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest request body accepted (Kubernetes: 3 MiB).
    pub max_body_bytes: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Compact history older than this, every this often (0 disables compaction).
    pub compaction_interval: Duration,
    /// How often the garbage collector rescans everything (it also reacts to events).
    pub gc_resync_interval: Duration,
    pub cache: CacheConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(60),
            compaction_interval: Duration::from_secs(300),
            gc_resync_interval: Duration::from_secs(30),
            cache: CacheConfig::default(),
        }
    }
}

/// The shared state of one API server.
pub struct ApiServer {
    pub registry: Registry,
    pub store: DynStore,
    pub config: Config,
    caches: Vec<Arc<Cacher>>,
    openapi: handlers::openapi::Documents,
    /// Cancelled when the server stops: ends every open watch so shutdown does not wait for
    /// their timeouts.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// A running API server: its state and the background tasks that keep it (caches, GC,
/// compaction). Dropping it stops the tasks.
pub struct Running {
    pub server: Arc<ApiServer>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops every background task and waits for them to end.
    pub async fn shutdown(mut self) {
        self.server.shutdown.cancel();
        self.tasks.shutdown().await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not create the built-in namespaces")]
    Bootstrap(#[source] StoreError),
}

impl ApiServer {
    /// Builds the server state, starts its caches, garbage collector and compactor, waits for
    /// the caches to be filled and makes sure the `default` namespace exists.
    pub async fn start(
        registry: Registry,
        store: DynStore,
        config: Config,
    ) -> Result<Running, StartError> {
        let caches: Vec<Arc<Cacher>> = registry
            .types()
            .iter()
            .map(|t| Cacher::new(t.clone(), &config.cache))
            .collect();
        let openapi = handlers::openapi::Documents::build(&registry);
        let server = Arc::new(ApiServer {
            registry,
            store: store.clone(),
            config: config.clone(),
            caches,
            openapi,
            shutdown: tokio_util::sync::CancellationToken::new(),
        });
        let mut tasks = JoinSet::new();
        for cache in &server.caches {
            tasks.spawn(cache.clone().run(store.clone(), config.cache.clone()));
        }
        for cache in &server.caches {
            cache.wait_for(0, Duration::from_secs(3600)).await;
        }
        // As in Kubernetes: `default` for users, `kube-system` for the control plane's own
        // objects (leader-election Leases), `kube-node-lease` for node heartbeats.
        for namespace in ["default", "kube-system", "kube-node-lease"] {
            handlers::write::ensure_namespace(&server, namespace)
                .await
                .map_err(StartError::Bootstrap)?;
        }
        tasks.spawn(gc::run(server.clone()));
        if !config.compaction_interval.is_zero() {
            tasks.spawn(compactor(server.clone()));
        }
        Ok(Running { server, tasks })
    }

    pub fn cache(&self, resource: &ResourceType) -> &Arc<Cacher> {
        self.caches
            .iter()
            .find(|c| c.resource.group == resource.group && c.resource.plural == resource.plural)
            .expect("every registered type has a cache")
    }

    pub fn caches(&self) -> &[Arc<Cacher>] {
        &self.caches
    }
}

/// Compacts the store to the revision seen one interval ago, like kube-apiserver: history
/// younger than one interval is always kept, so watchers that are at most that far behind
/// can resume.
async fn compactor(server: Arc<ApiServer>) {
    let interval = server.config.compaction_interval;
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(interval).await;
        let current = match server.store.current_revision().await {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "compactor could not read the revision");
                continue;
            }
        };
        if let Some(target) = previous {
            match server.store.compact(target).await {
                Ok(()) => {
                    tracing::info!(revision = target, "compacted store history");
                    for cache in server.caches() {
                        cache.forget_before(target);
                    }
                }
                Err(StoreError::Compacted { .. }) => {}
                Err(error) => tracing::warn!(%error, revision = target, "compaction failed"),
            }
        }
        previous = Some(current);
    }
}

/// The HTTP routes of the API server.
pub fn router(server: Arc<ApiServer>) -> Router {
    handlers::router(server)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<ApiServer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = server.shutdown.clone();
    axum::serve(listener, router(server))
        .with_graceful_shutdown(async move {
            shutdown.await;
            token.cancel();
        })
        .await
}
