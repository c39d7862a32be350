//! Everything s3drop does that an operator may want to know, one type each (the shape of
//! Vector's `internal_events`). Emitting one writes its log event (the message a complete
//! sentence, as journald's `MESSAGE` and a terminal show it; the fields, `EVENT=name`
//! first, for machines), bumps its metric with a typed label, and, for a file's events,
//! updates what STATUS and `s3drop status` read ([`Progress::emit`]). Call sites build an
//! event; they never word a log line or name a label. Tests wait for an event's name and
//! fields, not for its wording.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::message::{explain, printable};
use crate::metrics::{BrokerResult, DropKind, FailureKind, RescanReason, StsResult};
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

/// `n` files, as a sentence says it.
fn files(n: usize) -> String {
    match n {
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    }
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

impl DropReason {
    fn kind(self) -> DropKind {
        match self {
            DropReason::GoneBeforeUpload => DropKind::GoneBeforeUpload,
            DropReason::GoneDuringUpload => DropKind::GoneDuringUpload,
            DropReason::NotRegular(_) => DropKind::NotRegular,
            DropReason::Linked => DropKind::Linked,
        }
    }
}

/// Files deleted while they waited come in floods (an operator clearing a backlog of
/// 180,000): the first few of a burst are said one by one, the rest once, in a summary
/// ([`GoneSummary`]) when the burst pauses for a second or each minute while it lasts
/// ([`flush_summaries`], on the daemon's one-second tick). The metric counts each.
struct GoneBurst {
    /// Said one by one in this burst.
    said: u32,
    /// Held for the summary: how many, since when, the last one.
    held: u64,
    held_since: Option<Instant>,
    last_path: PathBuf,
    last_at: Option<Instant>,
}

static GONE: Mutex<GoneBurst> = Mutex::new(GoneBurst {
    said: 0,
    held: 0,
    held_since: None,
    last_path: PathBuf::new(),
    last_at: None,
});

/// Said one by one at the start of a burst.
const GONE_SAID: u32 = 5;
/// A burst ends after this long without a deleted waiting file.
const GONE_BURST_GAP: Duration = Duration::from_secs(10);
/// The summary of held lines comes once they paused this long, or every minute.
const GONE_PAUSE: Duration = Duration::from_secs(1);
const GONE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Whether this deleted waiting file is said on its own (else it is held for the summary).
fn gone_said_alone(path: &Path) -> bool {
    let now = Instant::now();
    let mut burst = GONE.lock().expect("burst lock");
    if burst.held == 0
        && burst
            .last_at
            .is_none_or(|at| now.duration_since(at) >= GONE_BURST_GAP)
    {
        burst.said = 0;
    }
    burst.last_at = Some(now);
    if burst.said < GONE_SAID {
        burst.said += 1;
        return true;
    }
    burst.held += 1;
    burst.held_since.get_or_insert(now);
    burst.last_path = path.to_owned();
    false
}

/// Says what was held for a summary, if it is time (`now`: at shutdown, whatever is held).
pub fn flush_summaries(now: bool) {
    let at = Instant::now();
    let mut burst = GONE.lock().expect("burst lock");
    let due = burst.held > 0
        && (now
            || burst
                .last_at
                .is_none_or(|t| at.duration_since(t) >= GONE_PAUSE)
            || burst
                .held_since
                .is_some_and(|t| at.duration_since(t) >= GONE_SUMMARY_EVERY));
    if !due {
        return;
    }
    let files = std::mem::take(&mut burst.held);
    let since = burst.held_since.take().map_or(Duration::ZERO, |t| at - t);
    let last = std::mem::take(&mut burst.last_path);
    drop(burst);
    GoneSummary {
        files,
        over: since,
        last: &last,
    }
    .emit();
}

/// Many waiting files were deleted; said once instead of once per file.
pub struct GoneSummary<'a> {
    pub files: u64,
    pub over: Duration,
    pub last: &'a Path,
}

impl Event for GoneSummary<'_> {
    fn emit(self) {
        tracing::info!(
            event = "dropped_summary",
            reason = DropKind::GoneBeforeUpload.label(),
            files = self.files,
            seconds = self.over.as_secs(),
            last_path = %self.last.display(),
            "{} more waiting files were deleted before their upload (over {} s; the last: {}); \
             nothing to do",
            self.files,
            self.over.as_secs(),
            shown(self.last)
        );
    }
}

impl Event for Dropped<'_> {
    fn emit(self) {
        crate::metrics::get().dropped(self.why.kind());
        let path = shown(self.path);
        let (level, sentence) = match self.why {
            // Beyond the first few of a burst, said by the summary instead.
            DropReason::GoneBeforeUpload => (
                if gone_said_alone(self.path) {
                    tracing::Level::INFO
                } else {
                    tracing::Level::DEBUG
                },
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
        let reason = self.why.kind().label();
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
        let why = scan_cause(self.reason);
        let ms = self.took.as_millis() as u64;
        tracing::info!(
            event = "scanned",
            reason = self.reason.map_or("moved_in", RescanReason::label),
            dir = %self.dir.display(),
            files = self.files,
            queued = self.queued,
            duration_ms = ms,
            "scanned {} for {why}: {}, {} queued ({ms} ms)",
            shown(self.dir),
            files(self.files),
            self.queued,
        );
    }
}

/// Why a scan ran, as the operator reads it; `None`: a directory moved in.
fn scan_cause(reason: Option<RescanReason>) -> &'static str {
    match reason {
        Some(RescanReason::Startup) => "the backlog at start",
        Some(RescanReason::Sighup) => "SIGHUP",
        Some(RescanReason::Recreated) => "watch_dir recreated",
        Some(RescanReason::Periodic) => "the periodic safety rescan",
        Some(RescanReason::Overflow) => "watch events lost",
        None => "a directory moved in",
    }
}

/// A full scan was asked for while watch_dir is missing or not a directory.
pub struct ScanSkipped<'a> {
    pub reason: RescanReason,
    pub dir: &'a Path,
}

impl Event for ScanSkipped<'_> {
    fn emit(self) {
        tracing::warn!(
            event = "scan_skipped",
            reason = self.reason.label(),
            dir = %self.dir.display(),
            "no scan for {}: watch_dir {} is missing or not a directory; it is scanned once \
             a directory is back in its place",
            scan_cause(Some(self.reason)),
            shown(self.dir),
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

/// The credential broker minted a session for a narrower scope (or a fresh one for the
/// whole prefix when the daemon's own had too little time left).
pub struct BrokerMinted<'a> {
    pub scope: &'a str,
    pub expiry: Option<std::time::SystemTime>,
    /// It is handed out while at least this much of it is left.
    pub min_left: Duration,
}

impl Event for BrokerMinted<'_> {
    fn emit(self) {
        crate::metrics::get().sts(StsResult::Ok);
        let expires_in = self
            .expiry
            .and_then(|e| e.duration_since(std::time::SystemTime::now()).ok())
            .map(|d| d.as_secs());
        tracing::info!(
            event = "broker_minted",
            scope = self.scope,
            expires_in_s = expires_in,
            "credential broker: minted a session for {} (expires in {} s); it is handed out \
             while {} s or more of it are left",
            printable(self.scope),
            expires_in.map_or("?".into(), |s| s.to_string()),
            self.min_left.as_secs(),
        );
    }
}

/// The credential broker handed a session to a local program.
pub struct CredentialsHanded<'a> {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub scope: &'a str,
    pub expiry: Option<std::time::SystemTime>,
    /// `socket` (`s3drop credentials`) or `endpoint` (a program `s3drop exec` started).
    pub via: &'static str,
}

impl Event for CredentialsHanded<'_> {
    fn emit(self) {
        crate::metrics::get()
            .broker_requests
            .with_label_values(&[BrokerResult::Ok.label()])
            .inc();
        let expires = self.expiry.map(crate::message::rfc3339);
        tracing::info!(
            event = "credentials_handed",
            uid = self.uid,
            pid = self.pid,
            scope = self.scope,
            expires = expires.as_deref(),
            via = self.via,
            "credential broker: a session for {} to uid {} (pid {}{}), expiring {}",
            printable(self.scope),
            shown_id(self.uid),
            shown_id(self.pid),
            if self.via == "endpoint" {
                ", started by s3drop exec"
            } else {
                ""
            },
            expires.as_deref().unwrap_or("never"),
        );
    }
}

/// The credential broker did not hand out a session.
pub struct BrokerRefused<'a> {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// The scope, when the question named a valid one.
    pub scope: Option<&'a str>,
    pub error: &'a crate::broker::HandOutError,
}

impl Event for BrokerRefused<'_> {
    fn emit(self) {
        let result = self.error.result();
        crate::metrics::get()
            .broker_requests
            .with_label_values(&[result.label()])
            .inc();
        let error = crate::message::fit(&self.error.to_string(), crate::message::MAX_CHARS);
        tracing::warn!(
            event = "broker_refused",
            uid = self.uid,
            pid = self.pid,
            scope = self.scope,
            result = result.label(),
            error = %error,
            "credential broker: no session for uid {} (pid {}){}: {error}",
            shown_id(self.uid),
            shown_id(self.pid),
            self.scope
                .map(|s| format!(" for {}", printable(s)))
                .unwrap_or_default(),
        );
    }
}

/// `s3drop exec` registered a program with the broker: it fetches (and refreshes) its
/// sessions from the loopback endpoint while it runs.
pub struct ExecRegistered<'a> {
    pub uid: u32,
    pub pid: i32,
    pub scope: &'a str,
    pub max: Option<Duration>,
}

impl Event for ExecRegistered<'_> {
    fn emit(self) {
        let max_s = self.max.map(|d| d.as_secs());
        tracing::info!(
            event = "exec_registered",
            uid = self.uid,
            pid = self.pid,
            scope = self.scope,
            max_duration_s = max_s,
            "credential broker: pid {} (uid {}) registered by s3drop exec for {}; its sessions \
             are refreshed until it exits{}",
            self.pid,
            self.uid,
            printable(self.scope),
            max_s
                .map(|s| format!(" or {s} s have passed"))
                .unwrap_or_default(),
        );
    }
}

/// A program `s3drop exec` registered is no longer served.
pub struct ExecEnded<'a> {
    pub uid: u32,
    pub pid: i32,
    pub scope: &'a str,
    /// `exited`, `max_duration` or `the daemon stopped`.
    pub why: &'a str,
}

impl Event for ExecEnded<'_> {
    fn emit(self) {
        tracing::info!(
            event = "exec_ended",
            uid = self.uid,
            pid = self.pid,
            scope = self.scope,
            why = self.why,
            "credential broker: pid {} (uid {}) is no longer served ({}); its token opens \
             nothing now",
            self.pid,
            self.uid,
            self.why.replace('_', " "),
        );
    }
}

/// A uid or pid from `SO_PEERCRED`, or `?`.
fn shown_id(id: Option<impl std::fmt::Display>) -> String {
    id.map_or("?".into(), |id| id.to_string())
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

/// The session is there and the workers start: what is uploaded where, as whom.
pub struct Started<'a> {
    pub watch_dir: &'a Path,
    pub bucket: &'a str,
    pub prefix: &'a str,
    /// The upload role; `None` for a federation token.
    pub role_arn: Option<&'a str>,
    pub source: &'a str,
    pub facts: &'a crate::auth::Facts,
}

impl Event for Started<'_> {
    fn emit(self) {
        let who = match self.role_arn {
            Some(role) => format!("as {role}"),
            None => "with a federation token".to_string(),
        };
        tracing::info!(
            event = "started",
            instance_id = self.facts.instance_id,
            host = self.facts.hostname,
            region = self.facts.region,
            bucket = self.bucket,
            prefix = self.prefix,
            role_arn = self.role_arn,
            source = self.source,
            watch_dir = %self.watch_dir.display(),
            "uploading {} to s3://{}/{} ({who}, {} in {})",
            shown(self.watch_dir),
            self.bucket,
            printable(self.prefix),
            self.facts.who(),
            self.facts.region,
        );
    }
}

/// READY: the watch is up and the backlog is queued.
pub struct Ready<'a> {
    pub watch_dir: &'a Path,
    pub queued: usize,
}

impl Event for Ready<'_> {
    fn emit(self) {
        tracing::info!(
            event = "ready",
            queued = self.queued,
            "ready: the backlog is queued ({}) and {} is watched",
            files(self.queued),
            shown(self.watch_dir),
        );
    }
}

/// The first STS call waits a random part of `startup_jitter_seconds`.
pub struct StartupJitter(pub Duration);

impl Event for StartupJitter {
    fn emit(self) {
        tracing::info!(
            event = "startup_jitter",
            wait_s = self.0.as_secs(),
            "start-up jitter: asking STS in {} s (a random delay, so a fleet booted together \
             does not call it at once)",
            self.0.as_secs()
        );
    }
}

/// SIGHUP (`systemctl reload`): rescan and retry failed files now.
pub struct Hangup;

impl Event for Hangup {
    fn emit(self) {
        tracing::info!(
            event = "sighup",
            "SIGHUP: rescanning watch_dir and retrying failed files now (and the session, if it lapsed)"
        );
    }
}

/// The daemon stops: no new uploads; those in flight may finish.
pub struct Stopping<'a> {
    /// The signal's name, or "a fatal error".
    pub why: &'a str,
    pub waiting: usize,
    pub deadline: Duration,
}

impl Event for Stopping<'_> {
    fn emit(self) {
        tracing::info!(
            event = "stopping",
            signal = self.why,
            in_flight_or_waiting = self.waiting,
            deadline_s = self.deadline.as_secs(),
            "stopping on {}: no new uploads; waiting up to {} s for those in flight ({} in \
             flight or waiting; those not done are uploaded at the next start)",
            self.why,
            self.deadline.as_secs(),
            files(self.waiting),
        );
    }
}

/// A fatal error ends the daemon.
pub struct FatalError<'a>(pub &'a crate::supervise::Fatal);

impl Event for FatalError<'_> {
    fn emit(self) {
        tracing::error!(event = "fatal", error = %self.0, "stopping on a fatal error: {}", self.0);
    }
}

/// The shutdown deadline passed with uploads unfinished.
pub struct ShutdownDeadline(pub Duration);

impl Event for ShutdownDeadline {
    fn emit(self) {
        tracing::warn!(
            event = "shutdown_deadline",
            "the shutdown deadline ({} s) passed; unfinished uploads are redone at the next start",
            self.0.as_secs()
        );
    }
}

/// The daemon stopped.
pub struct Stopped;

impl Event for Stopped {
    fn emit(self) {
        tracing::info!(event = "stopped", "stopped");
    }
}

/// What became of `watch_dir` itself.
pub enum WatchDir<'a> {
    /// Deleted: waiting for it to be recreated.
    Gone(&'a Path),
    /// Replaced by something that is not a directory (a symlink is never followed).
    Replaced(&'a Path),
    /// A directory again: watched and scanned.
    Back(&'a Path),
}

impl Event for WatchDir<'_> {
    fn emit(self) {
        match self {
            WatchDir::Gone(dir) => tracing::warn!(
                event = "watch_dir_gone",
                watch_dir = %dir.display(),
                "watch_dir {} disappeared; waiting for it to be recreated",
                shown(dir)
            ),
            WatchDir::Replaced(dir) => tracing::error!(
                event = "watch_dir_replaced",
                watch_dir = %dir.display(),
                "watch_dir {} was replaced by something that is not a directory (a symlink is \
                 never followed); nothing is scanned until a directory is back in its place",
                shown(dir)
            ),
            WatchDir::Back(dir) => tracing::info!(
                event = "watch_dir_back",
                watch_dir = %dir.display(),
                "watch_dir {} is (back) in place; watching it again",
                shown(dir)
            ),
        }
    }
}

/// The kernel's inotify watch limit was met: the directories beyond it are not watched,
/// and their files are found by the periodic rescan instead (said once per run).
pub struct WatchLimitReached<'a> {
    pub first_unwatched: &'a Path,
    pub watched: usize,
}

impl Event for WatchLimitReached<'_> {
    fn emit(self) {
        tracing::warn!(
            event = "watch_limit_reached",
            watched = self.watched,
            first_unwatched = %self.first_unwatched.display(),
            "the inotify watch limit is reached at {} watched directories ({} and others are \
             not watched): their files are found by the periodic rescan instead, up to \
             rescan_interval_seconds late; raise the limit with `sysctl \
             fs.inotify.max_user_watches=524288` (and persist it in /etc/sysctl.d/)",
            self.watched,
            shown(self.first_unwatched),
        );
    }
}

/// Watch events were lost (inotify's queue or s3drop's channel overflowed, the watch
/// failed): a full scan follows.
pub struct EventsLost<'a>(pub &'a str);

impl Event for EventsLost<'_> {
    fn emit(self) {
        tracing::warn!(
            event = "events_lost",
            cause = self.0,
            "watch events were lost ({}); rescanning watch_dir",
            self.0
        );
    }
}

/// A file that appeared and was never written (a hard link, a linked temporary file) is
/// complete as it stands.
pub struct TakenUnwritten<'a>(pub &'a Path);

impl Event for TakenUnwritten<'_> {
    fn emit(self) {
        tracing::info!(
            event = "taken_unwritten",
            path = %self.0.display(),
            "no write to {} since it appeared (a hard link or a linked temporary file): \
             complete as it stands",
            shown(self.0)
        );
    }
}

/// Directories created one by one (a tree copied in), summarized.
pub struct NewDirectoriesScanned {
    pub directories: usize,
    pub files: usize,
    pub queued: usize,
}

impl Event for NewDirectoriesScanned {
    fn emit(self) {
        let Self {
            directories,
            files: found,
            queued,
        } = self;
        tracing::info!(
            event = "scanned_new_directories",
            directories,
            files = found,
            queued,
            "scanned {directories} new directories: {}, {queued} queued",
            files(found)
        );
    }
}

/// A restart continues a multipart upload where the ledger says it was.
pub struct MultipartResumed<'a> {
    pub path: &'a Path,
    pub key: &'a str,
    pub done: usize,
    pub parts: u64,
}

impl Event for MultipartResumed<'_> {
    fn emit(self) {
        tracing::info!(
            event = "multipart_resumed",
            path = %self.path.display(),
            key = self.key,
            parts_done = self.done,
            parts = self.parts,
            "resuming the multipart upload of {} to {}: {} of {} parts are already in S3",
            shown(self.path),
            printable(self.key),
            self.done,
            self.parts
        );
    }
}

/// S3 refused the session held as expired: the cache drops it and mints a new one.
pub struct SessionInvalidated;

impl Event for SessionInvalidated {
    fn emit(self) {
        tracing::info!(
            event = "session_invalidated",
            "S3 refused the session token as expired; minting a new session"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The JSON log lines `f` writes, at debug and above.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Capture(writer.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_failure_kind_is_a_sentence_naming_the_file_and_only_an_operators_is_in_status() {
        let path = Path::new("/spool/a\u{1b}b.csv");
        for &kind in FailureKind::ALL {
            let status = Progress::default();
            let before = crate::metrics::get()
                .upload_failures
                .with_label_values(&[kind.label()])
                .get();
            let lines = logged(|| {
                status.emit(UploadFailed {
                    path,
                    key: "p/a.csv",
                    kind,
                    error: "the cause",
                    fix: Some("the fix"),
                })
            });
            let after = crate::metrics::get()
                .upload_failures
                .with_label_values(&[kind.label()])
                .get();
            assert!(after > before, "{kind:?} not counted");
            let [line] = &lines[..] else {
                panic!("{kind:?}: {lines:?}")
            };
            assert_eq!(line["event"], "upload_failed");
            assert_eq!(line["kind"], kind.label());
            let message = line["message"].as_str().unwrap();
            assert!(
                message.contains("/spool/a\\u{1b}b.csv"),
                "{kind:?}: {message}"
            );
            assert!(!message.contains('\u{1b}'), "{kind:?}: {message}");
            assert_eq!(status.failed_count(), usize::from(kind.needs_operator()));
            if kind.needs_operator() {
                assert_eq!(line["level"], "ERROR", "{kind:?}");
                assert!(
                    message.contains("the cause (fix: the fix)"),
                    "{kind:?}: {message}"
                );
            }
        }
    }

    #[test]
    fn an_upload_is_one_sentence_with_the_file_the_key_and_its_size() {
        let status = Progress::default();
        let lines = logged(|| {
            status.emit(Uploaded {
                path: Path::new("/spool/a/b.csv"),
                bucket: "bucket",
                key: "i-0abc/a/b.csv",
                bytes: 14,
                took: Duration::from_millis(6),
                checksum: &Checksum::Verified("AAAAAA==".into()),
                parts: None,
            })
        });
        assert_eq!(
            lines[0]["message"],
            "uploaded /spool/a/b.csv → s3://bucket/i-0abc/a/b.csv (14 bytes, 6 ms)"
        );
        assert_eq!(lines[0]["key"], "i-0abc/a/b.csv");
        assert!(
            status
                .summary()
                .starts_with("1 uploaded; last i-0abc/a/b.csv")
        );
    }
}
