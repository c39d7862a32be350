//! The configuration file: parsed once (unknown keys rejected), validated once into a
//! [`Config`] that the rest of the daemon trusts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod credentials;
mod exclude;
mod object;
mod prefix;
pub mod reference;
mod template;

use bytesize::ByteSize;
use serde::Deserialize;

pub use credentials::{CredentialSource, MAX_FEDERATION_SECONDS, SessionType, partition_of_region};
pub use exclude::Exclude;
pub use object::{ContentType, ObjectOptions, Sse};
pub use prefix::KeyPrefixTemplate;
pub use template::{
    PrefixFacts, SEGMENT_RULE, Template, describe_segment, parse_key_template, unsafe_segment,
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/s3drop/s3drop.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "config file {path} is not trusted: {why}. It chooses the role, the bucket and whether \
         files are deleted, so only root or the user s3drop runs as may change it (for \
         development, {INSECURE_CONFIG_VAR}=1 accepts it)"
    )]
    Untrusted { path: PathBuf, why: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Set to `1`, a config file that [`check_trusted`] refuses is accepted (development).
pub const INSECURE_CONFIG_VAR: &str = "S3DROP_INSECURE_CONFIG";

/// Like sshd's StrictModes: the config (opened as `file`) must be owned by root or the user
/// s3drop runs as, and neither it nor its directory (unless sticky) writable by group or
/// others.
fn check_trusted(path: &Path, file: &std::fs::File) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let euid = rustix::process::geteuid().as_raw();
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "it is owned by uid {}, neither root nor the user s3drop runs as (uid {euid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "group or others may write it (mode {:04o}; `chmod go-w {}`)",
            meta.mode() & 0o7777,
            path.display()
        ));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir_meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    if dir_meta.mode() & 0o022 != 0 && dir_meta.mode() & 0o1000 == 0 {
        return Err(format!(
            "its directory {} is writable by group or others, who could replace it (mode \
             {:04o})",
            dir.display(),
            dir_meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A value as errors quote it: `Debug`-quoted, at most 64 characters of it (a config value
/// can be a megabyte).
pub(crate) fn quoted(value: &str) -> String {
    const MAX_CHARS: usize = 64;
    match value.char_indices().nth(MAX_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// `after_upload` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AfterUploadKind {
    Keep,
    Delete,
    Move,
}

/// What to do with a file once S3 has confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterUpload {
    Keep,
    Delete,
    /// Move it to this directory, keeping its path relative to `watch_dir`.
    Move(PathBuf),
}

/// The file as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    watch_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    bucket: String,
    role_arn: Option<String>,
    credential_source: Option<credentials::SourceKind>,
    source_profile: Option<String>,
    #[serde(default)]
    session_type: credentials::SessionKind,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
    region: Option<String>,
    external_id: Option<String>,
    session_duration_seconds: Option<u64>,
    #[serde(default = "default_after_upload")]
    after_upload: AfterUploadKind,
    move_to: Option<PathBuf>,
    #[serde(default = "default_exclude")]
    exclude: Vec<String>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "default_settle_seconds")]
    settle_seconds: u64,
    #[serde(default = "default_quiet_period_ms")]
    quiet_period_ms: u64,
    #[serde(default = "default_shutdown_timeout")]
    shutdown_timeout_seconds: u64,
    #[serde(default = "default_rescan_interval")]
    rescan_interval_seconds: u64,
    #[serde(default = "default_multipart_threshold")]
    multipart_threshold: ByteSize,
    #[serde(default = "default_part_size")]
    part_size: ByteSize,
    #[serde(default = "default_part_concurrency")]
    part_concurrency: usize,
    max_bandwidth: Option<ByteSize>,
    max_file_size: Option<ByteSize>,
    #[serde(default)]
    force_path_style: bool,
    storage_class: Option<String>,
    sse: Option<String>,
    sse_kms_key_id: Option<String>,
    bucket_key: Option<bool>,
    acl: Option<String>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    content_type: Option<String>,
    #[serde(default = "default_overwrite")]
    overwrite: bool,
    #[serde(default = "default_key_template")]
    key_template: String,
    metrics_listen: Option<String>,
    #[serde(default)]
    metrics_listen_public: bool,
    metrics_textfile: Option<PathBuf>,
    #[serde(default)]
    startup_jitter_seconds: u64,
    #[serde(default)]
    broker: bool,
    #[serde(default = "default_broker_socket")]
    broker_socket: PathBuf,
}

/// Where the broker listens by default: the unit's `RuntimeDirectory=s3drop` (0750, group
/// s3drop).
pub const DEFAULT_BROKER_SOCKET: &str = "/run/s3drop/broker.sock";

fn default_broker_socket() -> PathBuf {
    PathBuf::from(DEFAULT_BROKER_SOCKET)
}

fn default_key_template() -> String {
    "{path}".to_string()
}

fn default_overwrite() -> bool {
    true
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/s3drop")
}
fn default_key_prefix() -> String {
    "{instance_id}/".to_string()
}
fn default_after_upload() -> AfterUploadKind {
    AfterUploadKind::Keep
}
/// Names that are never finished files: hidden and temporary files (`.*` also covers
/// rsync's `.name.XXXXXX`, editors' `.name.swp` and lock files), partial downloads
/// (`*.part`: Firefox and many download tools; `*.crdownload`: Chrome; `*.download`:
/// Safari), editor backups and autosaves (`*~`, Emacs' `#name#`, and `4913`, the file vim
/// creates to test a directory), and SQLite's companions (`-journal`, `-wal`, `-shm`),
/// which exist only while a database is being written.
pub const DEFAULT_EXCLUDE: [&str; 12] = [
    ".*",
    "*.tmp",
    "*.part",
    "*.swp",
    "*~",
    "*.crdownload",
    "*.download",
    "#*#",
    "4913",
    "*-journal",
    "*-wal",
    "*-shm",
];

pub fn default_exclude() -> Vec<String> {
    DEFAULT_EXCLUDE.map(String::from).to_vec()
}
/// Defaults that other code (the benchmark, which gives peers s3drop's settings) reads.
pub mod defaults {
    pub const CONCURRENCY: usize = 16;
    pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
    pub const PART_SIZE: u64 = 8 << 20;
    pub const PART_CONCURRENCY: usize = 4;
}

fn default_concurrency() -> usize {
    defaults::CONCURRENCY
}
/// Long enough for what producers do right after a close (rsync and tar set the mtime,
/// SQLite deletes its journal: microseconds to a few milliseconds, more on a loaded
/// machine), short enough to keep close-to-stored latency (P3) p99 under 250 ms.
fn default_quiet_period_ms() -> u64 {
    100
}
fn default_settle_seconds() -> u64 {
    2
}
fn default_shutdown_timeout() -> u64 {
    30
}
fn default_rescan_interval() -> u64 {
    300
}
fn default_multipart_threshold() -> ByteSize {
    ByteSize::b(defaults::MULTIPART_THRESHOLD)
}
fn default_part_size() -> ByteSize {
    ByteSize::b(defaults::PART_SIZE)
}
fn default_part_concurrency() -> usize {
    defaults::PART_CONCURRENCY
}

/// S3 limits for multipart uploads.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// The largest single PutObject S3 accepts.
pub const MAX_SINGLE_PUT: u64 = 5 * 1024 * 1024 * 1024;

/// Validated configuration. Everything here has been checked; the key prefix still holds
/// placeholders that only the instance metadata can fill ([`KeyPrefixTemplate::expand`]).
#[derive(Debug, Clone)]
pub struct Config {
    pub watch_dir: PathBuf,
    pub state_dir: PathBuf,
    pub bucket: String,
    /// Where the base credentials come from.
    pub source: CredentialSource,
    /// How the scoped session is minted from them (and into which role).
    pub session: SessionType,
    pub key_prefix: KeyPrefixTemplate,
    pub region: Option<String>,
    pub session_duration: Duration,
    pub after_upload: AfterUpload,
    pub exclude: Exclude,
    pub concurrency: usize,
    /// How long a file found by a scan (not by an event) must stay unmodified before it
    /// counts as complete.
    pub settle: Duration,
    /// How long a closed or renamed-in file must stay untouched before it is taken: a
    /// delete, rename or write meanwhile cancels it, a touch restarts the wait.
    pub quiet_period: Duration,
    pub shutdown_timeout: Duration,
    /// A full scan at this interval catches anything the events missed.
    pub rescan_interval: Duration,
    /// Files larger than this go up in parts.
    pub multipart_threshold: u64,
    /// Part size before it is raised to keep a file within 10,000 parts.
    pub part_size: u64,
    /// Parts of one file sent at once.
    pub part_concurrency: usize,
    /// Bytes per second over all uploads, if capped.
    pub max_bandwidth: Option<u64>,
    /// A larger file is refused (kept, listed as failed), if set.
    pub max_file_size: Option<u64>,
    pub force_path_style: bool,
    /// What every object is written with.
    pub object: ObjectOptions,
    /// The first session is asked for after a random delay up to this long (fleets).
    pub startup_jitter: Duration,
    /// Where `GET /metrics` and `GET /health` are served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// node_exporter's textfile, rewritten every 15 s, if wanted.
    pub metrics_textfile: Option<PathBuf>,
    /// The part of each key after the prefix, filled per file (`{path}` by default).
    pub key_template: Template,
    /// May an upload replace an existing object? With `false` every write is conditional
    /// (`If-None-Match: *`) and a file whose key exists is left alone, recorded as a conflict.
    pub overwrite: bool,
    /// The credential broker's socket, when the broker is on (`broker = true`).
    pub broker: Option<PathBuf>,
}

impl Config {
    /// The partition ARNs are written in: the upload role's, else the region's.
    pub fn partition<'a>(&'a self, region: &str) -> &'a str {
        match self.session.role_arn() {
            Some(role) => role.partition(),
            None => partition_of_region(region),
        }
    }

    /// Reads and validates the config file, which must be trusted ([`check_trusted`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read)?;
        if std::env::var_os(INSECURE_CONFIG_VAR).is_none_or(|v| v != "1") {
            check_trusted(path, &file).map_err(|why| ConfigError::Untrusted {
                path: path.to_owned(),
                why,
            })?;
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(read)?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        raw.validate()
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        self.check_dirs()?;
        validate_bucket(&self.bucket)?;
        self.check_region()?;
        let (source, session, session_duration) = credentials::RawCredentials {
            credential_source: self.credential_source,
            source_profile: self.source_profile.as_deref(),
            session_type: self.session_type,
            role_arn: self.role_arn.as_deref(),
            external_id: self.external_id.as_deref(),
            session_duration_seconds: self.session_duration_seconds,
        }
        .validate()?;
        let key_prefix = KeyPrefixTemplate::parse(&self.key_prefix)?;
        let key_template = template::parse_key_template(&self.key_template)?;
        let metrics_listen = self.metrics_listen()?;
        if let Some(path) = &self.metrics_textfile
            && !path.is_absolute()
        {
            return Err(invalid("metrics_textfile", "must be an absolute path"));
        }
        if self.broker && !self.broker_socket.is_absolute() {
            return Err(invalid("broker_socket", "must be an absolute path"));
        }
        let object = object::RawObject {
            storage_class: self.storage_class.as_deref(),
            sse: self.sse.as_deref(),
            sse_kms_key_id: self.sse_kms_key_id.as_deref(),
            bucket_key: self.bucket_key,
            acl: self.acl.as_deref(),
            tags: &self.tags,
            metadata: &self.metadata,
            content_type: self.content_type.as_deref(),
        }
        .validate()?;
        let exclude = Exclude::new(&self.exclude)?;
        let after_upload = self.after_upload()?;
        let transfer = self.transfer()?;
        Ok(Config {
            watch_dir: self.watch_dir,
            state_dir: self.state_dir,
            bucket: self.bucket,
            source,
            session,
            key_prefix,
            region: self.region,
            session_duration,
            after_upload,
            exclude,
            concurrency: self.concurrency,
            settle: Duration::from_secs(self.settle_seconds),
            quiet_period: Duration::from_millis(self.quiet_period_ms),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_seconds),
            rescan_interval: Duration::from_secs(self.rescan_interval_seconds),
            multipart_threshold: transfer.multipart_threshold,
            part_size: transfer.part_size,
            part_concurrency: self.part_concurrency,
            max_bandwidth: transfer.max_bandwidth,
            max_file_size: transfer.max_file_size,
            force_path_style: self.force_path_style,
            object,
            overwrite: self.overwrite,
            key_template,
            metrics_listen,
            metrics_textfile: self.metrics_textfile.clone(),
            startup_jitter: Duration::from_secs(self.startup_jitter_seconds),
            broker: self.broker.then(|| self.broker_socket.clone()),
        })
    }

    fn check_dirs(&self) -> Result<(), ConfigError> {
        if !self.watch_dir.is_absolute() {
            return Err(invalid("watch_dir", "must be an absolute path"));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        // `..` would make the text checks below (and any reader's) wrong; chain::local
        // also checks containment on the filesystem, where links are seen.
        for (key, dir) in [
            ("watch_dir", &self.watch_dir),
            ("state_dir", &self.state_dir),
        ]
        .into_iter()
        .chain(self.move_to.iter().map(|d| ("move_to", d)))
        {
            if dir
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(invalid(
                    key,
                    "must not contain `..`; name the directory directly",
                ));
            }
        }
        if self.state_dir.starts_with(&self.watch_dir)
            || self.watch_dir.starts_with(&self.state_dir)
        {
            return Err(invalid(
                "state_dir",
                "must not be inside watch_dir (or contain it): the ledger would upload itself",
            ));
        }
        if !(10..=86_400).contains(&self.rescan_interval_seconds) {
            return Err(invalid(
                "rescan_interval_seconds",
                "must be between 10 and 86400",
            ));
        }
        if self.quiet_period_ms > 60_000 {
            return Err(invalid(
                "quiet_period_ms",
                "must be at most 60000 (a minute)",
            ));
        }
        if self.startup_jitter_seconds > 3600 {
            return Err(invalid("startup_jitter_seconds", "must be at most 3600"));
        }
        if self.settle_seconds > 3600 {
            return Err(invalid("settle_seconds", "must be at most 3600"));
        }
        Ok(())
    }

    /// `metrics_listen`: an address and port; a non-loopback one only with
    /// `metrics_listen_public = true` (the endpoint tells bucket, prefix and counts).
    fn metrics_listen(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(text) = &self.metrics_listen else {
            if self.metrics_listen_public {
                return Err(invalid(
                    "metrics_listen_public",
                    "is only used with metrics_listen",
                ));
            }
            return Ok(None);
        };
        let addr: std::net::SocketAddr = text.parse().map_err(|_| {
            invalid(
                "metrics_listen",
                format!(
                    "{q} is not an address and port like \"127.0.0.1:9464\"",
                    q = quoted(text)
                ),
            )
        })?;
        if !addr.ip().is_loopback() && !self.metrics_listen_public {
            return Err(invalid(
                "metrics_listen",
                format!(
                    "{addr} is not a loopback address: the metrics tell the bucket, prefix and \
                     file counts to anyone who connects; set metrics_listen_public = true to \
                     mean it"
                ),
            ));
        }
        Ok(Some(addr))
    }

    fn check_region(&self) -> Result<(), ConfigError> {
        if let Some(region) = &self.region
            && (region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(invalid(
                "region",
                format!(
                    "{q} is not a region name like \"us-east-1\"",
                    q = quoted(region)
                ),
            ));
        }
        Ok(())
    }

    fn after_upload(&self) -> Result<AfterUpload, ConfigError> {
        match (self.after_upload, &self.move_to) {
            (AfterUploadKind::Move, Some(dir)) => {
                if !dir.is_absolute() {
                    return Err(invalid("move_to", "must be an absolute path"));
                }
                if dir.starts_with(&self.watch_dir) || dir.starts_with(&self.state_dir) {
                    return Err(invalid(
                        "move_to",
                        "must not be inside watch_dir (moved files would be uploaded again) \
                         or state_dir",
                    ));
                }
                Ok(AfterUpload::Move(dir.clone()))
            }
            (AfterUploadKind::Move, None) => Err(invalid(
                "move_to",
                "is required with after_upload = \"move\" (the directory to move uploaded \
                 files to)",
            )),
            (_, Some(_)) => Err(invalid(
                "move_to",
                "is only used with after_upload = \"move\"",
            )),
            (AfterUploadKind::Keep, None) => Ok(AfterUpload::Keep),
            (AfterUploadKind::Delete, None) => Ok(AfterUpload::Delete),
        }
    }

    fn transfer(&self) -> Result<TransferLimits, ConfigError> {
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err(invalid("concurrency", "must be between 1 and 1024"));
        }
        let part_size = self.part_size.as_u64();
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(invalid(
                "part_size",
                "must be between 5MiB and 5GiB (S3's limits for a part)",
            ));
        }
        let multipart_threshold = self.multipart_threshold.as_u64();
        if !(MIN_PART_SIZE..=MAX_SINGLE_PUT).contains(&multipart_threshold) {
            return Err(invalid(
                "multipart_threshold",
                "must be between 5MiB and 5GiB (S3 takes at most 5GiB in one PutObject)",
            ));
        }
        if self.part_concurrency == 0 || self.part_concurrency > 64 {
            return Err(invalid("part_concurrency", "must be between 1 and 64"));
        }
        let max_bandwidth = self.max_bandwidth.map(|b| b.as_u64());
        if max_bandwidth.is_some_and(|b| b < 64 * 1024) {
            return Err(invalid(
                "max_bandwidth",
                "must be at least 64KiB (per second), or left out for no cap",
            ));
        }
        let max_file_size = self.max_file_size.map(|b| b.as_u64());
        if max_file_size == Some(0) {
            return Err(invalid(
                "max_file_size",
                "must be more than 0 bytes, or left out for no limit",
            ));
        }
        Ok(TransferLimits {
            multipart_threshold,
            part_size,
            max_bandwidth,
            max_file_size,
        })
    }
}

/// The validated sizes of `transfer`.
struct TransferLimits {
    multipart_threshold: u64,
    part_size: u64,
    max_bandwidth: Option<u64>,
    max_file_size: Option<u64>,
}

/// The field names of [`RawConfig`] as serde sees them (for the documentation test).
#[cfg(test)]
pub(crate) fn raw_field_names() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Capture(Option<&'static [&'static str]>);
    impl<'de> de::Deserializer<'de> for &mut Capture {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(de::Error::custom("captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut capture = Capture(None);
    let _ = RawConfig::deserialize(&mut capture);
    capture.0.expect("RawConfig is a struct")
}

fn validate_bucket(bucket: &str) -> Result<(), ConfigError> {
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ok_ends = bucket
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && bucket
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !ok_chars || !ok_ends {
        return Err(invalid(
            "bucket",
            format!(
                "{q} is not a valid S3 bucket name (3-63 characters: lowercase letters, \
                 digits, dots, hyphens; starting and ending with a letter or digit)",
                q = quoted(bucket)
            ),
        ));
    }
    Ok(())
}

/// An IAM role ARN, with the partition kept so the session policy names S3 in the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    arn: String,
    partition: String,
}

impl RoleArn {
    pub fn parse(arn: &str) -> Result<RoleArn, ConfigError> {
        let bad = || {
            invalid(
                "role_arn",
                format!(
                    "{q} is not an IAM role ARN like \
                     \"arn:aws:iam::123456789012:role/s3drop-upload\"",
                    q = quoted(arn)
                ),
            )
        };
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts[..] else {
            return Err(bad());
        };
        let account_ok = account.len() == 12 && account.chars().all(|c| c.is_ascii_digit());
        let partition_ok = matches!(partition, "aws" | "aws-cn" | "aws-us-gov");
        let name_ok = resource
            .strip_prefix("role/")
            .is_some_and(|name| !name.is_empty());
        if prefix != "arn" || service != "iam" || !region.is_empty() || !account_ok {
            return Err(bad());
        }
        if !partition_ok || !name_ok {
            return Err(bad());
        }
        Ok(RoleArn {
            arn: arn.to_string(),
            partition: partition.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.arn
    }

    pub fn partition(&self) -> &str {
        &self.partition
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        watch_dir = "/srv/drop"
        bucket = "my-bucket"
        role_arn = "arn:aws:iam::123456789012:role/s3drop-upload"
    "#;

    fn with(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{MINIMAL}\n{extra}"))
    }

    fn err_of(extra: &str) -> String {
        with(extra).unwrap_err().to_string()
    }

    #[test]
    fn a_config_others_may_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3drop.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, PermissionsExt::from_mode(m));
        let check = || check_trusted(&path, &std::fs::File::open(&path).unwrap());
        mode(&path, 0o644).unwrap();
        check().unwrap();
        for bad in [0o664, 0o646, 0o666] {
            mode(&path, bad).unwrap();
            let why = check().unwrap_err();
            assert!(why.contains("chmod go-w"), "{bad:o}: {why}");
        }
        mode(&path, 0o600).unwrap();
        mode(dir.path(), 0o777).unwrap();
        assert!(check().unwrap_err().contains("its directory"));
        mode(dir.path(), 0o1777).unwrap();
        check().unwrap();
    }

    #[test]
    fn a_huge_value_is_quoted_short_in_its_error() {
        let huge = "A".repeat(1 << 20);
        let watch = "watch_dir = \"/srv/drop\"";
        for config in [
            format!("{watch}\nbucket = \"{huge}\""),
            format!("{watch}\nbucket = \"b-1\"\nrole_arn = \"{huge}\""),
            format!("{MINIMAL}\nregion = \"{huge}\""),
            format!("{MINIMAL}\nstorage_class = \"{huge}\""),
            format!("{MINIMAL}\nmetadata = {{ \"{huge}!\" = \"v\" }}"),
        ] {
            let e = Config::parse(&config).unwrap_err().to_string();
            assert!(e.len() < 600, "{} bytes: {}", e.len(), &e[..200]);
            assert!(e.contains("AAAA\"… ("), "{e}");
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/s3drop"));
        assert_eq!(c.key_prefix.as_str(), "{instance_id}/");
        assert_eq!(c.session_duration, Duration::from_secs(3600));
        assert_eq!(c.after_upload, AfterUpload::Keep);
        assert!(c.region.is_none());
        assert_eq!(c.source, CredentialSource::Ec2InstanceMetadata);
        let SessionType::AssumeRole {
            role_arn,
            external_id,
        } = &c.session
        else {
            panic!("assume_role is the default: {:?}", c.session)
        };
        assert!(external_id.is_none());
        assert_eq!(role_arn.partition(), "aws");
    }

    /// A config without role_arn, with `extra`.
    fn without_role(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!(
            "watch_dir = \"/srv/drop\"\nbucket = \"my-bucket\"\n{extra}"
        ))
    }

    #[test]
    fn credential_sources_use_aws_vocabulary_and_exclude_each_other() {
        let c = with("credential_source = \"Environment\"").unwrap();
        assert_eq!(c.source, CredentialSource::Environment);
        let c = with("source_profile = \"sts-user\"").unwrap();
        assert_eq!(c.source, CredentialSource::Profile("sts-user".into()));
        let e = err_of("credential_source = \"Environment\"\nsource_profile = \"x\"");
        assert!(
            e.contains("source_profile") && e.contains("credential_source"),
            "names both: {e}"
        );
        assert!(err_of("credential_source = \"EcsContainer\"").contains("credential_source"));
    }

    #[test]
    fn federation_token_needs_long_term_keys_and_no_role() {
        let c = without_role("session_type = \"federation_token\"\nsource_profile = \"u\"\nsession_duration_seconds = 129600").unwrap();
        assert_eq!(c.session, SessionType::FederationToken);
        assert_eq!(c.session_duration, Duration::from_secs(129_600));
        assert_eq!(c.partition("cn-north-1"), "aws-cn");
        let e = without_role("session_type = \"federation_token\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("session_type") && e.contains("session credentials"),
            "the instance role cannot call GetFederationToken: {e}"
        );
        let e = err_of("session_type = \"federation_token\"\ncredential_source = \"Environment\"");
        assert!(e.contains("`role_arn`"), "role_arn is refused: {e}");
        let e = without_role(
            "session_type = \"federation_token\"\ncredential_source = \"Environment\"\n\
             session_duration_seconds = 129601",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("129600"), "{e}");
        let e = without_role("").unwrap_err().to_string();
        assert!(e.contains("`role_arn`") && e.contains("assume_role"), "{e}");
    }

    #[test]
    fn sizes_take_units_and_respect_s3_limits() {
        let c = with(
            "multipart_threshold = \"64MiB\"\npart_size = \"16MiB\"\nmax_bandwidth = \"50MiB\"",
        )
        .unwrap();
        assert_eq!(c.multipart_threshold, 64 << 20);
        assert_eq!(c.part_size, 16 << 20);
        assert_eq!(c.max_bandwidth, Some(50 << 20));
        let d = Config::parse(MINIMAL).unwrap();
        assert_eq!(
            (d.multipart_threshold, d.part_size, d.max_bandwidth),
            (16 << 20, 8 << 20, None)
        );
        assert!(err_of("part_size = \"1MiB\"").contains("part_size"));
        assert!(err_of("multipart_threshold = \"6GiB\"").contains("5GiB"));
        assert!(err_of("max_bandwidth = \"1KiB\"").contains("max_bandwidth"));
        assert!(err_of("part_size = \"lots\"").contains("part_size"));
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let e = err_of("bukket = \"x\"");
        assert!(e.contains("bukket"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let e = Config::parse("watch_dir = \"/x\"\nbucket = \"abc\"").unwrap_err();
        assert!(e.to_string().contains("role_arn"), "{e}");
    }

    #[test]
    fn session_duration_over_an_hour_explains_role_chaining() {
        let e = err_of("session_duration_seconds = 7200");
        assert!(e.contains("session_duration_seconds"), "{e}");
        assert!(e.contains("role chaining"), "{e}");
        assert!(err_of("session_duration_seconds = 600").contains("900"));
        assert!(with("session_duration_seconds = 900").is_ok());
    }

    #[test]
    fn after_upload_is_keep_delete_or_move_with_a_directory() {
        assert_eq!(
            with("after_upload = \"delete\"").unwrap().after_upload,
            AfterUpload::Delete
        );
        assert_eq!(
            with("after_upload = \"move\"\nmove_to = \"/srv/done\"")
                .unwrap()
                .after_upload,
            AfterUpload::Move(PathBuf::from("/srv/done"))
        );
        assert!(err_of("after_upload = \"shred\"").contains("after_upload"));
        assert!(err_of("after_upload = \"move\"").contains("move_to"));
        assert!(err_of("move_to = \"/srv/done\"").contains("only used"));
        assert!(
            err_of("after_upload = \"move\"\nmove_to = \"/srv/x/../drop/done\"").contains("`..`")
        );
        assert!(
            err_of("after_upload = \"move\"\nmove_to = \"/srv/drop/done\"")
                .contains("inside watch_dir")
        );
    }

    #[test]
    fn bad_bucket_and_role_are_refused() {
        let e = Config::parse(&MINIMAL.replace("my-bucket", "My_Bucket")).unwrap_err();
        assert!(e.to_string().contains("`bucket`"), "{e}");
        let e = Config::parse(&MINIMAL.replace("role/s3drop-upload", "user/bob")).unwrap_err();
        assert!(e.to_string().contains("`role_arn`"), "{e}");
    }

    #[test]
    fn key_prefix_placeholders_expand_and_unknown_ones_fail() {
        let c = with("key_prefix = \"fleet/{region}/{instance_id}/\"").unwrap();
        let facts = PrefixFacts {
            instance_id: Some("i-0abc"),
            region: "eu-west-1",
            hostname: "web-1",
        };
        assert_eq!(
            c.key_prefix.expand(&facts).unwrap(),
            "fleet/eu-west-1/i-0abc/"
        );
        let off_ec2 = PrefixFacts {
            instance_id: None,
            ..facts
        };
        let e = c.key_prefix.expand(&off_ec2).unwrap_err().to_string();
        assert!(e.contains("{hostname}"), "says what to use off EC2: {e}");
        let c = with("key_prefix = \"{hostname}/\"").unwrap();
        assert_eq!(c.key_prefix.expand(&off_ec2).unwrap(), "web-1/");
        assert!(err_of("key_prefix = \"{host}/\"").contains("unknown placeholder"));
        assert!(err_of("key_prefix = \"{instance_id/\"").contains("closing"));
    }

    #[test]
    fn key_prefix_that_would_widen_the_policy_is_refused() {
        for bad in [
            "logs/*",
            "a?b/",
            "${aws:username}/",
            "",
            "/abs/",
            "a/../",
            "a//b/",
            "./",
        ] {
            let e = err_of(&format!("key_prefix = {bad:?}"));
            assert!(e.contains("key_prefix"), "{bad}: {e}");
        }
    }

    #[test]
    fn relative_or_nested_dirs_are_refused() {
        assert!(
            Config::parse(&MINIMAL.replace("/srv/drop", "drop"))
                .unwrap_err()
                .to_string()
                .contains("watch_dir")
        );
        assert!(err_of("state_dir = \"/srv/drop/.state\"").contains("state_dir"));
    }

    #[test]
    fn default_excludes_cover_dotfiles_and_temp_names() {
        let c = Config::parse(MINIMAL).unwrap();
        for excluded in [
            ".hidden",
            "a/.git/config",
            "x.tmp",
            "x.part",
            ".x.swp",
            "notes~",
            "backup.db-journal",
            "app.db-wal",
            "app.db-shm",
            "big.iso.crdownload",
            "#notes.txt#",
            "sub/4913",
        ] {
            assert!(c.exclude.is_excluded(Path::new(excluded)), "{excluded}");
        }
        for kept in ["report.csv", "a/b/c.log", "tmp/x.json"] {
            assert!(!c.exclude.is_excluded(Path::new(kept)), "{kept}");
        }
    }

    #[test]
    fn exclude_patterns_with_a_slash_match_the_whole_path() {
        let c = with("exclude = [\"cache/**\"]").unwrap();
        assert!(c.exclude.is_excluded(Path::new("cache/a/b")));
        assert!(!c.exclude.is_excluded(Path::new("data/cache.txt")));
        assert!(
            !c.exclude.is_excluded(Path::new(".hidden")),
            "replaces defaults"
        );
    }
}
