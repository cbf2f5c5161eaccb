//! Lists with any `limit` and any `continue`, and lists larger than one answer may hold
//! (`--max-list-bytes`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use serde_json::{Value, json};

use super::{BASE, Case, case};
use crate::common::{self, Backend, Reach, http};

fn token(value: Value) -> String {
    URL_SAFE.encode(value.to_string())
}

fn get(
    name: &'static str,
    path: String,
    code: u16,
    reason: &'static str,
    message: &'static str,
) -> Case {
    case(
        name,
        "GET",
        path,
        "application/json",
        "",
        code,
        reason,
        message,
    )
}

/// Continue tokens a client made up or changed.
pub fn cases() -> Vec<Case> {
    let with = |value: Value| format!("{BASE}?limit=1&continue={}", token(value));
    let v1 = "meta.k8s.io/v1";
    vec![
        get(
            "limit past an integer",
            format!("{BASE}?limit=9223372036854775808"),
            400,
            "BadRequest",
            "limit",
        ),
        get(
            "continue escaping its prefix",
            with(json!({"v": v1, "rv": 5, "start": "../x"})),
            400,
            "BadRequest",
            "continue key is not valid",
        ),
        get(
            "continue of another version",
            with(json!({"v": "meta.k8s.io/v2", "rv": 5, "start": "default/a"})),
            400,
            "BadRequest",
            "continue key is not valid",
        ),
        get(
            "continue at a negative revision",
            with(json!({"v": v1, "rv": -1, "start": "default/a"})),
            400,
            "BadRequest",
            "continue key is not valid",
        ),
        get(
            "continue that is not a token",
            with(json!(["not", "a", "token"])),
            400,
            "BadRequest",
            "continue key is not valid",
        ),
        get(
            "continue cut short",
            format!(
                "{BASE}?limit=1&continue={}",
                &token(json!({"v": v1, "rv": 5, "start": "default/a"}))[..20]
            ),
            400,
            "BadRequest",
            "continue key is not valid",
        ),
        get(
            "continue at a compacted revision",
            with(json!({"v": v1, "rv": 1, "start": "default/a"})),
            410,
            "Expired",
            "continue parameter is too old",
        ),
        get(
            "continue at a future revision",
            with(json!({"v": v1, "rv": 9_000_000_000_000_000_000i64, "start": "default/a"})),
            504,
            "Timeout",
            "Too large resource version",
        ),
    ]
}

/// A list's names and its `continue`.
fn list(to: &impl Reach, path: &str) -> (Vec<String>, Option<String>) {
    let (status, body) = http(to, "GET", path, &[], b"");
    assert_eq!(status, 200, "{path}: {body}");
    let list: Value = serde_json::from_str(&body).expect("a list is JSON");
    let names = list["items"]
        .as_array()
        .expect("a list has items")
        .iter()
        .map(|item| item["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    let token = list["metadata"]["continue"].as_str().map(String::from);
    (names, token)
}

/// Any `limit` of 0 or less is no limit, and a huge one is a limit like any other.
pub fn any_limit_lists(to: &impl Reach) {
    for limit in ["", "0", "-1", "-9223372036854775808", "9223372036854775807"] {
        for rv in ["", "0"] {
            let path = format!("{BASE}?limit={limit}&resourceVersion={rv}");
            assert_eq!(list(to, &path), (vec!["good".to_string()], None), "{path}");
        }
    }
}

fn lists_are_bounded(backend: Backend) {
    let server = common::apiserver_with(backend, &["--max-list-bytes", "4000"]);
    let to = &server;
    let json_ct = [("Content-Type", "application/json")];
    let mut names: Vec<String> = (0..12).map(|i| format!("w{i:02}")).collect();
    for name in &names {
        let body = json!({"apiVersion": "test.corral.dev/v1", "kind": "Widget",
                          "metadata": {"name": name}, "spec": {"color": "red", "note": "n".repeat(60)}});
        let (status, body) = http(to, "POST", BASE, &json_ct, body.to_string().as_bytes());
        assert_eq!(status, 201, "{body}");
    }
    // Without a limit: refused, naming `limit`, from the store and from the cache alike.
    for path in [BASE.to_string(), format!("{BASE}?resourceVersion=0")] {
        let (status, body) = http(to, "GET", &path, &[], b"");
        let status_body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(status_body["reason"], "Invalid", "{body}");
        assert_eq!(
            status_body["details"]["causes"][0]["field"], "limit",
            "{body}"
        );
    }
    // With one: pages end at the bound, and their continues lead through all of it.
    for first in [
        format!("{BASE}?limit=500"),
        format!("{BASE}?limit=500&resourceVersion=0"),
    ] {
        let (mut seen, mut token) = list(to, &first);
        assert!(
            seen.len() < names.len() && token.is_some(),
            "{first}: {seen:?}"
        );
        while let Some(next) = token.take() {
            let (page, after) = list(to, &format!("{BASE}?limit=500&continue={next}"));
            assert!(!page.is_empty(), "{first}: an empty page");
            seen.extend(page);
            token = after;
        }
        names.sort();
        assert_eq!(seen, names, "{first}");
    }
    let (health, _) = http(to, "GET", "/healthz", &[], b"");
    assert_eq!(health, 200);
}

#[test]
fn lists_are_bounded_on_sqlite() {
    lists_are_bounded(Backend::Sqlite);
}

#[test]
fn lists_are_bounded_on_etcd() {
    lists_are_bounded(Backend::Etcd);
}
