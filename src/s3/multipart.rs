//! The multipart operations: create, upload a part, complete, abort. Each goes through
//! [`S3::call`]; which parts to send and how progress is kept is the upload layer's
//! business.

use aws_sdk_s3::types::ChecksumAlgorithm;

use super::{Checksum, S3, S3Error, confirm, stream_body};
use crate::file::OpenedFile;

/// A part S3 confirmed: what CompleteMultipartUpload needs back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: i32,
    pub etag: String,
    /// `None` when the server did not answer with the part's checksum.
    pub crc32c: Option<String>,
}

impl S3 {
    /// Starts a multipart upload with CRC32C part checksums; returns its UploadId.
    pub async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        const OP: &str = "CreateMultipartUpload";
        let out = send!(
            self,
            OP,
            object create_multipart_upload(key).checksum_algorithm(ChecksumAlgorithm::Crc32C)
        )
        .await?;
        out.upload_id()
            .map(String::from)
            .ok_or(S3Error::Incomplete {
                op: OP,
                missing: "the UploadId",
            })
    }

    /// Sends part `number` (bytes `offset..offset+len` of `file`), streamed from disk with
    /// a CRC32C the SDK computes on the way and sends as a trailer; S3 checks it.
    pub async fn upload_part(
        &self,
        file: &OpenedFile,
        key: &str,
        upload_id: &str,
        (number, offset, len): (i32, u64, u64),
    ) -> Result<CompletedPart, S3Error> {
        const OP: &str = "UploadPart";
        let out = send!(
            self,
            OP,
            upload_part(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                // The SDK computes the CRC32C as the part streams and sends it as a
                // trailer; S3 checks it and answers with the value.
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .body(stream_body(file, offset, len).await?)
        )
        .await?;
        Ok(CompletedPart {
            number,
            etag: out.e_tag().unwrap_or_default().to_string(),
            crc32c: confirm(OP, None, out.checksum_crc32_c())?
                .crc32c()
                .map(String::from),
        })
    }

    /// Completes the upload from its parts (in order); S3 checks every part checksum.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<Checksum, S3Error> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart as Part};
        const OP: &str = "CompleteMultipartUpload";
        let completed = &CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        Part::builder()
                            .part_number(p.number)
                            .e_tag(&p.etag)
                            .set_checksum_crc32_c(p.crc32c.clone())
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let out = send!(
            self,
            OP,
            complete_multipart_upload(key)
                .set_if_none_match(self.options.if_none_match.clone())
                .upload_id(upload_id)
                .multipart_upload(completed.clone())
        )
        .await?;
        confirm(OP, None, out.checksum_crc32_c())
    }

    /// Abandons an upload whose file changed; S3 frees its parts. An upload S3 no longer
    /// knows is as good as aborted.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        const OP: &str = "AbortMultipartUpload";
        let aborted = send!(self, OP, abort_multipart_upload(key).upload_id(upload_id)).await;
        match aborted {
            Err(e) if e.class() == super::ErrorClass::NoSuchUpload => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
