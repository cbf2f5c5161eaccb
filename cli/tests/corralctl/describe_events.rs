//! `describe` (conditions and Events of one object) and `events` (the table, `--for`, `-A`,
//! `-w`). Events are recorded with the same recorder the controllers use.

use std::time::Duration;

use corral_client::events::Recorder;
use corral_crds::{Instance, Reason, Sled};
use kube::Api;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn describe_shows_spec_status_conditions_and_events() {
    let rack = Rack::start().await;
    let api = rack.instances("default");
    rack.create(&api, instance_json("web-1", "Always")).await;
    rack.set_status(
        &api,
        "web-1",
        json!({
            "state": "Running", "sled": "s1", "activeVmm": "web-1-v1",
            "conditions": [
                condition("Scheduled", "True", "Placed", "placed on s1"),
                condition("Running", "True", "VmmRunning", "web-1-v1 runs"),
            ],
        }),
    )
    .await;
    let typed: Api<Instance> = Api::namespaced(rack.client.clone(), "default");
    let web = typed.get("web-1").await.unwrap();
    let recorder = Recorder::new(rack.client.clone(), "instance-controller");
    recorder
        .normal(&web, Reason::Placed, "placed on sled s1")
        .await;
    recorder
        .warning(&web, Reason::GuestCrashed, "the guest crashed")
        .await;

    let run = rack
        .corralctl(&["describe", "instance", "web-1"])
        .await
        .ok();
    let text = &run.stdout;
    for needle in [
        "Name:         web-1",
        "Namespace:    default",
        "Kind:         Instance",
        "Spec:\n",
        "  cpus: 2",
        "Status:\n",
        "  state: Running",
        "Conditions:\n",
        "Events:\n",
        "instance-controller",
        "placed on sled s1",
        "the guest crashed",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{run}");
    }
    let conditions: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Conditions:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(conditions.len(), 3, "{run}");
    assert!(
        conditions[0].contains("TYPE") && conditions[0].contains("REASON"),
        "{run}"
    );
    assert!(
        conditions[2].contains("Running") && conditions[2].contains("VmmRunning"),
        "{run}"
    );
    // Oldest Event first.
    let placed = text.find("placed on sled s1").unwrap();
    let crashed = text.find("the guest crashed").unwrap();
    assert!(placed < crashed, "{run}");

    let missing = rack
        .corralctl(&["describe", "instance", "nope"])
        .await
        .failed();
    assert!(missing.stderr.contains("\"nope\" not found"), "{missing}");
}

#[tokio::test]
async fn events_lists_filters_and_watches() {
    let rack = Rack::start().await;
    rack.create(&rack.instances("default"), instance_json("web-1", "Always"))
        .await;
    rack.create(&rack.instances("default"), instance_json("db", "Always"))
        .await;
    rack.create(&rack.sleds(), sled_json("s1")).await;
    let typed: Api<Instance> = Api::namespaced(rack.client.clone(), "default");
    let sleds: Api<Sled> = Api::all(rack.client.clone());
    let recorder = Recorder::new(rack.client.clone(), "instance-controller");
    recorder
        .normal(
            &typed.get("web-1").await.unwrap(),
            Reason::Placed,
            "web placed",
        )
        .await;
    recorder
        .normal(&typed.get("db").await.unwrap(), Reason::Placed, "db placed")
        .await;
    recorder
        .warning(
            &sleds.get("s1").await.unwrap(),
            Reason::HeartbeatExpired,
            "s1 is silent",
        )
        .await;

    let run = rack.corralctl(&["events"]).await.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("LAST SEEN"), "{run}");
    for header in ["TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(lines[0].contains(header), "{run}");
    }
    assert_eq!(lines.len(), 4, "{run}");
    assert!(
        lines[1].contains("instance/web-1") && lines[1].contains("web placed"),
        "{run}"
    );
    assert!(
        lines[3].contains("sled/s1") && lines[3].contains("Warning"),
        "{run}"
    );

    let only = rack
        .corralctl(&["events", "--for", "instance/db"])
        .await
        .ok();
    assert_eq!(only.stdout.lines().count(), 2, "{only}");
    assert!(only.stdout.contains("db placed"), "{only}");
    let sled = rack.corralctl(&["events", "--for", "sled/s1"]).await.ok();
    assert!(sled.stdout.contains("s1 is silent"), "{sled}");
    let all = rack.corralctl(&["events", "-A"]).await.ok();
    assert!(all.stdout.starts_with("NAMESPACE"), "{all}");

    let mut watch = rack.spawn(&["events", "-w", "--for", "instance/web-1"]);
    watch
        .line_matching(Duration::from_secs(30), |l| l.contains("web placed"))
        .await;
    recorder
        .warning(
            &typed.get("web-1").await.unwrap(),
            Reason::GuestCrashed,
            "web crashed",
        )
        .await;
    watch
        .line_matching(Duration::from_secs(30), |l| l.contains("web crashed"))
        .await;
    watch.stop().await;
}
