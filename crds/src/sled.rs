//! `Sled`: one server of the rack (cluster-scoped).
//!
//! Writers: users and operators write `spec` (`corralctl cordon` sets `unschedulable`); the
//! sled's node-agent writes `status`, except `status.health` and the `Fenced` condition, which
//! the sled-health controller owns; the sled-health controller also raises `status.epoch` when it
//! fences the sled and sets `Ready=False` (`HeartbeatExpired`) when the Lease expires. Both write
//! merge patches conditional on the resourceVersion they read, so neither overwrites what it has
//! not seen. The agent's heartbeat is a `Lease` named after the sled in
//! [`crate::SLED_LEASE_NAMESPACE`], not a status field, so that heartbeats do not wake every
//! watcher of Sleds.
//!
//! # The epoch is a fence token
//! `status.epoch` never goes down. It rises on every boot of the sled (the agent) and on every
//! fence (the sled-health controller, after the fence is proven). A Vmm placed at an epoch
//! below the sled's current one belongs to an ended life of the sled: its VMM does not run and
//! never will again ([`crate::Vmm::outlived_by`]).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::condition::{Condition, Reason};
use crate::vpc::V2pAck;

/// The most CPUs one [`Resources`] may hold (a sled's capacity, or one Vmm's).
pub const MAX_CPUS: u32 = 4096;
/// The most memory one [`Resources`] may hold, in MiB: 16 TiB.
pub const MAX_MEMORY_MIB: u64 = 16 * 1024 * 1024;

/// What a sled offers and what is allocated of it, or what a Vmm takes: at most 4096 CPUs and
/// 16 TiB of memory.
// Each quantity has a maximum in the schema, so no stored value comes near overflowing a sum
// the control plane makes; sums saturate anyway, so a total that did reach the type's limit
// reads as full instead of wrapping to almost nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[schemars(range(max = MAX_CPUS))]
    pub cpus: u32,
    #[serde(rename = "memoryMiB")]
    #[schemars(range(max = MAX_MEMORY_MIB))]
    pub memory_mib: u64,
}

impl Resources {
    pub fn fits_within(&self, free: &Resources) -> bool {
        self.cpus <= free.cpus && self.memory_mib <= free.memory_mib
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_sub(other.cpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
        }
    }

    /// The sum, each quantity stopping at its type's maximum instead of overflowing.
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_add(other.cpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
        }
    }
}

/// [`Resources::saturating_add`]: a sum of resources never overflows.
impl std::ops::Add for Resources {
    type Output = Resources;
    fn add(self, other: Resources) -> Resources {
        self.saturating_add(&other)
    }
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, other: Resources) {
        *self = *self + other;
    }
}

/// A sled: where VMMs run.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "Sled",
    plural = "sleds",
    shortname = "sl",
    status = "SledStatus",
    category = "corral",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Health","type":"string","jsonPath":".status.health.verdict"}"#,
    printcolumn = r#"{"name":"Why","type":"string","jsonPath":".status.health.reason"}"#,
    printcolumn = r#"{"name":"Cordoned","type":"boolean","jsonPath":".spec.unschedulable"}"#,
    printcolumn = r#"{"name":"VMMs","type":"integer","jsonPath":".status.vmms"}"#,
    printcolumn = r#"{"name":"CPUs","type":"integer","jsonPath":".status.allocated.cpus"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".status.capacity.cpus"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.epoch"}"#,
    printcolumn = r#"{"name":"Domain","type":"string","priority":1,"jsonPath":".spec.failureDomain"}"#,
    printcolumn = r#"{"name":"Diverged","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Diverged\")].status"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","priority":1,"jsonPath":".status.agentAddress"}"#,
    printcolumn = r#"{"name":"Hypervisor","type":"string","priority":1,"jsonPath":".status.hypervisor"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SledSpec {
    /// Cordon: when true the scheduler places no new Vmm here. Running VMMs stay.
    #[serde(default)]
    pub unschedulable: bool,
    /// The failure domain (for example a power shelf); anti-affinity may spread across it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_domain: Option<String>,
    /// Base URL of the sled's out-of-band power controller (`GET/POST {url}/power`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_controller: Option<String>,
    /// An operator's confirmation that the sled's life at this epoch is over — it is off, or
    /// cut off for good, and runs nothing that matters (`corralctl fence SLED --confirm`). The
    /// sled-health controller then fences it without its power controller. Naming the epoch
    /// keeps a confirmation from fencing a later life of the sled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_confirmed_epoch: Option<u64>,
}

string_enum! {
    /// The condition types of a Sled.
    pub enum SledConditionType {
        /// The node-agent runs, renews its Lease and accepts Vmms (node-agent).
        Ready,
        /// The sled runs exactly the VMMs the control plane assigns it (node-agent).
        Diverged,
        /// The sled was powered off by the control plane to fence it (sled-health controller).
        Fenced,
        /// The sled's V2P table holds every VpcRoutes at its current generation (node-agent).
        V2PConverged,
    }
}

string_enum! {
    /// The sled-health controller's verdict on a sled (docs/rack.md, "When a sled fails").
    pub enum HealthVerdict {
        /// Its agent renews its Lease.
        Healthy,
        /// Its Lease is late, still within the grace.
        Suspect,
        /// Its Lease expired and its power controller says it is on, or cannot be asked. Its
        /// VMMs may still run: nothing of it is restarted elsewhere.
        Unreachable,
        /// Its power controller reports it off; it is fenced next.
        PoweredOff,
        /// It is proven unable to run its VMMs (power confirmed off, or an operator confirmed)
        /// and its epoch was raised: its Vmms are released and restart elsewhere.
        Fenced,
    }
}

/// The sled-health controller's verdict and why. Written only by the sled-health controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SledHealth {
    pub verdict: HealthVerdict,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the verdict last changed.
    pub since: Time,
    /// The Lease's `renewTime` when the controller last saw it change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renew: Option<Time>,
    /// The epoch the fence raised `status.epoch` to (while `Fenced`, and after: an agent that
    /// rejoins reports a higher one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_epoch: Option<u64>,
    /// The release of a fenced sled's Vmms, while and after it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuation: Option<Evacuation>,
}

/// How far the evacuation of a fenced sled got. The work itself is derived from the API (every
/// Vmm of the sled placed below `fencedEpoch` that still holds the node-agent's finalizer), so
/// a controller that restarts resumes it; these counts are for operators.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evacuation {
    pub started: Option<Time>,
    /// Vmms of the ended life found when the evacuation started.
    pub total: u32,
    /// Vmms released so far (their instances restart elsewhere per runStrategy).
    pub released: u32,
    /// When the last one was released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Time>,
}

impl Sled {
    /// The sled's current epoch (0 before its agent ever reported).
    pub fn epoch(&self) -> u64 {
        self.status.as_ref().map_or(0, |status| status.epoch)
    }

    /// The sled-health verdict; a sled no sled-health controller has judged is `Healthy`.
    pub fn health(&self) -> HealthVerdict {
        self.status
            .as_ref()
            .and_then(|status| status.health.as_ref())
            .map_or(HealthVerdict::Healthy, |health| health.verdict)
    }

    /// Whether it is fenced at its current epoch: its life was proven over, and no new one has
    /// reported yet.
    pub fn is_fenced(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|status| status.health.as_ref())
            .is_some_and(|health| {
                health.verdict == HealthVerdict::Fenced
                    && health
                        .fenced_epoch
                        .is_some_and(|fenced| self.epoch() <= fenced)
            })
    }

    /// Whether new Vmms may be placed on it: ready and booted, judged `Healthy`, not cordoned
    /// and not being deleted.
    pub fn accepts_vmms(&self) -> bool {
        self.is_ready_and_booted()
            && self.health() == HealthVerdict::Healthy
            && !self.spec.unschedulable
            && self.metadata.deletion_timestamp.is_none()
    }

    /// Whether its agent reports `Ready=True`. A sled without the condition (its agent never
    /// reported) is not ready.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|status| {
            crate::condition::is_true(&status.conditions, SledConditionType::Ready)
        })
    }

    /// Whether it is ready ([`Sled::is_ready`]) and its agent has reported a boot
    /// (`status.epoch` above 0): what a rack waits for before it places anything.
    pub fn is_ready_and_booted(&self) -> bool {
        self.is_ready() && self.status.as_ref().is_some_and(|status| status.epoch > 0)
    }
}

/// What the node-agent observes of its sled. Written only by the sled's node-agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SledStatus {
    /// What the sled can give to VMMs.
    #[serde(default)]
    pub capacity: Resources,
    /// The sum of the resources of the Vmms assigned to this sled and not yet torn down.
    #[serde(default)]
    pub allocated: Resources,
    /// The number of VMMs the agent holds (running or on their way up or down).
    #[serde(default)]
    pub vmms: u32,
    /// Bumped on every boot of the sled (and every fence). A Vmm whose `sledEpoch` is lower was
    /// meant for an earlier life of the sled and is refused.
    #[serde(default)]
    pub epoch: u64,
    /// The node-agent's version.
    #[serde(default)]
    pub agent_version: String,
    /// What runs the sled's VMMs, as its agent reports it: `sim` (the simulator) or `qemu`
    /// with its accelerator, e.g. `qemu (kvm)` (docs/qemu.md).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hypervisor: String,
    /// Where the agent's fault-injection and migration API listens, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_address: Option<String>,
    /// VMMs running on the sled that no Vmm assigns to it, while the agent repairs them
    /// (`Diverged=True`, reason `UnknownVmm`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_vmms: Vec<UnknownVmmReport>,
    /// The bandwidth of the sled's migration link, bytes per second (live migrations out of
    /// the sled share it).
    #[serde(default)]
    pub migration_bandwidth: u64,
    /// The longest pause a live migration out of the sled plans for, in milliseconds: pre-copy
    /// ends once the rest would take this long to send. 0: the default
    /// ([`crate::migration::DOWNTIME_BUDGET`]).
    #[serde(default, skip_serializing_if = "crate::migration::is_zero")]
    pub migration_downtime_budget_ms: u64,
    /// The VpcRoutes generation the sled's V2P table holds, per VPC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub v2p: Vec<V2pAck>,
    #[serde(default)]
    pub conditions: Vec<Condition<SledConditionType>>,
    /// The sled-health controller's verdict (absent until it first judged the sled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<SledHealth>,
}

/// A VMM on a sled that no Vmm assigns, as the sled's node-agent reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnknownVmmReport {
    /// The hypervisor's id of the VMM.
    pub id: String,
    /// The instance the VMM claims to be (from its launch parameters), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn sled(status: Value) -> Sled {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Sled",
            "metadata": {"name": "s1"},
            "spec": {},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn sums_of_resources_saturate_instead_of_overflowing() {
        let huge = Resources {
            cpus: u32::MAX,
            memory_mib: u64::MAX,
        };
        let one = Resources {
            cpus: 1,
            memory_mib: 1,
        };
        assert_eq!(huge + huge, huge);
        assert_eq!(huge + one, huge);
        let mut total = Resources::default();
        total += one;
        total += huge;
        assert_eq!(total, huge);
        assert_eq!(
            one + one,
            Resources {
                cpus: 2,
                memory_mib: 2
            }
        );
        // A saturated total is full: nothing more fits beside it.
        let capacity = Resources {
            cpus: MAX_CPUS,
            memory_mib: MAX_MEMORY_MIB,
        };
        assert!(!one.fits_within(&capacity.saturating_sub(&total)));
    }

    #[test]
    fn the_schema_bounds_every_quantity() {
        let schema = serde_json::to_value(schemars::schema_for!(Resources)).unwrap();
        let properties = &schema["properties"];
        assert_eq!(properties["cpus"]["maximum"], json!(MAX_CPUS));
        assert_eq!(properties["memoryMiB"]["maximum"], json!(MAX_MEMORY_MIB));
    }

    fn ready(status: &str) -> Value {
        json!([{"type": "Ready", "status": status, "reason": "AgentReady",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    }

    #[test]
    fn a_sled_is_ready_only_when_its_agent_says_so() {
        let cases = [
            ("no status", json!(null), false, false),
            ("no Ready condition", json!({"epoch": 1}), false, false),
            (
                "Ready=Unknown",
                json!({"epoch": 1, "conditions": ready("Unknown")}),
                false,
                false,
            ),
            (
                "Ready=False",
                json!({"epoch": 1, "conditions": ready("False")}),
                false,
                false,
            ),
            (
                "Ready=True",
                json!({"epoch": 1, "conditions": ready("True")}),
                true,
                true,
            ),
            (
                "Ready=True, no boot yet",
                json!({"conditions": ready("True")}),
                true,
                false,
            ),
        ];
        for (name, status, is_ready, is_ready_and_booted) in cases {
            let sled = sled(status);
            assert_eq!(sled.is_ready(), is_ready, "{name}");
            assert_eq!(sled.is_ready_and_booted(), is_ready_and_booted, "{name}");
        }
    }
}
