//! The target end of a transfer: asks the source agent for the guest (`POST /migrations` on
//! the source's `Sled.status.agentAddress`) and follows its events until `done`, as a task of
//! the agent run ([`start_target`]).
//!
//! # Guarantees
//! - Over TLS, the target goes on only if the server it reached presents the certificate of
//!   the source sled's agent (`system:node:SOURCE`, signed by the rack's CA): a Sled whose
//!   `status.agentAddress` points elsewhere can neither receive the request nor feed a guest.
//!   It presents its own node identity, which the source checks against the target Vmm's sled.
//!   A sled served over TLS never asks a plain-HTTP address.
//! - The stream is read through an [`EventReader`]: a line over the bound fails the transfer.
//! - The target journals `Ready` only on the source's `done` (it then holds the whole guest),
//!   and `Failed`/`TransferFailed` on anything else that ends the transfer; a cancelled task
//!   (its Vmm is being deleted, or the run stops) journals nothing: the plan decides then.

use std::sync::Arc;

use bytes::Bytes;
use corral_client::tls::{node_user, peer_identity};
use corral_crds::{MigrationRole, Reason, Sled, TransferTimings, Vmm, VmmMigrationPhase, VmmState};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::Api;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::context::Context;
use crate::error::DisplayChain;
use crate::http::Endpoints;
use crate::hypervisor::VmmId;
use crate::journal::VmmRecord;
use crate::migration::plan::{advance, moved, ready};
use crate::migration::progress::{Throttle, finish, progress, reconcile_when_ended};
use crate::migration::protocol::{EventReader, TransferEvent, TransferRequest};
use crate::migration::transfers::CONNECT_TIMEOUT;

/// Starts the target's transfer of `vmm` (whose record is `record`) as a task of the agent
/// run; once it ends, the Vmm is reconciled.
pub fn start_target(ctx: &Arc<Context>, vmm: &Vmm, record: &VmmRecord) {
    let Some(from) = vmm.spec.migrate_from.clone() else {
        return;
    };
    let request = TransferRequest {
        migration: from.migration.clone(),
        namespace: record.namespace.clone(),
        source_vmm: from.vmm.clone(),
        target_vmm: record.name.clone(),
        target_sled: ctx.sled.name.clone(),
        incoming: None,
    };
    let task_ctx = ctx.clone();
    let uid = record.uid.clone();
    ctx.transfers.spawn(
        &record.uid,
        move |token| async move {
            let outcome = tokio::select! {
                _ = token.cancelled() => return,
                outcome = receive(&task_ctx, &uid, &from.sled, &request) => outcome,
            };
            if let Err(message) = outcome {
                tracing::info!(vmm = %request.target_vmm, %message, "the transfer failed");
                fail(&task_ctx, &uid, &message).await;
            }
        },
        reconcile_when_ended(ctx, record),
    );
}

/// Journals (and reports) that the target's transfer failed.
async fn fail(ctx: &Context, uid: &VmmId, message: &str) {
    let failed = finish(ctx, uid, MigrationRole::Target, |previous, m| {
        let m = moved(
            m,
            VmmMigrationPhase::Failed,
            Some(Reason::TransferFailed),
            message,
        );
        let reason = Reason::TransferFailed;
        let now = corral_client::clock::now();
        advance(previous, VmmState::Migrating, reason, message, m, now)
    })
    .await;
    if let Err(error) = failed {
        tracing::warn!(error = %DisplayChain(&error), "journaling a failed transfer");
    }
}

/// The target end: asks the source for the guest and follows its events until `done`.
async fn receive(
    ctx: &Context,
    uid: &VmmId,
    source_sled: &str,
    request: &TransferRequest,
) -> Result<(), String> {
    let sleds: Api<Sled> = Api::all(ctx.api.client.clone());
    let sled = sleds
        .get(source_sled)
        .await
        .map_err(|e| format!("reading the source sled {source_sled}: {e}"))?;
    let address = sled
        .status
        .and_then(|s| s.agent_address)
        .ok_or_else(|| format!("the source sled {source_sled} reports no agent address"))?;
    // A driver that moves guests itself listens for this one first (QEMU's -incoming).
    let incoming = ctx
        .hypervisor
        .listen_for_guest(uid)
        .await
        .map_err(|e| format!("listening for the guest: {e}"))?;
    let request = TransferRequest {
        incoming,
        ..request.clone()
    };
    let started_at = MicroTime(corral_client::clock::now());
    let body = serde_json::to_vec(&request).expect("a transfer request serializes");
    let source = ask_source(
        ctx.transfers.endpoints(),
        &address,
        source_sled,
        body.into(),
    )
    .await?;
    let SourceAnswer {
        response,
        _connection,
    } = source;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!(
            "the source agent refused ({status}): {}",
            text.trim()
        ));
    }
    let mut reader = EventReader::default();
    let mut throttle = Throttle::default();
    loop {
        let frame = match body.frame().await {
            None => return Err("the source ended the transfer without finishing it".into()),
            Some(Err(e)) => return Err(format!("the connection to the source broke: {e}")),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let events = reader
            .push(&data)
            .map_err(|e| DisplayChain(&e).to_string())?;
        for event in events {
            match event {
                TransferEvent::Progress { progress: p } | TransferEvent::Paused { progress: p } => {
                    if throttle.due() {
                        progress(ctx, uid, &p).await;
                    }
                }
                TransferEvent::Done {
                    progress: p,
                    paused_at,
                } => {
                    let received_at = MicroTime(corral_client::clock::now());
                    // Not journaled (`false`) only if the Vmm no longer waits for this transfer
                    // (it is being deleted): nothing more to do either way.
                    finish(ctx, uid, MigrationRole::Target, |previous, m| {
                        let mut m = m.clone();
                        m.status.progress = p;
                        m.status.timings = TransferTimings {
                            started_at: Some(started_at.clone()),
                            paused_at: paused_at.clone(),
                            received_at: Some(received_at.clone()),
                            resumed_at: None,
                        };
                        let message = "the whole guest is here; waiting for the switch";
                        ready(previous, &m, message, corral_client::clock::now())
                    })
                    .await
                    .map_err(|e| format!("journaling the received guest: {e}"))?;
                    return Ok(());
                }
                TransferEvent::Error { message } => return Err(message),
            }
        }
    }
}

/// The source's answer to a transfer request, with the connection that carries it.
pub struct SourceAnswer {
    pub response: hyper::Response<Incoming>,
    /// Drives the connection while the answer is read; ended with it.
    _connection: Connection,
}

/// The task that drives a connection, aborted when dropped.
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `POST /migrations` with `body` to the agent of `source_sled` at `address`
/// (`Sled.status.agentAddress`: `https://HOST:PORT`, or `http://` / a bare `HOST:PORT` on a
/// plain-HTTP rack), checking over TLS that the server is that sled's agent (see the module
/// docs).
pub async fn ask_source(
    endpoints: &Endpoints,
    address: &str,
    source_sled: &str,
    body: Bytes,
) -> Result<SourceAnswer, String> {
    let (scheme, authority) = address.split_once("://").unwrap_or(("http", address));
    let authority = authority.trim_end_matches('/');
    let connect = async {
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connecting to the source agent at {address}: {e}"))?;
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY refused");
        }
        Ok::<_, String>(tcp)
    };
    let timed_out =
        || format!("the source agent at {address} did not answer within {CONNECT_TIMEOUT:?}");
    match (scheme, endpoints) {
        ("https", Endpoints::Tls { client, .. }) => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("the source agent's address {address}: {e}"))?;
            let connector = tokio_rustls::TlsConnector::from(client.clone());
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let tcp = connect.await?;
                connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with the source agent at {address}: {e}"))
            })
            .await
            .map_err(|_| timed_out())??;
            let expected = node_user(source_sled);
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| peer_identity(leaf));
            match presented {
                Some(identity) if identity.user == expected => {}
                other => {
                    let who = other.map_or("nobody".to_string(), |identity| identity.user);
                    return Err(format!(
                        "the server at {address} is {who}, not {expected}: no guest goes to or comes from it"
                    ));
                }
            }
            post(stream, authority, body).await
        }
        ("http", Endpoints::InsecureHttp) => {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| timed_out())??;
            post(tcp, authority, body).await
        }
        ("https", Endpoints::InsecureHttp) => Err(format!(
            "the source agent at {address} speaks TLS; this sled has no identity to reach it with"
        )),
        (_, Endpoints::Tls { .. }) => Err(format!(
            "the source sled {source_sled} reports {address}, not an https:// address; this sled reaches other sleds over TLS only"
        )),
        (_, Endpoints::InsecureHttp) => Err(format!(
            "the source sled {source_sled} reports {address}, not an http:// address"
        )),
    }
}

/// `POST /migrations` on a connection of its own.
async fn post<S>(stream: S, authority: &str, body: Bytes) -> Result<SourceAnswer, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = hyper::Request::post("/migrations")
        .header("host", authority)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| format!("building the request: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP with the source agent at {authority}: {e}"))?;
    let connection = Connection(tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "the connection to the source agent ended");
        }
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("asking the source agent at {authority}: {e}"))?;
    Ok(SourceAnswer {
        response,
        _connection: connection,
    })
}
