//! One file's way through s3drop once intake says it is complete: open → ledger check →
//! upload → verify it did not change → record → after-upload action. Every failure either
//! drops the file with a log line saying why (gone, not a regular file, no valid key) or
//! schedules another attempt; nothing is deleted unless S3 confirmed it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AfterUpload;
use crate::keys;
use crate::ledger::{FileRecord, FileState, Ledger};
use crate::queue::Queue;
use crate::transfer::Transfer;
use crate::upload::{OpenError, OpenedFile, UploadError};

const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);
/// Permanent failures (permissions, missing bucket) wait this long before another try.
const RETRY_PERMANENT: Duration = Duration::from_secs(300);

/// What happened to one file.
pub enum Outcome {
    /// S3 confirmed it; the ledger commit is under way (see [`Recording`]).
    Uploaded(Box<Recording>),
    /// Nothing (more) to do: recorded, or already uploaded before.
    Done,
    Dropped,
    Retry {
        permanent: bool,
    },
}

/// The tail of a confirmed upload: waiting for the ledger commit, then the after-upload
/// action. It runs apart from the worker, so the worker takes the next file while commits
/// are batched (one fsync for all uploads that finished meanwhile).
pub struct Recording {
    commit: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), crate::ledger::LedgerError>> + Send>,
    >,
    file: OpenedFile,
    relative: PathBuf,
    key: String,
}

/// What the workers have done, for the service manager's status line.
#[derive(Default)]
pub struct Progress {
    pub uploaded: std::sync::atomic::AtomicU64,
    pub last: Mutex<Option<(Instant, String)>>,
}

impl Progress {
    fn record(&self, key: &str) {
        self.uploaded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.last.lock().expect("progress lock") = Some((Instant::now(), key.to_string()));
    }

    /// e.g. "12 uploaded; last i-0abc/x.csv 3s ago".
    pub fn summary(&self) -> String {
        let n = self.uploaded.load(std::sync::atomic::Ordering::Relaxed);
        match &*self.last.lock().expect("progress lock") {
            Some((at, key)) => format!("{n} uploaded; last {key} {}s ago", at.elapsed().as_secs()),
            None => format!("{n} uploaded"),
        }
    }
}

pub struct Worker {
    pub root: PathBuf,
    pub prefix: String,
    pub after_upload: AfterUpload,
    pub ledger: Arc<Ledger>,
    pub transfer: Transfer,
    pub queue: Arc<Queue>,
    pub progress: Progress,
    attempts: Mutex<HashMap<PathBuf, u32>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Worker {
    pub fn new(
        root: PathBuf,
        prefix: String,
        after_upload: AfterUpload,
        ledger: Arc<Ledger>,
        transfer: Transfer,
        queue: Arc<Queue>,
    ) -> Self {
        Worker {
            root,
            prefix,
            after_upload,
            ledger,
            transfer,
            queue,
            progress: Progress::default(),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes paths from the queue until cancelled. An upload already started is finished
    /// (the daemon bounds that with its shutdown deadline).
    pub async fn run(
        self: Arc<Self>,
        tracker: TaskTracker,
        retry_now: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        loop {
            let path = tokio::select! {
                _ = cancel.cancelled() => return,
                path = self.queue.pop() => path,
            };
            let outcome = match self.process(&path).await {
                Outcome::Uploaded(recording) => {
                    let worker = self.clone();
                    let (tracker2, retry_now, cancel) =
                        (tracker.clone(), retry_now.clone(), cancel.clone());
                    tracker.spawn(async move {
                        let outcome = worker.record(&path, *recording).await;
                        worker.queue.finish(&path);
                        worker.settle(path, outcome, &tracker2, &retry_now, &cancel);
                    });
                    continue;
                }
                other => other,
            };
            self.queue.finish(&path);
            self.settle(path, outcome, &tracker, &retry_now, &cancel);
        }
    }

    /// Schedules a retry, or forgets the path's attempts.
    fn settle(
        &self,
        path: PathBuf,
        outcome: Outcome,
        tracker: &TaskTracker,
        retry_now: &Arc<Notify>,
        cancel: &CancellationToken,
    ) {
        match outcome {
            Outcome::Retry { permanent } => {
                let delay = self.next_delay(&path, permanent);
                let queue = self.queue.clone();
                let cancel = cancel.clone();
                let retry_now = retry_now.clone();
                tracing::info!(path = %path.display(), retry_in_s = delay.as_secs_f32(), "will retry");
                tracker.spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => queue.push(path),
                        _ = retry_now.notified() => queue.push(path),
                    }
                });
            }
            _ => {
                self.attempts.lock().expect("attempts lock").remove(&path);
            }
        }
    }

    fn next_delay(&self, path: &Path, permanent: bool) -> Duration {
        if permanent {
            return RETRY_PERMANENT;
        }
        let mut attempts = self.attempts.lock().expect("attempts lock");
        let n = attempts.entry(path.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let backoff = RETRY_BASE
            .saturating_mul(1 << (*n - 1).min(10))
            .min(RETRY_CAP);
        // Full jitter over the upper half, so a fleet does not retry in lockstep.
        backoff.mul_f64(0.5 + 0.5 * fastrand::f64())
    }

    pub async fn process(&self, path: &Path) -> Outcome {
        let Ok(relative) = path.strip_prefix(&self.root) else {
            return Outcome::Dropped;
        };
        let key = match keys::object_key(&self.prefix, relative) {
            Ok(key) => key,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "not uploaded; the file is kept");
                return Outcome::Dropped;
            }
        };
        let file = match OpenedFile::open(path) {
            Ok(file) => file,
            Err(OpenError::Vanished) => {
                tracing::info!(path = %path.display(), "file deleted before upload; nothing to do");
                return Outcome::Dropped;
            }
            Err(e @ OpenError::NotRegular { .. }) => {
                tracing::warn!(path = %path.display(), error = %e, "skipped");
                return Outcome::Dropped;
            }
            Err(e @ OpenError::Permission(_)) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the file; retried later (or at SIGHUP)");
                return Outcome::Retry { permanent: true };
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open; will retry");
                return Outcome::Retry { permanent: false };
            }
        };

        let known = self.ledger.get(relative);
        match known {
            Ok(Some(record)) if record.is_uploaded_as(&file.identity) => {
                tracing::debug!(path = %path.display(), "already uploaded");
                self.after_upload(path, relative, &file).await;
                return Outcome::Done;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ledger lookup failed; uploading anyway"),
        }

        let started = Instant::now();
        let sent = self.transfer.send(&file, path, relative, &key).await;
        // Whatever the answer, a file that changed meanwhile is simply sent again (a failure
        // may be the change itself: a truncated file cannot fill its request body).
        let unchanged = matches!(file.changed_since_open(path), Ok(false));
        let confirmed = match sent {
            Ok(confirmed) if unchanged => confirmed,
            Err(e) if unchanged && !matches!(e, UploadError::Changed) => {
                return self.failed(path, relative, &file, &key, e).await;
            }
            _ => {
                tracing::info!(path = %path.display(), key, "file changed during upload; uploading it again");
                return Outcome::Retry { permanent: false };
            }
        };
        let record = FileRecord {
            identity: file.identity,
            state: FileState::Uploaded {
                key: key.clone(),
                crc32c: confirmed.crc32c.clone(),
            },
            updated_unix: now_unix(),
        };
        tracing::info!(
            path = %path.display(),
            key,
            bytes = file.identity.size,
            duration_ms = started.elapsed().as_millis() as u64,
            crc32c = confirmed.crc32c,
            "uploaded"
        );
        self.progress.record(&key);
        Outcome::Uploaded(Box::new(Recording {
            commit: Box::pin(self.ledger.put_later(relative, &record)),
            file,
            relative: relative.to_owned(),
            key,
        }))
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
            // The object is safe in S3; the file stays where it is and is sent again later
            // (or at SIGHUP), when the record can be written.
            tracing::error!(path = %path.display(), key, error = %e, "uploaded but could not record it; retried later");
            return Outcome::Retry { permanent: true };
        }
        self.after_upload(path, &relative, &file).await;
        Outcome::Done
    }

    async fn failed(
        &self,
        path: &Path,
        relative: &Path,
        file: &OpenedFile,
        key: &str,
        error: UploadError,
    ) -> Outcome {
        if !error.is_permanent() {
            tracing::warn!(path = %path.display(), key, %error, "upload failed; will retry");
            return Outcome::Retry { permanent: false };
        }
        tracing::error!(
            path = %path.display(), key, bucket = self.transfer.uploader().bucket(), %error,
            "upload refused; the file is kept and retried later (or at SIGHUP)"
        );
        let record = FileRecord {
            identity: file.identity,
            state: FileState::Failed {
                key: key.to_string(),
                error: error.to_string(),
            },
            updated_unix: now_unix(),
        };
        if let Err(e) = self.ledger.put_later(relative, &record).await {
            tracing::warn!(error = %e, "could not record the failure in the ledger");
        }
        Outcome::Retry { permanent: true }
    }

    /// Runs only for a file S3 has confirmed (now or, per the ledger, earlier). Each step is
    /// safe to repeat: after a crash the ledger still says "uploaded" and the action runs
    /// again; once the file is gone, its record is pruned.
    async fn after_upload(&self, path: &Path, relative: &Path, file: &OpenedFile) {
        if self.after_upload == AfterUpload::Keep {
            return;
        }
        // Act only on the very version that was uploaded.
        if !matches!(file.changed_since_open(path), Ok(false)) {
            return;
        }
        let done = match &self.after_upload {
            AfterUpload::Keep => return,
            AfterUpload::Delete => tokio::fs::remove_file(path).await.map(|()| None),
            AfterUpload::Move(dir) => {
                let path = path.to_owned();
                let target = dir.join(relative);
                tokio::task::spawn_blocking(move || {
                    move_without_replacing(&path, &target).map(Some)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
        };
        match done {
            Ok(moved_to) => {
                tracing::debug!(path = %path.display(), moved_to = ?moved_to, "after-upload action done");
                if let Err(e) = self.ledger.remove_later(relative).await {
                    tracing::warn!(error = %e, "could not forget a moved or deleted file in the ledger");
                }
            }
            Err(e) => tracing::warn!(
                path = %path.display(), error = %e,
                "uploaded, but the after-upload action failed; it is retried at the next scan"
            ),
        }
    }
}

/// Renames `from` to `to`, or to `to.1`, `to.2`, … if taken: an earlier file of the same
/// name in the destination is never overwritten.
fn move_without_replacing(from: &Path, to: &Path) -> std::io::Result<PathBuf> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))
    };
    let from_c = c(from)?;
    for n in 0u32.. {
        let candidate = if n == 0 {
            to.to_owned()
        } else {
            let mut name = to.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let to_c = c(&candidate)?;
        // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them as given.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from_c.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(candidate);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
    }
    unreachable!("u32 suffixes exhausted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_never_overwrites_an_earlier_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("done/sub/report.csv");
        for (i, body) in ["first", "second", "third"].iter().enumerate() {
            let src = dir.path().join(format!("in{i}"));
            std::fs::write(&src, body).unwrap();
            move_without_replacing(&src, &target).unwrap();
            assert!(!src.exists());
        }
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("done/sub/report.csv"), "first");
        assert_eq!(read("done/sub/report.csv.1"), "second");
        assert_eq!(read("done/sub/report.csv.2"), "third");
    }
}
