//! A real `corral apiserver` process on a free loopback port, serving HTTPS with the
//! certificates of a `corral certs` directory, with an `admin` kubeconfig for it.
//!
//! # Guarantees
//! - [`Apiserver::start`] and [`Apiserver::restart`] return only once `GET /readyz` answers
//!   200, within [`START_BOUND`]; a start whose process exits first (a port taken between
//!   choosing and binding it) is retried on another port, up to [`START_ATTEMPTS`] times.
//! - A restart keeps the address, the store and the flags, so clients and the kubeconfig stay
//!   valid.
//! - The process dies with its owner ([`Process`]).
//! - Peers ([`Apiserver::peer`]) share the CA and the identities: a credential of one is good
//!   at every other.
//!
//! # Assumptions
//! - `program` is the `corral` binary; its `apiserver` command takes `--listen`, `--store`,
//!   `--etcd-prefix` and `--pki`, its `certs` command `--dir`, `--server` and `--node`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Process, ProcessError};
use crate::scratch::Scratch;
use crate::tls::ClientTls;
use crate::wait::{Unmet, WaitError, wait_for_polling};

/// How long an API server may take to answer after its start.
pub const START_BOUND: Duration = Duration::from_secs(30);
/// How many ports a start tries.
pub const START_ATTEMPTS: usize = 3;

/// What an API server stores its objects in.
#[derive(Clone, Debug)]
pub enum Store {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// An etcd cluster, under a key prefix of its own.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

impl Store {
    /// The `corral apiserver` flags that name the store.
    fn args(&self) -> Vec<String> {
        match self {
            Store::Sqlite(path) => vec!["--store".into(), format!("sqlite:{}", path.display())],
            Store::Etcd { endpoints, prefix } => vec![
                "--store".into(),
                format!("etcd:{}", endpoints.join(",")),
                "--etcd-prefix".into(),
                prefix.clone(),
            ],
        }
    }
}

/// How to run an API server.
#[derive(Clone, Debug)]
pub struct ApiserverSpec {
    /// The `corral` binary.
    pub program: PathBuf,
    pub store: Store,
    /// Further `corral apiserver` flags (`--crds DIR`, `--compaction-interval 1s`).
    pub args: Vec<String>,
    /// `RUST_LOG` of the process.
    pub log_filter: String,
    /// The `corral certs` directory it serves with (None: a new one in its scratch directory,
    /// which its peers then share).
    pub pki: Option<PathBuf>,
}

/// Why an API server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiserverError {
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("finding a free port")]
    Port(#[source] std::io::Error),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("corral certs failed: {0}")]
    Certs(String),
    #[error("corral apiserver did not become ready; the end of its log:\n{log_tail}")]
    NotReady {
        #[source]
        source: WaitError,
        log_tail: String,
    },
}

/// A running API server. See the module docs.
pub struct Apiserver {
    spec: ApiserverSpec,
    address: SocketAddr,
    /// `admin`'s TLS client for the harness's own requests.
    tls: ClientTls,
    // Dropped before the directory it writes in.
    process: Process,
    scratch: Scratch,
}

impl Apiserver {
    /// Starts an API server that keeps its log (`apiserver.log`) and kubeconfig (`kubeconfig`)
    /// in `scratch`, and waits until it is ready.
    pub async fn start(
        mut spec: ApiserverSpec,
        scratch: Scratch,
    ) -> Result<Apiserver, ApiserverError> {
        let log = scratch.path().join("apiserver.log");
        let process =
            Process::new("apiserver", &spec.program, log).env("RUST_LOG", &spec.log_filter);
        let pki = spec
            .pki
            .get_or_insert_with(|| scratch.path().join("pki"))
            .clone();
        certs(&spec.program, &pki, None, &[])?;
        let tls = ClientTls::from_pki(&pki, Some("admin")).map_err(ApiserverError::Certs)?;
        let mut server = Apiserver {
            spec,
            address: free_address()?,
            tls,
            process,
            scratch,
        };
        let mut attempt = 1;
        loop {
            match server.launch().await {
                Err(ApiserverError::NotReady {
                    source: WaitError::Hopeless { .. },
                    ..
                }) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    server.address = free_address()?;
                }
                Err(error) => return Err(error),
                Ok(()) => break,
            }
        }
        server.issue(&[])?;
        let path = server.kubeconfig();
        std::fs::copy(server.pki().join("admin.kubeconfig"), &path)
            .map_err(|source| ApiserverError::Write { path, source })?;
        Ok(server)
    }

    /// Another API server on the same store, with the same flags.
    pub async fn peer(&self, scratch: Scratch) -> Result<Apiserver, ApiserverError> {
        Apiserver::start(self.spec.clone(), scratch).await
    }

    /// Kills the server if it runs and starts it again on the same address and store.
    pub async fn restart(&mut self) -> Result<(), ApiserverError> {
        self.launch().await
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `https://ADDRESS`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// The `corral certs` directory: the CA, and a kubeconfig per identity issued.
    pub fn pki(&self) -> &Path {
        self.spec.pki.as_deref().expect("set at start")
    }

    /// Issues (or keeps) `admin`, the controllers' identity and that of each of `nodes`' agents,
    /// each as `pki()/NAME.kubeconfig` naming this server.
    pub fn issue(&self, nodes: &[String]) -> Result<(), ApiserverError> {
        certs(
            &self.spec.program,
            self.pki(),
            Some(&self.base_url()),
            nodes,
        )
    }

    /// `admin`'s TLS client configuration (for raw requests of tests).
    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// [`request_with_body`] to this server over TLS, as `admin`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let stream = self
            .tls
            .connect(self.address)
            .await
            .map_err(|error| format!("connecting: {error}"))?;
        exchange(stream, self.address, method, path, body).await
    }

    /// An `admin` kubeconfig whose current context is this server, namespace `default`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.scratch.path().join("kubeconfig")
    }

    /// The directory of its log and kubeconfig (and of its SQLite file, if the caller put it
    /// there).
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    pub fn scratch_mut(&mut self) -> &mut Scratch {
        &mut self.scratch
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Its audit trail (unless its arguments name another).
    pub fn audit_log(&self) -> PathBuf {
        self.scratch.path().join("audit.log")
    }

    /// Its whole log, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// Starts the process on `self.address` and waits until it is ready.
    async fn launch(&mut self) -> Result<(), ApiserverError> {
        let mut args = vec![
            "apiserver".to_string(),
            "--listen".into(),
            self.address.to_string(),
        ];
        args.extend(self.spec.store.args());
        args.extend(self.spec.args.iter().cloned());
        args.extend(["--pki".to_string(), self.pki().display().to_string()]);
        if !self.spec.args.iter().any(|arg| arg == "--audit-log-path") {
            args.extend([
                "--audit-log-path".to_string(),
                self.audit_log().display().to_string(),
            ]);
        }
        self.process.start(&args)?;
        let (address, tls, process) = (self.address, &self.tls, &mut self.process);
        let ready = wait_for_polling(
            "GET /readyz",
            START_BOUND,
            Duration::from_millis(50),
            async || {
                if let Err(exited) = process.check_alive() {
                    return Err(Unmet::Never(exited.to_string()));
                }
                let readyz = async {
                    let stream = tls
                        .connect(address)
                        .await
                        .map_err(|error| format!("connecting: {error}"))?;
                    exchange(stream, address, "GET", "/readyz", "").await
                };
                match readyz.await {
                    Ok((200, _)) => Ok(()),
                    Ok((status, body)) => Err(Unmet::Yet(format!("HTTP {status}: {body}"))),
                    Err(error) => Err(Unmet::Yet(error)),
                }
            },
        )
        .await;
        if let Err(source) = ready {
            let log_tail = self.process.log_tail(30);
            self.process.kill9();
            return Err(ApiserverError::NotReady { source, log_tail });
        }
        Ok(())
    }
}

/// A free loopback address (free when asked: see the retry in [`Apiserver::start`]).
pub fn free_address() -> Result<SocketAddr, ApiserverError> {
    crate::ports::free_address().map_err(ApiserverError::Port)
}

/// Runs `corral certs --dir DIR [--server URL] [--node N]...`.
fn certs(
    program: &Path,
    dir: &Path,
    server: Option<&str>,
    nodes: &[String],
) -> Result<(), ApiserverError> {
    let mut command = std::process::Command::new(program);
    command.arg("certs").arg("--dir").arg(dir);
    if let Some(server) = server {
        command.arg("--server").arg(server);
    }
    for node in nodes {
        command.arg("--node").arg(node);
    }
    let output = command
        .output()
        .map_err(|error| ApiserverError::Certs(error.to_string()))?;
    if !output.status.success() {
        return Err(ApiserverError::Certs(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// A plain HTTP/1.1 request without a body on loopback (a plain-HTTP server: the controllers'
/// debug page), bounded: the status and the body.
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(u16, String), String> {
    request_with_body(address, method, path, "").await
}

/// [`request`] with a JSON body.
pub async fn request_with_body(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| format!("connecting: {error}"))?;
    exchange(stream, address, method, path, body).await
}

/// [`request_with_body`] over TLS as `tls`'s identity (a sled's endpoints, whose server
/// certificate names the address).
pub async fn request_over_tls(
    tls: &ClientTls,
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tls.connect(address))
        .await
        .map_err(|_| "no TLS handshake within 5s".to_string())?
        .map_err(|error| format!("connecting: {error}"))?;
    exchange(stream, address, method, path, body).await
}

/// One HTTP/1.1 request on `stream` (`Connection: close`), bounded by 5 s.
async fn exchange<S>(
    mut stream: S,
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let exchange = async {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("writing: {error}"))?;
        let mut response = Vec::new();
        // A TLS peer may close without close_notify once it has answered.
        if let Err(error) = stream.read_to_end(&mut response).await
            && response.is_empty()
        {
            return Err(format!("reading: {error}"));
        }
        Ok::<_, String>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5s".to_string())??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}
