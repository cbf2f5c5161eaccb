//! Bad input never crashes the server nor returns 500: each case gets a Kubernetes `Status`
//! with the right code and reason, and a rejected create leaves nothing behind. `limits.rs`
//! holds the cases about the server's limits (object depth and size, patches, YAML,
//! quantities, watch timeouts), `lists.rs` those about lists (`limit`, `continue`, and lists
//! larger than an answer may hold), `flow.rs` those about clients that would hold the
//! server up.

#[path = "../common/mod.rs"]
mod common;
mod flow;
mod limits;
mod lists;

use common::{Backend, http};
use serde_json::Value;

const BASE: &str = "/apis/test.corral.dev/v1/namespaces/default/widgets";

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    code: u16,
    reason: &'static str,
    /// Text the message must contain (names the field, when there is one).
    message: &'static str,
}

// One argument per column of the table in `cases`, which reads best as positional rows.
#[allow(clippy::too_many_arguments)]
fn case(
    name: &'static str,
    method: &'static str,
    path: impl AsRef<str>,
    content_type: &'static str,
    body: impl AsRef<[u8]>,
    code: u16,
    reason: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.as_ref().to_string(),
        content_type,
        body: body.as_ref().to_vec(),
        code,
        reason,
        message,
    }
}

fn widget(spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{{"name":"bad"}},"spec":{spec}}}"#
    )
}

fn cases(existing_rv: &str) -> Vec<Case> {
    let json = "application/json";
    let stale_put = r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"good","resourceVersion":"1"},"spec":{"color":"red"}}"#.to_string();
    let _ = existing_rv;
    let mut huge = widget(r#"{"color":"red","note":""#).into_bytes();
    huge.extend(std::iter::repeat_n(b'x', 4 * 1024 * 1024));
    huge.extend_from_slice(b"\"}}");
    vec![
        case(
            "malformed JSON",
            "POST",
            BASE,
            json,
            r#"{"apiVersion": "test.corral.dev/v1", "kind": "#,
            400,
            "BadRequest",
            "not valid JSON",
        ),
        case(
            "malformed YAML",
            "POST",
            BASE,
            "application/yaml",
            "apiVersion: [unclosed\nkind: Widget",
            400,
            "BadRequest",
            "YAML",
        ),
        case(
            "not an object",
            "POST",
            BASE,
            json,
            "[1,2,3]",
            400,
            "BadRequest",
            "object",
        ),
        case(
            "empty body",
            "POST",
            BASE,
            json,
            "",
            400,
            "BadRequest",
            "empty",
        ),
        case(
            "missing kind",
            "POST",
            BASE,
            json,
            r#"{"apiVersion":"test.corral.dev/v1","metadata":{"name":"bad"},"spec":{"color":"red"}}"#,
            400,
            "BadRequest",
            "Kind",
        ),
        case(
            "wrong apiVersion",
            "POST",
            BASE,
            json,
            r#"{"apiVersion":"test.corral.dev/v9","kind":"Widget","metadata":{"name":"bad"},"spec":{"color":"red"}}"#,
            400,
            "BadRequest",
            "API version",
        ),
        case(
            "metadata not an object",
            "POST",
            BASE,
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":"bad","spec":{"color":"red"}}"#,
            400,
            "BadRequest",
            "metadata",
        ),
        case(
            "unknown field, strict",
            "POST",
            format!("{BASE}?fieldValidation=Strict"),
            json,
            widget(r#"{"color":"red","bogus":1}"#),
            400,
            "BadRequest",
            "unknown field \"spec.bogus\"",
        ),
        case(
            "enum violation",
            "POST",
            BASE,
            json,
            widget(r#"{"color":"purple"}"#),
            422,
            "Invalid",
            "spec.color",
        ),
        case(
            "wrong type",
            "POST",
            BASE,
            json,
            widget(r#"{"color":"red","size":"big"}"#),
            422,
            "Invalid",
            "spec.size",
        ),
        case(
            "out of range",
            "POST",
            BASE,
            json,
            widget(r#"{"color":"red","size":1000}"#),
            422,
            "Invalid",
            "spec.size",
        ),
        case(
            "missing required",
            "POST",
            BASE,
            json,
            widget(r#"{"size":3}"#),
            422,
            "Invalid",
            "spec.color",
        ),
        case(
            "invalid name",
            "POST",
            BASE,
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"Bad_Name"},"spec":{"color":"red"}}"#,
            422,
            "Invalid",
            "metadata.name",
        ),
        case(
            "no name",
            "POST",
            BASE,
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{},"spec":{"color":"red"}}"#,
            422,
            "Invalid",
            "metadata.name",
        ),
        case(
            "invalid label value",
            "POST",
            BASE,
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"bad","labels":{"a":"no spaces allowed"}},"spec":{"color":"red"}}"#,
            422,
            "Invalid",
            "metadata.labels",
        ),
        case(
            "labels wrong type",
            "POST",
            BASE,
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"bad","labels":["x"]},"spec":{"color":"red"}}"#,
            422,
            "Invalid",
            "metadata.labels",
        ),
        Case {
            name: "oversized body",
            method: "POST",
            path: BASE.into(),
            content_type: json,
            body: huge,
            code: 413,
            reason: "RequestEntityTooLarge",
            message: "larger than",
        },
        case(
            "namespace missing",
            "POST",
            "/apis/test.corral.dev/v1/namespaces/nowhere/widgets",
            json,
            widget(r#"{"color":"red"}"#),
            404,
            "NotFound",
            "nowhere",
        ),
        case(
            "cluster kind under a namespace",
            "POST",
            "/apis/test.corral.dev/v1/namespaces/default/gadgets",
            json,
            "{}",
            404,
            "NotFound",
            "",
        ),
        case(
            "unknown resource",
            "GET",
            "/apis/test.corral.dev/v1/namespaces/default/sprockets",
            json,
            "",
            404,
            "NotFound",
            "",
        ),
        case(
            "create duplicate",
            "POST",
            BASE,
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"good"},"spec":{"color":"red"}}"#,
            409,
            "AlreadyExists",
            "\"good\" already exists",
        ),
        case(
            "stale resourceVersion",
            "PUT",
            format!("{BASE}/good"),
            json,
            &stale_put,
            409,
            "Conflict",
            "the object has been modified",
        ),
        case(
            "update without resourceVersion",
            "PUT",
            format!("{BASE}/good"),
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"good"},"spec":{"color":"red"}}"#,
            422,
            "Invalid",
            "metadata.resourceVersion",
        ),
        case(
            "name mismatch",
            "PUT",
            format!("{BASE}/good"),
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"other","resourceVersion":"1"},"spec":{"color":"red"}}"#,
            400,
            "BadRequest",
            "does not match the name",
        ),
        case(
            "update missing object",
            "PUT",
            format!("{BASE}/ghost"),
            json,
            r#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"ghost","resourceVersion":"1"},"spec":{"color":"red"}}"#,
            404,
            "NotFound",
            "\"ghost\" not found",
        ),
        case(
            "bogus label selector",
            "GET",
            format!("{BASE}?labelSelector=a+in+%28"),
            json,
            "",
            400,
            "BadRequest",
            "",
        ),
        case(
            "unsupported field selector",
            "GET",
            format!("{BASE}?fieldSelector=spec.size%3D1"),
            json,
            "",
            400,
            "BadRequest",
            "field label not supported: spec.size",
        ),
        case(
            "invalid continue",
            "GET",
            format!("{BASE}?limit=1&continue=garbage"),
            json,
            "",
            400,
            "BadRequest",
            "continue",
        ),
        case(
            "continue with resourceVersion",
            "GET",
            format!("{BASE}?limit=1&continue=abc&resourceVersion=5"),
            json,
            "",
            400,
            "BadRequest",
            "resource version",
        ),
        case(
            "match without resourceVersion",
            "GET",
            format!("{BASE}?resourceVersionMatch=Exact"),
            json,
            "",
            422,
            "Invalid",
            "resourceVersionMatch",
        ),
        case(
            "exact match of 0",
            "GET",
            format!("{BASE}?resourceVersion=0&resourceVersionMatch=Exact"),
            json,
            "",
            422,
            "Invalid",
            "resourceVersionMatch",
        ),
        case(
            "invalid resourceVersion",
            "GET",
            format!("{BASE}?resourceVersion=abc"),
            json,
            "",
            400,
            "BadRequest",
            "resource version",
        ),
        case(
            "invalid watch resourceVersion",
            "GET",
            format!("{BASE}?watch=true&resourceVersion=-3"),
            json,
            "",
            400,
            "BadRequest",
            "resource version",
        ),
        case(
            "compacted exact list",
            "GET",
            format!("{BASE}?resourceVersion=1&resourceVersionMatch=Exact"),
            json,
            "",
            410,
            "Expired",
            "too old",
        ),
        case(
            "strategic merge patch",
            "PATCH",
            format!("{BASE}/good"),
            "application/strategic-merge-patch+json",
            r#"{"spec":{"size":2}}"#,
            415,
            "UnsupportedMediaType",
            "application/merge-patch+json",
        ),
        case(
            "merge patch not an object",
            "PATCH",
            format!("{BASE}/good"),
            "application/merge-patch+json",
            "[1]",
            400,
            "BadRequest",
            "Invalid JSON Patch",
        ),
        case(
            "malformed JSON patch",
            "PATCH",
            format!("{BASE}/good"),
            "application/json-patch+json",
            r#"{"op":"add"}"#,
            400,
            "BadRequest",
            "",
        ),
        case(
            "failing JSON patch test",
            "PATCH",
            format!("{BASE}/good"),
            "application/json-patch+json",
            r#"[{"op":"test","path":"/spec/color","value":"blue"}]"#,
            422,
            "Invalid",
            "",
        ),
        case(
            "patch to invalid value",
            "PATCH",
            format!("{BASE}/good"),
            "application/merge-patch+json",
            r#"{"spec":{"size":0}}"#,
            422,
            "Invalid",
            "spec.size",
        ),
        case(
            "patch stale resourceVersion",
            "PATCH",
            format!("{BASE}/good"),
            "application/merge-patch+json",
            r#"{"metadata":{"resourceVersion":"1"}}"#,
            409,
            "Conflict",
            "",
        ),
        case(
            "apply without fieldManager",
            "PATCH",
            format!("{BASE}/good"),
            "application/apply-patch+yaml",
            "apiVersion: test.corral.dev/v1\nkind: Widget\nmetadata: {name: good}\nspec: {color: red}\n",
            422,
            "Invalid",
            "fieldManager",
        ),
        case(
            "apply with managedFields",
            "PATCH",
            format!("{BASE}/good?fieldManager=t"),
            "application/apply-patch+yaml",
            "apiVersion: test.corral.dev/v1\nkind: Widget\nmetadata: {name: good, managedFields: [{manager: x}]}\nspec: {color: red}\n",
            400,
            "BadRequest",
            "managedFields must be nil",
        ),
        case(
            "force on merge patch",
            "PATCH",
            format!("{BASE}/good?force=true"),
            "application/merge-patch+json",
            "{}",
            422,
            "Invalid",
            "force",
        ),
        case(
            "bad propagation policy",
            "DELETE",
            format!("{BASE}/good"),
            json,
            r#"{"propagationPolicy":"Sideways"}"#,
            422,
            "Invalid",
            "propagationPolicy",
        ),
        case(
            "bad delete precondition",
            "DELETE",
            format!("{BASE}/good"),
            json,
            r#"{"preconditions":{"uid":"not-the-uid"}}"#,
            409,
            "Conflict",
            "Precondition failed",
        ),
        case(
            "bad dryRun",
            "POST",
            format!("{BASE}?dryRun=Some"),
            json,
            widget(r#"{"color":"red"}"#),
            422,
            "Invalid",
            "dryRun",
        ),
        case(
            "method not allowed",
            "PUT",
            BASE,
            json,
            "{}",
            405,
            "MethodNotAllowed",
            "",
        ),
        case(
            "unknown subresource",
            "GET",
            format!("{BASE}/good/scale"),
            json,
            "",
            404,
            "NotFound",
            "",
        ),
    ]
}

fn run(backend: Backend) {
    // Compact often so an exact list at revision 1 is gone.
    let server = common::apiserver_with(backend, &["--compaction-interval", "1s"]);
    let json_ct = [("Content-Type", "application/json")];
    let (status, body) = http(&server, "POST", BASE, &json_ct, br#"{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{"name":"good"},"spec":{"color":"red"}}"#);
    assert_eq!(status, 201, "{body}");
    let gadget_before = limits::create_good_gadget(&server);
    let good: Value = serde_json::from_str(&body).unwrap();
    let rv = good["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // Let two compactions pass so revision 1 is history.
    common::wait_until(
        "compaction past revision 1",
        std::time::Duration::from_secs(20),
        || {
            let (status, _) = http(
                &server,
                "GET",
                &format!("{BASE}?resourceVersion=1&resourceVersionMatch=Exact"),
                &[],
                b"",
            );
            status == 410
        },
    );
    let mut failures = Vec::new();
    let all = cases(&rv)
        .into_iter()
        .chain(limits::cases())
        .chain(lists::cases());
    for c in all {
        let (status, body) = http(
            &server,
            c.method,
            &c.path,
            &[("Content-Type", c.content_type)],
            &c.body,
        );
        let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let ok = status == c.code
            && parsed["kind"] == "Status"
            && parsed["reason"] == c.reason
            && parsed["code"] == c.code
            && parsed["message"]
                .as_str()
                .is_some_and(|m| m.contains(c.message));
        if !ok {
            failures.push(format!(
                "{}: want {} {} containing {:?}, got {status}: {}",
                c.name,
                c.code,
                c.reason,
                c.message,
                &body[..body.len().min(400)]
            ));
        }
        let (health, _) = http(&server, "GET", "/healthz", &[], b"");
        assert_eq!(health, 200, "server unhealthy after {}", c.name);
    }
    // Nothing of a rejected create or patch was written.
    let names = common::list_names(&server, BASE);
    assert_eq!(names, vec!["good"], "only the good object exists");
    limits::assert_good_gadget_unchanged(&server, &gadget_before);
    limits::objects_at_the_limits_round_trip(&server);
    limits::watches_with_any_timeout_are_served(&server);
    lists::any_limit_lists(&server);
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        !server.log().contains("panicked"),
        "the server panicked:\n{}",
        server.log()
    );
}

#[test]
fn bad_input_gets_status_errors_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn bad_input_gets_status_errors_on_etcd() {
    run(Backend::Etcd);
}
