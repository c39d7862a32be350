//! The seam the upload pipeline sees: the operations it uses, on the real client or the
//! in-memory store. A closed enum rather than a trait object: two implementations, one of
//! them for tests, and the real one stays a direct call.

use super::memory::Memory;
use super::{Checksum, CompletedPart, S3, S3Error};
use crate::file::OpenedFile;

#[derive(Clone, Debug)]
pub enum Store {
    S3(S3),
    Memory(Memory),
}

impl Store {
    pub fn bucket(&self) -> &str {
        match self {
            Store::S3(s3) => s3.bucket(),
            Store::Memory(m) => m.bucket(),
        }
    }

    /// PUTs the whole file as `key`, streamed, S3 checking it against `crc32c` (see
    /// [`S3::put_object`]).
    pub async fn put_object(
        &self,
        file: &OpenedFile,
        key: &str,
        crc32c: &str,
    ) -> Result<Checksum, S3Error> {
        match self {
            Store::S3(s3) => s3.put_object(file, key, crc32c).await,
            Store::Memory(m) => m.put_object(file, key, crc32c).await,
        }
    }

    /// PUTs `body` as `key` with its CRC32C in a header.
    pub async fn put_bytes(&self, key: &str, body: bytes::Bytes) -> Result<Checksum, S3Error> {
        match self {
            Store::S3(s3) => s3.put_bytes(key, body).await,
            Store::Memory(m) => m.put_bytes(key, body).await,
        }
    }

    pub async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        match self {
            Store::S3(s3) => s3.create_multipart(key).await,
            Store::Memory(m) => m.create_multipart(key).await,
        }
    }

    /// Sends part `number` (bytes `offset..offset+len` of `file`).
    pub async fn upload_part(
        &self,
        file: &OpenedFile,
        key: &str,
        upload_id: &str,
        part: (i32, u64, u64),
    ) -> Result<CompletedPart, S3Error> {
        match self {
            Store::S3(s3) => s3.upload_part(file, key, upload_id, part).await,
            Store::Memory(m) => m.upload_part(file, key, upload_id, part).await,
        }
    }

    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<Checksum, S3Error> {
        match self {
            Store::S3(s3) => s3.complete_multipart(key, upload_id, parts).await,
            Store::Memory(m) => m.complete_multipart(key, upload_id, parts).await,
        }
    }

    /// An upload the store no longer knows is as good as aborted.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        match self {
            Store::S3(s3) => s3.abort_multipart(key, upload_id).await,
            Store::Memory(m) => m.abort_multipart(key, upload_id).await,
        }
    }
}
