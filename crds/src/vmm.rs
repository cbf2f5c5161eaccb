//! `Vmm`: one incarnation of an Instance on one sled (namespaced, owned by its Instance).
//!
//! Writers: the instance controller creates Vmms (with the node-agent's finalizer
//! [`crate::VMM_FINALIZER`] already on) and deletes them; `spec` never changes after creation
//! except `rebootRequest`. The node-agent of `spec.sled` alone writes `status`.
//!
//! Deleting a Vmm is how the control plane asks the sled to tear it down: the node-agent stops
//! the VMM, frees its resources and only then removes its finalizer. A Vmm that neither
//! `activeVmm` nor `targetVmm` of its Instance names is *abandoned*; the reaper deletes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{Condition, Reason};
use crate::instance::{Instance, Nic};
use crate::migration::{TransferProgress, TransferTimings};
use crate::sled::{Resources, Sled};

/// One VMM of an instance on one sled.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "Vmm",
    plural = "vmms",
    shortname = "vm",
    namespaced,
    status = "VmmStatus",
    category = "corral",
    printcolumn = r#"{"name":"Instance","type":"string","jsonPath":".spec.instance"}"#,
    printcolumn = r#"{"name":"Sled","type":"string","jsonPath":".spec.sled"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","priority":1,"jsonPath":".spec.sledEpoch"}"#,
    printcolumn = r#"{"name":"Generation","type":"integer","priority":1,"jsonPath":".status.stateGeneration"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.sled",
    selectable = ".spec.instance"
)]
#[serde(rename_all = "camelCase")]
pub struct VmmSpec {
    /// The Instance (same namespace) this VMM is an incarnation of.
    pub instance: String,
    /// The sled that runs it.
    pub sled: String,
    /// The sled's epoch when the Vmm was placed. A sled whose epoch has moved past it refuses
    /// the Vmm: it was meant for an earlier life of the sled.
    pub sled_epoch: u64,
    pub resources: Resources,
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// For a live-migration target: where the guest comes from. The target's agent creates a
    /// VMM that receives the guest instead of booting one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_from: Option<MigrateFrom>,
    /// Copied from the Instance's `spec.rebootRequest`; a new value asks for one guest reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_request: Option<String>,
}

/// The source of a live migration, in a target Vmm's spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrateFrom {
    /// The source Vmm (same namespace).
    pub vmm: String,
    /// The sled that runs the source Vmm; its agent (`Sled.status.agentAddress`) sends the guest.
    pub sled: String,
    /// The Migration (same namespace).
    pub migration: String,
}

string_enum! {
    /// Which end of a migration a Vmm is.
    pub enum MigrationRole {
        Source,
        Target,
    }
}

string_enum! {
    /// Where one end of a migration is, as its node-agent sees it.
    pub enum VmmMigrationPhase {
        /// Pre-copy rounds under way (the source guest runs).
        Transferring,
        /// Source: the guest is paused and every byte sent; waiting for the switch or an abort.
        /// Target: the whole guest is here; waiting for the switch.
        Ready,
        /// Target: the instance switched and the guest runs here. Source: the guest left.
        Completed,
        /// The transfer broke or was refused (`reason` says why); a source guest runs on.
        Failed,
        /// The control plane aborted it; a paused source guest was resumed.
        Aborted,
    }
}

/// One end of a migration, as the node-agent of the Vmm's sled reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmmMigrationStatus {
    /// The Migration (same namespace).
    pub migration: String,
    pub role: MigrationRole,
    pub phase: VmmMigrationPhase,
    #[serde(default)]
    pub progress: TransferProgress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When this end saw each step of the move (the target's measure it).
    #[serde(default, skip_serializing_if = "TransferTimings::is_empty")]
    pub timings: TransferTimings,
}

string_enum! {
    /// What the node-agent last saw of the VMM.
    pub enum VmmState {
        /// Accepted by the agent, not yet booting.
        Creating,
        /// Booting.
        Starting,
        /// Running.
        Running,
        /// Shutting down because the Vmm is being deleted.
        Stopping,
        /// The guest shut down on its own; the VMM no longer runs.
        Stopped,
        /// Sending or receiving a live migration (`status.migration` says which and how far).
        Migrating,
        /// Ended on a failure (`reason` says which), or refused by the agent.
        Failed,
        /// Torn down and its resources freed; the finalizer is about to go.
        Destroyed,
    }
}

impl VmmState {
    /// Stopped, Failed or Destroyed: the VMM no longer runs and never will again (only
    /// `Destroyed` may follow). Any other state may still be consuming the sled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            VmmState::Stopped | VmmState::Failed | VmmState::Destroyed
        )
    }
}

impl Vmm {
    /// Whether its node-agent reports a final state ([`VmmState::is_final`]): the VMM ended.
    /// A Vmm without a reported state has not.
    pub fn has_ended(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|status| status.state)
            .is_some_and(VmmState::is_final)
    }

    /// Whether the life of its sled it was placed in has ended: the sled's epoch rose past
    /// `spec.sledEpoch` (the sled rebooted, or was fenced). Such a Vmm's VMM does not run and
    /// never will again; `sled` is the Sled `spec.sled` names.
    pub fn outlived_by(&self, sled: &Sled) -> bool {
        sled.epoch() > self.spec.sled_epoch
    }

    /// Whether the Vmm is *abandoned*: if (and only if) its Instance does not exist, or
    /// neither `status.activeVmm` nor `status.targetVmm` of its Instance names it
    /// ([`crate::InstanceStatus::names_vmm`]; docs/rack.md). `instance` is the Instance that
    /// `spec.instance` names in the Vmm's namespace, as the caller found it (`None`: it does not
    /// exist). Being deleted does not change the answer.
    pub fn is_abandoned(&self, instance: Option<&Instance>) -> bool {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        !instance
            .and_then(|instance| instance.status.as_ref())
            .is_some_and(|status| status.names_vmm(name))
    }
}

string_enum! {
    /// The condition types of a Vmm.
    pub enum VmmConditionType {
        /// What runs on the sled differs from this Vmm (the agent says how).
        Diverged,
    }
}

/// Written only by the node-agent of `spec.sled`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmmStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmmState>,
    /// Monotonic, bumped by the node-agent on every report. A report with a lower generation
    /// than the one stored is stale and ignored.
    #[serde(default)]
    pub state_generation: u64,
    /// The epoch of the sled's life whose agent wrote this report. The API server refuses a
    /// report from an epoch below the sled's current one (a fenced or rebooted sled's agent
    /// has no say any more).
    #[serde(default)]
    pub sled_epoch: u64,
    /// Why the VMM is in its state (for `Failed`: `GuestCrashed`, `VmmKilled`, `VmmMissing`,
    /// `StaleSledEpoch`, `InsufficientCapacity`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the guest last finished booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_at: Option<Time>,
    /// The `spec.rebootRequest` the agent last carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_reboot_request: Option<String>,
    /// How fast the guest dirties its memory, bytes per second (what a live migration has to
    /// keep up with).
    #[serde(default)]
    pub dirty_bytes_per_second: u64,
    /// This Vmm's end of a live migration, while there is one (and its outcome after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<VmmMigrationStatus>,
    #[serde(default)]
    pub conditions: Vec<Condition<VmmConditionType>>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn vmm(status: Value) -> Vmm {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Vmm",
            "metadata": {"name": "web-v1", "namespace": "default"},
            "spec": {"instance": "web", "sled": "s1", "sledEpoch": 1,
                     "resources": {"cpus": 1, "memoryMiB": 512}, "image": "debian"},
            "status": status,
        }))
        .unwrap()
    }

    fn instance(status: Value) -> Instance {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Instance",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"cpus": 1, "memoryMiB": 512, "image": "debian"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_vmm_has_ended_only_in_a_final_state() {
        for state in VmmState::ALL {
            let ended = matches!(
                state,
                VmmState::Stopped | VmmState::Failed | VmmState::Destroyed
            );
            assert_eq!(state.is_final(), ended, "{state}");
            assert_eq!(vmm(json!({"state": state})).has_ended(), ended, "{state}");
        }
        assert!(!vmm(json!({})).has_ended());
        let mut without_status = vmm(json!({}));
        without_status.status = None;
        assert!(!without_status.has_ended());
    }

    #[test]
    fn a_vmm_is_abandoned_unless_its_instance_names_it() {
        let vmm = vmm(json!({"state": "Running"}));
        let cases = [
            ("no instance", None, true),
            ("an instance without status", Some(json!(null)), true),
            ("named active", Some(json!({"activeVmm": "web-v1"})), false),
            (
                "named target",
                Some(json!({"activeVmm": "web-v0", "targetVmm": "web-v1"})),
                false,
            ),
            ("another active", Some(json!({"activeVmm": "web-v2"})), true),
        ];
        for (name, status, abandoned) in cases {
            let instance = status.map(instance);
            assert_eq!(vmm.is_abandoned(instance.as_ref()), abandoned, "{name}");
        }
    }
}
