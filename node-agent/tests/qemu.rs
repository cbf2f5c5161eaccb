//! The QEMU driver against real QEMU processes (KVM when `/dev/kvm` is usable, TCG otherwise,
//! and one test under TCG whatever the machine has; `scripts/setup.sh` installs QEMU, so a
//! missing QEMU fails these tests).
//!
//! Every claim is checked on the machine: the QEMU process (`/proc/<pid>`) and what the guest
//! itself says on its serial port, not only the state the driver reports. Every QEMU process a
//! test starts dies with the test process (the driver's lifeline), and each test powers its
//! machine off at the end.

use std::sync::Arc;
use std::time::Duration;

use corral_crds::Resources;
use corral_node_agent::hypervisor::{
    ExitReason, Hypervisor, HypervisorError, VmmId, VmmLaunch, VmmRunState,
};
use corral_node_agent::qemu::{Accel, Pid, QemuConfig, QemuHypervisor};
use tokio::time::Instant;

/// Bound on every wait: generous for TCG on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(30);

fn config() -> QemuConfig {
    let mut config = QemuConfig::new(Resources {
        cpus: 8,
        memory_mib: 2048,
    });
    config.stop_timeout = Duration::from_secs(3);
    config.vmms_die_with = Some(std::process::id());
    config
}

fn launch(id: &str) -> VmmLaunch {
    VmmLaunch {
        id: VmmId::from(id),
        namespace: "default".into(),
        name: format!("{id}-v1"),
        instance: id.into(),
        resources: Resources {
            cpus: 1,
            memory_mib: 128,
        },
        image: "corral-guest".into(),
        dirty_rate: None,
    }
}

async fn open(dir: &std::path::Path) -> Arc<QemuHypervisor> {
    QemuHypervisor::open(dir, config())
        .await
        .expect("opening the QEMU machine")
}

async fn state(qemu: &QemuHypervisor, id: &str) -> Option<VmmRunState> {
    qemu.inspect(&VmmId::from(id))
        .await
        .expect("inspecting")
        .map(|info| info.state)
}

/// Waits until `id` is in `wanted`, or panics with what it was.
async fn wait_state(qemu: &QemuHypervisor, id: &str, wanted: Option<VmmRunState>) {
    let deadline = Instant::now() + BOUND;
    loop {
        let now = state(qemu, id).await;
        if now == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} is {now:?}, not {wanted:?}, after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the guest of `id` has beaten more than `beats` times; returns its count.
async fn wait_beats(qemu: &QemuHypervisor, id: &str, beats: u64) -> u64 {
    let deadline = Instant::now() + BOUND;
    loop {
        let seen = qemu.guest(&VmmId::from(id)).await.expect("the VMM exists");
        if seen.beats > beats {
            return seen.beats;
        }
        assert!(Instant::now() < deadline, "{id} beat {} times", seen.beats);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the process runs, read from `/proc` (a zombie does not).
fn alive(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.0)) else {
        return false;
    };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !state.is_some_and(|state| state.starts_with('Z') || state.starts_with('X'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_boots_beats_dirties_stops_on_the_power_button_and_is_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = open(dir.path()).await;
    let dirtying = VmmLaunch {
        dirty_rate: Some(4 << 20),
        ..launch("a")
    };
    qemu.create(&dirtying).await.expect("creating");
    qemu.create(&dirtying)
        .await
        .expect("creating again changes nothing");
    let pid = qemu.pid(&VmmId::from("a")).await.expect("a pid file");
    assert!(alive(pid), "the QEMU process runs");
    wait_state(&qemu, "a", Some(VmmRunState::Running)).await;
    wait_beats(&qemu, "a", 2).await;
    let seen = qemu.guest(&VmmId::from("a")).await.unwrap();
    assert_eq!(
        seen.dirty,
        4 << 20,
        "the guest dirties what its launch asked for"
    );
    let info = qemu.inspect(&VmmId::from("a")).await.unwrap().unwrap();
    assert_eq!(info.dirty_bytes_per_second, 4 << 20);

    qemu.stop(&VmmId::from("a")).await.expect("stopping");
    wait_state(&qemu, "a", Some(VmmRunState::Exited(ExitReason::Stopped))).await;
    let log = std::fs::read_to_string(dir.path().join("qemu/a/serial.log")).unwrap();
    assert!(
        log.contains("power button"),
        "the guest powered itself off: {log}"
    );
    assert!(
        alive(pid),
        "an ended VMM exists (and holds its memory) until destroyed"
    );

    qemu.destroy(&VmmId::from("a")).await.expect("destroying");
    assert!(!alive(pid), "the QEMU process is gone");
    assert_eq!(state(&qemu, "a").await, None);
    qemu.destroy(&VmmId::from("a"))
        .await
        .expect("destroying again changes nothing");
    qemu.power_off().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_a_guest_power_off_and_a_kill_are_what_they_are_and_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = open(dir.path()).await;
    let mut changes = qemu.changes();
    for id in ["panics", "powers-off", "killed"] {
        qemu.create(&launch(id)).await.expect("creating");
    }
    for id in ["panics", "powers-off", "killed"] {
        wait_state(&qemu, id, Some(VmmRunState::Running)).await;
    }

    qemu.tell_guest(&VmmId::from("panics"), "panic")
        .await
        .unwrap();
    wait_state(
        &qemu,
        "panics",
        Some(VmmRunState::Exited(ExitReason::GuestCrashed)),
    )
    .await;
    qemu.tell_guest(&VmmId::from("powers-off"), "poweroff")
        .await
        .unwrap();
    wait_state(
        &qemu,
        "powers-off",
        Some(VmmRunState::Exited(ExitReason::GuestShutdown)),
    )
    .await;
    let pid = qemu.pid(&VmmId::from("killed")).await.unwrap();
    // SAFETY: a plain kill(2) of the test's own QEMU child.
    unsafe {
        libc::kill(pid.0 as libc::pid_t, libc::SIGKILL);
    }
    wait_state(&qemu, "killed", None).await;

    let mut announced = std::collections::BTreeSet::new();
    while announced.len() < 3 {
        let id = tokio::time::timeout(BOUND, changes.recv())
            .await
            .expect("an announcement")
            .expect("the channel is open");
        announced.insert(id.0);
    }
    assert_eq!(
        announced.into_iter().collect::<Vec<_>>(),
        ["killed", "panics", "powers-off"]
    );
    qemu.power_off().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_re_attaches_to_the_same_processes() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).await;
    first.create(&launch("b")).await.unwrap();
    wait_state(&first, "b", Some(VmmRunState::Running)).await;
    let pid = first.pid(&VmmId::from("b")).await.unwrap();
    let boot = first.boot_id().await.unwrap();
    drop(first);

    let second = open(dir.path()).await;
    assert_eq!(second.boot_id().await.unwrap(), boot, "the same boot");
    assert_eq!(
        second.pid(&VmmId::from("b")).await,
        Some(pid),
        "the same process"
    );
    assert_eq!(state(&second, "b").await, Some(VmmRunState::Running));
    wait_beats(&second, "b", 0).await;
    second.power_off().await.unwrap();
    assert!(
        !alive(pid),
        "a power-off kills every QEMU process of the sled"
    );
    assert!(matches!(
        second.list().await,
        Err(HypervisorError::PoweredOff)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_guest_is_unresponsive_and_its_stop_ends_in_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = open(dir.path()).await;
    qemu.create(&launch("c")).await.unwrap();
    wait_state(&qemu, "c", Some(VmmRunState::Running)).await;
    let pid = qemu.pid(&VmmId::from("c")).await.unwrap();
    qemu.tell_guest(&VmmId::from("c"), "hang").await.unwrap();
    let deadline = Instant::now() + BOUND;
    loop {
        let info = qemu.inspect(&VmmId::from("c")).await.unwrap().unwrap();
        if !info.responsive {
            break;
        }
        assert!(Instant::now() < deadline, "still responsive: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(alive(pid), "a hang leaves the process running");
    qemu.stop(&VmmId::from("c")).await.unwrap();
    assert_eq!(state(&qemu, "c").await, Some(VmmRunState::Stopping));
    wait_state(&qemu, "c", Some(VmmRunState::Exited(ExitReason::Stopped))).await;
    assert!(!alive(pid), "the stop timeout killed it");
    qemu.power_off().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_runs_under_tcg_as_under_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = QemuHypervisor::open(
        dir.path(),
        QemuConfig {
            accel: Accel::Tcg,
            ..config()
        },
    )
    .await
    .expect("opening the QEMU machine");
    assert_eq!(qemu.description(), "qemu (tcg)");
    let dirtying = VmmLaunch {
        dirty_rate: Some(1 << 20),
        ..launch("t")
    };
    qemu.create(&dirtying).await.expect("creating");
    let pid = qemu.pid(&VmmId::from("t")).await.expect("a pid file");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.0)).unwrap();
    assert!(
        cmdline.windows(10).any(|w| w == b"-accel\0tcg"),
        "QEMU runs with TCG"
    );
    wait_state(&qemu, "t", Some(VmmRunState::Running)).await;
    wait_beats(&qemu, "t", 2).await;
    assert_eq!(qemu.guest(&VmmId::from("t")).await.unwrap().dirty, 1 << 20);
    qemu.stop(&VmmId::from("t")).await.expect("stopping");
    wait_state(&qemu, "t", Some(VmmRunState::Exited(ExitReason::Stopped))).await;
    qemu.power_off().await.unwrap();
    assert!(!alive(pid), "a power-off kills the QEMU process");
}
