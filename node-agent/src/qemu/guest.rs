//! corral-guest as the agent sees it (docs/qemu.md, "The guest"): the image QEMU boots, the
//! lines it writes on its serial port, and the channel that reads them and sends it commands.
//!
//! # Guarantees
//! - [`Channel`] keeps reading the guest's serial socket for as long as the VMM exists,
//!   reconnecting after the socket closes (an agent restart, a migration's target before it
//!   runs): what it knows ([`Seen`]) is only ever what the guest said since.
//! - Every line is appended to the VMM's `serial.log` (for operators), whatever it says.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::time::Instant;

/// The guest image: a flat multiboot kernel built from `node-agent/guest/` (`build.rs`).
pub static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/corral-guest.bin"));

/// How often the guest beats.
pub const BEAT: Duration = Duration::from_millis(200);

/// How long without a line from a running guest before it counts as hung: five beats.
pub const HUNG_AFTER: Duration = Duration::from_millis(1000);

/// One line from the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// It booted.
    Ready { memory_mib: u64, dirty: u64 },
    /// A heartbeat.
    Beat { count: u64, dirty: u64 },
    /// It took a command.
    Ok(String),
    /// Anything else (a fault report, the power button).
    Other(String),
}

impl Line {
    pub fn parse(line: &str) -> Line {
        let line = line.trim();
        let field = |name: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
        };
        if line.starts_with("corral-guest ready") {
            return Line::Ready {
                memory_mib: field("memory").unwrap_or(0),
                dirty: field("dirty").unwrap_or(0),
            };
        }
        if let Some(count) = line
            .strip_prefix("hb ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|count| count.parse().ok())
        {
            return Line::Beat {
                count,
                dirty: field("dirty").unwrap_or(0),
            };
        }
        if let Some(command) = line.strip_prefix("ok ") {
            return Line::Ok(command.to_string());
        }
        Line::Other(line.to_string())
    }
}

/// What the guest said lately.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// It said `ready` (or beat) since it was last created or reset: its guest runs.
    pub booted: bool,
    /// When its last line arrived, if one did since the channel (re)started.
    pub last_line: Option<Instant>,
    /// Its last heartbeat count and the dirty rate it reported.
    pub beats: u64,
    pub dirty: u64,
}

/// Reads a VMM's serial socket and writes commands to it (see the module docs).
pub struct Channel {
    started: Instant,
    seen: Arc<Mutex<Seen>>,
    writer: Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Channel {
    /// Starts reading `socket`, appending to `log`. `booted`: whether the guest is known to
    /// run already (a VMM re-attached after an agent restart, or received by migration).
    pub fn open(socket: PathBuf, log: PathBuf, booted: bool) -> Channel {
        let seen = Arc::new(Mutex::new(Seen {
            booted,
            ..Seen::default()
        }));
        let writer = Arc::new(tokio::sync::Mutex::new(None));
        let reader = tokio::spawn(read_forever(socket, log, seen.clone(), writer.clone()));
        Channel {
            started: Instant::now(),
            seen,
            writer,
            reader,
        }
    }

    /// When this channel started listening.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("serial lock").clone()
    }

    /// The guest was reset: it runs again only once it says so.
    pub fn reset(&self) {
        self.seen.lock().expect("serial lock").booted = false;
    }

    /// The guest runs (it was resumed after a migration brought it here).
    pub fn mark_booted(&self) {
        self.seen.lock().expect("serial lock").booted = true;
    }

    /// Sends `command` (one line) to the guest; false if the socket is not connected.
    pub async fn send(&self, command: &str) -> bool {
        let mut writer = self.writer.lock().await;
        let Some(stream) = writer.as_mut() else {
            return false;
        };
        let line = format!("{command}\n");
        if stream.write_all(line.as_bytes()).await.is_err() {
            *writer = None;
            return false;
        }
        true
    }
}

async fn read_forever(
    socket: PathBuf,
    log: PathBuf,
    seen: Arc<Mutex<Seen>>,
    writer: Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>,
) {
    loop {
        let Ok(stream) = UnixStream::connect(&socket).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (read, write) = stream.into_split();
        *writer.lock().await = Some(write);
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(text)) = lines.next_line().await {
            append(&log, &text);
            observe(&seen, Line::parse(&text));
        }
        *writer.lock().await = None;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn observe(seen: &Mutex<Seen>, line: Line) {
    let mut seen = seen.lock().expect("serial lock");
    seen.last_line = Some(Instant::now());
    match line {
        Line::Ready { dirty, .. } => {
            seen.booted = true;
            seen.dirty = dirty;
        }
        Line::Beat { count, dirty } => {
            seen.booted = true;
            seen.beats = count;
            seen.dirty = dirty;
        }
        Line::Ok(_) | Line::Other(_) => {}
    }
}

fn append(log: &Path, text: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut file| writeln!(file, "{text}"));
    if let Err(error) = written {
        tracing::debug!(%error, log = %log.display(), "appending to the serial log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_lines_are_read() {
        assert_eq!(
            Line::parse("corral-guest ready memory=256 dirty=0\n"),
            Line::Ready {
                memory_mib: 256,
                dirty: 0
            }
        );
        assert_eq!(
            Line::parse("hb 12 dirty=104857600"),
            Line::Beat {
                count: 12,
                dirty: 104_857_600
            }
        );
        assert_eq!(Line::parse("ok dirty 5"), Line::Ok("dirty 5".into()));
        assert_eq!(
            Line::parse("fault 13 error=0 rip=0x1 cr2=0x0"),
            Line::Other("fault 13 error=0 rip=0x1 cr2=0x0".into())
        );
        assert_eq!(Line::parse("hb x"), Line::Other("hb x".into()));
    }

    #[test]
    fn the_image_is_a_multiboot_kernel() {
        let magic = 0x1BAD_B002u32.to_le_bytes();
        assert!(
            IMAGE.len() > 1024 && IMAGE.len() < 64 * 1024,
            "{}",
            IMAGE.len()
        );
        assert_eq!(&IMAGE[..4], &magic, "the multiboot header comes first");
    }
}
