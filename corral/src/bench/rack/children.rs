//! The benchmark's child processes: started from this binary, logged to files, stopped at the
//! end and killed on every other way out.
//!
//! # Guarantees
//! - A child never outlives the benchmark: [`Children::stop`] ends it (SIGTERM, then SIGKILL),
//!   dropping [`Children`] kills it (an error, Ctrl-C), and the kernel kills it
//!   (`PR_SET_PDEATHSIG`) if the benchmark itself dies.
//!
//! # Assumptions
//! - Linux (`prctl`). Children are spawned from the thread that runs the benchmark's
//!   top-level future (`main`'s `block_on`, which lives as long as the process): the death
//!   signal follows the spawning *thread*.
//! - `RUST_LOG` is passed on; without it the children log at `warn`, so that the benchmark
//!   measures the control plane rather than its logging.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

/// One child process and where it logs.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// The benchmark's child processes. Dropping it kills them all; [`Children::stop`] stops them
/// gracefully first.
pub struct Children {
    processes: Vec<Process>,
    log_dir: PathBuf,
}

impl Children {
    pub fn new(log_dir: PathBuf) -> anyhow::Result<Children> {
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Children {
            processes: Vec::new(),
            log_dir,
        })
    }

    /// Starts `corral ARGS...` as `name`, logging to `LOG_DIR/NAME.log`; returns its pid.
    pub fn spawn(&mut self, name: &'static str, arguments: &[&str]) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let log = self.log_dir.join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(exe);
        command
            .args(arguments)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting corral {name}"))?;
        let pid = child.id();
        self.processes.push(Process { name, child, log });
        Ok(pid)
    }

    /// Fails, naming the process and its exit status, if any child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "corral {} exited ({status}); its log: {}",
                    process.name,
                    process.log.display()
                );
            }
        }
        Ok(())
    }

    /// Kills and forgets the process called `name` (a start that is retried).
    pub fn forget(&mut self, name: &str) {
        self.processes.retain_mut(|process| {
            if process.name != name {
                return true;
            }
            let _ = process.child.kill();
            let _ = process.child.wait();
            false
        });
    }

    /// Prints the last lines of every child's log.
    pub fn print_log_tails(&self) {
        for process in &self.processes {
            let text = std::fs::read_to_string(&process.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(10)..];
            eprintln!("--- the last lines of {}:", process.log.display());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }

    /// Stops the children in the reverse order of their start (sleds before the controllers
    /// before the apiserver they talk to): SIGTERM, then SIGKILL after a few seconds.
    pub async fn stop(&mut self) {
        const GRACE: Duration = Duration::from_secs(5);
        while let Some(mut process) = self.processes.pop() {
            if let Ok(None) = process.child.try_wait()
                && let Ok(pid) = i32::try_from(process.child.id())
            {
                // SAFETY: kill only sends a signal, to a child not yet reaped (so the pid is
                // still ours).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let until = Instant::now() + GRACE;
            while matches!(process.child.try_wait(), Ok(None)) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

/// Arms `PR_SET_PDEATHSIG` in the child: the kernel kills it when the spawning thread dies.
fn die_with_parent(command: &mut Command) {
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
