//! V2P end to end with a real API server: the V2P controller writes VpcRoutes from Instances
//! (their status written here by hand, as the instance controller would), every simulated
//! sled programs its table and acknowledges, a move follows on every sled, a conflict is
//! reported, and a table corrupted through the fault API is restored with Events.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{Rack, stays_false, wait_for};
use corral_crds::{
    Instance, InstanceSpec, InstanceState, InstanceStatus, Nic, SledConditionType, VpcRoutes,
    condition,
};
use corral_node_agent::sim::{SimSled, SledHandle, StartMode, V2pRow};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SLEDS: [&str; 3] = ["sled-1", "sled-2", "sled-3"];

/// One HTTP/1.1 request over a fresh connection; returns the status code and the body.
async fn http(address: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: sled\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn table(sled: &SledHandle) -> Vec<V2pRow> {
    let (code, body) = http(sled.fault_address().unwrap(), "GET", "/v2p", "").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The sled the table of `sled` maps `vpc`/`ip` to.
async fn mapped(sled: &SledHandle, vpc: &str, ip: &str) -> Option<String> {
    table(sled)
        .await
        .into_iter()
        .find(|row| row.vpc == vpc && row.ip == ip)
        .map(|row| row.sled)
}

async fn create_instance(rack: &Rack, name: &str, nics: &[(&str, &str)]) {
    let mut instance = Instance::new(
        name,
        InstanceSpec {
            cpus: 1,
            memory_mib: 512,
            image: "debian-12".into(),
            nics: nics
                .iter()
                .enumerate()
                .map(|(n, (vpc, ip))| Nic {
                    name: format!("net{n}"),
                    vpc: vpc.to_string(),
                    ip: ip.to_string(),
                })
                .collect(),
            ..Default::default()
        },
    );
    instance.metadata.namespace = Some("default".into());
    Api::<Instance>::namespaced(rack.client.clone(), "default")
        .create(&PostParams::default(), &instance)
        .await
        .expect("creating an instance");
}

/// Writes the instance's status as the instance controller would for a running instance.
async fn place(rack: &Rack, name: &str, sled: &str, location_generation: u64) {
    let api = Api::<Instance>::namespaced(rack.client.clone(), "default");
    let mut instance = api.get(name).await.unwrap();
    instance.status = Some(InstanceStatus {
        state: Some(InstanceState::Running),
        sled: Some(sled.into()),
        active_vmm: Some(format!("{name}-v{location_generation}")),
        location_generation,
        ..Default::default()
    });
    api.replace_status(name, &PostParams::default(), &instance)
        .await
        .expect("writing an instance status");
}

/// Waits until every sled acknowledged the current generation of `vpc` and reports
/// `V2PConverged=True`, and the VpcRoutes says so; returns the VpcRoutes.
async fn converged(rack: &Rack, vpc: &str) -> VpcRoutes {
    let routes: Api<VpcRoutes> = Api::all(rack.client.clone());
    let sleds = rack.sleds();
    wait_for(&format!("every sled applied vpc {vpc}"), || {
        let routes = routes.clone();
        let sleds = sleds.clone();
        async move {
            let current = routes.get_opt(vpc).await.ok()??;
            let generation = current.metadata.generation?;
            for name in SLEDS {
                let status = sleds.get(name).await.ok()?.status?;
                let acked = status
                    .v2p
                    .iter()
                    .any(|ack| ack.vpc == vpc && ack.generation == generation);
                let converged =
                    condition::is_true(&status.conditions, SledConditionType::V2PConverged);
                if !acked || !converged {
                    return None;
                }
            }
            let status = current.status.as_ref()?;
            (status.applied == format!("{}/{}", SLEDS.len(), SLEDS.len())
                && status.observed_generation == generation)
                .then_some(current)
        }
    })
    .await
}

#[tokio::test]
async fn every_sled_follows_the_vpc_routes_and_repairs_a_corrupted_mapping() {
    let rack = Rack::start().await;
    let mut sleds = Vec::new();
    for name in SLEDS {
        let mut config = rack.config(name);
        config.fault_listen = Some("127.0.0.1:0".parse().unwrap());
        sleds.push(SimSled::start(config, StartMode::ColdStart).await.unwrap());
        rack.ready_sled(name).await;
    }
    let stop = CancellationToken::new();
    let controller = tokio::spawn(corral_controllers::v2p::controller(
        rack.client.clone(),
        Default::default(),
        stop.clone(),
    ));

    // Placed instances: one VpcRoutes per VPC, on every sled.
    create_instance(&rack, "web", &[("blue", "10.0.0.1")]).await;
    create_instance(&rack, "db", &[("blue", "10.0.0.2"), ("red", "10.1.0.2")]).await;
    create_instance(&rack, "idle", &[("blue", "10.0.0.3")]).await;
    place(&rack, "web", "sled-1", 1).await;
    place(&rack, "db", "sled-2", 1).await;
    let blue = converged(&rack, "blue").await;
    let ips: Vec<&str> = blue.spec.mappings.iter().map(|m| m.ip.as_str()).collect();
    assert_eq!(
        ips,
        ["10.0.0.1", "10.0.0.2"],
        "an instance not running has no mapping"
    );
    assert_eq!(blue.status.as_ref().unwrap().mappings, 2);
    // 1 or 2: web and db may have been mapped in one write or in two.
    let db_since = blue.spec.mappings[1].since;
    let red = converged(&rack, "red").await;
    assert_eq!(red.spec.mappings[0].sled, "sled-2");
    for sled in &sleds {
        assert_eq!(
            mapped(sled, "blue", "10.0.0.1").await.as_deref(),
            Some("sled-1")
        );
        assert_eq!(
            mapped(sled, "red", "10.1.0.2").await.as_deref(),
            Some("sled-2")
        );
    }

    // A move with a higher locationGeneration: every table follows; `since` is the new
    // generation.
    place(&rack, "web", "sled-3", 2).await;
    for sled in &sleds {
        wait_for("the move on every sled", || async {
            (mapped(sled, "blue", "10.0.0.1").await.as_deref() == Some("sled-3")).then_some(())
        })
        .await;
    }
    let blue = converged(&rack, "blue").await;
    let web = &blue.spec.mappings[0];
    assert_eq!((web.sled.as_str(), web.location_generation), ("sled-3", 2));
    assert_eq!(web.since, blue.metadata.generation.unwrap());
    assert_eq!(
        blue.spec.mappings[1].since, db_since,
        "db's mapping did not change"
    );

    // Never backwards: a status with a lower locationGeneration changes nothing.
    place(&rack, "web", "sled-1", 1).await;
    let routes: Api<VpcRoutes> = Api::all(rack.client.clone());
    assert!(
        stays_false(std::time::Duration::from_millis(500), || async {
            let blue = routes.get("blue").await.unwrap();
            blue.spec.mappings[0].sled != "sled-3"
        })
        .await
    );
    place(&rack, "web", "sled-3", 3).await;
    wait_for("web at locationGeneration 3", || async {
        let blue = routes.get("blue").await.ok()?;
        (blue.spec.mappings[0].location_generation == 3).then_some(())
    })
    .await;
    // Every sled holds the current generation before the corruption below, so that only the
    // check (not a new generation) can repair it.
    converged(&rack, "blue").await;

    // A second instance claiming web's IP: no mapping, a Warning.
    create_instance(&rack, "intruder", &[("blue", "10.0.0.1")]).await;
    place(&rack, "intruder", "sled-2", 1).await;
    rack.event("default", "intruder", "IpConflict").await;
    let blue = routes.get("blue").await.unwrap();
    assert_eq!(blue.spec.mappings[0].instance, "web");

    // Corrupted behind the control plane's back: restored, with Events on the Sled.
    let (code, body) = http(
        sleds[1].fault_address().unwrap(),
        "POST",
        "/v2p/corrupt",
        r#"{"vpc":"blue","ip":"10.0.0.1","sled":"sled-99"}"#,
    )
    .await;
    assert_eq!(code, 204, "{body}");
    wait_for("the corrupted mapping restored", || async {
        (mapped(&sleds[1], "blue", "10.0.0.1").await.as_deref() == Some("sled-3")).then_some(())
    })
    .await;
    let detected = rack.event("default", "sled-2", "DivergenceDetected").await;
    assert!(
        detected
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("sled-99"),
        "{detected:?}"
    );
    rack.event("default", "sled-2", "DivergenceRepaired").await;

    // An instance that stops: its mapping goes once a live read confirms it.
    let api = Api::<Instance>::namespaced(rack.client.clone(), "default");
    let mut db = api.get("db").await.unwrap();
    db.status.as_mut().unwrap().state = Some(InstanceState::Stopped);
    api.replace_status("db", &PostParams::default(), &db)
        .await
        .unwrap();
    for sled in &sleds {
        wait_for("db's mapping removed on every sled", || async {
            mapped(sled, "red", "10.1.0.2")
                .await
                .is_none()
                .then_some(())
        })
        .await;
    }

    // The table is the machine's: an agent restart keeps it, a power-off loses it, and the
    // agent of the new boot programs it again.
    let before = table(&sleds[0]).await;
    sleds[0].shutdown().await;
    assert_eq!(
        sleds[0].v2p_table().rows(),
        before,
        "no agent runs: the table stays"
    );
    sleds[0].power_off().await.unwrap();
    assert!(sleds[0].v2p_table().rows().is_empty());
    sleds[0].power_on().await.unwrap();
    wait_for("the table programmed again after the power-on", || async {
        let rows = sleds[0].v2p_table().rows();
        (rows == before).then_some(())
    })
    .await;

    stop.cancel();
    controller.await.unwrap();
    for sled in sleds {
        sled.shutdown().await;
    }
}

/// How long after an instance's move every sled acknowledged it: the controller's write and
/// every agent's table and acknowledgement. The benchmark target is 500 ms p99 across 100 sleds
/// (release build, `V2P_SLEDS=100`); this debug-build test checks a loose bound and prints the
/// numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_is_acknowledged_by_every_sled_promptly() {
    let count: usize = std::env::var("V2P_SLEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    let moves = 8u64;
    let rack = Rack::start().await;
    let mut sleds = Vec::new();
    let names: Vec<String> = (1..=count).map(|n| format!("sled-{n}")).collect();
    for name in &names {
        let mut config = rack.config(name);
        // The production debounce: the acknowledgement must not wait for it.
        config.agent.intervals.sled_status = std::time::Duration::from_secs(1);
        config.agent.intervals.scan = std::time::Duration::from_secs(2);
        sleds.push(SimSled::start(config, StartMode::ColdStart).await.unwrap());
    }
    for name in &names {
        rack.ready_sled(name).await;
    }
    // Every acknowledgement of "blue" as a watch sees it: (sled, generation, when).
    let seen: Arc<Mutex<Vec<(String, i64, tokio::time::Instant)>>> = Arc::default();
    let recorder = {
        let seen = seen.clone();
        let sleds_api = rack.sleds();
        tokio::spawn(async move {
            let mut stream = watcher(sleds_api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(sled)) = stream.next().await {
                let now = tokio::time::Instant::now();
                if let Some(ack) = sled
                    .status
                    .iter()
                    .flat_map(|s| s.v2p.iter())
                    .find(|ack| ack.vpc == "blue")
                {
                    seen.lock()
                        .unwrap()
                        .push((sled.name_any(), ack.generation, now));
                }
            }
        })
    };
    let stop = CancellationToken::new();
    let controller = tokio::spawn(corral_controllers::v2p::controller(
        rack.client.clone(),
        Default::default(),
        stop.clone(),
    ));
    create_instance(&rack, "web", &[("blue", "10.0.0.1")]).await;
    place(&rack, "web", &names[0], 1).await;
    let routes: Api<VpcRoutes> = Api::all(rack.client.clone());

    let mut latencies = Vec::new();
    for location_generation in 2..2 + moves {
        let target = &names[location_generation as usize % count];
        let start = tokio::time::Instant::now();
        place(&rack, "web", target, location_generation).await;
        let generation = wait_for("the move in the VpcRoutes", || async {
            let blue = routes.get_opt("blue").await.ok()??;
            let web = blue.spec.mappings.first()?;
            (web.location_generation == location_generation).then_some(blue.metadata.generation?)
        })
        .await;
        let acked = wait_for("every sled acknowledged the move", || async {
            let seen = seen.lock().unwrap();
            let firsts: Vec<tokio::time::Instant> = names
                .iter()
                .filter_map(|name| {
                    seen.iter()
                        .filter(|(sled, g, _)| sled == name && *g >= generation)
                        .map(|(_, _, at)| *at)
                        .min()
                })
                .collect();
            (firsts.len() == count).then_some(firsts)
        })
        .await;
        latencies.extend(
            acked
                .into_iter()
                .map(|at| at.saturating_duration_since(start)),
        );
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    let p50 = latencies[latencies.len() / 2];
    eprintln!(
        "{count} sleds, {moves} moves: acknowledged p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.last().unwrap()
    );
    assert!(
        p99 < std::time::Duration::from_secs(2),
        "p99 {p99:?} (p50 {p50:?})"
    );

    stop.cancel();
    controller.await.unwrap();
    recorder.abort();
    for sled in sleds {
        sled.shutdown().await;
    }
}
