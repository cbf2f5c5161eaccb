//! [`Effects`]: every change a controller makes to the API goes through here, and nowhere else
//! (`corral/tests/architecture.rs` checks it).
//!
//! # Guarantees
//! - "Already done" is success, decided in one place (`corral_client::idempotent`): a create
//!   whose object exists is [`Created::AlreadyExists`], a delete or patch of an object that is
//!   gone is `false` / `None`. A conflict (a write from a stale read) stays an error, so the
//!   next reconcile plans again from fresher state.
//! - Writes of the reconciled object (status, finalizers) are conditional on the
//!   resourceVersion they were planned from, and remembered in the controller's
//!   [`Expectations`], so it never plans from a cached copy older than its own last write.
//! - Every failure names what was done to which object ([`Error::Api`]).
//! - Events go through one [`Recorder`] per controller (kubelet-style aggregation).
//!
//! # Not responsible for
//! Reads. A controller reads its caches, and live through [`Effects::read`] only where a
//! cache's silence proves nothing (an object absent from a cache may merely be late).

use std::fmt::Debug;
use std::sync::Arc;

use corral_client::events::{EventType, Recorder};
use corral_client::idempotent::Idempotent;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{ClusterResourceScope, NamespaceResourceScope};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::Error;
use super::expectations::Expectations;
use super::plan::Event;

/// What an object needs for the effects on it.
pub trait Object:
    Resource<DynamicType = (), Scope: Scope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: Resource<DynamicType = (), Scope: Scope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// How a kind's scope reaches its objects: a namespaced kind within a namespace (or across
/// all), a cluster-scoped kind always across all.
pub trait Scope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(
        client: kube::Client,
        namespace: Option<&str>,
    ) -> Api<K>;
}

impl Scope for NamespaceResourceScope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(
        client: kube::Client,
        namespace: Option<&str>,
    ) -> Api<K> {
        match namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        }
    }
}

impl Scope for ClusterResourceScope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(
        client: kube::Client,
        _namespace: Option<&str>,
    ) -> Api<K> {
        Api::all(client)
    }
}

/// The result of a create.
#[derive(Debug)]
pub enum Created<K> {
    /// Created now; the object as stored.
    Now(K),
    /// An object of that name already existed (a step done before).
    AlreadyExists,
}

/// `namespace/name`, or `name` for cluster-scoped objects.
pub fn key_of(object: &impl Resource) -> String {
    match object.meta().namespace.as_deref() {
        Some(namespace) => format!(
            "{namespace}/{}",
            object.meta().name.as_deref().unwrap_or("")
        ),
        None => object.meta().name.clone().unwrap_or_default(),
    }
}

fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_string(),
    }
}

/// The API as one controller may change it.
#[derive(Clone)]
pub struct Effects {
    client: kube::Client,
    recorder: Arc<Recorder>,
    expectations: Arc<Expectations>,
}

impl Effects {
    /// Effects recorded as `component` (`instance-controller`, ...).
    pub fn new(client: kube::Client, component: &str) -> Effects {
        Effects {
            recorder: Arc::new(Recorder::new(client.clone(), component)),
            client,
            expectations: Arc::new(Expectations::default()),
        }
    }

    /// This controller's own writes, for the stale-cache check.
    pub fn expectations(&self) -> &Expectations {
        &self.expectations
    }

    fn api<K: Object>(&self, namespace: Option<&str>) -> Api<K> {
        <K::Scope as Scope>::api(self.client.clone(), namespace)
    }

    fn api_of<K: Object>(&self, object: &K) -> Api<K> {
        self.api(object.meta().namespace.as_deref())
    }

    /// A live read, for when a cache's silence proves nothing.
    pub async fn read<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>, Error> {
        self.api::<K>(namespace)
            .get_opt(name)
            .await
            .map_err(Error::api(
                "reading",
                format!("{} {}", K::kind(&()), key(namespace, name)),
            ))
    }

    /// Every `K` (a live list, for activations that scan everything).
    pub async fn list<K: Object>(&self) -> Result<Vec<K>, Error> {
        let list = Api::<K>::all(self.client.clone())
            .list(&kube::api::ListParams::default())
            .await
            .map_err(Error::api("listing", K::plural(&()).into_owned()))?;
        Ok(list.items)
    }

    /// Creates `object`; an existing object of that name is success.
    pub async fn create<K: Object>(&self, object: &K) -> Result<Created<K>, Error> {
        let created = self
            .api_of(object)
            .create(&PostParams::default(), object)
            .await
            .or_exists()
            .map_err(Error::api("creating", describe(object)))?;
        Ok(created.map_or(Created::AlreadyExists, Created::Now))
    }

    /// Creates `object`, planned from a read that showed no such object: one that exists now
    /// is a conflict (someone created it since), and the caller plans again.
    pub async fn create_new<K: Object>(&self, object: &K) -> Result<K, Error> {
        self.api_of(object)
            .create(&PostParams::default(), object)
            .await
            .map_err(Error::api("creating", describe(object)))
    }

    /// Replaces `object` (conditional on its resourceVersion).
    pub async fn replace<K: Object>(&self, object: &K) -> Result<K, Error> {
        self.api_of(object)
            .replace(&object.name_any(), &PostParams::default(), object)
            .await
            .map_err(Error::api("replacing", describe(object)))
    }

    /// Deletes `namespace/name` in the background; `false` if it was already gone.
    pub async fn delete<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<bool, Error> {
        let deleted = self
            .api::<K>(namespace)
            .delete(name, &DeleteParams::background())
            .await
            .or_gone()
            .map_err(Error::api(
                "deleting",
                format!("{} {}", K::kind(&()), key(namespace, name)),
            ))?;
        Ok(deleted.is_some())
    }

    /// Deletes exactly `object` (a `uid` precondition) in the background; `false` if it is
    /// gone or its name now belongs to another object.
    pub async fn delete_exactly<K: Object>(&self, object: &K) -> Result<bool, Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: object.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let deleted = self
            .api_of(object)
            .delete(&object.name_any(), &params)
            .await
            .or_gone_or_replaced()
            .map_err(Error::api("deleting", describe(object)))?;
        Ok(deleted.is_some())
    }

    /// Merge-patches `namespace/name`; `None` if it is gone.
    pub async fn patch<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<Option<K>, Error> {
        self.api::<K>(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .or_gone()
            .map_err(Error::api(
                "patching",
                format!("{} {}", K::kind(&()), key(namespace, name)),
            ))
    }

    /// Writes `object`'s status as given (a PUT conditional on its resourceVersion) and
    /// remembers the write.
    pub async fn write_status<K: Object>(&self, object: &K) -> Result<K, Error> {
        let written = self
            .api_of(object)
            .replace_status(&object.name_any(), &PostParams::default(), object)
            .await
            .map_err(Error::api("writing the status of", describe(object)))?;
        self.expectations.expect(&written);
        Ok(written)
    }

    /// Merge-patches `object`'s status with `status` (conditional on its resourceVersion):
    /// for objects whose spec is large, so that the request carries the status alone.
    pub async fn patch_status<K: Object>(
        &self,
        object: &K,
        status: &impl Serialize,
    ) -> Result<K, Error> {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": object.meta().resource_version },
            "status": status,
        });
        let written = self
            .api_of(object)
            .patch_status(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(Error::api("writing the status of", describe(object)))?;
        self.expectations.expect(&written);
        Ok(written)
    }

    /// Adds or removes `finalizer` (conditional on the resourceVersion) and remembers the
    /// write; removing it from an object already gone is success (`None`).
    pub async fn set_finalizer<K: Object>(
        &self,
        object: &K,
        finalizer: &str,
        present: bool,
    ) -> Result<Option<K>, Error> {
        let mut finalizers: Vec<String> = object
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect();
        if present {
            finalizers.push(finalizer.to_string());
        }
        let patch = serde_json::json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": object.resource_version(),
        }});
        let result = self
            .api_of(object)
            .patch(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        let result = if present {
            result.map(Some)
        } else {
            result.or_gone()
        };
        let written = result.map_err(Error::api("updating the finalizers of", describe(object)))?;
        if let Some(written) = &written {
            self.expectations.expect(written);
        }
        Ok(written)
    }

    /// Records `event`, about `object` unless it names another.
    pub async fn record<K: Object>(&self, object: &K, event: &Event) {
        let regarding = event
            .regarding
            .clone()
            .unwrap_or_else(|| corral_client::events::reference(object));
        self.recorder
            .publish(regarding, event.type_, event.reason, event.message.clone())
            .await
    }

    /// Records an Event about `regarding`.
    pub async fn record_about(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: corral_crds::Reason,
        message: String,
    ) {
        self.recorder
            .publish(regarding, type_, reason, message)
            .await
    }
}

/// `Kind namespace/name`, for error messages.
fn describe<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{} {}", K::kind(&()), key_of(object))
}
