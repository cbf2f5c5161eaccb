//! A real etcd for tests: one process on free loopback ports with a temporary data directory.
//!
//! # Guarantees
//!
//! - [`EtcdServer::start`] returns only once `GET /health` reports healthy (within about 10 s);
//!   a port taken between choosing and binding it is retried with new ports. Health is asked
//!   on etcd's metrics listener (plain HTTP on its own port), so a server that speaks only TLS
//!   to its clients ([`EtcdServer::start_tls`]) is checked the same way.
//! - The process never outlives its owner: `Drop` kills it (SIGKILL, then waits) and removes
//!   the data directory, also when a test panics. If the test process itself dies (a timeout's
//!   SIGKILL, a static that is never dropped), the kernel kills etcd: it is a
//!   `corral_harness::Process`, started with `PR_SET_PDEATHSIG` from a thread that lives as
//!   long as the process. A directory left behind that way is removed by the next `start` in
//!   any process, once its owner's process id is gone.
//!
//! # Assumptions
//!
//! `/usr/bin/etcd` (or `etcd` on `PATH`) is etcd 3.4 or later.

use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_harness::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio::time::Instant;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
const DIRECTORY_PREFIX: &str = "corral-etcd-";
/// Names the process that owns a server's directory (see `sweep_abandoned_directories`).
const OWNER_FILE: &str = "owner.pid";
const PORT_ATTEMPTS: usize = 5;

/// The certificates of an etcd that speaks only TLS and authenticates its clients (PEM files).
#[derive(Clone, Debug)]
pub struct EtcdServerTls {
    /// The CA that signed the serving certificate and the client certificates it accepts.
    pub ca: PathBuf,
    /// etcd's serving certificate and key (for 127.0.0.1).
    pub serving: (PathBuf, PathBuf),
    /// A client certificate and key [`EtcdServer::config`] hands its clients.
    pub client: (PathBuf, PathBuf),
}

/// A running etcd. See the module docs.
pub struct EtcdServer {
    process: Process,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    tls: Option<EtcdServerTls>,
    // Dropped last: the directory goes once the process is dead.
    root: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts a new etcd and waits until it is healthy.
    pub async fn start() -> io::Result<EtcdServer> {
        EtcdServer::start_with(None).await
    }

    /// Starts a new etcd that serves its clients only over TLS and only those with a client
    /// certificate `tls.ca` signed (`--client-cert-auth`).
    pub async fn start_tls(tls: EtcdServerTls) -> io::Result<EtcdServer> {
        EtcdServer::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<EtcdServerTls>) -> io::Result<EtcdServer> {
        sweep_abandoned_directories();
        let root = tempfile::Builder::new()
            .prefix(DIRECTORY_PREFIX)
            .tempdir()?;
        std::fs::write(root.path().join(OWNER_FILE), std::process::id().to_string())?;
        let process = Process::new("etcd", etcd_binary(), root.path().join("etcd.log"));
        let mut server = EtcdServer {
            process,
            client_port: 0,
            peer_port: 0,
            metrics_port: 0,
            tls,
            root,
        };
        let mut attempt = 1;
        loop {
            [server.client_port, server.peer_port, server.metrics_port] = free_ports()?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(error) if attempt < PORT_ATTEMPTS && server.port_was_taken() => {
                    tracing::debug!(%error, attempt, "etcd lost a port race; retrying");
                    attempt += 1;
                    // A half-initialized member directory would pin the old peer URL.
                    let _ = std::fs::remove_dir_all(server.data_dir());
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One server for the whole test process, started on first use and killed when the
    /// process exits. etcd's compaction is server-wide: users must not compact, or must
    /// tolerate each other's compactions, and each must keep to a prefix of its own.
    pub async fn shared() -> io::Result<&'static EtcdServer> {
        static SHARED: OnceCell<EtcdServer> = OnceCell::const_new();
        SHARED.get_or_try_init(EtcdServer::start).await
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    /// The etcd process id while it runs (for CPU accounting in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// A store config for this server under `prefix` (with its client certificate, for a
    /// server started with [`EtcdServer::start_tls`]).
    pub fn config(&self, prefix: &str) -> crate::StoreConfig {
        crate::StoreConfig::Etcd {
            endpoints: vec![self.endpoint()],
            prefix: prefix.to_owned(),
            tls: self.tls.as_ref().map(|tls| crate::EtcdTls {
                ca: tls.ca.clone(),
                identity: Some(tls.client.clone()),
            }),
        }
    }

    /// Kills the process (SIGKILL) and waits for it; the data stays for [`EtcdServer::restart`].
    pub fn kill(&mut self) -> io::Result<()> {
        self.process.kill9();
        Ok(())
    }

    /// Kills the process if it runs and starts it again on the same ports and data.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.launch().await
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(self.process.log_path())
            .is_ok_and(|log| log.contains("address already in use"))
    }

    fn log_tail(&self) -> String {
        self.process.log_tail(15)
    }

    async fn launch(&mut self) -> io::Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            "corral-test".into(),
            "--data-dir".into(),
            self.data_dir().into(),
            "--listen-client-urls".into(),
            client_url.clone().into(),
            "--advertise-client-urls".into(),
            client_url.into(),
            "--listen-peer-urls".into(),
            peer_url.clone().into(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone().into(),
            "--initial-cluster".into(),
            format!("corral-test={peer_url}").into(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--logger".into(),
            "zap".into(),
            "--log-outputs".into(),
            "stderr".into(),
            "--log-level".into(),
            "warn".into(),
            "--listen-metrics-urls".into(),
            format!("http://127.0.0.1:{}", self.metrics_port).into(),
        ];
        if let Some(tls) = &self.tls {
            args.extend([
                "--cert-file".into(),
                tls.serving.0.clone().into(),
                "--key-file".into(),
                tls.serving.1.clone().into(),
                "--trusted-ca-file".into(),
                tls.ca.clone().into(),
                "--client-cert-auth".into(),
            ]);
        }
        self.process.start(&args).map_err(io::Error::other)?;

        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            if let Some(status) = self.process.exit_status() {
                self.process.kill9();
                return Err(io::Error::other(format!(
                    "etcd exited ({status}) before it was healthy:\n{}",
                    self.log_tail()
                )));
            }
            if healthy(self.metrics_port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd was not healthy within {HEALTH_TIMEOUT:?}:\n{}",
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            tracing::warn!(%error, "killing etcd failed");
        }
    }
}

/// Removes the directories of servers whose owning process is gone. A server that is never
/// dropped (a static, a killed test process) cannot remove its own directory; the next start
/// does. Directories without an owner file are left alone.
fn sweep_abandoned_directories() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(DIRECTORY_PREFIX)
        {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(entry.path().join(OWNER_FILE)) else {
            continue;
        };
        let Ok(owner) = owner.trim().parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{owner}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn etcd_binary() -> PathBuf {
    let packaged = Path::new("/usr/bin/etcd");
    if packaged.exists() {
        packaged.to_owned()
    } else {
        PathBuf::from("etcd")
    }
}

/// Three distinct free loopback ports (free when asked; see the retry in `start`).
fn free_ports() -> io::Result<[u16; 3]> {
    let listeners = [
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
    ];
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// `GET /health` answers `"health":"true"`.
async fn healthy(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(String::from_utf8_lossy(&response).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}
