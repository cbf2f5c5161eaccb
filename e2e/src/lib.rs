//! End-to-end tooling for Corral racks: what tests (and people) run beside a rack to see what
//! really happens on it.
//!
//! - [`connectivity`]: the connectivity checker — every sled's V2P table against where each
//!   instance's guest really runs, with each wrong or missing mapping and how long it lasted,
//!   and every guest seen running on two sleds at once.
//! - [`http`]: the small HTTP client it speaks to the agents with.
//!
//! **Architecture invariant:** a client like any other: it reads the API through kube and the
//! agents through their HTTP APIs, and writes nothing.

pub mod connectivity;
pub mod http;
