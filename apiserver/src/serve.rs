//! The API server's listener: every connection it accepts is served by hyper (HTTP/1.1, and
//! HTTP/2 when a plain-text client speaks it) on a task of its own, over TLS when the server
//! has a certificate, until the server shuts down.
//!
//! # Guarantees
//!
//! - A TLS handshake runs in the connection's own task, bounded by [`HANDSHAKE_TIMEOUT`]: a
//!   client that never finishes one holds nothing but its socket.
//! - A client certificate is only read after rustls verified it against the client CA; the
//!   user it names ([`ClientCertificate`]) goes on every request of that connection, and the
//!   authentication layer (`auth`) decides what it counts for.
//! - A client that has not sent a whole request head within `Config::header_read_timeout`
//!   (Kubernetes' `ReadHeaderTimeout`, 32 s) is disconnected: a slow client holds one
//!   connection for a bounded time, and no other client waits for it. The same timer closes a
//!   keep-alive connection idle for as long, and one that sends no byte after its handshake
//!   ([`FirstByteDeadline`]: hyper first reads to tell HTTP/1.1 from HTTP/2, without a
//!   timeout).
//! - At most `Config::max_connections` connections are open at once; past that, new ones wait
//!   in the listen backlog until one closes.
//! - Every connection is `TCP_NODELAY`: a watch writes one small event at a time, and with
//!   Nagle's algorithm an event written while the previous one is unacknowledged waits for the
//!   client's delayed ACK (up to 40 ms on Linux) — on an established watch, every event but the
//!   first.
//! - Each request carries the peer's address (axum's `ConnectInfo`), which the per-client
//!   limits read (`handlers/flow.rs`).
//! - Shutdown stops accepting, ends every open watch, lets requests in flight finish (HTTP/1
//!   keep-alive connections close after their current response) and returns once every
//!   connection is closed, or after `Config::request_timeout` (no request lasts longer).
//!
//! # Not responsible for
//!
//! - Limits on requests (in flight, their duration, watches per client): `handlers/flow.rs`.
//! - Who a request is from: `auth`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{ClientCertificate, x509};
use crate::server::ApiServer;

/// The longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest header-read timeout taken from the configuration.
const LONGEST_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long the loop rests after an accept error that is not about one connection (out of
/// file descriptors, say), instead of spinning on it.
const ACCEPT_ERROR_REST: Duration = Duration::from_secs(1);

/// The server side of TLS: the serving certificate and, optionally, the CA client
/// certificates must be signed by.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl Tls {
    /// TLS with the certificate chain `cert` and key `key` (PEM files); with `client_ca`,
    /// clients may present a certificate that CA signed (clients without one may still
    /// authenticate otherwise, e.g. with a bearer token).
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Tls, TlsError> {
        let file_error = |path: &Path, message: String| TlsError::File {
            path: path.display().to_string(),
            message,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect())
            .map_err(|e| file_error(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file_error(cert, "no certificate in it".into()));
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for der in CertificateDer::pem_file_iter(ca)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| file_error(ca, e.to_string()))?
                {
                    roots.add(der).map_err(|e| file_error(ca, e.to_string()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key_der)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        // HTTP/1.1 only: every client Corral is tested with speaks it, and a watch is one
        // request per connection either way.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
        })
    }
}

/// Serves `router`, the routes of `server`, on `listener` (over TLS when `tls` is given) until
/// `shutdown` completes (see the module docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    server: Arc<ApiServer>,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = &server.config;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Zero disables the timeout (hyper would time every head out at once). hyper adds it to an
    // `Instant`, which a day cannot overflow (and no client needs longer to send a head).
    let header_read_timeout =
        Some(config.header_read_timeout.min(LONGEST_HEADER_READ_TIMEOUT)).filter(|t| !t.is_zero());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let acceptor = tls.map(|tls| tokio_rustls::TlsAcceptor::from(tls.config));
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        let Some((stream, peer, permit)) = accepted else {
            continue;
        };
        let connection = Connection {
            peer,
            builder: builder.clone(),
            router: router.clone(),
            watcher: graceful.watcher(),
            header_read_timeout,
        };
        let acceptor = acceptor.clone();
        let stopping = server.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                return connection.serve(stream, None).await;
            };
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
                () = stopping.cancelled() => return,
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| x509::identity(leaf));
            connection.serve(stream, user.map(ClientCertificate)).await
        });
    }
    drop(listener);
    // Watches end only when told to; everything else finishes its request.
    server.shutdown.cancel();
    // No request outlives the request timeout; without one, a minute.
    let grace = Some(server.config.request_timeout)
        .filter(|t| !t.is_zero())
        .unwrap_or(Duration::from_secs(60));
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open at the end of the shutdown grace"
        );
    }
    Ok(())
}

/// The next connection, once there is room for one; `None` after an error (already waited
/// on, if it was not about one connection).
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = connections
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    match listener.accept().await {
        Ok((stream, peer)) => {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY refused");
            }
            Some((stream, peer, permit))
        }
        Err(error) if is_connection_error(&error) => None,
        Err(error) => {
            tracing::error!(%error, "accepting a connection failed");
            tokio::time::sleep(ACCEPT_ERROR_REST).await;
            None
        }
    }
}

/// An accept error about the one connection being accepted (which is gone), not the listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// What serving one accepted connection needs.
struct Connection {
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    watcher: Watcher,
    header_read_timeout: Option<Duration>,
}

impl Connection {
    /// Serves the connection over `stream` (TCP, or TLS after its handshake) until it closes
    /// (or shutdown closes it), tagging each request with the peer's address and the client
    /// certificate's user.
    async fn serve<S>(self, stream: S, certificate: Option<ClientCertificate>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            builder,
            router,
            watcher,
            header_read_timeout,
        } = self;
        let stream = FirstByteDeadline::new(stream, header_read_timeout);
        let service = tower::ServiceExt::map_request(
            router,
            move |mut request: axum::http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                if let Some(certificate) = &certificate {
                    request.extensions_mut().insert(certificate.clone());
                }
                request
            },
        );
        let connection = builder.serve_connection_with_upgrades(
            TokioIo::new(stream),
            TowerToHyperService::new(service),
        );
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}

/// A stream whose reads fail with `TimedOut` if its first byte has not come within a deadline;
/// after it, a plain pass-through. Without a deadline, a plain pass-through from the start.
struct FirstByteDeadline<S> {
    inner: S,
    /// Until the first byte has come.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByteDeadline<S> {
    fn new(inner: S, timeout: Option<Duration>) -> FirstByteDeadline<S> {
        FirstByteDeadline {
            inner,
            deadline: timeout.map(|timeout| Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let filled = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > filled => {
                self.deadline = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request within the header-read timeout",
                )))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_sends_nothing_times_out_and_one_that_sends_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut silent = FirstByteDeadline::new(server, Some(Duration::from_secs(1)));
        let mut buffer = [0u8; 8];
        let error = silent.read(&mut buffer).await.expect_err("times out");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = FirstByteDeadline::new(server, Some(Duration::from_secs(1)));
        client.write_all(b"G").await.unwrap();
        assert_eq!(talking.read(&mut buffer).await.unwrap(), 1);
        // Past the first byte, no deadline: a read waits as long as the peer.
        tokio::time::advance(Duration::from_secs(10)).await;
        client.write_all(b"ET").await.unwrap();
        assert_eq!(talking.read(&mut buffer).await.unwrap(), 2);
    }
}
