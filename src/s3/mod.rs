//! S3, behind one seam ([`Store`]): the real client for one bucket ([`S3`], the only
//! production path) or the in-memory store the tests drive ([`memory::Memory`]). Every
//! operation of either goes through one envelope ([`with_session`]): take the current
//! session's credentials, send, classify the answer ([`error::classify`]), and on
//! `ExpiredToken` drop exactly that session and send once more with a new one. Credentials
//! are handed to each request, not baked into the client, so which session signs a request
//! is the caller's (and the cache's) choice.
//!
//! Operations: `put_object` (from memory or streamed from a file), [`S3::put_bytes`]
//! (check's probes), and multipart ([`multipart`]).

mod error;

/// Sends S3 request `$method` on object `$key` of the bucket, with the setters given,
/// through [`S3::call`]: signed by the session of the moment, the SDK's error turned into
/// an [`S3Error`] for `$op`. Setter arguments are evaluated inside the request's future
/// (so `.await?` works there), once per attempt.
/// `object` before the method: a write that creates an object (PutObject,
/// CreateMultipartUpload), which carries the configured [`WriteOptions`].
macro_rules! send {
    ($s3:ident, $op:expr, object $method:ident($key:expr) $(.$setter:ident($($arg:expr),*))*) => {
        send!(
            $s3,
            $op,
            $method($key)
                .set_storage_class($s3.options.storage_class.clone())
                .set_server_side_encryption($s3.options.sse.clone())
                .set_ssekms_key_id($s3.options.kms_key_id.clone())
                .set_bucket_key_enabled($s3.options.bucket_key)
                .set_acl($s3.options.acl.clone())
                .set_tagging($s3.options.tagging.clone())
                .set_metadata($s3.options.metadata.clone())
                .content_type($s3.options.content_type($key))
                $(.$setter($($arg),*))*
        )
    };
    ($s3:ident, $op:expr, $method:ident($key:expr) $(.$setter:ident($($arg:expr),*))*) => {
        $s3.call($op, || async move {
            $s3.client
                .$method()
                .bucket(&$s3.bucket)
                .key($key)
                $(.$setter($($arg),*))*
                .send()
                .await
                .map_err(|e| S3Error::from_sdk($op, e))
        })
    };
}

pub mod memory;
mod multipart;
mod options;
mod store;

use std::future::Future;

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::IdentityCache;
use aws_sdk_s3::primitives::{ByteStream, Length};
use bytes::Bytes;

pub use error::{ErrorClass, S3Error, classify};
pub use multipart::CompletedPart;
pub use options::WriteOptions;
pub use store::Store;

use crate::auth::SessionCredentials;
use crate::file::OpenedFile;

/// Files up to this size are read once into memory and sent from there; larger ones are
/// checksummed in a first pass, then stream from disk. Buffers are thus at most
/// `concurrency` × 1 MiB.
pub const IN_MEMORY_MAX: u64 = 1024 * 1024;
const READ_CHUNK: usize = 256 * 1024;

/// What S3 said it stored, checksum-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// S3 answered with this CRC32C (base64), equal to the one sent if one was.
    Verified(String),
    /// The server did not answer with a checksum (some S3-compatible servers never do).
    Unverified,
}

impl Checksum {
    pub fn crc32c(&self) -> Option<&str> {
        match self {
            Checksum::Verified(c) => Some(c),
            Checksum::Unverified => None,
        }
    }
}

/// The one rule for every operation: a checksum answer that differs from what was sent is
/// an error; an answer without one is accepted as unverified, never silently as verified.
pub fn confirm(
    op: &'static str,
    sent: Option<&str>,
    answered: Option<&str>,
) -> Result<Checksum, S3Error> {
    match (sent, answered) {
        (Some(sent), Some(answered)) if sent != answered => Err(S3Error::ChecksumMismatch {
            op,
            sent: sent.to_string(),
            answered: answered.to_string(),
        }),
        (_, Some(answered)) => Ok(Checksum::Verified(answered.to_string())),
        (_, None) => Ok(Checksum::Unverified),
    }
}

/// CRC32C of the whole file as opened, base64 as S3 spells it (read in chunks).
pub fn crc32c_of_file(file: &OpenedFile) -> std::io::Result<String> {
    let mut hasher = aws_smithy_checksums::ChecksumAlgorithm::Crc32c.into_impl();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut offset = 0;
    while offset < file.identity.size {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(aws_smithy_types::base64::encode(hasher.finalize()))
}

/// CRC32C of `bytes`, base64 as S3 spells it.
pub fn crc32c_of(bytes: &[u8]) -> String {
    let mut hasher = aws_smithy_checksums::ChecksumAlgorithm::Crc32c.into_impl();
    hasher.update(bytes);
    aws_smithy_types::base64::encode(hasher.finalize())
}

/// Sends `op` signed by the current session; on `ExpiredToken` drops exactly that session
/// and sends once more with a new one. Every store's every operation goes through it.
async fn with_session<T, F, Fut>(
    credentials: &SessionCredentials,
    op: &'static str,
    send: F,
) -> Result<T, S3Error>
where
    F: Fn(aws_credential_types::Credentials) -> Fut,
    Fut: Future<Output = Result<T, S3Error>>,
{
    let mut retried = false;
    loop {
        let signing = credentials.get().await.map_err(|e| S3Error::Credentials {
            op,
            refused: e.is_permanent(),
            message: e.to_string(),
        })?;
        let session = signing.access_key_id().to_string();
        match send(signing).await {
            Err(e) if e.class() == ErrorClass::ExpiredToken && !retried => {
                crate::events::Event::emit(crate::events::TokenRefused);
                credentials.invalidate(&session).await;
                retried = true;
            }
            other => return other,
        }
    }
}

tokio::task_local! {
    /// The credentials the envelope chose for the request being sent ([`S3::call`]).
    static SIGNING: aws_credential_types::Credentials;
}

/// The client's credentials provider: whatever the envelope chose for this request. The
/// SDK resolves the identity inside the request's own future, where [`SIGNING`] is set;
/// with no identity cache it asks for every request. (A per-request `config_override`
/// did the same at the price of rebuilding the request's runtime configuration: about
/// 5 % of the daemon's CPU at 1,800 files/s, `perf`, issue 26.)
#[derive(Debug)]
struct ChosenByTheEnvelope;

impl aws_credential_types::provider::ProvideCredentials for ChosenByTheEnvelope {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(
            SIGNING.try_with(Clone::clone).map_err(|_| {
                aws_credential_types::provider::error::CredentialsError::not_loaded(
                    "no session was chosen for this request",
                )
            }),
        )
    }
}

/// A client for one bucket, signing with the upload session.
#[derive(Clone, Debug)]
pub struct S3 {
    client: Client,
    bucket: String,
    credentials: SessionCredentials,
    options: std::sync::Arc<WriteOptions>,
}

impl S3 {
    pub fn new(
        sdk: &SdkConfig,
        bucket: &str,
        force_path_style: bool,
        credentials: SessionCredentials,
        options: WriteOptions,
    ) -> S3 {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            // Each request is signed by the session `call` chose; the session cache
            // refreshes them, so the SDK must not cache identities per provider.
            .credentials_provider(ChosenByTheEnvelope)
            .identity_cache(IdentityCache::no_cache())
            .force_path_style(force_path_style)
            .build();
        S3 {
            client: Client::from_conf(config),
            bucket: bucket.to_string(),
            credentials,
            options: std::sync::Arc::new(options),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The envelope every operation goes through (see the module's doc).
    async fn call<T, F, Fut>(&self, op: &'static str, send: F) -> Result<T, S3Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, S3Error>>,
    {
        with_session(&self.credentials, op, |credentials| {
            SIGNING.scope(credentials, send())
        })
        .await
    }

    /// PUTs `file` as `key`, streamed from disk, with the CRC32C its bytes had when the
    /// caller read them (`crc32c`, in a header): S3 checks the body against it, so a file
    /// rewritten while it streams is refused (`BadDigest`), never stored torn. Files up to
    /// [`IN_MEMORY_MAX`] go through [`S3::put_bytes`] instead.
    pub async fn put_object(
        &self,
        file: &OpenedFile,
        key: &str,
        crc32c: &str,
    ) -> Result<Checksum, S3Error> {
        const OP: &str = "PutObject";
        let size = file.identity.size;
        let answered = send!(
            self,
            OP,
            object put_object(key)
                .set_if_none_match(self.options.if_none_match.clone())
                .content_length(size as i64)
                .checksum_crc32_c(crc32c)
                .body(stream_body(file, 0, size).await?)
        )
        .await?;
        confirm(OP, Some(crc32c), answered.checksum_crc32_c())
    }

    /// PUTs an in-memory body with its CRC32C in a header (small files, `check`'s probes).
    pub async fn put_bytes(&self, key: &str, body: Bytes) -> Result<Checksum, S3Error> {
        const OP: &str = "PutObject";
        let crc32c = &crc32c_of(&body);
        let body = &body;
        let answered = send!(
            self,
            OP,
            object put_object(key)
                .set_if_none_match(self.options.if_none_match.clone())
                .content_length(body.len() as i64)
                .checksum_crc32_c(crc32c)
                .body(ByteStream::from(body.clone()))
        )
        .await?;
        confirm(OP, Some(crc32c), answered.checksum_crc32_c())
    }
}

/// A retryable body of `len` bytes of `file` from `offset`, streamed from disk through
/// the descriptor that was checked (not whatever the path names now).
async fn stream_body(file: &OpenedFile, offset: u64, len: u64) -> Result<ByteStream, S3Error> {
    ByteStream::read_from()
        .path(file.proc_path())
        .offset(offset)
        .length(Length::Exact(len))
        .buffer_size(READ_CHUNK)
        .build()
        .await
        .map_err(|e| S3Error::Body(std::io::Error::other(e)))
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
    fn one_checksum_rule_for_every_answer() {
        let c = |sent, answered| confirm("PutObject", sent, answered);
        assert_eq!(
            c(Some("AAAAAA=="), Some("AAAAAA==")).unwrap(),
            Checksum::Verified("AAAAAA==".into())
        );
        assert_eq!(
            c(None, Some("BBBBBB==")).unwrap(),
            Checksum::Verified("BBBBBB==".into())
        );
        // Absent answers are unverified whether or not a checksum was sent.
        assert_eq!(c(Some("AAAAAA=="), None).unwrap(), Checksum::Unverified);
        assert_eq!(c(None, None).unwrap(), Checksum::Unverified);
        let mismatch = c(Some("AAAAAA=="), Some("BBBBBB==")).unwrap_err();
        assert_eq!(mismatch.class(), ErrorClass::BadChecksum);
        assert!(!mismatch.is_permanent());
    }
}
