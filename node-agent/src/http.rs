//! Serving a sled's HTTP APIs (fault, migration, power).
//!
//! Every connection is `TCP_NODELAY`: these APIs stream small messages (a migration's rounds, a
//! progress report) and answer small requests, and with Nagle's algorithm a write made while the
//! previous one is unacknowledged waits for the peer's delayed ACK, up to 40 ms on Linux.

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY refused");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
