//! The reaper: deletes abandoned Vmms.
//!
//! A Vmm is *abandoned* if (and only if) its Instance does not exist, or neither the
//! Instance's `status.activeVmm` nor its `status.targetVmm` names it (docs/rack.md). Each
//! activation lists every Vmm and Instance and accepts no other input (omicron's background
//! task shape); the instance controller deletes the abandoned Vmms of the instances it
//! reconciles, and this task catches whatever that missed (a controller that stopped between
//! un-naming a Vmm and deleting it, a Vmm created by hand).
//!
//! # Invariants
//! - Never deletes a Vmm its Instance names: the Instance is read again from the API server
//!   (not from the list) right before the delete, and the delete is conditional on the Vmm's
//!   uid.
//! - Records a `Reaped` Event for every Vmm it deletes.

use std::collections::HashMap;
use std::time::Duration;

use corral_client::events::Recorder;
use corral_crds::{Instance, Reason, Vmm};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use tokio_util::sync::CancellationToken;

/// How often the reaper looks.
pub const PERIOD: Duration = Duration::from_secs(30);

/// What one activation did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub vmms: usize,
    pub abandoned: usize,
    pub reaped: usize,
    pub errors: usize,
}

/// Whether `vmm` is abandoned, given its instance (if it exists).
pub fn is_abandoned(vmm: &Vmm, instance: Option<&Instance>) -> bool {
    let Some(instance) = instance else {
        return true;
    };
    let name = vmm.name_any();
    let status = instance.status.as_ref();
    let named = |field: Option<&String>| field.is_some_and(|n| *n == name);
    !(named(status.and_then(|s| s.active_vmm.as_ref()))
        || named(status.and_then(|s| s.target_vmm.as_ref())))
}

/// Runs activations every [`PERIOD`] until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let recorder = Recorder::new(client.clone(), "reaper");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
        match activate(&client, &recorder).await {
            Ok(outcome) if outcome.reaped > 0 || outcome.errors > 0 => {
                tracing::info!(?outcome, "reaper")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "reaper: listing failed"),
        }
    }
}

/// One activation.
pub async fn activate(client: &kube::Client, recorder: &Recorder) -> Result<Outcome, kube::Error> {
    let vmms = Api::<Vmm>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let instances = Api::<Instance>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let by_name: HashMap<(String, String), &Instance> = instances
        .items
        .iter()
        .map(|i| ((i.namespace().unwrap_or_default(), i.name_any()), i))
        .collect();
    let mut outcome = Outcome {
        vmms: vmms.items.len(),
        ..Default::default()
    };
    for vmm in &vmms.items {
        if vmm.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let namespace = vmm.namespace().unwrap_or_default();
        let key = (namespace.clone(), vmm.spec.instance.clone());
        if !is_abandoned(vmm, by_name.get(&key).copied()) {
            continue;
        }
        outcome.abandoned += 1;
        // Read the Instance again: the list may predate the write that named this Vmm.
        let api: Api<Instance> = Api::namespaced(client.clone(), &namespace);
        let fresh = match api.get_opt(&vmm.spec.instance).await {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::warn!(%error, vmm = %vmm.name_any(), "reaper: reading its instance");
                outcome.errors += 1;
                continue;
            }
        };
        if !is_abandoned(vmm, fresh.as_ref()) {
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: vmm.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let vmms: Api<Vmm> = Api::namespaced(client.clone(), &namespace);
        match vmms.delete(&vmm.name_any(), &params).await {
            Ok(_) => {
                outcome.reaped += 1;
                let message = format!(
                    "deleted VMM {} on {}: instance {} does not name it",
                    vmm.name_any(),
                    vmm.spec.sled,
                    vmm.spec.instance
                );
                match &fresh {
                    Some(instance) => recorder.normal(instance, Reason::Reaped, message).await,
                    None => recorder.normal(vmm, Reason::Reaped, message).await,
                }
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(error) => {
                tracing::warn!(%error, vmm = %vmm.name_any(), "reaper: deleting");
                outcome.errors += 1;
            }
        }
    }
    Ok(outcome)
}
