//! Private temporary directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A private directory, removed (with everything in it) on drop. Names carry the process id, a
/// counter and the clock, so tests running at the same time (also in other processes) never
/// share one.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new directory under the system temp dir (unix socket paths must stay short, so keep
    /// `tag` short).
    pub fn new(tag: &str) -> Self {
        Self::new_in(&std::env::temp_dir(), tag)
    }

    /// A new directory under `parent` (e.g. `CARGO_TARGET_TMPDIR`, to be on a real disk rather
    /// than tmpfs).
    pub fn new_in(parent: &Path, tag: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("spinblk-{tag}-{}-{id}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create test dir {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
