//! GET of one object and LIST of a collection (k8s-api.md §6).
//!
//! - `resourceVersion` unset: a consistent read from the store, paginated with `limit` and
//!   `continue` at one revision.
//! - `resourceVersion=0` or `resourceVersionMatch=NotOlderThan`: served from the watch cache
//!   (after it has caught up to the asked revision); `limit` is ignored, which Kubernetes allows.
//! - `resourceVersionMatch=Exact`: a store read at exactly that revision (410 once compacted).
//!
//! # Bounds
//!
//! `limit` of 0 or less is no limit, as in Kubernetes. No list answer holds more than
//! `Config::max_list_bytes` of objects (128 MiB; a running Instance is about 2 KB, so the
//! 10,000 of the rack benchmark take about 20 MB): a page a client asked for with `limit`
//! ends early there, with a `continue` (Kubernetes allows a page shorter than its limit); a
//! list without `limit` that would hold more is refused with 422 naming `limit`, never cut
//! short silently — a client that did not ask for pages would take a part for the whole. A
//! cached list too large for one answer is read from the store in pages when the client asked
//! for a limit. The store is read [`STORE_PAGE`] keys at a time whatever the client asked, so
//! no store response holds more.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use corral_store::{ListRequest, StoreError};
use serde_json::{Value, json};

use super::render::{json_response, list_body, object_response};
use super::request::{Accept, ResourceRequest};
use super::table::{self, IncludeObject};
use crate::error::{ApiError, ApiResult, Cause, Reason};
use crate::filter::Filter;
use crate::object;

/// How many keys one store read of a list fetches at most.
const STORE_PAGE: usize = 500;

pub async fn get(request: ResourceRequest, accept: Accept) -> ApiResult<Response> {
    let target = request.target();
    let object = match request.query.string("resourceVersion") {
        Some("0") => {
            let cache = request.server.cache(&request.resource);
            cache
                .get(&request.key())
                .map(|o| o.value.clone())
                .ok_or_else(|| ApiError::not_found(&target))?
        }
        _ => {
            let kv = request
                .server
                .store
                .get(&request.key())
                .await
                .map_err(|e| ApiError::from_store(e, &target))?
                .ok_or_else(|| ApiError::not_found(&target))?;
            object::decode(&kv)
                .map_err(|e| ApiError::internal("stored object is corrupt", &e))?
                .object
        }
    };
    Ok(object_response(&request, accept, StatusCode::OK, object))
}

/// Where a list starts and at which revision.
enum ListMode {
    /// From the store at `revision` (None = latest), starting at `start`.
    Store {
        revision: Option<i64>,
        start: Option<String>,
    },
    /// From the cache once it is at least at this revision.
    Cache { not_older_than: i64 },
}

fn parse_revision(text: &str) -> ApiResult<i64> {
    text.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {text:?}")))
}

fn list_mode(request: &ResourceRequest, prefix: &str) -> ApiResult<ListMode> {
    let query = &request.query;
    let rv = query.string("resourceVersion");
    let rv_match = query.string("resourceVersionMatch");
    if query.bool("sendInitialEvents") {
        return Err(ApiError::new(
            Reason::Invalid,
            "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
        ));
    }
    if let Some(token) = query.string("continue") {
        // Option validation (422) comes before the storage layer's check (400), as in
        // `meta/internalversion/validation` ValidateListOptions.
        if rv_match.is_some() {
            return Err(ApiError::new(
                Reason::Invalid,
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rv.is_some_and(|r| r != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (revision, start) = decode_continue(token)?;
        return Ok(ListMode::Store {
            revision: Some(revision),
            start: Some(format!("{prefix}{start}")),
        });
    }
    match (rv, rv_match) {
        (None, Some(_)) => Err(ApiError::new(
            Reason::Invalid,
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (None, None) => Ok(ListMode::Store {
            revision: None,
            start: None,
        }),
        (Some(rv), Some("Exact")) => {
            let revision = parse_revision(rv)?;
            if revision == 0 {
                return Err(ApiError::new(
                    Reason::Invalid,
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            Ok(ListMode::Store {
                revision: Some(revision),
                start: None,
            })
        }
        (Some(rv), None | Some("NotOlderThan")) => Ok(ListMode::Cache {
            not_older_than: parse_revision(rv)?,
        }),
        (Some(_), Some(other)) => Err(ApiError::new(
            Reason::Invalid,
            format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            ),
        )),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

fn encode_continue(revision: i64, start: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: revision,
        start: start.to_string(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request("continue key is not valid: the token could not be decoded");
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token))
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.v != "meta.k8s.io/v1"
        || token.rv <= 0
        || token.start.starts_with('/')
        || token.start.contains("..")
    {
        return Err(bad());
    }
    Ok((token.rv, token.start))
}

/// The objects of one list page, the revision they are at, and what follows.
pub struct Page {
    pub objects: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

/// The objects of one list page, per the request's `resourceVersion`, `continue` and `limit`.
pub async fn collect(request: &ResourceRequest, filter: &Filter) -> ApiResult<Page> {
    let prefix = match &request.namespace {
        Some(ns) => request.resource.namespace_prefix(ns),
        None => request.resource.key_prefix(),
    };
    let limit = request
        .query
        .int("limit")?
        .filter(|l| *l > 0)
        .map(|l| l as usize);
    match list_mode(request, &prefix)? {
        ListMode::Cache { not_older_than } => {
            collect_from_cache(request, filter, &prefix, limit, not_older_than).await
        }
        ListMode::Store { revision, start } => {
            collect_from_store(request, filter, &prefix, limit, revision, start).await
        }
    }
}

/// The answer to a list without `limit` larger than `max_bytes`.
fn list_too_large(max_bytes: usize) -> ApiError {
    let detail = format!(
        "the list holds more than {max_bytes} bytes of objects: ask for it in pages (limit and continue)"
    );
    let mut error = ApiError::new(Reason::Invalid, format!("limit: Required value: {detail}"));
    error.causes = vec![Cause {
        kind: "FieldValueRequired".into(),
        message: format!("Required value: {detail}"),
        field: "limit".into(),
    }];
    error
}

/// Every matching object under `prefix` in the watch cache, once it is at least at
/// `not_older_than`; read from the store in pages instead if that is more than one answer may
/// hold and the client asked for a `limit`.
async fn collect_from_cache(
    request: &ResourceRequest,
    filter: &Filter,
    prefix: &str,
    limit: Option<usize>,
    not_older_than: i64,
) -> ApiResult<Page> {
    let cache = request.server.cache(&request.resource);
    if !cache
        .wait_for(not_older_than, std::time::Duration::from_secs(3))
        .await
    {
        return Err(ApiError::new(
            Reason::Timeout,
            format!(
                "Too large resource version: {not_older_than}, current: {}",
                cache.revision()
            ),
        ));
    }
    let (objects, revision) = cache.snapshot_prefix(prefix);
    let matching: Vec<_> = objects
        .iter()
        .filter(|o| filter.matches(&o.value))
        .collect();
    let max_bytes = request.server.config.max_list_bytes;
    let bytes = matching
        .iter()
        .fold(0usize, |sum, o| sum.saturating_add(o.json.len()));
    if bytes > max_bytes {
        // The store's latest revision is at least the cache's, so at least `not_older_than`.
        return match limit {
            Some(_) => collect_from_store(request, filter, prefix, limit, None, None).await,
            None => Err(list_too_large(max_bytes)),
        };
    }
    Ok(Page {
        objects: matching.into_iter().map(|o| o.value.clone()).collect(),
        revision,
        continue_token: None,
        remaining: None,
    })
}

/// Up to `limit` matching objects under `prefix` from the store at `revision` (None: the
/// latest), from `start` on, read [`STORE_PAGE`] keys at a time; at most `max_list_bytes` of
/// them (see the module docs).
async fn collect_from_store(
    request: &ResourceRequest,
    filter: &Filter,
    prefix: &str,
    limit: Option<usize>,
    mut revision: Option<i64>,
    mut start: Option<String>,
) -> ApiResult<Page> {
    let store = &request.server.store;
    let max_bytes = request.server.config.max_list_bytes;
    let continued = start.is_some();
    let mut objects = Vec::new();
    let mut bytes = 0usize;
    loop {
        let wanted = limit.map_or(STORE_PAGE, |l| l - objects.len());
        // With a selector, read a whole page: most keys may not match.
        let page_size = if filter.selects_everything() {
            wanted.min(STORE_PAGE)
        } else {
            STORE_PAGE
        };
        let page = store
            .list(ListRequest { prefix: prefix.to_string(), revision, start: start.clone(), limit: Some(page_size) })
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } if continued => ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                StoreError::Compacted { .. } => ApiError::expired(
                    "The resourceVersion for the provided list is too old.",
                ),
                other => ApiError::from_store(other, &request.target()),
            })?;
        revision = Some(page.revision);
        let mut examined = 0;
        let mut full = false;
        for kv in &page.items {
            examined += 1;
            let stored = object::decode(kv)
                .map_err(|e| ApiError::internal("stored object is corrupt", &e))?;
            if !filter.matches(&stored.object) {
                continue;
            }
            bytes = bytes.saturating_add(kv.value.len());
            if limit.is_none() && bytes > max_bytes {
                return Err(list_too_large(max_bytes));
            }
            objects.push(stored.object);
            if limit.is_some_and(|l| objects.len() >= l || bytes >= max_bytes) {
                full = true;
                break;
            }
        }
        let last = page.items[..examined].last().map(|kv| kv.key.as_str());
        let more = page.more || examined < page.items.len();
        let (true, Some(last)) = (more, last) else {
            return Ok(Page {
                objects,
                revision: page.revision,
                continue_token: None,
                remaining: None,
            });
        };
        let next_start = format!("{last}\0");
        if full {
            let remaining = filter
                .selects_everything()
                .then(|| page.count.saturating_sub(examined as u64));
            let relative = next_start
                .strip_prefix(prefix)
                .unwrap_or(&next_start)
                .to_string();
            return Ok(Page {
                objects,
                revision: page.revision,
                continue_token: Some(encode_continue(page.revision, &relative)),
                remaining,
            });
        }
        start = Some(next_start);
    }
}

pub async fn list(request: ResourceRequest, accept: Accept) -> ApiResult<Response> {
    let filter = request.filter()?;
    let page = collect(&request, &filter).await?;
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = page.remaining.filter(|r| *r > 0) {
        metadata["remainingItemCount"] = json!(remaining);
    }
    let request = Arc::new(request);
    match accept {
        Accept::Json => {
            let items: Vec<Value> = page
                .objects
                .into_iter()
                .map(|o| request.present(o))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &list_body(&request, metadata, items),
            ))
        }
        Accept::Table => {
            let version = request
                .resource
                .version(&request.version)
                .expect("version was checked when routing");
            let include = IncludeObject::from_query(&request.query);
            let rows = page
                .objects
                .into_iter()
                .map(|o| table::row(version, &request.present(o), include))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &table::table(version, rows, metadata, true),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = encode_continue(42, "ns/name\0");
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, "ns/name\0".to_string())
        );
        for bad in [
            "",
            "%%%",
            "bm90IGpzb24",
            &encode_continue(0, "x"),
            &encode_continue(5, "/etc"),
        ] {
            assert_eq!(
                decode_continue(bad).unwrap_err().reason,
                Reason::BadRequest,
                "{bad}"
            );
        }
    }
}
