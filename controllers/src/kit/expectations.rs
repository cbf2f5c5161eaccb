//! Expectations: a controller never plans from a cached object older than its own last write
//! to it (docs/rack.md, "Stale caches").
//!
//! Corral's resourceVersions are one increasing integer (the store revision), so "older" is
//! exact: after each write a controller remembers the resourceVersion the API server returned,
//! and treats a cached copy below it as stale until the watch delivers the write.
//!
//! # Invariants
//! - An expectation is dropped as soon as a cached copy at or above it is seen, so the map
//!   holds only writes the cache has not caught up with.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::{Resource, ResourceExt};

/// The resourceVersion of `object`, as a number (0 if it has none).
pub fn resource_version(object: &impl Resource) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// Object uid → the resourceVersion of this controller's last write to it.
#[derive(Debug, Default)]
pub struct Expectations {
    written: Mutex<HashMap<String, u64>>,
}

impl Expectations {
    /// Remembers `written`, what a write returned.
    pub fn expect(&self, written: &impl Resource) {
        if let Some(uid) = written.uid() {
            self.written
                .lock()
                .expect("expectations lock")
                .insert(uid, resource_version(written));
        }
    }

    /// Whether the cached `object` is older than this controller's last write to it.
    pub fn is_stale(&self, object: &impl Resource) -> bool {
        let Some(uid) = object.uid() else {
            return false;
        };
        let mut written = self.written.lock().expect("expectations lock");
        match written.get(&uid) {
            Some(expected) if resource_version(object) < *expected => true,
            Some(_) => {
                written.remove(&uid);
                false
            }
            None => false,
        }
    }
}
