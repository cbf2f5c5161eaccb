//! What a sled's agent is configured with: [`AgentConfig`], the [`Intervals`] it works at, and
//! the [`HeartbeatSwitch`] that fault injection flips.
//!
//! # Not responsible for
//! What runs the sled's VMMs and where its HTTP API listens: whoever starts the agent chooses
//! the hypervisor, the V2P table and the address (the simulator, `sim/`, for a simulated sled).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral_crds::Resources;

/// How often the agent does what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    /// A Vmm with nothing under way is reconciled again after this long (a resync).
    pub reconcile: Duration,
    /// The divergence scan.
    pub scan: Duration,
    /// Heartbeat Lease renewals.
    pub heartbeat: Duration,
    /// The heartbeat Lease's `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// At most one `Sled.status` write per this long.
    pub sled_status: Duration,
    /// A graceful stop that takes longer ends in destroy.
    pub stop_timeout: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            reconcile: Duration::from_secs(30),
            scan: Duration::from_secs(2),
            heartbeat: Duration::from_secs(5),
            lease_duration: Duration::from_secs(15),
            sled_status: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(30),
        }
    }
}

/// Pauses and resumes the heartbeat (fault injection). Clones share the switch, so it
/// survives agent restarts of one sled.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatSwitch(Arc<AtomicBool>);

impl HeartbeatSwitch {
    pub fn pause(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a sled's agent is configured with.
#[derive(Clone)]
pub struct AgentConfig {
    pub client: kube::Client,
    pub sled_name: String,
    /// Where the journal (and, for a simulated sled, the machine) lives.
    pub data_dir: PathBuf,
    /// What the sled offers to VMMs.
    pub capacity: Resources,
    pub failure_domain: Option<String>,
    /// Written to `Sled.spec.powerController` when the agent creates the Sled.
    pub power_controller_url: Option<String>,
    /// `metadata.labels` of the Sled when the agent creates it.
    pub labels: BTreeMap<String, String>,
    pub intervals: Intervals,
    pub heartbeats: HeartbeatSwitch,
}

impl AgentConfig {
    /// A configuration with the defaults: 64 CPUs and 256 GiB, no failure domain, no power
    /// controller, no labels, default intervals.
    pub fn new(client: kube::Client, sled_name: impl Into<String>, data_dir: PathBuf) -> Self {
        AgentConfig {
            client,
            sled_name: sled_name.into(),
            data_dir,
            capacity: Resources {
                cpus: 64,
                memory_mib: 256 * 1024,
            },
            failure_domain: None,
            power_controller_url: None,
            labels: BTreeMap::new(),
            intervals: Intervals::default(),
            heartbeats: HeartbeatSwitch::default(),
        }
    }
}
