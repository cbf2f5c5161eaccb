//! `VpcRoutes`: the virtual-to-physical (V2P) mappings of one VPC (cluster-scoped, named after
//! the VPC).
//!
//! Writers: the V2P controller alone writes `spec` and `status`; node-agents only read it,
//! program their sled's V2P table from it and acknowledge the `metadata.generation` they
//! applied in their own `Sled.status.v2p`. The rules the controller keeps (make before break,
//! never backwards, never removed on a stale read) are in docs/migration.md, "V2P".

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where one instance IP of the VPC is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V2pMapping {
    /// The instance's private IP in the VPC.
    pub ip: String,
    /// The sled the instance runs on.
    pub sled: String,
    /// The instance's `status.locationGeneration` this mapping was made from. A mapping is
    /// replaced only by one with a higher value.
    pub location_generation: u64,
    pub namespace: String,
    pub instance: String,
    /// The VpcRoutes `metadata.generation` at which this mapping last changed: a sled that
    /// acknowledges that generation (or a later one) has it.
    #[serde(default)]
    pub since: i64,
}

/// The V2P mappings of a VPC.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "VpcRoutes",
    plural = "vpcroutes",
    shortname = "vpcr",
    status = "VpcRoutesStatus",
    category = "corral",
    printcolumn = r#"{"name":"Mappings","type":"integer","jsonPath":".status.mappings"}"#,
    printcolumn = r#"{"name":"Applied","type":"string","jsonPath":".status.applied"}"#,
    printcolumn = r#"{"name":"Generation","type":"integer","priority":1,"jsonPath":".metadata.generation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VpcRoutesSpec {
    /// One entry per instance IP, sorted by IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<V2pMapping>,
}

/// Written only by the V2P controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcRoutesStatus {
    /// How many mappings the spec holds.
    #[serde(default)]
    pub mappings: u32,
    /// `n/m`: Ready sleds that acknowledged the current generation, of all Ready sleds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub applied: String,
    #[serde(default)]
    pub observed_generation: i64,
}

/// One sled's acknowledgement of a VPC's routes (in `Sled.status.v2p`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V2pAck {
    pub vpc: String,
    /// The VpcRoutes `metadata.generation` the sled's table holds.
    pub generation: i64,
}
