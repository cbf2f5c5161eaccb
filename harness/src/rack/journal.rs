//! What happened to a rack, and when: the fault schedule (every fault and operator action,
//! with its time since the rack started) and the durations a story measured. Each line is
//! printed as it happens and again in the summary, so that a failed run can be replayed.

use std::time::{Duration, Instant};

/// The fault schedule and the timings of one rack.
pub struct Journal {
    started: Instant,
    schedule: Vec<String>,
    timings: Vec<(String, Duration)>,
}

impl Journal {
    /// An empty journal whose clock starts now.
    pub fn new() -> Journal {
        Journal {
            started: Instant::now(),
            schedule: Vec::new(),
            timings: Vec::new(),
        }
    }

    /// How long ago the journal started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Prints and remembers a fault (or operator action), with its time since the start.
    pub fn fault(&mut self, what: impl Into<String>) {
        let line = format!(
            "[{:>8.3}s] {}",
            self.started.elapsed().as_secs_f64(),
            what.into()
        );
        println!("fault schedule: {line}");
        self.schedule.push(line);
    }

    /// Prints and remembers a measured duration.
    pub fn record(&mut self, what: &str, took: Duration) {
        println!("timing: {what}: {took:.2?}");
        self.timings.push((what.to_string(), took));
    }

    /// The fault schedule so far, one line per fault.
    pub fn schedule(&self) -> &[String] {
        &self.schedule
    }

    /// Prints the fault schedule, the timings and the total time.
    pub fn print(&self) {
        println!("--- fault schedule");
        for line in &self.schedule {
            println!("{line}");
        }
        println!("--- timings");
        for (what, took) in &self.timings {
            println!("{took:>10.2?}  {what}");
        }
        println!("total {:.2?}", self.started.elapsed());
    }
}

impl Default for Journal {
    fn default() -> Journal {
        Journal::new()
    }
}
