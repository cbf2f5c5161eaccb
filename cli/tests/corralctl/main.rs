//! corralctl end to end: the real binary against a real API server (`TestServer`, Corral's
//! CRDs, a temporary SQLite store, no controllers). Tests write the status a controller or
//! node-agent would, through the /status subresource. Every wait is bounded.

mod support;

mod apply;
mod audit;
mod describe_events;
mod drain;
mod get;
mod operate;
mod wait_delete;
