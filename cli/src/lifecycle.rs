//! Operator verbs that write one spec field: `start`, `stop` and `reboot` of Instances,
//! `cordon` and `uncordon` of Sleds. Each is a JSON merge patch of `spec` (users own `spec`;
//! docs/rack.md); the controllers and node-agents do the rest.
//!
//! - `stop` sets `spec.runStrategy: Halted` and keeps the strategy it replaces in the annotation
//!   [`RUN_STRATEGY_BEFORE_STOP`]; stopping a Halted instance changes nothing (so the
//!   remembered strategy is never overwritten with `Halted`).
//! - `start` restores the remembered strategy (or `Always`; never `Halted`), removes the
//!   annotation, and sets `spec.startRequest` to the current RFC 3339 time — which also starts
//!   a `Manual` instance, or a `RerunOnFailure` one after a clean shutdown, that is not halted.
//! - `reboot` sets `spec.rebootRequest` to the current time.
//! - `cordon`/`uncordon` set `spec.unschedulable`.
//!
//! Each change made is also recorded as an Event about the object that names who asked
//! (`StartRequested`, `StopRequested`, `RebootRequested`, `Cordoned`, `Uncordoned`: "cordoned by
//! alice"), the user as the API server knows it. The audit trail (`corralctl audit`) is the
//! authoritative record; the Event puts the answer where `describe` and `events` show it. A
//! failure to record it is a warning: the change itself was made.
//!
//! # Guarantees
//! - `start` and `stop` decide from the object they read and write with that read's
//!   `resourceVersion` in the patch, so a concurrent change makes the write fail (409) rather
//!   than be lost; they then read again and retry, a bounded number of times.

use jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use corral_client::events::{EventType, Recorder, reference};
use corral_crds::{Instance, Reason, RunStrategy, Sled};

use crate::command::{FIELD_MANAGER, Outcome, Terminal};
use crate::context::Context;
use crate::error::Error;

/// Where `stop` keeps the run strategy that `start` restores.
pub const RUN_STRATEGY_BEFORE_STOP: &str = "corral.dev/run-strategy-before-stop";

/// How many times a conditional write is retried after losing a race.
const CONFLICT_RETRIES: usize = 5;

/// The merge patch that stops `instance`, or `None` when it is already Halted.
pub fn stop_patch(instance: &Instance) -> Option<Value> {
    let current = instance.spec.run_strategy;
    if current == RunStrategy::Halted {
        return None;
    }
    Some(json!({
        "metadata": {
            "resourceVersion": instance.metadata.resource_version,
            "annotations": {RUN_STRATEGY_BEFORE_STOP: current.as_str()},
        },
        "spec": {"runStrategy": RunStrategy::Halted.as_str()},
    }))
}

/// The merge patch that starts `instance` at `now`.
pub fn start_patch(instance: &Instance, now: Timestamp) -> Value {
    let mut patch = json!({
        "metadata": {"resourceVersion": instance.metadata.resource_version},
        "spec": {"startRequest": now.to_string()},
    });
    if instance.spec.run_strategy == RunStrategy::Halted {
        let remembered = instance
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RUN_STRATEGY_BEFORE_STOP))
            .and_then(|s| s.parse::<RunStrategy>().ok())
            .filter(|s| *s != RunStrategy::Halted)
            .unwrap_or(RunStrategy::Always);
        patch["spec"]["runStrategy"] = json!(remembered.as_str());
    }
    let remembers = instance
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(RUN_STRATEGY_BEFORE_STOP));
    if remembers {
        patch["metadata"]["annotations"] = json!({RUN_STRATEGY_BEFORE_STOP: null});
    }
    patch
}

/// The merge patch that asks for one reboot at `now`.
pub fn reboot_patch(now: Timestamp) -> Value {
    json!({"spec": {"rebootRequest": now.to_string()}})
}

/// The merge patch that cordons (or uncordons) a sled.
pub fn cordon_patch(unschedulable: bool) -> Value {
    json!({"spec": {"unschedulable": unschedulable}})
}

/// An Instance verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceVerb {
    Start,
    Stop,
    Reboot,
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

/// Runs `verb` on each named Instance; a failure of one is reported and the others go on.
pub async fn instances(
    ctx: &Context,
    verb: InstanceVerb,
    names: &[String],
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let mut outcome = Outcome::Succeeded;
    for name in names {
        match instance(&api, verb, name).await {
            Ok((done, changed)) => {
                writeln!(term.out, "instance.{}/{name} {done}", corral_crds::GROUP)?;
                if let Some(changed) = changed {
                    let (reason, what) = match verb {
                        InstanceVerb::Start => (Reason::StartRequested, "start requested"),
                        InstanceVerb::Stop => (Reason::StopRequested, "stop requested"),
                        InstanceVerb::Reboot => (Reason::RebootRequested, "reboot requested"),
                    };
                    record(ctx, term, &changed, reason, what).await?;
                }
            }
            Err(error) => {
                outcome = Outcome::Failed;
                writeln!(term.err, "error: {}", render(&error))?;
            }
        }
    }
    Ok(outcome)
}

/// The error and its causes on one line.
fn render(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Records that `who` asked for `what` on `object`, as an Event naming the user.
async fn record<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    term: &mut Terminal<'_>,
    object: &K,
    reason: Reason,
    what: &str,
) -> Result<(), Error> {
    let user = match ctx.user().await {
        Ok(user) => user.to_string(),
        Err(error) => {
            writeln!(term.err, "warning: {}", render(&error))?;
            "a user the API server did not name".to_string()
        }
    };
    let recorded = Recorder::new(ctx.client.clone(), "corralctl")
        .try_publish(
            reference(object),
            EventType::Normal,
            reason,
            format!("{what} by {user}"),
        )
        .await;
    if let Err(error) = recorded {
        writeln!(
            term.err,
            "warning: the change was made, but recording its Event failed: {}",
            render(&Error::api("creating the Event")(error))
        )?;
    }
    Ok(())
}

/// Does `verb` to instance `name`: what to print, and the Instance as written (`None` when
/// nothing needed changing).
async fn instance(
    api: &Api<Instance>,
    verb: InstanceVerb,
    name: &str,
) -> Result<(&'static str, Option<Instance>), Error> {
    if verb == InstanceVerb::Reboot {
        let patch = reboot_patch(corral_client::clock::now());
        let written = api
            .patch(name, &params(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api(format!("asking instance {name} to reboot")))?;
        return Ok(("reboot requested", Some(written)));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = api
            .get(name)
            .await
            .map_err(Error::api(format!("reading instance {name}")))?;
        let patch = match verb {
            InstanceVerb::Stop => match stop_patch(&current) {
                Some(patch) => patch,
                None => return Ok(("already stopped (runStrategy Halted)", None)),
            },
            _ => start_patch(&current, corral_client::clock::now()),
        };
        match api.patch(name, &params(), &Patch::Merge(&patch)).await {
            Ok(written) => {
                let done = match verb {
                    InstanceVerb::Stop => "stopped (runStrategy Halted)",
                    _ => "start requested",
                };
                return Ok((done, Some(written)));
            }
            Err(kube::Error::Api(status)) if status.is_conflict() && attempt < CONFLICT_RETRIES => {
                continue;
            }
            Err(e) => return Err(Error::api(format!("updating instance {name}"))(e)),
        }
    }
}

/// A Sled verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SledVerb {
    /// `spec.unschedulable: true`.
    Cordon,
    /// `spec.unschedulable: false`.
    Uncordon,
}

/// Cordons or uncordons each named Sled.
pub async fn sleds(
    ctx: &Context,
    verb: SledVerb,
    names: &[String],
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let api: Api<Sled> = Api::all(ctx.client.clone());
    let unschedulable = verb == SledVerb::Cordon;
    let (verb, reason) = match verb {
        SledVerb::Cordon => ("cordoned", Reason::Cordoned),
        SledVerb::Uncordon => ("uncordoned", Reason::Uncordoned),
    };
    let mut outcome = Outcome::Succeeded;
    for name in names {
        let before = match api.get(name).await {
            Ok(sled) => sled.spec.unschedulable,
            Err(e) => {
                outcome = Outcome::Failed;
                writeln!(
                    term.err,
                    "error: {}",
                    render(&Error::api(format!("reading sled {name}"))(e))
                )?;
                continue;
            }
        };
        if before == unschedulable {
            writeln!(
                term.out,
                "sled.{}/{name} already {verb}",
                corral_crds::GROUP
            )?;
            continue;
        }
        match api
            .patch(name, &params(), &Patch::Merge(&cordon_patch(unschedulable)))
            .await
        {
            Ok(written) => {
                writeln!(term.out, "sled.{}/{name} {verb}", corral_crds::GROUP)?;
                record(ctx, term, &written, reason, verb).await?;
            }
            Err(e) => {
                outcome = Outcome::Failed;
                writeln!(
                    term.err,
                    "error: {}",
                    render(&Error::api(format!("updating sled {name}"))(e))
                )?;
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(strategy: &str, annotations: Value) -> Instance {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1",
            "kind": "Instance",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7",
                         "annotations": annotations},
            "spec": {"cpus": 1, "memoryMiB": 512, "image": "debian", "runStrategy": strategy},
        }))
        .unwrap()
    }

    #[test]
    fn stop_remembers_the_strategy_it_replaces() {
        assert_eq!(
            stop_patch(&instance("RerunOnFailure", json!({}))),
            Some(json!({
                "metadata": {"resourceVersion": "7",
                             "annotations": {RUN_STRATEGY_BEFORE_STOP: "RerunOnFailure"}},
                "spec": {"runStrategy": "Halted"},
            }))
        );
        assert_eq!(
            stop_patch(&instance(
                "Halted",
                json!({RUN_STRATEGY_BEFORE_STOP: "Manual"})
            )),
            None,
            "a second stop must not overwrite the remembered strategy"
        );
    }

    #[test]
    fn start_restores_the_remembered_strategy_or_always() {
        let now: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
        let cases = [
            (
                "Halted",
                json!({RUN_STRATEGY_BEFORE_STOP: "Manual"}),
                Some("Manual"),
                true,
            ),
            ("Halted", json!({}), Some("Always"), false),
            (
                "Halted",
                json!({RUN_STRATEGY_BEFORE_STOP: "Halted"}),
                Some("Always"),
                true,
            ),
            (
                "Halted",
                json!({RUN_STRATEGY_BEFORE_STOP: "nonsense"}),
                Some("Always"),
                true,
            ),
            ("Manual", json!({}), None, false),
        ];
        for (strategy, annotations, restored, clears) in cases {
            let patch = start_patch(&instance(strategy, annotations.clone()), now);
            assert_eq!(patch["spec"]["startRequest"], "2026-03-01T12:00:00Z");
            assert_eq!(
                patch["spec"].get("runStrategy").and_then(Value::as_str),
                restored,
                "{strategy} {annotations}"
            );
            assert_eq!(
                patch["metadata"].get("annotations").is_some(),
                clears,
                "{strategy} {annotations}"
            );
            assert_eq!(patch["metadata"]["resourceVersion"], "7");
        }
    }

    #[test]
    fn reboot_and_cordon_write_one_field() {
        let now: Timestamp = "2026-03-01T12:00:00.5Z".parse().unwrap();
        assert_eq!(
            reboot_patch(now),
            json!({"spec": {"rebootRequest": "2026-03-01T12:00:00.5Z"}})
        );
        assert_eq!(cordon_patch(true), json!({"spec": {"unschedulable": true}}));
    }
}
