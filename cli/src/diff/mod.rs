//! `corralctl diff`: where the rack currently differs from what was asked of it, computed from
//! the lists of Instances, Vmms and Sleds (every namespace). It is a report: it exits 0 with or
//! without differences, unless `--exit-code` asks for 1 when there are some.
//!
//! [`differences`] is a pure function of those lists and the time; each [`Problem`] is defined
//! here:
//!
//! - **NotRunning**: an Instance should run and its `status.state` is not `Running`. Whether it
//!   should run is the instance controller's own rule, `Instance::should_run` in `corral_crds`:
//!   it is not being deleted and its `runStrategy` is `Always`; or `RerunOnFailure`, unless its
//!   last VMM ended in a clean guest shutdown; or `Manual`, unless its last VMM ended on its own
//!   — in both cases an unhandled `spec.startRequest` makes it want to run again.
//! - **RunningWhileHalted**: a `Halted` Instance is still `Running` or `Starting`.
//! - **InstanceDiverged**: an Instance has `Diverged=True` (its reason and message are shown).
//! - **ActiveVmmMissing**: an Instance names an active Vmm that does not exist.
//! - **ActiveVmmFailed**: an Instance's active Vmm is `Failed`.
//! - **SledMismatch**: an Instance's `status.sled` is not its active Vmm's `spec.sled`.
//! - **Abandoned**: a Vmm that neither `activeVmm` nor `targetVmm` of its Instance names, or
//!   whose Instance does not exist (`Vmm::is_abandoned`; docs/rack.md; the reaper deletes such
//!   Vmms).
//! - **StaleEpoch**: a Vmm not yet ended (`Vmm::has_ended`: not `Stopped`, `Failed` or
//!   `Destroyed`) whose sled's `status.epoch` moved past its `spec.sledEpoch` (the sled
//!   rebooted or was fenced since it was placed).
//! - **UnknownSled**: a Vmm placed on a Sled that does not exist.
//! - **VmmDiverged**: a Vmm has `Diverged=True`.
//! - **TerminatingTooLong**: a Vmm has been being deleted for longer than
//!   [`TERMINATING_TOO_LONG`] (its node-agent has not torn it down).
//! - **SledNotReady**: a Sled whose `Ready` condition is not `True` (or is missing;
//!   `Sled::is_ready`).
//! - **SledDiverged**: a Sled has `Diverged=True`.
//! - **Undecodable**: an object that does not decode as its kind (shown rather than hidden).
//!
//! Transitional states count: an Instance that is `Starting` is not yet `Running`, and the
//! report says so. It shows the moment; it does not judge whether a controller is late
//! (except for [`TERMINATING_TOO_LONG`]).
//!
//! The rules live in `rules.rs` ([`differences`], one function per kind of difference);
//! `problem.rs` holds the report's types. A rule that a controller applies too is the one on
//! the `corral_crds` type, so the report and the controllers never disagree on it.

mod problem;
mod rules;

pub use problem::{Difference, ObjectKind, ObjectRef, Problem};
pub use rules::{TERMINATING_TOO_LONG, differences};

use std::collections::BTreeSet;

use kube::Api;
use kube::api::{DynamicObject, ListParams};
use kube::discovery::ApiResource;
use serde::de::DeserializeOwned;

use corral_crds::{Instance, Sled, Vmm};

use crate::command::{Outcome, Terminal};
use crate::context::Context;
use crate::error::Error;
use crate::table;
/// The report's lines.
pub fn render(found: &[Difference]) -> String {
    if found.is_empty() {
        return "no differences\n".to_string();
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|d| {
            vec![
                d.object.kind.as_str().to_string(),
                d.object.namespace.clone().unwrap_or_default(),
                d.object.name.clone(),
                d.problem.name().to_string(),
                d.problem.to_string(),
            ]
        })
        .collect();
    let mut text = table::render(&["KIND", "NAMESPACE", "NAME", "PROBLEM", "DETAIL"], &rows);
    let objects: BTreeSet<&ObjectRef> = found.iter().map(|d| &d.object).collect();
    text.push_str(&format!(
        "{} difference{} on {} object{}\n",
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        objects.len(),
        if objects.len() == 1 { "" } else { "s" },
    ));
    text
}

/// Lists every object of `K` across namespaces; those that do not decode are reported as
/// differences of their own instead of failing the whole report.
async fn list_all<K>(
    ctx: &Context,
    kind: ObjectKind,
    undecodable: &mut Vec<Difference>,
) -> Result<Vec<K>, Error>
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &resource);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(Error::api(format!("listing {}", resource.plural)))?;
    let mut out = Vec::new();
    for object in list.items {
        let object_ref = ObjectRef {
            kind,
            namespace: object.metadata.namespace.clone(),
            name: object.metadata.name.clone().unwrap_or_default(),
        };
        let decoded = serde_json::to_value(&object).and_then(serde_json::from_value::<K>);
        match decoded {
            Ok(k) => out.push(k),
            Err(e) => undecodable.push(Difference {
                object: object_ref,
                problem: Problem::Undecodable {
                    error: e.to_string(),
                },
            }),
        }
    }
    Ok(out)
}

pub async fn diff(
    ctx: &Context,
    exit_code: bool,
    term: &mut Terminal<'_>,
) -> Result<Outcome, Error> {
    let mut undecodable = Vec::new();
    let instances: Vec<Instance> = list_all(ctx, ObjectKind::Instance, &mut undecodable).await?;
    let vmms: Vec<Vmm> = list_all(ctx, ObjectKind::Vmm, &mut undecodable).await?;
    let sleds: Vec<Sled> = list_all(ctx, ObjectKind::Sled, &mut undecodable).await?;
    let mut found = differences(&instances, &vmms, &sleds, corral_client::clock::now());
    found.extend(undecodable);
    found.sort();
    write!(term.out, "{}", render(&found))?;
    Ok(if exit_code && !found.is_empty() {
        Outcome::Failed
    } else {
        Outcome::Succeeded
    })
}

#[cfg(test)]
mod tests {
    use corral_crds::{InstanceState, RunStrategy};

    use super::*;

    #[test]
    fn the_report_lists_each_difference_with_its_detail() {
        assert_eq!(render(&[]), "no differences\n");
        let found = [Difference {
            object: ObjectRef {
                kind: ObjectKind::Instance,
                namespace: Some("default".into()),
                name: "web".into(),
            },
            problem: Problem::NotRunning {
                run_strategy: RunStrategy::Always,
                state: Some(InstanceState::Starting),
            },
        }];
        assert_eq!(
            render(&found),
            "KIND       NAMESPACE   NAME   PROBLEM      DETAIL\n\
             Instance   default     web    NotRunning   runStrategy Always wants it running; state is Starting\n\
             1 difference on 1 object\n"
        );
    }
}
