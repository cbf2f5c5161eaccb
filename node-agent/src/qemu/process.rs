//! A VMM's QEMU process: its command line, its start, whether it still runs, and its end.
//!
//! # Guarantees
//! - A QEMU process is started in a session of its own and is not tied to the agent: the
//!   agent can exit and restart while its guests run on (it re-attaches by the pid file).
//!   When the sled is given a *lifeline* (`vmms_die_with`, a pid: a test, `corral up`), a
//!   small shell keeper is QEMU's parent and kills it when that process is gone, so a VMM
//!   never outlives what started its sled.
//! - [`Pid::is_vmm`] is true only for a live (not zombie) process whose command line names
//!   this VMM (`-name corral-vmm-<id>`): a recycled pid is never taken for a VMM.
//!
//! # Layout of a VMM's directory
//! `qmp.sock` (the monitor), `serial.sock` (COM1), `qemu.pid`, `qemu.log` (QEMU's own
//! output), `serial.log` (the guest's lines), and the driver's records (`vmm.rs`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::hypervisor::VmmLaunch;

/// Files of a VMM's directory.
pub const QMP: &str = "qmp.sock";
pub const SERIAL: &str = "serial.sock";
pub const PID: &str = "qemu.pid";
pub const QEMU_LOG: &str = "qemu.log";
pub const SERIAL_LOG: &str = "serial.log";
pub const GUEST: &str = "corral-guest.bin";

/// How QEMU accelerates guests on this sled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` can be opened for reading and writing, TCG otherwise.
    pub fn detect() -> Accel {
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if usable { Accel::Kvm } else { Accel::Tcg }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Everything the command line is made of.
pub struct Spec<'a> {
    pub qemu: &'a Path,
    pub firmware: &'a Path,
    pub guest: &'a Path,
    pub dir: &'a Path,
    pub launch: &'a VmmLaunch,
    pub accel: Accel,
    /// Start paused, waiting for an incoming migration (`migrate-incoming` says from where).
    pub receiving: bool,
    /// The guest's dirty rate at boot, bytes per second.
    pub dirty: u64,
}

/// The name a VMM's process carries (`-name`), by which it is recognised.
pub fn process_name(launch: &VmmLaunch) -> String {
    format!("corral-vmm-{}", launch.id)
}

/// QEMU's arguments (without the program).
pub fn arguments(spec: &Spec<'_>) -> Vec<String> {
    let file = |name: &str| spec.dir.join(name).display().to_string();
    let mut args: Vec<String> = [
        "-name",
        &process_name(spec.launch),
        "-machine",
        "q35",
        "-accel",
        spec.accel.as_str(),
        "-bios",
        &spec.firmware.display().to_string(),
        "-smp",
        &spec.launch.resources.cpus.max(1).to_string(),
        "-m",
        &spec.launch.resources.memory_mib.max(16).to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-chardev",
        &format!("socket,id=serial,path={},server=on,wait=off", file(SERIAL)),
        "-serial",
        "chardev:serial",
        "-device",
        "pvpanic",
        "-qmp",
        &format!("unix:{},server=on,wait=off", file(QMP)),
        // A guest that powers off or panics stays (its VMM has ended, and exists until it is
        // destroyed), and says so on the monitor.
        "-no-shutdown",
        "-action",
        "panic=pause",
        "-pidfile",
        &file(PID),
        "-kernel",
        &spec.guest.display().to_string(),
        "-append",
        &format!("dirty={}", spec.dirty),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    if spec.receiving {
        args.extend(["-incoming", "defer", "-S"].map(String::from));
    }
    args
}

/// Starts QEMU for `spec` (see the module docs for who its parent is).
pub fn spawn(spec: &Spec<'_>, vmms_die_with: Option<u32>) -> std::io::Result<()> {
    let log = std::fs::File::create(spec.dir.join(QEMU_LOG))?;
    let args = arguments(spec);
    let mut command = match vmms_die_with {
        None => {
            let mut command = tokio::process::Command::new(spec.qemu);
            command.args(&args);
            command
        }
        Some(lifeline) => {
            let mut command = tokio::process::Command::new("/bin/sh");
            command
                .arg("-c")
                .arg(KEEPER)
                .arg("corral-vmm-keeper")
                .arg(lifeline.to_string())
                .arg(spec.qemu)
                .args(&args);
            command
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    // SAFETY: `setsid` is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    // Reap it when it ends, so that an ended QEMU (or keeper) is not left a zombie of the agent.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

/// The keeper: runs QEMU (`$@` after the lifeline pid) and kills it once the lifeline is gone;
/// it ends with QEMU too (the shell reaps its ended child while it sleeps, so `kill -0` fails).
const KEEPER: &str = r#"lifeline=$1; shift
"$@" &
vmm=$!
trap 'kill -9 $vmm 2>/dev/null; exit 0' TERM INT HUP
while kill -0 "$lifeline" 2>/dev/null && kill -0 "$vmm" 2>/dev/null; do sleep 1; done
kill -9 "$vmm" 2>/dev/null
"#;

/// A VMM's process id, read from its pid file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pid(pub u32);

impl Pid {
    /// The pid QEMU wrote in `dir`, if it did.
    pub fn read(dir: &Path) -> Option<Pid> {
        std::fs::read_to_string(dir.join(PID))
            .ok()?
            .trim()
            .parse()
            .ok()
            .map(Pid)
    }

    /// Whether this pid is a live process running the VMM `launch` (see the module docs).
    pub fn is_vmm(self, launch: &VmmLaunch) -> bool {
        if !self.is_live() {
            return false;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.0)) else {
            return false;
        };
        let name = process_name(launch);
        cmdline
            .split(|byte| *byte == 0)
            .any(|arg| arg == name.as_bytes())
    }

    /// Whether a process with this pid exists and has not exited (a zombie has).
    pub fn is_live(self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.0)) else {
            return false;
        };
        // The state follows the command name in parentheses, which may itself hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    }

    /// Kills the VMM's process (SIGKILL) if it is still this VMM's, and waits up to `bound` for
    /// it to have exited. True when it has.
    pub async fn kill(self, launch: &VmmLaunch, bound: Duration) -> bool {
        if !self.is_vmm(launch) {
            return true;
        }
        // SAFETY: plain syscall on a pid checked just above to be this VMM's process.
        unsafe {
            libc::kill(self.0 as libc::pid_t, libc::SIGKILL);
        }
        // While it exits its command line may already read empty: wait on its state.
        let deadline = tokio::time::Instant::now() + bound;
        while self.is_live() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_crds::Resources;

    #[test]
    fn the_command_line_names_the_vmm_and_sizes_the_guest() {
        let launch = VmmLaunch {
            id: "u-1".into(),
            namespace: "default".into(),
            name: "web-v1".into(),
            instance: "web".into(),
            resources: Resources {
                cpus: 2,
                memory_mib: 512,
            },
            image: "corral-guest".into(),
            dirty_rate: None,
        };
        let spec = Spec {
            qemu: Path::new("/usr/bin/qemu-system-x86_64"),
            firmware: Path::new("/usr/share/qemu/qboot.rom"),
            guest: Path::new("/d/corral-guest.bin"),
            dir: Path::new("/d/qemu/u-1"),
            launch: &launch,
            accel: Accel::Tcg,
            receiving: true,
            dirty: 4096,
        };
        let args = arguments(&spec).join(" ");
        for part in [
            "-name corral-vmm-u-1",
            "-accel tcg",
            "-smp 2",
            "-m 512",
            "path=/d/qemu/u-1/serial.sock,server=on,wait=off",
            "-qmp unix:/d/qemu/u-1/qmp.sock,server=on,wait=off",
            "-pidfile /d/qemu/u-1/qemu.pid",
            "-append dirty=4096",
            "-incoming defer -S",
        ] {
            assert!(args.contains(part), "{part} in {args}");
        }
    }
}
