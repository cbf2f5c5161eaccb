//! `get`: the server's printer columns rendered like kubectl, `-o wide|yaml|json|name`,
//! selectors, `-A`, missing names and `-w`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Two instances in `default` (one running on s1, one halted) and one in `prod`.
async fn seed(rack: &Rack) {
    rack.namespace("prod").await;
    let api = rack.instances("default");
    let mut web = instance_json("web-1", "Always");
    web["metadata"]["labels"] = json!({"app": "web"});
    rack.create(&api, web).await;
    rack.set_status(
        &api,
        "web-1",
        json!({"state": "Running", "sled": "s1", "activeVmm": "web-1-v1", "restarts": 2}),
    )
    .await;
    rack.create(&api, instance_json("db", "Halted")).await;
    rack.create(&rack.instances("prod"), instance_json("api", "Always"))
        .await;
}

fn column_names(line: &str) -> Vec<&str> {
    line.split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test]
async fn the_table_has_the_printer_columns_and_wide_adds_the_rest() {
    let rack = Rack::start().await;
    seed(&rack).await;
    let run = rack.corralctl(&["get", "instances"]).await.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        column_names(lines[0]),
        ["NAME", "STATE", "SLED", "CPUS", "MEMORY", "AGE"],
        "{run}"
    );
    assert_eq!(lines.len(), 3, "{run}");
    let web = lines
        .iter()
        .find(|l| l.starts_with("web-1"))
        .expect("a web-1 row");
    assert_eq!(
        column_names(web)[..5],
        ["web-1", "Running", "s1", "2", "2048"]
    );
    let db = lines
        .iter()
        .find(|l| l.starts_with("db"))
        .expect("a db row");
    assert_eq!(column_names(db)[..3], ["db", "<none>", "<none>"]);
    // Columns line up: each header starts where its cells start.
    let state_at = lines[0].find("STATE").unwrap();
    assert_eq!(&web[state_at..state_at + 7], "Running");

    let wide = rack.corralctl(&["get", "inst", "-o", "wide"]).await.ok();
    let header = wide.stdout.lines().next().unwrap();
    assert_eq!(
        column_names(header),
        [
            "NAME", "STATE", "SLED", "CPUS", "MEMORY", "STRATEGY", "VMM", "RESTARTS", "DIVERGED",
            "AGE"
        ],
        "{wide}"
    );
    assert!(wide.stdout.contains("web-1-v1"), "{wide}");

    let all = rack.corralctl(&["get", "instance", "-A"]).await.ok();
    assert_eq!(
        column_names(all.stdout.lines().next().unwrap())[0],
        "NAMESPACE"
    );
    assert!(
        all.stdout
            .lines()
            .any(|l| column_names(l)[..2] == ["prod", "api"]),
        "{all}"
    );

    let selected = rack
        .corralctl(&["get", "instances", "-l", "app=web"])
        .await
        .ok();
    assert_eq!(selected.stdout.lines().count(), 2, "{selected}");
    let by_field = rack
        .corralctl(&[
            "get",
            "instances",
            "--field-selector",
            "spec.runStrategy=Halted",
        ])
        .await
        .ok();
    assert_eq!(by_field.stdout.lines().count(), 2, "{by_field}");
    assert!(by_field.stdout.contains("db"), "{by_field}");

    let named = rack
        .corralctl(&["get", "instance/web-1", "inst/db"])
        .await
        .ok();
    assert_eq!(named.stdout.lines().count(), 3, "{named}");

    let none = rack.corralctl(&["get", "sleds"]).await.ok();
    assert_eq!(none.stdout, "");
    assert!(none.stderr.contains("No resources found"), "{none}");
}

#[tokio::test]
async fn yaml_json_and_name_outputs() {
    let rack = Rack::start().await;
    seed(&rack).await;
    let yaml = rack
        .corralctl(&["get", "instance", "web-1", "-o", "yaml"])
        .await
        .ok();
    let object: Value = serde_saphyr::from_str(&yaml.stdout).expect("YAML output");
    assert_eq!(object["kind"], "Instance");
    assert_eq!(object["apiVersion"], "corral.dev/v1alpha1");
    assert_eq!(object["spec"]["cpus"], 2);
    assert_eq!(object["status"]["state"], "Running");
    assert!(object["metadata"].get("managedFields").is_none(), "{yaml}");

    let json = rack
        .corralctl(&["get", "instances", "-o", "json"])
        .await
        .ok();
    let list: Value = serde_json::from_str(&json.stdout).expect("JSON output");
    assert_eq!(list["kind"], "List");
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["db", "web-1"]);
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "Instance")
    );

    let names = rack
        .corralctl(&["get", "instances", "-A", "-o", "name"])
        .await
        .ok();
    let mut lines: Vec<&str> = names.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "instance.corral.dev/api",
            "instance.corral.dev/db",
            "instance.corral.dev/web-1"
        ]
    );
}

#[tokio::test]
async fn missing_names_and_kinds_fail_with_a_message() {
    let rack = Rack::start().await;
    seed(&rack).await;
    let run = rack
        .corralctl(&["get", "instance", "web-1", "nope"])
        .await
        .failed();
    assert!(
        run.stdout.contains("web-1"),
        "the found one still prints:\n{run}"
    );
    assert!(
        run.stderr
            .contains("instances.corral.dev \"nope\" not found"),
        "{run}"
    );
    let run = rack.corralctl(&["get", "widgets"]).await.failed();
    assert!(
        run.stderr
            .contains("the server doesn't have a resource type \"widgets\""),
        "{run}"
    );
    let run = rack
        .corralctl(&["get", "instance", "instance/web-1"])
        .await
        .failed();
    assert!(run.stderr.contains("resource/name form"), "{run}");
}

#[tokio::test]
async fn watch_prints_rows_as_objects_change() {
    let rack = Rack::start().await;
    let api = rack.instances("default");
    rack.create(&api, instance_json("first", "Always")).await;
    let mut watch = rack.spawn(&["get", "instances", "-w", "--output-watch-events"]);
    watch
        .line_matching(Duration::from_secs(30), |l| l.contains("first"))
        .await;
    rack.create(&api, instance_json("second", "Always")).await;
    let added = watch
        .line_matching(Duration::from_secs(30), |l| l.contains("second"))
        .await;
    assert!(added.starts_with("ADDED"), "{added}");
    rack.set_status(&api, "second", json!({"state": "Starting"}))
        .await;
    let modified = watch
        .line_matching(Duration::from_secs(30), |l| {
            l.contains("second") && l.contains("Starting")
        })
        .await;
    assert!(modified.starts_with("MODIFIED"), "{modified}");
    api.delete("first", &Default::default()).await.unwrap();
    let deleted = watch
        .line_matching(Duration::from_secs(30), |l| l.starts_with("DELETED"))
        .await;
    assert!(deleted.contains("first"), "{deleted}");
    assert!(watch.seen[0].starts_with("EVENT"), "{:?}", watch.seen);
    watch.stop().await;
}
