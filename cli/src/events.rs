//! `corralctl events`: what happened and why — the core/v1 Events Corral's components record
//! (scheduling, restarts, divergence found and repaired, operator actions), oldest first, as
//! `kubectl events` prints them. `-w` keeps printing new and updated Events.
//!
//! Events of cluster-scoped objects (Sleds) live in the `default` namespace, as Kubernetes
//! keeps those of Nodes (`corral_client::events::Recorder` writes them there).

use futures::TryStreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};

use crate::command::{Outcome, Terminal};
use crate::context::Context;
use crate::error::Error;
use crate::table::{self, Columns};
use crate::target::Targets;

pub struct EventsOptions {
    pub all_namespaces: bool,
    pub watch: bool,
    /// `KIND/NAME`: only Events about that object.
    pub for_object: Option<String>,
}

/// When an Event was last seen: `lastTimestamp`, else `eventTime`, else `firstTimestamp`, else
/// when it was created.
pub fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Oldest first. Event times have one-second resolution, so ties are broken by
/// resourceVersion: Corral's are one increasing integer (docs/rack.md), so within a second the
/// most recently written Event comes last.
pub fn sort(events: &mut [Event]) {
    events.sort_by_key(|e| {
        let version = e
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok());
        (last_seen(e), version)
    });
}

/// The Events about one object (`kind` as in `involvedObject.kind`), oldest first. Events
/// naming another object of the same name (an earlier incarnation, by uid) are left out.
pub async fn list_for(
    ctx: &Context,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    uid: Option<&str>,
) -> Result<Vec<Event>, Error> {
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), namespace.unwrap_or("default"));
    let params = ListParams::default().fields(&involved_selector(kind, name));
    let list = match api.list(&params).await {
        Ok(list) => list,
        // A server that keeps no Events has none to show.
        Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::api(format!("listing the events of {kind} {name}"))(
                e,
            ));
        }
    };
    let mut found: Vec<Event> = list
        .items
        .into_iter()
        .filter(|e| match (uid, e.involved_object.uid.as_deref()) {
            (Some(uid), Some(theirs)) => uid == theirs,
            _ => true,
        })
        .collect();
    sort(&mut found);
    Ok(found)
}

fn involved_selector(kind: &str, name: &str) -> String {
    format!("involvedObject.kind={kind},involvedObject.name={name}")
}

/// The headers of the Events table.
pub fn headers(all_namespaces: bool) -> Vec<String> {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE".to_string());
    }
    headers.extend(
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
            .iter()
            .map(|h| h.to_string()),
    );
    headers
}

/// One Event as a row at `now`.
pub fn row(event: &Event, all_namespaces: bool, now: Timestamp) -> Vec<String> {
    let mut cells = Vec::new();
    if all_namespaces {
        cells.push(event.metadata.namespace.clone().unwrap_or_default());
    }
    let seen = last_seen(event)
        .map(|t| corral_apimachinery::duration::human_age(t, now))
        .unwrap_or_else(|| table::NONE.into());
    let involved = &event.involved_object;
    cells.push(seen);
    cells.push(event.type_.clone().unwrap_or_default());
    cells.push(event.reason.clone().unwrap_or_default());
    cells.push(format!(
        "{}/{}",
        involved.kind.as_deref().unwrap_or("").to_lowercase(),
        involved.name.as_deref().unwrap_or("")
    ));
    cells.push(event.message.clone().unwrap_or_default());
    cells
}

pub async fn events(
    ctx: &Context,
    options: &EventsOptions,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let mut params = ListParams::default();
    let mut namespace = (!options.all_namespaces).then(|| ctx.namespace.clone());
    if let Some(target) = &options.for_object {
        let pairs = match Targets::parse(std::slice::from_ref(target))? {
            Targets::Named(pairs) if pairs.len() == 1 => pairs,
            _ => {
                return Err(Error::Usage(format!(
                    "--for takes KIND/NAME, not {target:?}"
                )));
            }
        };
        let (kind, name) = &pairs[0];
        let resource = ctx.resolve(kind).await?;
        params = params.fields(&involved_selector(resource.kind(), name));
        if !resource.namespaced {
            namespace = Some("default".to_string());
        }
    }
    let api: Api<Event> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let list = api
        .list(&params)
        .await
        .map_err(Error::api("listing events"))?;
    let mut version = list.metadata.resource_version.clone().unwrap_or_default();
    let mut found = list.items;
    sort(&mut found);
    let now = corral_client::clock::now();
    let all = options.all_namespaces;
    let mut rows = vec![headers(all)];
    rows.extend(found.iter().map(|e| row(e, all, now)));
    let mut columns = Columns::fit(&rows);
    if found.is_empty() {
        if !options.watch {
            match &namespace {
                Some(ns) => writeln!(term.err, "No events found in {ns} namespace.")?,
                None => writeln!(term.err, "No events found.")?,
            }
            return Ok(Outcome::Succeeded);
        }
    } else {
        for r in &rows {
            writeln!(term.out, "{}", columns.line(r))?;
        }
    }
    term.out.flush()?;
    if !options.watch {
        return Ok(Outcome::Succeeded);
    }
    let mut header_printed = !found.is_empty();
    let mut watch = WatchParams::default().timeout(290);
    if let Some(fields) = &params.field_selector {
        watch = watch.fields(fields);
    }
    loop {
        let stream = api
            .watch(&watch, &version)
            .await
            .map_err(Error::api("watching events"))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream
            .try_next()
            .await
            .map_err(Error::api("watching events"))?
        {
            match event {
                WatchEvent::Added(e) | WatchEvent::Modified(e) => {
                    if let Some(rv) = &e.metadata.resource_version {
                        version = rv.clone();
                    }
                    let cells = row(&e, all, corral_client::clock::now());
                    if !header_printed {
                        columns = Columns::fit(&[headers(all), cells.clone()]);
                        writeln!(term.out, "{}", columns.line(&headers(all)))?;
                        header_printed = true;
                    }
                    writeln!(term.out, "{}", columns.line(&cells))?;
                    term.out.flush()?;
                }
                WatchEvent::Deleted(e) => {
                    if let Some(rv) = &e.metadata.resource_version {
                        version = rv.clone();
                    }
                }
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => {
                    let fresh = api
                        .list(&params)
                        .await
                        .map_err(Error::api("listing events"))?;
                    version = fresh.metadata.resource_version.unwrap_or_default();
                    break;
                }
                WatchEvent::Error(status) => {
                    return Err(Error::api("watching events")(kube::Error::Api(status)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(name: &str, last: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod"},
            "involvedObject": {"kind": "Instance", "name": "web-1"},
            "type": "Warning", "reason": "DivergenceDetected", "message": "VMM killed",
            "lastTimestamp": last,
        }))
        .unwrap()
    }

    #[test]
    fn events_sort_oldest_first_and_print_their_object_as_kind_slash_name() {
        let mut found = vec![
            event("b", "2026-01-01T00:05:00Z"),
            event("a", "2026-01-01T00:01:00Z"),
        ];
        sort(&mut found);
        assert_eq!(found[0].metadata.name.as_deref(), Some("a"));
        let now: Timestamp = "2026-01-01T00:06:00Z".parse().unwrap();
        assert_eq!(
            row(&found[0], true, now),
            [
                "prod",
                "5m",
                "Warning",
                "DivergenceDetected",
                "instance/web-1",
                "VMM killed"
            ]
        );
        assert_eq!(headers(false)[0], "LAST SEEN");
    }
}
