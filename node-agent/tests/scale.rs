//! Many sleds in one process against one API server: how long until every Vmm runs, and how
//! many writes it took. Ignored by default (it loads the machine); run with
//! `cargo nextest run -p corral-node-agent --run-ignored only scale`.
//! `SCALE_SLEDS` and `SCALE_VMMS` (per sled) size it.

mod common;

use std::time::Duration;

use common::Rack;
use corral_node_agent::{SimSled, SimTiming, StartMode};
use futures::StreamExt;
use kube::api::ListParams;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load test"]
async fn many_sleds_run_their_vmms() {
    let sled_count = env("SCALE_SLEDS", 20);
    let per_sled = env("SCALE_VMMS", 25);
    let rack = Rack::start_with_bound(Duration::from_secs(600)).await;
    let mut sleds = Vec::new();
    for index in 0..sled_count {
        let mut config = rack.config(&format!("sled-{index}"));
        config.sim = SimTiming::default();
        config.capacity = corral_crds::Resources {
            cpus: 1024,
            memory_mib: 1024 * 1024,
        };
        config.intervals.sled_status = Duration::from_secs(1);
        config.intervals.scan = Duration::from_secs(2);
        config.intervals.heartbeat = Duration::from_secs(5);
        sleds.push(SimSled::start(config, StartMode::ColdStart).await.unwrap());
    }
    for index in 0..sled_count {
        rack.ready_sled(&format!("sled-{index}")).await;
    }
    // Count Sled writes from here on.
    let sled_writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = {
        let sled_writes = sled_writes.clone();
        let api = rack.sleds();
        tokio::spawn(async move {
            let mut events = kube::runtime::watcher::watcher(api, Default::default()).boxed();
            while let Some(event) = events.next().await {
                if let Ok(kube::runtime::watcher::Event::Apply(_)) = event {
                    sled_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let started = tokio::time::Instant::now();
    let names: Vec<(String, String)> = (0..sled_count)
        .flat_map(|index| {
            (0..per_sled).map(move |vmm| (format!("i{index}x{vmm}-v1"), format!("sled-{index}")))
        })
        .collect();
    futures::stream::iter(names)
        .for_each_concurrent(16, |(name, sled)| {
            let rack = &rack;
            async move {
                rack.create_vmm(&name, &sled, 1, 1).await;
            }
        })
        .await;
    let created = started.elapsed();
    let vmms = rack.vmms();
    let total = sled_count * per_sled;
    eprintln!("created {total} Vmms in {created:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(400);
    loop {
        let list = vmms.list(&ListParams::default()).await.unwrap();
        let mut states = std::collections::BTreeMap::new();
        for vmm in &list.items {
            let state = vmm.status.as_ref().and_then(|s| s.state);
            *states.entry(format!("{state:?}")).or_insert(0) += 1;
        }
        let running = states.get("Some(Running)").copied().unwrap_or(0);
        if running != total {
            eprintln!("{:?}: {states:?}", started.elapsed());
        }
        if running == total {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all running");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_running = started.elapsed();
    let list = vmms.list(&ListParams::default()).await.unwrap();
    let generations: u64 = list
        .items
        .iter()
        .map(|v| v.status.as_ref().unwrap().state_generation)
        .sum();
    let sled_writes = sled_writes.load(std::sync::atomic::Ordering::Relaxed);
    counter.abort();
    eprintln!(
        "{sled_count} sleds x {per_sled} VMMs: created in {created:?}, all running after {all_running:?}, {generations} Vmm status reports ({:.1} per Vmm), {sled_writes} sleds written since",
        generations as f64 / total as f64
    );
    for sled in &sleds {
        sled.shutdown().await;
    }
}
