//! A child of the harness outlives the thread that asked for it, and dies with the process
//! that owns it, even when that process is SIGKILLed (so no `Drop` runs).
//!
//! The test runs this very test binary again as the owner (`owner_that_is_killed`, which does
//! nothing unless [`OWNER_FILE`] is set): the owner starts `sleep 60` from a thread that ends at
//! once, checks that the child still runs, writes its pid and SIGKILLs itself.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use corral_harness::{Process, wait_for_blocking};

/// Where the owner writes its child's pid; set only in the owner's run.
const OWNER_FILE: &str = "CORRAL_HARNESS_OWNER_FILE";

#[test]
fn a_child_dies_with_its_owner_even_on_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("child.pid");
    let owner = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "owner_that_is_killed", "--nocapture"])
        .env(OWNER_FILE, &file)
        .output()
        .expect("running the owner");
    assert_eq!(
        owner.status.signal(),
        Some(libc::SIGKILL),
        "the owner should have killed itself: {}{}",
        String::from_utf8_lossy(&owner.stdout),
        String::from_utf8_lossy(&owner.stderr)
    );
    let pid: u32 = std::fs::read_to_string(&file)
        .expect("the owner wrote its child's pid")
        .trim()
        .parse()
        .unwrap();
    wait_for_blocking("the child to die", Duration::from_secs(10), || {
        if runs(pid) {
            Err(format!("{pid} runs"))
        } else {
            Ok(())
        }
    })
    .unwrap();
}

#[test]
fn owner_that_is_killed() {
    let Some(file) = std::env::var_os(OWNER_FILE) else {
        return;
    };
    let dir = Path::new(&file).parent().unwrap().to_path_buf();
    let mut child = std::thread::spawn(move || {
        let mut child = Process::new("sleep", "/bin/sleep", dir.join("sleep.log"));
        child.start(&["60"]).unwrap();
        child
    })
    .join()
    .unwrap();
    // Time for a parent-death signal tied to the ended thread to arrive, were it tied to it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.check_alive().is_ok(),
        "the child died with the thread that started it"
    );
    let pid = child.pid().unwrap();
    std::fs::write(&file, pid.to_string()).unwrap();
    // SAFETY: kill only sends a signal, to this process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL ends the process");
}

/// Whether `pid` runs (a zombie, dead but not yet reaped, does not).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}
