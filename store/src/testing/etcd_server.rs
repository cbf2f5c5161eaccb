//! A real etcd for tests: one process ([`EtcdServer`]) or a cluster of several members
//! ([`EtcdCluster`], the production layout), on free loopback ports with a temporary data
//! directory.
//!
//! # Guarantees
//!
//! - `start` returns only once `GET /health` reports healthy on every member (within about
//!   10 s; a member of a new cluster is healthy once the cluster has a leader); a port taken
//!   between choosing and binding it is retried with new ports for every member. Health is
//!   asked on etcd's metrics listener (plain HTTP on its own port), so a server that speaks
//!   only TLS to its clients ([`EtcdServer::start_tls`]) is checked the same way.
//! - No process outlives its owner: `Drop` kills every member (SIGKILL, then waits) and removes
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
use std::net::Ipv4Addr;
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
    member: Member,
    tls: Option<EtcdServerTls>,
    // Dropped last: the directory goes once the process is dead.
    _root: tempfile::TempDir,
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
        let root = new_root()?;
        let mut members = [Member::new(root.path(), "corral-test")];
        launch_new(&mut members, tls.as_ref()).await?;
        let [member] = members;
        Ok(EtcdServer {
            member,
            tls,
            _root: root,
        })
    }

    /// One server for the whole test process, started on first use and killed when the
    /// process exits. etcd's compaction is server-wide: users must not compact, or must
    /// tolerate each other's compactions, and each must keep to a prefix of its own.
    pub async fn shared() -> io::Result<&'static EtcdServer> {
        static SHARED: OnceCell<EtcdServer> = OnceCell::const_new();
        SHARED.get_or_try_init(EtcdServer::start).await
    }

    /// The etcd process id while it runs (for CPU accounting in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.member.process.pid()
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        self.member.client_url(self.tls.as_ref())
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
        self.member.process.kill9();
        Ok(())
    }

    /// Kills the process if it runs and starts it again on the same ports and data.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        let cluster = initial_cluster(std::slice::from_ref(&self.member));
        self.member.spawn(&cluster, self.tls.as_ref())?;
        let healthy = wait_healthy(std::slice::from_mut(&mut self.member)).await;
        if healthy.is_err() {
            self.member.process.kill9();
        }
        healthy
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.member.process.kill9();
    }
}

/// A running etcd cluster of several members on loopback (plain HTTP), the layout of a
/// production control plane. See the module docs.
pub struct EtcdCluster {
    members: Vec<Member>,
    // Dropped last: the directory goes once the processes are dead.
    root: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts a new cluster of `size` members (`etcd-1` … `etcd-N`) and waits until every
    /// member is healthy.
    pub async fn start(size: usize) -> io::Result<EtcdCluster> {
        assert!(size >= 1, "a cluster has at least one member");
        let root = new_root()?;
        let mut members: Vec<Member> = (1..=size)
            .map(|index| Member::new(root.path(), &format!("etcd-{index}")))
            .collect();
        launch_new(&mut members, None).await?;
        Ok(EtcdCluster { members, root })
    }

    /// Every member's client URL, `http://127.0.0.1:PORT`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| member.client_url(None))
            .collect()
    }

    /// A store config for this cluster (every member) under `prefix`.
    pub fn config(&self, prefix: &str) -> crate::StoreConfig {
        crate::StoreConfig::Etcd {
            endpoints: self.endpoints(),
            prefix: prefix.to_owned(),
            tls: None,
        }
    }

    /// The directory that holds every member's data and log (`etcd-N/`, `etcd-N.log`).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.process.kill9();
        }
    }
}

/// One etcd process: its name in the cluster, its ports and its data directory.
struct Member {
    name: String,
    process: Process,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
}

impl Member {
    fn new(root: &Path, name: &str) -> Member {
        Member {
            name: name.to_owned(),
            process: Process::new(name, etcd_binary(), root.join(format!("{name}.log"))),
            data_dir: root.join(name),
            client_port: 0,
            peer_port: 0,
            metrics_port: 0,
        }
    }

    fn client_url(&self, tls: Option<&EtcdServerTls>) -> String {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(self.process.log_path())
            .is_ok_and(|log| log.contains("address already in use"))
    }

    /// Starts the process (it does not wait for it to be healthy). `initial_cluster` is
    /// etcd's `--initial-cluster`; a member with data ignores it and rejoins as it was.
    fn spawn(&mut self, initial_cluster: &str, tls: Option<&EtcdServerTls>) -> io::Result<()> {
        let client_url = self.client_url(tls);
        let peer_url = self.peer_url();
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            self.name.clone().into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
            "--listen-client-urls".into(),
            client_url.clone().into(),
            "--advertise-client-urls".into(),
            client_url.into(),
            "--listen-peer-urls".into(),
            peer_url.clone().into(),
            "--initial-advertise-peer-urls".into(),
            peer_url.into(),
            "--initial-cluster".into(),
            initial_cluster.into(),
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
        if let Some(tls) = tls {
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
        self.process
            .start(&args)
            .map(drop)
            .map_err(io::Error::other)
    }
}

/// A new directory for a server's or cluster's members, marked with its owner's process id.
fn new_root() -> io::Result<tempfile::TempDir> {
    sweep_abandoned_directories();
    let root = tempfile::Builder::new()
        .prefix(DIRECTORY_PREFIX)
        .tempdir()?;
    std::fs::write(root.path().join(OWNER_FILE), std::process::id().to_string())?;
    Ok(root)
}

/// etcd's `--initial-cluster` for `members`: `NAME=PEER_URL,…`.
fn initial_cluster(members: &[Member]) -> String {
    members
        .iter()
        .map(|member| format!("{}={}", member.name, member.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `members` as a new cluster on free ports and waits until every one is healthy;
/// when a member lost a port race, stops them all and tries again on new ports.
async fn launch_new(members: &mut [Member], tls: Option<&EtcdServerTls>) -> io::Result<()> {
    let mut attempt = 1;
    loop {
        let ports = corral_harness::ports::free_ports(3 * members.len())?;
        for (member, ports) in members.iter_mut().zip(ports.chunks(3)) {
            [member.client_port, member.peer_port, member.metrics_port] =
                [ports[0], ports[1], ports[2]];
        }
        let cluster = initial_cluster(members);
        let mut launched = Ok(());
        for member in members.iter_mut() {
            launched = member.spawn(&cluster, tls);
            if launched.is_err() {
                break;
            }
        }
        if launched.is_ok() {
            launched = wait_healthy(members).await;
        }
        let Err(error) = launched else {
            return Ok(());
        };
        for member in members.iter_mut() {
            member.process.kill9();
        }
        if attempt < PORT_ATTEMPTS && members.iter().any(Member::port_was_taken) {
            tracing::debug!(%error, attempt, "etcd lost a port race; retrying");
            attempt += 1;
            // A half-initialized member directory would pin the old peer URLs.
            for member in members.iter() {
                let _ = std::fs::remove_dir_all(&member.data_dir);
            }
            continue;
        }
        return Err(error);
    }
}

/// Waits until every member answers healthy; fails (and kills them all) if one exits or the
/// bound passes, with the last lines of the logs.
async fn wait_healthy(members: &mut [Member]) -> io::Result<()> {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    loop {
        for member in members.iter_mut() {
            if let Some(status) = member.process.exit_status() {
                let tail = member.process.log_tail(15);
                return Err(io::Error::other(format!(
                    "etcd member {} exited ({status}) before it was healthy:\n{tail}",
                    member.name
                )));
            }
        }
        let mut all = true;
        for member in members.iter() {
            all = all && healthy(member.metrics_port).await;
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let tails = members
                .iter()
                .map(|member| format!("--- {}\n{}", member.name, member.process.log_tail(15)))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("etcd was not healthy within {HEALTH_TIMEOUT:?}:\n{tails}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
