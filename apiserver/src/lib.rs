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
//! - Only this crate touches the store; it knows no Corral kind (it would serve any CRD), but
//!   for the fence-token admission rules (`admission/fence.rs`), which name Sleds and Vmms by
//!   group, plural and field path and do nothing for any other kind.
//! - Every write is conditional on the revision it was computed from; read-modify-write
//!   operations (patch, apply, finalizer removal, GC) retry on conflict from a fresh read.
//! - Any number of API servers may share one etcd: all state is in the store, and every
//!   background task (GC, compaction) is idempotent and conditional.
//!
//! # Layout
//!
//! `handlers` is the HTTP edge: it parses paths, decodes bodies and renders replies. Every
//! change to an object goes through the object layer (`objects`), which knows no HTTP; the
//! garbage collector (`gc`) and start-up use that layer too, never `handlers`. `server` is the
//! state they share (registry, store, one watch `cache` per kind, the `openapi` documents).
//! `admission` holds the rules the object layer runs on every client write before storing it
//! (the fence tokens of sleds); they are the one place that names kinds of Corral's.
//!
//! # Entry points
//!
//! [`ApiServer::start`] builds the state and spawns the background tasks; [`router`] gives
//! the axum `Router` (handler tests drive it without a socket); [`serve`] runs it on a
//! listener until a shutdown future completes (`serve.rs`: the accept loop, with its
//! header-read timeout and connection cap).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use corral_store::{DynStore, StoreError};
use tokio::task::JoinSet;

pub mod admission;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod cache;
pub mod error;
pub mod filter;
mod gc;
mod handlers;
pub mod metrics;
pub mod object;
mod objects;
mod openapi;
pub mod query;
pub mod resource;
pub mod serve;
mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use objects::{Admission, AdmissionRequest, AdmissionRule, ReadObjects, Subresource, Verb};
pub use server::{ApiServer, Config};

use resource::Registry;

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
        if let Some(audit) = &self.server.audit {
            audit.flush().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not create the built-in namespaces")]
    Bootstrap(#[source] StoreError),
    #[error("could not create the default policy")]
    Policy(#[from] authz::bootstrap::PolicyError),
    #[error("could not open the audit log {path}")]
    Audit {
        path: std::path::PathBuf,
        #[source]
        error: std::io::Error,
    },
}

impl ApiServer {
    /// Builds the server state, starts its caches, garbage collector and compactor, waits for
    /// the caches to be filled and makes sure the `default` namespace exists.
    pub async fn start(
        registry: Registry,
        store: DynStore,
        config: Config,
    ) -> Result<Running, StartError> {
        let store = metrics::MeteredStore::wrap(store);
        let mut state = ApiServer::new(registry, store.clone(), config.clone());
        if let Some(audit) = &config.audit {
            state.audit = Some(audit::Log::open(audit).map_err(|error| StartError::Audit {
                path: audit.path.clone(),
                error,
            })?);
        }
        let server = Arc::new(state);
        let mut tasks = JoinSet::new();
        for cache in server.caches() {
            tasks.spawn(cache.clone().run(store.clone(), config.cache.clone()));
        }
        for cache in server.caches() {
            cache.wait_for(0, Duration::from_secs(3600)).await;
        }
        // As in Kubernetes: `default` for users, `kube-system` for the control plane's own
        // objects (leader-election Leases), `kube-node-lease` for node heartbeats.
        for namespace in ["default", "kube-system", "kube-node-lease"] {
            objects::ensure_namespace(&server, namespace)
                .await
                .map_err(StartError::Bootstrap)?;
        }
        authz::bootstrap::ensure(&server, &config.policy).await?;
        tasks.spawn(gc::run(server.clone()));
        if !config.compaction_interval.is_zero() {
            tasks.spawn(compactor(server.clone()));
        }
        Ok(Running { server, tasks })
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

/// Serves the API on `listener` (over TLS when `tls` is given) until `shutdown` completes
/// (`serve.rs`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<ApiServer>,
    tls: Option<serve::Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve::serve(listener, router(server.clone()), server, tls, shutdown).await
}
