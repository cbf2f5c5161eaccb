//! [`Controller`]: runs a [`Reconciler`] on kube-runtime's `Controller`, with the kit's rules
//! around every reconcile.
//!
//! Each reconcile of an object goes:
//! 1. **ready?** — until every cache the controller depends on listed, nothing is planned
//!    ([`Wait::CachesListing`], looked at again after [`NOT_READY_RETRY`]);
//! 2. **fresh?** — a cached object older than the controller's own last write to it is not
//!    planned from ([`Wait::OwnWriteNotSeen`]; the write's watch event wakes it again);
//! 3. [`Reconciler::reconcile`] observes (caches, live reads where a cache's silence proves
//!    nothing) and calls the controller's pure `plan`;
//! 4. [`execute`] applies the plan; [`Reconciler::cleanup`] releases what the reconcile held
//!    or reserved, and on a failure the [`error_policy`] decides when to try again;
//! 5. the [`Outcome`] goes on the [`Board`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Action as Requeue, Config as RunConfig};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::cache::{Cache, Cached, Readiness, Watch};
use super::effects::key_of;
use super::error::{Error, error_policy};
use super::execute::{Apply, execute};
use super::outcome::{Board, Outcome, Wait};
use super::plan::Plan;

/// How soon a reconcile that found the caches not ready tries again.
pub const NOT_READY_RETRY: Duration = Duration::from_millis(200);

/// What a reconcile decided.
pub enum Reconciled<S, A> {
    /// Nothing to plan now: why, and when to look again (`None`: on the next change).
    Wait(Wait, Option<Duration>),
    /// A plan to execute.
    Plan(Plan<S, A>),
}

/// A controller of one kind, on kube-runtime.
pub trait Reconciler: Apply {
    /// When an object whose plan asks for no requeue is looked at again anyway; `None`: only
    /// on a change.
    const RESYNC: Option<Duration> = None;

    /// Observes `object` and its world, and plans.
    fn reconcile(
        &self,
        object: Arc<Self::Object>,
    ) -> impl Future<Output = Result<Reconciled<Self::Status, Self::Action>, Error>> + Send;

    /// After `plan` was executed for `object` (to its end, or up to the failure `executed`
    /// carries): release what `reconcile` held or reserved for it, and record what only a
    /// successful execution makes true.
    fn cleanup(
        &self,
        _object: &Self::Object,
        _plan: &Plan<Self::Status, Self::Action>,
        _executed: Result<(), &Error>,
    ) {
    }
}

/// The shared state of one controller's reconciles.
struct Shared<R> {
    reconciler: R,
    readiness: Readiness,
    board: Board,
}

/// A [`Reconciler`] wired to its watches.
pub struct Controller<R: Reconciler>
where
    R::Object: Cached,
{
    inner: kube::runtime::Controller<R::Object>,
    board: Board,
}

impl<R: Reconciler> Controller<R>
where
    R::Object: Cached,
{
    /// A controller of the objects `primary` watches.
    pub fn new(primary: Watch<R::Object>, board: &Board) -> Controller<R> {
        let cache: Cache<R::Object> = primary.cache();
        let exists = cache.clone();
        board.track_queue(
            R::NAME,
            Arc::new(move |key: &str| match key.split_once('/') {
                Some((namespace, name)) => exists.get_in(namespace, name).is_some(),
                None => exists.get(key).is_some(),
            }),
        );
        let queue = board.clone();
        let triggers = primary.touched().map(move |result| {
            if let Ok(object) = &result {
                queue.queued(R::NAME, key_of(object));
            }
            result
        });
        Controller {
            inner: kube::runtime::Controller::for_stream(triggers, cache.store()),
            board: board.clone(),
        }
    }

    /// Reconciles the objects `mapper` names whenever a watched `K` changes.
    pub fn watches<K, I>(
        mut self,
        watch: Watch<K>,
        mapper: impl Fn(K) -> I + Send + Sync + 'static,
    ) -> Self
    where
        K: Cached + DeserializeOwned,
        I: IntoIterator<Item = ObjectRef<R::Object>> + 'static,
        I::IntoIter: Send,
    {
        let queue = self.board.clone();
        self.inner = self
            .inner
            .watches_stream(watch.touched(), move |object: K| {
                let targets: Vec<ObjectRef<R::Object>> = mapper(object).into_iter().collect();
                for target in &targets {
                    queue.queued(R::NAME, ref_key(target));
                }
                targets
            });
        self
    }

    /// Reconciles the owner of a watched `K` whenever it changes (by its controller
    /// ownerReference).
    pub fn owns<K>(self, watch: Watch<K>) -> Self
    where
        K: Cached + DeserializeOwned,
    {
        self.watches(watch, |child: K| {
            let namespace = child.namespace();
            let kind = R::Object::kind(&());
            child
                .owner_references()
                .iter()
                .filter(|owner| owner.controller == Some(true) && owner.kind == kind)
                .map(|owner| {
                    let reference = ObjectRef::new(&owner.name);
                    match &namespace {
                        Some(namespace) => reference.within(namespace),
                        None => reference,
                    }
                })
                .collect::<Vec<_>>()
        })
    }

    /// Runs until `stop`, with at most `concurrency` reconciles at once (0: no limit), and
    /// returns when every reconcile has finished.
    pub async fn run(
        self,
        reconciler: R,
        readiness: Readiness,
        concurrency: u16,
        stop: CancellationToken,
    ) {
        let shared = Arc::new(Shared {
            reconciler,
            readiness,
            board: self.board,
        });
        self.inner
            .with_config(RunConfig::default().concurrency(concurrency))
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(
                reconcile_one,
                |object, error, shared: Arc<Shared<R>>| {
                    let _ = (&object, &shared);
                    error_policy(error, R::NAME)
                },
                shared,
            )
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, controller = R::NAME, "reconcile");
                }
            })
            .await;
    }
}

fn ref_key<K: Resource<DynamicType = ()>>(reference: &ObjectRef<K>) -> String {
    match &reference.namespace {
        Some(namespace) => format!("{namespace}/{}", reference.name),
        None => reference.name.clone(),
    }
}

/// One reconcile with the kit's rules (see the module docs).
async fn reconcile_one<R: Reconciler>(
    object: Arc<R::Object>,
    shared: Arc<Shared<R>>,
) -> Result<Requeue, Error>
where
    R::Object: Cached,
{
    let key = key_of(object.as_ref());
    shared.board.started(R::NAME, &key);
    let started = tokio::time::Instant::now();
    let result = decide_and_apply(&object, &shared).await;
    let (outcome, requeue) = match result {
        Ok(done) => done,
        Err(error) => {
            let outcome = Outcome::failed(&error);
            shared
                .board
                .finished(R::NAME, key, outcome, started.elapsed());
            return Err(error);
        }
    };
    shared
        .board
        .finished(R::NAME, key, outcome, started.elapsed());
    Ok(requeue)
}

async fn decide_and_apply<R: Reconciler>(
    object: &Arc<R::Object>,
    shared: &Shared<R>,
) -> Result<(Outcome, Requeue), Error>
where
    R::Object: Cached,
{
    let reconciler = &shared.reconciler;
    if !shared.readiness.is_ready() {
        return Ok(waited(Wait::CachesListing, Some(NOT_READY_RETRY)));
    }
    if reconciler
        .effects()
        .expectations()
        .is_stale(object.as_ref())
    {
        // Our own last write will arrive through the watch and wake us again.
        return Ok(waited(Wait::OwnWriteNotSeen, None));
    }
    let plan = match reconciler.reconcile(object.clone()).await? {
        Reconciled::Wait(why, after) => return Ok(waited(why, after)),
        Reconciled::Plan(plan) => plan,
    };
    let executed = execute(reconciler, object.as_ref(), &plan).await;
    reconciler.cleanup(object.as_ref(), &plan, executed.as_ref().map(|_| ()));
    executed?;
    let requeue = plan.requeue.or(R::RESYNC);
    let mut did = std::collections::BTreeMap::new();
    for step in &plan.steps {
        *did.entry(step.kind()).or_insert(0) += 1;
    }
    let outcome = Outcome::applied(did, R::phase(&plan.status), requeue);
    Ok((
        outcome,
        requeue.map_or_else(Requeue::await_change, Requeue::requeue),
    ))
}

fn waited(why: Wait, after: Option<Duration>) -> (Outcome, Requeue) {
    let requeue = after.map_or_else(Requeue::await_change, Requeue::requeue);
    (Outcome::Waited { why }, requeue)
}
