//! A line-oriented file that rotates by size: `PATH` is written; before a line would take it
//! past `max_bytes` it becomes `PATH.1`, `PATH.1` becomes `PATH.2`, and so on up to
//! `PATH.{max_backups}`, whose old content is dropped.
//!
//! # Invariants
//!
//! - A line is never split across files, and a file other than one holding a single oversize
//!   line is at most `max_bytes`.
//! - Every file is created `0600`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    max_backups: usize,
    file: BufWriter<File>,
    /// Bytes in the current file, written or buffered.
    size: u64,
}

impl Rotating {
    /// Opens `path` for appending (creating it and its directory if needed).
    pub fn open(path: &Path, max_bytes: u64, max_backups: usize) -> std::io::Result<Rotating> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = open(path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            max_backups,
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
        })
    }

    /// Appends `line` (which ends in a newline), rotating first if it would not fit.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.max_backups == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.max_backups).rev() {
                let from = backup(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, backup(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, backup(&self.path, 1))?;
        }
        self.file = BufWriter::with_capacity(64 * 1024, open(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `PATH.n`.
fn backup(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Every file a trail at `path` may have, oldest first (some may not exist).
pub fn oldest_first(path: &Path, max_backups: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=max_backups).rev().map(|n| backup(path, n)).collect();
    files.push(path.to_path_buf());
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn rotation_keeps_whole_lines_within_the_bound_and_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut file = Rotating::open(&path, 20, 2).unwrap();
        for i in 0..10 {
            // 10 bytes a line: two per file.
            file.write_line(format!("line-{i:03}\n").as_bytes())
                .unwrap();
        }
        file.flush().unwrap();
        assert_eq!(lines(&path), ["line-008", "line-009"]);
        assert_eq!(lines(&backup(&path, 1)), ["line-006", "line-007"]);
        assert_eq!(lines(&backup(&path, 2)), ["line-004", "line-005"]);
        assert!(!backup(&path, 3).exists());
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // An oversize line is written whole, alone.
        file.write_line(b"a line longer than twenty bytes\n")
            .unwrap();
        file.write_line(b"line-010\n").unwrap();
        file.flush().unwrap();
        assert_eq!(lines(&path), ["line-010"]);
        assert_eq!(
            lines(&backup(&path, 1)),
            ["a line longer than twenty bytes"]
        );
        // Reopened, it goes on where it was.
        drop(file);
        let mut file = Rotating::open(&path, 20, 2).unwrap();
        file.write_line(b"line-011\n").unwrap();
        file.flush().unwrap();
        assert_eq!(lines(&path), ["line-010", "line-011"]);
        let order = oldest_first(&path, 2);
        assert_eq!(order, [backup(&path, 2), backup(&path, 1), path.clone()]);
    }

    #[test]
    fn without_backups_rotation_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut file = Rotating::open(&path, 20, 0).unwrap();
        for i in 0..3 {
            file.write_line(format!("line-{i:03}\n").as_bytes())
                .unwrap();
        }
        file.flush().unwrap();
        assert_eq!(lines(&path), ["line-002"]);
    }
}
