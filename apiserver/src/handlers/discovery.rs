//! `/version` and API discovery (`/api`, `/apis`, `/apis/G`, `/apis/G/V`) in the legacy JSON
//! form, which kubectl 1.32, kube-rs and the Python client all accept.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::render::json_response;
use crate::error::{ApiError, ApiResult};
use crate::resource::ResourceType;
use crate::server::ApiServer;

/// Reports minor version 32: the kubectl on these machines is a dispatcher that picks the
/// client binary matching the server's minor version.
pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.4-corral",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "none",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }),
    )
}

pub fn api() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
    )
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn apis(server: &Arc<ApiServer>, _headers: &HeaderMap) -> ApiResult<Response> {
    let groups: Vec<Value> = server
        .registry
        .groups()
        .into_iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, versions)| group_json(&name, &versions))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    ))
}

pub fn group(server: &Arc<ApiServer>, group: &str) -> ApiResult<Response> {
    let (name, versions) = server
        .registry
        .groups()
        .into_iter()
        .find(|(name, _)| name == group && !name.is_empty())
        .ok_or_else(ApiError::no_route)?;
    let mut body = group_json(&name, &versions);
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &body))
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource_json(t: &ResourceType) -> Vec<Value> {
    let mut out = vec![json!({
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": VERBS
            .iter()
            .filter(|v| **v != "deletecollection" || t.supports_delete_collection())
            .collect::<Vec<_>>(),
        "shortNames": t.short_names,
        "categories": t.categories,
        "storageVersionHash": storage_version_hash(t),
    })];
    if t.has_status {
        out.push(json!({
            "name": format!("{}/status", t.plural),
            "singularName": "",
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

/// A short stable hash of the storage identity (clients only compare it for equality).
fn storage_version_hash(t: &ResourceType) -> String {
    use base64::Engine;
    let mut h: u64 = 0xcbf29ce484222325;
    for b in format!("{}/{}/{}", t.group, t.storage_version().name, t.kind).bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    base64::engine::general_purpose::STANDARD.encode(&h.to_be_bytes()[..8])
}

pub fn resource_list(server: &Arc<ApiServer>, group: &str, version: &str) -> ApiResult<Response> {
    let types = server.registry.types_at(group, version);
    if types.is_empty() {
        return Err(ApiError::no_route());
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = types.iter().flat_map(|t| resource_json(t)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    ))
}
