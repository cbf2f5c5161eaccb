//! Where every child of the harness is forked: one thread that lives as long as the process,
//! so that the kernel kills each child when (and only when) the whole process dies.
//!
//! Every child is started with `PR_SET_PDEATHSIG` = SIGKILL. That signal follows the *thread*
//! that spawned the child, not the process: a child forked from a thread that ends sooner (a
//! tokio worker or blocking-pool thread, the thread of a per-test runtime) would be killed the
//! moment that thread ends, while its owner still wants it. So no child is forked from the
//! caller's thread: [`spawn`] hands the command to the spawner thread, which forks it and
//! answers with the [`Child`]. That thread is never joined and never ends before the process.
//!
//! # Guarantees
//! - A child spawned here dies with the process that spawned it, however that process ends
//!   (a panic, `exit`, SIGKILL of a test that ran too long), even if no `Drop` runs.
//! - A child whose parent died before the signal was armed exits at once instead of running
//!   unowned.
//!
//! # Assumptions
//! - Linux (`prctl`).
//! - The calling thread may block for the time a fork and exec take.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

/// One command to fork, and where to send the result.
struct SpawnJob {
    command: Command,
    reply: Sender<io::Result<Child>>,
}

/// The spawner thread's queue, started on first use.
static JOBS: OnceLock<Sender<SpawnJob>> = OnceLock::new();

/// Forks `command` on the spawner thread, with the parent-death signal armed.
pub(crate) fn spawn(mut command: Command) -> io::Result<Child> {
    die_with_parent(&mut command);
    let jobs = JOBS.get_or_init(start_thread);
    let gone = || io::Error::other("the harness's spawner thread is gone");
    let (reply, answer) = channel();
    jobs.send(SpawnJob { command, reply }).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

fn start_thread() -> Sender<SpawnJob> {
    let (jobs, receiver) = channel::<SpawnJob>();
    // The sender lives in a static, so the loop (and the thread) ends only with the process.
    std::thread::Builder::new()
        .name("harness-spawner".to_owned())
        .spawn(move || {
            for mut job in receiver {
                let _ = job.reply.send(job.command.spawn());
            }
        })
        .expect("starting the harness's spawner thread");
    jobs
}

/// Arms `PR_SET_PDEATHSIG` in the child: the kernel kills it when the spawning thread dies.
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    let hook = move || {
        // SAFETY: prctl and getppid are async-signal-safe system calls; nothing here allocates
        // or takes a lock, as required between fork and exec.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // If the parent died before the signal was armed, nobody would ever send it.
        if unsafe { libc::getppid() } as u32 != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (see above).
    unsafe {
        command.pre_exec(hook);
    }
}
