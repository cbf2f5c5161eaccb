//! Events: what happened and why, for `kubectl describe`, `corralctl events` and the audit
//! trail. Written as core/v1 `Event`s (the kind `kubectl get events` and `describe` read).
//!
//! # Guarantees
//! - Repeats of one (object, reason, message) within [`AGGREGATION_WINDOW`] update one Event's
//!   `count` and `lastTimestamp` instead of creating another, as kubelet's recorder does, so a
//!   crash-looping instance does not flood the store.
//! # Caveats
//! - Publishing is best effort: a failed write is logged and dropped. An Event is a record of a
//!   decision, never the decision itself; nothing reads Events to decide.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use corral_crds::Reason;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::clock;

/// Repeats within this window are folded into one Event.
pub const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);

/// How often entries older than the window are dropped from memory. Not at every publish: a
/// scan of every entry each time made publishing quadratic (10,000 instances placed within the
/// window: `corral bench rack`).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// `Normal` or `Warning`, as Kubernetes has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Publishes Events on behalf of one component (`instance-controller`, `node-agent/sled-3`, ...).
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    aggregation: Mutex<Aggregation>,
}

/// The Events published within the window, by (object uid, reason, message).
#[derive(Default)]
struct Aggregation {
    recent: HashMap<(String, Reason, String), Recent>,
    /// When entries older than the window were last dropped.
    pruned: Option<jiff::Timestamp>,
}

#[derive(Clone)]
struct Recent {
    name: String,
    namespace: String,
    count: i32,
    first: jiff::Timestamp,
}

/// A reference to `object` for `involvedObject`.
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: object.meta().name.clone(),
        namespace: object.meta().namespace.clone(),
        uid: object.meta().uid.clone(),
        resource_version: object.meta().resource_version.clone(),
        field_path: None,
    }
}

impl Recorder {
    pub fn new(client: kube::Client, component: impl Into<String>) -> Recorder {
        Recorder {
            client,
            component: component.into(),
            host: None,
            aggregation: Mutex::new(Aggregation::default()),
        }
    }

    /// Names the host (the sled) in `source.host`.
    pub fn with_host(mut self, host: impl Into<String>) -> Recorder {
        self.host = Some(host.into());
        self
    }

    /// Records a Normal event about `object`.
    pub async fn normal<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: Reason,
        message: impl Into<String>,
    ) {
        self.publish(reference(object), EventType::Normal, reason, message.into())
            .await
    }

    /// Records a Warning event about `object`.
    pub async fn warning<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: Reason,
        message: impl Into<String>,
    ) {
        self.publish(
            reference(object),
            EventType::Warning,
            reason,
            message.into(),
        )
        .await
    }

    /// Records an event about the object `involved` refers to. Cluster-scoped objects' events
    /// go to the `default` namespace, as Kubernetes does for nodes. A failure is logged.
    pub async fn publish(
        &self,
        involved: ObjectReference,
        type_: EventType,
        reason: Reason,
        message: String,
    ) {
        if let Err(error) = self.try_publish(involved, type_, reason, message).await {
            tracing::warn!(%error, %reason, "publishing an event failed");
        }
    }

    /// [`Recorder::publish`], for a caller that reports the failure itself.
    pub async fn try_publish(
        &self,
        involved: ObjectReference,
        type_: EventType,
        reason: Reason,
        message: String,
    ) -> Result<(), kube::Error> {
        let now = clock::now();
        let key = (
            involved.uid.clone().unwrap_or_default(),
            reason,
            message.clone(),
        );
        let repeat = {
            let mut aggregation = self.aggregation.lock().expect("events lock");
            if aggregation
                .pruned
                .is_none_or(|at| clock::since(at) >= PRUNE_EVERY)
            {
                aggregation
                    .recent
                    .retain(|_, r| clock::since(r.first) < AGGREGATION_WINDOW);
                aggregation.pruned = Some(now);
            }
            aggregation
                .recent
                .get_mut(&key)
                .filter(|r| clock::since(r.first) < AGGREGATION_WINDOW)
                .map(|r| {
                    r.count += 1;
                    r.clone()
                })
        };
        match repeat {
            Some(recent) => {
                let api: Api<Event> = Api::namespaced(self.client.clone(), &recent.namespace);
                let patch = serde_json::json!({
                    "count": recent.count,
                    "lastTimestamp": Time(now),
                });
                api.patch(&recent.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            None => {
                let namespace = involved
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_string());
                let name = format!(
                    "{}.{:016x}",
                    involved.name.as_deref().unwrap_or("object"),
                    rand::random::<u64>()
                );
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    involved_object: involved,
                    reason: Some(reason.as_str().to_string()),
                    message: Some(message),
                    type_: Some(type_.as_str().to_string()),
                    count: Some(1),
                    first_timestamp: Some(Time(now)),
                    last_timestamp: Some(Time(now)),
                    source: Some(EventSource {
                        component: Some(self.component.clone()),
                        host: self.host.clone(),
                    }),
                    reporting_component: Some(self.component.clone()),
                    reporting_instance: self.host.clone(),
                    ..Default::default()
                };
                let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
                let created = api.create(&PostParams::default(), &event).await;
                if created.is_ok() {
                    self.aggregation.lock().expect("events lock").recent.insert(
                        key,
                        Recent {
                            name,
                            namespace,
                            count: 1,
                            first: now,
                        },
                    );
                }
                created.map(|_| ())
            }
        }
    }
}
