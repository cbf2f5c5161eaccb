//! `corralctl describe KIND NAME`: one object for a human — its metadata, spec, status, its
//! conditions as a table, and the recent Events about it (what happened and why).
//!
//! It works for any kind the server serves: spec and status print as YAML, and conditions are
//! read from `status.conditions` wherever a kind keeps them in the Kubernetes shape.

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use serde_json::Value;

use crate::command::{Outcome, Terminal};
use crate::context::Context;
use crate::discovery::ResourceType;
use crate::error::Error;
use crate::events;
use crate::get::{self, with_types};
use crate::output;
use crate::table;

pub async fn describe(
    ctx: &Context,
    targets: &[String],
    selector: Option<&str>,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let selections = get::select(ctx, targets).await?;
    let mut outcome = Outcome::Succeeded;
    let mut first = true;
    for selection in selections {
        let api = ctx.api_here(&selection.resource);
        let objects = match &selection.names {
            Some(names) => {
                let mut found = Vec::new();
                for name in names {
                    match api.get_opt(name).await {
                        Ok(Some(object)) => found.push(object),
                        Ok(None) => {
                            outcome = Outcome::Failed;
                            writeln!(term.err, "{}", ctx.not_found(&selection.resource, name))?;
                        }
                        Err(e) => return Err(Error::api(format!("getting {name}"))(e)),
                    }
                }
                found
            }
            None => {
                let mut params = kube::api::ListParams::default();
                if let Some(s) = selector {
                    params = params.labels(s);
                }
                api.list(&params)
                    .await
                    .map_err(Error::api(format!(
                        "listing {}",
                        selection.resource.plural_and_group()
                    )))?
                    .items
            }
        };
        for object in objects {
            let object = with_types(object, &selection.resource);
            let name = object.metadata.name.clone().unwrap_or_default();
            let namespace = object.metadata.namespace.clone();
            let uid = object.metadata.uid.clone();
            let found_events = events::list_for(
                ctx,
                selection.resource.kind(),
                namespace.as_deref(),
                &name,
                uid.as_deref(),
            )
            .await?;
            let value = serde_json::to_value(&object).map_err(Error::Encode)?;
            if !first {
                writeln!(term.out)?;
            }
            first = false;
            write!(
                term.out,
                "{}",
                render(
                    &value,
                    &selection.resource,
                    &found_events,
                    corral_client::clock::now()
                )?
            )?;
        }
    }
    Ok(outcome)
}

/// The description of `object` at `now`.
pub fn render(
    object: &Value,
    resource: &ResourceType,
    found_events: &[Event],
    now: Timestamp,
) -> Result<String, Error> {
    let mut text = String::new();
    let metadata = object.get("metadata").cloned().unwrap_or(Value::Null);
    let field = |label: &str, value: String| format!("{:<13} {value}\n", format!("{label}:"));
    let str_at = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    text.push_str(&field(
        "Name",
        str_at("/metadata/name").unwrap_or("").into(),
    ));
    if resource.namespaced {
        text.push_str(&field(
            "Namespace",
            str_at("/metadata/namespace").unwrap_or("").into(),
        ));
    }
    text.push_str(&field("Kind", resource.kind().into()));
    text.push_str(&field(
        "API Version",
        resource.api_resource.api_version.clone(),
    ));
    text.push_str(&map_field("Labels", metadata.get("labels")));
    text.push_str(&map_field("Annotations", metadata.get("annotations")));
    if let Some(created) = str_at("/metadata/creationTimestamp") {
        text.push_str(&field(
            "Created",
            format!("{created} ({} ago)", age(created, now)),
        ));
    }
    if let Some(deleting) = str_at("/metadata/deletionTimestamp") {
        text.push_str(&field(
            "Deleting",
            format!("since {deleting} ({})", age(deleting, now)),
        ));
    }
    if let Some(Value::Array(finalizers)) = metadata.get("finalizers")
        && !finalizers.is_empty()
    {
        let names: Vec<String> = finalizers.iter().map(table::cell_text).collect();
        text.push_str(&field("Finalizers", names.join(", ")));
    }
    if let Some(Value::Array(owners)) = metadata.get("ownerReferences")
        && !owners.is_empty()
    {
        let names: Vec<String> = owners
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o.get("kind").and_then(Value::as_str).unwrap_or("?"),
                    o.get("name").and_then(Value::as_str).unwrap_or("?")
                )
            })
            .collect();
        text.push_str(&field("Owners", names.join(", ")));
    }
    if let Some(spec) = object.get("spec") {
        text.push_str("Spec:\n");
        text.push_str(&output::indent(&output::to_yaml(spec)?, 2));
    }
    let mut status = object.get("status").cloned();
    let conditions = status
        .as_mut()
        .and_then(Value::as_object_mut)
        .and_then(|s| s.remove("conditions"));
    if let Some(status) = status.filter(|s| s.as_object().is_some_and(|m| !m.is_empty())) {
        text.push_str("Status:\n");
        text.push_str(&output::indent(&output::to_yaml(&status)?, 2));
    }
    match conditions {
        Some(Value::Array(list)) if !list.is_empty() => {
            text.push_str("Conditions:\n");
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    let get = |key: &str| {
                        c.get(key)
                            .map(table::cell_text)
                            .unwrap_or_else(|| table::NONE.into())
                    };
                    let since = c
                        .get("lastTransitionTime")
                        .and_then(Value::as_str)
                        .map(|t| age(t, now))
                        .unwrap_or_else(|| table::NONE.into());
                    vec![
                        get("type"),
                        get("status"),
                        get("reason"),
                        since,
                        get("message"),
                    ]
                })
                .collect();
            text.push_str(&output::indent(
                &table::render(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], &rows),
                2,
            ));
        }
        _ => text.push_str("Conditions:   <none>\n"),
    }
    if found_events.is_empty() {
        text.push_str("Events:       <none>\n");
    } else {
        text.push_str("Events:\n");
        let rows: Vec<Vec<String>> = found_events
            .iter()
            .map(|e| {
                let seen = events::last_seen(e)
                    .map(|t| corral_apimachinery::duration::human_age(t, now))
                    .unwrap_or_else(|| table::NONE.into());
                let count = e.count.unwrap_or(1);
                let age = match (count, e.first_timestamp.as_ref()) {
                    (n, Some(first)) if n > 1 => format!(
                        "{seen} (x{n} over {})",
                        corral_apimachinery::duration::human_age(first.0, now)
                    ),
                    _ => seen,
                };
                let from = e
                    .source
                    .as_ref()
                    .and_then(|s| s.component.clone())
                    .or_else(|| e.reporting_component.clone())
                    .unwrap_or_default();
                vec![
                    e.type_.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    age,
                    from,
                    e.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        text.push_str(&output::indent(
            &table::render(&["TYPE", "REASON", "AGE", "FROM", "MESSAGE"], &rows),
            2,
        ));
    }
    Ok(text)
}

fn age(timestamp: &str, now: Timestamp) -> String {
    corral_apimachinery::duration::human_age_of_str(timestamp, now)
        .unwrap_or_else(|| timestamp.to_string())
}

/// `Labels:       a=b` with one pair per line, or `<none>`.
fn map_field(label: &str, map: Option<&Value>) -> String {
    let pairs: Vec<String> = match map {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect(),
        _ => Vec::new(),
    };
    let label = format!("{label}:");
    if pairs.is_empty() {
        return format!("{label:<13} <none>\n");
    }
    let mut text = String::new();
    for (i, pair) in pairs.iter().enumerate() {
        let head = if i == 0 { label.as_str() } else { "" };
        let _ = writeln!(text, "{head:<13} {pair}");
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_description_shows_spec_status_conditions_and_events() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let resource = ResourceType::new("corral.dev/v1alpha1", "Instance", "instances", true);
        let object = json!({
            "apiVersion": "corral.dev/v1alpha1",
            "kind": "Instance",
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web", "tier": "front"},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"cpus": 2, "memoryMiB": 1024, "image": "debian"},
            "status": {"state": "Running", "conditions": [
                {"type": "Running", "status": "True", "reason": "VmmRunning", "message": "runs on s1",
                 "lastTransitionTime": "2026-01-01T00:05:00Z"}
            ]}
        });
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": "e1", "namespace": "default"},
            "involvedObject": {"kind": "Instance", "name": "web-1"},
            "type": "Normal", "reason": "Placed", "message": "placed on s1", "count": 3,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:09:00Z",
            "source": {"component": "scheduler"}
        }))
        .unwrap();
        let text = render(&object, &resource, &[event], now).unwrap();
        for expected in [
            "Name:         web-1\n",
            "Namespace:    default\n",
            "Labels:       app=web\n              tier=front\n",
            "Created:      2026-01-01T00:00:00Z (10m ago)\n",
            "Spec:\n  cpus: 2\n",
            "Status:\n  state: Running\n",
            "Conditions:\n  TYPE      STATUS   REASON       SINCE   MESSAGE\n  Running   True     VmmRunning   5m      runs on s1\n",
            "Events:\n  TYPE     REASON   AGE                 FROM        MESSAGE\n  Normal   Placed   60s (x3 over 10m)   scheduler   placed on s1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(
            !text.contains("conditions:"),
            "conditions print once, as a table:\n{text}"
        );
    }

    #[test]
    fn no_conditions_or_events_say_none() {
        let resource = ResourceType::new("corral.dev/v1alpha1", "Sled", "sleds", false);
        let text = render(
            &json!({"metadata": {"name": "s1"}, "spec": {}}),
            &resource,
            &[],
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert!(text.contains("Conditions:   <none>\n"), "{text}");
        assert!(text.contains("Events:       <none>\n"), "{text}");
        assert!(!text.contains("Namespace:"), "{text}");
    }
}
