//! Errors (§10): every failure is a `Status` whose code is the HTTP status.

use axum::http::Method;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn every_error_reply_is_a_status() {
    // Every reply this suite receives is checked by the harness: a non-2xx body must be a
    // Status whose code is the HTTP status. This table covers each row of §10's table.
    let h = Harness::start().await;
    let existing = h.create_widget("a", json!({"color": "red"})).await;
    let a = &widget_path("a");
    let mut stale = existing.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    let json = "application/json";
    let smp = "application/strategic-merge-patch+json";
    let protobuf = "application/vnd.kubernetes.protobuf";
    let not_ns = widget_with("n", json!({"color": "red"}), json!({"namespace": "other"}));
    let huge = vec![b' '; 4 * 1024 * 1024];
    let nopes = &format!("/apis/{API_VERSION}/namespaces/default/nopes");
    let ghost = &widget_path("ghost");
    let status = &format!("{a}/status");
    let bad_selector = &format!("{WIDGETS}?labelSelector=%3D%3D");
    let bad_limit = &format!("{WIDGETS}?limit=ten");
    let (get, post, put, patch, delete) = (
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    );
    // (what, method, path, (header, value), body, code, reason, details.name)
    #[rustfmt::skip]
    let cases = [
        ("unknown path", get.clone(), "/nothing/here", None, vec![], 404, "NotFound", None),
        ("unknown resource", get.clone(), nopes, None, vec![], 404, "NotFound", None),
        ("missing object", get.clone(), ghost, None, vec![], 404, "NotFound", Some("ghost")),
        ("duplicate", post.clone(), WIDGETS, Some(("content-type", json)), body(widget("a", json!({"color": "red"}))), 409, "AlreadyExists", Some("a")),
        ("stale update", put, a, Some(("content-type", json)), body(stale), 409, "Conflict", Some("a")),
        ("invalid object", post.clone(), WIDGETS, Some(("content-type", json)), body(widget("b", json!({"color": "purple"}))), 422, "Invalid", Some("b")),
        ("bad JSON", post.clone(), WIDGETS, Some(("content-type", json)), b"{".to_vec(), 400, "BadRequest", None),
        ("namespace differs from the URL", post.clone(), WIDGETS, Some(("content-type", json)), body(not_ns), 400, "BadRequest", None),
        ("wrong kind", post.clone(), WIDGETS, Some(("content-type", json)), body(gadget("g", json!({}))), 400, "BadRequest", None),
        ("bad selector", get.clone(), bad_selector, None, vec![], 400, "BadRequest", None),
        ("bad limit", get.clone(), bad_limit, None, vec![], 400, "BadRequest", None),
        ("strategic merge patch", patch, a, Some(("content-type", smp)), b"{}".to_vec(), 415, "UnsupportedMediaType", None),
        ("protobuf only", get.clone(), a, Some(("accept", protobuf)), vec![], 406, "NotAcceptable", None),
        ("POST to an object", post.clone(), a, Some(("content-type", json)), b"{}".to_vec(), 405, "MethodNotAllowed", None),
        ("DELETE of status", delete, status, None, vec![], 405, "MethodNotAllowed", None),
        ("too large", post, WIDGETS, Some(("content-type", json)), huge, 413, "RequestEntityTooLarge", None),
    ];
    for (what, method, path, header, body, code, reason, name) in cases {
        let headers: Vec<(&str, &str)> = header.into_iter().collect();
        let reply = h.call(method, path, &headers, body).await;
        assert_eq!(reply.status.as_u16(), code, "{what}: {}", reply.body);
        assert_eq!(reply.body["reason"], reason, "{what}");
        if let Some(name) = name {
            let details = &reply.body["details"];
            assert_eq!(details["name"], name, "{what}: {details}");
            assert_eq!(details["group"], GROUP, "{what}");
            assert_eq!(details["kind"], "widgets", "{what}");
        }
    }
}
