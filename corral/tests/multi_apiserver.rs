//! Several API servers on one etcd serve one consistent API: a write through one is read,
//! listed and watched through the others, and conditional writes conflict across servers.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{Apiserver, Backend, http};
use serde_json::Value;

const BASE: &str = "/apis/test.corral.dev/v1/namespaces/default/widgets";

fn create(server: &Apiserver, name: &str) -> Value {
    let body = format!(
        r#"{{"apiVersion":"test.corral.dev/v1","kind":"Widget","metadata":{{"name":"{name}"}},"spec":{{"color":"red"}}}}"#
    );
    let (status, body) = http(
        server,
        "POST",
        BASE,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn three_apiservers_on_one_etcd_agree() {
    let a = common::apiserver(Backend::Etcd);
    let b = common::peer(&a);
    let c = common::peer(&a);

    // A watch through C, started before the writes.
    let (_, list) = http(&c, "GET", BASE, &[], b"");
    let rv = serde_json::from_str::<Value>(&list).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut watch = common::connect(&c, Duration::from_secs(20)).expect("connecting to C");
    write!(
        watch,
        "GET {BASE}?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();

    let created = create(&a, "from-a");
    let created_rv: i64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // B reads A's write at once (a consistent read from etcd).
    let (status, body) = http(&b, "GET", &format!("{BASE}/from-a"), &[], b"");
    assert_eq!(status, 200, "{body}");
    let through_b: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(through_b["metadata"]["uid"], created["metadata"]["uid"]);

    // A stale update through B conflicts once A has moved the object on.
    let mut stale = through_b.clone();
    let patch = r#"{"spec":{"color":"blue"}}"#;
    let (status, _) = http(
        &a,
        "PATCH",
        &format!("{BASE}/from-a"),
        &[("Content-Type", "application/merge-patch+json")],
        patch.as_bytes(),
    );
    assert_eq!(status, 200);
    stale["spec"]["color"] = "green".into();
    let (status, body) = http(
        &b,
        "PUT",
        &format!("{BASE}/from-a"),
        &[("Content-Type", "application/json")],
        stale.to_string().as_bytes(),
    );
    assert_eq!(status, 409, "{body}");

    // Every server lists the same objects at a revision at least as new as the write.
    create(&b, "from-b");
    for server in [&a, &b, &c] {
        let (status, body) = http(server, "GET", BASE, &[], b"");
        assert_eq!(status, 200);
        let list: Value = serde_json::from_str(&body).unwrap();
        let names: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["from-a", "from-b"]);
        let list_rv: i64 = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(list_rv > created_rv);
    }

    // C's watch saw A's create, A's patch and B's create, in order.
    let mut reader = BufReader::new(watch);
    let mut seen = Vec::new();
    let mut line = String::new();
    while seen.len() < 3 {
        line.clear();
        reader.read_line(&mut line).expect("reading the watch");
        let trimmed = line.trim();
        if !trimmed.starts_with('{') {
            continue; // HTTP headers and chunk sizes.
        }
        let event: Value = serde_json::from_str(trimmed).unwrap();
        seen.push(format!(
            "{} {} {}",
            event["type"].as_str().unwrap(),
            event["object"]["metadata"]["name"].as_str().unwrap(),
            event["object"]["spec"]["color"].as_str().unwrap()
        ));
    }
    assert_eq!(
        seen,
        vec![
            "ADDED from-a red",
            "MODIFIED from-a blue",
            "ADDED from-b red"
        ]
    );
}
