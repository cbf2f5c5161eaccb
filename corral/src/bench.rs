//! `corral bench`: benchmarks that print numbers and ratios.
//!
//! - [`api`]: `corral bench api` — how close the API server gets to the physical limit of its
//!   store.
//! - [`rack`]: `corral bench rack` — how long a whole rack of simulated sleds takes to run
//!   thousands of Instances, through the real processes.
//! - [`drain`]: `corral bench drain` — a drain's wall time against its modelled transfers.
//! - [`v2p`]: `corral bench v2p` — how fast a moved instance's mapping reaches every sled.
//! - [`migrate`]: `corral bench migrate` — live migrations of real (QEMU) or simulated guests,
//!   measured beside the pre-copy model's prediction.
//! - [`failover`]: `corral bench failover` — how long the instances of a sled that lost its
//!   power take to run elsewhere (detect, fence, restart).
//!
//! `session.rs` is what the rack benchmarks share (the scratch directory, the store, the rack
//! of processes, the deadline, Ctrl-C); `measure.rs` reads a process's CPU time and peak
//! memory and computes percentiles.
//!
//! # Why the benchmarks live in the binary
//! They measure this binary: `rack`, `drain` and `v2p` start the rack as processes of the very
//! executable that runs them (a `corral_harness::Rack` of `corral apiserver`, `corral
//! controllers` and `corral power-sim`), and `api` runs the API server in this process as
//! `corral apiserver` does. Kept here, a benchmark always measures the code it ships with,
//! `corral bench …` needs no second executable, and the flags read as every other command's
//! (`command.rs`). What a benchmark shares with the tests — starting, supervising and
//! stopping processes, a rack ready to use, bounded waits — lives in `corral-harness`, so what
//! stays here is measurement; `main.rs` only parses and dispatches to [`run`].

mod api;
mod drain;
mod failover;
mod measure;
mod migrate;
mod rack;
mod session;
mod v2p;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// API write rate against the raw store rate, and watch delivery latency.
    Api(api::ApiArgs),
    /// Apply thousands of Instances to a rack of simulated sleds (real apiserver, controllers
    /// and power-sim processes) and time them until all are Running.
    Rack(rack::RackArgs),
    /// Drain a sled of live-migrating instances and compare the wall time with the time the
    /// modelled transfers alone need.
    Drain(drain::DrainArgs),
    /// Move instances one after another and time how long each new V2P mapping takes to
    /// reach every sled.
    V2p(v2p::V2pArgs),
    /// Live-migrate guests of several sizes and dirty rates (real QEMU guests by default) and
    /// compare each move's measured time and downtime with the model's prediction.
    Migrate(migrate::MigrateArgs),
    /// Power the busiest sled off behind the control plane's back and time how long its
    /// instances take to run elsewhere (detect, fence, restart).
    Failover(failover::FailoverArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Api(args) => api::api(args).await,
        BenchCommand::Rack(args) => rack::rack(args).await,
        BenchCommand::Drain(args) => drain::drain(args).await,
        BenchCommand::V2p(args) => v2p::v2p(args).await,
        BenchCommand::Migrate(args) => migrate::migrate(args).await,
        BenchCommand::Failover(args) => failover::failover(args).await,
    }
}
