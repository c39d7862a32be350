//! Files s3drop saw being created or written and not yet closed: they wait for their
//! close. Two kinds of file never get one, and this is where they stop waiting:
//! - created and never written since: a hard link (`ln`, `cp -l`, `rsync -H`) or a
//!   `linkat()`ed `O_TMPFILE`. The kernel reports only the new name, so once `settle` has
//!   passed without a write the file is taken as it stands;
//! - written, but whose close was lost with other events (a full queue): the periodic
//!   rescan takes a file that was already idle at the previous periodic rescan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::time::DelayQueue;

struct Writer {
    /// A write was seen since the file was created.
    written: bool,
    /// The last event for it.
    last_event: Instant,
}

pub struct Writers {
    files: HashMap<PathBuf, Writer>,
    /// Created files to look at again once `settle` has passed.
    created: DelayQueue<PathBuf>,
    settle: Duration,
}

impl Writers {
    pub fn new(settle: Duration) -> Writers {
        Writers {
            files: HashMap::new(),
            created: DelayQueue::new(),
            settle,
        }
    }

    /// A new name appeared (created, or linked).
    pub fn created(&mut self, path: PathBuf) {
        self.recheck(path, self.settle);
    }

    pub fn written(&mut self, path: PathBuf) {
        let writer = self.files.entry(path).or_insert(Writer {
            written: true,
            last_event: Instant::now(),
        });
        writer.written = true;
        writer.last_event = Instant::now();
    }

    /// Closed, renamed in, or gone: no longer waiting.
    pub fn finished(&mut self, path: &Path) {
        self.files.remove(path);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }

    pub fn clear(&mut self) {
        self.files.clear();
    }

    /// The next created file whose settle time passed without a write (removed from the
    /// waiting files; the caller checks the file itself). Pending while there is none.
    pub fn poll_unwritten(&mut self, cx: &mut Context<'_>) -> Poll<PathBuf> {
        while let Poll::Ready(Some(expired)) = self.created.poll_expired(cx) {
            let path = expired.into_inner();
            if self.files.get(&path).is_some_and(|w| !w.written) {
                self.files.remove(&path);
                return Poll::Ready(path);
            }
        }
        Poll::Pending
    }

    /// Waits (again) `after` for a created file: one just created, or one still being
    /// modified (its mtime is recent).
    pub fn recheck(&mut self, path: PathBuf, after: Duration) {
        self.created.insert(path.clone(), after);
        self.files.insert(
            path,
            Writer {
                written: false,
                last_event: Instant::now(),
            },
        );
    }

    /// Stops waiting for files with no event since `since`, and returns them.
    pub fn idle_since(&mut self, since: Instant) -> Vec<PathBuf> {
        let idle: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, w)| w.last_event < since)
            .map(|(p, _)| p.clone())
            .collect();
        for path in &idle {
            self.files.remove(path);
        }
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn a_created_file_never_written_is_handed_back_after_settle() {
        let mut w = Writers::new(Duration::from_secs(2));
        w.created(PathBuf::from("/d/linked"));
        w.created(PathBuf::from("/d/written"));
        w.written(PathBuf::from("/d/written"));
        let got = tokio::time::timeout(Duration::from_secs(3), poll_fn(|cx| w.poll_unwritten(cx)))
            .await
            .unwrap();
        assert_eq!(got, PathBuf::from("/d/linked"));
        assert!(!w.contains(Path::new("/d/linked")));
        assert!(w.contains(Path::new("/d/written")), "waits for its close");
        assert!(
            tokio::time::timeout(Duration::from_secs(10), poll_fn(|cx| w.poll_unwritten(cx)))
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_files_idle_since_a_moment_are_released() {
        let mut w = Writers::new(Duration::from_secs(2));
        w.written(PathBuf::from("/d/old"));
        tokio::time::advance(Duration::from_secs(5)).await;
        let mark = Instant::now();
        w.written(PathBuf::from("/d/busy"));
        assert_eq!(w.idle_since(mark), vec![PathBuf::from("/d/old")]);
        assert!(w.contains(Path::new("/d/busy")));
    }
}
