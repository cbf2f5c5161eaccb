//! The `Heartbeat` column of `corralctl get sleds`: how long ago each sled's node-agent renewed
//! its Lease (`kube-node-lease/SLED`). The Lease is not a field of the Sled (heartbeats would
//! wake every watcher of Sleds), so the column is joined here, on the client, from one list of
//! the Leases; the verdict the sled-health controller drew from them is the server's `Health`
//! column.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

use crate::context::Context;
use crate::error::Error;
use crate::table::{ColumnDefinition, Table};

/// The column's name.
pub const COLUMN: &str = "Heartbeat";

/// Adds the `Heartbeat` column to a table of Sleds, from the Leases as they are now.
pub async fn add_column(ctx: &Context, table: &mut Table) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), corral_crds::SLED_LEASE_NAMESPACE);
    let leases = api
        .list(&ListParams::default())
        .await
        .map_err(Error::api("listing the sleds' Leases"))?;
    with_ages(table, &leases.items, jiff::Timestamp::now());
    Ok(())
}

/// Inserts the column after `Health`'s reason (`Why`), or last: each row's Lease age, `<none>`
/// for a sled without a Lease.
pub fn with_ages(table: &mut Table, leases: &[Lease], now: Timestamp) {
    let at = table
        .column_definitions
        .iter()
        .position(|column| column.name == "Why")
        .map_or(table.column_definitions.len(), |i| i + 1);
    table.column_definitions.insert(
        at,
        ColumnDefinition {
            name: COLUMN.into(),
            type_: "string".into(),
            ..Default::default()
        },
    );
    for row in &mut table.rows {
        let name = row.object.pointer("/metadata/name").and_then(Value::as_str);
        let age = leases
            .iter()
            .find(|lease| lease.metadata.name.as_deref() == name && name.is_some())
            .and_then(|lease| lease.spec.as_ref()?.renew_time.as_ref())
            .map(|renewed| corral_apimachinery::duration::human_age(renewed.0, now))
            .unwrap_or_else(|| "<none>".into());
        let at = at.min(row.cells.len());
        row.cells.insert(at, Value::String(age));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_sled_shows_the_age_of_its_lease_after_the_verdict() {
        let mut table: Table = serde_json::from_value(json!({
            "columnDefinitions": [
                {"name": "Name", "type": "string"}, {"name": "Health", "type": "string"},
                {"name": "Why", "type": "string"}, {"name": "Age", "type": "date"}],
            "rows": [
                {"cells": ["s1", "Healthy", "AgentReady", "1h"], "object": {"metadata": {"name": "s1"}}},
                {"cells": ["s2", "Unreachable", "HeartbeatExpired", "1h"], "object": {"metadata": {"name": "s2"}}},
            ],
        }))
        .unwrap();
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "s1", "namespace": "kube-node-lease"},
            "spec": {"renewTime": "2026-01-01T00:00:00.000000Z"},
        }))
        .unwrap();
        let now: Timestamp = "2026-01-01T00:00:04Z".parse().unwrap();
        with_ages(&mut table, &[lease], now);
        let names: Vec<&str> = table
            .column_definitions
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["Name", "Health", "Why", "Heartbeat", "Age"]);
        assert_eq!(table.rows[0].cells[3], json!("4s"));
        assert_eq!(table.rows[1].cells[3], json!("<none>"));
    }
}
