//! Test harness: the real `corral apiserver` binary on a loopback port, over a real SQLite file
//! or a real etcd (one per test binary, each server under its own key prefix), with a
//! temporary kubeconfig. Processes are killed when the harness is dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use corral_store::testing::EtcdServer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Etcd,
}

static ETCD: OnceLock<String> = OnceLock::new();

/// The endpoint of this test process's etcd. It is started from a thread that lives as long as
/// the process, because the child's parent-death signal is tied to the thread that spawned it.
pub fn etcd() -> &'static str {
    ETCD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let server = runtime
                .block_on(EtcdServer::start())
                .expect("starting etcd");
            tx.send(server.endpoint()).expect("sending the endpoint");
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("etcd endpoint")
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("binding a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Waits for `condition` for at most `timeout`, polling.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub struct Apiserver {
    child: Option<Child>,
    pub address: SocketAddr,
    pub dir: tempfile::TempDir,
    store: String,
    prefix: String,
    extra: Vec<String>,
    /// Started with a parent-death signal (see [`Process`]): only for servers spawned, and
    /// restarted, from the test's own thread.
    tied_to_thread: bool,
}

pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crds")
}

impl Apiserver {
    pub fn start(backend: Backend) -> Apiserver {
        Apiserver::start_with(backend, &[])
    }

    /// Starts a server with extra `corral apiserver` flags.
    pub fn start_with(backend: Backend, extra: &[&str]) -> Apiserver {
        Apiserver::start_configured(backend, extra, false)
    }

    /// Like [`Apiserver::start`], but the kernel also kills the server if the test process dies
    /// (`PR_SET_PDEATHSIG`, see [`Process`]): start and restart it from the test's own thread.
    pub fn start_tied_to_thread(backend: Backend) -> Apiserver {
        Apiserver::start_configured(backend, &[], true)
    }

    fn start_configured(backend: Backend, extra: &[&str], tied_to_thread: bool) -> Apiserver {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = match backend {
            Backend::Sqlite => format!("sqlite:{}", dir.path().join("store.db").display()),
            Backend::Etcd => format!("etcd:{}", etcd()),
        };
        let prefix = format!("/test-{}", rand::random::<u64>());
        let address: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let mut server = Apiserver {
            child: None,
            address,
            dir,
            store,
            prefix,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tied_to_thread,
        };
        server.spawn();
        server.write_kubeconfig();
        server
    }

    /// Another API server on the same store (same etcd prefix or SQLite file).
    pub fn peer(&self) -> Apiserver {
        let dir = tempfile::tempdir().expect("tempdir");
        let address: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let mut server = Apiserver {
            child: None,
            address,
            dir,
            store: self.store.clone(),
            prefix: self.prefix.clone(),
            extra: self.extra.clone(),
            tied_to_thread: false,
        };
        server.spawn();
        server.write_kubeconfig();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("apiserver.log"))
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .args([
                "apiserver",
                "--listen",
                &self.address.to_string(),
                "--store",
                &self.store,
            ])
            .args(["--etcd-prefix", &self.prefix, "--crds"])
            .arg(crd_dir())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if self.tied_to_thread {
            die_with_spawning_thread(&mut command);
        }
        let child = command.spawn().expect("spawning corral apiserver");
        self.child = Some(child);
        let address = self.address;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if http_get(address, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "corral apiserver exited with {status}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "corral apiserver did not become ready; log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn write_kubeconfig(&self) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://{}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n    namespace: default\ncurrent-context: t\nusers:\n- name: t\n  user: {{}}\n",
            self.address
        );
        std::fs::write(self.kubeconfig(), text).expect("writing kubeconfig");
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same address and store.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal blocking HTTP/1.1 GET (no client library needed for health checks).
pub fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A blocking HTTP/1.1 request with a body; returns status and body. For non-streaming calls.
pub fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(2)).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
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
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
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
pub fn list_names(address: SocketAddr, path: &str) -> Vec<String> {
    let (status, body) = http(address, "GET", path, &[], b"");
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

/// A child process of the test (any binary, any arguments) whose standard output and error go
/// to a log file, appended across restarts with a marker line per start.
///
/// # Guarantees
/// - `Drop` kills it (SIGKILL) and reaps it, also when the test panics.
/// - If the test process itself dies (a timeout's SIGKILL), the kernel kills the child: it is
///   started with `PR_SET_PDEATHSIG`. That signal follows the *thread* that spawned the child,
///   so spawn (and respawn) from the test's own thread, never from a thread that ends sooner.
pub struct Process {
    pub name: String,
    program: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts `program args` with `RUST_LOG=info`, logging to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Process {
        let mut process = Process {
            name: name.to_string(),
            program: program.to_path_buf(),
            log: log.to_path_buf(),
            child: None,
        };
        process.respawn(args);
        process
    }

    /// Kills the process if it runs, then starts it again with `args`.
    pub fn respawn(&mut self, args: &[String]) {
        self.kill9();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|error| panic!("opening {}: {error}", self.log.display()));
        writeln!(log, "----- test: starting {} {}", self.name, args.join(" "))
            .expect("writing the log marker");
        let stdout = log.try_clone().expect("cloning the log file handle");
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        die_with_spawning_thread(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawning {}: {error}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL, no cleanup; waits until the process is gone. Nothing happens if it is not
    /// running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, if it was started and has exited on its own.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            lines,
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(target_os = "linux")]
fn die_with_spawning_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;

    let parent = std::process::id();
    let hook = move || {
        // SAFETY: prctl and getppid are async-signal-safe system calls; nothing here allocates
        // or takes a lock, as required between fork and exec.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // If the parent died before the signal was armed, nobody would ever send it.
        if unsafe { libc::getppid() } as u32 != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (see above).
    unsafe {
        command.pre_exec(hook);
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_spawning_thread(_command: &mut Command) {}
