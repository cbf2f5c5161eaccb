//! Operator verbs (`stop`, `start`, `reboot`, `cordon`, `uncordon`) change the spec as
//! docs/rack.md says, and `diff` reports a hand-built rack's differences.

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn stop_start_and_reboot_change_the_spec() {
    let rack = Rack::start().await;
    let api = rack.instances("default");
    rack.create(&api, instance_json("web", "RerunOnFailure"))
        .await;
    rack.create(&api, instance_json("db", "Always")).await;

    let run = rack.corralctl(&["stop", "web", "db"]).await.ok();
    assert_eq!(
        run.stdout,
        "instance.corral.dev/web stopped (runStrategy Halted)\ninstance.corral.dev/db stopped (runStrategy Halted)\n"
    );
    let web = api.get("web").await.unwrap();
    assert_eq!(at(&web, "/spec/runStrategy"), json!("Halted"));
    assert_eq!(
        at(
            &web,
            "/metadata/annotations/corral.dev~1run-strategy-before-stop"
        ),
        json!("RerunOnFailure")
    );
    // A second stop keeps the remembered strategy.
    let run = rack.corralctl(&["stop", "web"]).await.ok();
    assert!(run.stdout.contains("already stopped"), "{run}");
    let web = api.get("web").await.unwrap();
    assert_eq!(
        at(
            &web,
            "/metadata/annotations/corral.dev~1run-strategy-before-stop"
        ),
        json!("RerunOnFailure")
    );

    let run = rack.corralctl(&["start", "web"]).await.ok();
    assert_eq!(run.stdout, "instance.corral.dev/web start requested\n");
    let web = api.get("web").await.unwrap();
    assert_eq!(at(&web, "/spec/runStrategy"), json!("RerunOnFailure"));
    assert_eq!(
        at(
            &web,
            "/metadata/annotations/corral.dev~1run-strategy-before-stop"
        ),
        Value::Null
    );
    let requested = at(&web, "/spec/startRequest");
    let requested: jiff::Timestamp = requested.as_str().unwrap().parse().expect("RFC 3339");
    assert!(jiff::Timestamp::now().duration_since(requested).as_secs() < 60);

    let before = at(&web, "/metadata/generation");
    rack.corralctl(&["reboot", "web"]).await.ok();
    let web = api.get("web").await.unwrap();
    let reboot = at(&web, "/spec/rebootRequest");
    assert!(
        reboot.as_str().unwrap().parse::<jiff::Timestamp>().is_ok(),
        "{reboot}"
    );
    assert_ne!(at(&web, "/metadata/generation"), before, "a spec change");

    // In another namespace, with -n; a missing instance fails only itself.
    rack.namespace("prod").await;
    rack.create(&rack.instances("prod"), instance_json("api", "Manual"))
        .await;
    let run = rack
        .corralctl(&["-n", "prod", "stop", "nope", "api"])
        .await
        .failed();
    assert!(run.stderr.contains("nope"), "{run}");
    let prod_api = rack.instances("prod").get("api").await.unwrap();
    assert_eq!(at(&prod_api, "/spec/runStrategy"), json!("Halted"));
    rack.corralctl(&["start", "api", "-n", "prod"]).await.ok();
    let prod_api = rack.instances("prod").get("api").await.unwrap();
    assert_eq!(at(&prod_api, "/spec/runStrategy"), json!("Manual"));
}

#[tokio::test]
async fn cordon_and_uncordon_set_unschedulable() {
    let rack = Rack::start().await;
    rack.create(&rack.sleds(), sled_json("s1")).await;
    rack.create(&rack.sleds(), sled_json("s2")).await;
    let run = rack.corralctl(&["cordon", "s1", "s2"]).await.ok();
    assert_eq!(
        run.stdout,
        "sled.corral.dev/s1 cordoned\nsled.corral.dev/s2 cordoned\n"
    );
    for name in ["s1", "s2"] {
        let sled = rack.sleds().get(name).await.unwrap();
        assert_eq!(at(&sled, "/spec/unschedulable"), json!(true));
    }
    let run = rack.corralctl(&["cordon", "s1"]).await.ok();
    assert_eq!(run.stdout, "sled.corral.dev/s1 already cordoned\n");
    let table = rack.corralctl(&["get", "sleds"]).await.ok();
    assert!(
        table.stdout.lines().nth(1).unwrap().contains("true"),
        "{table}"
    );
    rack.corralctl(&["uncordon", "s1"]).await.ok();
    let sled = rack.sleds().get("s1").await.unwrap();
    assert_eq!(at(&sled, "/spec/unschedulable"), json!(false));
    let run = rack.corralctl(&["cordon", "s9"]).await.failed();
    assert!(run.stderr.contains("s9"), "{run}");
}

#[tokio::test]
async fn diff_reports_a_hand_built_rack() {
    let rack = Rack::start().await;
    let ready = json!([condition("Ready", "True", "AgentReady", "")]);
    for (name, epoch, conditions) in [
        ("s1", 1, ready.clone()),
        ("s2", 3, ready.clone()),
        (
            "s3",
            1,
            json!([condition(
                "Ready",
                "Unknown",
                "HeartbeatExpired",
                "no heartbeat for 40s"
            )]),
        ),
    ] {
        rack.create(&rack.sleds(), sled_json(name)).await;
        rack.set_status(
            &rack.sleds(),
            name,
            json!({"epoch": epoch, "conditions": conditions}),
        )
        .await;
    }
    let instances = rack.instances("default");
    let vmms = rack.vmms("default");
    let vmm = |name: &str, instance: &str, sled: &str, epoch: u64| {
        json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Vmm",
            "metadata": {"name": name},
            "spec": {"instance": instance, "sled": sled, "sledEpoch": epoch,
                     "resources": {"cpus": 2, "memoryMiB": 2048}, "image": "debian-12"},
        })
    };
    // A converged rack first: one instance running on s1.
    rack.create(&instances, instance_json("good", "Always"))
        .await;
    rack.set_status(
        &instances,
        "good",
        json!({"state": "Running", "activeVmm": "good-v1", "sled": "s1"}),
    )
    .await;
    rack.create(&vmms, vmm("good-v1", "good", "s1", 1)).await;
    rack.set_status(
        &vmms,
        "good-v1",
        json!({"state": "Running", "stateGeneration": 3}),
    )
    .await;
    rack.sleds()
        .patch_status(
            "s3",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"status": {"conditions": ready}})),
        )
        .await
        .unwrap();
    let run = rack.corralctl(&["diff", "--exit-code"]).await.ok();
    assert_eq!(run.stdout, "no differences\n");

    // Now break it in several ways.
    rack.set_status(
        &rack.sleds(),
        "s3",
        json!({"conditions": [condition("Ready", "Unknown", "HeartbeatExpired", "no heartbeat for 40s")]}),
    )
    .await;
    rack.create(&instances, instance_json("down", "Always"))
        .await;
    rack.set_status(
        &instances,
        "down",
        json!({"state": "Repairing", "conditions": [condition("Diverged", "True", "VmmKilled", "the VMM was killed")]}),
    )
    .await;
    rack.create(&vmms, vmm("down-v1", "down", "s1", 1)).await;
    rack.create(&vmms, vmm("stale-v1", "good", "s2", 2)).await;
    let run = rack.corralctl(&["diff"]).await.ok();
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .skip(1)
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    let found: Vec<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| r.len() >= 4)
        .map(|r| (r[0], if r.len() == 5 { r[2] } else { r[1] }, r[r.len() - 2]))
        .collect();
    assert_eq!(
        found,
        [
            ("Instance", "down", "NotRunning"),
            ("Instance", "down", "Diverged"),
            ("Vmm", "down-v1", "Abandoned"),
            ("Vmm", "stale-v1", "Abandoned"),
            ("Vmm", "stale-v1", "StaleEpoch"),
            ("Sled", "s3", "NotReady"),
        ],
        "{run}"
    );
    assert!(
        run.stdout
            .contains("Diverged=True (VmmKilled): the VMM was killed"),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("Ready=Unknown (HeartbeatExpired): no heartbeat for 40s"),
        "{run}"
    );
    assert!(
        run.stdout.ends_with("6 differences on 4 objects\n"),
        "{run}"
    );
    let run = rack.corralctl(&["diff", "--exit-code"]).await.failed();
    assert_eq!(run.code, 1);
}
