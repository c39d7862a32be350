//! How one opened file gets to S3: a single PutObject up to `multipart_threshold`, else a
//! multipart upload whose UploadId and confirmed parts are kept in the ledger, so a restart
//! continues where it stopped. Parts stream from disk (memory does not grow with the file)
//! and several go at once; every byte is paced by `max_bandwidth`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt, stream};

use crate::config::{Config, MAX_SINGLE_PUT};
use crate::ledger::{FileRecord, FileState, Ledger, PartRecord};
use crate::pacing::Pacer;
use crate::upload::{Confirmed, OpenedFile, UploadError, Uploader};

/// S3 allows at most this many parts.
const MAX_PARTS: u64 = 10_000;
const MIB: u64 = 1024 * 1024;

/// How a file of `size` bytes is cut: `count` parts of `part_size` (the last one shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub part_size: u64,
    pub count: u64,
}

impl PartPlan {
    /// `configured` raised (to whole MiB) when the file would need more than 10,000 parts.
    pub fn new(size: u64, configured: u64) -> PartPlan {
        let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        let part_size = configured.max(needed);
        PartPlan {
            part_size,
            count: size.div_ceil(part_size).max(1),
        }
    }

    /// Offset and length of part `number` (1-based) in a file of `size` bytes.
    pub fn range(&self, number: u64, size: u64) -> (u64, u64) {
        let offset = (number - 1) * self.part_size;
        (offset, self.part_size.min(size - offset))
    }
}

pub struct Transfer {
    uploader: Uploader,
    ledger: Arc<Ledger>,
    pacer: Pacer,
    multipart_threshold: u64,
    part_size: u64,
    part_concurrency: usize,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Transfer {
    pub fn new(config: &Config, uploader: Uploader, ledger: Arc<Ledger>) -> Transfer {
        Transfer {
            uploader,
            ledger,
            pacer: Pacer::new(config.max_bandwidth),
            multipart_threshold: config.multipart_threshold.min(MAX_SINGLE_PUT),
            part_size: config.part_size,
            part_concurrency: config.part_concurrency,
        }
    }

    pub fn uploader(&self) -> &Uploader {
        &self.uploader
    }

    /// Sends `file` as `key`. For a multipart upload the ledger keeps the progress under
    /// `relative`; the caller records the final state.
    pub async fn send(
        &self,
        file: &OpenedFile,
        path: &Path,
        relative: &Path,
        key: &str,
    ) -> Result<Confirmed, UploadError> {
        if file.identity.size <= self.multipart_threshold {
            self.pacer.take(file.identity.size).await;
            return once_more_if_expired(|| self.uploader.put_file(file, key)).await;
        }
        self.send_multipart(file, path, relative, key).await
    }

    async fn send_multipart(
        &self,
        file: &OpenedFile,
        path: &Path,
        relative: &Path,
        key: &str,
    ) -> Result<Confirmed, UploadError> {
        let size = file.identity.size;
        let plan = PartPlan::new(size, self.part_size);
        let (upload_id, done) = self.resume_or_start(file, relative, key, plan).await?;
        if !done.is_empty() {
            tracing::info!(
                path = %path.display(), key, parts_done = done.len(), parts = plan.count,
                "resuming multipart upload"
            );
        }
        let missing: Vec<u64> = (1..=plan.count)
            .filter(|n| !done.iter().any(|p| p.number as u64 == *n))
            .collect();
        let parts = Mutex::new(done);
        let record = |parts: &[PartRecord]| FileRecord {
            identity: file.identity,
            state: FileState::Uploading {
                key: key.to_string(),
                upload_id: upload_id.clone(),
                part_size: plan.part_size,
                parts: parts.to_vec(),
            },
            updated_unix: unix_now(),
        };
        let sent = stream::iter(missing)
            .map(|number| {
                let (offset, len) = plan.range(number, size);
                let (upload_id, parts, record) = (&upload_id, &parts, &record);
                async move {
                    self.pacer.take(len).await;
                    let part = once_more_if_expired(|| {
                        self.uploader
                            .upload_part(file, key, upload_id, number as i32, offset, len)
                    })
                    .await?;
                    let snapshot = {
                        let mut parts = parts.lock().expect("parts lock");
                        parts.push(part);
                        record(&parts)
                    };
                    // Submitted in order, so the ledger always holds the latest list; the
                    // part's slot does not wait for the commit (awaited below).
                    Ok::<_, UploadError>(self.ledger.put_later(relative, &snapshot))
                }
            })
            .buffer_unordered(self.part_concurrency)
            .try_collect::<Vec<_>>()
            .await;
        let commits = match sent {
            Ok(commits) => commits,
            Err(e) => {
                if matches!(e, UploadError::NoSuchUpload) {
                    self.forget(relative).await;
                }
                return Err(e);
            }
        };
        // Progress is durable before the upload completes. A part whose record failed is
        // only sent again after a restart.
        for outcome in futures_util::future::join_all(commits).await {
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "could not record a part's progress");
            }
        }
        if !matches!(file.changed_since_open(path), Ok(false)) {
            // Its parts are a mix of versions: throw them away and start over later.
            self.abandon(relative, key, &upload_id).await;
            return Err(UploadError::Changed);
        }
        let mut parts = parts.into_inner().expect("parts lock");
        parts.sort_by_key(|p| p.number);
        match once_more_if_expired(|| self.uploader.complete_multipart(key, &upload_id, &parts))
            .await
        {
            Err(UploadError::NoSuchUpload) => {
                self.forget(relative).await;
                Err(UploadError::NoSuchUpload)
            }
            other => other,
        }
    }

    /// Continues the recorded upload of this very file version, or abandons a recorded one
    /// of an older version and starts anew.
    async fn resume_or_start(
        &self,
        file: &OpenedFile,
        relative: &Path,
        key: &str,
        plan: PartPlan,
    ) -> Result<(String, Vec<PartRecord>), UploadError> {
        let recorded = self.ledger.get(relative).ok().flatten();
        if let Some(FileRecord {
            identity,
            state:
                FileState::Uploading {
                    key: old_key,
                    upload_id,
                    part_size,
                    parts,
                },
            ..
        }) = recorded
        {
            if identity == file.identity && old_key == key && part_size == plan.part_size {
                return Ok((upload_id, parts));
            }
            tracing::info!(
                key = old_key,
                "the file changed since its multipart upload began; aborting that upload"
            );
            self.abandon(relative, &old_key, &upload_id).await;
        }
        let upload_id = once_more_if_expired(|| self.uploader.create_multipart(key)).await?;
        let record = FileRecord {
            identity: file.identity,
            state: FileState::Uploading {
                key: key.to_string(),
                upload_id: upload_id.clone(),
                part_size: plan.part_size,
                parts: Vec::new(),
            },
            updated_unix: unix_now(),
        };
        if let Err(e) = self.ledger.put_later(relative, &record).await {
            tracing::warn!(error = %e, "could not record the multipart upload; a restart starts it over");
        }
        Ok((upload_id, Vec::new()))
    }

    async fn abandon(&self, relative: &Path, key: &str, upload_id: &str) {
        if let Err(e) = self.uploader.abort_multipart(key, upload_id).await {
            tracing::warn!(key, error = %e, "could not abort a stale multipart upload (a bucket lifecycle rule for incomplete uploads cleans it up)");
        }
        self.forget(relative).await;
    }

    async fn forget(&self, relative: &Path) {
        if let Err(e) = self.ledger.remove_later(relative).await {
            tracing::warn!(error = %e, "could not forget a multipart upload in the ledger");
        }
    }
}

/// Runs `op` again once if S3 refused the session as expired: the uploader has dropped
/// that session, so the second attempt assumes the role anew.
async fn once_more_if_expired<T, F, Fut>(mut op: F) -> Result<T, UploadError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, UploadError>>,
{
    match op().await {
        Err(UploadError::TokenExpired { .. }) => op().await,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_the_configured_size_until_10000_would_not_do() {
        let plan = PartPlan::new(40 * MIB, 8 * MIB);
        assert_eq!(
            plan,
            PartPlan {
                part_size: 8 * MIB,
                count: 5
            }
        );
        assert_eq!(plan.range(5, 40 * MIB), (32 * MIB, 8 * MIB));
        let odd = PartPlan::new(41 * MIB + 3, 8 * MIB);
        assert_eq!(odd.count, 6);
        assert_eq!(odd.range(6, 41 * MIB + 3), (40 * MIB, MIB + 3));
        // 1 TiB at 8 MiB would be 131,072 parts: raised to whole MiB within 10,000.
        let big = PartPlan::new(1 << 40, 8 * MIB);
        assert!(big.count <= MAX_PARTS, "{big:?}");
        assert_eq!(big.part_size % MIB, 0);
        assert_eq!(big.part_size, 105 * MIB);
    }
}
