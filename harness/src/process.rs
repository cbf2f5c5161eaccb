//! One child process of a test or a benchmark: any program, its output in a log file, and
//! never outliving whoever started it.
//!
//! A [`Process`] is a name, a program, a log file and the environment it adds; it may be
//! started, killed and started again (with other arguments) any number of times. Its log is
//! appended to across starts, with a marker line before each one.
//!
//! # Guarantees
//! - `Drop` kills the child (SIGKILL) and reaps it, also when the owner panics.
//! - If the owning process itself dies (a test killed for running too long, an abort), the
//!   kernel kills the child: it is forked with `PR_SET_PDEATHSIG` on a thread that lives as
//!   long as the process (`spawner.rs` says why the thread matters).
//! - [`Process::kill9`] and [`Process::stop`] return once the child is reaped: its pid is free
//!   and its ports are closed.
//!
//! # Not responsible for
//! Knowing when the program is ready: that is what it serves (`apiserver.rs`, `rack.rs`).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// What opens each start's part of a log.
const START_MARK: &str = "----- starting ";

/// Why a process could not be started, or is no longer running.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("opening the log {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited ({status}); its log: {}", log.display())]
    Exited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
    },
}

/// A child process and where it logs. See the module docs.
pub struct Process {
    name: String,
    program: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Process {
    /// A process called `name` (in messages) that runs `program` and logs to `log`. Nothing
    /// runs until [`Process::start`].
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        log: impl Into<PathBuf>,
    ) -> Process {
        Process {
            name: name.into(),
            program: program.into(),
            log: log.into(),
            env: Vec::new(),
            child: None,
        }
    }

    /// Sets an environment variable for every start.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Process {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the program with `args` (killing it first if it runs), its standard output and
    /// error appended to the log; returns its pid.
    pub fn start<S: AsRef<OsStr>>(&mut self, args: &[S]) -> Result<u32, ProcessError> {
        self.kill9();
        let log_error = |source| ProcessError::Log {
            path: self.log.clone(),
            source,
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(log_error)?;
        let shown: Vec<String> = args
            .iter()
            .map(|arg| arg.as_ref().to_string_lossy().into_owned())
            .collect();
        writeln!(log, "{START_MARK}{}: {}", self.name, shown.join(" ")).map_err(log_error)?;
        let stdout = log.try_clone().map_err(log_error)?;
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        let child = crate::spawner::spawn(command).map_err(|source| ProcessError::Spawn {
            name: self.name.clone(),
            source,
        })?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    /// SIGKILL, no cleanup; returns once the process is reaped. Nothing happens if it does not
    /// run.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to stop (SIGTERM) and kills it (SIGKILL) if it still runs after
    /// `grace`; returns once it is reaped.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(None) = child.try_wait()
            && let Ok(pid) = i32::try_from(child.id())
        {
            // SAFETY: kill only sends a signal, to a child not yet reaped (so the pid is still
            // ours).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let until = Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill9();
    }

    /// The pid while it was started and not killed (it may have exited on its own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, if it was started and has exited on its own.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Fails, naming the process, its exit status and its log, if it was started and has
    /// exited on its own. A process never started, or killed by the harness, is fine.
    pub fn check_alive(&mut self) -> Result<(), ProcessError> {
        match self.exit_status() {
            Some(status) => Err(ProcessError::Exited {
                name: self.name.clone(),
                status,
                log: self.log.clone(),
            }),
            None => Ok(()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the log holds since the latest start (everything if it was never started).
    pub fn log_since_start(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        match log.rfind(START_MARK) {
            Some(start) => log[start..].to_string(),
            None => log,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::{wait_for, wait_for_blocking};

    const BOUND: Duration = Duration::from_secs(10);

    fn shell(dir: &Path) -> Process {
        Process::new("sh", "/bin/sh", dir.join("sh.log")).env("GREETING", "hello")
    }

    fn exited(process: &mut Process) {
        wait_for_blocking("sh to exit", BOUND, || match process.exit_status() {
            Some(_) => Ok(()),
            None => Err("it runs"),
        })
        .unwrap();
    }

    #[test]
    fn every_start_appends_its_output_after_a_marker_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = shell(dir.path());
        for _ in 0..2 {
            process.start(&["-c", "echo $GREETING"]).unwrap();
            exited(&mut process);
        }
        let log = std::fs::read_to_string(process.log_path()).unwrap();
        assert_eq!(
            log,
            "----- starting sh: -c echo $GREETING\nhello\n".repeat(2)
        );
    }

    #[test]
    fn a_process_that_exited_on_its_own_is_not_alive_and_one_killed_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = shell(dir.path());
        process.start(&["-c", "exit 3"]).unwrap();
        exited(&mut process);
        let error = process.check_alive().unwrap_err().to_string();
        assert!(error.starts_with("sh exited (exit status: 3)"), "{error}");
        process.start(&["-c", "exec sleep 60"]).unwrap();
        process.kill9();
        assert_eq!(process.pid(), None);
        assert!(process.check_alive().is_ok());
    }

    #[tokio::test]
    async fn stop_ends_a_process_that_heeds_sigterm_and_kills_one_that_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = shell(dir.path());
        process.start(&["-c", "exec sleep 60"]).unwrap();
        let started = Instant::now();
        process.stop(Duration::from_secs(30)).await;
        assert!(started.elapsed() < BOUND);
        process
            .start(&[
                "-c",
                "trap '' TERM; echo deaf; while true; do sleep 0.05; done",
            ])
            .unwrap();
        wait_for("the trap", BOUND, async || {
            match process.log_tail(1).as_str() {
                "deaf" => Ok(()),
                other => Err(format!("the log ends {other:?}")),
            }
        })
        .await
        .unwrap();
        let started = Instant::now();
        process.stop(Duration::from_millis(300)).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(process.pid(), None);
    }
}
