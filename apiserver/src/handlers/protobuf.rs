//! Decoding of Kubernetes protobuf request bodies for the built-in kinds client-go's typed
//! clients send so: core Namespaces, the RBAC kinds (`kubectl create rolebinding`) and the self
//! reviews of `authorization.k8s.io/v1` (`kubectl auth can-i`).
//!
//! client-go's typed clientset sends core/v1 objects as `application/vnd.kubernetes.protobuf`
//! (`kubectl create namespace` does), even though it accepts JSON replies. This module turns
//! such a body into the equivalent JSON object for the fields this server stores; everything
//! else keeps speaking JSON. Custom resources never arrive as protobuf.
//!
//! Wire format: the 4-byte magic `k8s\0`, then a `runtime.Unknown` message
//! (1: typeMeta {1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding, 4: contentType) whose
//! `raw` is the object's own message. Only the fields listed below are decoded; unknown
//! fields are skipped, as protobuf requires.

use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult, Reason};

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

struct Reader<'a> {
    bytes: &'a [u8],
}

enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// The next (field number, value), `None` at the end, `Err` on malformed input.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ()> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint().ok_or(())?;
        let field = match key & 7 {
            0 => {
                self.varint().ok_or(())?;
                Field::Varint
            }
            1 => {
                self.bytes = self.bytes.get(8..).ok_or(())?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(self.varint().ok_or(())?).map_err(|_| ())?;
                if len > self.bytes.len() {
                    return Err(());
                }
                let (data, rest) = self.bytes.split_at(len);
                self.bytes = rest;
                Field::Bytes(data)
            }
            5 => {
                self.bytes = self.bytes.get(4..).ok_or(())?;
                Field::Other
            }
            _ => return Err(()),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn text(data: &[u8]) -> Result<String, ()> {
    String::from_utf8(data.to_vec()).map_err(|_| ())
}

fn fields<'a>(
    data: &'a [u8],
    mut each: impl FnMut(u64, Field<'a>) -> Result<(), ()>,
) -> Result<(), ()> {
    let mut reader = Reader { bytes: data };
    while let Some((number, field)) = reader.next()? {
        each(number, field)?;
    }
    Ok(())
}

fn string_map_entry(data: &[u8]) -> Result<(String, String), ()> {
    let (mut key, mut value) = (String::new(), String::new());
    fields(data, |n, f| {
        match (n, f) {
            (1, Field::Bytes(b)) => key = text(b)?,
            (2, Field::Bytes(b)) => value = text(b)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok((key, value))
}

/// ObjectMeta: the fields a client may set on create or update.
fn object_meta(data: &[u8]) -> Result<Value, ()> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    fields(data, |n, f| {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                meta.insert("name".into(), json!(text(b)?));
            }
            (2, Field::Bytes(b)) => {
                meta.insert("generateName".into(), json!(text(b)?));
            }
            (3, Field::Bytes(b)) => {
                meta.insert("namespace".into(), json!(text(b)?));
            }
            (5, Field::Bytes(b)) => {
                meta.insert("uid".into(), json!(text(b)?));
            }
            (6, Field::Bytes(b)) => {
                meta.insert("resourceVersion".into(), json!(text(b)?));
            }
            (11, Field::Bytes(b)) => {
                let (k, v) = string_map_entry(b)?;
                labels.insert(k, json!(v));
            }
            (12, Field::Bytes(b)) => {
                let (k, v) = string_map_entry(b)?;
                annotations.insert(k, json!(v));
            }
            (14, Field::Bytes(b)) => finalizers.push(json!(text(b)?)),
            _ => {}
        }
        Ok(())
    })?;
    for (name, value) in [("labels", labels), ("annotations", annotations)] {
        if !value.is_empty() {
            meta.insert(name.into(), Value::Object(value));
        }
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// A core/v1 Namespace: metadata (1), spec (2: finalizers 1).
fn namespace(data: &[u8]) -> Result<Value, ()> {
    let mut object = json!({"apiVersion": "v1", "kind": "Namespace"});
    fields(data, |n, f| {
        match (n, f) {
            (1, Field::Bytes(b)) => object["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b)) => {
                let mut finalizers = Vec::new();
                fields(b, |n, f| {
                    if let (1, Field::Bytes(s)) = (n, f) {
                        finalizers.push(json!(text(s)?));
                    }
                    Ok(())
                })?;
                if !finalizers.is_empty() {
                    object["spec"] = json!({"finalizers": finalizers});
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(object)
}

/// The strings of a message whose fields are all strings: field number → JSON name.
fn strings(data: &[u8], names: &[(u64, &str)]) -> Result<Value, ()> {
    let mut object = Map::new();
    fields(data, |n, f| {
        if let (Field::Bytes(b), Some((_, name))) = (f, names.iter().find(|(k, _)| *k == n)) {
            object.insert((*name).into(), json!(text(b)?));
        }
        Ok(())
    })?;
    Ok(Value::Object(object))
}

/// authorization.k8s.io/v1 SelfSubjectAccessReview: spec (2) {resourceAttributes (1),
/// nonResourceAttributes (2)}; SelfSubjectRulesReview: spec (2) {namespace (1)}.
fn review(kind: &str, data: &[u8]) -> Result<Value, ()> {
    let mut object = json!({"apiVersion": "authorization.k8s.io/v1", "kind": kind, "spec": {}});
    fields(data, |n, f| {
        if let (2, Field::Bytes(spec)) = (n, f) {
            fields(spec, |n, f| {
                match (kind, n, f) {
                    ("SelfSubjectAccessReview", 1, Field::Bytes(b)) => {
                        object["spec"]["resourceAttributes"] = strings(
                            b,
                            &[
                                (1, "namespace"),
                                (2, "verb"),
                                (3, "group"),
                                (4, "version"),
                                (5, "resource"),
                                (6, "subresource"),
                                (7, "name"),
                            ],
                        )?
                    }
                    ("SelfSubjectAccessReview", 2, Field::Bytes(b)) => {
                        object["spec"]["nonResourceAttributes"] =
                            strings(b, &[(1, "path"), (2, "verb")])?
                    }
                    ("SelfSubjectRulesReview", 1, Field::Bytes(b)) => {
                        object["spec"]["namespace"] = json!(text(b)?)
                    }
                    _ => {}
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(object)
}

/// rbac.authorization.k8s.io/v1: Role and ClusterRole (metadata 1, rules 2: PolicyRule {verbs
/// 1, apiGroups 2, resources 3, resourceNames 4, nonResourceURLs 5}); RoleBinding and
/// ClusterRoleBinding (metadata 1, subjects 2: {kind 1, apiGroup 2, name 3, namespace 4},
/// roleRef 3: {apiGroup 1, kind 2, name 3}).
fn rbac(kind: &str, data: &[u8]) -> Result<Value, ()> {
    let mut object = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind});
    let binding = kind.ends_with("Binding");
    let mut rules = Vec::new();
    let mut subjects = Vec::new();
    fields(data, |n, f| {
        match (n, f, binding) {
            (1, Field::Bytes(b), _) => object["metadata"] = object_meta(b)?,
            (2, Field::Bytes(b), false) => {
                let mut rule = Map::new();
                let names = [
                    "verbs",
                    "apiGroups",
                    "resources",
                    "resourceNames",
                    "nonResourceURLs",
                ];
                fields(b, |n, f| {
                    if let (Field::Bytes(s), Some(name)) =
                        (f, names.get((n as usize).wrapping_sub(1)))
                    {
                        rule.entry(*name)
                            .or_insert_with(|| json!([]))
                            .as_array_mut()
                            .ok_or(())?
                            .push(json!(text(s)?));
                    }
                    Ok(())
                })?;
                rules.push(Value::Object(rule));
            }
            (2, Field::Bytes(b), true) => subjects.push(strings(
                b,
                &[(1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace")],
            )?),
            (3, Field::Bytes(b), true) => {
                object["roleRef"] = strings(b, &[(1, "apiGroup"), (2, "kind"), (3, "name")])?
            }
            _ => {}
        }
        Ok(())
    })?;
    if binding {
        object["subjects"] = Value::Array(subjects);
    } else {
        object["rules"] = Value::Array(rules);
    }
    Ok(object)
}

/// Decodes a protobuf body for `kind` of the core group into JSON.
pub fn decode(kind: &str, body: &[u8]) -> ApiResult<Value> {
    let bad =
        || ApiError::bad_request("the request body is not a valid Kubernetes protobuf message");
    let envelope = body.strip_prefix(b"k8s\0").ok_or_else(bad)?;
    let mut raw = None;
    let mut declared_kind = String::new();
    fields(envelope, |n, f| {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => fields(type_meta, |n, f| {
                if let (2, Field::Bytes(k)) = (n, f) {
                    declared_kind = text(k)?;
                }
                Ok(())
            })?,
            (2, Field::Bytes(r)) => raw = Some(r),
            _ => {}
        }
        Ok(())
    })
    .map_err(|_| bad())?;
    let raw = raw.ok_or_else(bad)?;
    if !declared_kind.is_empty() && declared_kind != kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({declared_kind}) does not match the expected kind ({kind})"
        )));
    }
    match kind {
        "Namespace" => namespace(raw).map_err(|_| bad()),
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            rbac(kind, raw).map_err(|_| bad())
        }
        "SelfSubjectAccessReview" | "SelfSubjectRulesReview" => {
            review(kind, raw).map_err(|_| bad())
        }
        _ => Err(ApiError::new(
            Reason::UnsupportedMediaType,
            format!(
                "protobuf request bodies are not supported for {kind}; send application/json or application/yaml"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, data: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) | 2) as u8, data.len() as u8];
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn namespace_with_labels_decodes_to_json() {
        let label = [field(1, b"team"), field(2, b"a")].concat();
        let meta = [field(1, b"demo"), field(11, &label)].concat();
        let namespace = field(1, &meta);
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [
            b"k8s\0".to_vec(),
            field(1, &type_meta),
            field(2, &namespace),
        ]
        .concat();
        let value = decode("Namespace", &body).unwrap();
        assert_eq!(
            value,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"team": "a"}}})
        );
    }

    #[test]
    fn garbage_is_a_bad_request_not_a_panic() {
        for body in [
            &b""[..],
            b"k8s",
            b"k8s\0\xff\xff\xff",
            b"k8s\0\x12\x7f",
            b"json",
        ] {
            assert_eq!(
                decode("Namespace", body).unwrap_err().reason,
                Reason::BadRequest
            );
        }
    }
}
