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

use corral_apimachinery::limits::ObjectLimits;
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
    /// How deep and how large a stored object may be: a write whose object is past either is
    /// refused (`objects/context.rs` `WriteContext::check_limits`). Default: 100 levels,
    /// 1,500,000 bytes.
    pub object_limits: ObjectLimits,
    /// A client that has not sent a whole request head in this time is disconnected; a
    /// keep-alive connection idle this long is closed (`serve.rs`; Kubernetes'
    /// `ReadHeaderTimeout`, 32 s). Zero: no timeout.
    pub header_read_timeout: Duration,
    /// The most connections open at once; more wait in the listen backlog (`serve.rs`).
    pub max_connections: usize,
    /// The most read-only requests worked on at once; one more is 429 (`handlers/flow.rs`;
    /// Kubernetes' `--max-requests-inflight`, 400). 0: no limit. Watches are not counted.
    pub max_requests_inflight: usize,
    /// The most mutating requests worked on at once; one more is 429 (Kubernetes'
    /// `--max-mutating-requests-inflight`, 200). 0: no limit.
    pub max_mutating_requests_inflight: usize,
    /// A non-watch request that takes longer is answered 504 (Kubernetes' `--request-timeout`,
    /// 60 s; 0: no timeout). Shutdown waits as long for requests in flight.
    pub request_timeout: Duration,
    /// The most watches one client (`handlers/flow.rs` `client_key`) holds open at once; one
    /// more is 429.
    pub max_watches_per_client: usize,
    /// The most bytes of objects one list answer holds (`handlers/read.rs`): a page asked for
    /// with `limit` ends there with a `continue`; a list without `limit` that would hold more is
    /// refused. Default: 128 MiB.
    pub max_list_bytes: usize,
    /// The most bytes one JSON patch may create with its `add`, `replace` and `copy` operations
    /// (`corral_apimachinery::patch`; Kubernetes' `JSONPatchMaxCopyBytes`, 3 MiB).
    pub json_patch_max_created_bytes: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Kubernetes' `--min-request-timeout`: a watch without `timeoutSeconds` lasts between this
    /// and twice this (chosen at random), and one with it at most twice this (1,800 s).
    pub min_request_timeout: Duration,
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
    /// Where the audit trail is written (`audit`); `None`: no trail.
    pub audit: Option<crate::audit::AuditConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body_bytes: 3 * 1024 * 1024,
            object_limits: ObjectLimits::DEFAULT,
            json_patch_max_created_bytes: 3 * 1024 * 1024,
            max_list_bytes: 128 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(32),
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            request_timeout: Duration::from_secs(60),
            max_watches_per_client: 1000,
            max_connections: 10_000,
            bookmark_interval: Duration::from_secs(60),
            min_request_timeout: Duration::from_secs(1800),
            compaction_interval: Duration::from_secs(300),
            gc_resync_interval: Duration::from_secs(30),
            cache: CacheConfig::default(),
            admission: admission::defaults(),
            authentication: crate::auth::Authentication::default(),
            policy: Vec::new(),
            audit: None,
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
    /// The audit trail, when `config.audit` names one (opened by `ApiServer::start`).
    pub audit: Option<crate::audit::Log>,
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
            audit: None,
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
