//! The semantic suite of the API server: each test checks one rule of the wire contract
//! (`shared/k8s-api.md`, cited by section) against a real server on a real SQLite file, driven
//! in-process through the router. The harness (`support`) checks the rules every reply obeys:
//! JSON bodies, a `Status` for every non-2xx reply, and compact one-line watch events.

mod support;

mod admission;
mod audit;
mod authentication;
mod delete_gc;
mod discovery;
mod errors;
mod lists;
mod metadata;
mod metrics;
mod namespaces;
mod patch_apply;
mod status;
mod tables;
mod validation;
mod watch;
mod writes;
