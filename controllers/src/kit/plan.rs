//! The shape of every controller's decision: a [`Plan`] of [`Step`]s, made by a pure `plan`
//! function and executed by [`super::execute`].
//!
//! A plan carries the status the object should have, the steps that make the world match it
//! (in order), and when to look again. The steps every controller shares are the kit's
//! ([`Step::AddFinalizer`], [`Step::WriteStatus`], [`Step::RemoveFinalizer`],
//! [`Step::Event`]); a controller's own work is [`Step::Act`] with its domain `Action` enum,
//! which holds nothing else.
//!
//! # Invariants
//! - No I/O here: plans are data, compared in table tests.
//! - The order of `steps` is the order of execution, with one exception the executor keeps:
//!   Events are recorded after every other step succeeded, so a record never delays (or
//!   outlives) the work it reports.

use std::time::Duration;

use corral_client::events::EventType;
use corral_crds::Reason;
use k8s_openapi::api::core::v1::ObjectReference;

/// An Event to record.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub type_: EventType,
    pub reason: Reason,
    pub message: String,
    /// The object the Event is about; `None` is the object being reconciled.
    pub regarding: Option<ObjectReference>,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Step<A> {
    /// Add the controller's finalizer to the object (conditional on its resourceVersion).
    AddFinalizer,
    /// Write the plan's status (conditional on the object's resourceVersion); the write is
    /// remembered, so the controller never plans from a cached copy older than it.
    WriteStatus,
    /// One of the controller's own actions.
    Act(A),
    /// Remove the controller's finalizer: the object may go.
    RemoveFinalizer,
    /// Record an Event (after every other step).
    Event(Event),
}

/// What to do, and the status that results.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan<S, A> {
    /// The status the object should have ([`Step::WriteStatus`] writes it).
    pub status: S,
    /// In order; execution stops at the first failure, and the next reconcile plans again.
    pub steps: Vec<Step<A>>,
    /// Look again after this long even if nothing changes; `None`: on the next change.
    pub requeue: Option<Duration>,
}

impl<S, A> Plan<S, A> {
    /// A plan that starts from `status` and does nothing yet.
    pub fn new(status: S) -> Plan<S, A> {
        Plan {
            status,
            steps: Vec::new(),
            requeue: None,
        }
    }

    /// Adds a domain action.
    pub fn act(&mut self, action: A) {
        self.steps.push(Step::Act(action));
    }

    /// Records an Event about the object being reconciled.
    pub fn event(&mut self, type_: EventType, reason: Reason, message: impl Into<String>) {
        self.steps.push(Step::Event(Event {
            type_,
            reason,
            message: message.into(),
            regarding: None,
        }));
    }

    /// Records an Event about another object.
    pub fn event_about(
        &mut self,
        regarding: ObjectReference,
        type_: EventType,
        reason: Reason,
        message: impl Into<String>,
    ) {
        self.steps.push(Step::Event(Event {
            type_,
            reason,
            message: message.into(),
            regarding: Some(regarding),
        }));
    }

    /// Looks again within `after` (the earliest of every such wish wins).
    pub fn requeue_within(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    /// The domain actions, in order.
    pub fn actions(&self) -> impl Iterator<Item = &A> {
        self.steps.iter().filter_map(|step| match step {
            Step::Act(action) => Some(action),
            _ => None,
        })
    }

    /// The Events, in order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.steps.iter().filter_map(|step| match step {
            Step::Event(event) => Some(event),
            _ => None,
        })
    }

    /// Whether the plan changes anything besides recording Events.
    pub fn changes_anything(&self) -> bool {
        self.steps
            .iter()
            .any(|step| !matches!(step, Step::Event(_)))
    }

    /// Inserts [`Step::WriteStatus`] at `at` if `previous` differs from the planned status.
    pub fn write_status_at_if_changed(&mut self, at: usize, previous: &S)
    where
        S: PartialEq,
    {
        if self.status != *previous {
            self.steps
                .insert(at.min(self.steps.len()), Step::WriteStatus);
        }
    }
}

/// What each kind of step a plan holds counts, for outcomes.
pub trait Kind {
    /// A short name of the action's kind (`CreateVmm`), for counts in outcomes.
    fn kind(&self) -> &'static str;
}

impl<A: Kind> Step<A> {
    /// The kind of the step (a domain action's own kind for [`Step::Act`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::AddFinalizer => "AddFinalizer",
            Step::WriteStatus => "WriteStatus",
            Step::Act(action) => action.kind(),
            Step::RemoveFinalizer => "RemoveFinalizer",
            Step::Event(_) => "Event",
        }
    }
}

/// A domain `Action` enum for controllers whose plans only write their status and Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoAction {}

impl Kind for NoAction {
    fn kind(&self) -> &'static str {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    enum Action {
        Poke,
    }

    #[test]
    fn the_status_is_written_only_when_it_changed_and_the_earliest_requeue_wins() {
        let mut plan: Plan<u32, Action> = Plan::new(1);
        plan.act(Action::Poke);
        plan.write_status_at_if_changed(0, &1);
        assert_eq!(plan.steps, vec![Step::Act(Action::Poke)]);
        plan.status = 2;
        plan.write_status_at_if_changed(0, &1);
        assert_eq!(plan.steps, vec![Step::WriteStatus, Step::Act(Action::Poke)]);
        plan.requeue_within(Duration::from_secs(5));
        plan.requeue_within(Duration::from_secs(1));
        plan.requeue_within(Duration::from_secs(3));
        assert_eq!(plan.requeue, Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_plan_of_events_alone_changes_nothing() {
        let mut plan: Plan<u32, Action> = Plan::new(1);
        plan.event(EventType::Normal, Reason::Placed, "placed");
        assert!(!plan.changes_anything());
        assert_eq!(plan.events().count(), 1);
        plan.act(Action::Poke);
        assert!(plan.changes_anything());
        assert_eq!(plan.actions().collect::<Vec<_>>(), vec![&Action::Poke]);
    }
}
