//! The one retry policy of the upload pipeline: what a failed attempt means for the file
//! ([`verdict`]) and when it is tried again ([`Backoff`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::send::SendError;
use crate::s3::{ErrorClass, S3Error};

const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);
/// S3's SlowDown: a random wait up to 2 s, doubling to 120 s (full jitter), so the
/// instances sharing a prefix spread their retries out rather than return together.
const THROTTLED_BASE: Duration = Duration::from_secs(2);
const THROTTLED_CAP: Duration = Duration::from_secs(120);
/// Permanent failures (permissions, missing bucket) wait this long before another try
/// (or until SIGHUP).
pub const RETRY_PERMANENT: Duration = Duration::from_secs(300);

/// What a failed send means for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The file changed (or was truncated) while being sent: send the new version.
    Changed,
    /// It may pass: back off and try again.
    Transient,
    /// S3 asks to slow down (`SlowDown`, 503, 429): back off longer, fully jittered.
    Throttled,
    /// No session to sign with (it lapsed and STS has not minted the next yet): wait for
    /// the refresher to mint one, which wakes every waiting file.
    NoSession,
    /// An operator must act (denied, no bucket, rejected request): record it, try again
    /// much later or at SIGHUP.
    Permanent,
    /// The file was deleted while being sent (its upload abandoned): nothing more to do.
    Vanished,
}

/// The classifier for a failed send. `unchanged`: the file is still the version that was
/// opened (a failure while it changed counts as the change: a truncated file cannot fill
/// its request body).
pub fn verdict(error: &SendError, unchanged: bool) -> Verdict {
    match error {
        SendError::Vanished => Verdict::Vanished,
        SendError::TooLarge { .. } => Verdict::Permanent,
        _ if !unchanged => Verdict::Changed,
        SendError::Changed => Verdict::Changed,
        SendError::S3(e) if e.is_truncated_body() => Verdict::Changed,
        SendError::S3(e) if e.is_permanent() => Verdict::Permanent,
        SendError::S3(S3Error::Credentials { refused: false, .. }) => Verdict::NoSession,
        SendError::S3(e) if e.class() == ErrorClass::Throttled => Verdict::Throttled,
        SendError::S3(_) => Verdict::Transient,
    }
}

/// How long a file waits before its next try, by what its last failure was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// 1 s doubling to 60 s, jittered over the upper half so a fleet does not retry in
    /// lockstep.
    Transient,
    /// Up to 2 s doubling to 120 s, fully jittered (S3 asked to slow down).
    Throttled,
    /// [`RETRY_PERMANENT`] (or until SIGHUP).
    Permanent,
    /// Until the next session is minted (the refresher wakes waiting files), or
    /// [`RETRY_CAP`] should that wake-up be missed.
    Session,
}

/// Per-file exponential backoff, counting failures in a row per file.
#[derive(Default)]
pub struct Backoff {
    attempts: Mutex<HashMap<PathBuf, u32>>,
}

impl Backoff {
    pub fn next_delay(&self, path: &Path, wait: Wait) -> Duration {
        match wait {
            Wait::Permanent => return RETRY_PERMANENT,
            Wait::Session => return RETRY_CAP,
            Wait::Transient | Wait::Throttled => {}
        }
        let mut attempts = self.attempts.lock().expect("attempts lock");
        let n = attempts.entry(path.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let doubling =
            |base: Duration, cap: Duration| base.saturating_mul(1 << (*n - 1).min(10)).min(cap);
        if wait == Wait::Throttled {
            let cap = doubling(THROTTLED_BASE, THROTTLED_CAP);
            return cap.mul_f64(fastrand::f64()).max(Duration::from_millis(500));
        }
        doubling(RETRY_BASE, RETRY_CAP).mul_f64(0.5 + 0.5 * fastrand::f64())
    }

    /// The file is done with (uploaded, dropped): its next failure starts from 1 s again.
    pub fn forget(&self, path: &Path) {
        self.attempts.lock().expect("attempts lock").remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::classify;

    fn service(status: u16, code: &str) -> SendError {
        SendError::S3(S3Error::Service {
            op: "PutObject",
            class: classify(status, code),
            status,
            code: code.into(),
            message: String::new(),
        })
    }

    #[test]
    fn a_change_wins_over_any_error() {
        assert_eq!(
            verdict(&service(403, "AccessDenied"), false),
            Verdict::Changed
        );
        assert_eq!(verdict(&SendError::Changed, true), Verdict::Changed);
        let truncated = SendError::S3(S3Error::Body(std::io::ErrorKind::UnexpectedEof.into()));
        assert_eq!(verdict(&truncated, true), Verdict::Changed);
    }

    #[test]
    fn without_a_session_files_wait_for_the_next_unless_it_was_refused() {
        let no_session = |refused| {
            SendError::S3(S3Error::Credentials {
                op: "PutObject",
                message: String::new(),
                refused,
            })
        };
        assert_eq!(verdict(&no_session(false), true), Verdict::NoSession);
        assert_eq!(verdict(&no_session(true), true), Verdict::Permanent);
    }

    #[test]
    fn refusals_are_permanent_and_the_rest_transient() {
        let table = [
            (403, "AccessDenied", Verdict::Permanent),
            (404, "NoSuchBucket", Verdict::Permanent),
            (503, "SlowDown", Verdict::Throttled),
            (429, "", Verdict::Throttled),
            (500, "InternalError", Verdict::Transient),
            (400, "ExpiredToken", Verdict::Transient),
            (404, "NoSuchUpload", Verdict::Transient),
        ];
        for (status, code, want) in table {
            assert_eq!(verdict(&service(status, code), true), want, "{code}");
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_restarts_after_forget() {
        let b = Backoff::default();
        let p = Path::new("f");
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay(p, Wait::Transient)).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= RETRY_BASE);
        assert!(delays.iter().all(|d| *d <= RETRY_CAP));
        assert!(delays[9] >= RETRY_CAP / 2);
        b.forget(p);
        assert!(b.next_delay(p, Wait::Transient) <= RETRY_BASE);
        assert_eq!(b.next_delay(p, Wait::Permanent), RETRY_PERMANENT);
    }

    #[test]
    fn throttling_backs_off_longer_with_full_jitter() {
        // The tenth SlowDown in a row of many files: up to the 120 s cap, spread over it.
        let delays: Vec<Duration> = (0..400)
            .map(|i| {
                let b = Backoff::default();
                let p = PathBuf::from(format!("f{i}"));
                (0..10)
                    .map(|_| b.next_delay(&p, Wait::Throttled))
                    .last()
                    .unwrap()
            })
            .collect();
        assert!(delays.iter().all(|d| *d <= THROTTLED_CAP));
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(
            *min < Duration::from_secs(20),
            "full jitter reaches low: {min:?}"
        );
        assert!(
            *max > Duration::from_secs(100),
            "and up to the cap: {max:?}"
        );
        // The first waits at most 2 s.
        let b = Backoff::default();
        assert!(b.next_delay(Path::new("g"), Wait::Throttled) <= THROTTLED_BASE);
    }
}
