//! Request metrics at the HTTP edge (`crate::metrics` names the series): every request is
//! counted by verb, resource and code, and timed unless it is a watch. The outermost step of
//! the edge (`edge.rs`), so a request refused before routing (401, 429) counts as well.
//!
//! Verbs are kube-apiserver's metric verbs: `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`,
//! `APPLY` (a server-side apply patch), `DELETE`, `DELETECOLLECTION`; a path that names no
//! resource the server serves has the HTTP method and an empty `resource`.
//!
//! # Invariants
//!
//! - The labels' values are bounded by what the server serves: verbs, served resources,
//!   `status` or nothing, status codes. No request, authenticated or not, adds a series of its
//!   own making (each would be kept for the life of the process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::extract::Request;
use axum::http::{Method, header};
use axum::response::Response;
use metrics::{Counter, Histogram};

use crate::metrics::{REQUEST_DURATION, REQUESTS};
use crate::query::Query;

/// The request series of one resource and subresource, their handles made once: a request
/// only finds its handles, where building a labelled key and looking it up in the recorder
/// costs several allocations each time.
struct Series {
    resource: String,
    subresource: String,
    counters: Mutex<Vec<(&'static str, u16, Counter)>>,
    durations: Mutex<Vec<(&'static str, Histogram)>>,
}

impl Series {
    fn count(&self, verb: &'static str, code: u16) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, counter)) = counters.iter().find(|(v, c, _)| *v == verb && *c == code) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(
            REQUESTS,
            "verb" => verb,
            "resource" => self.resource.clone(),
            "subresource" => self.subresource.clone(),
            "code" => code.to_string()
        );
        counter.increment(1);
        counters.push((verb, code, counter));
    }

    fn time(&self, verb: &'static str, seconds: f64) {
        let mut durations = self
            .durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, histogram)) = durations.iter().find(|(v, _)| *v == verb) {
            histogram.record(seconds);
            return;
        }
        let histogram = metrics::histogram!(
            REQUEST_DURATION,
            "verb" => verb,
            "resource" => self.resource.clone(),
            "subresource" => self.subresource.clone()
        );
        histogram.record(seconds);
        durations.push((verb, histogram));
    }
}

/// The request series of one server, by resource and subresource.
#[derive(Default)]
pub struct Meter {
    series: RwLock<HashMap<String, HashMap<String, Arc<Series>>>>,
}

impl Meter {
    /// Starts measuring `request`; `served` says whether the server serves a resource
    /// (group, plural): only those are labelled, so no request can add a series of its own
    /// making.
    pub fn start(&self, request: &Request, served: impl Fn(&str, &str) -> bool) -> Measured {
        let (verb, resource, subresource) = labels(request, served);
        Measured {
            series: self.series(resource, subresource),
            verb,
            started: tokio::time::Instant::now(),
        }
    }

    fn series(&self, resource: &str, subresource: &str) -> Arc<Series> {
        let found = |series: &HashMap<String, HashMap<String, Arc<Series>>>| {
            series.get(resource)?.get(subresource).cloned()
        };
        if let Some(series) = found(&self.series.read().unwrap_or_else(PoisonError::into_inner)) {
            return series;
        }
        let mut all = self.series.write().unwrap_or_else(PoisonError::into_inner);
        all.entry(resource.to_string())
            .or_default()
            .entry(subresource.to_string())
            .or_insert_with(|| {
                Arc::new(Series {
                    resource: resource.to_string(),
                    subresource: subresource.to_string(),
                    counters: Mutex::default(),
                    durations: Mutex::default(),
                })
            })
            .clone()
    }
}

/// A request being measured.
pub struct Measured {
    series: Arc<Series>,
    verb: &'static str,
    started: tokio::time::Instant,
}

impl Measured {
    /// Counts the request with the code it was answered, and times it unless it is a watch.
    pub fn finish(self, response: &Response) {
        self.series.count(self.verb, response.status().as_u16());
        if self.verb != "WATCH" {
            self.series
                .time(self.verb, self.started.elapsed().as_secs_f64());
        }
    }
}

/// The metric verb, resource and subresource of a request. A resource the server does not
/// serve, or a subresource other than `status`, is labelled as a path that names none.
fn labels(request: &Request, served: impl Fn(&str, &str) -> bool) -> (&'static str, &str, &str) {
    let method = request.method();
    let path = request.uri().path();
    let unlabelled = (http_verb(method), "", "");
    let mut segments = path.trim_matches('/').split('/');
    let (group, rest): (&str, Vec<&str>) = match (segments.next(), segments.next()) {
        (Some("api"), Some("v1")) => ("", segments.collect()),
        (Some("apis"), Some(group)) => {
            let _version = segments.next();
            (group, segments.collect())
        }
        _ => return unlabelled,
    };
    if rest.is_empty() {
        return unlabelled;
    }
    let Some(parsed) = super::path::parse_resource_path(group, &rest) else {
        return unlabelled;
    };
    let known = (served(group, parsed.plural)
        || super::access::Review::of(group, parsed.plural).is_some())
        && matches!(parsed.subresource, None | Some("status"));
    if !known {
        return unlabelled;
    }
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
    (verb, parsed.plural, parsed.subresource.unwrap_or_default())
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
        let request = request.body(Body::empty()).unwrap();
        let served = |_: &str, plural: &str| plural != "gadgets";
        let (verb, resource, subresource) = labels(&request, served);
        (verb, resource.to_string(), subresource.to_string())
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
            // Only what the server serves is labelled: no request makes a series of its own.
            (Method::GET, "/apis/g/v1/gadgets", None, ("GET", "", "")),
            (
                Method::GET,
                "/apis/g/v1/widgets/w/x1",
                None,
                ("GET", "", ""),
            ),
            (
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                None,
                ("POST", "selfsubjectaccessreviews", ""),
            ),
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
