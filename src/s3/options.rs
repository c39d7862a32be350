//! The options every object is written with, resolved for this host from the config's
//! [`ObjectOptions`] (tag and metadata values have their placeholders filled), in the
//! SDK's types. The same options go on a PutObject and on a CreateMultipartUpload.

use std::collections::HashMap;

use aws_sdk_s3::types::{ObjectCannedAcl, ServerSideEncryption, StorageClass};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::config::{ConfigError, ObjectOptions, PrefixFacts, Sse};

/// RFC 3986's unreserved characters stay as they are in the tagging header.
const TAG_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const MAX_TAG_VALUE: usize = 256;
const MAX_METADATA_BYTES: usize = 2048;

#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub storage_class: Option<StorageClass>,
    pub sse: Option<ServerSideEncryption>,
    pub kms_key_id: Option<String>,
    pub bucket_key: Option<bool>,
    pub acl: Option<ObjectCannedAcl>,
    /// `x-amz-tagging`: `k=v&k2=v2`, percent-encoded.
    pub tagging: Option<String>,
    pub metadata: Option<HashMap<String, String>>,
    /// `If-None-Match: *` on PutObject and CompleteMultipartUpload (`overwrite = false`).
    pub if_none_match: Option<String>,
    options: ObjectOptions,
}

impl WriteOptions {
    /// Fills in the placeholders of tag and metadata values and checks S3's limits again
    /// with the values filled in.
    pub fn resolve(
        options: &ObjectOptions,
        overwrite: bool,
        facts: &PrefixFacts<'_>,
    ) -> Result<Self, ConfigError> {
        let (sse, kms_key_id) = match &options.sse {
            None => (None, None),
            Some(Sse::Aes256) => (Some(ServerSideEncryption::Aes256), None),
            Some(Sse::Kms {
                dual_layer,
                key_arn,
            }) => (
                Some(if *dual_layer {
                    ServerSideEncryption::AwsKmsDsse
                } else {
                    ServerSideEncryption::AwsKms
                }),
                Some(key_arn.clone()),
            ),
        };
        let mut tags = Vec::new();
        for (key, value) in &options.tags {
            let value = value.expand(facts)?;
            if value.chars().count() > MAX_TAG_VALUE {
                return Err(crate::config::invalid(
                    "tags",
                    format!("the value of {key:?} is over {MAX_TAG_VALUE} characters: {value:?}"),
                ));
            }
            tags.push(format!(
                "{}={}",
                utf8_percent_encode(key, TAG_ENCODE),
                utf8_percent_encode(&value, TAG_ENCODE)
            ));
        }
        let mut metadata = HashMap::new();
        let mut bytes = 0;
        for (key, value) in &options.metadata {
            let value = value.expand(facts)?;
            bytes += key.len() + value.len();
            metadata.insert(key.clone(), value);
        }
        if bytes > MAX_METADATA_BYTES {
            return Err(crate::config::invalid(
                "metadata",
                format!("is {bytes} bytes once filled in; S3 allows {MAX_METADATA_BYTES}"),
            ));
        }
        Ok(WriteOptions {
            storage_class: options.storage_class.clone(),
            sse,
            kms_key_id,
            bucket_key: options.bucket_key,
            acl: options.acl.clone(),
            tagging: (!tags.is_empty()).then(|| tags.join("&")),
            metadata: (!metadata.is_empty()).then_some(metadata),
            if_none_match: (!overwrite).then(|| "*".to_string()),
            options: options.clone(),
        })
    }

    /// The same options without the condition: `check`'s probe overwrites its one key.
    pub fn allowing_overwrite(mut self) -> Self {
        self.if_none_match = None;
        self
    }

    /// The Content-Type for an object named `key`.
    pub fn content_type(&self, key: &str) -> String {
        self.options.content_type_for(key)
    }
}
