//! The shared state of one API server: its configuration, the registry of the kinds it serves,
//! the store, one watch cache per kind, and the OpenAPI documents.
//!
//! Every part of the server (handlers, the object layer, the garbage collector) reaches the
//! others through this state; it holds no logic of its own beyond finding a kind's cache.
//!
//! # Invariants
//!
//! - Every registered kind has exactly one cache, made when the state is built.
//! - All durable state is in the store: another API server on the same store builds the same
//!   state (`lib.rs` starts the tasks that fill and keep it).

use std::sync::Arc;
use std::time::Duration;

use corral_store::DynStore;

use crate::admission;
use crate::cache::{CacheConfig, Cacher};
use crate::objects::Admission;
use crate::openapi::Documents;
use crate::resource::{Registry, ResourceType};

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
    /// The admission rules every client write passes, in order (`objects/admission.rs`). The
    /// default is [`admission::defaults`], the fence-token rules; [`Admission::none`] admits
    /// every write.
    pub admission: Admission,
    /// How requests are authenticated (`auth`).
    pub authentication: crate::auth::Authentication,
    /// Default ClusterRoles and ClusterRoleBindings ((origin, YAML) pairs) made sure to exist
    /// at start besides the built-in ones (`authz/bootstrap.rs`).
    pub policy: Vec<(&'static str, &'static str)>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(60),
            compaction_interval: Duration::from_secs(300),
            gc_resync_interval: Duration::from_secs(30),
            cache: CacheConfig::default(),
            admission: admission::defaults(),
            authentication: crate::auth::Authentication::default(),
            policy: Vec::new(),
        }
    }
}

/// The shared state of one API server.
pub struct ApiServer {
    pub registry: Registry,
    pub store: DynStore,
    pub config: Config,
    caches: Vec<Arc<Cacher>>,
    openapi: Documents,
    /// Cancelled when the server stops: ends every open watch so shutdown does not wait for
    /// their timeouts.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl ApiServer {
    /// The state for `registry` on `store`, with an empty cache per kind (nothing runs yet).
    pub(crate) fn new(registry: Registry, store: DynStore, config: Config) -> ApiServer {
        let caches: Vec<Arc<Cacher>> = registry
            .types()
            .iter()
            .map(|t| Cacher::new(t.clone(), &config.cache))
            .collect();
        let openapi = Documents::build(&registry);
        ApiServer {
            registry,
            store,
            config,
            caches,
            openapi,
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
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

    /// The OpenAPI v3 documents of every served group version.
    pub(crate) fn openapi(&self) -> &Documents {
        &self.openapi
    }
}
