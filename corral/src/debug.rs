//! `/debug/controllers`: what each controller of this process did, as JSON (the controller
//! kit's board: counts, the last outcome and the last failure, reconciles in flight, work
//! queued), and `/metrics`: the process's series in the Prometheus text format (the
//! controllers' reconciles, durations, queue depth and leadership; docs/controllers.md).
//! Served on its own plain-HTTP listener (`--debug-listen`, loopback by default), never on the
//! API server's port: bind it where only monitoring reaches.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Json;
use axum::routing::get;
use corral_controllers::kit::Board;
use tokio_util::sync::CancellationToken;

/// Serves the board at `listen` until `stop`; returns the bound address and the task.
pub async fn serve(
    listen: SocketAddr,
    board: Board,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the debug listener {listen}"))?;
    let address = listener.local_addr()?;
    let router = axum::Router::new()
        .route(
            "/debug/controllers",
            get(move || {
                let board = board.clone();
                async move { Json(board.snapshot()) }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    corral_apiserver::metrics::render(),
                )
            }),
        );
    let task = tokio::spawn(async move {
        // A read-only page of what the controllers did, on loopback by default.
        let plain = corral_node_agent::http::Endpoints::InsecureHttp;
        let served = corral_node_agent::http::serve(listener, router, plain, stop).await;
        if let Err(error) = served {
            tracing::warn!(%error, "debug listener stopped");
        }
    });
    Ok((address, task))
}
