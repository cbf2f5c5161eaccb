//! The rack's Warning Events, for failure messages and summaries.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::process::tail;
use crate::wait::PROBE_BOUND;

/// Every Event, in all namespaces.
pub async fn list(client: &kube::Client) -> Result<Vec<Event>, String> {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|error| format!("listing events: {error}"))
}

/// The count of Warning Events by reason (an aggregated Event counts as often as it occurred).
pub fn warnings_by_reason(events: &[Event]) -> BTreeMap<String, i32> {
    let mut by_reason: BTreeMap<String, i32> = BTreeMap::new();
    for event in events.iter().filter(|event| is_warning(event)) {
        *by_reason
            .entry(event.reason.clone().unwrap_or_default())
            .or_default() += event.count.unwrap_or(1);
    }
    by_reason
}

/// The last `lines` Warning Events, newest last, one line each; or why they could not be read.
pub async fn recent_warnings(client: &kube::Client, lines: usize) -> String {
    let events = match tokio::time::timeout(PROBE_BOUND, list(client)).await {
        Ok(Ok(events)) => events,
        Ok(Err(error)) => return format!("({error})"),
        Err(_) => return "(listing events timed out)".into(),
    };
    let mut warnings: Vec<&Event> = events.iter().filter(|event| is_warning(event)).collect();
    warnings.sort_by_key(|event| {
        event
            .resource_version()
            .and_then(|version| version.parse::<u64>().ok())
    });
    let described: Vec<String> = warnings
        .iter()
        .map(|event| {
            format!(
                "{} {}/{} x{}: {}",
                event.reason.as_deref().unwrap_or("-"),
                event.involved_object.kind.as_deref().unwrap_or("-"),
                event.involved_object.name.as_deref().unwrap_or("-"),
                event.count.unwrap_or(1),
                event.message.as_deref().unwrap_or("")
            )
        })
        .collect();
    tail(&described.join("\n"), lines)
}

fn is_warning(event: &Event) -> bool {
    event.type_.as_deref() == Some("Warning")
}
