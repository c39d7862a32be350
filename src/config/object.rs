//! What every object is written with (`storage_class`, `sse`, `acl`, `tags`, `metadata`,
//! `content_type`), validated against S3's own lists and limits at start-up, so a typo is
//! a config error rather than a refused PUT per file.

use std::collections::BTreeMap;

use aws_sdk_s3::types::{ObjectCannedAcl, StorageClass};

use super::template::Template;
use super::{ConfigError, invalid, quoted};

/// S3's limits on object tags and user metadata.
const MAX_TAGS: usize = 10;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;
const MAX_METADATA_BYTES: usize = 2048;

/// Server-side encryption, as `sse` (and `sse_kms_key_id`) say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    /// `aws:kms` or `aws:kms:dsse` with this key's ARN (the session policy names it).
    Kms {
        dual_layer: bool,
        key_arn: String,
    },
}

/// How each object's Content-Type is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ContentType {
    /// From the file name's extension; `application/octet-stream` when unknown.
    #[default]
    Auto,
    Fixed(String),
}

/// The validated object options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectOptions {
    pub storage_class: Option<StorageClass>,
    pub sse: Option<Sse>,
    pub bucket_key: Option<bool>,
    pub acl: Option<ObjectCannedAcl>,
    /// Tag values and metadata values may hold the key prefix's placeholders.
    pub tags: BTreeMap<String, Template>,
    pub metadata: BTreeMap<String, Template>,
    pub content_type: ContentType,
}

/// The raw keys this module validates together.
pub(super) struct RawObject<'a> {
    pub storage_class: Option<&'a str>,
    pub sse: Option<&'a str>,
    pub sse_kms_key_id: Option<&'a str>,
    pub bucket_key: Option<bool>,
    pub acl: Option<&'a str>,
    pub tags: &'a BTreeMap<String, String>,
    pub metadata: &'a BTreeMap<String, String>,
    pub content_type: Option<&'a str>,
}

impl RawObject<'_> {
    pub fn validate(&self) -> Result<ObjectOptions, ConfigError> {
        Ok(ObjectOptions {
            storage_class: one_of("storage_class", self.storage_class, StorageClass::values())?
                .map(StorageClass::from),
            sse: self.sse()?,
            bucket_key: self.bucket_key,
            acl: one_of("acl", self.acl, ObjectCannedAcl::values())?.map(ObjectCannedAcl::from),
            tags: self.tags()?,
            metadata: self.metadata()?,
            content_type: self.content_type()?,
        })
    }

    fn sse(&self) -> Result<Option<Sse>, ConfigError> {
        let kms = |dual_layer| match self.sse_kms_key_id {
            Some(arn) if is_kms_key_arn(arn) => Ok(Some(Sse::Kms {
                dual_layer,
                key_arn: arn.to_string(),
            })),
            Some(other) => Err(invalid(
                "sse_kms_key_id",
                format!(
                    "{q} is not a KMS key ARN like \
                     \"arn:aws:kms:eu-west-1:123456789012:key/1234abcd-…\" (an alias or key id \
                     cannot be named in the session policy)",
                    q = quoted(other)
                ),
            )),
            None => Err(invalid(
                "sse_kms_key_id",
                "is required with sse = \"aws:kms\" or \"aws:kms:dsse\": the key's ARN, which \
                 the session policy allows kms:GenerateDataKey and kms:Decrypt on",
            )),
        };
        let sse = match self.sse {
            None => None,
            Some("AES256") => Some(Sse::Aes256),
            Some("aws:kms") => kms(false)?,
            Some("aws:kms:dsse") => kms(true)?,
            Some(other) => {
                return Err(invalid(
                    "sse",
                    format!(
                        "{q} is not one of \"AES256\", \"aws:kms\", \"aws:kms:dsse\"",
                        q = quoted(other)
                    ),
                ));
            }
        };
        let is_kms = matches!(sse, Some(Sse::Kms { .. }));
        if self.sse_kms_key_id.is_some() && !is_kms {
            return Err(invalid(
                "sse_kms_key_id",
                "is only used with sse = \"aws:kms\" or \"aws:kms:dsse\"",
            ));
        }
        if self.bucket_key.is_some() && !is_kms {
            return Err(invalid(
                "bucket_key",
                "is only used with sse = \"aws:kms\" or \"aws:kms:dsse\" (S3 Bucket Keys are \
                 for KMS encryption)",
            ));
        }
        Ok(sse)
    }

    fn tags(&self) -> Result<BTreeMap<String, Template>, ConfigError> {
        if self.tags.len() > MAX_TAGS {
            return Err(invalid(
                "tags",
                format!("has {} tags; S3 allows at most {MAX_TAGS}", self.tags.len()),
            ));
        }
        let mut tags = BTreeMap::new();
        for (key, value) in self.tags {
            if key.is_empty() || key.chars().count() > MAX_TAG_KEY {
                return Err(invalid(
                    "tags",
                    format!(
                        "tag key {q} must be 1 to {MAX_TAG_KEY} characters",
                        q = quoted(key)
                    ),
                ));
            }
            let value = Template::parse("tags", value)?;
            // The placeholders' values are short; the literal part must fit already.
            if value.literal_len() > MAX_TAG_VALUE {
                return Err(invalid(
                    "tags",
                    format!(
                        "the value of {q} is over {MAX_TAG_VALUE} characters",
                        q = quoted(key)
                    ),
                ));
            }
            tags.insert(key.clone(), value);
        }
        Ok(tags)
    }

    fn metadata(&self) -> Result<BTreeMap<String, Template>, ConfigError> {
        let mut metadata = BTreeMap::new();
        let mut bytes = 0;
        for (key, value) in self.metadata {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    "metadata",
                    format!(
                        "key {q} must be ASCII letters, digits, `-` or `_` (it becomes the \
                         header x-amz-meta-<key>)",
                        q = quoted(key)
                    ),
                ));
            }
            if !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
                return Err(invalid(
                    "metadata",
                    format!(
                        "the value of {q} must be printable ASCII (it is sent as a header)",
                        q = quoted(key)
                    ),
                ));
            }
            let value = Template::parse("metadata", value)?;
            bytes += key.len() + value.literal_len();
            metadata.insert(key.to_ascii_lowercase(), value);
        }
        if bytes > MAX_METADATA_BYTES {
            return Err(invalid(
                "metadata",
                format!("is {bytes} bytes of keys and values; S3 allows {MAX_METADATA_BYTES}"),
            ));
        }
        Ok(metadata)
    }

    fn content_type(&self) -> Result<ContentType, ConfigError> {
        match self.content_type {
            None | Some("auto") => Ok(ContentType::Auto),
            Some(fixed) => match fixed.parse::<mime_guess::mime::Mime>() {
                Ok(_) => Ok(ContentType::Fixed(fixed.to_string())),
                Err(e) => Err(invalid(
                    "content_type",
                    format!(
                        "{q} is neither \"auto\" nor a media type: {e}",
                        q = quoted(fixed)
                    ),
                )),
            },
        }
    }
}

/// `value` if it is one of `valid` (S3's own list, from the SDK), else an error listing them.
fn one_of<'a>(
    key: &'static str,
    value: Option<&'a str>,
    valid: &[&str],
) -> Result<Option<&'a str>, ConfigError> {
    match value {
        Some(v) if !valid.contains(&v) => Err(invalid(
            key,
            format!("{q} is not one of {}", valid.join(", "), q = quoted(v)),
        )),
        other => Ok(other),
    }
}

/// `arn:<partition>:kms:<region>:<account>:key/<id>`.
fn is_kms_key_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(
        parts[..],
        ["arn", partition, "kms", region, account, resource]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && account.chars().all(|c| c.is_ascii_digit())
                && resource.strip_prefix("key/").is_some_and(|id| !id.is_empty())
    )
}

impl ObjectOptions {
    /// The Content-Type for an object named `key`.
    pub fn content_type_for(&self, key: &str) -> String {
        match &self.content_type {
            ContentType::Fixed(fixed) => fixed.clone(),
            ContentType::Auto => mime_guess::from_path(key)
                .first_raw()
                .unwrap_or("application/octet-stream")
                .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const KEY_ARN: &str =
        "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn with(extra: &str) -> Result<ObjectOptions, String> {
        Config::parse(&format!(
            "watch_dir = \"/srv/drop\"\nbucket = \"my-bucket\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/u\"\n{extra}"
        ))
        .map(|c| c.object)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn every_option_is_read_and_defaults_are_s3s() {
        let none = with("").unwrap();
        assert_eq!(none, ObjectOptions::default());
        assert_eq!(none.content_type_for("a/b.json"), "application/json");
        assert_eq!(
            none.content_type_for("a/b.unknownext"),
            "application/octet-stream"
        );
        let all = with(&format!(
            "storage_class = \"STANDARD_IA\"\nsse = \"aws:kms\"\nsse_kms_key_id = \"{KEY_ARN}\"\n\
             bucket_key = true\nacl = \"bucket-owner-full-control\"\n\
             tags = {{ team = \"data\", host = \"{{hostname}}\" }}\n\
             metadata = {{ Source = \"{{instance_id}}\" }}\ncontent_type = \"text/plain\""
        ))
        .unwrap();
        assert_eq!(all.storage_class, Some(StorageClass::StandardIa));
        assert_eq!(
            all.sse,
            Some(Sse::Kms {
                dual_layer: false,
                key_arn: KEY_ARN.into()
            })
        );
        assert_eq!(all.acl, Some(ObjectCannedAcl::BucketOwnerFullControl));
        assert_eq!(all.tags.len(), 2);
        assert!(
            all.metadata.contains_key("source"),
            "lower-cased as S3 does"
        );
        assert_eq!(all.content_type_for("x.json"), "text/plain");
    }

    #[test]
    fn what_s3_would_refuse_is_a_config_error_naming_the_key() {
        let cases = [
            ("storage_class = \"CHEAP\"", "STANDARD_IA"),
            ("sse = \"kms\"", "aws:kms"),
            ("sse = \"aws:kms\"", "sse_kms_key_id"),
            (
                "sse = \"aws:kms\"\nsse_kms_key_id = \"alias/mine\"",
                "KMS key ARN",
            ),
            ("sse = \"AES256\"\nsse_kms_key_id = \"x\"", "sse_kms_key_id"),
            ("bucket_key = true", "bucket_key"),
            ("acl = \"everyone\"", "bucket-owner-full-control"),
            ("metadata = { \"a b\" = \"x\" }", "metadata"),
            ("metadata = { a = \"é\" }", "printable ASCII"),
            ("content_type = \"not a type\"", "content_type"),
            ("tags = { a = \"{nope}\" }", "unknown placeholder"),
        ];
        for (extra, needle) in cases {
            let e = with(extra).unwrap_err();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        let eleven: Vec<String> = (0..11).map(|i| format!("t{i} = \"v\"")).collect();
        let e = with(&format!("tags = {{ {} }}", eleven.join(", "))).unwrap_err();
        assert!(e.contains("at most 10"), "{e}");
        let e = with(&format!("tags = {{ a = \"{}\" }}", "v".repeat(257))).unwrap_err();
        assert!(e.contains("256"), "{e}");
        let e = with(&format!("metadata = {{ a = \"{}\" }}", "v".repeat(2048))).unwrap_err();
        assert!(e.contains("2048"), "{e}");
    }
}
