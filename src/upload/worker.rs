//! One file's way through s3drop once intake says it is complete: key → open → ledger
//! check → send → verify it did not change → record → after-upload action. Every failure
//! either drops the file with a log line saying why (gone, not a regular file, no valid
//! key) or schedules another attempt ([`super::retry`]); nothing is deleted unless S3
//! confirmed it. This is where a file's fate is decided.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::after::AfterUploadAction;
use super::progress::Progress;
use super::retry::{Backoff, Verdict, Wait, verdict};
use super::send::{Item, SendError, Sender};
use crate::events::{DropReason, Dropped, Event, Unrecorded, UploadFailed, Uploaded};
use crate::file::{FileIdentity, OpenError, OpenedFile};
use crate::keys::KeyRule;
use crate::ledger::{FileRecord, FileState, Ledger, LedgerError};
use crate::metrics::FailureKind;
use crate::queue::Queue;
use crate::s3::Checksum;
use crate::supervise::{Fatal, FatalReporter};
use crate::tree::Tree;

/// What to do about a file s3drop may not read.
const UNREADABLE_FIX: &str = "make it readable by the s3drop user (or grant it with \
    `setfacl -m u:s3drop:r`)";

/// What happened to one file.
enum Outcome {
    /// S3 confirmed it; the ledger commit is under way (see [`Recording`]).
    Uploaded(Box<Recording>),
    /// Nothing (more) to do: recorded, or already uploaded before, or dropped with a log
    /// line.
    Done,
    /// Done, and the after-upload action deleted or moved the file.
    Acted,
    /// Tried again after the wait the failure calls for.
    Retry(Wait),
    /// Left alone until SIGHUP or a change (a conflict): not retried, still failed.
    Held,
    /// Nothing more can be recorded: the daemon must stop.
    Fatal(Fatal),
}

/// The tail of a confirmed upload: waiting for the ledger commit, then the after-upload
/// action. It runs apart from the worker, so the worker takes the next file while commits
/// are batched (one fsync for all uploads that finished meanwhile).
struct Recording {
    commit: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LedgerError>> + Send>>,
    file: OpenedFile,
    relative: PathBuf,
    key: String,
}

/// What the workers share: settings, the pipeline's parts, and how to reach the daemon.
pub struct Worker {
    /// `watch_dir`, held: every file is opened and acted on beneath it.
    pub tree: Arc<Tree>,
    /// How each file's key is made (prefix and key template).
    pub keys: KeyRule,
    pub after_upload: AfterUploadAction,
    pub ledger: Arc<Ledger>,
    pub sender: Sender,
    pub queue: Arc<Queue>,
    pub progress: Arc<Progress>,
    backoff: Backoff,
    /// Whether the "checksums not confirmed" warning was given (once per run).
    warned_unverified: AtomicBool,
    /// Files whose key existed (`overwrite = false`), with the SIGHUP count when that was
    /// last seen: they are left alone until the next SIGHUP or a change of the file.
    conflicts: std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>,
    /// With a key template that can map two files to one key: which file has each key in
    /// this run, so a second one is refused instead of overwriting the first.
    claimed: std::sync::Mutex<std::collections::HashMap<String, PathBuf>>,
    /// Paths requeued after s3drop deleted or moved their file (see [`Worker::finish`]).
    acted: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

/// What a worker needs from the daemon: where helper tasks go, SIGHUP's "retry now", the
/// shutdown token and the way to report a fatal error.
#[derive(Clone)]
pub struct Context {
    pub tracker: TaskTracker,
    pub retry_now: Arc<Notify>,
    /// How many SIGHUPs there were: a conflict is tried again after the next one.
    pub hangups: Arc<std::sync::atomic::AtomicU64>,
    pub cancel: CancellationToken,
    pub fatal: FatalReporter,
}

impl Worker {
    pub fn new(
        tree: Arc<Tree>,
        keys: KeyRule,
        after_upload: AfterUploadAction,
        ledger: Arc<Ledger>,
        sender: Sender,
        queue: Arc<Queue>,
        progress: Arc<Progress>,
    ) -> Self {
        Worker {
            tree,
            keys,
            after_upload,
            ledger,
            sender,
            queue,
            progress,
            backoff: Backoff::default(),
            warned_unverified: AtomicBool::new(false),
            conflicts: Default::default(),
            claimed: Default::default(),
            acted: Default::default(),
        }
    }

    /// Takes paths from the queue until cancelled. An upload already started is finished
    /// (the daemon bounds that with its shutdown deadline).
    pub async fn run(self: Arc<Self>, cx: Context) -> Result<(), Fatal> {
        loop {
            let path = tokio::select! {
                _ = cx.cancel.cancelled() => return Ok(()),
                path = self.queue.pop() => path,
            };
            let hangups = cx.hangups.load(Ordering::Relaxed);
            match self.process(&path, hangups).await {
                Outcome::Uploaded(recording) => {
                    let (worker, cx2) = (self.clone(), cx.clone());
                    cx.tracker.spawn(async move {
                        let outcome = match worker.record(&path, *recording).await {
                            Outcome::Fatal(fatal) => {
                                cx2.fatal.report(fatal);
                                Outcome::Retry(Wait::Permanent)
                            }
                            outcome => outcome,
                        };
                        worker.finish(&path, &outcome);
                        worker.conclude(path, outcome, &cx2);
                    });
                }
                Outcome::Fatal(fatal) => {
                    self.queue.finish(&path);
                    return Err(fatal);
                }
                outcome => {
                    self.finish(&path, &outcome);
                    self.conclude(path, outcome, &cx);
                }
            }
        }
    }

    /// The queue hears that `path`'s turn is over. A path reported again meanwhile (a
    /// rescan while it was sent) comes back; if s3drop itself deleted or moved it, that
    /// return is remembered, so finding it gone is not reported as a producer's delete.
    fn finish(&self, path: &Path, outcome: &Outcome) {
        if self.queue.finish(path) && matches!(outcome, Outcome::Acted) {
            self.acted
                .lock()
                .expect("acted lock")
                .insert(path.to_owned());
        }
    }

    /// Schedules the next attempt, or forgets the file's attempts.
    fn conclude(&self, path: PathBuf, outcome: Outcome, cx: &Context) {
        let wait = match outcome {
            Outcome::Retry(wait) => wait,
            Outcome::Held => {
                self.backoff.forget(&path);
                self.queue.settled(&path);
                return;
            }
            _ => {
                self.backoff.forget(&path);
                self.progress.settled(&path);
                self.queue.settled(&path);
                return;
            }
        };
        let delay = self.backoff.next_delay(&path, wait);
        let (queue, cx2) = (self.queue.clone(), cx.clone());
        // The failure's event said it is retried; when is a detail.
        tracing::debug!(path = %path.display(), retry_in_s = delay.as_secs_f32(), "will retry");
        cx.tracker.spawn(async move {
            tokio::select! {
                _ = cx2.cancel.cancelled() => {}
                _ = tokio::time::sleep(delay) => queue.push(path),
                _ = cx2.retry_now.notified() => queue.push(path),
            }
        });
    }

    async fn process(&self, path: &Path, hangups: u64) -> Outcome {
        let Some(relative) = self.relative(path) else {
            return Outcome::Done;
        };
        let file = match self.open(path, relative).await {
            Ok(file) => file,
            Err(outcome) => return outcome,
        };
        let record = self.ledger.get(relative).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "the ledger cannot be read ({e}); uploading {} anyway", path.display());
            None
        });
        if let Some(record) = &record {
            if record.is_conflict_as(&file.identity) && self.conflict_stands(relative, hangups) {
                tracing::debug!(path = %path.display(), "its key exists (overwrite = false); left alone until SIGHUP or a change");
                if let Some((kind, error)) = record.state.failure() {
                    self.progress.failed(path, kind, error);
                }
                return Outcome::Held;
            }
            if let Some(done) = self.nothing_to_send(path, relative, &file, record).await {
                return done;
            }
        }
        let key = match self.key_for(relative, &file, record.as_ref()) {
            Ok(key) => key,
            Err((key, kind, error)) => {
                return self
                    .record_failure(path, relative, file.identity, &key, kind, error)
                    .await;
            }
        };
        let item = Item {
            file: &file,
            tree: &self.tree,
            path,
            relative,
            key: &key,
        };
        let started = Instant::now();
        let sent = self.sender.send(&item).await;
        let unchanged = self.tree.unchanged(relative, &file);
        let checksum = match sent {
            Ok(checksum) if unchanged => checksum,
            Ok(_) => return self.changed(&item),
            Err(e) if e.is_existing_key() => return self.conflict(&item, hangups).await,
            Err(e) => return self.failed(&item, e, unchanged).await,
        };
        kill_point!("upload::confirmed"); // S3 has it; the ledger does not know yet
        let parts = self.sender.parts(file.identity.size);
        self.uploaded(&item, &checksum, started, parts);
        let record = FileRecord::new(
            file.identity,
            FileState::Uploaded {
                key: key.clone(),
                crc32c: checksum.crc32c().map(String::from),
                multipart: parts.is_some(),
            },
        );
        Outcome::Uploaded(Box::new(Recording {
            commit: Box::pin(self.ledger.put_later(relative, &record)),
            file,
            relative: relative.to_owned(),
            key,
        }))
    }

    /// A file whose mtime alone changed since its upload (a touch): if its bytes still
    /// have the CRC32C S3 confirmed, the record is brought up to date and nothing is sent.
    async fn same_content(
        &self,
        path: &Path,
        relative: &Path,
        file: &OpenedFile,
        record: &FileRecord,
    ) -> bool {
        let FileState::Uploaded {
            key,
            crc32c: Some(stored),
            ..
        } = &record.state
        else {
            return false;
        };
        // Read on a blocking thread (the file may be megabytes), through the same descriptor.
        let computed = match file.try_clone() {
            Ok(clone) => tokio::task::spawn_blocking(move || crate::s3::crc32c_of_file(&clone))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(e) => Err(e),
        };
        if computed.as_deref().ok() != Some(stored.as_str()) || !self.tree.unchanged(relative, file)
        {
            return false;
        }
        tracing::debug!(path = %path.display(), key, "touched since its upload, same content; not sent again");
        let updated = FileRecord::new(file.identity, record.state.clone());
        if let Err(e) = self.ledger.put_later(relative, &updated).await {
            tracing::warn!(path = %path.display(), error = %e, "could not record that {} was only touched ({e}); it may be sent again", path.display());
        }
        true
    }

    /// What the ledger says makes sending unnecessary: this version is uploaded (then the
    /// after-upload action runs, in case it did not), or only touched since with the same
    /// content.
    async fn nothing_to_send(
        &self,
        path: &Path,
        relative: &Path,
        file: &OpenedFile,
        record: &FileRecord,
    ) -> Option<Outcome> {
        let uploaded = record.is_uploaded_as(&file.identity);
        if uploaded {
            tracing::debug!(path = %path.display(), "already uploaded");
        }
        if uploaded
            || (only_touched(record, file) && self.same_content(path, relative, file, record).await)
        {
            let acted = self
                .after_upload
                .run(&self.tree, relative, file, &self.ledger)
                .await;
            return Some(if acted { Outcome::Acted } else { Outcome::Done });
        }
        None
    }

    /// The path relative to `watch_dir` (none for `watch_dir` itself).
    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        self.tree
            .relative(path)
            .filter(|r| !r.as_os_str().is_empty())
    }

    /// The file's key, decided once per version of the file: the key recorded for this
    /// version (a retry, a resumed multipart upload) is kept, even if the template would
    /// now give another (a time placeholder); otherwise the rule makes it. An error (the
    /// key, if one was made, and why) if it has none, or another file of this run already
    /// has it.
    fn key_for(
        &self,
        relative: &Path,
        file: &OpenedFile,
        record: Option<&FileRecord>,
    ) -> Result<String, (String, FailureKind, String)> {
        // A failure recorded before a key was decided has none to reuse.
        let recorded = record
            .filter(|r| r.identity == file.identity)
            .map(|r| r.state.key().to_string())
            .filter(|key| !key.is_empty());
        let key = match recorded.map_or_else(|| self.keys.key(relative, file.identity.mtime_ns), Ok)
        {
            Ok(key) => key,
            Err(e) => return Err((String::new(), FailureKind::InvalidKey, e.to_string())),
        };
        if !self.keys.is_injective() {
            let mut claimed = self.claimed.lock().expect("claimed lock");
            let owner = claimed
                .entry(key.clone())
                .or_insert_with(|| relative.to_owned());
            if owner != relative {
                let error = format!(
                    "{} already has the key {key} (key_template maps both to it; nothing is \
                     overwritten)",
                    owner.display()
                );
                return Err((key, FailureKind::KeyClaimed, error));
            }
        }
        Ok(key)
    }

    async fn open(&self, path: &Path, relative: &Path) -> Result<OpenedFile, Outcome> {
        let acted_on = self.acted.lock().expect("acted lock").remove(path);
        let error = match self.tree.open_file(relative) {
            Ok(file) => return Ok(file),
            Err(e) => e,
        };
        if acted_on && matches!(error, OpenError::Vanished) {
            tracing::debug!(path = %path.display(), "gone: s3drop deleted or moved it after its upload");
            return Err(Outcome::Done);
        }
        let dropped = |why| {
            self.progress.emit(Dropped { path, why });
            Err(Outcome::Done)
        };
        match error {
            OpenError::Vanished => dropped(DropReason::GoneBeforeUpload),
            OpenError::NotRegular { kind } => dropped(DropReason::NotRegular(kind)),
            OpenError::Linked => dropped(DropReason::Linked),
            e @ OpenError::Permission(_) => {
                let (kind, error) = (FailureKind::Unreadable, e.to_string());
                Err(match self.tree.stat(relative) {
                    Ok(entry) => {
                        self.record_failure(path, relative, entry.identity, "", kind, error)
                            .await
                    }
                    Err(_) => {
                        self.progress.emit(UploadFailed {
                            path,
                            key: "",
                            kind,
                            error: &error,
                            fix: Some(UNREADABLE_FIX),
                        });
                        Outcome::Retry(Wait::Permanent)
                    }
                })
            }
            e @ OpenError::Io(_) => {
                self.progress.emit(UploadFailed {
                    path,
                    key: "",
                    kind: FailureKind::Transient,
                    error: &e.to_string(),
                    fix: None,
                });
                Err(Outcome::Retry(Wait::Transient))
            }
        }
    }

    fn uploaded(&self, item: &Item<'_>, checksum: &Checksum, started: Instant, parts: Option<u64>) {
        self.progress.emit(Uploaded {
            path: item.path,
            bucket: self.sender.bucket(),
            key: item.key,
            bytes: item.file.identity.size,
            took: started.elapsed(),
            checksum,
            parts,
        });
        if *checksum == Checksum::Unverified
            && !self.warned_unverified.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                key = item.key,
                "S3 did not answer with the upload's CRC32C, so s3drop cannot confirm what was \
                 stored; such uploads are logged and recorded as unverified (S3-compatible \
                 servers do not all echo checksums; AWS S3 does)"
            );
        }
    }

    fn changed(&self, item: &Item<'_>) -> Outcome {
        self.progress.emit(UploadFailed {
            path: item.path,
            key: item.key,
            kind: FailureKind::Changed,
            error: "the file changed while it was being uploaded",
            fix: None,
        });
        Outcome::Retry(Wait::Transient)
    }

    async fn failed(&self, item: &Item<'_>, error: SendError, unchanged: bool) -> Outcome {
        let (kind, wait) = match verdict(&error, unchanged) {
            Verdict::Changed => return self.changed(item),
            Verdict::Vanished => {
                self.progress.emit(Dropped {
                    path: item.path,
                    why: DropReason::GoneDuringUpload,
                });
                return Outcome::Done;
            }
            Verdict::Transient => (FailureKind::Transient, Wait::Transient),
            Verdict::NoSession => (FailureKind::NoSession, Wait::Session),
            Verdict::Throttled => (FailureKind::Throttled, Wait::Throttled),
            Verdict::Permanent => {
                let kind = match &error {
                    SendError::S3(e) if e.class() == crate::s3::ErrorClass::Denied => {
                        FailureKind::Denied
                    }
                    SendError::TooLarge { .. } => FailureKind::TooLarge,
                    _ => FailureKind::Rejected,
                };
                let error = crate::message::sentence(&error);
                return self
                    .record_failure(
                        item.path,
                        item.relative,
                        item.file.identity,
                        item.key,
                        kind,
                        error,
                    )
                    .await;
            }
        };
        self.progress.emit(UploadFailed {
            path: item.path,
            key: item.key,
            kind,
            error: &crate::message::sentence(&error),
            fix: None,
        });
        Outcome::Retry(wait)
    }

    /// A failure an operator must fix: shown by STATUS and `status`, recorded in the ledger
    /// (so `status` finds it after a restart), tried again much later or at SIGHUP.
    /// `key` is empty when none was decided (unreadable, no valid key).
    async fn record_failure(
        &self,
        path: &Path,
        relative: &Path,
        identity: FileIdentity,
        key: &str,
        kind: FailureKind,
        error: String,
    ) -> Outcome {
        let fix = match kind {
            FailureKind::Denied => Some(self.sender.denied_fix()),
            FailureKind::Unreadable => Some(UNREADABLE_FIX),
            _ => None,
        };
        self.progress.emit(UploadFailed {
            path,
            key,
            kind,
            error: &error,
            fix,
        });
        let record = FileRecord::new(
            identity,
            FileState::Failed {
                key: key.to_string(),
                kind,
                error,
            },
        );
        match self.ledger.put_later(relative, &record).await {
            Err(e) if e.is_fatal() => Outcome::Fatal(e.into()),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not record the failure of {} in the ledger ({e}); `status` lists it only while s3drop runs", path.display());
                Outcome::Retry(Wait::Permanent)
            }
            Ok(()) => Outcome::Retry(Wait::Permanent),
        }
    }

    /// `overwrite = false` and the key exists: the file is not uploaded, not deleted or
    /// moved; it is recorded as a conflict and left alone until SIGHUP or a change.
    async fn conflict(&self, item: &Item<'_>, hangups: u64) -> Outcome {
        self.conflicts
            .lock()
            .expect("conflicts lock")
            .insert(item.relative.to_owned(), hangups);
        let record = FileRecord::new(
            item.file.identity,
            FileState::Conflict {
                key: item.key.to_string(),
            },
        );
        self.progress.emit(UploadFailed {
            path: item.path,
            key: item.key,
            kind: FailureKind::Conflict,
            error: &record.state.failure().map(|(_, e)| e).unwrap_or_default(),
            fix: None,
        });
        match self.ledger.put_later(item.relative, &record).await {
            Err(e) if e.is_fatal() => Outcome::Fatal(e.into()),
            Err(e) => {
                tracing::warn!(path = %item.path.display(), error = %e, "could not record the conflict of {} in the ledger ({e})", item.path.display());
                Outcome::Held
            }
            Ok(()) => Outcome::Held,
        }
    }

    /// Is a recorded conflict still to be left alone? Yes, unless a SIGHUP came since it was
    /// seen; a conflict first seen now (after a restart) counts as seen at this SIGHUP count.
    fn conflict_stands(&self, relative: &Path, hangups: u64) -> bool {
        let mut conflicts = self.conflicts.lock().expect("conflicts lock");
        match conflicts.get(relative) {
            Some(&seen) if seen < hangups => {
                conflicts.remove(relative);
                false
            }
            Some(_) => true,
            None => {
                conflicts.insert(relative.to_owned(), hangups);
                true
            }
        }
    }

    /// Waits for the ledger to hold the upload, then runs the after-upload action.
    async fn record(&self, path: &Path, recording: Recording) -> Outcome {
        let Recording {
            commit,
            file,
            relative,
            key,
        } = recording;
        if let Err(e) = commit.await {
            if e.is_fatal() {
                return Outcome::Fatal(e.into());
            }
            // The object is safe in S3; the file stays where it is and is sent again later
            // (or at SIGHUP), when the record can be written.
            Unrecorded {
                path,
                key: &key,
                error: &e.to_string(),
            }
            .emit();
            return Outcome::Retry(Wait::Permanent);
        }
        kill_point!("upload::recorded"); // the ledger has it; the file is still there
        let acted = self
            .after_upload
            .run(&self.tree, &relative, &file, &self.ledger)
            .await;
        if acted { Outcome::Acted } else { Outcome::Done }
    }
}

/// Same file, same size, another mtime: possibly only touched. A multipart upload's
/// checksum is one of its parts' checksums, which a whole-file CRC32C cannot be compared
/// with, so those are sent again.
fn only_touched(record: &FileRecord, file: &OpenedFile) -> bool {
    let (was, now) = (record.identity, file.identity);
    let single_put_checksum = matches!(
        &record.state,
        FileState::Uploaded {
            crc32c: Some(_),
            multipart: false,
            ..
        }
    );
    single_put_checksum
        && was.dev == now.dev
        && was.inode == now.inode
        && was.size == now.size
        && was.mtime_ns != now.mtime_ns
}
