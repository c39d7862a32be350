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
use crate::ledger::{FileIdentity, Ledger};
use crate::queue::Queue;
use crate::upload::file_kind;

const CHANNEL_CAPACITY: usize = 16 * 1024;
/// Files a scan hands to the intake at a time.
const WALK_CHUNK: usize = 256;

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

/// Settings for [`Intake`].
pub struct IntakeConfig {
    pub root: PathBuf,
    pub exclude: Exclude,
    pub settle: Duration,
    pub rescan_interval: Duration,
    /// Keep mode: a scanned file the ledger already has as uploaded (same identity) needs no
    /// work at all. In delete/move mode it still needs its after-upload action.
    pub skip_recorded: bool,
}

/// How often the existence of `watch_dir` itself is checked.
const ROOT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Turns changes and scans into queued paths.
pub struct Intake {
    config: IntakeConfig,
    queue: Arc<Queue>,
    ledger: Arc<Ledger>,
    /// Files with a create/write event and no close yet.
    writing: HashSet<PathBuf>,
    /// Scanned files waiting to settle.
    deferred: DelayQueue<PathBuf>,
    deferred_set: HashSet<PathBuf>,
    /// Non-regular files already reported, so rescans do not repeat the warning.
    reported: HashSet<PathBuf>,
    /// The watch on `root`, absent while `root` is missing.
    watcher: Option<DirWatcher>,
    /// (dev, inode) of `root` when it was last watched.
    root_identity: Option<(u64, u64)>,
}

/// One entry of a scan.
struct Found {
    path: PathBuf,
    meta: Option<std::fs::Metadata>,
    file_type: std::fs::FileType,
}

fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// The next change; `Some(Rescan)` if events were dropped; `None` if the watch ended.
/// Pending forever while there is no watch.
async fn next_change(watcher: &mut Option<DirWatcher>) -> Option<Change> {
    let Some(w) = watcher else {
        return std::future::pending().await;
    };
    tokio::select! {
        change = w.changes.recv() => change,
        _ = w.lost.notified() => Some(Change::Rescan("event channel overflowed")),
    }
}

impl Intake {
    pub fn new(
        config: IntakeConfig,
        watcher: DirWatcher,
        queue: Arc<Queue>,
        ledger: Arc<Ledger>,
    ) -> Self {
        Intake {
            root_identity: dir_identity(&config.root),
            config,
            queue,
            ledger,
            writing: HashSet::new(),
            deferred: DelayQueue::new(),
            deferred_set: HashSet::new(),
            reported: HashSet::new(),
            watcher: Some(watcher),
        }
    }

    /// Scans the whole tree once (the backlog), then follows the watcher until cancelled.
    /// `rescan_now` (SIGHUP) asks for a full scan at once; `ready` fires once the backlog scan has queued everything found.
    pub async fn run(
        mut self,
        rescan_now: Arc<Notify>,
        ready: tokio::sync::oneshot::Sender<()>,
        cancel: CancellationToken,
    ) {
        self.full_scan("backlog scan at start").await;
        let _ = ready.send(());
        let mut rescan = tokio::time::interval(self.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.reset(); // the first tick would fire at once; the backlog scan just ran
        let mut root_check = tokio::time::interval(ROOT_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                change = next_change(&mut self.watcher) => match change {
                    Some(change) => self.on_change(change).await,
                    None => self.watcher = None,
                },
                Some(expired) = poll_fn(|cx| self.deferred.poll_expired(cx)), if !self.deferred.is_empty() => {
                    let path = expired.into_inner();
                    self.deferred_set.remove(&path);
                    self.consider_settling(path).await;
                }
                _ = rescan.tick() => self.full_scan("periodic safety rescan").await,
                _ = rescan_now.notified() => self.full_scan("SIGHUP").await,
                _ = root_check.tick() => self.check_root().await,
            }
        }
    }

    /// Notices `watch_dir` disappearing (the watch dies with it) and coming back (watch it
    /// again and scan it).
    async fn check_root(&mut self) {
        let now = dir_identity(&self.config.root);
        if now == self.root_identity && (now.is_none() || self.watcher.is_some()) {
            return;
        }
        let root = self.config.root.clone();
        if now.is_none() {
            tracing::warn!(watch_dir = %root.display(), "watch_dir disappeared; waiting for it to be recreated");
            self.watcher = None;
            self.writing.clear();
            self.root_identity = None;
            return;
        }
        match DirWatcher::start(&root) {
            Ok(watcher) => {
                tracing::info!(watch_dir = %root.display(), "watch_dir is (back) in place; watching it again");
                self.watcher = Some(watcher);
                self.root_identity = now;
                self.full_scan("watch_dir recreated").await;
            }
            Err(e) => tracing::error!(error = %e, "cannot watch watch_dir again; will retry"),
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
                if path == self.config.root {
                    self.check_root().await;
                }
            }
            Change::DirCreated(path) => self.scan(path, "new directory").await,
            Change::Rescan(reason) => {
                // Lost events may include the close of a file marked as being written:
                // trust the scan's settle check instead, or such a file would wait forever.
                self.writing.clear();
                self.full_scan(reason).await;
            }
        }
    }

    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.config.root)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
    }

    fn excluded(&self, path: &Path) -> bool {
        self.relative(path)
            .is_none_or(|r| self.config.exclude.is_excluded(r))
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
            Box::pin(self.walk(path, "directory moved in", true)).await;
        } else if file_type.is_file() {
            self.queue.push(path);
        } else {
            self.report_skip(&path, file_kind(&file_type));
        }
    }

    /// A deferred scanned file: take it once it has settled.
    async fn consider_settling(&mut self, path: PathBuf) {
        if let Ok(meta) = tokio::fs::symlink_metadata(&path).await {
            self.take_found(Found {
                path,
                file_type: meta.file_type(),
                meta: Some(meta),
            });
        }
    }

    fn already_recorded(&self, found: &Found) -> bool {
        let (Some(meta), Some(relative)) = (&found.meta, self.relative(&found.path)) else {
            return false;
        };
        self.config.skip_recorded
            && matches!(self.ledger.get(relative), Ok(Some(r)) if r.is_uploaded_as(&FileIdentity::of(meta)))
    }

    /// Queues a scanned file that has settled, or defers it; true if it was queued.
    fn take_found(&mut self, found: Found) -> bool {
        if !found.file_type.is_file() {
            let kind = file_kind(&found.file_type);
            self.report_skip(&found.path, kind);
            return false;
        }
        if self.writing.contains(&found.path) || self.already_recorded(&found) {
            return false; // a close event will queue it, or there is nothing to do
        }
        let age = found
            .meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or(Duration::ZERO);
        if age >= self.config.settle {
            self.queue.push(found.path);
            return true;
        }
        if self.deferred_set.insert(found.path.clone()) {
            self.deferred.insert(found.path, self.config.settle - age);
        }
        false
    }

    /// Scans the whole tree, then forgets ledger records of files that are gone.
    async fn full_scan(&mut self, reason: &'static str) {
        if dir_identity(&self.config.root).is_none() {
            return; // check_root reports it
        }
        self.scan(self.config.root.clone(), reason).await;
        let root = self.config.root.clone();
        let ledger = self.ledger.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            ledger.prune(|relative| std::fs::symlink_metadata(root.join(relative)).is_ok())
        })
        .await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(records = n, "forgot ledger records of files that are gone")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "ledger pruning failed"),
            Err(e) => tracing::warn!(error = %e, "ledger pruning task failed"),
        }
    }

    /// Walks `dir` (never following symlinks) and takes every complete file.
    async fn scan(&mut self, dir: PathBuf, reason: &'static str) {
        self.walk(dir, reason, false).await;
    }

    /// Walks `dir` and takes every file in it; `moved_in`: the directory was renamed into
    /// the tree as a whole, so its files are complete however new they are. Files are
    /// queued in chunks as the walk finds them, so uploads start before a large tree has
    /// been read to the end.
    async fn walk(&mut self, dir: PathBuf, reason: &'static str, moved_in: bool) {
        let root = self.config.root.clone();
        let exclude = self.config.exclude.clone();
        let started = std::time::Instant::now();
        let (chunks, mut found) = mpsc::channel::<Vec<Found>>(4);
        let walker = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            let mut chunk = Vec::with_capacity(WALK_CHUNK);
            let entries = walkdir::WalkDir::new(&dir)
                .follow_links(false)
                .into_iter()
                .filter_entry(|e| {
                    e.path()
                        .strip_prefix(&root)
                        .map(|r| r.as_os_str().is_empty() || !exclude.is_excluded(r))
                        .unwrap_or(false)
                });
            for entry in entries {
                match entry {
                    Ok(entry) if entry.file_type().is_dir() => {}
                    Ok(entry) => {
                        chunk.push(Found {
                            // Only the settle rule needs the age; a moved-in tree is complete.
                            meta: if moved_in {
                                None
                            } else {
                                entry.metadata().ok()
                            },
                            file_type: entry.file_type(),
                            path: entry.into_path(),
                        });
                        if chunk.len() == WALK_CHUNK
                            && chunks.blocking_send(std::mem::take(&mut chunk)).is_err()
                        {
                            return errors; // the intake stopped
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if !chunk.is_empty() {
                let _ = chunks.blocking_send(chunk);
            }
            errors
        });
        let (mut files, mut queued) = (0usize, 0usize);
        while let Some(chunk) = found.recv().await {
            files += chunk.len();
            for f in chunk {
                if moved_in && f.file_type.is_file() && !self.writing.contains(&f.path) {
                    self.queue.push(f.path);
                    queued += 1;
                } else {
                    queued += usize::from(self.take_found(f));
                }
            }
        }
        match walker.await {
            Ok(errors) => {
                for error in errors {
                    tracing::warn!(%error, "scan could not read an entry");
                }
            }
            Err(e) => tracing::error!(error = %e, "scan task failed"),
        }
        tracing::info!(
            reason,
            files,
            queued,
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

    struct Fixture {
        intake: Intake,
        queue: Arc<Queue>,
        _state: tempfile::TempDir,
    }

    fn intake(root: &Path, settle: Duration) -> Fixture {
        let queue = Arc::new(Queue::new());
        let state = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(state.path()).unwrap());
        let config = IntakeConfig {
            root: root.to_owned(),
            exclude: Exclude::new(&crate::config::default_exclude()).unwrap(),
            settle,
            rescan_interval: Duration::from_secs(300),
            skip_recorded: true,
        };
        let watcher = DirWatcher::start(root).unwrap();
        Fixture {
            intake: Intake::new(config, watcher, queue.clone(), ledger),
            queue,
            _state: state,
        }
    }

    fn drain(queue: &Queue) -> Vec<PathBuf> {
        let mut got = Vec::new();
        while let Some(p) = queue.try_pop() {
            queue.finish(&p);
            got.push(p);
        }
        got.sort();
        got
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

        let mut f = intake(root, Duration::ZERO);
        f.intake.scan(root.to_owned(), "test").await;
        assert_eq!(
            drain(&f.queue),
            vec![root.join("a.txt"), root.join("sub/b.txt")]
        );
        assert_eq!(f.intake.reported.len(), 2, "link and fifo reported");
    }

    #[tokio::test]
    async fn fresh_or_busy_files_wait_for_settle_or_close() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("fresh"), b"a").unwrap();
        std::fs::write(root.join("busy"), b"b").unwrap();
        let mut f = intake(root, Duration::from_secs(60));
        f.intake.on_change(Change::Writing(root.join("busy"))).await;
        f.intake.scan(root.to_owned(), "test").await;
        assert_eq!(f.queue.depth(), 0);
        assert!(f.intake.deferred_set.contains(&root.join("fresh")));
        assert!(!f.intake.deferred_set.contains(&root.join("busy")));
        f.intake.on_change(Change::Closed(root.join("busy"))).await;
        assert_eq!(drain(&f.queue), vec![root.join("busy")]);
    }

    #[tokio::test]
    async fn rescans_skip_what_the_ledger_has_and_prune_what_is_gone() {
        use crate::ledger::{FileRecord, FileState};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("done"), b"uploaded before").unwrap();
        std::fs::write(root.join("new"), b"not yet").unwrap();
        let mut f = intake(root, Duration::ZERO);
        let record = |path: &str| FileRecord {
            identity: FileIdentity::of(&std::fs::symlink_metadata(root.join(path)).unwrap()),
            state: FileState::Uploaded {
                key: "k".into(),
                crc32c: "c".into(),
            },
            updated_unix: 0,
        };
        f.intake
            .ledger
            .put_later(Path::new("done"), &record("done"))
            .await
            .unwrap();
        let mut gone = record("done");
        gone.identity.inode += 1;
        f.intake
            .ledger
            .put_later(Path::new("deleted"), &gone)
            .await
            .unwrap();

        f.intake.full_scan("test").await;
        assert_eq!(drain(&f.queue), vec![root.join("new")]);
        assert_eq!(
            f.intake.ledger.len().unwrap(),
            1,
            "record of the deleted file pruned"
        );

        // A recorded file that changed since is taken again.
        std::fs::write(root.join("done"), b"changed content").unwrap();
        f.intake.full_scan("test").await;
        assert_eq!(drain(&f.queue), vec![root.join("done"), root.join("new")]);
    }
}
