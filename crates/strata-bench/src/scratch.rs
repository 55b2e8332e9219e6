//! What the I/O suites share: a scratch directory removed on drop, and the
//! page-cache dropper that makes their reads come from the disk.

use std::path::PathBuf;

use crate::BenchError;

/// Where the kernel's page cache is dropped (root only).
pub(crate) const DROP_CACHES_PATH: &str = "/proc/sys/vm/drop_caches";

/// A directory under [`std::env::temp_dir`], removed with its files on drop.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    /// A fresh directory named after `suite`, this process and the time.
    pub(crate) fn create(suite: &str) -> Result<Self, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "strata-bench-{suite}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path).map_err(|e| BenchError::Setup {
            bench: suite.to_owned(),
            detail: format!("cannot create {}: {e}", path.display()),
        })?;
        Ok(TempDir { path })
    }

    /// A path inside the directory.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: nothing to report to if removal fails.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Drops the page cache before each measured read when allowed, and
/// remembers whether it worked.
pub(crate) struct DropCaches {
    wanted: bool,
    succeeded: u64,
    failed: Option<String>,
}

impl DropCaches {
    /// A dropper that acts only when `wanted` (not in smoke mode: dropping
    /// the whole machine's cache from a test would slow everyone).
    pub(crate) fn new(wanted: bool) -> Self {
        DropCaches {
            wanted,
            succeeded: 0,
            failed: None,
        }
    }

    /// Drops the clean pages (callers sync their data first); after one
    /// failure it stops trying.
    pub(crate) fn drop_now(&mut self) {
        if !self.wanted || self.failed.is_some() {
            return;
        }
        match std::fs::write(DROP_CACHES_PATH, "1") {
            Ok(()) => self.succeeded += 1,
            Err(e) => self.failed = Some(e.to_string()),
        }
    }

    /// A note for the report: whether the cache was dropped `when` (e.g.
    /// "before every read phase"), and if not, `otherwise` (what then came
    /// from the page cache).
    pub(crate) fn note(&self, when: &str, otherwise: &str) -> String {
        match (&self.failed, self.wanted) {
            (_, false) => format!("page cache not dropped (smoke mode): {otherwise}"),
            (Some(error), true) => format!(
                "page cache could not be dropped ({DROP_CACHES_PATH}: {error}): {otherwise}"
            ),
            (None, true) => format!(
                "page cache dropped ('1' written to {DROP_CACHES_PATH}) {when} ({} times): \
                 first reads come from the disk",
                self.succeeded
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = TempDir::create("scratch-test").unwrap();
        let path = dir.path.clone();
        std::fs::write(dir.file("x"), b"x").unwrap();
        assert!(path.exists());
        drop(dir);
        assert!(!path.exists(), "{}", path.display());
    }

    #[test]
    fn an_unwanted_dropper_does_nothing_and_says_so() {
        let mut drops = DropCaches::new(false);
        drops.drop_now();
        let note = drops.note("before every run", "reads come from the page cache");
        assert_eq!(
            note,
            "page cache not dropped (smoke mode): reads come from the page cache"
        );
    }
}
