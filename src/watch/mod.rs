//! From inotify events and directory scans to "this file is complete, upload it".
//!
//! A file is complete when it is closed after writing, or when it is renamed or moved into
//! the tree. Files found by a scan (backlog at start, a directory that appeared with files
//! already in it) are taken once they have not been modified for `settle`, unless an event
//! shows someone is still writing them.
//!
//! [`events`] turns inotify events into changes, [`scan`] walks directories; the
//! [`Intake`] here decides, from both, which files are complete and queues them.

mod events;
mod scan;
mod writers;

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::config::Exclude;
use crate::events::{
    DropReason, Dropped, Event, EventsLost, NewDirectoriesScanned, Rescan, ScanSkipped, Scanned,
    TakenUnwritten, WatchDir,
};
use crate::file::Kind;
use crate::ledger::Ledger;
use crate::metrics::RescanReason;
use crate::queue::Queue;
use crate::supervise::Fatal;
use crate::tree::{Entry, Tree};

use events::Change;
pub use events::{DirWatcher, MAX_WATCHES_VAR, SLOW_EVENTS_VAR, WatchError};
use scan::Found;
use writers::Writers;

/// Settings for [`Intake`].
pub struct IntakeConfig {
    /// `watch_dir`, held: every name is resolved beneath it.
    pub tree: Arc<Tree>,
    pub exclude: Exclude,
    pub settle: Duration,
    /// A closed or renamed-in file must stay untouched this long before it is taken.
    pub quiet_period: Duration,
    pub rescan_interval: Duration,
    /// Keep mode: a scanned file the ledger already has as uploaded (same identity) needs no
    /// work at all. In delete/move mode it still needs its after-upload action.
    pub skip_recorded: bool,
}

/// What a walk covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanOf {
    /// The whole tree, for this reason.
    Full(RescanReason),
    /// A directory just created (thousands when a tree is copied in: summarized).
    NewDirectory,
    /// A directory renamed into the tree: its files are complete however new.
    MovedIn,
}

/// New directories are scanned one by one (a copied tree makes thousands); they are
/// logged as one summary at most this often.
const NEW_DIR_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// How often the existence of `watch_dir` itself is checked.
const ROOT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Turns changes and scans into queued paths.
pub struct Intake {
    config: IntakeConfig,
    queue: Arc<Queue>,
    ledger: Arc<Ledger>,
    /// Files with a create/write event and no close yet.
    writing: Writers,
    /// When the last periodic rescan ran.
    last_periodic: tokio::time::Instant,
    /// Scans of new directories since the last summary: directories, files, queued.
    new_dirs: (usize, usize, usize),
    /// Closed or renamed-in files in their quiet period.
    quiet: DelayQueue<PathBuf>,
    quiet_keys: HashMap<PathBuf, tokio_util::time::delay_queue::Key>,
    /// Scanned files waiting to settle.
    deferred: DelayQueue<PathBuf>,
    deferred_set: HashSet<PathBuf>,
    /// Non-regular files already reported, so rescans do not repeat the warning.
    reported: HashSet<PathBuf>,
    /// The watch on `root`, absent while `root` is missing.
    watcher: Option<DirWatcher>,
    /// (dev, inode) of `root` when it was last watched; `None` while it is missing or
    /// refused.
    root_identity: Option<(u64, u64)>,
    /// What was last said about a missing or refused `watch_dir` (said once).
    root_problem: Option<RootProblem>,
    #[cfg(test)]
    pub probe: Arc<std::sync::Mutex<Probe>>,
    #[cfg(test)]
    gone: HashSet<PathBuf>,
}

/// What the reference model (src/model.rs) reads to know the intake has caught up with
/// the producers, as it stood between two steps of its loop (never halfway through one).
#[cfg(test)]
#[derive(Default, Clone, Debug)]
pub struct Probe {
    /// Every path whose removal (or move away) was handled.
    pub gone: HashSet<PathBuf>,
    /// Files being written, in their quiet period, or settling.
    pub waiting: usize,
}

/// What is wrong with `watch_dir` itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootProblem {
    Gone,
    /// Not a directory (a symlink is never followed).
    Replaced,
}

/// How long ago the file was last modified (zero if in the future).
fn age_of(entry: &Entry) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Duration::from_nanos((now - entry.identity.mtime_ns).clamp(0, u64::MAX as i128) as u64)
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
        let settle = config.settle;
        Intake {
            root_identity: config.tree.identity().ok(),
            root_problem: None,
            config,
            queue,
            ledger,
            writing: Writers::new(settle),
            last_periodic: tokio::time::Instant::now(),
            new_dirs: (0, 0, 0),
            quiet: DelayQueue::new(),
            quiet_keys: HashMap::new(),
            deferred: DelayQueue::new(),
            deferred_set: HashSet::new(),
            reported: HashSet::new(),
            watcher: Some(watcher),
            #[cfg(test)]
            probe: Arc::default(),
            #[cfg(test)]
            gone: HashSet::new(),
        }
    }

    /// Scans the whole tree once (the backlog), then follows the watcher until cancelled.
    /// `rescan_now` (SIGHUP) asks for a full scan at once; `ready` fires once the backlog
    /// scan has queued everything found. Ending before `cancel` is fatal to the daemon.
    pub async fn run(
        mut self,
        rescan_now: Arc<Notify>,
        ready: tokio::sync::oneshot::Sender<()>,
        cancel: CancellationToken,
    ) -> Result<(), Fatal> {
        self.full_scan(RescanReason::Startup).await;
        let _ = ready.send(());
        let mut rescan = tokio::time::interval(self.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.reset(); // the first tick would fire at once; the backlog scan just ran
        let mut root_check = tokio::time::interval(ROOT_CHECK_INTERVAL);
        let mut summary = tokio::time::interval(NEW_DIR_SUMMARY_INTERVAL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.summarize_new_dirs();
                    return Ok(());
                }
                change = next_change(&mut self.watcher) => match change {
                    Some(change) => self.on_change(change).await,
                    None => self.watcher = None,
                },
                Some(expired) = poll_fn(|cx| self.deferred.poll_expired(cx)), if !self.deferred.is_empty() => {
                    let path = expired.into_inner();
                    self.deferred_set.remove(&path);
                    self.consider_settling(path).await;
                }
                path = poll_fn(|cx| self.writing.poll_unwritten(cx)) => self.consider_unwritten(path).await,
                Some(quiet) = poll_fn(|cx| self.quiet.poll_expired(cx)), if !self.quiet.is_empty() => {
                    let path = quiet.into_inner();
                    self.quiet_keys.remove(&path);
                    self.consider_complete(path).await;
                }
                _ = rescan.tick() => self.periodic_rescan().await,
                _ = rescan_now.notified() => self.full_scan(RescanReason::Sighup).await,
                _ = root_check.tick() => self.check_root().await,
                _ = summary.tick() => self.summarize_new_dirs(),
            }
            #[cfg(test)]
            {
                *self.probe.lock().unwrap() = Probe {
                    gone: self.gone.clone(),
                    waiting: self.writing.len() + self.quiet_keys.len() + self.deferred_set.len(),
                };
            }
        }
    }

    /// Notices `watch_dir` disappearing (the watch dies with it), replaced by something
    /// that is not a directory (a symlink is never followed: nothing is scanned until a
    /// directory is back), and recreated (hold it, watch it again and scan it).
    async fn check_root(&mut self) {
        let tree = self.config.tree.clone();
        let problem = match tree.path_now() {
            Ok(None) => Some(RootProblem::Gone),
            Ok(Some(entry)) if entry.kind != Kind::Directory => Some(RootProblem::Replaced),
            Ok(Some(entry)) => {
                let now = (entry.identity.dev, entry.identity.inode);
                if Some(now) == self.root_identity && self.watcher.is_some() {
                    return;
                }
                None
            }
            Err(e) => {
                tracing::warn!(watch_dir = %tree.path().display(), error = %e, "cannot look at watch_dir {}: {e}; looking again shortly", tree.path().display());
                return;
            }
        };
        if let Some(problem) = problem {
            if self.root_problem != Some(problem) {
                match problem {
                    RootProblem::Gone => WatchDir::Gone(tree.path()).emit(),
                    RootProblem::Replaced => WatchDir::Replaced(tree.path()).emit(),
                }
            }
            self.root_problem = Some(problem);
            self.watcher = None;
            self.writing.clear();
            self.root_identity = None;
            return;
        }
        let watched = tree
            .reopen()
            .map_err(|e| e.to_string())
            .and_then(|()| DirWatcher::start(tree.clone()).map_err(|e| e.to_string()));
        match watched {
            Ok(watcher) => {
                WatchDir::Back(tree.path()).emit();
                self.watcher = Some(watcher);
                self.root_identity = tree.identity().ok();
                self.root_problem = None;
                self.full_scan(RescanReason::Recreated).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch watch_dir again: {e}; trying again shortly")
            }
        }
    }

    /// What `path` (below `watch_dir`) is, never following a link; `None` if it cannot be
    /// reached that way (gone, or a link on its path).
    fn stat(&self, path: &Path) -> Option<Entry> {
        let relative = self.relative(path)?;
        match self.config.tree.stat(relative) {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot be reached beneath watch_dir");
                None
            }
        }
    }

    async fn on_change(&mut self, change: Change) {
        #[cfg(test)]
        if let Change::Gone(path) = &change {
            self.gone.insert(path.clone());
        }
        match change {
            Change::Closed(path) | Change::Arrived(path) => {
                self.writing.finished(&path);
                self.hold(path).await;
            }
            Change::Created(path) => {
                self.release(&path);
                self.writing.created(path);
            }
            Change::Writing(path) => {
                self.release(&path);
                self.writing.written(path);
            }
            Change::Touched(path) => {
                if let Some(key) = self.quiet_keys.get(&path) {
                    self.quiet.reset(key, self.config.quiet_period);
                }
            }
            Change::Gone(path) => {
                self.release(&path);
                self.writing.finished(&path);
                if path == self.config.tree.path() {
                    self.check_root().await;
                }
            }
            Change::DirCreated(path) => {
                self.watch_new_dir(&path);
                self.walk(path, ScanOf::NewDirectory).await
            }
            Change::Rescan(reason) => {
                // Changes still queued are older than the loss: take them first, or one
                // of them could mark a file "being written" again after the clear below.
                self.drain_queued().await;
                // Lost events may include the close of a file marked as being written:
                // trust the scan's settle check instead, or such a file would wait forever.
                self.writing.clear();
                EventsLost(reason).emit();
                self.full_scan(RescanReason::Overflow).await;
            }
        }
    }

    /// A file was closed or renamed in: it is complete once it stays untouched for the
    /// quiet period (a close again or a touch restarts it). A directory moved in is not
    /// held.
    async fn hold(&mut self, path: PathBuf) {
        // A directory moved in brings finished files: walked at once, not held.
        let is_dir = self.stat(&path).is_some_and(|e| e.kind == Kind::Directory);
        if self.config.quiet_period.is_zero() || is_dir {
            return self.consider_complete(path).await;
        }
        match self.quiet_keys.get(&path) {
            Some(key) => self.quiet.reset(key, self.config.quiet_period),
            None => {
                let key = self.quiet.insert(path.clone(), self.config.quiet_period);
                self.quiet_keys.insert(path, key);
            }
        }
    }

    /// Deleted, renamed away or written again within its quiet period: it was not a
    /// finished file (or a later close will say when it is).
    fn release(&mut self, path: &Path) {
        if let Some(key) = self.quiet_keys.remove(path) {
            self.quiet.remove(&key);
            tracing::debug!(path = %path.display(), "changed within its quiet period; not taken");
        }
    }

    /// Acts on every change already queued (a rescan follows, so queued rescans are
    /// dropped).
    async fn drain_queued(&mut self) {
        while let Some(change) = self
            .watcher
            .as_mut()
            .and_then(|w| w.changes.try_recv().ok())
        {
            if !matches!(change, Change::Rescan(_)) {
                Box::pin(self.on_change(change)).await;
            }
        }
    }

    /// A file created (or linked) `settle` ago and never written since: no close will come
    /// for it. Taken once unmodified for `settle`.
    async fn consider_unwritten(&mut self, path: PathBuf) {
        let Some(entry) = self.stat(&path) else {
            return;
        };
        let age = age_of(&entry);
        if age < self.config.settle {
            self.writing.recheck(path, self.config.settle - age);
            return;
        }
        TakenUnwritten(&path).emit();
        self.consider_complete(path).await;
    }

    /// The safety rescan. Files still waiting for a close that were already idle at the
    /// previous periodic rescan have lost it: they are taken (once settled) like any other.
    async fn periodic_rescan(&mut self) {
        for path in self.writing.idle_since(self.last_periodic) {
            tracing::info!(path = %path.display(), "no close seen for {}, idle since the last periodic rescan; taking it once settled", path.display());
        }
        self.last_periodic = tokio::time::Instant::now();
        self.full_scan(RescanReason::Periodic).await;
    }

    /// Watch first, then scan: whatever lands in a new directory after the scan has read
    /// it has an event.
    fn watch_new_dir(&mut self, dir: &Path) {
        if let Some(watcher) = self.watcher.as_mut()
            && let Err(e) = watcher.watch_new_dir(dir)
        {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the new directory {}: {e}; the periodic rescan covers it", dir.display());
        }
    }

    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        self.config
            .tree
            .relative(path)
            .filter(|r| !r.as_os_str().is_empty())
    }

    fn excluded(&self, path: &Path) -> bool {
        self.relative(path)
            .is_none_or(|r| self.config.exclude.is_excluded(r))
    }

    fn report_skip(&mut self, path: &Path, kind: &'static str) {
        if self.reported.insert(path.to_owned()) {
            Dropped {
                path,
                why: DropReason::NotRegular(kind),
            }
            .emit();
        }
    }

    /// An event says the file is complete.
    async fn consider_complete(&mut self, path: PathBuf) {
        if self.excluded(&path) {
            tracing::debug!(path = %path.display(), "excluded");
            return;
        }
        let Some(entry) = self.stat(&path) else {
            return; // gone before it could be queued
        };
        match entry.kind {
            Kind::Directory => {
                self.watch_new_dir(&path);
                Box::pin(self.walk(path, ScanOf::MovedIn)).await;
            }
            Kind::Regular => self.queue.push(path),
            kind => self.report_skip(&path, kind.name()),
        }
    }

    /// A deferred scanned file: take it once it has settled.
    async fn consider_settling(&mut self, path: PathBuf) {
        if let Some(entry) = self.stat(&path) {
            self.take_found(Found { path, entry });
        }
    }

    fn already_recorded(&self, found: &Found) -> bool {
        let Some(relative) = self.relative(&found.path) else {
            return false;
        };
        self.config.skip_recorded
            && matches!(self.ledger.get(relative), Ok(Some(r)) if r.is_uploaded_as(&found.entry.identity))
    }

    /// Queues a scanned file that has settled, or defers it; true if it was queued.
    fn take_found(&mut self, found: Found) -> bool {
        if found.entry.kind != Kind::Regular {
            self.report_skip(&found.path, found.entry.kind.name());
            return false;
        }
        if self.writing.contains(&found.path) || self.already_recorded(&found) {
            return false; // a close event will queue it, or there is nothing to do
        }
        let age = age_of(&found.entry);
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
    async fn full_scan(&mut self, reason: RescanReason) {
        Rescan(reason).emit();
        if self.root_identity.is_none() {
            ScanSkipped {
                reason,
                dir: self.config.tree.path(),
            }
            .emit();
            return;
        }
        self.walk(self.config.tree.path().to_owned(), ScanOf::Full(reason))
            .await;
        let tree = self.config.tree.clone();
        let ledger = self.ledger.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            ledger.prune(|relative| tree.stat(relative).is_ok())
        })
        .await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(
                    records = n,
                    "forgot {n} ledger records of files that are gone"
                )
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the ledger: {e}"),
            Err(e) => tracing::warn!(error = %e, "the ledger pruning task failed: {e}"),
        }
    }

    /// Walks `dir` and takes every file in it; `moved_in`: the directory was renamed into
    /// the tree as a whole, so its files are complete however new they are. Files are
    /// queued in chunks as the walk finds them, so uploads start before a large tree has
    /// been read to the end.
    async fn walk(&mut self, dir: PathBuf, of: ScanOf) {
        let moved_in = of == ScanOf::MovedIn;
        let started = std::time::Instant::now();
        let Some(relative) = self.config.tree.relative(&dir) else {
            return;
        };
        let (mut found, walker) = scan::start(
            self.config.tree.clone(),
            relative.to_owned(),
            self.config.exclude.clone(),
        );
        let (mut files, mut queued) = (0usize, 0usize);
        while let Some(chunk) = found.recv().await {
            files += chunk.len();
            for f in chunk {
                if moved_in && f.entry.kind == Kind::Regular && !self.writing.contains(&f.path) {
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
                    tracing::warn!(%error, "the scan could not read an entry: {error}");
                }
            }
            Err(e) => tracing::error!(error = %e, "the scan task failed: {e}"),
        }
        // Directories created one by one (a copied tree makes thousands) are summarized;
        // a directory moved in is one operator-visible event.
        let reason = match of {
            ScanOf::NewDirectory => {
                tracing::debug!(dir = %dir.display(), files, queued, "scanned a new directory");
                self.new_dirs.0 += 1;
                self.new_dirs.1 += files;
                self.new_dirs.2 += queued;
                return;
            }
            ScanOf::Full(reason) => Some(reason),
            ScanOf::MovedIn => None,
        };
        Scanned {
            reason,
            dir: &dir,
            files,
            queued,
            took: started.elapsed(),
        }
        .emit();
    }

    fn summarize_new_dirs(&mut self) {
        let (directories, files, queued) = std::mem::take(&mut self.new_dirs);
        if directories > 0 {
            NewDirectoriesScanned {
                directories,
                files,
                queued,
            }
            .emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        intake: Intake,
        queue: Arc<Queue>,
        _state: tempfile::TempDir,
    }

    fn intake(root: &Path, settle: Duration) -> Fixture {
        let queue = Arc::new(Queue::new(root));
        let state = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(state.path()).unwrap());
        let tree = Arc::new(Tree::open(root).unwrap());
        let config = IntakeConfig {
            tree: tree.clone(),
            exclude: Exclude::new(&crate::config::default_exclude()).unwrap(),
            settle,
            quiet_period: Duration::ZERO,
            rescan_interval: Duration::from_secs(300),
            skip_recorded: true,
        };
        let watcher = DirWatcher::start(tree).unwrap();
        Fixture {
            intake: Intake::new(config, watcher, queue.clone(), ledger),
            queue,
            _state: state,
        }
    }

    /// A temporary tree with these files (each holding its own name).
    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, name).unwrap();
        }
        dir
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
        let dir = tree(&["a.txt", "sub/b.txt", "sub/.cache/c.txt", "x.tmp"]);
        let root = dir.path();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        let fifo = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let mut f = intake(root, Duration::ZERO);
        f.intake
            .walk(root.to_owned(), ScanOf::Full(RescanReason::Periodic))
            .await;
        assert_eq!(
            drain(&f.queue),
            vec![root.join("a.txt"), root.join("sub/b.txt")]
        );
        assert_eq!(f.intake.reported.len(), 2, "link and fifo reported");
    }

    #[tokio::test]
    async fn fresh_or_busy_files_wait_for_settle_or_close() {
        let dir = tree(&["fresh", "busy"]);
        let root = dir.path();
        let mut f = intake(root, Duration::from_secs(60));
        f.intake.on_change(Change::Writing(root.join("busy"))).await;
        f.intake
            .walk(root.to_owned(), ScanOf::Full(RescanReason::Periodic))
            .await;
        assert_eq!(f.queue.depth(), 0);
        assert!(f.intake.deferred_set.contains(&root.join("fresh")));
        assert!(!f.intake.deferred_set.contains(&root.join("busy")));
        f.intake.on_change(Change::Closed(root.join("busy"))).await;
        assert_eq!(drain(&f.queue), vec![root.join("busy")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_file_waits_its_quiet_period_and_a_delete_or_write_cancels_it() {
        let dir = tree(&["kept", "journal", "rewritten", "touched"]);
        let root = dir.path();
        let mut f = intake(root, Duration::ZERO);
        f.intake.config.quiet_period = Duration::from_millis(200);
        let start = tokio::time::Instant::now();
        for name in ["kept", "journal", "rewritten", "touched"] {
            f.intake.on_change(Change::Closed(root.join(name))).await;
        }
        assert_eq!(f.queue.depth(), 0, "nothing before the quiet period ends");
        f.intake.on_change(Change::Gone(root.join("journal"))).await;
        f.intake
            .on_change(Change::Writing(root.join("rewritten")))
            .await;
        tokio::time::advance(Duration::from_millis(150)).await;
        f.intake
            .on_change(Change::Touched(root.join("touched")))
            .await;
        let mut taken = Vec::new();
        while let Ok(Some(expired)) = tokio::time::timeout(
            Duration::from_millis(250),
            poll_fn(|cx| f.intake.quiet.poll_expired(cx)),
        )
        .await
        {
            taken.push((expired.into_inner(), start.elapsed().as_millis()));
        }
        // The touch at 150 ms restarted its wait; the deleted and the rewritten ones are not
        // taken at all.
        assert_eq!(
            taken,
            vec![(root.join("kept"), 200), (root.join("touched"), 350)]
        );
    }

    #[tokio::test]
    async fn rescans_skip_what_the_ledger_has_and_prune_what_is_gone() {
        use crate::ledger::{FileRecord, FileState};
        let dir = tree(&["done", "new"]);
        let root = dir.path();
        let mut f = intake(root, Duration::ZERO);
        let record = |path: &str| FileRecord {
            identity: crate::file::FileIdentity::of(
                &std::fs::symlink_metadata(root.join(path)).unwrap(),
            ),
            state: FileState::Uploaded {
                key: "k".into(),
                crc32c: Some("c".into()),
                multipart: false,
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

        f.intake.full_scan(RescanReason::Periodic).await;
        assert_eq!(drain(&f.queue), vec![root.join("new")]);
        assert_eq!(
            f.intake.ledger.len().unwrap(),
            1,
            "record of the deleted file pruned"
        );

        // A recorded file that changed since is taken again.
        std::fs::write(root.join("done"), b"changed content").unwrap();
        f.intake.full_scan(RescanReason::Periodic).await;
        assert_eq!(drain(&f.queue), vec![root.join("done"), root.join("new")]);
    }
}
