//! From inotify events and directory scans to "this file is complete, upload it".
//!
//! A file is complete when it is closed after writing, or when it is renamed or moved into
//! the tree. Files found by a scan (backlog at start, a directory that appeared with files
//! already in it) are taken once they have not been modified for `settle`, unless an event
//! shows someone is still writing them.

use std::collections::HashSet;
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::config::Exclude;
use crate::queue::Queue;
use crate::upload::file_kind;

const CHANNEL_CAPACITY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch_dir {path} is not a readable directory: {message}")]
    NotADirectory { path: PathBuf, message: String },
    #[error(
        "cannot watch {path}: the inotify watch limit is reached; raise it with \
         `sysctl fs.inotify.max_user_watches=524288` (and persist it in /etc/sysctl.d/)"
    )]
    WatchLimit { path: PathBuf },
    #[error(
        "cannot create an inotify instance: raise `sysctl fs.inotify.max_user_instances` \
         ({message})"
    )]
    InstanceLimit { message: String },
    #[error("cannot watch {path}: {message}")]
    Other { path: PathBuf, message: String },
}

/// What the watcher saw, reduced to what intake acts on.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Closed after writing: complete.
    Closed(PathBuf),
    /// Renamed or moved into the tree (file or directory): complete as it stands.
    Arrived(PathBuf),
    /// Created or written to: someone is writing it; wait for the close.
    Writing(PathBuf),
    /// Removed or moved away.
    Gone(PathBuf),
    /// A directory was created: it may hold files from before its watch was added.
    DirCreated(PathBuf),
    /// Events were lost (kernel queue overflow) or the watch failed: rescan everything.
    Rescan(&'static str),
}

fn changes_of(event: Event) -> Vec<Change> {
    if event.need_rescan() {
        return vec![Change::Rescan("inotify queue overflowed")];
    }
    let mut paths = event.paths.into_iter();
    let first = paths.next();
    let Some(path) = first else {
        return Vec::new();
    };
    let change = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Change::Closed(path),
        EventKind::Create(CreateKind::Folder) => Change::DirCreated(path),
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => Change::Writing(path),
        // notify also sends `Both` for a rename inside the tree; its `To` half is enough.
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Change::Arrived(path),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            Change::Gone(path)
        }
        _ => return Vec::new(),
    };
    vec![change]
}

/// The running inotify watch. Dropping it stops the watch.
pub struct DirWatcher {
    _watcher: RecommendedWatcher,
    changes: mpsc::Receiver<Change>,
    lost: Arc<Notify>,
}

impl DirWatcher {
    /// Watches `root` recursively (not following symlinks). Events are handed over without
    /// blocking the notify thread; if the channel is full they are dropped and a rescan is
    /// requested instead.
    pub fn start(root: &Path) -> Result<DirWatcher, WatchError> {
        let (tx, changes) = mpsc::channel(CHANNEL_CAPACITY);
        let lost = Arc::new(Notify::new());
        let lost_tx = lost.clone();
        let handler = move |result: notify::Result<Event>| {
            let batch = match result {
                Ok(event) => changes_of(event),
                Err(e) => {
                    tracing::warn!(error = %e, "watch error; rescanning");
                    vec![Change::Rescan("watch error")]
                }
            };
            for change in batch {
                if tx.try_send(change).is_err() {
                    lost_tx.notify_one();
                }
            }
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher =
            RecommendedWatcher::new(handler, config).map_err(|e| WatchError::InstanceLimit {
                message: e.to_string(),
            })?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| watch_error(root, e))?;
        Ok(DirWatcher {
            _watcher: watcher,
            changes,
            lost,
        })
    }
}

fn watch_error(path: &Path, e: notify::Error) -> WatchError {
    match e.kind {
        notify::ErrorKind::MaxFilesWatch => WatchError::WatchLimit {
            path: path.to_owned(),
        },
        notify::ErrorKind::Io(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => {
            WatchError::WatchLimit {
                path: path.to_owned(),
            }
        }
        _ => WatchError::Other {
            path: path.to_owned(),
            message: e.to_string(),
        },
    }
}

/// Checks `root` before anything else touches it.
pub fn check_root(root: &Path) -> Result<(), WatchError> {
    let not_dir = |message: String| WatchError::NotADirectory {
        path: root.to_owned(),
        message,
    };
    let meta = std::fs::metadata(root).map_err(|e| not_dir(e.to_string()))?;
    if !meta.is_dir() {
        return Err(not_dir("it is not a directory".into()));
    }
    std::fs::read_dir(root).map_err(|e| not_dir(e.to_string()))?;
    Ok(())
}

/// Turns changes and scans into queued paths.
pub struct Intake {
    root: PathBuf,
    exclude: Exclude,
    settle: Duration,
    queue: Arc<Queue>,
    /// Files with a create/write event and no close yet.
    writing: HashSet<PathBuf>,
    /// Scanned files waiting to settle.
    deferred: DelayQueue<PathBuf>,
    deferred_set: HashSet<PathBuf>,
    /// Non-regular files already reported, so rescans do not repeat the warning.
    reported: HashSet<PathBuf>,
}

/// One entry of a scan.
struct Found {
    path: PathBuf,
    file_type: std::fs::FileType,
    modified: Option<SystemTime>,
}

impl Intake {
    pub fn new(root: PathBuf, exclude: Exclude, settle: Duration, queue: Arc<Queue>) -> Self {
        Intake {
            root,
            exclude,
            settle,
            queue,
            writing: HashSet::new(),
            deferred: DelayQueue::new(),
            deferred_set: HashSet::new(),
            reported: HashSet::new(),
        }
    }

    /// Scans the whole tree once (the backlog), then follows the watcher until cancelled.
    pub async fn run(mut self, mut watcher: DirWatcher, cancel: CancellationToken) {
        self.scan(self.root.clone(), "backlog scan at start").await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                change = watcher.changes.recv() => match change {
                    Some(change) => self.on_change(change).await,
                    None => return,
                },
                _ = watcher.lost.notified() => {
                    self.scan(self.root.clone(), "event channel overflowed").await;
                }
                Some(expired) = poll_fn(|cx| self.deferred.poll_expired(cx)), if !self.deferred.is_empty() => {
                    let path = expired.into_inner();
                    self.deferred_set.remove(&path);
                    self.consider_settling(path).await;
                }
            }
        }
    }

    async fn on_change(&mut self, change: Change) {
        match change {
            Change::Closed(path) | Change::Arrived(path) => {
                self.writing.remove(&path);
                self.consider_complete(path).await;
            }
            Change::Writing(path) => {
                self.writing.insert(path);
            }
            Change::Gone(path) => {
                self.writing.remove(&path);
            }
            Change::DirCreated(path) => self.scan(path, "new directory").await,
            Change::Rescan(reason) => self.scan(self.root.clone(), reason).await,
        }
    }

    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.root)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
    }

    fn excluded(&self, path: &Path) -> bool {
        self.relative(path)
            .is_none_or(|r| self.exclude.is_excluded(r))
    }

    fn report_skip(&mut self, path: &Path, kind: &'static str) {
        if self.reported.insert(path.to_owned()) {
            tracing::warn!(path = %path.display(), kind, "skipped: not a regular file; s3drop never opens or uploads these");
        }
    }

    /// An event says the file is complete.
    async fn consider_complete(&mut self, path: PathBuf) {
        if self.excluded(&path) {
            tracing::debug!(path = %path.display(), "excluded");
            return;
        }
        let meta = match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) => meta,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "gone before it could be queued");
                return;
            }
        };
        let file_type = meta.file_type();
        if file_type.is_dir() {
            Box::pin(self.scan(path, "directory moved in")).await;
        } else if file_type.is_file() {
            self.queue.push(path);
        } else {
            self.report_skip(&path, file_kind(&file_type));
        }
    }

    /// A deferred scanned file: take it once it has settled.
    async fn consider_settling(&mut self, path: PathBuf) {
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) if meta.is_file() => self.take_found(Found {
                path,
                file_type: meta.file_type(),
                modified: meta.modified().ok(),
            }),
            _ => {}
        }
    }

    fn take_found(&mut self, found: Found) {
        if !found.file_type.is_file() {
            let kind = file_kind(&found.file_type);
            self.report_skip(&found.path, kind);
            return;
        }
        if self.writing.contains(&found.path) {
            return; // its close event will queue it
        }
        let age = found
            .modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or(Duration::ZERO);
        if age >= self.settle {
            self.queue.push(found.path);
        } else if self.deferred_set.insert(found.path.clone()) {
            self.deferred.insert(found.path, self.settle - age);
        }
    }

    /// Walks `dir` (never following symlinks) and takes every complete file.
    async fn scan(&mut self, dir: PathBuf, reason: &'static str) {
        let root = self.root.clone();
        let exclude = self.exclude.clone();
        let started = std::time::Instant::now();
        let walked = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let mut errors = Vec::new();
            let walker = walkdir::WalkDir::new(&dir)
                .follow_links(false)
                .into_iter()
                .filter_entry(|e| {
                    e.path()
                        .strip_prefix(&root)
                        .map(|r| r.as_os_str().is_empty() || !exclude.is_excluded(r))
                        .unwrap_or(false)
                });
            for entry in walker {
                match entry {
                    Ok(entry) if entry.file_type().is_dir() => {}
                    Ok(entry) => found.push(Found {
                        modified: entry.metadata().ok().and_then(|m| m.modified().ok()),
                        file_type: entry.file_type(),
                        path: entry.into_path(),
                    }),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (found, errors)
        })
        .await;
        let Ok((found, errors)) = walked else {
            tracing::error!("scan task failed");
            return;
        };
        for error in errors {
            tracing::warn!(%error, "scan could not read an entry");
        }
        let files = found.len();
        for f in found {
            self.take_found(f);
        }
        tracing::info!(
            reason,
            files,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scan done"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, Flag, RemoveKind};

    fn ev(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn close_after_write_and_rename_in_are_complete() {
        assert_eq!(
            changes_of(ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/d/a"
            )),
            vec![Change::Closed("/d/a".into())]
        );
        assert_eq!(
            changes_of(ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/d/b"
            )),
            vec![Change::Arrived("/d/b".into())]
        );
    }

    #[test]
    fn writes_mark_a_file_busy_and_overflow_asks_for_a_rescan() {
        assert_eq!(
            changes_of(ev(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "/d/a"
            )),
            vec![Change::Writing("/d/a".into())]
        );
        assert_eq!(
            changes_of(ev(EventKind::Remove(RemoveKind::File), "/d/a")),
            vec![Change::Gone("/d/a".into())]
        );
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(matches!(changes_of(overflow)[..], [Change::Rescan(_)]));
        // A close after reading only is not a completed write.
        assert!(
            changes_of(ev(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/d/a"
            ))
            .is_empty()
        );
    }

    fn intake(root: &Path, settle: Duration) -> (Intake, Arc<Queue>) {
        let queue = Arc::new(Queue::new());
        let exclude = Exclude::new(&crate::config::default_exclude()).unwrap();
        (
            Intake::new(root.to_owned(), exclude, settle, queue.clone()),
            queue,
        )
    }

    #[tokio::test]
    async fn scan_takes_settled_files_and_skips_excluded_links_and_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/.cache")).unwrap();
        std::fs::write(root.join("a.txt"), b"a").unwrap();
        std::fs::write(root.join("sub/b.txt"), b"b").unwrap();
        std::fs::write(root.join("sub/.cache/c.txt"), b"c").unwrap();
        std::fs::write(root.join("x.tmp"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        let fifo = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let (mut intake, queue) = intake(root, Duration::ZERO);
        intake.scan(root.to_owned(), "test").await;
        let mut got = Vec::new();
        while queue.depth() > 0 {
            let p = queue.pop().await;
            queue.finish(&p);
            got.push(p.strip_prefix(root).unwrap().to_owned());
        }
        got.sort();
        assert_eq!(
            got,
            vec![PathBuf::from("a.txt"), PathBuf::from("sub/b.txt")]
        );
        assert_eq!(intake.reported.len(), 2, "link and fifo reported");
    }

    #[tokio::test]
    async fn fresh_or_busy_files_wait_for_settle_or_close() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("fresh"), b"a").unwrap();
        std::fs::write(root.join("busy"), b"b").unwrap();
        let (mut intake, queue) = intake(root, Duration::from_secs(60));
        intake.on_change(Change::Writing(root.join("busy"))).await;
        intake.scan(root.to_owned(), "test").await;
        assert_eq!(queue.depth(), 0);
        assert!(intake.deferred_set.contains(&root.join("fresh")));
        assert!(!intake.deferred_set.contains(&root.join("busy")));
        intake.on_change(Change::Closed(root.join("busy"))).await;
        assert_eq!(queue.pop().await, root.join("busy"));
    }
}
