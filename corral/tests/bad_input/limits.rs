//! The cases about the server's limits: JSON patches that would grow without bound, objects
//! nested too deep or too large, YAML alias bombs; and the objects at the limits, which must
//! be stored and read back whole.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use serde_json::{Value, json};

use super::{BASE, Case, case};
use crate::common::{Reach, TlsStream, connect, http};

pub const GADGETS: &str = "/apis/test.corral.dev/v1/gadgets";
const INSTANCES: &str = "/apis/corral.dev/v1alpha1/namespaces/default/instances";
const VMMS: &str = "/apis/corral.dev/v1alpha1/namespaces/default/vmms";

fn instance(cpus: &str, memory_mib: &str) -> String {
    format!(
        r#"{{"apiVersion":"corral.dev/v1alpha1","kind":"Instance","metadata":{{"name":"big"}},"spec":{{"cpus":{cpus},"memoryMiB":{memory_mib},"image":"debian"}}}}"#
    )
}

fn vmm(cpus: &str, memory_mib: &str) -> String {
    format!(
        r#"{{"apiVersion":"corral.dev/v1alpha1","kind":"Vmm","metadata":{{"name":"big-v1"}},"spec":{{"instance":"big","sled":"s1","sledEpoch":1,"resources":{{"cpus":{cpus},"memoryMiB":{memory_mib}}},"image":"debian"}}}}"#
    )
}

/// `{"a":{"a":…1}}` with `levels` objects.
pub fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!({ "a": inner }))
}

fn gadget(name: &str, spec: Value) -> Vec<u8> {
    json!({"apiVersion": "test.corral.dev/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": spec})
        .to_string()
        .into_bytes()
}

/// Creates the Gadget `name`; its status and answer.
fn post_gadget(to: &impl Reach, name: &str, spec: Value) -> (u16, String) {
    let json_ct = [("Content-Type", "application/json")];
    http(to, "POST", GADGETS, &json_ct, &gadget(name, spec))
}

/// Creates the Gadget the cases patch (its spec keeps unknown fields, so it can hold
/// anything); returns it as created.
pub fn create_good_gadget(to: &impl Reach) -> Value {
    let (status, body) = post_gadget(to, "good-gadget", json!({"x": 1}));
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).expect("a created object is JSON")
}

/// No case changed the Gadget, and no Gadget of a case was created.
pub fn assert_good_gadget_unchanged(to: &impl Reach, before: &Value) {
    let (status, body) = http(to, "GET", &format!("{GADGETS}/good-gadget"), &[], b"");
    assert_eq!(status, 200, "{body}");
    let now: Value = serde_json::from_str(&body).expect("an object is JSON");
    assert_eq!(
        now["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "a refused patch changed the Gadget: {body}"
    );
    assert_eq!(crate::common::list_names(to, GADGETS), vec!["good-gadget"]);
}

/// Each `copy` appends the whole list to itself: the document doubles per operation.
fn copy_bomb() -> String {
    let mut ops = vec![json!({"op": "add", "path": "/spec/bomb", "value": ["x".repeat(1000)]})];
    ops.extend(
        (0..40).map(|_| json!({"op": "copy", "from": "/spec/bomb", "path": "/spec/bomb/-"})),
    );
    Value::Array(ops).to_string()
}

/// Each `copy` puts the value under itself: its nesting grows by its own depth per operation.
fn nesting_by_copies() -> String {
    let mut ops = vec![json!({"op": "add", "path": "/spec/x", "value": {"a": {}}})];
    ops.extend((0..60).map(|_| json!({"op": "copy", "from": "/spec/x", "path": "/spec/x/a/b"})));
    Value::Array(ops).to_string()
}

/// Nine anchors, each ten aliases of the one before: 10^9 strings once expanded.
pub fn billion_laughs() -> String {
    let mut yaml = String::from(
        "apiVersion: test.corral.dev/v1\nkind: Widget\nmetadata: {name: laughs}\nspec:\n  color: red\n  a0: &a0 [lol]\n",
    );
    for i in 1..10 {
        let aliases = vec![format!("*a{}", i - 1); 10].join(", ");
        yaml.push_str(&format!("  a{i}: &a{i} [{aliases}]\n"));
    }
    yaml
}

pub fn cases() -> Vec<Case> {
    let json = "application/json";
    let json_patch = "application/json-patch+json";
    let good_gadget = format!("{GADGETS}/good-gadget");
    vec![
        case(
            "JSON patch copy bomb",
            "PATCH",
            format!("{BASE}/good"),
            json_patch,
            copy_bomb(),
            422,
            "Invalid",
            "the patch would create more than 3145728 bytes",
        ),
        case(
            "JSON patch nesting by copies",
            "PATCH",
            good_gadget.clone(),
            json_patch,
            nesting_by_copies(),
            422,
            "Invalid",
            "more than the limit of 105",
        ),
        case(
            "JSON patch result nested too deep",
            "PATCH",
            good_gadget.clone(),
            json_patch,
            json!([{"op": "add", "path": "/spec/deep", "value": nested(99)}]).to_string(),
            422,
            "Invalid",
            "spec.deep.a.a.a",
        ),
        case(
            "merge patch nested too deep",
            "PATCH",
            good_gadget.clone(),
            "application/merge-patch+json",
            json!({"spec": nested(110)}).to_string(),
            422,
            "Invalid",
            "Forbidden: nested too deeply: an object may nest at most 100 levels",
        ),
        case(
            "apply nested too deep",
            "PATCH",
            format!("{good_gadget}?fieldManager=t"),
            "application/apply-patch+yaml",
            gadget("good-gadget", nested(105)),
            422,
            "Invalid",
            "nested too deeply",
        ),
        case(
            "object nested too deep",
            "POST",
            GADGETS,
            json,
            gadget("deep", nested(110)),
            422,
            "Invalid",
            "spec.a.a.a",
        ),
        case(
            "object too large",
            "POST",
            GADGETS,
            json,
            gadget("huge", json!({"note": "x".repeat(1_600_000)})),
            422,
            "Invalid",
            "spec: Too long: the object would take",
        ),
        case(
            "Instance with 2^32-1 CPUs",
            "POST",
            INSTANCES,
            json,
            instance("4294967295", "1024"),
            422,
            "Invalid",
            "spec.cpus",
        ),
        case(
            "Instance with 2^64-1 MiB",
            "POST",
            INSTANCES,
            json,
            instance("2", "18446744073709551615"),
            422,
            "Invalid",
            "spec.memoryMiB",
        ),
        case(
            "Instance with more MiB than an integer holds",
            "POST",
            INSTANCES,
            json,
            instance("2", "100000000000000000000000000000"),
            422,
            "Invalid",
            "spec.memoryMiB",
        ),
        case(
            "Vmm with 2^32-1 CPUs",
            "POST",
            VMMS,
            json,
            vmm("4294967295", "1024"),
            422,
            "Invalid",
            "spec.resources.cpus",
        ),
        case(
            "Vmm with 2^64-1 MiB",
            "POST",
            VMMS,
            json,
            vmm("1", "18446744073709551615"),
            422,
            "Invalid",
            "spec.resources.memoryMiB",
        ),
        case(
            "YAML alias bomb",
            "POST",
            BASE,
            "application/yaml",
            billion_laughs(),
            400,
            "BadRequest",
            "not valid YAML",
        ),
        case(
            "YAML nested too deep",
            "POST",
            BASE,
            "application/yaml",
            format!(
                "apiVersion: test.corral.dev/v1\nkind: Widget\nmetadata: {{name: deep}}\nspec: {}1{}\n",
                "[".repeat(70),
                "]".repeat(70)
            ),
            400,
            "BadRequest",
            "not valid YAML",
        ),
    ]
}

/// The objects at the limits are stored and read back whole: nested to the limit (created,
/// and applied, whose managedFields nest deeper still), and three objects of nearly the most
/// bytes an object may have, in one list.
pub fn objects_at_the_limits_round_trip(to: &impl Reach) {
    // The object is level 1 and spec level 2: 99 levels under spec reach the limit of 100.
    let (status, body) = post_gadget(to, "deepest", nested(99));
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        to,
        "PATCH",
        &format!("{GADGETS}/applied?fieldManager=t"),
        &[("Content-Type", "application/apply-patch+yaml")],
        &gadget("applied", nested(99)),
    );
    assert_eq!(status, 201, "{body}");
    let large = json!({"note": "x".repeat(1_400_000)});
    for name in ["large-1", "large-2", "large-3"] {
        let (status, body) = post_gadget(to, name, large.clone());
        assert_eq!(status, 201, "{}", &body[..body.len().min(400)]);
    }
    for name in ["deepest", "applied", "large-1"] {
        let (status, body) = http(to, "GET", &format!("{GADGETS}/{name}"), &[], b"");
        assert_eq!(status, 200, "{}", &body[..body.len().min(400)]);
    }
    let expected = [
        "applied",
        "deepest",
        "good-gadget",
        "large-1",
        "large-2",
        "large-3",
    ];
    // From the store, and from the watch cache.
    for list in [GADGETS.to_string(), format!("{GADGETS}?resourceVersion=0")] {
        let names = crate::common::list_names(to, &list);
        assert_eq!(names, expected, "{list}");
    }
    for name in expected.iter().filter(|name| **name != "good-gadget") {
        let (status, body) = http(to, "DELETE", &format!("{GADGETS}/{name}"), &[], b"");
        assert_eq!(status, 200, "{body}");
    }
}

/// Sends a GET for `path` and reads the answer's status line and headers, leaving the body (a
/// watch's stream) unread on the returned connection.
pub fn open_stream(to: &impl Reach, path: &str) -> (u16, BufReader<TlsStream>) {
    let address = to.endpoint().address;
    let mut stream = connect(to, Duration::from_secs(10)).expect("connecting");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").expect("writing");
    stream.flush().expect("sending");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("a status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    loop {
        let mut header = String::new();
        let read = reader.read_line(&mut header).expect("a header line");
        if read == 0 || header == "\r\n" {
            break;
        }
    }
    (status, reader)
}

/// The next event of a watch opened by [`open_stream`] (one event per chunk).
pub fn next_event(stream: &mut BufReader<TlsStream>) -> String {
    let mut size = String::new();
    stream.read_line(&mut size).expect("a chunk size");
    let mut event = String::new();
    stream.read_line(&mut event).expect("an event");
    event
}

/// A watch asking for the longest timeout there is gets one the server can keep (it is
/// clamped to twice the minimum request timeout); so do one with none and one with a negative
/// one.
pub fn watches_with_any_timeout_are_served(to: &impl Reach) {
    for timeout in ["9223372036854775807", "0", "-9223372036854775808", "1"] {
        let path = format!("{BASE}?watch=true&timeoutSeconds={timeout}");
        let (status, mut stream) = open_stream(to, &path);
        assert_eq!(status, 200, "{path}");
        // The first event: the existing Widget.
        let event = next_event(&mut stream);
        assert!(event.contains(r#""type":"ADDED""#), "{path}: {event}");
    }
    let (health, _) = http(to, "GET", "/healthz", &[], b"");
    assert_eq!(health, 200);
}
