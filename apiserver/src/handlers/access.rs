//! Who may reach what, at the HTTP edge: authentication (with impersonation) as a layer before
//! routing, authorization of each request once routing knows what it names, and the self
//! reviews behind `kubectl auth can-i` (`authz` decides; this file asks it).
//!
//! # Invariants
//!
//! - A request reaches a handler only with a [`User`], authorized for what it asks; the public
//!   paths (`auth::PUBLIC_PATHS`) are the one exception, and name no resource.
//! - An impersonating request is authorized as the user it impersonates, and only once its
//!   real user may `impersonate` that user, each of its groups and its uid.

use axum::extract::Request;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::request::ResourceRequest;
use crate::auth::{self, User, identities};
use crate::authz::{self, Attributes};
use crate::error::{ApiError, ApiResult, Reason};
use crate::server::ApiServer;

/// The authentication step: puts the [`User`] on the request (the impersonated one, if it
/// may) and authorizes the paths the router serves outside `/api` and `/apis`; `Err` is the
/// answer to a request that goes no further.
pub fn authenticate(server: &ApiServer, request: &mut Request) -> ApiResult<()> {
    let path = request.uri().path();
    let public = auth::PUBLIC_PATHS.contains(&path);
    let Some(user) = server.config.authentication.user_of(request)? else {
        return if public {
            Ok(())
        } else {
            Err(auth::unauthorized())
        };
    };
    let pending = request.extensions().get::<super::audit::Pending>();
    if let Some(pending) = pending {
        pending.user(&user);
    }
    let impersonating = request.headers().contains_key("impersonate-user");
    let user = impersonate(server, user, request.headers())?;
    if impersonating && let Some(pending) = pending {
        pending.impersonated(&user);
    }
    let api = path == "/api"
        || path.starts_with("/api/")
        || path == "/apis"
        || path.starts_with("/apis/");
    if !api && !public {
        authorize_path(server, Some(&user), request.method(), path)?;
    }
    request.extensions_mut().insert(user);
    Ok(())
}

/// The user `user` asks to act as (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`), if it may.
fn impersonate(server: &ApiServer, user: User, headers: &HeaderMap) -> ApiResult<User> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect()
    };
    let names = values("impersonate-user");
    let groups = values("impersonate-group");
    let uids = values("impersonate-uid");
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("impersonate-extra-")?;
            Some((key.to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();
    if names.is_empty() {
        if !groups.is_empty() || !uids.is_empty() || !extras.is_empty() {
            return Err(ApiError::bad_request(
                "impersonating groups, a uid or extra fields needs Impersonate-User",
            ));
        }
        return Ok(user);
    }
    if names.len() > 1 || uids.len() > 1 {
        return Err(ApiError::bad_request(
            "only one Impersonate-User and one Impersonate-Uid may be given",
        ));
    }
    let may = |resource: &str, name: &str| {
        let attributes = Attributes::resource("impersonate", "", resource, None, None, Some(name));
        if authz::allowed(server, &user, &attributes) {
            Ok(())
        } else {
            Err(authz::forbidden(&user, &attributes, ""))
        }
    };
    may("users", &names[0])?;
    for group in &groups {
        may("groups", group)?;
    }
    for uid in &uids {
        may("uids", uid)?;
    }
    let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (key, value) in extras {
        let attributes = Attributes::resource(
            "impersonate",
            "authentication.k8s.io",
            "userextras",
            Some(&key),
            None,
            Some(&value),
        );
        if !authz::allowed(server, &user, &attributes) {
            return Err(authz::forbidden(&user, &attributes, ""));
        }
        extra.entry(key).or_default().push(value);
    }
    let mut impersonated = User {
        name: names[0].clone(),
        uid: uids.first().cloned().unwrap_or_default(),
        groups,
        extra,
    };
    if !impersonated.in_group(identities::AUTHENTICATED_GROUP) {
        impersonated
            .groups
            .push(identities::AUTHENTICATED_GROUP.to_string());
    }
    tracing::debug!(user = %user.name, as_user = %impersonated.name, "impersonating");
    Ok(impersonated)
}

/// Kubernetes' verb for a request on a resource.
pub(super) fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method, named) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// Authorizes a request for a path that names no resource (discovery, OpenAPI).
pub fn authorize_path(
    server: &ApiServer,
    user: Option<&User>,
    method: &Method,
    path: &str,
) -> ApiResult<()> {
    let Some(user) = user else {
        return Err(auth::unauthorized());
    };
    let verb = method.as_str().to_lowercase();
    authz::authorize(server, user, &Attributes::path(&verb, path))
}

/// Authorizes a routed request for what it names.
pub fn authorize_request(request: &ResourceRequest, method: &Method) -> ApiResult<()> {
    let Some(user) = &request.user else {
        return Err(auth::unauthorized());
    };
    let attributes = Attributes::resource(
        verb(method, request.name.is_some(), request.query.bool("watch")),
        &request.resource.group,
        &request.resource.plural,
        request.subresource.map(|s| s.name()),
        request.namespace.as_deref(),
        request.name.as_deref(),
    );
    authz::authorize(&request.server, user, &attributes)
}

/// The self reviews this server answers.
#[derive(Clone, Copy, Debug)]
pub enum Review {
    /// `authorization.k8s.io/v1` `SelfSubjectAccessReview`: may I (`kubectl auth can-i`).
    Access,
    /// `authorization.k8s.io/v1` `SelfSubjectRulesReview`: what may I (`can-i --list`).
    Rules,
    /// `authentication.k8s.io/v1` `SelfSubjectReview`: who am I (`kubectl auth whoami`).
    Whoami,
}

impl Review {
    fn kind(self) -> &'static str {
        match self {
            Review::Access => "SelfSubjectAccessReview",
            Review::Rules => "SelfSubjectRulesReview",
            Review::Whoami => "SelfSubjectReview",
        }
    }

    /// The review a `POST` to `/apis/GROUP/v1/PLURAL` asks for.
    pub fn of(group: &str, plural: &str) -> Option<Review> {
        match (group, plural) {
            ("authorization.k8s.io", "selfsubjectaccessreviews") => Some(Review::Access),
            ("authorization.k8s.io", "selfsubjectrulesreviews") => Some(Review::Rules),
            ("authentication.k8s.io", "selfsubjectreviews") => Some(Review::Whoami),
            _ => None,
        }
    }
}

/// Answers a self review (`POST` only): may I do this, or what may I do in this namespace.
pub fn review(
    server: &ApiServer,
    user: Option<&User>,
    review: Review,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let Some(user) = user else {
        return Err(auth::unauthorized());
    };
    if method != Method::POST {
        return Err(ApiError::new(
            Reason::MethodNotAllowed,
            format!("the server does not allow this method on the requested resource ({method})"),
        ));
    }
    let protobuf = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(super::protobuf::MEDIA_TYPE));
    let mut object: Value = if let Review::Whoami = review {
        // Nothing in its body is read: the answer is who sent it.
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": review.kind()})
    } else if protobuf {
        super::protobuf::decode(review.kind(), body)?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?
    };
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    let str_of =
        |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(String::from);
    let status = match review {
        Review::Access => {
            let attributes = if let Some(resource) = spec.get("resourceAttributes") {
                let get = |key: &str| str_of(resource, key).filter(|v| !v.is_empty());
                Attributes::resource(
                    &get("verb").unwrap_or_default(),
                    &get("group").unwrap_or_default(),
                    &get("resource").unwrap_or_default(),
                    get("subresource").as_deref(),
                    get("namespace").as_deref(),
                    get("name").as_deref(),
                )
            } else if let Some(path) = spec.get("nonResourceAttributes") {
                Attributes::path(
                    &str_of(path, "verb").unwrap_or_default(),
                    &str_of(path, "path").unwrap_or_default(),
                )
            } else {
                return Err(invalid_review(
                    "spec.resourceAttributes",
                    "exactly one of resourceAttributes or nonResourceAttributes must be given",
                ));
            };
            let allowed = authz::allowed(server, user, &attributes);
            let mut status = json!({"allowed": allowed});
            if allowed {
                status["reason"] = json!(reason_for(user));
            }
            status
        }
        Review::Rules => {
            let namespace = str_of(&spec, "namespace").filter(|ns| !ns.is_empty());
            rules_review(server, user, namespace.as_deref())
        }
        Review::Whoami => json!({"userInfo": user}),
    };
    object["status"] = status;
    object.as_object_mut().map(|map| {
        map.entry("metadata")
            .or_insert(json!({"creationTimestamp": null}))
    });
    Ok((axum::http::StatusCode::CREATED, axum::Json(object)).into_response())
}

fn reason_for(user: &User) -> &'static str {
    if user.in_group(identities::MASTERS_GROUP) {
        "allowed as a member of system:masters"
    } else if authz::node::sled_of(user).is_some() {
        "allowed by the node authorizer"
    } else {
        "allowed by RBAC"
    }
}

/// What `user` may do in `namespace`, as `SelfSubjectRulesReview.status`.
fn rules_review(server: &ApiServer, user: &User, namespace: Option<&str>) -> Value {
    if user.in_group(identities::MASTERS_GROUP) {
        return json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        });
    }
    if authz::node::sled_of(user).is_some() {
        return json!({
            "resourceRules": [],
            "nonResourceRules": [],
            "incomplete": true,
            "evaluationError": "a sled's agent is authorized by the node authorizer, object by object",
        });
    }
    let rules = authz::rbac::rules_for(server, user, namespace);
    let mut resource_rules = Vec::new();
    let mut path_rules = Vec::new();
    for rule in rules {
        if rule.non_resource_urls.is_empty() {
            resource_rules.push(json!({
                "verbs": rule.verbs,
                "apiGroups": rule.api_groups,
                "resources": rule.resources,
                "resourceNames": rule.resource_names,
            }));
        } else {
            path_rules
                .push(json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}));
        }
    }
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": path_rules,
        "incomplete": false,
    })
}

fn invalid_review(field: &str, message: &str) -> ApiError {
    let target = crate::error::Target {
        group: "authorization.k8s.io".into(),
        plural: "selfsubjectaccessreviews".into(),
        kind: "SelfSubjectAccessReview".into(),
        name: String::new(),
    };
    ApiError::invalid(
        &target,
        &[corral_apimachinery::validation::FieldError::invalid(
            field,
            Value::Null,
            message,
        )],
    )
}
