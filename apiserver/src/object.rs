//! Objects as the server handles them: JSON values with Kubernetes metadata, and their stored
//! encoding.
//!
//! # Invariants
//!
//! - The stored value never contains `metadata.resourceVersion`: the resource version *is* the
//!   store's `mod_revision`, set on the way out by [`decode`]. One source of truth, so the two
//!   can never disagree.
//! - Stored objects carry the storage version's `apiVersion`; each response sets the
//!   `apiVersion` of the version the client asked for.

use bytes::Bytes;
use corral_store::KeyValue;
use serde_json::{Map, Value, json};

/// An object read from the store, with the revision that produced it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub object: Value,
    pub revision: i64,
}

pub fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

pub fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    meta(object)?.get(field)?.as_str()
}

pub fn name(object: &Value) -> &str {
    meta_str(object, "name").unwrap_or("")
}

pub fn namespace(object: &Value) -> Option<&str> {
    meta_str(object, "namespace").filter(|s| !s.is_empty())
}

pub fn uid(object: &Value) -> &str {
    meta_str(object, "uid").unwrap_or("")
}

pub fn finalizers(object: &Value) -> Vec<String> {
    meta(object)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_finalizers(object: &mut Value, list: Vec<String>) {
    let m = meta_mut(object);
    if list.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(list));
    }
}

pub fn is_deleting(object: &Value) -> bool {
    meta(object)
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|v| !v.is_null())
}

pub fn generation(object: &Value) -> i64 {
    meta(object)
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The current time as Kubernetes writes `metav1.Time`: RFC 3339, UTC, whole seconds.
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A new random (version 4) UUID, as `metadata.uid` and audit IDs are: drawn from the
/// thread's generator, seeded from the system's, rather than a system call each.
pub fn new_uid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Serializes an object for the store, without its resourceVersion.
pub fn encode(object: &Value) -> Bytes {
    let mut copy;
    let to_write = if meta(object).is_some_and(|m| m.contains_key("resourceVersion")) {
        copy = object.clone();
        meta_mut(&mut copy).remove("resourceVersion");
        &copy
    } else {
        object
    };
    Bytes::from(serde_json::to_vec(to_write).expect("a JSON value always serializes"))
}

#[derive(Debug, thiserror::Error)]
#[error("stored value under {key} is not a JSON object")]
pub struct CorruptObject {
    pub key: String,
    #[source]
    pub source: Option<serde_json::Error>,
}

/// Deserializes a stored value and sets its resourceVersion from the store revision.
pub fn decode(kv: &KeyValue) -> Result<Stored, CorruptObject> {
    let mut object: Value = serde_json::from_slice(&kv.value).map_err(|e| CorruptObject {
        key: kv.key.clone(),
        source: Some(e),
    })?;
    if !object.is_object() {
        return Err(CorruptObject {
            key: kv.key.clone(),
            source: None,
        });
    }
    meta_mut(&mut object).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(Stored {
        object,
        revision: kv.mod_revision,
    })
}

/// Sets the resourceVersion of an object to a revision.
pub fn set_resource_version(object: &mut Value, revision: i64) {
    meta_mut(object).insert("resourceVersion".into(), json!(revision.to_string()));
}

/// Everything but `metadata` and `status`: what `generation` counts changes of.
pub fn spec_part_differs(a: &Value, b: &Value, ignore_status: bool) -> bool {
    // Compared in place: copying both objects without metadata and status cost two whole-object
    // clones per write.
    let counted = |key: &str| key != "metadata" && !(ignore_status && key == "status");
    let empty = Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let len = |m: &Map<String, Value>| m.keys().filter(|key| counted(key)).count();
    len(a) != len(b)
        || a.iter()
            .filter(|(key, _)| counted(key))
            .any(|(key, value)| b.get(key) != Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_outside_metadata_and_status_count_for_the_generation() {
        let base = json!({"metadata": {"name": "a"}, "spec": {"cpus": 1}, "status": {"x": 1}});
        let cases = [
            (
                "metadata only",
                json!({"metadata": {"name": "b"}, "spec": {"cpus": 1}, "status": {"x": 1}}),
                false,
                false,
            ),
            (
                "status, ignored",
                json!({"metadata": {"name": "a"}, "spec": {"cpus": 1}, "status": {"x": 2}}),
                true,
                false,
            ),
            (
                "status, counted",
                json!({"metadata": {"name": "a"}, "spec": {"cpus": 1}, "status": {"x": 2}}),
                false,
                true,
            ),
            (
                "spec changed",
                json!({"metadata": {"name": "a"}, "spec": {"cpus": 2}, "status": {"x": 1}}),
                true,
                true,
            ),
            (
                "a field added",
                json!({"metadata": {"name": "a"}, "spec": {"cpus": 1}, "status": {"x": 1}, "data": 1}),
                true,
                true,
            ),
            (
                "a field removed",
                json!({"metadata": {"name": "a"}, "status": {"x": 1}}),
                true,
                true,
            ),
            (
                "status removed, ignored",
                json!({"metadata": {"name": "a"}, "spec": {"cpus": 1}}),
                true,
                false,
            ),
        ];
        for (what, other, ignore_status, differs) in cases {
            assert_eq!(
                spec_part_differs(&base, &other, ignore_status),
                differs,
                "{what}"
            );
            assert_eq!(
                spec_part_differs(&other, &base, ignore_status),
                differs,
                "{what}, reversed"
            );
        }
    }
}
