//! The agent's metrics, in the process's `metrics` recorder (installed by the binary; without
//! one they cost nothing), and `/metrics` on the sled's endpoints (docs/rack.md, "Metrics").
//! Every series carries the `sled` label: one `corral power-sim` process runs many sleds.
//!
//! - `corral_agent_vmms{sled,state}` (gauge): the machine's VMMs by state, as the machine
//!   lists them (not as the journal believes), refreshed by every divergence scan (which
//!   lists the machine anyway, `vmm/scan.rs`).
//! - `corral_agent_heartbeat_last_renewal_timestamp_seconds{sled}` (gauge): when the sled's
//!   Lease was last renewed, Unix seconds; its age is `time() - ` it.
//! - `corral_agent_migration_sent_bytes_total{sled}` (counter): guest memory sent by
//!   finished outgoing live migrations (the simulated link's rounds; QEMU moves the guest
//!   itself and reports it in the same place).
//! - `corral_agent_migration_downtime_seconds{sled}` (histogram): on the target, from the
//!   source's pause to the guest running here, per completed migration.

use std::sync::OnceLock;
use std::time::Duration;

use crate::hypervisor::{VmmInfo, VmmRunState};

/// Every state `corral_agent_vmms` reports, so a state that empties reads 0, not stale.
const STATES: [&str; 6] = [
    "starting",
    "running",
    "stopping",
    "receiving",
    "paused",
    "exited",
];

fn state_name(state: &VmmRunState) -> &'static str {
    match state {
        VmmRunState::Starting => "starting",
        VmmRunState::Running => "running",
        VmmRunState::Stopping => "stopping",
        VmmRunState::Receiving => "receiving",
        VmmRunState::Paused => "paused",
        VmmRunState::Exited(_) => "exited",
    }
}

/// Records the machine's VMM list of `sled`.
pub fn vmms(sled: &str, listed: &[VmmInfo]) {
    for state in STATES {
        let count = listed
            .iter()
            .filter(|vmm| state_name(&vmm.state) == state)
            .count();
        metrics::gauge!("corral_agent_vmms", "sled" => sled.to_string(), "state" => state)
            .set(count as f64);
    }
}

/// Records a renewal of `sled`'s Lease, now.
pub fn heartbeat_renewed(sled: &str) {
    let now = corral_client::clock::now();
    metrics::gauge!(
        "corral_agent_heartbeat_last_renewal_timestamp_seconds",
        "sled" => sled.to_string()
    )
    .set(now.as_millisecond() as f64 / 1000.0);
}

/// Records a finished outgoing live migration that sent `bytes`.
pub fn migration_sent(sled: &str, bytes: u64) {
    metrics::counter!("corral_agent_migration_sent_bytes_total", "sled" => sled.to_string())
        .increment(bytes);
}

/// Records a completed incoming live migration whose guest was paused for `downtime`.
pub fn migration_downtime(sled: &str, downtime: Duration) {
    metrics::histogram!("corral_agent_migration_downtime_seconds", "sled" => sled.to_string())
        .record(downtime.as_secs_f64());
}

/// What renders the process's metrics in the Prometheus text format.
static RENDER: OnceLock<fn() -> String> = OnceLock::new();

/// Serves the process's metrics, rendered by `render`, at `/metrics` on the sleds' endpoints
/// (the first call wins).
pub fn serve_with(render: fn() -> String) {
    let _ = RENDER.set(render);
}

/// The routes of `/metrics`: `404` until [`serve_with`] was called.
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            match RENDER.get() {
                Some(render) => Ok((
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    render(),
                )),
                None => Err(axum::http::StatusCode::NOT_FOUND),
            }
        }),
    )
}
