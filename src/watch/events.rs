//! The inotify watch: events reduced to the [`Change`]s intake acts on, handed over without
//! ever waiting on the intake.
//!
//! Every watch is added beneath the held `watch_dir` ([`Tree`]): the directory is opened
//! there without following any link, and inotify is given `/proc/self/fd/N`, which names
//! exactly that directory. A directory swapped for a link is never watched through it, and
//! the watch follows its inode, whatever its path becomes. Each watch descriptor maps to
//! its directory's path relative to `watch_dir`; a directory renamed within the tree is
//! watched again under its new name (inotify returns the same descriptor), one moved out
//! loses its watches.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::{Notify, mpsc};

use crate::events::{Event, WatchLimitReached};
use crate::tree::Tree;

const CHANNEL_CAPACITY: usize = 16 * 1024;

/// What each directory is watched for (`IN_ONLYDIR`: a directory or nothing).
const MASK: WatchMask = WatchMask::ATTRIB
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
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
pub enum Change {
    /// Closed after writing: complete.
    Closed(PathBuf),
    /// Renamed or moved into the tree (file or directory): complete as it stands.
    Arrived(PathBuf),
    /// A new name appeared: created (someone is about to write it), or a hard link.
    Created(PathBuf),
    /// Written to: someone is writing it; wait for the close.
    Writing(PathBuf),
    /// Its metadata changed (a touch, chmod): no new data.
    Touched(PathBuf),
    /// Removed or moved away.
    Gone(PathBuf),
    /// A directory was created: it may hold files from before its watch was added.
    DirCreated(PathBuf),
    /// Events were lost (kernel queue overflow) or the watch failed: rescan everything.
    Rescan(&'static str),
}

/// The change an event on the name `path` (in a watched directory) means, if any.
pub fn change_of(mask: EventMask, path: PathBuf) -> Option<Change> {
    let is_dir = mask.contains(EventMask::ISDIR);
    Some(if mask.contains(EventMask::CLOSE_WRITE) {
        Change::Closed(path)
    } else if mask.contains(EventMask::CREATE) {
        if is_dir {
            Change::DirCreated(path)
        } else {
            Change::Created(path)
        }
    } else if mask.contains(EventMask::MODIFY) {
        Change::Writing(path)
    } else if mask.contains(EventMask::ATTRIB) {
        Change::Touched(path)
    } else if mask.contains(EventMask::MOVED_TO) {
        Change::Arrived(path)
    } else if mask.intersects(EventMask::MOVED_FROM | EventMask::DELETE) {
        Change::Gone(path)
    } else {
        return None;
    })
}

/// Test-only: the variable [`SLOW_EVENTS_VAR`] (microseconds) makes the watcher linger on
/// each event, as a loaded machine may, so that the tests can hold open the window between
/// "a directory was created" and the watcher's own watch on it.
pub const SLOW_EVENTS_VAR: &str = "S3DROP_TEST_SLOW_EVENTS_US";

fn test_event_delay() -> Option<std::time::Duration> {
    let micros: u64 = std::env::var(SLOW_EVENTS_VAR).ok()?.parse().ok()?;
    tracing::warn!("{SLOW_EVENTS_VAR} is set: every watch event is delayed (tests only)");
    Some(std::time::Duration::from_micros(micros))
}

/// Test-only: the variable [`MAX_WATCHES_VAR`] makes the watcher behave as if the kernel's
/// `fs.inotify.max_user_watches` were reached after that many watches (a sysctl is global:
/// lowering it would starve every other test's watcher).
pub const MAX_WATCHES_VAR: &str = "S3DROP_TEST_MAX_WATCHES";

fn test_max_watches() -> Option<usize> {
    let max: usize = std::env::var(MAX_WATCHES_VAR).ok()?.parse().ok()?;
    tracing::warn!("{MAX_WATCHES_VAR} is set: at most {max} watches (tests only)");
    Some(max)
}

/// The watch descriptors and the directories (relative to `watch_dir`) they watch.
struct Watched {
    watches: Watches,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// The watch limit was met (said once per run).
    limit_reported: bool,
    /// Tests: the limit ([`MAX_WATCHES_VAR`]).
    max: Option<usize>,
}

struct Shared {
    tree: Arc<Tree>,
    watched: Mutex<Watched>,
}

impl Shared {
    /// Watches the directory `rel` (through a descriptor opened beneath the tree). A
    /// directory gone, or reached only through a link, is not watched and not an error.
    fn watch_one(&self, rel: &Path) -> Result<(), WatchError> {
        let handle = match self.tree.dir_handle(rel) {
            Ok(handle) => handle,
            Err(e) => {
                tracing::debug!(dir = %rel.display(), error = %e, "not watched");
                return Ok(());
            }
        };
        let named = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let mut watched = self.watched.lock().expect("watch lock");
        if watched.max.is_some_and(|max| watched.dirs.len() >= max) {
            return Err(WatchError::WatchLimit {
                path: self.tree.path().join(rel),
            });
        }
        match watched.watches.add(&named, MASK) {
            Ok(wd) => {
                watched.dirs.insert(wd, rel.to_owned());
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Err(WatchError::WatchLimit {
                path: self.tree.path().join(rel),
            }),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(WatchError::Other {
                path: self.tree.path().join(rel),
                message: e.to_string(),
            }),
        }
    }

    /// Watches `rel` and every directory below it. At the kernel's watch limit it watches
    /// what it can and says so once (the periodic rescan finds the files of the rest).
    fn watch_tree(&self, rel: &Path) -> Result<(), WatchError> {
        let result = self.watch_one(rel).and_then(|()| {
            self.tree
                .subdirectories(rel)
                .iter()
                .try_for_each(|dir| self.watch_one(dir))
        });
        match result {
            Err(WatchError::WatchLimit { path }) => {
                let mut watched = self.watched.lock().expect("watch lock");
                if !std::mem::replace(&mut watched.limit_reported, true) {
                    let count = watched.dirs.len();
                    drop(watched);
                    WatchLimitReached {
                        first_unwatched: &path,
                        watched: count,
                    }
                    .emit();
                }
                Ok(())
            }
            other => other,
        }
    }

    /// A directory moved out of sight: its watches (and its subdirectories') go. Moved
    /// within the tree, the arrival watches it again under its new name.
    fn unwatch_tree(&self, rel: &Path) {
        let mut guard = self.watched.lock().expect("watch lock");
        let watched = &mut *guard;
        let gone: Vec<WatchDescriptor> = watched
            .dirs
            .iter()
            .filter(|(_, dir)| dir.starts_with(rel))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            watched.dirs.remove(&wd);
            let _ = watched.watches.remove(wd);
        }
    }

    /// The changes one event means, with the watch bookkeeping it calls for.
    fn changes_of(&self, event: inotify::EventOwned) -> Vec<Change> {
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            return vec![Change::Rescan("inotify queue overflowed")];
        }
        let dir = {
            let mut watched = self.watched.lock().expect("watch lock");
            if event.mask.contains(EventMask::IGNORED) {
                watched.dirs.remove(&event.wd);
                return Vec::new();
            }
            match watched.dirs.get(&event.wd) {
                Some(dir) => dir.clone(),
                None => return Vec::new(), // a watch just removed
            }
        };
        let Some(name) = event.name else {
            // About the watched directory itself: only watch_dir's own end matters here
            // (a subdirectory's is also an event in its parent).
            if dir.as_os_str().is_empty()
                && event
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
            {
                return vec![Change::Gone(self.tree.path().to_owned())];
            }
            return Vec::new();
        };
        let rel = dir.join(&name);
        if event.mask.contains(EventMask::ISDIR) {
            if event
                .mask
                .intersects(EventMask::CREATE | EventMask::MOVED_TO)
            {
                if let Err(e) = self.watch_tree(&rel) {
                    tracing::warn!(error = %e, dir = %rel.display(), "cannot watch the new directory {}: {e}; the periodic rescan covers it", rel.display());
                }
            } else if event.mask.contains(EventMask::MOVED_FROM) {
                self.unwatch_tree(&rel);
            }
        }
        change_of(event.mask, self.tree.path().join(rel))
            .into_iter()
            .collect()
    }
}

/// The running inotify watch. Dropping it stops the watch.
pub struct DirWatcher {
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
    pub changes: mpsc::Receiver<Change>,
    pub lost: Arc<Notify>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl DirWatcher {
    /// Watches `tree` recursively (never through a link). Events are handed over without
    /// waiting; if the channel is full they are dropped and a rescan is requested instead.
    pub fn start(tree: Arc<Tree>) -> Result<DirWatcher, WatchError> {
        let instance = |e: std::io::Error| WatchError::InstanceLimit {
            message: e.to_string(),
        };
        let inotify = Inotify::init().map_err(instance)?;
        let shared = Arc::new(Shared {
            watched: Mutex::new(Watched {
                watches: inotify.watches(),
                dirs: HashMap::new(),
                limit_reported: false,
                max: test_max_watches(),
            }),
            tree,
        });
        let root = Path::new("");
        shared.watch_one(root)?;
        if shared.watched.lock().expect("watch lock").dirs.is_empty() {
            return Err(WatchError::Other {
                path: shared.tree.path().to_owned(),
                message: "it is gone, or not a directory".into(),
            });
        }
        shared.watch_tree(root)?;

        let (tx, changes) = mpsc::channel(CHANNEL_CAPACITY);
        let lost = Arc::new(Notify::new());
        let mut events = inotify
            .into_event_stream(vec![0u8; 64 * 1024])
            .map_err(instance)?;
        let (reader_shared, lost_tx, slow) = (shared.clone(), lost.clone(), test_event_delay());
        let reader = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Some(delay) = slow {
                    tokio::time::sleep(delay).await;
                }
                let batch = match event {
                    Ok(event) => reader_shared.changes_of(event),
                    Err(e) => {
                        tracing::warn!(error = %e, "the watch failed: {e}; rescanning");
                        vec![Change::Rescan("watch error")]
                    }
                };
                for change in batch {
                    if tx.try_send(change).is_err() {
                        lost_tx.notify_one();
                    }
                }
            }
        });
        Ok(DirWatcher {
            shared,
            reader,
            changes,
            lost,
        })
    }

    /// How many directories are watched now.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.shared.watched.lock().expect("watch lock").dirs.len()
    }

    /// Makes sure `dir` (a directory that just appeared) and everything below it is
    /// watched before it is scanned: the watcher adds the watch itself, but a scan started
    /// on the event could otherwise run before, and directories made inside it before its
    /// watch existed have no event at all. Watching a watched directory again is harmless
    /// (inotify returns the same descriptor).
    pub fn watch_new_dir(&mut self, dir: &Path) -> Result<(), WatchError> {
        match self.shared.tree.relative(dir) {
            Some(rel) => self.shared.watch_tree(rel),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_kind_means_one_change() {
        let p = || PathBuf::from("/d/a");
        let table = [
            (EventMask::CLOSE_WRITE, Some(Change::Closed(p()))),
            (EventMask::MOVED_TO, Some(Change::Arrived(p()))),
            (
                EventMask::MOVED_TO | EventMask::ISDIR,
                Some(Change::Arrived(p())),
            ),
            (EventMask::MODIFY, Some(Change::Writing(p()))),
            (EventMask::DELETE, Some(Change::Gone(p()))),
            (EventMask::MOVED_FROM, Some(Change::Gone(p()))),
            (EventMask::CREATE, Some(Change::Created(p()))),
            (
                EventMask::CREATE | EventMask::ISDIR,
                Some(Change::DirCreated(p())),
            ),
            (EventMask::ATTRIB, Some(Change::Touched(p()))),
            // A close after reading only is not a completed write (and not watched).
            (EventMask::CLOSE_NOWRITE, None),
        ];
        for (mask, want) in table {
            assert_eq!(change_of(mask, p()), want, "{mask:?}");
        }
    }

    async fn next(w: &mut DirWatcher) -> Change {
        tokio::time::timeout(std::time::Duration::from_secs(5), w.changes.recv())
            .await
            .expect("an event")
            .expect("the watch runs")
    }

    /// A directory swapped for a link is never watched through it: what happens in the
    /// link's target is not seen. Renamed within the tree, a directory's events carry its
    /// new name; moved out, it is no longer watched.
    #[tokio::test]
    async fn watches_follow_no_link_and_track_renames() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("drop"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let tree = Arc::new(Tree::open(&root).unwrap());
        let mut w = DirWatcher::start(tree).unwrap();

        // A link to a directory outside, announced as a new directory: not watched.
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        w.watch_new_dir(&root.join("link")).unwrap();
        assert_eq!(next(&mut w).await, Change::Created(root.join("link")));
        std::fs::write(outside.join("secret"), b"x").unwrap();

        // Renamed within the tree: events carry the new name.
        std::fs::rename(root.join("a"), root.join("b")).unwrap();
        assert_eq!(next(&mut w).await, Change::Gone(root.join("a")));
        assert_eq!(next(&mut w).await, Change::Arrived(root.join("b")));
        std::fs::write(root.join("b/f"), b"x").unwrap();
        assert_eq!(next(&mut w).await, Change::Created(root.join("b/f")));
        assert_eq!(next(&mut w).await, Change::Writing(root.join("b/f")));
        assert_eq!(next(&mut w).await, Change::Closed(root.join("b/f")));

        // Moved out: no longer watched (its next event would carry a name inside).
        std::fs::rename(root.join("b"), dir.path().join("b-out")).unwrap();
        assert_eq!(next(&mut w).await, Change::Gone(root.join("b")));
        std::fs::write(dir.path().join("b-out/g"), b"x").unwrap();
        std::fs::write(root.join("canary"), b"x").unwrap();
        assert_eq!(next(&mut w).await, Change::Created(root.join("canary")));
    }

    /// Directories removed or moved away release their watches: cycles of creating and
    /// removing many directories end with watch_dir's own watch alone.
    #[tokio::test]
    async fn directories_removed_or_moved_away_release_their_watches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("drop");
        std::fs::create_dir_all(&root).unwrap();
        let tree = Arc::new(Tree::open(&root).unwrap());
        let mut w = DirWatcher::start(tree).unwrap();
        for cycle in 0..5 {
            for i in 0..300 {
                let d = root.join(format!("c{cycle}-{i}"));
                std::fs::create_dir_all(d.join("inner")).unwrap();
                w.watch_new_dir(&d).unwrap();
            }
            assert_eq!(w.watched(), 1 + 600, "cycle {cycle}: all watched");
            for i in 0..300 {
                let d = root.join(format!("c{cycle}-{i}"));
                if i % 2 == 0 {
                    std::fs::remove_dir_all(&d).unwrap();
                } else {
                    std::fs::rename(&d, dir.path().join(format!("away-{cycle}-{i}"))).unwrap();
                }
            }
            // The watcher takes the kernel's IN_IGNORED (removed) and MOVED_FROM (moved
            // away) in turn; the changes are drained meanwhile.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while w.watched() > 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} watched",
                    w.watched()
                );
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(50), w.changes.recv())
                        .await;
            }
        }
    }
}
