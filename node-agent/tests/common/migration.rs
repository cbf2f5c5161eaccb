//! Two simulated sleds for live-migration tests: the source `sled-1` and the target `sled-2`,
//! each with its fault API, and the target Vmm `web-v2` of Instance `web` as the instance
//! controller creates it to receive `web-v1`.

use corral_crds::{MigrateFrom, Resources, VMM_FINALIZER, Vmm, VmmSpec};
use corral_node_agent::sim::{SimSled, SledHandle, StartMode};
use corral_node_agent::{Hypervisor, VmmRunState};
use kube::api::{ObjectMeta, PostParams};

use super::Rack;

/// A rack with the two sleds started and Ready.
pub struct TwoSleds {
    pub rack: Rack,
    pub source: SledHandle,
    pub target: SledHandle,
    pub source_epoch: u64,
    pub target_epoch: u64,
}

impl TwoSleds {
    /// Starts the rack and both sleds, their migration links at `bandwidth` bytes a second.
    pub async fn start(bandwidth: u64) -> TwoSleds {
        let rack = Rack::start().await;
        let config = |sled: &str| {
            let mut config = rack.config(sled);
            config.fault_listen = Some("127.0.0.1:0".parse().unwrap());
            config.timing.migration_bandwidth = bandwidth;
            config
        };
        let source = SimSled::start(config("sled-1"), StartMode::ColdStart)
            .await
            .unwrap();
        let target = SimSled::start(config("sled-2"), StartMode::ColdStart)
            .await
            .unwrap();
        let source_epoch = rack.ready_sled("sled-1").await.status.unwrap().epoch;
        let target_epoch = rack.ready_sled("sled-2").await.status.unwrap().epoch;
        TwoSleds {
            rack,
            source,
            target,
            source_epoch,
            target_epoch,
        }
    }

    /// Creates `web-v2` on sled-2 with `migrateFrom` `web-v1` (the guest `memory_mib` large).
    pub async fn create_target(&self, memory_mib: u64) {
        let vmm = Vmm {
            metadata: ObjectMeta {
                name: Some("web-v2".into()),
                namespace: Some("default".into()),
                finalizers: Some(vec![VMM_FINALIZER.to_string()]),
                ..Default::default()
            },
            spec: VmmSpec {
                instance: "web".into(),
                sled: "sled-2".into(),
                sled_epoch: self.target_epoch,
                resources: Resources {
                    cpus: 1,
                    memory_mib,
                },
                image: "debian-12".into(),
                nics: Vec::new(),
                migrate_from: Some(MigrateFrom {
                    vmm: "web-v1".into(),
                    sled: "sled-1".into(),
                    migration: "web-move".into(),
                }),
                reboot_request: None,
            },
            status: None,
        };
        self.rack
            .vmms()
            .create(&PostParams::default(), &vmm)
            .await
            .unwrap();
    }

    /// Stops both agents (their machines stay as they are).
    pub async fn shutdown(self) {
        self.source.shutdown().await;
        self.target.shutdown().await;
    }
}

/// What `sled`'s machine says of the VMM of Vmm `default/name`.
pub async fn machine_state(sled: &SledHandle, name: &str) -> Option<VmmRunState> {
    let id = sled.machine().find("default", name)?;
    let info = sled.machine().inspect(&id).await.ok().flatten()?;
    Some(info.state)
}
