//! Request metrics at the HTTP edge (`crate::metrics` names the series): every request is
//! counted by verb, resource and code, and timed unless it is a watch. The outermost layer,
//! so a request refused before routing (401, 429) counts as well.
//!
//! Verbs are kube-apiserver's metric verbs: `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`,
//! `APPLY` (a server-side apply patch), `DELETE`, `DELETECOLLECTION`; a path that names no
//! resource has the HTTP method and an empty `resource`.

use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::{REQUEST_DURATION, REQUESTS};
use crate::query::Query;

/// The layer.
pub async fn measure(request: Request, next: Next) -> Response {
    let (verb, resource, subresource) = labels(&request);
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    let code = response.status().as_u16().to_string();
    metrics::counter!(
        REQUESTS,
        "verb" => verb,
        "resource" => resource.clone(),
        "subresource" => subresource.clone(),
        "code" => code
    )
    .increment(1);
    if verb != "WATCH" {
        metrics::histogram!(
            REQUEST_DURATION,
            "verb" => verb,
            "resource" => resource,
            "subresource" => subresource
        )
        .record(started.elapsed().as_secs_f64());
    }
    response
}

/// The metric verb, resource and subresource of a request.
fn labels(request: &Request) -> (&'static str, String, String) {
    let method = request.method();
    let path = request.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest): (&str, &[&str]) = match segments.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (group, rest),
        _ => return (http_verb(method), String::new(), String::new()),
    };
    let Some(parsed) = super::path::parse_resource_path(group, rest) else {
        return (http_verb(method), String::new(), String::new());
    };
    let named = parsed.name.is_some();
    let verb = match *method {
        Method::GET if Query::parse(request.uri().query()).bool("watch") => "WATCH",
        Method::GET if named => "GET",
        Method::GET => "LIST",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => {
            let apply = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/apply-patch"));
            if apply { "APPLY" } else { "PATCH" }
        }
        Method::DELETE if named => "DELETE",
        Method::DELETE => "DELETECOLLECTION",
        _ => http_verb(method),
    };
    (
        verb,
        parsed.plural.to_string(),
        parsed.subresource.unwrap_or_default().to_string(),
    )
}

fn http_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn of(method: Method, uri: &str, content_type: Option<&str>) -> (&'static str, String, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        labels(&request.body(Body::empty()).unwrap())
    }

    #[test]
    fn requests_are_labelled_as_kube_apiserver_labels_them() {
        let cases = [
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                ("LIST", "namespaces", ""),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a",
                None,
                ("GET", "namespaces", ""),
            ),
            (
                Method::GET,
                "/apis/corral.dev/v1alpha1/namespaces/a/instances?watch=true",
                None,
                ("WATCH", "instances", ""),
            ),
            (
                Method::PATCH,
                "/apis/corral.dev/v1alpha1/sleds/s1/status",
                Some("application/merge-patch+json"),
                ("PATCH", "sleds", "status"),
            ),
            (
                Method::PATCH,
                "/apis/corral.dev/v1alpha1/sleds/s1",
                Some("application/apply-patch+yaml"),
                ("APPLY", "sleds", ""),
            ),
            (
                Method::DELETE,
                "/apis/corral.dev/v1alpha1/namespaces/a/instances",
                None,
                ("DELETECOLLECTION", "instances", ""),
            ),
            (Method::GET, "/healthz", None, ("GET", "", "")),
            (Method::GET, "/apis/corral.dev", None, ("GET", "", "")),
        ];
        for (method, uri, content_type, (verb, resource, subresource)) in cases {
            assert_eq!(
                of(method, uri, content_type),
                (verb, resource.to_string(), subresource.to_string()),
                "{uri}"
            );
        }
    }
}
