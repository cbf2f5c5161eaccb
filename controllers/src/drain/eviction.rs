//! How a drain moves one instance: the Migration mode its `evictionStrategy` chooses, with the
//! pre-copy prediction deciding for `LiveMigrateIfPossible`. Pure, like the rest of the drain's
//! plan; decided again at each attempt, when the Migration is created, so the prediction uses
//! the dirty rate the source's agent reports then.
//!
//! - `LiveMigrate` (and `None`, which never moves): `Live`. A move the pre-copy model refuses
//!   fails, and the item with it: live or not at all.
//! - `Restart`: `Restart`.
//! - `LiveMigrateIfPossible`: `Live` unless the model predicts the transfer would not converge
//!   (`TransferProgress::prediction`, the migration controller's own rule), or the previous
//!   attempt was refused for it (`WillNotConverge`); then `Restart`.

use std::sync::Arc;

use corral_crds::{
    EvictionStrategy, Instance, Migration, MigrationMode, Reason, Sled, TransferProgress, Vmm,
};
use kube::ResourceExt;

/// The mode of `instance`'s next move, and why when it is not the strategy's plain choice.
/// `previous` is the Migration of the attempt before, if there was one.
pub(super) fn mode_for(
    instance: &Instance,
    vmms: &[Arc<Vmm>],
    sleds: &[Arc<Sled>],
    previous: Option<&Migration>,
) -> (MigrationMode, Option<String>) {
    match instance.spec.eviction_strategy {
        EvictionStrategy::LiveMigrate | EvictionStrategy::None => (MigrationMode::Live, None),
        EvictionStrategy::Restart => (MigrationMode::Restart, None),
        EvictionStrategy::LiveMigrateIfPossible => {
            match why_not_live(instance, vmms, sleds, previous) {
                Some(why) => (MigrationMode::Restart, Some(format!("restarted: {why}"))),
                None => (MigrationMode::Live, None),
            }
        }
    }
}

/// Why a live move of `instance` would not converge, if it would not.
fn why_not_live(
    instance: &Instance,
    vmms: &[Arc<Vmm>],
    sleds: &[Arc<Sled>],
    previous: Option<&Migration>,
) -> Option<String> {
    let refused = previous
        .and_then(|m| m.status.as_ref())
        .filter(|s| s.reason == Some(Reason::WillNotConverge));
    if let Some(refused) = refused {
        return Some(format!(
            "the last live attempt was refused: {}",
            refused.message
        ));
    }
    let status = instance.status.as_ref()?;
    let source = vmms
        .iter()
        .find(|v| Some(v.name_any()) == status.active_vmm)
        .map(|v| v.as_ref());
    let sled = sleds
        .iter()
        .find(|s| Some(s.name_any()) == status.sled)
        .map(|s| s.as_ref());
    TransferProgress::before(instance, source, sled)
        .prediction()
        .err()
        .map(|why| format!("a live move would not converge: {why}"))
}
