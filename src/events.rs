//! Everything s3drop does that an operator may want to know, one type each (the shape of
//! Vector's `internal_events`). Emitting one writes its log event (the message a complete
//! sentence, as journald's `MESSAGE` and a terminal show it; the fields, `EVENT=name`
//! first, for machines), bumps its metric with a typed label, and, for a file's events,
//! updates what STATUS and `s3drop status` read ([`Progress::emit`]). Call sites build an
//! event; they never word a log line or name a label. Tests wait for an event's name and
//! fields, not for its wording.

use std::path::Path;
use std::time::Duration;

use crate::message::{explain, printable};
use crate::metrics::{FailureKind, RescanReason, StsResult};
use crate::s3::Checksum;
use crate::upload::progress::Progress;

/// One thing that happened.
pub trait Event: Sized {
    /// Logs it and counts it.
    fn emit(self);
}

/// An event about one file: it also changes what STATUS and `status` say of that file.
pub trait FileEvent: Event {
    fn update(&self, status: &Progress);
}

impl Progress {
    /// Updates the status with `event`, then emits it.
    pub fn emit(&self, event: impl FileEvent) {
        event.update(self);
        event.emit();
    }
}

/// A log event at a level chosen at run time (tracing's levels are part of each
/// callsite): every arm has the same fields.
macro_rules! log_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::error!($($rest)+),
            tracing::Level::WARN => tracing::warn!($($rest)+),
            tracing::Level::INFO => tracing::info!($($rest)+),
            _ => tracing::debug!($($rest)+),
        }
    };
}

/// A path as a sentence shows it (escaped: names are a producer's text).
fn shown(path: &Path) -> String {
    printable(&path.to_string_lossy()).into_owned()
}

/// S3 confirmed a file.
pub struct Uploaded<'a> {
    pub path: &'a Path,
    pub bucket: &'a str,
    pub key: &'a str,
    pub bytes: u64,
    pub took: Duration,
    pub checksum: &'a Checksum,
    /// How many parts, for a multipart upload.
    pub parts: Option<u64>,
}

impl Event for Uploaded<'_> {
    fn emit(self) {
        crate::metrics::get().uploaded(self.bytes, self.took);
        let ms = self.took.as_millis() as u64;
        let parts = self.parts.map_or(String::new(), |n| format!(", {n} parts"));
        tracing::info!(
            event = "uploaded",
            path = %self.path.display(),
            key = self.key,
            bytes = self.bytes,
            duration_ms = ms,
            crc32c = self.checksum.crc32c().unwrap_or("unverified"),
            parts = self.parts,
            "uploaded {} → s3://{}/{} ({} bytes, {ms} ms{parts})",
            shown(self.path),
            self.bucket,
            printable(self.key),
            self.bytes,
        );
    }
}

impl FileEvent for Uploaded<'_> {
    fn update(&self, status: &Progress) {
        status.uploaded(self.path, self.key);
    }
}

/// An attempt failed, for a reason of `kind`.
pub struct UploadFailed<'a> {
    pub path: &'a Path,
    /// Empty when none was decided (unreadable, no valid key).
    pub key: &'a str,
    pub kind: FailureKind,
    /// The cause, one sentence ([`crate::message::sentence`]).
    pub error: &'a str,
    /// What an operator can do, for the kinds that need one.
    pub fix: Option<&'a str>,
}

impl UploadFailed<'_> {
    /// Waits on an operator (shown by STATUS and `status`, recorded in the ledger).
    fn needs_operator(&self) -> bool {
        self.kind.needs_operator()
    }
}

impl Event for UploadFailed<'_> {
    fn emit(self) {
        use FailureKind::*;
        crate::metrics::get().failed(self.kind);
        let path = shown(self.path);
        let cause = match self.fix {
            Some(fix) => explain(self.error, fix),
            None => crate::message::fit(self.error, crate::message::MAX_CHARS),
        };
        let (level, sentence) = match self.kind {
            Transient => (
                tracing::Level::WARN,
                format!("upload of {path} failed: {cause}; it is retried shortly"),
            ),
            Throttled => (
                tracing::Level::WARN,
                format!(
                    "S3 asks to slow down (upload of {path}): {cause}; retried after a throttling backoff"
                ),
            ),
            // The session cache logs the cause once per STS call; one line per waiting
            // file would flood the journal during an STS outage.
            NoSession | ExpiredToken => (
                tracing::Level::DEBUG,
                format!("{path} waits for the next upload session: {cause}"),
            ),
            Changed => (
                tracing::Level::INFO,
                format!("{path} changed during its upload; uploading it again"),
            ),
            Conflict => (
                tracing::Level::ERROR,
                format!(
                    "{path} not uploaded: {cause}; the file is kept, and tried again at SIGHUP \
                     or when it changes"
                ),
            ),
            Denied | Rejected | TooLarge | Unreadable | InvalidKey | KeyClaimed => (
                tracing::Level::ERROR,
                format!(
                    "{path} not uploaded: {cause}; the file is kept, and tried again later \
                     (or at SIGHUP)"
                ),
            ),
        };
        log_at!(
            level,
            event = "upload_failed",
            path = %self.path.display(),
            key = self.key,
            kind = self.kind.label(),
            error = self.error,
            "{sentence}"
        );
    }
}

impl FileEvent for UploadFailed<'_> {
    fn update(&self, status: &Progress) {
        if self.needs_operator() {
            status.failed(self.path, self.kind, self.error.to_string());
        }
    }
}

/// A file needs nothing more: gone before or during its upload, or not a regular file.
pub struct Dropped<'a> {
    pub path: &'a Path,
    pub why: DropReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    GoneBeforeUpload,
    /// Its upload was abandoned (multipart parts aborted).
    GoneDuringUpload,
    /// A symlink, directory, socket, device or FIFO (named): never opened.
    NotRegular(&'static str),
    /// A symbolic link on its path: never followed.
    Linked,
}

impl Event for Dropped<'_> {
    fn emit(self) {
        let path = shown(self.path);
        let (level, sentence) = match self.why {
            DropReason::GoneBeforeUpload => (
                tracing::Level::INFO,
                format!("{path} was deleted before its upload; nothing to do"),
            ),
            DropReason::GoneDuringUpload => (
                tracing::Level::INFO,
                format!(
                    "{path} was deleted during its upload; the upload was abandoned and its \
                     parts aborted"
                ),
            ),
            DropReason::NotRegular(kind) => (
                tracing::Level::WARN,
                format!(
                    "skipped {path}: a {kind}, not a regular file; s3drop never opens or \
                     uploads these"
                ),
            ),
            DropReason::Linked => (
                tracing::Level::WARN,
                format!("skipped {path}: a symbolic link on its path; s3drop never follows one"),
            ),
        };
        let reason = match self.why {
            DropReason::GoneBeforeUpload => "gone_before_upload",
            DropReason::GoneDuringUpload => "gone_during_upload",
            DropReason::NotRegular(_) => "not_regular",
            DropReason::Linked => "linked",
        };
        log_at!(level, event = "dropped", path = %self.path.display(), reason, "{sentence}");
    }
}

impl FileEvent for Dropped<'_> {
    fn update(&self, status: &Progress) {
        status.settled(self.path);
    }
}

/// Uploaded, but the after-upload action (delete or move) failed: the file stays, and the
/// action is tried again at the next scan.
pub struct AfterUploadFailed<'a> {
    pub path: &'a Path,
    pub action: &'static str,
    pub error: &'a str,
    pub fix: Option<&'a str>,
}

impl Event for AfterUploadFailed<'_> {
    fn emit(self) {
        tracing::warn!(
            event = "after_upload_failed",
            path = %self.path.display(),
            action = self.action,
            error = self.error,
            "{} is uploaded, but could not be {}: {}; tried again at the next scan",
            shown(self.path),
            self.action,
            match self.fix {
                Some(fix) => explain(self.error, fix),
                None => self.error.to_string(),
            },
        );
    }
}

/// S3 confirmed a file, but the ledger could not record it: the file stays and is sent
/// again later.
pub struct Unrecorded<'a> {
    pub path: &'a Path,
    pub key: &'a str,
    pub error: &'a str,
}

impl Event for Unrecorded<'_> {
    fn emit(self) {
        tracing::error!(
            event = "unrecorded",
            path = %self.path.display(),
            key = self.key,
            error = self.error,
            "{} is uploaded to {}, but the ledger could not record it ({}); it is kept and \
             sent again later",
            shown(self.path),
            printable(self.key),
            self.error,
        );
    }
}

/// A full scan of watch_dir, or of a directory moved in.
pub struct Scanned<'a> {
    /// Why the whole tree was scanned; `None` for a directory moved in.
    pub reason: Option<RescanReason>,
    pub dir: &'a Path,
    pub files: usize,
    pub queued: usize,
    pub took: Duration,
}

impl Event for Scanned<'_> {
    fn emit(self) {
        let why = match self.reason {
            Some(RescanReason::Startup) => "the backlog at start",
            Some(RescanReason::Sighup) => "SIGHUP",
            Some(RescanReason::Recreated) => "watch_dir recreated",
            Some(RescanReason::Periodic) => "the periodic safety rescan",
            Some(RescanReason::Overflow) => "watch events lost",
            None => "a directory moved in",
        };
        let ms = self.took.as_millis() as u64;
        tracing::info!(
            event = "scanned",
            reason = self.reason.map_or("moved_in", RescanReason::label),
            dir = %self.dir.display(),
            files = self.files,
            queued = self.queued,
            duration_ms = ms,
            "scanned {} for {why}: {} files, {} queued ({ms} ms)",
            shown(self.dir),
            self.files,
            self.queued,
        );
    }
}

/// A full scan begins (counted whether or not watch_dir is there to scan).
pub struct Rescan(pub RescanReason);

impl Event for Rescan {
    fn emit(self) {
        crate::metrics::get().rescan(self.0);
    }
}

/// The daemon has no session yet and keeps trying.
pub struct SessionWaiting<'a> {
    /// The error with its fix ([`crate::auth::AuthError::explain`]).
    pub explained: &'a str,
    pub retry_in: Duration,
}

impl Event for SessionWaiting<'_> {
    fn emit(self) {
        tracing::warn!(
            event = "session_waiting",
            error = self.explained,
            retry_in_s = self.retry_in.as_secs(),
            "no upload session yet (files wait; retrying in {} s): {}",
            self.retry_in.as_secs(),
            self.explained,
        );
    }
}

/// STS minted (or refreshed) the upload session.
pub struct SessionMinted<'a> {
    pub call: &'a str,
    pub expiry: Option<std::time::SystemTime>,
    pub refresh_in: Option<Duration>,
}

impl Event for SessionMinted<'_> {
    fn emit(self) {
        let m = crate::metrics::get();
        m.sts(StsResult::Ok);
        m.session_expiry
            .set(self.expiry.map_or(i64::MAX, crate::metrics::unix));
        let expires_in = self
            .expiry
            .and_then(|e| e.duration_since(std::time::SystemTime::now()).ok())
            .map(|d| d.as_secs());
        let refresh_in = self.refresh_in.map(|d| d.as_secs());
        tracing::info!(
            event = "session_minted",
            call = self.call,
            expires_in_s = expires_in,
            refresh_in_s = refresh_in,
            "upload session minted ({} with the session policy); it expires in {} s and is \
             refreshed in {} s",
            self.call,
            expires_in.map_or("?".into(), |s| s.to_string()),
            refresh_in.map_or("?".into(), |s| s.to_string()),
        );
    }
}

/// STS did not mint a session.
pub struct SessionFailed<'a> {
    pub error: &'a str,
    pub result: StsResult,
    pub retry_in: Duration,
    /// The current session is still valid and stays in use.
    pub kept: bool,
}

impl Event for SessionFailed<'_> {
    fn emit(self) {
        crate::metrics::get().sts(self.result);
        let then = if self.kept {
            "the current session stays in use until it expires"
        } else {
            "files wait until STS mints one"
        };
        tracing::warn!(
            event = "session_failed",
            result = self.result.label(),
            kept = self.kept,
            error = self.error,
            retry_in_s = self.retry_in.as_secs(),
            "no new upload session: {}; {then}; asking again in {} s",
            crate::message::fit(self.error, crate::message::MAX_CHARS),
            self.retry_in.as_secs(),
        );
    }
}

/// S3 refused a session as expired or invalid; a new one is minted.
pub struct TokenRefused;

impl Event for TokenRefused {
    fn emit(self) {
        crate::metrics::get().failed(FailureKind::ExpiredToken);
        // Once per refused request (the cache says once that it mints anew).
        tracing::debug!(
            event = "token_refused",
            "S3 refused the session token as expired; sending again with a new session"
        );
    }
}
