//! The one retry policy of the upload pipeline: what a failed attempt means for the file
//! ([`verdict`]) and when it is tried again ([`Backoff`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::send::SendError;

const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);
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
    /// An operator must act (denied, no bucket, rejected request): record it, try again
    /// much later or at SIGHUP.
    Permanent,
}

/// The classifier for a failed send. `unchanged`: the file is still the version that was
/// opened (a failure while it changed counts as the change: a truncated file cannot fill
/// its request body).
pub fn verdict(error: &SendError, unchanged: bool) -> Verdict {
    match error {
        _ if !unchanged => Verdict::Changed,
        SendError::Changed => Verdict::Changed,
        SendError::S3(e) if e.is_truncated_body() => Verdict::Changed,
        SendError::S3(e) if e.is_permanent() => Verdict::Permanent,
        SendError::S3(_) => Verdict::Transient,
    }
}

/// Per-file exponential backoff: 1 s doubling to 60 s, jittered over the upper half so a
/// fleet does not retry in lockstep; permanent failures wait [`RETRY_PERMANENT`].
#[derive(Default)]
pub struct Backoff {
    attempts: Mutex<HashMap<PathBuf, u32>>,
}

impl Backoff {
    pub fn next_delay(&self, path: &Path, permanent: bool) -> Duration {
        if permanent {
            return RETRY_PERMANENT;
        }
        let mut attempts = self.attempts.lock().expect("attempts lock");
        let n = attempts.entry(path.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let backoff = RETRY_BASE
            .saturating_mul(1 << (*n - 1).min(10))
            .min(RETRY_CAP);
        backoff.mul_f64(0.5 + 0.5 * fastrand::f64())
    }

    /// The file is done with (uploaded, dropped): its next failure starts from 1 s again.
    pub fn forget(&self, path: &Path) {
        self.attempts.lock().expect("attempts lock").remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::{S3Error, classify};

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
    fn refusals_are_permanent_and_the_rest_transient() {
        let table = [
            (403, "AccessDenied", Verdict::Permanent),
            (404, "NoSuchBucket", Verdict::Permanent),
            (503, "SlowDown", Verdict::Transient),
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
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay(p, false)).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= RETRY_BASE);
        assert!(delays.iter().all(|d| *d <= RETRY_CAP));
        assert!(delays[9] >= RETRY_CAP / 2);
        b.forget(p);
        assert!(b.next_delay(p, false) <= RETRY_BASE);
        assert_eq!(b.next_delay(p, true), RETRY_PERMANENT);
    }
}
