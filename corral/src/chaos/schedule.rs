//! Fault schedules: what `corral chaos` does to a rack, drawn from a seed.
//!
//! A [`Schedule`] is a few [`Fault`]s, each injected at an offset from the schedule's start and
//! repaired after a while (a killed process restarts, a partition heals, a sled powered off is
//! powered on again...). Some repairs come before the sled-health grace (nothing must be fenced),
//! some long after (the sled must be fenced and its instances restarted elsewhere).
//!
//! # Guarantees
//! - [`Schedule::draw`] is a pure function of `(seed, index)`: a printed schedule replays
//!   exactly with `corral chaos --seed S --only INDEX`.
//! - Every fault has its repair, later than the fault; steps are in time order.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One fault, on a sled (by index, 0-based) or on a process of the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the sled's node-agent; its guests run on.
    AgentKill(usize),
    /// The sled loses power behind the control plane's back.
    PowerOff(usize),
    /// The sled's agent is cut off from the API server; its guests run on.
    Partition(usize),
    /// The whole sled hangs with power on.
    Hang(usize),
    /// The sled's power controller stops answering.
    PowerControllerSilent(usize),
    /// `kill -9` of the leading controllers process.
    LeaderKill,
    /// `kill -9` of the API server.
    ApiserverKill,
}

/// What one step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Inject(Fault),
    Repair(Fault),
}

/// One step of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// From the start of the schedule.
    pub at: Duration,
    pub action: Action,
}

/// A schedule of faults and their repairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub index: u64,
    pub steps: Vec<Step>,
}

/// What a schedule may draw from.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub sleds: usize,
    /// The most faults in one schedule (at least one, at most `sleds + 2`).
    pub faults: usize,
    /// The sled-health grace: repairs fall before it or well after it.
    pub grace: Duration,
}

impl Schedule {
    /// The `index`th schedule of `seed` (see the module docs).
    pub fn draw(seed: u64, index: u64, limits: Limits) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let count = rng.random_range(1..=limits.faults.max(1));
        let mut steps = Vec::new();
        let mut used = Vec::new();
        for _ in 0..count {
            let fault = draw_fault(&mut rng, limits.sleds, &used);
            used.push(fault);
            let at = Duration::from_millis(rng.random_range(0..2_000));
            // Half the repairs come before the grace, half well after it.
            let lasts = if rng.random_bool(0.5) {
                limits.grace.mul_f64(rng.random_range(0.1..0.6))
            } else {
                limits.grace.mul_f64(rng.random_range(1.5..3.0))
            };
            steps.push(Step {
                at,
                action: Action::Inject(fault),
            });
            steps.push(Step {
                at: at + lasts,
                action: Action::Repair(fault),
            });
        }
        steps.sort_by_key(|step| step.at);
        Schedule { seed, index, steps }
    }
}

/// A fault on a sled not used yet in this schedule, or on a process of the control plane not
/// used yet (one fault per target keeps each repair meaningful).
fn draw_fault(rng: &mut StdRng, sleds: usize, used: &[Fault]) -> Fault {
    let free: Vec<usize> = (0..sleds)
        .filter(|sled| !used.iter().any(|fault| fault.sled() == Some(*sled)))
        .collect();
    let mut kinds: Vec<u8> = Vec::new();
    if !used.contains(&Fault::LeaderKill) {
        kinds.push(0);
    }
    if !used.contains(&Fault::ApiserverKill) {
        kinds.push(1);
    }
    if !free.is_empty() {
        // Power loss twice as likely as each other fault: it is what a rack fears most.
        kinds.extend([2, 2, 3, 4, 5, 6]);
    }
    let sled = if free.is_empty() {
        0
    } else {
        free[rng.random_range(0..free.len())]
    };
    match kinds[rng.random_range(0..kinds.len())] {
        0 => Fault::LeaderKill,
        1 => Fault::ApiserverKill,
        2 => Fault::PowerOff(sled),
        3 => Fault::AgentKill(sled),
        4 => Fault::Partition(sled),
        5 => Fault::Hang(sled),
        _ => Fault::PowerControllerSilent(sled),
    }
}

impl Fault {
    /// The sled it is about, if any.
    pub fn sled(self) -> Option<usize> {
        match self {
            Fault::AgentKill(sled)
            | Fault::PowerOff(sled)
            | Fault::Partition(sled)
            | Fault::Hang(sled)
            | Fault::PowerControllerSilent(sled) => Some(sled),
            Fault::LeaderKill | Fault::ApiserverKill => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sled = |index: &usize| corral_harness::rack::sled_name(index + 1);
        match self {
            Fault::AgentKill(i) => write!(f, "kill the agent of {}", sled(i)),
            Fault::PowerOff(i) => write!(f, "power off {}", sled(i)),
            Fault::Partition(i) => write!(f, "partition {}", sled(i)),
            Fault::Hang(i) => write!(f, "hang {}", sled(i)),
            Fault::PowerControllerSilent(i) => {
                write!(f, "silence the power controller of {}", sled(i))
            }
            Fault::LeaderKill => write!(f, "kill the leading controllers"),
            Fault::ApiserverKill => write!(f, "kill the API server"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at.as_secs_f64();
        match self.action {
            Action::Inject(fault) => write!(f, "{at:>5.1}s {fault}"),
            Action::Repair(fault) => write!(f, "{at:>5.1}s repair: {fault}"),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "schedule {} (replay: corral chaos --seed {} --only {}):",
            self.index, self.seed, self.index
        )?;
        for step in &self.steps {
            write!(f, "\n  {step}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            sleds: 6,
            faults: 3,
            grace: Duration::from_secs(3),
        }
    }

    #[test]
    fn a_schedule_is_a_function_of_its_seed_and_index() {
        assert_eq!(
            Schedule::draw(7, 3, limits()),
            Schedule::draw(7, 3, limits())
        );
        let different =
            (0..20).any(|i| Schedule::draw(7, i, limits()) != Schedule::draw(7, 3, limits()));
        assert!(different);
    }

    #[test]
    fn every_fault_is_repaired_after_it_and_each_sled_has_at_most_one() {
        for index in 0..200 {
            let schedule = Schedule::draw(42, index, limits());
            assert!(schedule.steps.windows(2).all(|w| w[0].at <= w[1].at));
            let injected: Vec<Fault> = schedule
                .steps
                .iter()
                .filter_map(|s| match s.action {
                    Action::Inject(fault) => Some(fault),
                    Action::Repair(_) => None,
                })
                .collect();
            assert!(!injected.is_empty() && injected.len() <= 3);
            for fault in &injected {
                let at = |action: Action| {
                    schedule
                        .steps
                        .iter()
                        .find(|s| s.action == action)
                        .unwrap()
                        .at
                };
                assert!(
                    at(Action::Inject(*fault)) < at(Action::Repair(*fault)),
                    "{schedule}"
                );
            }
            let mut sleds: Vec<usize> = injected.iter().filter_map(|f| f.sled()).collect();
            let all = sleds.len();
            sleds.sort();
            sleds.dedup();
            assert_eq!(sleds.len(), all, "{schedule}");
        }
    }
}
