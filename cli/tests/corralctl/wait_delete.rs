//! `wait --for=condition|delete` (the test writes the status a controller would) and
//! `delete` by name, selector and manifest, with `--wait`.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn wait_returns_once_the_condition_is_written() {
    let rack = Rack::start().await;
    let api = rack.instances("default");
    rack.create(&api, instance_json("web-1", "Always")).await;
    rack.set_status(
        &api,
        "web-1",
        json!({"observedGeneration": 1, "conditions": [condition("Running", "False", "Booting", "booting")]}),
    )
    .await;
    let waiting = rack.spawn(&[
        "wait",
        "--for=condition=Running",
        "instance/web-1",
        "--timeout",
        "60s",
    ]);
    rack.set_status(
        &api,
        "web-1",
        json!({"conditions": [condition("Running", "True", "VmmRunning", "runs")]}),
    )
    .await;
    let run = waiting.finish().await.ok();
    assert_eq!(
        run.stdout, "instance.corral.dev/web-1 condition met",
        "{run}"
    );
    // Already met: returns at once; an explicit status works too.
    rack.corralctl(&["wait", "--for=condition=running=true", "instances", "web-1"])
        .await
        .ok();
}

#[tokio::test]
async fn wait_times_out_saying_what_it_saw() {
    let rack = Rack::start().await;
    let api = rack.instances("default");
    rack.create(&api, instance_json("web-1", "Always")).await;
    rack.set_status(
        &api,
        "web-1",
        json!({"observedGeneration": 1, "conditions": [condition("Running", "False", "Booting", "still booting")]}),
    )
    .await;
    let started = std::time::Instant::now();
    let run = rack
        .corralctl(&[
            "wait",
            "--for=condition=Running",
            "instance/web-1",
            "--timeout",
            "1s",
        ])
        .await
        .failed();
    assert_eq!(run.code, 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout was not honoured"
    );
    assert!(
        run.stderr.contains(
            "timed out after 1s waiting for condition Running=True on instance.corral.dev/web-1"
        ),
        "{run}"
    );
    assert!(
        run.stderr
            .contains("Running=False, reason Booting: still booting"),
        "{run}"
    );
    // A status computed from an older spec does not count.
    rack.set_status(
        &api,
        "web-1",
        json!({"observedGeneration": 0, "conditions": [condition("Running", "True", "VmmRunning", "")]}),
    )
    .await;
    let run = rack
        .corralctl(&[
            "wait",
            "--for=condition=Running",
            "instance/web-1",
            "--timeout",
            "1s",
        ])
        .await
        .failed();
    assert!(
        run.stderr
            .contains("observedGeneration 0 is behind generation 1"),
        "{run}"
    );
    // Waiting for a condition of an object that does not exist fails at once.
    let run = rack
        .corralctl(&[
            "wait",
            "--for=condition=Running",
            "instance/nope",
            "--timeout",
            "30s",
        ])
        .await
        .failed();
    assert!(
        run.stderr.contains("instance.corral.dev/nope not found"),
        "{run}"
    );
}

#[tokio::test]
async fn wait_for_delete_returns_when_the_last_finalizer_goes() {
    let rack = Rack::start().await;
    let api = rack.instances("default");
    let mut held = instance_json("held", "Always");
    held["metadata"]["finalizers"] = json!(["corral.dev/instance-controller"]);
    rack.create(&api, held).await;
    let run = rack.corralctl(&["delete", "instance", "held"]).await.ok();
    assert_eq!(run.stdout, "instances.corral.dev \"held\" deleted\n");
    let waiting = rack.spawn(&["wait", "--for=delete", "instance/held", "--timeout", "60s"]);
    // Still there, being deleted: the wait must not return yet. Then the controller lets go.
    assert!(api.get_opt("held").await.unwrap().is_some());
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let run = waiting.finish().await.ok();
    assert_eq!(run.stdout, "instance.corral.dev/held deleted", "{run}");
    // Gone already: succeeds at once.
    rack.corralctl(&["wait", "--for=delete", "instance/held", "--timeout", "5s"])
        .await
        .ok();
}

#[tokio::test]
async fn delete_by_name_selector_and_manifest_with_wait() {
    let rack = Rack::start().await;
    let api = rack.instances("default");
    for name in ["a", "b", "c"] {
        let mut object = instance_json(name, "Always");
        object["metadata"]["labels"] = json!({"tier": if name == "a" { "front" } else { "back" }});
        rack.create(&api, object).await;
    }
    let run = rack
        .corralctl(&["delete", "inst", "a", "--wait"])
        .await
        .ok();
    assert_eq!(run.stdout, "instances.corral.dev \"a\" deleted\n");
    assert!(api.get_opt("a").await.unwrap().is_none());

    let run = rack.corralctl(&["delete", "instances"]).await.failed();
    assert!(run.stderr.contains("-l SELECTOR or --all"), "{run}");
    let run = rack
        .corralctl(&["delete", "instances", "-l", "tier=back"])
        .await
        .ok();
    assert_eq!(run.stdout.lines().count(), 2, "{run}");
    assert!(api.get_opt("b").await.unwrap().is_none());

    let path = rack.write("d.yaml", &instance_yaml("d", "1", ""));
    rack.corralctl(&["apply", "-f", path.to_str().unwrap()])
        .await
        .ok();
    let run = rack
        .corralctl(&[
            "delete",
            "-f",
            path.to_str().unwrap(),
            "--wait",
            "--timeout",
            "30s",
        ])
        .await
        .ok();
    assert_eq!(run.stdout, "instances.corral.dev \"d\" deleted\n");
    assert!(api.get_opt("d").await.unwrap().is_none());

    let run = rack
        .corralctl(&["delete", "instance", "nope"])
        .await
        .failed();
    assert!(run.stderr.contains("\"nope\" not found"), "{run}");
    rack.corralctl(&["delete", "instance", "nope", "--ignore-not-found"])
        .await
        .ok();
}
