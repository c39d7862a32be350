//! What the workers have done and what is stuck, for the service manager's status line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::metrics::FailureKind;

#[derive(Default)]
pub struct Progress {
    uploaded: AtomicU64,
    last: Mutex<Option<(Instant, String)>>,
    /// Files waiting on a failure an operator must fix: when it was seen, its kind and
    /// its cause.
    failed: Mutex<HashMap<PathBuf, (Instant, FailureKind, String)>>,
}

impl Progress {
    pub fn uploaded(&self, path: &Path, key: &str) {
        self.uploaded.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().expect("progress lock") = Some((Instant::now(), key.to_string()));
        self.settled(path);
    }

    /// `path` waits on a failure an operator must fix.
    pub fn failed(&self, path: &Path, kind: FailureKind, error: String) {
        let mut failed = self.failed.lock().expect("progress lock");
        failed.insert(path.to_owned(), (Instant::now(), kind, error));
    }

    /// `path` no longer waits on a failure (uploaded, gone, or dropped).
    pub fn settled(&self, path: &Path) {
        let mut failed = self.failed.lock().expect("progress lock");
        if !failed.is_empty() {
            failed.remove(path);
        }
    }

    /// The files waiting on a failure, newest first: (path, seconds since, kind, error).
    pub fn failures(&self) -> Vec<(PathBuf, u64, FailureKind, String)> {
        let failed = self.failed.lock().expect("progress lock");
        let mut list: Vec<_> = failed
            .iter()
            .map(|(path, (at, kind, error))| {
                (path.clone(), at.elapsed().as_secs(), *kind, error.clone())
            })
            .collect();
        list.sort_by_key(|(_, ago, _, _)| *ago);
        list
    }

    /// How many files wait on a failure an operator must fix.
    pub fn failed_count(&self) -> usize {
        self.failed.lock().expect("progress lock").len()
    }

    /// e.g. "12 uploaded; last i-0abc/x.csv 3s ago; 1 failed (newest: /spool/y: S3 denied …)".
    pub fn summary(&self) -> String {
        let n = self.uploaded.load(Ordering::Relaxed);
        let mut line = match &*self.last.lock().expect("progress lock") {
            Some((at, key)) => format!("{n} uploaded; last {key} {}s ago", at.elapsed().as_secs()),
            None => format!("{n} uploaded"),
        };
        let failed = self.failed.lock().expect("progress lock");
        if let Some((path, (_, _, error))) = failed.iter().max_by_key(|(_, (at, _, _))| *at) {
            line.push_str(&format!(
                "; {} failed (newest: {}: {})",
                failed.len(),
                crate::message::printable(&path.to_string_lossy()),
                crate::message::fit(error, 120)
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_uploads_and_the_newest_failure() {
        let p = Progress::default();
        assert_eq!(p.summary(), "0 uploaded");
        p.uploaded(Path::new("/d/a"), "i-1/a");
        assert!(
            p.summary().starts_with("1 uploaded; last i-1/a 0s ago"),
            "{}",
            p.summary()
        );
        p.failed(
            Path::new("/d/b"),
            FailureKind::Denied,
            "S3 denied the write".into(),
        );
        assert!(
            p.summary()
                .ends_with("; 1 failed (newest: /d/b: S3 denied the write)"),
            "{}",
            p.summary()
        );
        p.uploaded(Path::new("/d/b"), "i-1/b");
        assert!(!p.summary().contains("failed"), "{}", p.summary());
    }
}
