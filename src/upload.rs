//! Uploading one file: open it without following links or blocking on FIFOs, send it with
//! its CRC32C (in a header for a small file read into memory, as a trailer the SDK computes
//! while streaming a larger one) so S3 verifies what it stores, and classify failures by
//! what s3drop should do next. Every byte is read from disk once.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_smithy_checksums::ChecksumAlgorithm;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::credentials::SessionCredentials;
use crate::ledger::{FileIdentity, PartRecord};

const READ_CHUNK: usize = 256 * 1024;
/// Files up to this size are read once into memory and sent from there; larger ones stream
/// from disk. Buffers are thus at most `concurrency` × 1 MiB.
pub const IN_MEMORY_MAX: u64 = 1024 * 1024;

/// Why a file could not be opened for upload.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the file disappeared before it could be uploaded")]
    Vanished,
    #[error("not a regular file ({kind}); s3drop never opens or uploads these")]
    NotRegular { kind: &'static str },
    #[error("no permission to read the file: {0}")]
    Permission(io::Error),
    #[error("cannot read the file: {0}")]
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => OpenError::Vanished,
            io::ErrorKind::PermissionDenied => OpenError::Permission(e),
            _ if e.raw_os_error() == Some(libc::ELOOP) => OpenError::NotRegular { kind: "symlink" },
            _ => OpenError::Io(e),
        }
    }
}

/// A regular file opened for reading, with the identity it had when opened.
#[derive(Debug)]
pub struct OpenedFile {
    file: File,
    pub identity: FileIdentity,
}

pub fn file_kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else {
        "unknown file type"
    }
}

impl OpenedFile {
    /// `O_NOFOLLOW` refuses a symlink even if one is swapped in after the scan, and
    /// `O_NONBLOCK` keeps a FIFO from blocking the open; the type is then checked on the
    /// descriptor itself.
    pub fn open(path: &Path) -> Result<OpenedFile, OpenError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(OpenError::NotRegular {
                kind: file_kind(&meta.file_type()),
            });
        }
        Ok(OpenedFile {
            identity: FileIdentity::of(&meta),
            file,
        })
    }

    /// The whole file as opened, in one buffer.
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.identity.size as usize];
        self.file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// A retryable body of `len` bytes from `offset`, streamed from disk.
    async fn body(&self, offset: u64, len: u64) -> Result<ByteStream, UploadError> {
        ByteStream::read_from()
            .path(self.proc_path())
            .offset(offset)
            .length(Length::Exact(len))
            .buffer_size(READ_CHUNK)
            .build()
            .await
            .map_err(|e| UploadError::Read(io::Error::other(e)))
    }

    /// Has the file changed (on its descriptor, or the path now names another file) since
    /// it was opened?
    pub fn changed_since_open(&self, path: &Path) -> io::Result<bool> {
        let now_fd = FileIdentity::of(&self.file.metadata()?);
        let now_path = match std::fs::symlink_metadata(path) {
            Ok(meta) => Some(FileIdentity::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(now_fd != self.identity || now_path.is_some_and(|p| p != self.identity))
    }

    /// A path that reopens this very inode (not whatever the name points to now), so the
    /// SDK can re-read the body when it retries a request.
    fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }
}

/// What S3 confirmed.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub crc32c: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("S3 denied the write ({code}): {message}")]
    Denied { code: String, message: String },
    #[error("the bucket does not exist: {message}")]
    NoSuchBucket { message: String },
    #[error("S3 refused the session token as expired or invalid ({code})")]
    TokenExpired { code: String },
    #[error("S3 found the body did not match its checksum (the file changed while being sent)")]
    ChecksumMismatch,
    #[error("transient failure: {0}")]
    Transient(String),
    #[error("S3 rejected the request ({code}): {message}")]
    Rejected { code: String, message: String },
    #[error("cannot read the file for upload: {0}")]
    Read(io::Error),
    #[error("S3 no longer knows the multipart upload (aborted or expired)")]
    NoSuchUpload,
    #[error("the file changed while it was being uploaded")]
    Changed,
}

impl UploadError {
    /// Permanent failures need an operator (permissions, bucket, key); retrying soon will
    /// not help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            UploadError::Denied { .. }
                | UploadError::NoSuchBucket { .. }
                | UploadError::Rejected { .. }
        )
    }
}

/// The checksum S3 stored: the one sent in a header (S3 may echo it, and it must match),
/// or the one it answered for a trailer the SDK computed.
fn confirmed(sent: Option<String>, answered: Option<&str>) -> Result<Confirmed, UploadError> {
    match (sent, answered) {
        (Some(sent), Some(answered)) if sent != answered => Err(UploadError::Transient(format!(
            "S3 stored CRC32C {answered}, expected {sent}"
        ))),
        (Some(crc32c), _) => Ok(Confirmed { crc32c }),
        (None, Some(answered)) => Ok(Confirmed {
            crc32c: answered.to_string(),
        }),
        (None, None) => Err(UploadError::Transient(
            "S3 did not confirm the upload's CRC32C".into(),
        )),
    }
}

/// CRC32C of `bytes`, base64 as S3 spells it.
fn crc32c_of(bytes: &[u8]) -> String {
    let mut hasher = ChecksumAlgorithm::Crc32c.into_impl();
    hasher.update(bytes);
    aws_smithy_types::base64::encode(hasher.finalize())
}

/// A file that ends early was truncated under us: a change, not a read failure.
fn read_error(e: io::Error) -> UploadError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        UploadError::Changed
    } else {
        UploadError::Read(e)
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> UploadError {
    let detail = DisplayErrorContext(&err).to_string();
    let SdkError::ServiceError(service) = &err else {
        // Timeouts, connection failures, unreadable responses, and failures to obtain
        // credentials (IMDS or STS unavailable) are all worth retrying.
        return UploadError::Transient(detail);
    };
    let status = service.raw().status().as_u16();
    let code = service.err().code().unwrap_or("").to_string();
    let message = service.err().message().unwrap_or("").to_string();
    match code.as_str() {
        "ExpiredToken"
        | "InvalidToken"
        | "TokenRefreshRequired"
        | "ExpiredTokenException"
        | "InvalidAccessKeyId" => UploadError::TokenExpired { code },
        "BadDigest"
        | "InvalidDigest"
        | "XAmzContentChecksumMismatch"
        | "XAmzContentSHA256Mismatch" => UploadError::ChecksumMismatch,
        "NoSuchBucket" => UploadError::NoSuchBucket { message },
        "NoSuchUpload" => UploadError::NoSuchUpload,
        // The emulator says AccessDeniedException where S3 says AccessDenied.
        "AccessDenied" | "AccessDeniedException" => UploadError::Denied { code, message },
        "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" => {
            UploadError::Transient(detail)
        }
        _ if status == 403 => UploadError::Denied { code, message },
        _ if status >= 500 || status == 429 || status == 408 => UploadError::Transient(detail),
        _ => UploadError::Rejected {
            code: if code.is_empty() {
                status.to_string()
            } else {
                code
            },
            message,
        },
    }
}

#[derive(Clone, Debug)]
pub struct Uploader {
    client: Client,
    bucket: String,
    credentials: SessionCredentials,
}

impl Uploader {
    pub fn new(client: Client, bucket: String, credentials: SessionCredentials) -> Self {
        Uploader {
            client,
            bucket,
            credentials,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Which session signs the next request, so an ExpiredToken answer drops that one only.
    async fn session_in_use(&self) -> Option<String> {
        let credentials = self.credentials.get().await.ok()?;
        Some(credentials.access_key_id().to_string())
    }

    async fn classify_and_heal<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        session: Option<String>,
        err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> UploadError {
        let err = classify(err);
        if let (UploadError::TokenExpired { .. }, Some(session)) = (&err, session) {
            self.credentials.invalidate(&session).await;
        }
        err
    }

    /// PUTs the file under `key` with its CRC32C; S3 stores it only if the bytes match. A
    /// small file is read once and sent from memory with the checksum in a header; a larger
    /// one is read from disk once as it streams, the SDK computing the checksum on the way
    /// and sending it as a trailer.
    pub async fn put_file(&self, file: &OpenedFile, key: &str) -> Result<Confirmed, UploadError> {
        let size = file.identity.size;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(size as i64);
        let (request, sent) = if size <= IN_MEMORY_MAX {
            let bytes = file.read_all().map_err(read_error)?;
            let crc32c = crc32c_of(&bytes);
            let request = request
                .checksum_crc32_c(&crc32c)
                .body(ByteStream::from(bytes));
            (request, Some(crc32c))
        } else {
            let request = request
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C)
                .body(file.body(0, size).await?);
            (request, None)
        };
        let session = self.session_in_use().await;
        match request.send().await {
            Ok(output) => confirmed(sent, output.checksum_crc32_c()),
            Err(err) => Err(self.classify_and_heal(session, err).await),
        }
    }

    /// Starts a multipart upload with CRC32C part checksums; returns its UploadId.
    pub async fn create_multipart(&self, key: &str) -> Result<String, UploadError> {
        let session = self.session_in_use().await;
        match self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C)
            .send()
            .await
        {
            Ok(out) => out
                .upload_id()
                .map(String::from)
                .ok_or_else(|| UploadError::Transient("no UploadId in the answer".into())),
            Err(err) => Err(self.classify_and_heal(session, err).await),
        }
    }

    /// Sends part `number` (bytes `offset..offset+len`) with its CRC32C.
    pub async fn upload_part(
        &self,
        file: &OpenedFile,
        key: &str,
        upload_id: &str,
        number: i32,
        offset: u64,
        len: u64,
    ) -> Result<PartRecord, UploadError> {
        let body = file.body(offset, len).await?;
        let session = self.session_in_use().await;
        match self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .content_length(len as i64)
            // The SDK computes the CRC32C as the part streams and sends it as a trailer, so
            // the part is read from disk once; S3 checks it and answers with the value.
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C)
            .send()
            .await
        {
            Ok(out) => Ok(PartRecord {
                number,
                etag: out.e_tag().unwrap_or_default().to_string(),
                crc32c: confirmed(None, out.checksum_crc32_c())?.crc32c,
            }),
            Err(err) => Err(self.classify_and_heal(session, err).await),
        }
    }

    /// Completes the upload from its parts (in order); S3 checks every part checksum.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartRecord],
    ) -> Result<Confirmed, UploadError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.number)
                            .e_tag(&p.etag)
                            .checksum_crc32_c(&p.crc32c)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let session = self.session_in_use().await;
        match self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
        {
            Ok(out) => Ok(Confirmed {
                crc32c: out.checksum_crc32_c().unwrap_or_default().to_string(),
            }),
            Err(err) => Err(self.classify_and_heal(session, err).await),
        }
    }

    /// Abandons an upload whose file changed; S3 frees its parts.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), UploadError> {
        let session = self.session_in_use().await;
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => match self.classify_and_heal(session, err).await {
                UploadError::NoSuchUpload => Ok(()),
                other => Err(other),
            },
        }
    }

    /// PUTs a small in-memory body (used by `check` for its probes).
    pub async fn put_bytes(&self, key: &str, body: &'static [u8]) -> Result<(), UploadError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from_static(body))
            .checksum_crc32_c(crc32c_of(body))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_known_value() {
        // CRC-32C check value for "123456789" is 0xE3069283.
        assert_eq!(
            crc32c_of(b"123456789"),
            aws_smithy_types::base64::encode(0xE306_9283u32.to_be_bytes())
        );
    }

    #[test]
    fn only_a_checksum_s3_confirmed_counts() {
        let ok = |sent: Option<&str>, answered| {
            confirmed(sent.map(String::from), answered).map(|c| c.crc32c)
        };
        assert_eq!(ok(Some("AAAAAA=="), None).unwrap(), "AAAAAA==");
        assert_eq!(ok(Some("AAAAAA=="), Some("AAAAAA==")).unwrap(), "AAAAAA==");
        assert_eq!(ok(None, Some("BBBBBB==")).unwrap(), "BBBBBB==");
        assert!(matches!(
            ok(Some("AAAAAA=="), Some("BBBBBB==")),
            Err(UploadError::Transient(_))
        ));
        assert!(matches!(ok(None, None), Err(UploadError::Transient(_))));
    }

    #[test]
    fn symlinks_fifos_and_dirs_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        let kind = |p: &Path| match OpenedFile::open(p) {
            Err(OpenError::NotRegular { kind }) => kind,
            other => panic!("{p:?}: {other:?}"),
        };
        assert_eq!(kind(&link), "symlink");
        assert_eq!(kind(&fifo), "FIFO");
        assert_eq!(kind(dir.path()), "directory");
        assert!(matches!(
            OpenedFile::open(&dir.path().join("gone")),
            Err(OpenError::Vanished)
        ));
    }

    #[test]
    fn changes_after_open_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"first").unwrap();
        let file = OpenedFile::open(&path).unwrap();
        assert!(!file.changed_since_open(&path).unwrap());
        std::fs::write(&path, b"second, longer").unwrap();
        assert!(file.changed_since_open(&path).unwrap());
    }
}
