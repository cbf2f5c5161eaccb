//! `drain` and `migrate` create their objects and follow them to a final phase; the test plays
//! the drain and migration controllers by writing their statuses.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{DynamicObject, ListParams};
use serde_json::json;

use crate::support::*;

/// Every wait gives up after this long.
const BOUND: Duration = Duration::from_secs(30);

/// The only object of `api`, once there is one.
async fn the_one(api: &kube::Api<DynamicObject>) -> DynamicObject {
    let polling = async {
        loop {
            let list = api.list(&ListParams::default()).await.expect("listing");
            if let Some(object) = list.items.into_iter().next() {
                return object;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(BOUND, polling)
        .await
        .expect("the object was created in time")
}

#[tokio::test]
async fn drain_no_wait_creates_the_drain() {
    let rack = Rack::start().await;
    rack.create(&rack.sleds(), sled_json("s1")).await;
    let run = rack
        .corralctl(&[
            "drain",
            "s1",
            "--no-wait",
            "--max-parallel",
            "2",
            "--deadline",
            "30m",
        ])
        .await
        .ok();
    let drain = the_one(&rack.drains()).await;
    let name = drain.name_any();
    assert!(name.starts_with("s1-"), "{name}");
    assert_eq!(run.stdout, format!("drain.corral.dev/{name} created\n"));
    assert_eq!(
        at(&drain, "/spec"),
        json!({"sled": "s1", "deadline": "30m", "maxParallel": 2, "force": false, "cancel": false})
    );
    // The printer columns come from the CRD.
    rack.set_status(
        &rack.drains(),
        &name,
        json!({"phase": "Draining", "progress": "1/3", "etaSeconds": 40}),
    )
    .await;
    let table = rack.corralctl(&["get", "drains"]).await.ok();
    let header = table.stdout.lines().next().unwrap();
    assert!(header.starts_with("NAME"), "{table}");
    for column in ["SLED", "PHASE", "PROGRESS", "ETA"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table.stdout.lines().nth(1).unwrap();
    assert!(row.contains("Draining") && row.contains("1/3"), "{table}");

    // A missing sled or a bad deadline creates nothing.
    let run = rack.corralctl(&["drain", "s9", "--no-wait"]).await.failed();
    assert!(run.stderr.contains("s9"), "{run}");
    let run = rack
        .corralctl(&["drain", "s1", "--no-wait", "--deadline", "soon"])
        .await
        .failed();
    assert!(run.stderr.contains("--deadline"), "{run}");
    let drains = rack.drains().list(&ListParams::default()).await.unwrap();
    assert_eq!(drains.items.len(), 1);

    // --cancel sets spec.cancel on the sled's unfinished drain.
    let run = rack
        .corralctl(&["drain", "s1", "--cancel", "--no-wait"])
        .await
        .ok();
    assert_eq!(
        run.stdout,
        format!("drain.corral.dev/{name} cancel requested\n")
    );
    let drain = rack.drains().get(&name).await.unwrap();
    assert_eq!(at(&drain, "/spec/cancel"), json!(true));
    rack.set_status(&rack.drains(), &name, json!({"phase": "Cancelled"}))
        .await;
    let run = rack.corralctl(&["drain", "s1", "--cancel"]).await.failed();
    assert!(run.stderr.contains("no unfinished drain"), "{run}");
}

#[tokio::test]
async fn a_refused_drain_exits_non_zero_with_its_message() {
    let rack = Rack::start().await;
    rack.create(&rack.sleds(), sled_json("s1")).await;
    let running = rack.spawn(&["drain", "s1"]);
    let drain = the_one(&rack.drains()).await;
    let name = drain.name_any();
    rack.set_status(
        &rack.drains(),
        &name,
        json!({"phase": "Pending", "message": "cordoning sled s1"}),
    )
    .await;
    let message = "draining sled s1 would strand instances: default/db-3 (16 CPUs, 65536 MiB) \
                   fits no sled: s2 has 4 CPUs, 16384 MiB free";
    rack.set_status(
        &rack.drains(),
        &name,
        json!({"phase": "Refused", "reason": "DoesNotFit", "message": message, "total": 1,
               "progress": "0/1"}),
    )
    .await;
    let run = running.finish().await.failed();
    assert!(
        run.stderr.contains(&format!(
            "error: drain.corral.dev/{name} Refused: {message}"
        )),
        "{run}"
    );
    // Not a terminal: plain progress lines on stderr.
    assert!(
        run.stderr.contains(&format!("drain {name}: Refused")),
        "{run}"
    );
    assert!(!run.stderr.contains('\r'), "{run}");
}

#[tokio::test]
async fn a_completed_drain_and_a_succeeded_migration_exit_zero() {
    let rack = Rack::start().await;
    rack.create(&rack.sleds(), sled_json("s1")).await;
    let running = rack.spawn(&["drain", "s1", "--timeout", "30s"]);
    let drain = the_one(&rack.drains()).await;
    rack.set_status(
        &rack.drains(),
        &drain.name_any(),
        json!({"phase": "Completed", "reason": "DrainCompleted",
               "message": "sled s1 runs no VMM: 2 instances moved", "progress": "2/2",
               "total": 2, "moved": 2}),
    )
    .await;
    let run = running.finish().await.ok();
    assert!(
        run.stdout.contains("Completed: sled s1 runs no VMM"),
        "{run}"
    );

    rack.create(&rack.instances("default"), instance_json("web", "Always"))
        .await;
    let running = rack.spawn(&["migrate", "web", "--to", "s2"]);
    let migrations = rack.migrations("default");
    let migration = the_one(&migrations).await;
    assert_eq!(
        at(&migration, "/spec"),
        json!({"instance": "web", "targetSled": "s2", "reason": "User", "mode": "Live", "cancel": false})
    );
    rack.set_status(
        &migrations,
        &migration.name_any(),
        json!({"phase": "Succeeded", "sourceSled": "s1", "targetSled": "s2"}),
    )
    .await;
    let run = running.finish().await.ok();
    assert!(run.stdout.contains("Succeeded (s1 -> s2)"), "{run}");
}

#[tokio::test]
async fn a_failed_migration_exits_non_zero_with_its_reason() {
    let rack = Rack::start().await;
    rack.create(&rack.instances("default"), instance_json("db", "Always"))
        .await;
    let running = rack.spawn(&["migrate", "db"]);
    let migrations = rack.migrations("default");
    let migration = the_one(&migrations).await;
    assert_eq!(at(&migration, "/spec/targetSled"), serde_json::Value::Null);
    rack.set_status(
        &migrations,
        &migration.name_any(),
        json!({"phase": "Failed", "reason": "WillNotConverge",
               "message": "the guest dirties memory faster than the link carries it"}),
    )
    .await;
    let run = running.finish().await.failed();
    assert!(
        run.stderr
            .contains("Failed, reason WillNotConverge: the guest dirties memory"),
        "{run}"
    );
}
