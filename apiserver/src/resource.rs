//! The registry of served resource types: every CustomResourceDefinition loaded at start, plus
//! the built-in kinds (core/v1 `namespaces` and `events`, coordination.k8s.io/v1 `leases`,
//! rbac.authorization.k8s.io/v1 `roles`, `clusterroles`, `rolebindings`,
//! `clusterrolebindings`),
//! which are described by CRDs embedded in the binary so that one code path serves all kinds.
//!
//! # Invariants
//!
//! - A resource type is identified by (group, plural); it is served at every version the CRD
//!   marks `served`, and stored once under a key that does not depend on the version (versions
//!   of one CRD share a schema-compatible representation; no conversion webhooks).
//! - Two CRDs may not claim the same (group, plural), kind or short name; loading fails
//!   instead of guessing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use corral_apimachinery::jsonpath::JsonPath;
use corral_apimachinery::schema::Structural;
use serde_json::Value;

use crate::error::Target;

/// One additionalPrinterColumn.
#[derive(Clone, Debug)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: JsonPath,
}

/// One served version of a resource type.
#[derive(Debug)]
pub struct Version {
    pub name: String,
    pub storage: bool,
    pub schema: Structural,
    /// The raw openAPIV3Schema, for OpenAPI documents and server-side apply.
    pub raw_schema: Value,
    pub printer_columns: Vec<PrinterColumn>,
    /// Field selectors this version supports beyond metadata.name/namespace: (path, jsonpath).
    pub selectable_fields: Vec<(String, JsonPath)>,
}

#[derive(Debug)]
pub struct ResourceType {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub has_status: bool,
    pub versions: Vec<Version>,
    /// A built-in kind (namespaces, events, leases). Like Kubernetes' typed decoders, the
    /// server fills in a missing `apiVersion`/`kind` of their request bodies from the URL;
    /// custom resources must carry both.
    pub builtin: bool,
}

impl ResourceType {
    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    pub fn storage_version(&self) -> &Version {
        self.versions
            .iter()
            .find(|v| v.storage)
            .unwrap_or(&self.versions[0])
    }

    /// The first served version, which discovery reports as preferred.
    pub fn preferred_version(&self) -> &Version {
        &self.versions[0]
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The store key prefix of every object of this type: `/registry/<group>/<plural>/`.
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The key prefix of one namespace's objects (for a namespaced type).
    pub fn namespace_prefix(&self, namespace: &str) -> String {
        format!("{}{namespace}/", self.key_prefix())
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The core Namespace kind, which has rules of its own: DNS-label names, the
    /// `spec.finalizers` that hold its deletion, and a namespace controller in the GC.
    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    /// Kubernetes serves no `deletecollection` for namespaces (one request could wipe every
    /// project); every other kind has it.
    pub fn supports_delete_collection(&self) -> bool {
        !self.is_namespace()
    }

    /// `object` as version `version` of this kind: the `apiVersion` and `kind` a client asked
    /// for (stored objects carry the storage version's).
    pub fn present(&self, version: &str, mut object: Value) -> Value {
        if let Some(map) = object.as_object_mut() {
            map.insert(
                "apiVersion".into(),
                Value::String(self.api_version(version)),
            );
            map.insert("kind".into(), Value::String(self.kind.clone()));
        }
        object
    }

    pub fn target(&self, name: &str) -> Target {
        Target {
            group: self.group.clone(),
            plural: self.plural.clone(),
            kind: self.kind.clone(),
            name: name.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {document}: not valid YAML")]
    Yaml {
        path: String,
        document: usize,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("{path}: document {document}: {message}")]
    Invalid {
        path: String,
        document: usize,
        message: String,
    },
    #[error("{what} is defined twice ({first} and {second})")]
    Duplicate {
        what: String,
        first: String,
        second: String,
    },
}

/// Every served resource type, indexed for routing.
#[derive(Debug, Default)]
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
    /// (group, plural) → type.
    by_plural: BTreeMap<(String, String), Arc<ResourceType>>,
}

const BUILTIN_CRDS: &[(&str, &str)] = &[
    (
        "builtin/namespaces.yaml",
        include_str!("../builtin/namespaces.yaml"),
    ),
    (
        "builtin/events.yaml",
        include_str!("../builtin/events.yaml"),
    ),
    (
        "builtin/leases.yaml",
        include_str!("../builtin/leases.yaml"),
    ),
    ("builtin/rbac.yaml", include_str!("../builtin/rbac.yaml")),
];

impl Registry {
    /// The built-in kinds plus every CRD found in `dir` (`*.yaml`, `*.yml`, `*.json`, sorted by
    /// file name; multi-document files allowed).
    pub fn load(dir: Option<&Path>) -> Result<Registry, LoadError> {
        Registry::load_with(&[], dir)
    }

    /// The built-in kinds, then the CRD documents of `embedded` ((origin, YAML) pairs a binary
    /// carries), then every CRD found in `dir` as [`Registry::load`] reads it.
    pub fn load_with(embedded: &[(&str, &str)], dir: Option<&Path>) -> Result<Registry, LoadError> {
        let mut registry = Registry::default();
        for (path, text) in BUILTIN_CRDS {
            registry.add_documents(path, text, true)?;
        }
        for (path, text) in embedded {
            registry.add_documents(path, text, false)?;
        }
        if let Some(dir) = dir {
            let read_err = |source| LoadError::Read {
                path: dir.display().to_string(),
                source,
            };
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            paths.sort();
            for path in paths {
                let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                registry.add_documents(&path.display().to_string(), &text, false)?;
            }
        }
        Ok(registry)
    }

    fn add_documents(&mut self, path: &str, text: &str, builtin: bool) -> Result<(), LoadError> {
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|source| LoadError::Yaml {
                path: path.to_string(),
                document: 1,
                source: Box::new(source),
            })?;
        for (index, document) in documents.into_iter().enumerate() {
            if document.is_null() {
                continue;
            }
            let invalid = |message: String| LoadError::Invalid {
                path: path.to_string(),
                document: index + 1,
                message,
            };
            let mut resource = parse_crd(&document).map_err(invalid)?;
            resource.builtin = builtin;
            self.insert(resource, path)?;
        }
        Ok(())
    }

    fn insert(&mut self, resource: ResourceType, origin: &str) -> Result<(), LoadError> {
        for existing in &self.types {
            let clash = if existing.group == resource.group && existing.plural == resource.plural {
                Some(format!("resource {}.{}", resource.plural, resource.group))
            } else if existing.group == resource.group && existing.kind == resource.kind {
                Some(format!("kind {}.{}", resource.kind, resource.group))
            } else {
                resource
                    .short_names
                    .iter()
                    .find(|s| existing.short_names.contains(s))
                    .map(|s| format!("short name {s}"))
            };
            if let Some(what) = clash {
                return Err(LoadError::Duplicate {
                    what,
                    first: format!("{}.{}", existing.plural, existing.group),
                    second: origin.to_string(),
                });
            }
        }
        let resource = Arc::new(resource);
        self.by_plural.insert(
            (resource.group.clone(), resource.plural.clone()),
            resource.clone(),
        );
        self.types.push(resource);
        Ok(())
    }

    pub fn types(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    pub fn lookup(&self, group: &str, plural: &str) -> Option<&Arc<ResourceType>> {
        self.by_plural.get(&(group.to_string(), plural.to_string()))
    }

    /// Groups in the order discovery lists them (core first, then by name), each with its
    /// versions in the order of the first CRD that declared them.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &self.types {
            let versions = groups.entry(t.group.clone()).or_default();
            for v in &t.versions {
                if !versions.contains(&v.name) {
                    versions.push(v.name.clone());
                }
            }
        }
        groups.into_iter().collect()
    }

    /// The types served at group/version.
    pub fn types_at(&self, group: &str, version: &str) -> Vec<&Arc<ResourceType>> {
        self.types
            .iter()
            .filter(|t| t.group == group && t.version(version).is_some())
            .collect()
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn strings_at(v: &Value, path: &[&str]) -> Vec<String> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return Vec::new(),
        }
    }
    cur.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Turns one `apiextensions.k8s.io/v1` CustomResourceDefinition into a resource type.
fn parse_crd(crd: &Value) -> Result<ResourceType, String> {
    if str_at(crd, &["kind"]) != Some("CustomResourceDefinition") {
        return Err(format!(
            "expected kind CustomResourceDefinition, found {:?}",
            str_at(crd, &["kind"]).unwrap_or("")
        ));
    }
    if str_at(crd, &["apiVersion"]) != Some("apiextensions.k8s.io/v1") {
        return Err("only apiextensions.k8s.io/v1 CustomResourceDefinitions are supported".into());
    }
    let spec = crd.get("spec").ok_or("spec is required")?;
    let group = str_at(spec, &["group"])
        .ok_or("spec.group is required")?
        .to_string();
    let names = spec.get("names").ok_or("spec.names is required")?;
    let plural = str_at(names, &["plural"])
        .ok_or("spec.names.plural is required")?
        .to_string();
    let kind = str_at(names, &["kind"])
        .ok_or("spec.names.kind is required")?
        .to_string();
    let singular = str_at(names, &["singular"])
        .map(String::from)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = str_at(names, &["listKind"])
        .map(String::from)
        .unwrap_or_else(|| format!("{kind}List"));
    let expected_name = if group.is_empty() {
        plural.clone()
    } else {
        format!("{plural}.{group}")
    };
    // Built-in core kinds have no group; their embedded CRDs are named by plural alone.
    if let Some(name) = str_at(crd, &["metadata", "name"])
        && name != expected_name
    {
        return Err(format!(
            "metadata.name must be {expected_name:?}, found {name:?}"
        ));
    }
    let namespaced = match str_at(spec, &["scope"]) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(format!(
                "spec.scope must be Namespaced or Cluster, found {other:?}"
            ));
        }
    };
    // Versions share one stored form; only the `None` conversion strategy (rewrite apiVersion)
    // is implemented, so a CRD that needs a conversion webhook cannot be served faithfully.
    match str_at(spec, &["conversion", "strategy"]) {
        None | Some("None") => {}
        Some(other) => {
            return Err(format!(
                "spec.conversion.strategy {other:?} is not supported (only \"None\": versions share one stored form)"
            ));
        }
    }
    let version_docs = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or("spec.versions must list at least one version")?;
    let mut versions = Vec::new();
    let mut has_status = false;
    for (i, v) in version_docs.iter().enumerate() {
        let at = |f: &str| format!("spec.versions[{i}].{f}");
        let name = str_at(v, &["name"]).ok_or_else(|| format!("{} is required", at("name")))?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let raw_schema = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .ok_or_else(|| format!("{} is required", at("schema.openAPIV3Schema")))?;
        let schema = Structural::from_value(&raw_schema)
            .map_err(|e| format!("{}: {e}", at("schema.openAPIV3Schema")))?;
        if schema.uses_cel() {
            tracing::warn!(
                crd = %str_at(crd, &["metadata", "name"]).unwrap_or(""),
                version = name,
                "x-kubernetes-validations (CEL) rules are not evaluated by this server"
            );
        }
        if v.pointer("/subresources/status").is_some() {
            has_status = true;
        }
        let mut printer_columns = Vec::new();
        for (j, c) in v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let col = |f: &str| format!("{}[{j}].{f}", at("additionalPrinterColumns"));
            let path = str_at(c, &["jsonPath"])
                .ok_or_else(|| format!("{} is required", col("jsonPath")))?;
            printer_columns.push(PrinterColumn {
                name: str_at(c, &["name"])
                    .ok_or_else(|| format!("{} is required", col("name")))?
                    .to_string(),
                type_: str_at(c, &["type"]).unwrap_or("string").to_string(),
                format: str_at(c, &["format"]).unwrap_or("").to_string(),
                description: str_at(c, &["description"]).unwrap_or("").to_string(),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                json_path: JsonPath::parse(path)
                    .map_err(|e| format!("{}: {e}", col("jsonPath")))?,
            });
        }
        let mut selectable_fields = Vec::new();
        for (j, f) in v
            .get("selectableFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = str_at(f, &["jsonPath"])
                .ok_or_else(|| format!("{}[{j}].jsonPath is required", at("selectableFields")))?;
            let json_path = JsonPath::parse(path)
                .map_err(|e| format!("{}[{j}].jsonPath: {e}", at("selectableFields")))?;
            selectable_fields.push((path.trim_start_matches('.').to_string(), json_path));
        }
        versions.push(Version {
            name: name.to_string(),
            storage: v.get("storage").and_then(Value::as_bool).unwrap_or(false),
            schema,
            raw_schema,
            printer_columns,
            selectable_fields,
        });
    }
    if versions.is_empty() {
        return Err("spec.versions has no served version".into());
    }
    Ok(ResourceType {
        group,
        plural,
        singular,
        kind,
        list_kind,
        short_names: strings_at(names, &["shortNames"]),
        categories: strings_at(names, &["categories"]),
        namespaced,
        has_status,
        versions,
        builtin: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(extra_spec: Value) -> Value {
        let mut crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.example.dev"},
            "spec": {
                "group": "example.dev",
                "scope": "Namespaced",
                "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object"}}}],
            }
        });
        if let (Some(spec), Some(extra)) = (crd["spec"].as_object_mut(), extra_spec.as_object()) {
            spec.extend(extra.clone());
        }
        crd
    }

    #[test]
    fn a_minimal_crd_gets_kubernetes_defaults() {
        let t = parse_crd(&crd(json!({}))).unwrap();
        assert_eq!(
            (t.singular.as_str(), t.list_kind.as_str()),
            ("thing", "ThingList")
        );
        assert!(t.namespaced && !t.has_status);
        assert_eq!(t.key(Some("ns"), "a"), "/registry/example.dev/things/ns/a");
    }

    #[test]
    fn crds_that_cannot_be_served_faithfully_are_refused() {
        let check = |extra: Value, needle: &str| {
            let error = parse_crd(&crd(extra)).unwrap_err();
            assert!(error.contains(needle), "{error}");
        };
        check(
            json!({"conversion": {"strategy": "Webhook"}}),
            "conversion.strategy",
        );
        check(json!({"scope": "Galaxy"}), "spec.scope");
        check(json!({"versions": []}), "at least one version");
        check(
            json!({"versions": [{"name": "v1", "served": false, "schema": {"openAPIV3Schema": {"type": "object"}}}]}),
            "no served version",
        );
    }
}
