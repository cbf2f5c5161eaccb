//! `/metrics` (docs/api.md, "Metrics"): the Prometheus text format, with the request, watch,
//! watch-cache and store series, counting what was done.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::support::*;

/// One sample: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (what a Prometheus server reads).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .expect("a sample line ends in its value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end in }");
                let labels = rest
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                        (key.to_string(), value.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

async fn scrape(h: &Harness) -> (String, Vec<Sample>) {
    let request = Request::get("/metrics")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test]
async fn metrics_count_requests_watches_the_cache_and_the_store() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    h.create_widget("b", json!({"color": "blue"})).await;
    h.get(WIDGETS).await.expect(200);
    h.get(&widget_path("nope")).await.expect(404);
    let watch = h.watch(&format!("{WIDGETS}?watch=true")).await;

    let (text, samples) = scrape(&h).await;
    let created = find(
        &samples,
        "apiserver_request_total",
        &[("verb", "POST"), ("resource", "widgets"), ("code", "201")],
    )
    .unwrap_or_else(|| panic!("no count of creates:\n{text}"));
    assert_eq!(created.value, 2.0);
    assert!(
        find(
            &samples,
            "apiserver_request_total",
            &[("verb", "GET"), ("resource", "widgets"), ("code", "404")],
        )
        .is_some(),
        "{text}"
    );
    let bucket = find(
        &samples,
        "apiserver_request_duration_seconds_count",
        &[("verb", "LIST"), ("resource", "widgets")],
    )
    .unwrap_or_else(|| panic!("no LIST latency:\n{text}"));
    assert!(bucket.value >= 1.0);
    assert!(
        text.contains("apiserver_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert_eq!(
        find(
            &samples,
            "apiserver_registered_watchers",
            &[("resource", "widgets")]
        )
        .map(|s| s.value),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        find(
            &samples,
            "apiserver_watch_cache_objects",
            &[("resource", "widgets")]
        )
        .map(|s| s.value),
        Some(2.0),
        "{text}"
    );
    assert!(
        find(
            &samples,
            "apiserver_watch_cache_events_received_total",
            &[("resource", "widgets")]
        )
        .is_some_and(|s| s.value >= 2.0),
        "{text}"
    );
    assert!(
        find(
            &samples,
            "apiserver_storage_operation_duration_seconds_count",
            &[("operation", "create"), ("backend", "sqlite")]
        )
        .is_some_and(|s| s.value >= 2.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE apiserver_request_total counter"),
        "{text}"
    );
    assert!(text.contains("# HELP apiserver_request_total "), "{text}");

    // A watch that ends is no longer counted.
    drop(watch);
    wait_until("the watch uncounted", || async {
        let (_, samples) = scrape(&h).await;
        find(
            &samples,
            "apiserver_registered_watchers",
            &[("resource", "widgets")],
        )
        .is_some_and(|s| s.value == 0.0)
    })
    .await;
}

#[tokio::test]
async fn no_request_adds_a_series_of_its_own_making() {
    let h = Harness::start().await;
    // Paths anyone may send, naming what the server does not serve.
    let made_up = [
        "/apis/made.up/v1/gizmo-0001".to_string(),
        "/api/v1/namespaces/default/gizmo-0002".to_string(),
        format!("{}/gizmo-0003", widget_path("a")),
    ];
    for path in &made_up {
        let status = h.get(path).await.status;
        assert!(status == 404, "{path}: {status}");
    }
    let (text, samples) = scrape(&h).await;
    assert!(
        !text.contains("gizmo"),
        "a made-up name became a label:\n{text}"
    );
    let unnamed = find(
        &samples,
        "apiserver_request_total",
        &[("verb", "GET"), ("resource", ""), ("code", "404")],
    )
    .unwrap_or_else(|| panic!("the requests were not counted:\n{text}"));
    assert_eq!(unnamed.value, 3.0, "{text}");
}
