//! `corralctl audit` and the Events of operator verbs: after a cordon by alice (an operator),
//! the audit trail names alice, the verb, the object and the time, and the sled's Events say
//! who cordoned it; a user without a role is refused the write (and the refusal is in the
//! trail) and may not read the trail.

use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn the_trail_names_who_cordoned_a_sled_and_when() {
    let rack = Rack::start_with_users(&[("alice", &["corral:operators"]), ("tom", &[])]).await;
    rack.create(&rack.sleds(), sled_json("sled-1")).await;
    rack.create(&rack.sleds(), sled_json("sled-10")).await;

    let before = jiff::Timestamp::now();
    rack.corralctl_as("alice", &["cordon", "sled-1"]).await.ok();
    let after = jiff::Timestamp::now();
    rack.corralctl(&["cordon", "sled-10"]).await.ok();
    // tom holds no role: his write is refused, and recorded.
    let tom = corral_client::connect(Some(&rack.server.kubeconfig_of("tom")))
        .await
        .expect("a client as tom");
    let refused = kube::Api::<corral_crds::Sled>::all(tom)
        .patch(
            "sled-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(status)) if status.code == 403),
        "{refused:?}"
    );

    // The table: alice's cordon (the program and the command named), tom's refusal; nothing
    // about sled-10.
    let table = rack
        .corralctl_as(
            "alice",
            &["audit", "--resource", "sled", "--name", "sled-1"],
        )
        .await
        .ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("TIME"), "{table}");
    let cordon = lines
        .iter()
        .find(|line| line.contains("alice"))
        .unwrap_or_else(|| panic!("no line names alice:\n{table}"));
    for word in ["patch", "sleds/sled-1", "200", "corralctl/", "(cordon)"] {
        assert!(cordon.contains(word), "{word:?} not in {cordon:?}");
    }
    let refusal = lines
        .iter()
        .find(|line| line.contains("tom"))
        .unwrap_or_else(|| panic!("no line names tom:\n{table}"));
    assert!(
        refusal.contains("patch") && refusal.contains("403"),
        "{refusal}"
    );
    assert!(!table.stdout.contains("sled-10"), "{table}");

    // The Event itself: who, groups, verb, object, code and when.
    let listed = rack
        .corralctl(&[
            "audit",
            "--resource",
            "sleds",
            "--name",
            "sled-1",
            "--user",
            "alice",
            "-o",
            "json",
        ])
        .await
        .ok();
    let list: Value = serde_json::from_str(&listed.stdout).expect("JSON");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{listed}");
    let event = &items[0];
    assert_eq!(event["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(event["user"]["username"], "alice");
    assert!(
        event["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("corral:operators")),
        "{event}"
    );
    assert_eq!(event["verb"], "patch");
    assert_eq!(event["objectRef"]["resource"], "sleds");
    assert_eq!(event["objectRef"]["apiGroup"], "corral.dev");
    assert_eq!(event["responseStatus"]["code"], 200);
    let at: jiff::Timestamp = event["requestReceivedTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(before <= at && at <= after, "{before} <= {at} <= {after}");

    // The sled's Events say who cordoned it.
    let events = rack
        .corralctl(&["events", "--for", "sled/sled-1"])
        .await
        .ok();
    assert!(
        events.stdout.contains("Cordoned") && events.stdout.contains("cordoned by alice"),
        "{events}"
    );

    // Reading the trail is an operator's right, not everyone's.
    let denied = rack.corralctl_as("tom", &["audit"]).await.failed();
    assert!(denied.stderr.contains("forbidden"), "{denied}");
}

#[tokio::test]
async fn instance_verbs_record_who_asked() {
    let rack = Rack::start_with_users(&[("alice", &["corral:operators"])]).await;
    let api = rack.instances("default");
    rack.create(&api, instance_json("web", "Always")).await;
    rack.corralctl_as("alice", &["stop", "web"]).await.ok();
    rack.corralctl(&["start", "web"]).await.ok();
    rack.corralctl_as("alice", &["reboot", "web"]).await.ok();
    let events = rack
        .corralctl(&["events", "--for", "instance/web"])
        .await
        .ok();
    for line in [
        "stop requested by alice",
        "start requested by admin",
        "reboot requested by alice",
    ] {
        assert!(events.stdout.contains(line), "{line:?}:\n{events}");
    }
    for reason in ["StopRequested", "StartRequested", "RebootRequested"] {
        assert!(events.stdout.contains(reason), "{reason}:\n{events}");
    }
    // A stop that changes nothing records nothing: two more stops, one more Event.
    rack.corralctl_as("alice", &["stop", "web"]).await.ok();
    let noop = rack.corralctl_as("alice", &["stop", "web"]).await.ok();
    assert!(noop.stdout.contains("already stopped"), "{noop}");
    let events = rack
        .corralctl(&["events", "--for", "instance/web"])
        .await
        .ok();
    assert_eq!(
        events.stdout.matches("stop requested by alice").count(),
        2,
        "{events}"
    );
}
