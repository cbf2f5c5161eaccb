//! `Instance`: a virtual machine a user wants (namespaced; a namespace is a project).
//!
//! Writers: users write `spec` (`corralctl start/stop/reboot` write `runStrategy`,
//! `startRequest` and `rebootRequest`). The instance controller alone writes `status`.
//!
//! An Instance runs as at most one *active* Vmm (plus, during a live migration, one *target*
//! Vmm). `status.activeVmm` is written before the Vmm is created, so a Vmm that its Instance
//! does not name is abandoned, never merely "not yet recorded".

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{Condition, Reason};
use crate::migration::MigrationPhase;
use crate::sled::Resources;

/// A virtual network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    pub name: String,
    /// The VPC the interface is attached to.
    pub vpc: String,
    /// The interface's private IP address within the VPC.
    pub ip: String,
}

string_enum! {
    /// Whether the instance should run, and what the control plane does when it stops.
    pub enum RunStrategy {
        /// Run; restart whenever the instance stops, whatever the reason.
        Always,
        /// Run; restart after a failure (guest crash, VMM lost, sled lost) but not after the
        /// guest shuts down cleanly.
        RerunOnFailure,
        /// Start when created and on each `startRequest`; never restart automatically.
        Manual,
        /// Do not run; a running instance is stopped.
        Halted,
    }
}

// The enum macro does not derive Default, so that only kinds with a natural default have one.
#[allow(clippy::derivable_impls)]
impl Default for RunStrategy {
    fn default() -> Self {
        RunStrategy::Always
    }
}

string_enum! {
    /// What a drain of the instance's sled does to it.
    pub enum EvictionStrategy {
        /// Live-migrate it to another sled, or not move it at all: when live migration is
        /// refused (the pre-copy model predicts it would not converge) the drain's move fails.
        LiveMigrate,
        /// Live-migrate it when the pre-copy model predicts the transfer converges; otherwise
        /// stop it and start it again elsewhere (a restart migration).
        LiveMigrateIfPossible,
        /// Stop it and start it again elsewhere (a restart migration): no memory is copied.
        Restart,
        /// Leave it; the drain cannot complete while it runs.
        None,
    }
}

#[allow(clippy::derivable_impls)]
impl Default for EvictionStrategy {
    fn default() -> Self {
        EvictionStrategy::LiveMigrate
    }
}

/// A virtual machine instance.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "Instance",
    plural = "instances",
    shortname = "inst",
    namespaced,
    status = "InstanceStatus",
    category = "corral",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Sled","type":"string","jsonPath":".status.sled"}"#,
    printcolumn = r#"{"name":"CPUs","type":"integer","jsonPath":".spec.cpus"}"#,
    printcolumn = r#"{"name":"Memory","type":"integer","jsonPath":".spec.memoryMiB"}"#,
    printcolumn = r#"{"name":"Strategy","type":"string","priority":1,"jsonPath":".spec.runStrategy"}"#,
    printcolumn = r#"{"name":"VMM","type":"string","priority":1,"jsonPath":".status.activeVmm"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","priority":1,"jsonPath":".status.restarts"}"#,
    printcolumn = r#"{"name":"Diverged","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Diverged\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.runStrategy",
    selectable = ".status.sled",
    selectable = ".status.state"
)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    #[schemars(range(min = 1, max = 256))]
    pub cpus: u32,
    /// The guest's memory: at least 64 MiB, at most 1 TiB.
    #[serde(rename = "memoryMiB")]
    #[schemars(range(min = 64, max = 1_048_576))]
    pub memory_mib: u64,
    /// The boot image.
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub run_strategy: RunStrategy,
    #[serde(default)]
    pub eviction_strategy: EvictionStrategy,
    /// Place only on sleds whose labels include all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sled_selector: BTreeMap<String, String>,
    /// Instances of one group are placed on different sleds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity_group: Option<String>,
    /// An opaque token (`corralctl start` writes the current time). A new value asks for one
    /// start of an instance that is not running (`Manual`, or `RerunOnFailure` after a clean
    /// shutdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_request: Option<String>,
    /// An opaque token (`corralctl reboot` writes the current time). A new value asks for one
    /// reboot of the running guest, in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_request: Option<String>,
}

impl InstanceSpec {
    pub fn resources(&self) -> Resources {
        Resources {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
        }
    }

    /// Whether an instance with this spec should run, given `status` (how it last ended and
    /// which start request was handled): the one rule behind the instance controller's starts
    /// and restarts, `corralctl diff` and the tests. A `startRequest` not yet handled asks for
    /// a run under `RerunOnFailure` and `Manual`.
    pub fn should_run(&self, status: &InstanceStatus) -> bool {
        let new_start =
            self.start_request.is_some() && self.start_request != status.handled_start_request;
        match self.run_strategy {
            RunStrategy::Halted => false,
            RunStrategy::Always => true,
            RunStrategy::RerunOnFailure => {
                new_start
                    || status
                        .last_exit
                        .as_ref()
                        .is_none_or(|exit| exit.reason != Reason::GuestShutdown)
            }
            RunStrategy::Manual => new_start || status.last_exit.is_none(),
        }
    }
}

impl Instance {
    /// Whether the instance should run now: it is not being deleted and its spec asks for it
    /// given its status ([`InstanceSpec::should_run`]).
    pub fn should_run(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && match &self.status {
                Some(status) => self.spec.should_run(status),
                None => self.spec.should_run(&InstanceStatus::default()),
            }
    }
}

string_enum! {
    /// Where the instance is in its life, derived from the instance and its Vmms.
    pub enum InstanceState {
        /// It should run and no Vmm has reported yet (being placed, or its Vmm being created).
        Creating,
        /// Its VMM is booting.
        Starting,
        /// Its VMM runs.
        Running,
        /// Its VMM is being stopped.
        Stopping,
        /// It does not run, as its runStrategy wants.
        Stopped,
        /// It is moving to another sled.
        Migrating,
        /// Its VMM stopped or diverged against its runStrategy and it is being brought back.
        Repairing,
        /// It stopped on a failure and its runStrategy does not restart it.
        Failed,
    }
}

string_enum! {
    /// The condition types of an Instance.
    pub enum InstanceConditionType {
        /// A sled was chosen for it (False with `Unschedulable` and why, when none fits).
        Scheduled,
        /// Its VMM runs.
        Running,
        /// A live migration is in progress.
        Migrating,
        /// What runs differs from what the control plane assigned.
        Diverged,
        /// Its sled stopped renewing its heartbeat.
        SledUnreachable,
        /// A restart waits for its backoff.
        RestartBackoff,
    }
}

/// How the instance's last VMM ended without the control plane asking it to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceExit {
    /// `GuestShutdown`, `GuestCrashed`, `VmmKilled`, `VmmMissing`, `StaleSledEpoch`,
    /// `SledFailed` (its sled was fenced), ...
    pub reason: Reason,
    pub vmm: String,
    /// The sled the VMM ran on (a restart avoids it after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sled: Option<String>,
    pub at: Time,
}

/// The end of a migration, decided by the instance controller (docs/migration.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationOutcome {
    /// The Migration (same namespace).
    pub name: String,
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub phase: MigrationPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The Vmm the guest moved to (or was to move to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vmm: Option<String>,
    pub at: Time,
}

/// Written only by the instance controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<InstanceState>,
    /// The sled of the active Vmm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sled: Option<String>,
    /// The Vmm that is (or is becoming) the instance. Written before the Vmm is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_vmm: Option<String>,
    /// The Vmm a live migration moves the instance to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vmm: Option<String>,
    /// The sled of the target Vmm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sled: Option<String>,
    /// The Migration whose target `targetVmm` is, while it is unfinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// How the last migration of the instance ended: the switch-or-abort decision the
    /// migration controller copies into the Migration's final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_migration: Option<MigrationOutcome>,
    /// Bumped whenever the sled the instance runs on changes.
    #[serde(default)]
    pub location_generation: u64,
    /// How many Vmms were created for the instance; the next is `NAME-v{vmmSerial+1}`.
    #[serde(default)]
    pub vmm_serial: u64,
    /// Automatic restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// Failures in a row the instance itself caused; sets the restart backoff. Failures the
    /// sled caused (a reboot, a lost sled) do not count.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// No automatic restart before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<Time>,
    /// How the last VMM ended on its own, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<InstanceExit>,
    /// The `spec.startRequest` already acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_start_request: Option<String>,
    /// The `spec.rebootRequest` already passed to the VMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_reboot_request: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition<InstanceConditionType>>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default)]
    pub observed_generation: i64,
}

impl InstanceStatus {
    /// Whether `activeVmm` or `targetVmm` is the Vmm `vmm_name`. A Vmm its Instance names is
    /// the instance's, or is becoming it; one it does not name is abandoned
    /// ([`crate::Vmm::is_abandoned`]).
    pub fn names_vmm(&self, vmm_name: &str) -> bool {
        self.active_vmm.as_deref() == Some(vmm_name) || self.target_vmm.as_deref() == Some(vmm_name)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn instance(strategy: &str, status: Value, start_request: Option<&str>) -> Instance {
        let mut instance: Instance = serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Instance",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"cpus": 1, "memoryMiB": 512, "image": "debian", "runStrategy": strategy},
            "status": status,
        }))
        .unwrap();
        instance.spec.start_request = start_request.map(str::to_string);
        instance
    }

    fn exit(reason: &str) -> Value {
        json!({"reason": reason, "vmm": "web-v1", "at": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn whether_an_instance_should_run_follows_its_run_strategy_and_last_exit() {
        let cases = [
            (
                "Always",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown")}),
                None,
                true,
            ),
            ("Halted", json!({}), None, false),
            ("Halted", json!({"state": "Stopped"}), Some("t1"), false),
            // RerunOnFailure: a clean shutdown is the end, a failure is not.
            ("RerunOnFailure", json!({}), None, true),
            (
                "RerunOnFailure",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown")}),
                None,
                false,
            ),
            (
                "RerunOnFailure",
                json!({"state": "Failed", "lastExit": exit("GuestCrashed")}),
                None,
                true,
            ),
            (
                "RerunOnFailure",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown")}),
                Some("t1"),
                true,
            ),
            // The exit decides, whatever state was last written beside it.
            (
                "RerunOnFailure",
                json!({"state": "Stopping", "lastExit": exit("GuestShutdown")}),
                None,
                false,
            ),
            // Manual: any end is the end, until a new start request.
            ("Manual", json!({"state": "Creating"}), None, true),
            (
                "Manual",
                json!({"state": "Failed", "lastExit": exit("GuestCrashed")}),
                None,
                false,
            ),
            (
                "Manual",
                json!({"state": "Repairing", "lastExit": exit("VmmKilled")}),
                None,
                false,
            ),
            (
                "Manual",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown"), "handledStartRequest": "t1"}),
                Some("t1"),
                false,
            ),
            (
                "Manual",
                json!({"state": "Stopped", "lastExit": exit("GuestShutdown"), "handledStartRequest": "t1"}),
                Some("t2"),
                true,
            ),
        ];
        for (strategy, status, start_request, expected) in cases {
            let instance = instance(strategy, status.clone(), start_request);
            let description = format!("{strategy} {status} {start_request:?}");
            assert_eq!(instance.should_run(), expected, "{description}");
            let status = instance.status.clone().unwrap_or_default();
            assert_eq!(instance.spec.should_run(&status), expected, "{description}");
        }
    }

    #[test]
    fn an_instance_being_deleted_or_without_status_follows_the_same_rule() {
        let mut deleting = instance("Always", json!({}), None);
        deleting.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        assert!(!deleting.should_run());
        let mut fresh = instance("Manual", json!({}), None);
        fresh.status = None;
        assert!(fresh.should_run());
    }

    #[test]
    fn a_status_names_its_active_and_target_vmms_only() {
        let status = InstanceStatus {
            active_vmm: Some("web-v1".into()),
            target_vmm: Some("web-v2".into()),
            ..Default::default()
        };
        assert!(status.names_vmm("web-v1"));
        assert!(status.names_vmm("web-v2"));
        assert!(!status.names_vmm("web-v3"));
        assert!(!InstanceStatus::default().names_vmm("web-v1"));
    }
}
