//! `/debug/controllers`: what each controller of this process did, as JSON (the controller
//! kit's board: counts, the last outcome and the last failure, reconciles in flight, work
//! queued). Served on its own listener (`--debug-listen`), never on the API server's port.

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
    let router = axum::Router::new().route(
        "/debug/controllers",
        get(move || {
            let board = board.clone();
            async move { Json(board.snapshot()) }
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
