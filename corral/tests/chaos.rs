//! `corral chaos` as a user runs it: a few randomized fault schedules on a real rack of
//! processes (six node-agents, two controllers, the API server), every invariant checked during
//! and after each. The seed is random and printed; `CHAOS_SEED=N` replays a run (and the
//! command prints the replay line of any schedule that broke an invariant).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use corral_harness::wait::{Unmet, wait_for_blocking};
use corral_harness::{Process, Scratch};

/// Schedules per run: enough to meet every kind of fault now and then, few enough for CI.
const SCHEDULES: u64 = 3;
/// A schedule takes up to about 15 s and the rack half a minute to start, on a loaded machine.
const BOUND: Duration = Duration::from_secs(300);

#[test]
fn a_few_fault_schedules_break_no_invariant() {
    let seed = common::seed("CHAOS_SEED");
    let scratch = Scratch::temporary("corral-chaos-test-").expect("a scratch directory");
    let log = scratch.path().join("chaos.log");
    let mut chaos = Process::new("corral chaos", common::corral(), &log);
    chaos
        .start(&[
            "chaos".to_string(),
            "--seed".into(),
            seed.to_string(),
            "--schedules".into(),
            SCHEDULES.to_string(),
        ])
        .expect("starting corral chaos");
    let ended = wait_for_blocking("corral chaos to end", BOUND, || {
        chaos.exit_status().ok_or(Unmet::Yet("running".into()))
    });
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    println!("{output}");
    let (status, took) = ended.expect("corral chaos ends in time");
    println!("corral chaos took {:.1} s", took.as_secs_f64());
    let last = output.lines().rev().find(|line| line.starts_with("chaos:"));
    assert_eq!(
        last,
        Some(format!("chaos: {SCHEDULES} schedules, 0 violations").as_str()),
        "exit {status:?}"
    );
    assert!(status.success());
}
