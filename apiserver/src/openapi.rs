//! OpenAPI v3 documents, one per group version, built once at start from the registry (the
//! routes that serve them are in `handlers::openapi`).
//!
//! What matters to clients (k8s-api.md §3): each object path's PATCH lists a `fieldValidation`
//! query parameter (so kubectl validates on the server instead of downloading OpenAPI v2) and
//! exactly the three patch types custom resources support — never strategic merge patch, or
//! `kubectl apply` would send one. `components.schemas` carries each kind's schema with its
//! `x-kubernetes-group-version-kind`, which `kubectl explain` looks up.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::resource::{Registry, ResourceType, Version};

/// Every group version's document and its content hash.
pub struct Documents {
    /// "apis/G/V" or "api/v1" → (hash, document).
    by_path: BTreeMap<String, (String, Value)>,
}

impl Documents {
    pub fn build(registry: &Registry) -> Documents {
        let mut by_path = BTreeMap::new();
        for (group, versions) in registry.groups() {
            for version in versions {
                let path = if group.is_empty() {
                    format!("api/{version}")
                } else {
                    format!("apis/{group}/{version}")
                };
                let document = document_for(registry, &group, &version);
                let hash = hash_of(&document);
                by_path.insert(path, (hash, document));
            }
        }
        Documents { by_path }
    }

    /// The `/openapi/v3` index: each group version's document path, with its hash in the URL
    /// so clients may cache it.
    pub fn index(&self) -> Value {
        let paths: Map<String, Value> = self
            .by_path
            .iter()
            .map(|(path, (hash, _))| {
                (
                    path.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
                )
            })
            .collect();
        json!({"paths": paths})
    }

    /// The document of one group version, by its path ("apis/G/V" or "api/v1").
    pub fn document(&self, path: &str) -> Option<&Value> {
        self.by_path.get(path).map(|(_, document)| document)
    }
}

fn hash_of(value: &Value) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

fn schema_id(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    if group.is_empty() {
        format!("io.k8s.api.core.{version}.{kind}")
    } else {
        format!("{}.{version}.{kind}", reversed.join("."))
    }
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn object_meta_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "properties": {
            "name": s("Name must be unique within a namespace."),
            "generateName": s("An optional prefix used to generate a unique name when name is not set."),
            "namespace": s("The namespace of a namespaced object."),
            "uid": s("A unique value set by the server when the object is created."),
            "resourceVersion": s("An opaque value that changes whenever the object is written."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number of the desired state; only spec changes increment it."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "When the object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "When deletion was requested; the object goes once its finalizers are gone."},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values for selecting objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Unstructured key value map for tools."},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "set", "description": "Must be empty before the object is deleted."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"], "description": "Objects this object depends on."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "Which manager owns which fields."},
        }
    })
}

fn document_for(registry: &Registry, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(OBJECT_META.into(), object_meta_schema());
    for t in registry.types_at(group, version) {
        add_resource(&mut paths, &mut schemas, t, version);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Corral", "version": "v1.32.4-corral"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn add_resource(
    paths: &mut Map<String, Value>,
    schemas: &mut Map<String, Value>,
    t: &Arc<ResourceType>,
    version: &str,
) {
    let Some(v) = t.version(version) else { return };
    let names = Names::new(t, version);
    add_schemas(schemas, t, v, &names);
    add_paths(paths, t, version, &names);
}

/// How a kind's documents name it at one version.
struct Names {
    /// Its `x-kubernetes-group-version-kind`.
    gvk: Value,
    /// The ids of its schema and its list's.
    id: String,
    list_id: String,
}

impl Names {
    fn new(t: &ResourceType, version: &str) -> Names {
        Names {
            gvk: json!({"group": t.group, "version": version, "kind": t.kind}),
            id: schema_id(&t.group, version, &t.kind),
            list_id: schema_id(&t.group, version, &t.list_kind),
        }
    }
}

/// The kind's schema (with `metadata` referring to ObjectMeta) and its list's.
fn add_schemas(schemas: &mut Map<String, Value>, t: &ResourceType, v: &Version, names: &Names) {
    let version = v.name.as_str();
    let Names { gvk, id, list_id } = names;
    let mut schema = v.raw_schema.clone();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "description": "Standard object's metadata."}),
        );
    }
    schema["x-kubernetes-group-version-kind"] = json!([gvk]);
    schemas.insert(id.clone(), schema);
    schemas.insert(
        list_id.clone(),
        json!({
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{id}")}},
            },
            "x-kubernetes-group-version-kind": [{"group": t.group, "version": version, "kind": t.list_kind}],
        }),
    );
}

/// The collection, object and (if any) status paths of the kind, with their operations.
fn add_paths(paths: &mut Map<String, Value>, t: &ResourceType, version: &str, names: &Names) {
    let Names { gvk, id, list_id } = names;
    let base = if t.group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{}/{version}", t.group)
    };
    let scope = if t.namespaced {
        format!("{base}/namespaces/{{namespace}}")
    } else {
        base.clone()
    };
    let object_ref = json!({"$ref": format!("#/components/schemas/{id}")});
    let list_ref = json!({"$ref": format!("#/components/schemas/{list_id}")});
    let body = |r: &Value| json!({"content": {"application/json": {"schema": r}, "application/yaml": {"schema": r}}});
    let ok = |r: &Value| json!({"200": {"description": "OK", "content": {"application/json": {"schema": r}}}});
    let param = |name: &str, location: &str| json!({"name": name, "in": location, "schema": {"type": "string"}, "uniqueItems": true, "required": location == "path"});
    let mut path_params = vec![param("name", "path")];
    if t.namespaced {
        path_params.push(param("namespace", "path"));
    }
    let write_params = vec![
        param("dryRun", "query"),
        param("fieldManager", "query"),
        param("fieldValidation", "query"),
    ];
    let mut patch_params = write_params.clone();
    patch_params.push(
        json!({"name": "force", "in": "query", "schema": {"type": "boolean"}, "uniqueItems": true}),
    );
    let patch_body = json!({"content": {
        "application/json-patch+json": {"schema": {"type": "object"}},
        "application/merge-patch+json": {"schema": {"type": "object"}},
        "application/apply-patch+yaml": {"schema": {"type": "object"}},
    }});
    let op = |action: &str, params: &Vec<Value>, request: Option<Value>, response: Value| {
        let mut o = json!({
            "operationId": format!("{action}{}", t.kind),
            "parameters": params,
            "responses": response,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        });
        if let Some(r) = request {
            o["requestBody"] = r;
        }
        o
    };
    let collection_params: Vec<Value> = if t.namespaced {
        vec![param("namespace", "path")]
    } else {
        vec![]
    };
    let list_params: Vec<Value> = [
        "labelSelector",
        "fieldSelector",
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
        "watch",
        "allowWatchBookmarks",
        "timeoutSeconds",
    ]
    .iter()
    .map(|p| param(p, "query"))
    .collect();
    let mut collection = json!({
        "parameters": collection_params,
        "get": op("list", &list_params, None, ok(&list_ref)),
        "post": op("post", &write_params, Some(body(&object_ref)), json!({"201": {"description": "Created", "content": {"application/json": {"schema": object_ref}}}})),
    });
    if t.supports_delete_collection() {
        collection["delete"] = op(
            "deletecollection",
            &vec![],
            None,
            ok(&json!({"type": "object"})),
        );
    }
    paths.insert(format!("{scope}/{}", t.plural), collection);
    paths.insert(
        format!("{scope}/{}/{{name}}", t.plural),
        json!({
            "parameters": path_params,
            "get": op("get", &vec![], None, ok(&object_ref)),
            "put": op("put", &write_params, Some(body(&object_ref)), ok(&object_ref)),
            "patch": op("patch", &patch_params, Some(patch_body.clone()), ok(&object_ref)),
            "delete": op("delete", &vec![param("dryRun", "query"), param("propagationPolicy", "query")], None, ok(&json!({"type": "object"}))),
        }),
    );
    if t.has_status {
        paths.insert(
            format!("{scope}/{}/{{name}}/status", t.plural),
            json!({
                "parameters": path_params,
                "get": op("get", &vec![], None, ok(&object_ref)),
                "put": op("put", &write_params, Some(body(&object_ref)), ok(&object_ref)),
                "patch": op("patch", &patch_params, Some(patch_body), ok(&object_ref)),
            }),
        );
    }
    if t.namespaced {
        paths.insert(
            format!("{base}/{}", t.plural),
            json!({"get": op("list", &list_params, None, ok(&list_ref))}),
        );
    }
}
