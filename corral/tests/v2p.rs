//! V2P with the real controllers (leader election included) and simulated sleds in-process:
//! instances with NICs are placed by the instance controller, the V2P controller maps their
//! IPs, and every sled's table follows when an instance is restarted on another sled (a new
//! `locationGeneration`) and forgets it when the instance stops.

use std::time::Duration;

use corral_apiserver::testing::TestServer;
use corral_crds::{
    Instance, InstanceSpec, InstanceState, Nic, Resources, RunStrategy, SledConditionType,
    VpcRoutes, condition,
};
use corral_node_agent::sim::{SimSled, SimSledConfig, SimTiming, SledHandle, StartMode};
use corral_node_agent::{AgentConfig, Intervals};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

/// Every wait gives up after this long.
const BOUND: Duration = Duration::from_secs(30);

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {BOUND:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sled_config(client: &kube::Client, dir: &std::path::Path, name: &str) -> SimSledConfig {
    let mut config = SimSledConfig::new(AgentConfig::new(client.clone(), name, dir.join(name)));
    config.agent.capacity = Resources {
        cpus: 16,
        memory_mib: 16 * 1024,
    };
    config.timing = SimTiming {
        boot_time: Duration::from_millis(100),
        stop_time: Duration::from_millis(50),
        ..SimTiming::default()
    };
    config.agent.intervals = Intervals {
        scan: Duration::from_millis(200),
        heartbeat: Duration::from_millis(500),
        ..Intervals::default()
    };
    config
}

/// Waits until the instance runs; returns (sled, locationGeneration).
async fn running(api: &Api<Instance>, name: &str, not_on: Option<&str>) -> (String, u64) {
    wait_for(&format!("{name} running"), || async {
        let status = api.get_opt(name).await.ok()??.status?;
        let sled = status.sled.clone()?;
        (status.state == Some(InstanceState::Running) && Some(sled.as_str()) != not_on)
            .then_some((sled, status.location_generation))
    })
    .await
}

/// Waits until every sled's table maps `ip` of `vpc` to `sled` (`None`: has no entry) and
/// every sled reports `V2PConverged=True`.
async fn every_table(
    client: &kube::Client,
    sleds: &[SledHandle],
    vpc: &str,
    ip: &str,
    sled: Option<&str>,
) {
    let sleds_api: Api<corral_crds::Sled> = Api::all(client.clone());
    for handle in sleds {
        wait_for(
            &format!("{} maps {ip} to {sled:?}", handle.name()),
            || async {
                let mapped = handle
                    .v2p_table()
                    .rows()
                    .into_iter()
                    .find(|row| row.vpc == vpc && row.ip == ip)
                    .map(|row| row.sled);
                let status = sleds_api.get(handle.name()).await.ok()?.status?;
                let converged =
                    condition::is_true(&status.conditions, SledConditionType::V2PConverged);
                (mapped.as_deref() == sled && converged).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn the_tables_follow_instances_placed_restarted_and_stopped_by_the_controllers() {
    let server = TestServer::start(corral_crds::MANIFESTS).await;
    let client = corral_client::connect(Some(&server.kubeconfig))
        .await
        .expect("a client for the test server");
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let config = corral_controllers::Config {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
        ..Default::default()
    };
    let controllers = tokio::spawn(corral_controllers::run(
        client.clone(),
        config,
        stop.clone(),
    ));
    let mut sleds = Vec::new();
    for name in ["sled-1", "sled-2", "sled-3"] {
        let config = sled_config(&client, dir.path(), name);
        sleds.push(SimSled::start(config, StartMode::ColdStart).await.unwrap());
    }

    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    for (name, ip, run_strategy) in [
        ("web", "10.0.0.1", RunStrategy::Always),
        ("db", "10.0.0.2", RunStrategy::Always),
    ] {
        let instance = Instance {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: InstanceSpec {
                cpus: 1,
                memory_mib: 512,
                image: "debian-12".into(),
                run_strategy,
                nics: vec![Nic {
                    name: "net0".into(),
                    vpc: "blue".into(),
                    ip: ip.into(),
                }],
                ..Default::default()
            },
            status: None,
        };
        instances
            .create(&PostParams::default(), &instance)
            .await
            .unwrap();
    }
    let (web_sled, web_generation) = running(&instances, "web", None).await;
    let (db_sled, _) = running(&instances, "db", None).await;
    every_table(&client, &sleds, "blue", "10.0.0.1", Some(&web_sled)).await;
    every_table(&client, &sleds, "blue", "10.0.0.2", Some(&db_sled)).await;

    // web's VMM killed behind the control plane's back: restarted, away from the sled it
    // failed on, with a new locationGeneration; every table follows.
    let handle = sleds.iter().find(|s| s.name() == web_sled).unwrap();
    let vmm = instances
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap()
        .active_vmm
        .unwrap();
    let id = handle.machine().find("default", &vmm).expect("web's VMM");
    handle.machine().kill(&id).unwrap();
    let (moved_to, moved_generation) = running(&instances, "web", Some(&web_sled)).await;
    assert!(moved_generation > web_generation);
    every_table(&client, &sleds, "blue", "10.0.0.1", Some(&moved_to)).await;
    let routes: Api<VpcRoutes> = Api::all(client.clone());
    let blue = routes.get("blue").await.unwrap();
    let web = blue
        .spec
        .mappings
        .iter()
        .find(|m| m.ip == "10.0.0.1")
        .unwrap();
    assert_eq!(web.location_generation, moved_generation);

    // db stopped: its mapping goes from every table.
    let patch = serde_json::json!({"spec": {"runStrategy": "Halted"}});
    instances
        .patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    every_table(&client, &sleds, "blue", "10.0.0.2", None).await;

    stop.cancel();
    controllers.await.unwrap();
    for sled in sleds {
        sled.shutdown().await;
    }
}
