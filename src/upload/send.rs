//! How one opened file gets to S3: a single PutObject up to `multipart_threshold`, else a
//! multipart upload whose UploadId and confirmed parts are kept in the ledger, so a restart
//! continues where it stopped. Parts stream from disk (memory does not grow with the file)
//! and several go at once; every byte is paced by `max_bandwidth`.
//!
//! Part records are progress for a restart, nothing more: the upload completes without
//! waiting for them to be durable (a part whose record was not yet committed when s3drop
//! died is simply sent again). Only the final "uploaded" record is waited for, by the
//! worker.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt, stream};

use super::pacing::Pacer;
use crate::config::{Config, MAX_SINGLE_PUT};
use crate::file::OpenedFile;
use crate::ledger::{FileRecord, FileState, Ledger, PartRecord};
use crate::s3::{Checksum, CompletedPart, ErrorClass, IN_MEMORY_MAX, S3Error, Store};
use crate::tree::{Now, Tree};

/// S3 allows at most this many parts.
const MAX_PARTS: u64 = 10_000;
const MIB: u64 = 1024 * 1024;

/// Why a file did not get to S3.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("the file changed while it was being uploaded")]
    Changed,
    #[error("the file was deleted during its upload; the upload was abandoned")]
    Vanished,
    #[error(
        "the file is {size} bytes, over max_file_size ({max} bytes): not uploaded; it is kept \
         and tried again when it is smaller"
    )]
    TooLarge { size: u64, max: u64 },
}

/// Why sending the parts stopped.
enum PartsError {
    S3(S3Error),
    /// The file changed or was deleted (checked every [`STALE_CHECK_PARTS`] parts).
    Stale(Now),
}

impl From<S3Error> for PartsError {
    fn from(e: S3Error) -> Self {
        PartsError::S3(e)
    }
}

/// How often (in confirmed parts) a multipart upload looks whether its file changed or was
/// deleted: a deleted 50 GiB file stops within a few parts, not after all of them.
const STALE_CHECK_PARTS: usize = 4;

impl SendError {
    /// A conditional write (`overwrite = false`) met an existing object.
    pub fn is_existing_key(&self) -> bool {
        matches!(self, SendError::S3(e) if e.class() == ErrorClass::Exists)
    }
}

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

    /// Number (1-based), offset and length of part `number` in a file of `size` bytes.
    pub fn part(&self, number: u64, size: u64) -> (i32, u64, u64) {
        let offset = (number - 1) * self.part_size;
        (number as i32, offset, self.part_size.min(size - offset))
    }
}

/// One file to send: where it is, what it is called in the ledger and in S3.
pub struct Item<'a> {
    pub file: &'a OpenedFile,
    /// Where it is resolved (never by `path`, which names it in messages).
    pub tree: &'a Tree,
    pub path: &'a Path,
    pub relative: &'a Path,
    pub key: &'a str,
}

pub struct Sender {
    s3: Store,
    ledger: Arc<Ledger>,
    pacer: Pacer,
    multipart_threshold: u64,
    part_size: u64,
    part_concurrency: usize,
    max_file_size: Option<u64>,
    /// What to do when S3 denies a write (names the upload role).
    denied_fix: String,
}

fn part_record(p: CompletedPart) -> PartRecord {
    PartRecord {
        number: p.number,
        etag: p.etag,
        crc32c: p.crc32c,
    }
}

fn completed_part(p: &PartRecord) -> CompletedPart {
    CompletedPart {
        number: p.number,
        etag: p.etag.clone(),
        crc32c: p.crc32c.clone(),
    }
}

impl Sender {
    pub fn new(config: &Config, s3: Store, ledger: Arc<Ledger>) -> Sender {
        Sender {
            s3,
            ledger,
            pacer: Pacer::new(config.max_bandwidth),
            multipart_threshold: config.multipart_threshold.min(MAX_SINGLE_PUT),
            part_size: config.part_size,
            part_concurrency: config.part_concurrency,
            max_file_size: config.max_file_size,
            denied_fix: crate::chain::Link::WriteUnderPrefix.fix(Some(config)),
        }
    }

    pub fn bucket(&self) -> &str {
        self.s3.bucket()
    }

    pub fn denied_fix(&self) -> &str {
        &self.denied_fix
    }

    /// How many parts a file of `size` bytes is sent in; `None` for one PutObject.
    pub fn parts(&self, size: u64) -> Option<u64> {
        (size > self.multipart_threshold).then(|| PartPlan::new(size, self.part_size).count)
    }

    /// Sends the file; for a multipart upload the ledger keeps the progress under
    /// `item.relative`. The caller records the final state.
    pub async fn send(&self, item: &Item<'_>) -> Result<Checksum, SendError> {
        let size = item.file.identity.size;
        if let Some(max) = self.max_file_size.filter(|max| size > *max) {
            return Err(SendError::TooLarge { size, max });
        }
        if size <= self.multipart_threshold {
            self.pacer.take(size).await;
            return self.send_whole(item).await;
        }
        self.send_multipart(item).await
    }

    /// One PutObject of one version of the file. A file up to [`IN_MEMORY_MAX`] is read
    /// into memory and sent from there; a larger one's CRC32C is computed first, and S3
    /// checks the streamed body against it. Either way, if the file changed while it was
    /// read, nothing is sent: a read that met a rewrite in place would be stored as a torn
    /// object, and if the file then moved away, nothing would ever replace it.
    async fn send_whole(&self, item: &Item<'_>) -> Result<Checksum, SendError> {
        enum Whole {
            Bytes(Vec<u8>),
            Crc32c(String),
        }
        let whole = if item.file.identity.size <= IN_MEMORY_MAX {
            Whole::Bytes(item.file.read_all().map_err(S3Error::Body)?)
        } else {
            // Read on a blocking thread (megabytes), through the same descriptor.
            let clone = item.file.try_clone().map_err(S3Error::Body)?;
            let crc32c = tokio::task::spawn_blocking(move || crate::s3::crc32c_of_file(&clone))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(S3Error::Body)?;
            Whole::Crc32c(crc32c)
        };
        if item.file.identity_now().ok() != Some(item.file.identity) {
            return Err(SendError::Changed);
        }
        Ok(match whole {
            Whole::Bytes(bytes) => self.s3.put_bytes(item.key, bytes.into()).await?,
            Whole::Crc32c(crc32c) => self.s3.put_object(item.file, item.key, &crc32c).await?,
        })
    }

    async fn send_multipart(&self, item: &Item<'_>) -> Result<Checksum, SendError> {
        let size = item.file.identity.size;
        let plan = PartPlan::new(size, self.part_size);
        let (upload_id, done) = self.resume_or_start(item, plan).await?;
        if !done.is_empty() {
            crate::events::Event::emit(crate::events::MultipartResumed {
                path: item.path,
                key: item.key,
                done: done.len(),
                parts: plan.count,
            });
        }
        let sent = match self.send_parts(item, plan, &upload_id, done).await {
            Ok(parts) => Ok(parts),
            Err(PartsError::S3(e)) => return Err(self.failed(item, e).await),
            Err(PartsError::Stale(now)) => Err(now),
        };
        let mut parts = match sent.and_then(|parts| match item.tree.now(item.relative, item.file) {
            Now::Same => Ok(parts),
            now => Err(now),
        }) {
            Ok(parts) => parts,
            // Changed: its parts are a mix of versions; gone: nobody wants them. Either way
            // they are thrown away (aborted, so S3 stops keeping them).
            Err(now) => {
                self.abandon(item.relative, item.key, &upload_id).await;
                return Err(match now {
                    Now::Gone => SendError::Vanished,
                    _ => SendError::Changed,
                });
            }
        };
        parts.sort_by_key(|p| p.number);
        let parts: Vec<CompletedPart> = parts.iter().map(completed_part).collect();
        match self
            .s3
            .complete_multipart(item.key, &upload_id, &parts)
            .await
        {
            Ok(checksum) => Ok(checksum),
            Err(e) if e.class() == ErrorClass::Exists => {
                // Its parts will never become this object: free them.
                self.abandon(item.relative, item.key, &upload_id).await;
                Err(SendError::S3(e))
            }
            Err(e) => Err(self.failed(item, e).await),
        }
    }

    /// Sends the parts not yet `done`, recording each as S3 confirms it; returns them all.
    async fn send_parts(
        &self,
        item: &Item<'_>,
        plan: PartPlan,
        upload_id: &str,
        done: Vec<PartRecord>,
    ) -> Result<Vec<PartRecord>, PartsError> {
        let size = item.file.identity.size;
        let missing: Vec<u64> = (1..=plan.count)
            .filter(|n| !done.iter().any(|p| p.number as u64 == *n))
            .collect();
        let parts = Mutex::new(done);
        let count = std::sync::atomic::AtomicUsize::new(0);
        let uploading = |parts: &[PartRecord]| FileState::Uploading {
            key: item.key.to_string(),
            upload_id: upload_id.to_string(),
            part_size: plan.part_size,
            parts: parts.to_vec(),
        };
        stream::iter(missing)
            .map(|number| {
                let (parts, uploading, count) = (&parts, &uploading, &count);
                async move {
                    let part = plan.part(number, size);
                    self.pacer.take(part.2).await;
                    let confirmed = self
                        .s3
                        .upload_part(item.file, item.key, upload_id, part)
                        .await?;
                    let mut parts = parts.lock().expect("parts lock");
                    parts.push(part_record(confirmed));
                    // Submitted in order under the lock, so the ledger ends with the latest
                    // list; nothing waits for the commit (see the module's doc).
                    let record = FileRecord::new(item.file.identity, uploading(&parts));
                    drop(self.ledger.put_later(item.relative, &record));
                    drop(parts);
                    let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n % STALE_CHECK_PARTS == 0 {
                        match item.tree.now(item.relative, item.file) {
                            Now::Same => {}
                            now => return Err(PartsError::Stale(now)),
                        }
                    }
                    Ok::<_, PartsError>(())
                }
            })
            .buffer_unordered(self.part_concurrency)
            .try_collect::<()>()
            .await?;
        Ok(parts.into_inner().expect("parts lock"))
    }

    /// An upload S3 no longer knows is forgotten, so the next attempt starts anew.
    async fn failed(&self, item: &Item<'_>, e: S3Error) -> SendError {
        if e.class() == ErrorClass::NoSuchUpload {
            self.forget(item.relative).await;
        }
        SendError::S3(e)
    }

    /// Continues the recorded upload of this very file version, or abandons a recorded one
    /// of an older version and starts anew.
    async fn resume_or_start(
        &self,
        item: &Item<'_>,
        plan: PartPlan,
    ) -> Result<(String, Vec<PartRecord>), S3Error> {
        let recorded = self.ledger.get(item.relative).ok().flatten();
        if let Some(FileRecord {
            identity,
            state:
                FileState::Uploading {
                    key,
                    upload_id,
                    part_size,
                    parts,
                },
            ..
        }) = recorded
        {
            if identity == item.file.identity && key == item.key && part_size == plan.part_size {
                return Ok((upload_id, parts));
            }
            tracing::info!(
                path = %item.path.display(),
                key,
                "{} changed since its multipart upload began; aborting that upload and starting \
                 anew",
                crate::message::printable(&item.path.to_string_lossy())
            );
            self.abandon(item.relative, &key, &upload_id).await;
        }
        let upload_id = self.s3.create_multipart(item.key).await?;
        let record = FileRecord::new(
            item.file.identity,
            FileState::Uploading {
                key: item.key.to_string(),
                upload_id: upload_id.clone(),
                part_size: plan.part_size,
                parts: Vec::new(),
            },
        );
        // Not waited for: a part's record, submitted later, includes the UploadId too.
        drop(self.ledger.put_later(item.relative, &record));
        Ok((upload_id, Vec::new()))
    }

    async fn abandon(&self, relative: &Path, key: &str, upload_id: &str) {
        if let Err(e) = self.s3.abort_multipart(key, upload_id).await {
            tracing::warn!(
                key,
                error = %e,
                "could not abort a stale multipart upload of {}: {}; a bucket lifecycle rule for \
                 incomplete uploads cleans it up",
                crate::message::printable(key),
                crate::message::sentence(&e)
            );
        }
        self.forget(relative).await;
    }

    async fn forget(&self, relative: &Path) {
        if let Err(e) = self.ledger.remove_later(relative).await {
            tracing::warn!(error = %e, "could not forget a multipart upload in the ledger: {e}");
        }
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
        assert_eq!(plan.part(5, 40 * MIB), (5, 32 * MIB, 8 * MIB));
        let odd = PartPlan::new(41 * MIB + 3, 8 * MIB);
        assert_eq!(odd.count, 6);
        assert_eq!(odd.part(6, 41 * MIB + 3), (6, 40 * MIB, MIB + 3));
        // 1 TiB at 8 MiB would be 131,072 parts: raised to whole MiB within 10,000.
        let big = PartPlan::new(1 << 40, 8 * MIB);
        assert!(big.count <= MAX_PARTS, "{big:?}");
        assert_eq!(big.part_size % MIB, 0);
        assert_eq!(big.part_size, 105 * MIB);
    }
}
