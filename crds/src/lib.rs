//! Corral's API types. Every kind lives in the API group [`GROUP`] at version [`VERSION`].
//!
//! The Rust types are the source of truth: the CustomResourceDefinition YAML in `crds/yaml/` is
//! generated from them ([`definitions`]) and a test fails when the files are stale
//! (`CORRAL_UPDATE_CRDS=1 cargo test -p corral-crds` rewrites them). [`MANIFESTS`] embeds the
//! files, so a `corral` binary serves its own kinds without a checkout.
//!
//! Every status field has exactly one writer, named in the field's docs: users write `spec`,
//! the instance controller writes `Instance.status`, the node-agent writes `Vmm.status` and its
//! own `Sled.status` (but `health`, `Fenced` and fencing's epoch raise: the sled-health controller), the migration controller `Migration.status`, the drain controller
//! `Drain.status`, the V2P controller `VpcRoutes`.
//!
//! **Invariant:** no I/O and no async in this crate.

/// Defines a fieldless enum that is a plain string on the wire, with `as_str`, `Display`,
/// `FromStr` and `ALL`. States, condition types and reasons are such enums: code compares
/// variants, never strings.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, schemars::JsonSchema,
        )]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant,
            )*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $(stringify!($variant) => Ok($name::$variant),)*
                    _ => Err(format!(
                        "unknown {} {text:?} (expected one of: {})",
                        stringify!($name),
                        [$(stringify!($variant)),*].join(", ")
                    )),
                }
            }
        }
    };
}

pub mod condition;
pub mod drain;
pub mod instance;
pub mod migration;
pub mod sled;
pub mod vmm;
pub mod vpc;

pub use condition::{Condition, ConditionStatus, Reason};
pub use drain::{Drain, DrainItem, DrainItemState, DrainPhase, DrainSpec, DrainStatus};
pub use instance::{
    EvictionStrategy, Instance, InstanceConditionType, InstanceExit, InstanceSpec, InstanceState,
    InstanceStatus, MigrationOutcome, Nic, RunStrategy,
};
pub use migration::{
    Migration, MigrationAbort, MigrationMode, MigrationPhase, MigrationReason, MigrationSpec,
    MigrationStatus, TransferProgress, TransferTimes, TransferTimings,
};
pub use sled::{
    Evacuation, HealthVerdict, Resources, Sled, SledConditionType, SledHealth, SledSpec,
    SledStatus, UnknownVmmReport,
};
pub use vmm::{
    MigrateFrom, MigrationRole, Vmm, VmmConditionType, VmmMigrationPhase, VmmMigrationStatus,
    VmmSpec, VmmState, VmmStatus,
};
pub use vpc::{V2pAck, V2pMapping, VpcRoutes, VpcRoutesSpec, VpcRoutesStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Corral kind.
pub const GROUP: &str = "corral.dev";
/// The served and stored version of every Corral kind.
pub const VERSION: &str = "v1alpha1";

/// The finalizer a node-agent holds on each Vmm of its sled until the VMM is gone and its
/// resources are freed.
pub const VMM_FINALIZER: &str = "corral.dev/node-agent";
/// The finalizer the instance controller holds on each Instance until its Vmms are gone.
pub const INSTANCE_FINALIZER: &str = "corral.dev/instance-controller";
/// Where node-agents keep their heartbeat Leases (named after the sled), as Kubernetes nodes do.
pub const SLED_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The label that names a Vmm's Instance (for `-l` selection and `corralctl diff`).
pub const INSTANCE_LABEL: &str = "corral.dev/instance";
/// On an Instance (and the Vmms made from it): how many bytes a second its guest dirties, a
/// whole number (docs/qemu.md, "The guest"). The API server refuses any other value.
pub const DIRTY_RATE_ANNOTATION: &str = "corral.dev/dirty-rate";
/// The label that names the Drain a Migration was created by.
pub const DRAIN_LABEL: &str = "corral.dev/drain";

/// The CustomResourceDefinitions of every Corral kind, generated from the types.
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("sleds.corral.dev.yaml", Sled::crd()),
        ("instances.corral.dev.yaml", Instance::crd()),
        ("vmms.corral.dev.yaml", Vmm::crd()),
        ("migrations.corral.dev.yaml", Migration::crd()),
        ("drains.corral.dev.yaml", Drain::crd()),
        ("vpcroutes.corral.dev.yaml", VpcRoutes::crd()),
    ]
}

/// Renders one definition as the YAML committed in `crds/yaml/`.
pub fn render(definition: &CustomResourceDefinition) -> String {
    let yaml = serde_saphyr::to_string(definition).expect("a CRD always serializes");
    format!("# Generated from the Rust types in crds/src; do not edit.\n{yaml}")
}

/// Corral's default ClusterRoles and bindings (`corral:tenant`, `corral:operator`,
/// `corral:viewer`, the controllers'), which the API server makes sure exist: (file name, YAML).
pub const POLICY: &[(&str, &str)] =
    &[("policy/corral.yaml", include_str!("../policy/corral.yaml"))];

/// The committed CRD files, embedded: (file name, YAML).
pub const MANIFESTS: &[(&str, &str)] = &[
    (
        "sleds.corral.dev.yaml",
        include_str!("../yaml/sleds.corral.dev.yaml"),
    ),
    (
        "instances.corral.dev.yaml",
        include_str!("../yaml/instances.corral.dev.yaml"),
    ),
    (
        "vmms.corral.dev.yaml",
        include_str!("../yaml/vmms.corral.dev.yaml"),
    ),
    (
        "migrations.corral.dev.yaml",
        include_str!("../yaml/migrations.corral.dev.yaml"),
    ),
    (
        "drains.corral.dev.yaml",
        include_str!("../yaml/drains.corral.dev.yaml"),
    ),
    (
        "vpcroutes.corral.dev.yaml",
        include_str!("../yaml/vpcroutes.corral.dev.yaml"),
    ),
];
