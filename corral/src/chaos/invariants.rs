//! The invariants `corral chaos` checks after a schedule, by waiting (bounded) until the rack
//! has [`Converged`]; during one, the node-agent simulator's `Census` reads the machines.

use std::collections::BTreeMap;
use std::time::Duration;

use corral_crds::{HealthVerdict, Instance, InstanceState, Resources, Sled};
use corral_harness::Rack;
use corral_harness::wait::wait_for_polling;
use corral_node_agent::sim::census::guests_in;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

/// How often convergence is looked at.
const CONVERGE_POLL: Duration = Duration::from_millis(250);
/// How often a slow convergence says what it still waits for.
const SLOW_CONVERGENCE: Duration = Duration::from_secs(10);

/// The rack after a schedule, as it must end up.
pub struct Converged;

impl Converged {
    /// Waits (at most `bound`) until every one of `count` instances runs exactly once where
    /// its status says, nothing else runs, every sled is Healthy with the capacity its
    /// instances hold allocated, and every V2P table maps every instance IP to its sled; what
    /// was still wrong otherwise. Meanwhile it powers on every sled that is off, as an
    /// operator would: a sled fenced while (or just after) its fault was repaired stays off.
    pub async fn wait(rack: &mut Rack, count: usize, bound: Duration) -> Result<(), String> {
        let start = tokio::time::Instant::now();
        let mut next_report = start + SLOW_CONVERGENCE;
        wait_for_polling("the rack converged", bound, CONVERGE_POLL, async || {
            for sled in rack.sled_names() {
                if rack.power_reads(&sled).await.as_deref() == Ok("Off") {
                    rack.power_on(&sled).await?;
                }
            }
            let checked = check(rack, count).await;
            // A slow convergence says what it waits for, now and then.
            if let Err(why) = &checked
                && tokio::time::Instant::now() >= next_report
            {
                println!(
                    "  still converging after {:.0} s: {why}",
                    start.elapsed().as_secs_f64()
                );
                next_report += SLOW_CONVERGENCE;
            }
            checked
        })
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
    }
}

/// One look at the rack: `Ok` when every invariant holds, or the first that does not.
async fn check(rack: &Rack, count: usize) -> Result<(), String> {
    let client = rack.client().clone();
    let instances = Api::<Instance>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing instances: {e}"))?
        .items;
    let sleds = Api::<Sled>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing sleds: {e}"))?
        .items;
    // Every instance Running, on a sled its status names.
    let mut on: BTreeMap<String, (String, String, Resources)> = BTreeMap::new();
    for instance in &instances {
        let status = instance.status.clone().unwrap_or_default();
        match (status.state, status.sled, status.active_vmm) {
            (Some(InstanceState::Running), Some(sled), Some(vmm)) => {
                on.insert(instance.name_any(), (sled, vmm, instance.spec.resources()));
            }
            (state, sled, _) => {
                return Err(format!("{} is {state:?} on {sled:?}", instance.name_any()));
            }
        }
    }
    if on.len() != count {
        return Err(format!("{} of {count} instances exist", on.len()));
    }
    // Every sled Healthy and Ready.
    for sled in &sleds {
        if sled.health() != HealthVerdict::Healthy || !sled.is_ready_and_booted() {
            return Err(format!(
                "{} is {} (ready {})",
                sled.name_any(),
                sled.health(),
                sled.is_ready()
            ));
        }
    }
    // The machines: each instance live exactly once, where its status says; nothing else.
    for agent in &rack.agents {
        let guests = guests_in(&agent.data_dir).map_err(|e| format!("{}: {e}", agent.sled))?;
        for guest in guests.iter().filter(|guest| guest.live) {
            let named = on.get(&guest.instance);
            if named.is_none_or(|(sled, vmm, _)| *sled != agent.sled || *vmm != guest.vmm) {
                return Err(format!(
                    "{} runs {}/{} ({}) that no instance names there",
                    agent.sled, guest.namespace, guest.instance, guest.vmm
                ));
            }
        }
        for (instance, (sled, vmm, _)) in &on {
            if *sled == agent.sled && !guests.iter().any(|g| g.live && g.vmm == *vmm) {
                return Err(format!(
                    "{instance} is Running on {sled} but its machine runs no {vmm}"
                ));
            }
        }
    }
    // No leaked capacity.
    for sled in &sleds {
        let name = sled.name_any();
        let held = on
            .values()
            .filter(|(on, _, _)| *on == name)
            .fold(Resources::default(), |sum, (_, _, resources)| {
                sum + *resources
            });
        let allocated = sled
            .status
            .as_ref()
            .map(|s| s.allocated)
            .unwrap_or_default();
        if allocated != held {
            return Err(format!(
                "{name} has {allocated:?} allocated, its instances hold {held:?}"
            ));
        }
    }
    // V2P: every sled's table maps every instance IP to the sled it runs on.
    let ips: BTreeMap<String, String> = instances
        .iter()
        .flat_map(|instance| {
            let sled = on
                .get(&instance.name_any())
                .map(|(sled, _, _)| sled.clone());
            instance
                .spec
                .nics
                .iter()
                .map(move |nic| (nic.ip.clone(), sled.clone().unwrap_or_default()))
        })
        .collect();
    for agent in &rack.agents {
        let door = corral_harness::SledDoor::Agent;
        let (status, body) = rack
            .sled_request(&agent.sled, door, ("GET", "/v2p", ""), None)
            .await?;
        if status != 200 {
            return Err(format!("{}'s V2P table: {status} {body}", agent.sled));
        }
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&body).map_err(|e| format!("{}'s V2P table: {e}", agent.sled))?;
        for (ip, sled) in &ips {
            let mapped = rows
                .iter()
                .any(|row| row["ip"].as_str() == Some(ip) && row["sled"].as_str() == Some(sled));
            if !mapped {
                return Err(format!(
                    "{}'s V2P table does not map {ip} to {sled}",
                    agent.sled
                ));
            }
        }
    }
    Ok(())
}
