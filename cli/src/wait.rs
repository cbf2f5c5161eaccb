//! `corralctl wait --for=condition=TYPE[=STATUS] | --for=delete KIND/NAME... --timeout D`:
//! returns when every named object meets the condition (or is gone), or fails after the
//! timeout saying what it last saw.
//!
//! # Guarantees
//! - Waits on a watch (kube-runtime's `watcher`, one per object, narrowed by
//!   `metadata.name`), never on polling sleeps; a dropped watch is resumed with backoff.
//! - The timeout bounds the whole command, not each object.
//! - A condition is met if (and only if), as `kubectl wait` has it: `status.conditions` holds
//!   an entry whose `type` equals TYPE and whose `status` equals STATUS (default `True`), both
//!   compared without regard to case, and neither `status.observedGeneration` nor the
//!   condition's own `observedGeneration` is below `metadata.generation` (a status computed
//!   from an older spec does not count).
//! - Waiting for a condition of an object that does not exist, or is deleted meanwhile, fails
//!   at once; waiting for the deletion of an object that does not exist succeeds at once.

use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::time::Instant;

use crate::command::{Outcome, Terminal};
use crate::context::Context;
use crate::discovery::ResourceType;
use crate::error::Error;
use crate::get;

/// What `--for` asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// `condition=TYPE[=STATUS]`.
    Condition { type_: String, status: String },
    /// `delete`.
    Delete,
}

impl FromStr for WaitFor {
    type Err = String;

    fn from_str(text: &str) -> Result<WaitFor, String> {
        if text.eq_ignore_ascii_case("delete") {
            return Ok(WaitFor::Delete);
        }
        let Some(rest) = text.strip_prefix("condition=") else {
            return Err(format!(
                "unrecognized condition {text:?}: use condition=TYPE[=STATUS] or delete"
            ));
        };
        let (type_, status) = match rest.split_once('=') {
            Some((type_, status)) => (type_, status),
            None => (rest, "True"),
        };
        if type_.is_empty() || status.is_empty() {
            return Err(format!(
                "{text:?}: the condition type and status may not be empty"
            ));
        }
        Ok(WaitFor::Condition {
            type_: type_.to_string(),
            status: status.to_string(),
        })
    }
}

impl std::fmt::Display for WaitFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitFor::Condition { type_, status } => write!(f, "condition {type_}={status}"),
            WaitFor::Delete => f.write_str("deletion"),
        }
    }
}

/// Whether `object` meets the condition, and if not, what was seen instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Met,
    NotMet(String),
}

/// Evaluates a condition as `kubectl wait --for=condition=...` does.
pub fn check_condition(object: &Value, type_: &str, status: &str) -> Check {
    let generation = object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let observed = object
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if let (Some(generation), Some(observed)) = (generation, observed)
        && observed < generation
    {
        return Check::NotMet(format!(
            "status.observedGeneration {observed} is behind generation {generation}"
        ));
    }
    let conditions = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text = |c: &Value, key: &str| c.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let Some(condition) = conditions
        .iter()
        .find(|c| text(c, "type").eq_ignore_ascii_case(type_))
    else {
        return Check::NotMet(format!("no {type_} condition"));
    };
    let current = text(condition, "status");
    let reason = text(condition, "reason");
    let message = text(condition, "message");
    if let (Some(generation), Some(observed)) = (
        generation,
        condition.get("observedGeneration").and_then(Value::as_i64),
    ) && observed < generation
    {
        return Check::NotMet(format!(
            "{type_} was observed at generation {observed}, behind generation {generation}"
        ));
    }
    if current.eq_ignore_ascii_case(status) {
        return Check::Met;
    }
    let mut seen = format!("{type_}={current}");
    if !reason.is_empty() {
        seen.push_str(&format!(", reason {reason}"));
    }
    if !message.is_empty() {
        seen.push_str(&format!(": {message}"));
    }
    Check::NotMet(seen)
}

pub async fn wait(
    ctx: &Context,
    targets: &[String],
    for_: &WaitFor,
    timeout: Duration,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let deadline = Instant::now() + timeout;
    let selections = get::select(ctx, targets).await?;
    for selection in &selections {
        let Some(names) = &selection.names else {
            return Err(Error::Usage(format!(
                "name the {} to wait for (KIND NAME or KIND/NAME)",
                selection.resource.plural_and_group()
            )));
        };
        for name in names {
            let namespace = ctx.namespace.clone();
            wait_one(
                ctx,
                &selection.resource,
                Some(&namespace),
                name,
                for_,
                deadline,
                timeout,
            )
            .await?;
            let done = match for_ {
                WaitFor::Condition { .. } => "condition met",
                WaitFor::Delete => "deleted",
            };
            writeln!(term.out, "{} {done}", selection.resource.object_name(name))?;
        }
    }
    Ok(Outcome::Succeeded)
}

/// Waits until one object meets `for_`, or `deadline` (reported as `timeout`) passes.
pub async fn wait_one(
    ctx: &Context,
    resource: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    for_: &WaitFor,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), Error> {
    let object_name = resource.object_name(name);
    let api = ctx.api(resource, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut last_seen: Option<String> = None;
    let mut present = false;
    let waiting = async {
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => present = false,
                Ok(Event::InitApply(object)) | Ok(Event::Apply(object)) => {
                    present = true;
                    match for_ {
                        WaitFor::Condition { type_, status } => {
                            let value = serde_json::to_value(&object).map_err(Error::Encode)?;
                            match check_condition(&value, type_, status) {
                                Check::Met => return Ok(()),
                                Check::NotMet(seen) => last_seen = Some(seen),
                            }
                        }
                        WaitFor::Delete => {
                            last_seen = Some(match object.metadata.deletion_timestamp {
                                Some(_) => format!(
                                    "being deleted, finalizers: {}",
                                    object.metadata.finalizers.unwrap_or_default().join(", ")
                                ),
                                None => "it still exists".to_string(),
                            });
                        }
                    }
                }
                Ok(Event::InitDone) if !present => {
                    return match for_ {
                        WaitFor::Delete => Ok(()),
                        WaitFor::Condition { .. } => Err(Error::Gone(format!(
                            "{object_name} not found{}",
                            in_namespace(resource, namespace)
                        ))),
                    };
                }
                Ok(Event::InitDone) => {}
                Ok(Event::Delete(_)) => {
                    return match for_ {
                        WaitFor::Delete => Ok(()),
                        WaitFor::Condition { .. } => Err(Error::Gone(format!(
                            "{object_name} was deleted while waiting for {for_}"
                        ))),
                    };
                }
                Err(error) => last_seen = Some(format!("watch failed: {error}")),
            }
        }
        Err(Error::Gone(format!("the watch of {object_name} ended")))
    };
    match tokio::time::timeout_at(deadline, waiting).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            what: format!("{for_} on {object_name}"),
            after: timeout,
            last_seen,
        }),
    }
}

fn in_namespace(resource: &ResourceType, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if resource.namespaced => format!(" in namespace {ns}"),
        _ => String::new(),
    }
}

/// Parses `--timeout`: Go-style durations (`60s`, `5m`, `1m30s`, `500ms`) or plain seconds.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("invalid duration {text:?} (try 60s, 5m or 1m30s): {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("the timeout {text:?} may not be negative"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn for_parses_conditions_and_delete() {
        let condition = |t: &str, s: &str| {
            Ok(WaitFor::Condition {
                type_: t.into(),
                status: s.into(),
            })
        };
        assert_eq!("condition=Running".parse(), condition("Running", "True"));
        assert_eq!("condition=Ready=False".parse(), condition("Ready", "False"));
        assert_eq!("delete".parse(), Ok(WaitFor::Delete));
        assert!("condition=".parse::<WaitFor>().is_err());
        assert!("jsonpath={.x}".parse::<WaitFor>().is_err());
    }

    #[test]
    fn conditions_are_checked_like_kubectl_does() {
        let object = |generation: i64, observed: i64, status: &str| {
            json!({
                "metadata": {"generation": generation},
                "status": {"observedGeneration": observed, "conditions": [
                    {"type": "Running", "status": status, "reason": "Booting", "message": "booting"}
                ]}
            })
        };
        assert_eq!(
            check_condition(&object(1, 1, "True"), "running", "true"),
            Check::Met
        );
        assert_eq!(
            check_condition(&object(1, 1, "False"), "Running", "True"),
            Check::NotMet("Running=False, reason Booting: booting".into())
        );
        assert!(matches!(
            check_condition(&object(2, 1, "True"), "Running", "True"),
            Check::NotMet(seen) if seen.contains("behind generation 2")
        ));
        assert_eq!(
            check_condition(&object(1, 1, "False"), "Running", "False"),
            Check::Met
        );
        assert_eq!(
            check_condition(&json!({"status": {}}), "Ready", "True"),
            Check::NotMet("no Ready condition".into())
        );
        let stale_condition = json!({"metadata": {"generation": 3}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "observedGeneration": 2}
        ]}});
        assert!(matches!(
            check_condition(&stale_condition, "Ready", "True"),
            Check::NotMet(_)
        ));
    }

    #[test]
    fn timeouts_parse_go_style_and_plain_seconds() {
        assert_eq!(parse_timeout("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("-5s").is_err());
    }
}
