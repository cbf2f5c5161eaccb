//! [`execute`]: the one executor of plans, and [`Apply`], what it needs of a controller.
//!
//! # Guarantees
//! - Steps run in the plan's order and execution stops at the first failure; nothing is
//!   retried here (the error policy requeues, and the next reconcile plans again from what was
//!   written, so a partly executed plan is simply re-planned).
//! - Every write of the reconciled object is made to the newest version this execution knows
//!   (each write returns the object as stored), so writes within one plan never conflict with
//!   each other.
//! - Events are recorded only once every other step succeeded, after them.

use std::fmt::Debug;
use std::future::Future;

use super::effects::{Effects, Object};
use super::error::Error;
use super::faults;
use super::plan::{Kind, Plan, Step};

/// How a controller's status is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// A PUT of the whole object to `/status`.
    Replace,
    /// A merge patch carrying the status alone (objects with a large spec).
    MergePatch,
}

/// What [`execute`] needs of a controller: its object, status and domain actions, and how to
/// carry out one of its actions.
pub trait Apply: Send + Sync + 'static {
    /// The kind the controller reconciles.
    type Object: Object;
    /// That kind's status.
    type Status: Clone + PartialEq + Debug + serde::Serialize + Send + Sync + 'static;
    /// The controller's own actions (nothing the kit already has a step for).
    type Action: Clone + Debug + Kind + Send + Sync + 'static;

    /// The controller's name (`instance`, `migration`, ...): logs, outcomes, crash points.
    const NAME: &'static str;
    /// The finalizer [`Step::AddFinalizer`] and [`Step::RemoveFinalizer`] manage, if any.
    const FINALIZER: Option<&'static str> = None;
    /// How [`Step::WriteStatus`] writes.
    const STATUS_WRITE: StatusWrite = StatusWrite::Replace;

    /// The API as this controller changes it.
    fn effects(&self) -> &Effects;

    /// `object` with `status` as its status.
    fn with_status(object: &Self::Object, status: &Self::Status) -> Self::Object;

    /// The phase a status is in, if the kind has phases (for outcomes and crash points).
    fn phase(_status: &Self::Status) -> Option<String> {
        None
    }

    /// The status of `object`, as stored.
    fn status_of(object: &Self::Object) -> Option<&Self::Status>;

    /// Carries out one domain action, given the newest known version of the reconciled
    /// object; returns that object again if the action wrote it.
    fn apply(
        &self,
        action: &Self::Action,
        object: &Self::Object,
    ) -> impl Future<Output = Result<Option<Self::Object>, Error>> + Send;
}

/// Executes `plan` against `object` (see the module docs); returns the object as last written.
pub async fn execute<C: Apply>(
    controller: &C,
    object: &C::Object,
    plan: &Plan<C::Status, C::Action>,
) -> Result<C::Object, Error> {
    let effects = controller.effects();
    let mut current = object.clone();
    for step in &plan.steps {
        match step {
            Step::AddFinalizer | Step::RemoveFinalizer => {
                let finalizer = C::FINALIZER.expect("a plan names finalizers only if it has one");
                let present = matches!(step, Step::AddFinalizer);
                if let Some(written) = effects.set_finalizer(&current, finalizer, present).await? {
                    current = written;
                }
            }
            Step::WriteStatus => {
                let written = match C::STATUS_WRITE {
                    StatusWrite::Replace => {
                        effects
                            .write_status(&C::with_status(&current, &plan.status))
                            .await?
                    }
                    StatusWrite::MergePatch => effects.patch_status(&current, &plan.status).await?,
                };
                faults::after_status_write(C::NAME, C::status_of(&current), &plan.status, C::phase);
                current = written;
            }
            Step::Act(action) => {
                if let Some(written) = controller.apply(action, &current).await? {
                    current = written;
                }
            }
            Step::Event(_) => {}
        }
    }
    for event in plan.events() {
        effects.record(&current, event).await;
    }
    Ok(current)
}
