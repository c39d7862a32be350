//! One file's way through s3drop once intake says it is complete: open → ledger check →
//! upload → verify it did not change → record → after-upload action. Every failure either
//! drops the file with a log line saying why (gone, not a regular file, no valid key) or
//! schedules another attempt; nothing is deleted unless S3 confirmed it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AfterUpload;
use crate::keys;
use crate::ledger::{FileRecord, FileState, Ledger};
use crate::queue::Queue;
use crate::upload::{OpenError, OpenedFile, UploadError, Uploader};

const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);
/// Permanent failures (permissions, missing bucket) wait this long before another try.
const RETRY_PERMANENT: Duration = Duration::from_secs(300);

/// What happened to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Uploaded,
    AlreadyUploaded,
    Dropped,
    Retry { permanent: bool },
}

pub struct Worker {
    pub root: PathBuf,
    pub prefix: String,
    pub after_upload: AfterUpload,
    pub ledger: Arc<Ledger>,
    pub uploader: Uploader,
    pub queue: Arc<Queue>,
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
        uploader: Uploader,
        queue: Arc<Queue>,
    ) -> Self {
        Worker {
            root,
            prefix,
            after_upload,
            ledger,
            uploader,
            queue,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes paths from the queue until cancelled. An upload already started is finished
    /// (the daemon bounds that with its shutdown deadline).
    pub async fn run(self: Arc<Self>, tracker: TaskTracker, cancel: CancellationToken) {
        loop {
            let path = tokio::select! {
                _ = cancel.cancelled() => return,
                path = self.queue.pop() => path,
            };
            let outcome = self.process(&path).await;
            self.queue.finish(&path);
            match outcome {
                Outcome::Retry { permanent } => {
                    let delay = self.next_delay(&path, permanent);
                    let queue = self.queue.clone();
                    let cancel = cancel.clone();
                    tracing::info!(path = %path.display(), retry_in_s = delay.as_secs_f32(), "will retry");
                    tracker.spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = tokio::time::sleep(delay) => queue.push(path),
                        }
                    });
                }
                _ => {
                    self.attempts.lock().expect("attempts lock").remove(&path);
                }
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
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open; will retry");
                return Outcome::Retry { permanent: false };
            }
        };

        let known = tokio::task::block_in_place(|| self.ledger.get(relative));
        match known {
            Ok(Some(record)) if record.is_uploaded_as(&file.identity) => {
                tracing::debug!(path = %path.display(), "already uploaded");
                self.after_upload(path, relative, &file).await;
                return Outcome::AlreadyUploaded;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ledger lookup failed; uploading anyway"),
        }

        let started = Instant::now();
        let confirmed = match self.uploader.put_file(&file, &key).await {
            Ok(confirmed) => confirmed,
            Err(e) => return self.failed(path, &key, e),
        };
        match file.changed_since_open(path) {
            Ok(false) => {}
            Ok(true) | Err(_) => {
                tracing::info!(path = %path.display(), key, "file changed during upload; uploading it again");
                return Outcome::Retry { permanent: false };
            }
        }
        let record = FileRecord {
            identity: file.identity,
            state: FileState::Uploaded {
                key: key.clone(),
                crc32c: confirmed.crc32c.clone(),
            },
            updated_unix: now_unix(),
        };
        if let Err(e) = tokio::task::block_in_place(|| self.ledger.put(relative, &record)) {
            tracing::error!(path = %path.display(), error = %e, "uploaded but could not record it; will retry");
            return Outcome::Retry { permanent: false };
        }
        tracing::info!(
            path = %path.display(),
            key,
            bytes = file.identity.size,
            duration_ms = started.elapsed().as_millis() as u64,
            crc32c = confirmed.crc32c,
            "uploaded"
        );
        self.after_upload(path, relative, &file).await;
        Outcome::Uploaded
    }

    fn failed(&self, path: &Path, key: &str, error: UploadError) -> Outcome {
        if error.is_permanent() {
            tracing::error!(
                path = %path.display(), key, bucket = self.uploader.bucket(), %error,
                "upload refused; the file is kept and retried later"
            );
            Outcome::Retry { permanent: true }
        } else {
            tracing::warn!(path = %path.display(), key, %error, "upload failed; will retry");
            Outcome::Retry { permanent: false }
        }
    }

    /// Runs only for a file S3 has confirmed (now or, per the ledger, earlier).
    async fn after_upload(&self, path: &Path, relative: &Path, file: &OpenedFile) {
        if self.after_upload != AfterUpload::Delete {
            return;
        }
        // Delete only the very version that was uploaded.
        if !matches!(file.changed_since_open(path), Ok(false)) {
            return;
        }
        match tokio::fs::remove_file(path).await {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "deleted after upload");
                if let Err(e) = tokio::task::block_in_place(|| self.ledger.remove(relative)) {
                    tracing::warn!(error = %e, "could not forget a deleted file in the ledger");
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "uploaded, but could not delete it")
            }
        }
    }
}
