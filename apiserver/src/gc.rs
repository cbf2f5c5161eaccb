//! The garbage collector: keeps ownerReferences and deletion propagation true, as
//! kube-controller-manager's GC and namespace controller do for a real cluster.
//!
//! # Definitions
//!
//! - A dependent's owner *exists* if (and only if) an object of the owner's kind and name with
//!   the referenced uid is in the store (checked against the store before acting, never on a
//!   possibly stale cache alone).
//! - An owner is *orphaning* if it is being deleted with the `orphan` finalizer, and
//!   *deleting in the foreground* if it is being deleted with `foregroundDeletion`.
//!
//! # What it converges
//!
//! - Background: a dependent none of whose owners exists is deleted.
//! - A dependent with some owners gone loses the dangling references.
//! - Orphan: dependents of an orphaning owner lose their reference to it; then the owner's
//!   `orphan` finalizer is removed.
//! - Foreground: dependents of an owner deleting in the foreground are deleted (in the
//!   foreground too); once no dependent with `blockOwnerDeletion: true` remains, the owner's
//!   `foregroundDeletion` finalizer is removed.
//! - A namespace being deleted loses its content; when none is left, its `kubernetes`
//!   finalizer goes and the namespace is removed.
//! - An object in a namespace that does not exist (checked against the store) is deleted. The
//!   create path admits namespaces from the watch cache, so a create racing the last moments
//!   of a namespace deletion can land; this is what cleans it up.
//!
//! # Assumptions
//!
//! Every action is a conditional write or delete and "already done" (NotFound) is success, so
//! several API servers may collect at once. Level-triggered: each pass computes from the
//! caches' current state; events only decide when a pass is worth running.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use corral_store::Revision;
use serde_json::{Value, json};

use crate::cache::{CacheEvent, CachedObject, EventType, Since};
use crate::object;
use crate::objects::{self, DeleteOptions, FOREGROUND, ORPHAN, ObjectRef, Propagation};
use crate::resource::ResourceType;
use crate::server::ApiServer;

const POLL: Duration = Duration::from_millis(100);
/// A pass reads every cached object, so its cost grows with the store. After a pass that found
/// nothing to do, the collector waits this many times as long as the pass took before the next
/// one, which keeps it under about a tenth of a core however many objects there are, while
/// every new owned object makes a pass worth running (`corral bench rack` measured a quarter
/// of the API server's CPU in back-to-back passes over 40,000 objects). A pass that acted is
/// followed at the next poll, as its effects need checking.
const REST_PER_PASS: u32 = 9;

pub async fn run(server: Arc<ApiServer>) {
    let mut positions: Vec<Revision> = server.caches().iter().map(|c| c.revision()).collect();
    let mut dirty = true;
    let mut next_resync = tokio::time::Instant::now() + server.config.gc_resync_interval;
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rested = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        for (cache, position) in server.caches().iter().zip(positions.iter_mut()) {
            match cache.since(*position) {
                Since::Events(events, new_position) => {
                    dirty |= events
                        .iter()
                        .any(|e| is_relevant(e, |r, ns| owner_is_live(&server, r, ns)));
                    *position = new_position;
                }
                Since::Expired { .. } => {
                    dirty = true;
                    *position = cache.revision();
                }
            }
        }
        if tokio::time::Instant::now() >= next_resync {
            dirty = true;
            next_resync = tokio::time::Instant::now() + server.config.gc_resync_interval;
        }
        if dirty && tokio::time::Instant::now() >= rested {
            // A pass that acted will cause events; the next pass checks their effect.
            let started = tokio::time::Instant::now();
            dirty = collect(&server).await;
            if !dirty {
                rested = tokio::time::Instant::now() + started.elapsed() * REST_PER_PASS;
            }
        }
    }
}

/// Whether an event can change what the collector would do: a deletion (owners may now be
/// gone), an object being deleted (propagation, namespace content), or owner references that
/// are new or changed and name an owner that is not live (`owner_is_live(reference,
/// namespace)`). A status update of an owned object is none of these, nor is a new object whose
/// owners are all there, so busy owned objects and a stream of new ones do not cause rescans
/// (back-to-back passes over 40,000 objects were a quarter of the API server's CPU in
/// `corral bench rack`).
fn is_relevant(event: &CacheEvent, owner_is_live: impl Fn(&Value, Option<&str>) -> bool) -> bool {
    let value = &event.object.value;
    if event.kind == EventType::Deleted || object::is_deleting(value) {
        return true;
    }
    let refs = object::meta(value).and_then(|m| m.get("ownerReferences"));
    let before = event
        .prev
        .as_ref()
        .and_then(|p| object::meta(&p.value))
        .and_then(|m| m.get("ownerReferences"));
    if refs.is_none() || refs == before {
        return false;
    }
    let namespace = object::namespace(value);
    refs.and_then(Value::as_array)
        .is_none_or(|refs| refs.iter().any(|r| !owner_is_live(r, namespace)))
}

/// Whether the watch cache holds the owner `reference` names (same uid), not being deleted.
/// Only a hint for waking the collector: a pass checks owners against the store.
fn owner_is_live(server: &ApiServer, reference: &Value, dependent_namespace: Option<&str>) -> bool {
    let field = |name: &str| reference.get(name).and_then(Value::as_str).unwrap_or("");
    let group = field("apiVersion")
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or("");
    let Some(resource) = server
        .registry
        .types()
        .iter()
        .find(|t| t.group == group && t.kind == field("kind"))
    else {
        return false;
    };
    let namespace = if resource.namespaced {
        dependent_namespace
    } else {
        None
    };
    server
        .cache(resource)
        .get(&resource.key(namespace, field("name")))
        .is_some_and(|owner| {
            object::uid(&owner.value) == field("uid") && !object::is_deleting(&owner.value)
        })
}

struct Entry {
    resource: Arc<ResourceType>,
    object: Arc<CachedObject>,
}

impl Entry {
    /// The object, for the object layer.
    fn object_ref<'a>(&'a self, server: &'a ApiServer) -> ObjectRef<'a> {
        let value = &self.object.value;
        ObjectRef {
            server,
            resource: &self.resource,
            namespace: object::namespace(value),
            name: object::name(value),
        }
    }

    /// Deletes the object with `propagation`. Failures (already gone, a conflict) are left to
    /// the next pass, which recomputes from the state it then finds.
    async fn delete(&self, server: &ApiServer, propagation: Propagation) {
        let options = DeleteOptions {
            propagation: Some(propagation),
            ..Default::default()
        };
        let _ = objects::delete(self.object_ref(server), &options).await;
    }
}

fn owner_refs(value: &Value) -> Vec<Value> {
    object::meta(value)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn ref_uid(reference: &Value) -> &str {
    reference.get("uid").and_then(Value::as_str).unwrap_or("")
}

/// One pass; returns true if it acted (so another pass should follow).
async fn collect(server: &Arc<ApiServer>) -> bool {
    let (by_uid, all) = index(server);
    let mut referenced = Referenced::default();
    let mut acted = false;
    for dependent in &all {
        acted |= collect_dependent(server, &by_uid, dependent, &mut referenced).await;
    }
    acted |= sweep_orphaned_namespaces(server, &all).await;
    for owner in &all {
        // An owner's finalizer is released only in a pass that has not acted so far: what
        // was just done may add or remove references.
        acted |= release_owner(server, &all, owner, &referenced, acted).await;
    }
    acted
}

/// Every cached object, by uid and as a list.
fn index(server: &ApiServer) -> (HashMap<String, Entry>, Vec<Entry>) {
    let mut by_uid: HashMap<String, Entry> = HashMap::new();
    let mut all: Vec<Entry> = Vec::new();
    for cache in server.caches() {
        let (objects, _) = cache.snapshot();
        for o in objects {
            let entry = Entry {
                resource: cache.resource.clone(),
                object: o.clone(),
            };
            by_uid.insert(
                object::uid(&o.value).to_string(),
                Entry {
                    resource: cache.resource.clone(),
                    object: o,
                },
            );
            all.push(entry);
        }
    }
    (by_uid, all)
}

/// Owners (by uid) that still have dependents referencing them.
#[derive(Default)]
struct Referenced {
    any: HashSet<String>,
    /// Referenced with `blockOwnerDeletion: true`.
    blocking: HashSet<String>,
}

/// What one dependent's owner references say.
#[derive(Default)]
struct References {
    /// Owners that do not exist (checked against the store).
    dangling: Vec<String>,
    /// Owners being deleted with the `orphan` finalizer.
    orphaned: Vec<String>,
    /// Whether some owner is being deleted in the foreground.
    foreground: bool,
}

/// Sorts `refs` of a dependent in `namespace` by what their owners are doing, noting the
/// owners that stay referenced in `referenced`.
async fn classify_references(
    server: &ApiServer,
    by_uid: &HashMap<String, Entry>,
    refs: &[Value],
    namespace: Option<&str>,
    referenced: &mut Referenced,
) -> References {
    let mut found = References::default();
    for r in refs {
        let uid = ref_uid(r);
        match by_uid.get(uid) {
            Some(owner)
                if object::is_deleting(&owner.object.value)
                    && object::finalizers(&owner.object.value)
                        .iter()
                        .any(|f| f == ORPHAN) =>
            {
                found.orphaned.push(uid.to_string());
            }
            Some(owner) => {
                if object::is_deleting(&owner.object.value)
                    && object::finalizers(&owner.object.value)
                        .iter()
                        .any(|f| f == FOREGROUND)
                {
                    found.foreground = true;
                }
                referenced.any.insert(uid.to_string());
                if r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true) {
                    referenced.blocking.insert(uid.to_string());
                }
            }
            None => {
                if !owner_exists(server, r, namespace).await {
                    found.dangling.push(uid.to_string());
                } else {
                    referenced.any.insert(uid.to_string());
                }
            }
        }
    }
    found
}

/// Acts on one dependent: deletes it when all its owners are gone (or in the foreground with
/// an owner), drops references to owners that are gone or orphaning. True if it acted.
async fn collect_dependent(
    server: &ApiServer,
    by_uid: &HashMap<String, Entry>,
    dependent: &Entry,
    referenced: &mut Referenced,
) -> bool {
    let value = &dependent.object.value;
    let refs = owner_refs(value);
    if refs.is_empty() {
        return false;
    }
    let References {
        dangling,
        orphaned,
        foreground,
    } = classify_references(server, by_uid, &refs, object::namespace(value), referenced).await;
    if dangling.len() == refs.len() {
        if object::is_deleting(value) {
            return false;
        }
        tracing::info!(kind = %dependent.resource.kind, name = object::name(value), "deleting dependent whose owners are gone");
        dependent.delete(server, Propagation::Background).await;
        return true;
    }
    let mut acted = false;
    if foreground && !object::is_deleting(value) {
        dependent.delete(server, Propagation::Foreground).await;
        acted = true;
    }
    let drop: Vec<String> = dangling.into_iter().chain(orphaned).collect();
    if !drop.is_empty() {
        let result = objects::mutate(dependent.object_ref(server), |o| {
            let kept: Vec<Value> = owner_refs(o)
                .into_iter()
                .filter(|r| !drop.contains(&ref_uid(r).to_string()))
                .collect();
            let m = object::meta_mut(o);
            if kept.is_empty() {
                m.remove("ownerReferences");
            } else {
                m.insert("ownerReferences".into(), json!(kept));
            }
            true
        })
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not remove owner references");
        }
        acted = true;
    }
    acted
}

/// Acts on one owner being deleted: removes its `orphan` finalizer once no dependent refers
/// to it and its `foregroundDeletion` finalizer once none blocks it (only if the pass has not
/// `acted_before`), and finalizes it if it is a namespace. True if it acted.
async fn release_owner(
    server: &Arc<ApiServer>,
    all: &[Entry],
    owner: &Entry,
    referenced: &Referenced,
    acted_before: bool,
) -> bool {
    let value = &owner.object.value;
    if !object::is_deleting(value) {
        return false;
    }
    let uid = object::uid(value).to_string();
    let finalizers = object::finalizers(value);
    let release_orphan =
        finalizers.iter().any(|f| f == ORPHAN) && !referenced.any.contains(&uid) && !acted_before;
    let release_foreground = finalizers.iter().any(|f| f == FOREGROUND)
        && !referenced.blocking.contains(&uid)
        && !acted_before;
    let mut acted = false;
    if release_orphan || release_foreground {
        let result = objects::mutate(owner.object_ref(server), |o| {
            let kept: Vec<String> = object::finalizers(o)
                .into_iter()
                .filter(|f| {
                    let released =
                        (release_orphan && f == ORPHAN) || (release_foreground && f == FOREGROUND);
                    !released
                })
                .collect();
            object::set_finalizers(o, kept);
            true
        })
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not remove a deletion finalizer");
        }
        acted = true;
    }
    if owner.resource.is_namespace() {
        acted |= finalize_namespace(server, all, owner).await;
    }
    acted
}

/// Deletes a terminating namespace's content; removes the namespace once it is empty.
async fn finalize_namespace(server: &Arc<ApiServer>, all: &[Entry], namespace: &Entry) -> bool {
    let name = object::name(&namespace.object.value);
    let content: Vec<&Entry> = all
        .iter()
        .filter(|e| e.resource.namespaced && object::namespace(&e.object.value) == Some(name))
        .collect();
    if content.is_empty() {
        let namespace_ref = ObjectRef {
            server,
            resource: &namespace.resource,
            namespace: None,
            name,
        };
        let result = objects::mutate(namespace_ref, |o| {
            if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("finalizers");
            }
            true
        })
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, namespace = name, "could not finalize namespace");
        }
        return true;
    }
    let mut acted = false;
    for entry in content {
        let value = &entry.object.value;
        if object::is_deleting(value) {
            continue;
        }
        entry.delete(server, Propagation::Background).await;
        acted = true;
    }
    acted
}

/// Deletes namespaced objects whose namespace is gone from the store.
async fn sweep_orphaned_namespaces(server: &Arc<ApiServer>, all: &[Entry]) -> bool {
    let Some(ns_type) = server.registry.lookup("", "namespaces") else {
        return false;
    };
    let known: HashSet<&str> = all
        .iter()
        .filter(|e| Arc::ptr_eq(&e.resource, ns_type))
        .map(|e| object::name(&e.object.value))
        .collect();
    let mut missing: HashMap<String, bool> = HashMap::new();
    let mut acted = false;
    for entry in all.iter().filter(|e| e.resource.namespaced) {
        let value = &entry.object.value;
        let Some(namespace) = object::namespace(value) else {
            continue;
        };
        if known.contains(namespace) {
            continue;
        }
        let gone = match missing.get(namespace) {
            Some(gone) => *gone,
            None => {
                let gone = matches!(
                    server.store.get(&ns_type.key(None, namespace)).await,
                    Ok(None)
                );
                missing.insert(namespace.to_string(), gone);
                gone
            }
        };
        if gone && !object::is_deleting(value) {
            tracing::info!(kind = %entry.resource.kind, namespace, name = object::name(value), "deleting an object whose namespace is gone");
            entry.delete(server, Propagation::Background).await;
            acted = true;
        }
    }
    acted
}

/// Checks the store (not the cache) for an owner, so a lagging cache never causes a delete.
async fn owner_exists(
    server: &ApiServer,
    reference: &Value,
    dependent_namespace: Option<&str>,
) -> bool {
    let api_version = reference
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = reference.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let Some(resource) = server
        .registry
        .types()
        .iter()
        .find(|t| t.group == group && t.kind == kind)
    else {
        // An owner of a kind this server does not serve cannot be checked; keep the reference.
        return true;
    };
    let namespace = match (resource.namespaced, dependent_namespace) {
        // A cluster-scoped dependent cannot name a namespaced owner; Kubernetes treats such a
        // reference as unresolvable and never collects the dependent because of it.
        (true, None) => return true,
        (true, namespace) => namespace,
        (false, _) => None,
    };
    match server.store.get(&resource.key(namespace, name)).await {
        Ok(Some(kv)) => {
            object::decode(&kv).is_ok_and(|s| object::uid(&s.object) == ref_uid(reference))
        }
        Ok(None) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, prev: Option<Value>, now: Value) -> CacheEvent {
        let cached = |v: Value| Arc::new(CachedObject::new("/k".into(), 1, v));
        CacheEvent::new(kind, cached(now), prev.map(cached))
    }

    #[test]
    fn only_events_that_can_change_a_collection_decision_wake_the_collector() {
        let live = |r: &Value, _: Option<&str>| r["uid"] != "gone";
        let owned = json!({"metadata": {"name": "a", "ownerReferences": [{"uid": "u1"}]}, "status": {"x": 1}});
        let mut status_update = owned.clone();
        status_update["status"]["x"] = json!(2);
        let mut new_owner = owned.clone();
        new_owner["metadata"]["ownerReferences"] = json!([{"uid": "u2"}]);
        let mut deleting = owned.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let plain = json!({"metadata": {"name": "b"}});
        let cases = [
            (
                "a status update of an owned object",
                event(EventType::Modified, Some(owned.clone()), status_update),
                false,
            ),
            (
                "an object without owners",
                event(EventType::Added, None, plain.clone()),
                false,
            ),
            (
                "a new owned object whose owner is there",
                event(EventType::Added, None, owned.clone()),
                false,
            ),
            (
                "a new owned object whose owner is not",
                event(
                    EventType::Added,
                    None,
                    json!({"metadata": {"name": "c", "ownerReferences": [{"uid": "gone"}]}}),
                ),
                true,
            ),
            (
                "owner references changed to a live owner",
                event(EventType::Modified, Some(owned.clone()), new_owner),
                false,
            ),
            (
                "owner references changed to a missing owner",
                event(
                    EventType::Modified,
                    Some(owned.clone()),
                    json!({"metadata": {"name": "a", "ownerReferences": [{"uid": "gone"}]}}),
                ),
                true,
            ),
            (
                "deletion started",
                event(EventType::Modified, Some(owned.clone()), deleting),
                true,
            ),
            (
                "a deletion",
                event(EventType::Deleted, Some(plain.clone()), plain),
                true,
            ),
        ];
        for (what, event, expected) in cases {
            assert_eq!(is_relevant(&event, live), expected, "{what}");
        }
    }
}
