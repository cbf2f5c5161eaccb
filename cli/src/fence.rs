//! `corralctl fence SLED --confirm`: an operator's confirmation that a sled's current life is
//! over — it is powered off, or cut off for good, by means the control plane cannot see (its
//! power controller does not answer). The sled-health controller then fences it (raises its
//! epoch, releases its Vmms) and its instances restart elsewhere (docs/rack.md, "When a sled
//! fails").
//!
//! # Guarantees
//! - The confirmation names the sled's current epoch (`spec.fenceConfirmedEpoch`) and is
//!   written conditional on the resourceVersion it was decided from: it can never fence a
//!   later life of the sled (one that booted meanwhile).
//! - Only an `Unreachable` sled is fenced by hand: a sled whose agent renews its Lease answers,
//!   and is drained instead; nothing is written without `--confirm`.

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use corral_crds::{HealthVerdict, Sled};

use crate::command::{FIELD_MANAGER, Outcome, Terminal};
use crate::context::Context;
use crate::error::Error;

/// The merge patch that confirms `sled`'s current epoch is over, or why not.
pub fn fence_patch(sled: &Sled) -> Result<Value, String> {
    let name = sled.metadata.name.as_deref().unwrap_or_default();
    let epoch = sled.epoch();
    if epoch == 0 {
        return Err(format!(
            "sled {name} never booted: there is nothing to fence"
        ));
    }
    let health = sled
        .status
        .as_ref()
        .and_then(|status| status.health.as_ref());
    match sled.health() {
        HealthVerdict::Unreachable => {}
        HealthVerdict::Fenced => {
            return Err(format!("sled {name} is already fenced (epoch {epoch})"));
        }
        verdict => {
            let why = health.map_or(String::new(), |h| format!(" ({}: {})", h.reason, h.message));
            return Err(format!(
                "sled {name} is {verdict}{why}: only an Unreachable sled is fenced by hand; a \
                 sled that answers is drained (`corralctl drain {name}`)"
            ));
        }
    }
    Ok(json!({
        "metadata": {"resourceVersion": sled.metadata.resource_version},
        "spec": {"fenceConfirmedEpoch": epoch},
    }))
}

/// Confirms the current life of sled `name` is over (see the module docs).
pub async fn fence(
    ctx: &Context,
    name: &str,
    confirm: bool,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    if !confirm {
        return Err(Error::Usage(format!(
            "fencing tells the control plane that sled {name} runs nothing any more: its \
             instances then restart elsewhere, and if its VMMs were in fact still running they \
             would run twice. Make sure it is powered off or cut off for good, then run \
             `corralctl fence {name} --confirm`"
        )));
    }
    let api: Api<Sled> = Api::all(ctx.client.clone());
    let sled = api
        .get(name)
        .await
        .map_err(Error::api(format!("reading sled {name}")))?;
    let patch = fence_patch(&sled).map_err(Error::Usage)?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::api(format!("confirming the fence of sled {name}")))?;
    writeln!(
        term.out,
        "sled.{}/{name}: epoch {} confirmed over; the sled-health controller fences it and its \
         instances restart elsewhere (`corralctl describe sled {name}`)",
        corral_crds::GROUP,
        sled.epoch()
    )?;
    Ok(Outcome::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sled(epoch: u64, verdict: Option<&str>) -> Sled {
        let health = verdict.map(|verdict| {
            json!({"verdict": verdict, "reason": "PowerControllerUnreachable",
                   "message": "no answer", "since": "2026-01-01T00:00:00Z"})
        });
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Sled",
            "metadata": {"name": "s1", "resourceVersion": "42"},
            "spec": {},
            "status": {"epoch": epoch, "health": health},
        }))
        .unwrap()
    }

    #[test]
    fn only_an_unreachable_sled_is_fenced_by_hand_and_the_confirmation_names_its_epoch() {
        let patch = fence_patch(&sled(7, Some("Unreachable"))).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "42"}, "spec": {"fenceConfirmedEpoch": 7}})
        );
        for (sled, says) in [
            (sled(7, Some("Healthy")), "only an Unreachable sled"),
            (sled(7, Some("Suspect")), "only an Unreachable sled"),
            (sled(7, None), "is Healthy"),
            (sled(7, Some("Fenced")), "already fenced"),
            (sled(0, Some("Unreachable")), "never booted"),
        ] {
            let error = fence_patch(&sled).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }
}
