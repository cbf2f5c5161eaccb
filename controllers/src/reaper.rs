//! The reaper: deletes abandoned Vmms.
//!
//! A Vmm is *abandoned* if (and only if) its Instance does not exist, or neither the
//! Instance's `status.activeVmm` nor its `status.targetVmm` names it (`Vmm::is_abandoned`,
//! docs/rack.md). Each
//! activation lists every Vmm and Instance and accepts no other input (omicron's background
//! task shape); the instance controller deletes the abandoned Vmms of the instances it
//! reconciles, and this task catches whatever that missed (a controller that stopped between
//! un-naming a Vmm and deleting it, a Vmm created by hand). Each activation's outcome goes on
//! the board; the deletes go through the kit (`crate::kit`).
//!
//! # Invariants
//! - Never deletes a Vmm its Instance names: the Instance is read again from the API server
//!   (not from the list) right before the delete, and the delete is conditional on the Vmm's
//!   uid.
//! - Records a `Reaped` Event for every Vmm it deletes (and none for one that was already
//!   gone).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corral_client::events::EventType;
use corral_crds::{Instance, Reason, Vmm};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use crate::kit::{Apply, Board, Effects, Error, Kind, Outcome, Plan, execute};

/// How often the reaper looks.
pub const PERIOD: Duration = Duration::from_secs(30);

/// What one activation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub vmms: usize,
    pub abandoned: usize,
    pub reaped: usize,
    pub errors: usize,
}

impl Counts {
    fn did(&self) -> BTreeMap<&'static str, u64> {
        [
            ("Vmms", self.vmms as u64),
            ("Abandoned", self.abandoned as u64),
            ("Reaped", self.reaped as u64),
            ("Errors", self.errors as u64),
        ]
        .into_iter()
        .collect()
    }
}

/// The reaper's one action.
#[derive(Clone, Debug)]
pub enum Action {
    /// Delete exactly this Vmm (its uid), and record `Reaped` about `instance` (or the Vmm
    /// when its Instance is gone) if it was deleted now.
    Reap { instance: Option<Instance> },
}

impl Kind for Action {
    fn kind(&self) -> &'static str {
        "Reap"
    }
}

/// The reaper, between activations.
pub struct Reaper {
    effects: Effects,
    board: Board,
    /// Vmms deleted (not found gone) by [`Action::Reap`], ever.
    reaped: AtomicUsize,
}

impl Reaper {
    pub fn new(client: kube::Client, board: Board) -> Reaper {
        Reaper {
            effects: Effects::new(client, "reaper"),
            board,
            reaped: AtomicUsize::new(0),
        }
    }
}

/// Runs activations every [`PERIOD`] until `stop`.
pub async fn run(client: kube::Client, board: Board, stop: CancellationToken) {
    let reaper = Reaper::new(client, board);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
        let started = tokio::time::Instant::now();
        let outcome = match activate(&reaper).await {
            Ok(counts) => {
                if counts.reaped > 0 || counts.errors > 0 {
                    tracing::info!(?counts, "reaper");
                }
                Outcome::applied(counts.did(), None, Some(PERIOD))
            }
            Err(error) => {
                tracing::warn!(%error, "reaper: listing failed");
                Outcome::failed(&error)
            }
        };
        reaper
            .board
            .activated(Reaper::NAME, "all".into(), outcome, started.elapsed());
    }
}

/// One activation.
pub async fn activate(reaper: &Reaper) -> Result<Counts, Error> {
    let vmms = reaper.effects.list::<Vmm>().await?;
    let instances = reaper.effects.list::<Instance>().await?;
    let by_name: HashMap<(String, String), &Instance> = instances
        .iter()
        .map(|i| ((i.namespace().unwrap_or_default(), i.name_any()), i))
        .collect();
    let mut counts = Counts {
        vmms: vmms.len(),
        ..Default::default()
    };
    for vmm in &vmms {
        if vmm.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let namespace = vmm.namespace().unwrap_or_default();
        let key = (namespace.clone(), vmm.spec.instance.clone());
        if !vmm.is_abandoned(by_name.get(&key).copied()) {
            continue;
        }
        counts.abandoned += 1;
        let before = reaper.reaped.load(Ordering::Relaxed);
        match reap(reaper, vmm, &namespace).await {
            Ok(()) => counts.reaped += reaper.reaped.load(Ordering::Relaxed) - before,
            Err(error) => {
                tracing::warn!(%error, vmm = %vmm.name_any(), "reaper");
                counts.errors += 1;
            }
        }
    }
    Ok(counts)
}

/// Reads the Instance again (the list may predate the write that named this Vmm) and reaps
/// the Vmm if it is still abandoned.
async fn reap(reaper: &Reaper, vmm: &Vmm, namespace: &str) -> Result<(), Error> {
    let fresh = reaper
        .effects
        .read::<Instance>(Some(namespace), &vmm.spec.instance)
        .await?;
    if !vmm.is_abandoned(fresh.as_ref()) {
        return Ok(());
    }
    let mut plan = Plan::new(());
    plan.act(Action::Reap { instance: fresh });
    execute(reaper, vmm, &plan).await?;
    Ok(())
}

impl Apply for Reaper {
    type Object = Vmm;
    type Status = ();
    type Action = Action;

    const NAME: &'static str = "reaper";

    fn effects(&self) -> &Effects {
        &self.effects
    }

    fn with_status(object: &Vmm, _: &()) -> Vmm {
        object.clone()
    }

    fn status_of(_: &Vmm) -> Option<&()> {
        None
    }

    async fn apply(&self, action: &Action, vmm: &Vmm) -> Result<Option<Vmm>, Error> {
        let Action::Reap { instance } = action;
        if !self.effects.delete_exactly(vmm).await? {
            return Ok(None);
        }
        self.reaped.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "deleted VMM {} on {}: instance {} does not name it",
            vmm.name_any(),
            vmm.spec.sled,
            vmm.spec.instance
        );
        let regarding = match instance {
            Some(instance) => corral_client::events::reference(instance),
            None => corral_client::events::reference(vmm),
        };
        self.effects
            .record_about(regarding, EventType::Normal, Reason::Reaped, message)
            .await;
        Ok(None)
    }
}
