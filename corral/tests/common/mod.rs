//! What the binary's tests share: the real `corral apiserver` (a `corral_harness::Apiserver`)
//! on a loopback port, over a real SQLite file or a real etcd (one per test binary, each
//! server under its own key prefix), with a kubeconfig; and blocking HTTP helpers for the
//! synchronous tests. Every process is killed when its owner is dropped, and by the kernel if
//! the test process dies (`corral_harness::process`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use corral_harness::Apiserver;
use corral_harness::tls::ClientTls;
use corral_harness::{ApiserverSpec, Scratch, Store, block_on, wait_for_blocking};
use corral_store::testing::EtcdServer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Etcd,
}

/// The seed of a randomized test: `$var` if set (a replay), else a fresh one; printed either
/// way, with how to replay it.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with {var}={seed})");
    seed
}

/// The `corral` binary under test.
pub fn corral() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_corral"))
}

pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crds")
}

/// Starts `corral apiserver` on `backend` (serving the test CRDs too) and waits until it is
/// ready. Etcd is this test process's one etcd, started on first use; each server keeps to a
/// key prefix of its own.
pub async fn start_apiserver(backend: Backend, extra: &[&str]) -> Apiserver {
    let scratch = Scratch::temporary("corral-test-").expect("a temporary directory");
    let store = match backend {
        Backend::Sqlite => Store::Sqlite(scratch.path().join("store.db")),
        Backend::Etcd => Store::Etcd {
            endpoints: vec![
                EtcdServer::shared()
                    .await
                    .expect("starting etcd")
                    .endpoint(),
            ],
            prefix: format!("/test-{}", rand::random::<u64>()),
        },
    };
    let mut args = vec!["--crds".to_string(), crd_dir().display().to_string()];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let spec = ApiserverSpec {
        program: corral().to_path_buf(),
        store,
        args,
        log_filter: "info".into(),
        pki: None,
    };
    Apiserver::start(spec, scratch)
        .await
        .expect("starting corral apiserver")
}

/// [`start_apiserver`] for a synchronous test.
pub fn apiserver(backend: Backend) -> Apiserver {
    block_on(start_apiserver(backend, &[]))
}

/// [`start_apiserver`] with extra `corral apiserver` flags, for a synchronous test.
pub fn apiserver_with(backend: Backend, extra: &[&str]) -> Apiserver {
    block_on(start_apiserver(backend, extra))
}

/// Another API server on the same store (same etcd prefix or SQLite file), with the same flags.
pub fn peer(server: &Apiserver) -> Apiserver {
    let scratch = Scratch::temporary("corral-test-").expect("a temporary directory");
    block_on(server.peer(scratch)).expect("starting a peer corral apiserver")
}

/// Starts the server again on the same address and store.
pub fn restart(server: &mut Apiserver) {
    block_on(server.restart()).expect("restarting corral apiserver");
}

/// Waits for `condition` for at most `timeout`, polling; panics with `what` on a timeout.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    wait_for_blocking(what, timeout, || {
        if condition() { Ok(()) } else { Err("not yet") }
    })
    .unwrap_or_else(|error| panic!("{error}"));
}

/// Where a raw request goes: an API server's address and `admin`'s TLS client for it.
#[derive(Clone)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub tls: ClientTls,
}

/// Anything raw requests can be sent to.
pub trait Reach {
    fn endpoint(&self) -> Endpoint;
}

impl Reach for Apiserver {
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address(),
            tls: self.tls().clone(),
        }
    }
}

impl<T: Reach + ?Sized> Reach for &T {
    fn endpoint(&self) -> Endpoint {
        (**self).endpoint()
    }
}

impl<T: Reach + ?Sized> Reach for &mut T {
    fn endpoint(&self) -> Endpoint {
        (**self).endpoint()
    }
}

impl Reach for Endpoint {
    fn endpoint(&self) -> Endpoint {
        self.clone()
    }
}

/// A TLS connection to `to`, as `admin`, with a read timeout.
pub fn connect(to: &impl Reach, read_timeout: Duration) -> Option<TlsStream> {
    let Endpoint { address, tls } = to.endpoint();
    let stream = tls.connect_blocking(address, Duration::from_secs(2)).ok()?;
    stream.sock.set_read_timeout(Some(read_timeout)).ok()?;
    Some(stream)
}

/// A blocking TLS stream to an API server.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A minimal blocking HTTP/1.1 GET (no client library needed for health checks).
pub fn http_get(to: &impl Reach, path: &str) -> Option<(u16, String)> {
    let address = to.endpoint().address;
    let mut stream = connect(to, Duration::from_secs(5))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    read_all(&mut stream, &mut response);
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Reads until the peer closes (a TLS peer may close without `close_notify` once it answered).
pub fn read_all(stream: &mut impl Read, into: &mut Vec<u8>) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => into.extend_from_slice(&buffer[..n]),
        }
    }
}

/// A blocking HTTP/1.1 request with a body, as `admin`; returns status and body. For
/// non-streaming calls.
pub fn http(
    to: &impl Reach,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let address = to.endpoint().address;
    let mut stream = connect(to, Duration::from_secs(30)).expect("connecting");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("writing request");
    // The server may answer (e.g. 413) before reading a large body; a failed write is fine.
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let mut response = Vec::new();
    read_all(&mut stream, &mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// GETs a collection and returns the names of its items, in list order.
pub fn list_names(to: &impl Reach, path: &str) -> Vec<String> {
    let (status, body) = http(to, "GET", path, &[], b"");
    assert_eq!(status, 200, "listing {path}: {body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("a list is JSON");
    list["items"]
        .as_array()
        .expect("a list has items")
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .expect("every item has a name")
                .to_string()
        })
        .collect()
}
