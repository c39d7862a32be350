//! What the workers have done, for the service manager's status line.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Default)]
pub struct Progress {
    uploaded: AtomicU64,
    last: Mutex<Option<(Instant, String)>>,
}

impl Progress {
    pub fn record(&self, key: &str) {
        self.uploaded.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().expect("progress lock") = Some((Instant::now(), key.to_string()));
    }

    /// e.g. "12 uploaded; last i-0abc/x.csv 3s ago".
    pub fn summary(&self) -> String {
        let n = self.uploaded.load(Ordering::Relaxed);
        match &*self.last.lock().expect("progress lock") {
            Some((at, key)) => format!("{n} uploaded; last {key} {}s ago", at.elapsed().as_secs()),
            None => format!("{n} uploaded"),
        }
    }
}
