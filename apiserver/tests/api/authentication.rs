//! Authentication (docs/security.md): every request but the public paths needs a credential;
//! a missing or unknown one is a 401 `Status` and reaches nothing.

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::*;

async fn send(h: &Harness, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = h
        .app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn requests_without_a_known_credential_are_unauthorized() {
    let h = Harness::start().await;
    h.create_widget("w", json!({"color": "red"})).await;
    for authorization in [
        None,
        Some("Bearer not-a-token"),
        Some("Basic YWRtaW46YWRtaW4="),
    ] {
        for path in [
            WIDGETS.to_string(),
            widget_path("w"),
            "/apis".into(),
            "/openapi/v3".into(),
        ] {
            let (status, body) = send(&h, &path, authorization).await;
            assert_eq!(status, 401, "{path} with {authorization:?}: {body}");
            assert_eq!(body["kind"], "Status");
            assert_eq!(body["reason"], "Unauthorized");
            assert_eq!(body["message"], "Unauthorized");
            assert!(!body.to_string().contains("not-a-token"), "{body}");
        }
    }
}

#[tokio::test]
async fn health_and_version_stay_public_and_credentials_open_the_rest() {
    let h = Harness::start().await;
    for path in ["/version", "/healthz", "/livez", "/readyz"] {
        let (status, _) = send(&h, path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = send(&h, WIDGETS, Some(&bearer)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "WidgetList");
}
