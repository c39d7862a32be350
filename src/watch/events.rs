//! The inotify watch (through notify): events reduced to the [`Change`]s intake acts on,
//! handed over without ever blocking notify's thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};

const CHANNEL_CAPACITY: usize = 16 * 1024;

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

pub fn changes_of(event: Event) -> Vec<Change> {
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
        EventKind::Create(_) => Change::Created(path),
        EventKind::Modify(ModifyKind::Data(_)) => Change::Writing(path),
        EventKind::Modify(ModifyKind::Metadata(_)) => Change::Touched(path),
        // notify also sends `Both` for a rename inside the tree; its `To` half is enough.
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Change::Arrived(path),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            Change::Gone(path)
        }
        _ => return Vec::new(),
    };
    vec![change]
}

/// Test-only: the variable [`SLOW_EVENTS_VAR`] (microseconds) makes the notify thread
/// linger on each event, as a loaded machine may, so that the tests can hold open the
/// window between "a directory was created" and notify's own watch on it.
pub const SLOW_EVENTS_VAR: &str = "S3DROP_TEST_SLOW_EVENTS_US";

fn test_event_delay() -> Option<std::time::Duration> {
    let micros: u64 = std::env::var(SLOW_EVENTS_VAR).ok()?.parse().ok()?;
    tracing::warn!("{SLOW_EVENTS_VAR} is set: every watch event is delayed (tests only)");
    Some(std::time::Duration::from_micros(micros))
}

/// The running inotify watch. Dropping it stops the watch.
pub struct DirWatcher {
    watcher: RecommendedWatcher,
    pub changes: mpsc::Receiver<Change>,
    pub lost: Arc<Notify>,
}

impl DirWatcher {
    /// Watches `root` recursively (not following symlinks). Events are handed over without
    /// blocking the notify thread; if the channel is full they are dropped and a rescan is
    /// requested instead.
    pub fn start(root: &Path) -> Result<DirWatcher, WatchError> {
        let (tx, changes) = mpsc::channel(CHANNEL_CAPACITY);
        let lost = Arc::new(Notify::new());
        let lost_tx = lost.clone();
        let slow = test_event_delay();
        let handler = move |result: notify::Result<Event>| {
            if let Some(delay) = slow {
                std::thread::sleep(delay);
            }
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
            watcher,
            changes,
            lost,
        })
    }

    /// Makes sure `dir` (a directory that just appeared) and everything below it is
    /// watched before it is scanned. notify adds the watch for a new directory itself, but
    /// only after it has handed over the batch of events that announced it, so a scan
    /// started on that event could run before the watch exists and miss what is written
    /// in between. Watching an already watched path is harmless (inotify returns the same
    /// watch).
    pub fn watch_new_dir(&mut self, dir: &Path) -> Result<(), WatchError> {
        let watcher = &mut self.watcher;
        let mut watch = || watcher.watch(dir, RecursiveMode::Recursive);
        // A round trip to notify's thread: short, but not for a runtime worker to sit in.
        let watched = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(watch),
            _ => watch(),
        };
        watched.map_err(|e| watch_error(dir, e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, Flag, RemoveKind};

    fn ev(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn each_event_kind_means_one_change() {
        let close_write = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let close_read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        let renamed_in = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let written = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let removed = EventKind::Remove(RemoveKind::File);
        let p = || PathBuf::from("/d/a");
        let table = [
            (close_write, vec![Change::Closed(p())]),
            (renamed_in, vec![Change::Arrived(p())]),
            (written, vec![Change::Writing(p())]),
            (removed, vec![Change::Gone(p())]),
            // A close after reading only is not a completed write.
            (close_read, vec![]),
        ];
        for (kind, want) in table {
            assert_eq!(changes_of(ev(kind, "/d/a")), want, "{kind:?}");
        }
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(matches!(changes_of(overflow)[..], [Change::Rescan(_)]));
    }
}
