//! Typed watch caches with one readiness rule.
//!
//! A controller asks [`Caches`] for a [`Watch`] of each kind it reads. A watch reflects every
//! event into its [`Cache`] first, then hands it to the watch's taps (indexes, ledgers), then
//! to whoever consumes the stream (a trigger of the controller, or nothing: a side cache).
//!
//! # Definitions
//! - A cache is *listed* if (and only if) its watch delivered the end of a full list at least
//!   once (`InitDone`).
//! - A controller's caches are *ready* if (and only if) every cache made by its [`Caches`]
//!   other than its primary one is listed: until then a reconcile would plan from an empty
//!   world (an empty ledger places everything on one sled; an absent Vmm looks abandoned).
//!
//! # Guarantees
//! - A tap sees an event only after the cache holds it, so what a tap announces (a Vmm seen, a
//!   cache listed) is in the cache when a reconcile looks. (A relist's `InitApply` events
//!   arrive while the cache still serves the old list; taps buffer them until `InitDone`.)
//! - A trigger ([`Watch::touched`]) fires only once the cache holds the object: a relist's
//!   objects trigger together when the new list is swapped in.
//! - Listed stays listed: a relist after a watch error keeps serving the old contents until
//!   the new list is complete (kube-runtime's reflector), so readiness never flips back.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// What a kind needs to be watched and cached.
pub trait Cached:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Cached for K where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

/// A watch event after it was stored.
pub type WatchEvent<K> = watcher::Event<K>;

/// The cached objects of one kind.
pub struct Cache<K: Cached> {
    store: Store<K>,
    listed: Arc<AtomicBool>,
}

impl<K: Cached> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            store: self.store.clone(),
            listed: self.listed.clone(),
        }
    }
}

impl<K: Cached> Cache<K> {
    /// The cluster-scoped object `name`.
    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name))
    }

    /// The object `namespace/name`.
    pub fn get_in(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Every cached object.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// Every cached object that `keep` keeps.
    pub fn filter(&self, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.store.state().into_iter().filter(|o| keep(o)).collect()
    }

    /// The reflector's store, for kube-runtime's `Controller`.
    pub(super) fn store(&self) -> Store<K> {
        self.store.clone()
    }
}

/// The caches of one controller, and its readiness.
pub struct Caches {
    client: kube::Client,
    /// The listed flags of every cache that readiness waits for.
    dependencies: Vec<Arc<AtomicBool>>,
}

impl Caches {
    pub fn new(client: kube::Client) -> Caches {
        Caches {
            client,
            dependencies: Vec::new(),
        }
    }

    /// A watch of every `K` the config selects; the controller is not ready until it listed.
    pub fn watch<K: Cached>(&mut self, config: watcher::Config) -> Watch<K> {
        let watch = Watch::start(Api::all(self.client.clone()), config);
        self.dependencies.push(watch.cache.listed.clone());
        watch
    }

    /// The watch of the controller's primary kind: it triggers reconciles itself, so
    /// readiness does not wait for it.
    pub fn primary<K: Cached>(&mut self, config: watcher::Config) -> Watch<K> {
        Watch::start(Api::all(self.client.clone()), config)
    }

    /// What readiness needs: see the module docs.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            dependencies: self.dependencies.clone(),
        }
    }
}

/// Whether every cache a controller depends on has listed.
#[derive(Clone)]
pub struct Readiness {
    dependencies: Vec<Arc<AtomicBool>>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.dependencies
            .iter()
            .all(|listed| listed.load(Ordering::Acquire))
    }
}

/// A running watch of `K`: its cache, and the stream of stored events with the taps applied.
pub struct Watch<K: Cached> {
    cache: Cache<K>,
    events: BoxStream<'static, Result<WatchEvent<K>, watcher::Error>>,
}

impl<K: Cached> Watch<K> {
    fn start(api: Api<K>, config: watcher::Config) -> Watch<K> {
        let (reader, writer) = reflector::store::<K>();
        let listed = Arc::new(AtomicBool::new(false));
        let flag = listed.clone();
        let events = watcher(api, config)
            .backoff(corral_client::backoff::WatchBackoff::default())
            .reflect(writer)
            .map_ok(move |event| {
                if matches!(event, watcher::Event::InitDone) {
                    flag.store(true, Ordering::Release);
                }
                event
            })
            .boxed();
        Watch {
            cache: Cache {
                store: reader,
                listed,
            },
            events,
        }
    }

    /// The cache this watch fills.
    pub fn cache(&self) -> Cache<K> {
        self.cache.clone()
    }

    /// Runs `tap` on every event once the cache holds it.
    pub fn tap(self, mut tap: impl FnMut(&WatchEvent<K>) + Send + 'static) -> Watch<K> {
        Watch {
            cache: self.cache,
            events: self
                .events
                .map_ok(move |event| {
                    tap(&event);
                    event
                })
                .boxed(),
        }
    }

    /// The objects each event touched: a trigger for kube-runtime's `Controller`.
    ///
    /// A relist's objects are held back until the list is complete: the cache swaps the new
    /// list in only then, and a reconcile triggered earlier would plan from the old contents
    /// (and one that found its own newer write missing would wait for an event that already
    /// went by).
    ///
    /// Watch errors are logged here and go no further: the watch retries on its own backoff
    /// ([`corral_client::backoff::WatchBackoff`]). kube-runtime's `Controller` pauses *all* of
    /// its triggers on any trigger error, with a backoff that grows to 30 s; after an API server
    /// restart every watch errors once, and that pause kept controllers blind for 40 s.
    pub fn touched(self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let kind = K::kind(&());
        let mut listing: Vec<K> = Vec::new();
        self.events.flat_map(move |event| {
            let touched = match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                    vec![Ok(object)]
                }
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(object)) => {
                    listing.push(object);
                    Vec::new()
                }
                Ok(watcher::Event::InitDone) => {
                    std::mem::take(&mut listing).into_iter().map(Ok).collect()
                }
                Err(error) => {
                    tracing::debug!(%error, %kind, "watching");
                    Vec::new()
                }
            };
            futures::stream::iter(touched)
        })
    }

    /// The stored events themselves.
    pub fn events(self) -> BoxStream<'static, Result<WatchEvent<K>, watcher::Error>> {
        self.events
    }

    /// Keeps the cache filled until the returned future is dropped (a side cache no reconcile
    /// is triggered by).
    pub async fn fill(self) {
        let name = K::kind(&());
        self.events
            .for_each(|result| {
                if let Err(error) = result {
                    tracing::debug!(%error, kind = %name, "watching");
                }
                std::future::ready(())
            })
            .await
    }
}
