//! The directory a rack or an API server keeps its files in (store, logs, kubeconfig, sleds):
//! a temporary one that goes at the end unless kept for a post-mortem, or one its caller owns.

use std::path::{Path, PathBuf};

/// A working directory. See the module docs.
pub struct Scratch {
    path: PathBuf,
    /// Removed when dropped, unless kept; `None` for a directory the caller owns.
    temporary: Option<tempfile::TempDir>,
}

impl Scratch {
    /// A new temporary directory named `PREFIX…`, removed when dropped.
    pub fn temporary(prefix: &str) -> std::io::Result<Scratch> {
        let directory = tempfile::Builder::new().prefix(prefix).tempdir()?;
        Ok(Scratch {
            path: directory.path().to_path_buf(),
            temporary: Some(directory),
        })
    }

    /// `path` (created if missing), which the caller owns: never removed here.
    pub fn at(path: impl Into<PathBuf>) -> std::io::Result<Scratch> {
        let path = path.into();
        std::fs::create_dir_all(&path)?;
        Ok(Scratch {
            path,
            temporary: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps a temporary directory after the end (for a post-mortem).
    pub fn keep(&mut self) {
        if let Some(directory) = &mut self.temporary {
            directory.disable_cleanup(true);
        }
    }
}
