//! The audit trail (docs/security.md, "Audit"): every request that changes state — done,
//! refused or invalid — and nothing else is recorded, with who sent it, the object it named
//! (the name a create generated included) and the code it was answered with; `GET /audit`
//! reads it back, filtered.

use axum::http::Method;
use serde_json::{Value, json};

use crate::support::*;

async fn trail(h: &Harness, query: &str) -> Vec<Value> {
    let list = h.get(&format!("/audit?{query}")).await.expect(200);
    assert_eq!(list["kind"], "EventList");
    assert_eq!(list["apiVersion"], "audit.k8s.io/v1");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// A server keeping its audit trail in `dir`.
async fn with_trail(dir: &tempfile::TempDir) -> Harness {
    Harness::start_with(corral_apiserver::Config {
        audit: Some(corral_apiserver::audit::AuditConfig {
            path: dir.path().join("audit.log"),
            max_bytes: 1024 * 1024,
            max_backups: 1,
        }),
        ..test_config()
    })
    .await
}

#[tokio::test]
async fn writes_are_recorded_with_their_object_user_and_code_and_reads_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let h = with_trail(&dir).await;
    let created = h
        .post(
            WIDGETS,
            &widget_with("", json!({"color": "red"}), json!({"generateName": "w-"})),
        )
        .await
        .expect(201);
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    h.get(&widget_path(&name)).await.expect(200);
    h.merge_patch(&widget_path(&name), &json!({"spec": {"color": "blue"}}))
        .await
        .expect(200);
    // Invalid, and unauthenticated: both recorded.
    h.merge_patch(&widget_path(&name), &json!({"spec": {"color": 7}}))
        .await
        .expect(422);
    let anonymous = h
        .call(
            Method::DELETE,
            &widget_path(&name),
            &[("Authorization", "Bearer nobody")],
            Vec::new(),
        )
        .await;
    assert_eq!(anonymous.status.as_u16(), 401);

    let events = trail(&h, &format!("name={name}")).await;
    let summary: Vec<(String, String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["verb"].as_str().unwrap().to_string(),
                e["user"]["username"].as_str().unwrap_or("").to_string(),
                e["responseStatus"]["code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("create".to_string(), "admin".to_string(), 201),
            ("patch".to_string(), "admin".to_string(), 200),
            ("patch".to_string(), "admin".to_string(), 422),
        ],
        "{events:#?}"
    );
    let create = &events[0];
    assert_eq!(create["objectRef"]["resource"], "widgets");
    assert_eq!(create["objectRef"]["namespace"], "default");
    assert_eq!(create["objectRef"]["apiGroup"], GROUP);
    assert_eq!(create["level"], "Metadata");
    assert_eq!(create["stage"], "ResponseComplete");
    let received: jiff::Timestamp = create["requestReceivedTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let answered: jiff::Timestamp = create["stageTimestamp"].as_str().unwrap().parse().unwrap();
    assert!(received <= answered);
    // The unauthenticated DELETE names no user (and so no filter by name finds it through
    // the object: its path is all it has).
    let deletes = trail(&h, "verb=delete").await;
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!(deletes[0]["responseStatus"]["code"], 401);
    assert_eq!(deletes[0]["user"]["username"], "");
    // Filters and the limit.
    assert_eq!(trail(&h, "user=admin&verb=patch").await.len(), 2);
    assert_eq!(trail(&h, "user=someone-else").await.len(), 0);
    let last = trail(&h, "limit=1").await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["verb"], "delete");
    h.get("/audit?limit=0")
        .await
        .expect_error(400, "BadRequest");
}

#[tokio::test]
async fn a_server_without_a_trail_says_so() {
    let h = Harness::start().await;
    let status = h.get("/audit").await.expect_error(404, "NotFound");
    assert!(message(&status).contains("--audit-log-path"), "{status}");
}

#[tokio::test]
async fn a_write_is_answered_with_its_audit_id_and_a_client_may_choose_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = with_trail(&dir).await;
    let audit_id = |reply: &Reply| {
        reply.headers["audit-id"]
            .to_str()
            .expect("an ASCII audit ID")
            .to_string()
    };
    let id_of = async |name: &str| {
        let events = trail(&h, &format!("name={name}")).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        events[0]["auditID"].as_str().unwrap().to_string()
    };

    // Made up by the server, and the answer names it.
    let made = create_with_audit_id(&h, "made", None).await;
    assert_eq!(made.status.as_u16(), 201);
    assert_eq!(audit_id(&made), id_of("made").await);

    // The client's own, kept.
    let chosen = create_with_audit_id(&h, "chosen", Some("job-42-step-7")).await;
    assert_eq!(chosen.status.as_u16(), 201);
    assert_eq!(audit_id(&chosen), "job-42-step-7");
    assert_eq!(id_of("chosen").await, "job-42-step-7");

    // One too long is replaced, not stored.
    let long = "x".repeat(129);
    let replaced = create_with_audit_id(&h, "replaced", Some(&long)).await;
    assert_eq!(replaced.status.as_u16(), 201);
    assert_ne!(audit_id(&replaced), long);
    assert_eq!(audit_id(&replaced), id_of("replaced").await);
}

/// Creates widget `name` as admin, sending `audit_id` as its `Audit-ID` header if given.
async fn create_with_audit_id(h: &Harness, name: &str, audit_id: Option<&str>) -> Reply {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let mut headers = vec![
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    headers.extend(audit_id.map(|id| ("Audit-ID", id)));
    let body = serde_json::to_vec(&widget(name, json!({"color": "red"}))).unwrap();
    h.call(Method::POST, WIDGETS, &headers, body).await
}
