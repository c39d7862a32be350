//! The upload session's credentials, cached until shortly before they expire. Unlike the
//! SDK's own identity cache it can be told that S3 found a session expired
//! ([`SessionCredentials::invalidate`]), and it keeps using a still-valid session when a
//! refresh fails.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider};

use super::AuthError;

/// Refresh at least this long before the session's expiry, so no request (or long upload)
/// starts with credentials about to lapse.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Caches the session credentials and refreshes them [`REFRESH_BEFORE_EXPIRY`] before they
/// expire. Unlike the SDK's own identity cache it can be told that S3 found them expired
/// ([`SessionCredentials::invalidate`]).
#[derive(Clone, Debug)]
pub struct SessionCredentials {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: SharedCredentialsProvider,
    /// The STS call that mints a session, and what to fix when it is refused.
    call: String,
    hint: &'static str,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    credentials: Credentials,
    /// When to mint the next session: a point drawn at random in a window before expiry,
    /// so instances started together do not refresh together for ever after; after a
    /// failed refresh, a backoff later.
    refresh_at: Option<SystemTime>,
    /// Refreshes that failed in a row while this session stayed valid.
    failed_refreshes: u32,
}

impl SessionCredentials {
    pub fn new(source: SharedCredentialsProvider, call: String, hint: &'static str) -> Self {
        SessionCredentials {
            inner: Arc::new(Inner {
                source,
                call,
                hint,
                cached: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Current credentials, refreshed when within the refresh window of expiry. If a
    /// refresh fails while the old credentials are still valid, those are used.
    pub async fn get(&self) -> Result<Credentials, AuthError> {
        let mut cached = self.inner.cached.lock().await;
        let now = SystemTime::now();
        if let Some(c) = cached.as_ref()
            && c.refresh_at.is_none_or(|at| now < at)
        {
            return Ok(c.credentials.clone());
        }
        match self.inner.source.provide_credentials().await {
            Ok(credentials) => {
                let m = crate::metrics::get();
                m.sts_requests.with_label_values(&["ok"]).inc();
                m.session_expiry
                    .set(credentials.expiry().map_or(i64::MAX, crate::metrics::unix));
                tracing::info!(
                    call = %self.inner.call,
                    expires_in_s = credentials
                        .expiry()
                        .and_then(|e| e.duration_since(now).ok())
                        .map(|d| d.as_secs()),
                    "upload session minted with the session policy"
                );
                *cached = Some(Cached {
                    refresh_at: credentials
                        .expiry()
                        .map(|expiry| refresh_point(now, expiry, fastrand::f64())),
                    credentials: credentials.clone(),
                    failed_refreshes: 0,
                });
                Ok(credentials)
            }
            Err(e) => {
                let message = crate::message::cause(&e);
                let throttled = ["Throttling", "RequestLimitExceeded", "Rate exceeded"]
                    .iter()
                    .any(|needle| message.contains(needle));
                crate::metrics::get()
                    .sts_requests
                    .with_label_values(&[if throttled { "throttled" } else { "error" }])
                    .inc();
                if let Some(c) = cached.as_mut()
                    && c.credentials.expiry().is_none_or(|exp| exp > now)
                {
                    // Not once per request while STS throttles or is down: back off, but
                    // never past the session's end.
                    c.failed_refreshes += 1;
                    let delay = refresh_retry_delay(c.failed_refreshes, fastrand::f64());
                    let next = now + delay;
                    c.refresh_at = Some(c.credentials.expiry().map_or(next, |exp| next.min(exp)));
                    tracing::warn!(error = %message, retry_in_s = delay.as_secs(), "refreshing credentials failed; using the current ones until they expire");
                    return Ok(c.credentials.clone());
                }
                let refused = matches!(
                    e,
                    provider::error::CredentialsError::InvalidConfiguration(_)
                ) || [
                    "AccessDenied",
                    "not authorized",
                    "InvalidClientTokenId",
                    "MalformedPolicy",
                ]
                .iter()
                .any(|needle| message.contains(needle));
                Err(AuthError::Mint {
                    call: self.inner.call.clone(),
                    message,
                    hint: self.inner.hint,
                    refused,
                })
            }
        }
    }

    /// S3 refused the session whose access key id is `used` as expired or invalid: fetch
    /// anew on the next request, unless the cache already holds newer credentials (many
    /// requests in flight report the same stale session).
    pub async fn invalidate(&self, used: &str) {
        let mut cached = self.inner.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.credentials.access_key_id() == used)
        {
            tracing::info!("S3 refused the session token; minting a new session");
            *cached = None;
        }
    }
}

/// How long after the `failures`-th failed refresh in a row (the session still valid) the
/// next is tried: 2 s doubling to a 60 s cap, with full jitter (`draw` in 0..1), at least
/// one second.
pub fn refresh_retry_delay(failures: u32, draw: f64) -> Duration {
    let cap = Duration::from_secs(2)
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(Duration::from_secs(60));
    cap.mul_f64(draw.clamp(0.0, 1.0))
        .max(Duration::from_secs(1))
}

/// When a session minted at `minted` and expiring at `expiry` is refreshed: at the point
/// `draw` (0..1) of a window a tenth of its lifetime wide that ends 5 % of the lifetime,
/// but at least [`REFRESH_BEFORE_EXPIRY`], before expiry (15 % to 5 % for long sessions).
/// A session shorter than the margin is refreshed at once.
pub fn refresh_point(minted: SystemTime, expiry: SystemTime, draw: f64) -> SystemTime {
    let lifetime = expiry.duration_since(minted).unwrap_or_default();
    let late = lifetime.mul_f64(0.05).max(REFRESH_BEFORE_EXPIRY);
    let early = late + lifetime.mul_f64(0.10);
    let before = late + (early - late).mul_f64(draw.clamp(0.0, 1.0));
    expiry.checked_sub(before).unwrap_or(minted).max(minted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_failing_refresh_backs_off_and_keeps_the_valid_session() {
        assert_eq!(refresh_retry_delay(1, 1.0), Duration::from_secs(2));
        assert_eq!(refresh_retry_delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(
            refresh_retry_delay(30, 1.0),
            Duration::from_secs(60),
            "capped"
        );
        assert_eq!(
            refresh_retry_delay(30, 0.0),
            Duration::from_secs(1),
            "at least 1 s"
        );
        let draws: Vec<Duration> = (0..500)
            .map(|_| refresh_retry_delay(6, fastrand::f64()))
            .collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(
            *draws.iter().max().unwrap() - *draws.iter().min().unwrap() > Duration::from_secs(30),
            "jittered"
        );
    }

    /// A source that succeeds until told to fail, counting calls; its sessions last 200 s,
    /// less than the refresh margin, so every `get` wants a new one.
    #[derive(Debug, Clone, Default)]
    struct Flaky {
        calls: Arc<AtomicUsize>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl ProvideCredentials for Flaky {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let result = if self.fail.load(Ordering::SeqCst) {
                Err(provider::error::CredentialsError::provider_error(
                    "Throttling: Rate exceeded",
                ))
            } else {
                Ok(Credentials::new(
                    format!("AKID{n}"),
                    "secret",
                    Some("token".into()),
                    Some(SystemTime::now() + Duration::from_secs(200)),
                    "test",
                ))
            };
            future::ProvideCredentials::ready(result)
        }
    }

    #[tokio::test]
    async fn while_refreshes_fail_sts_is_not_asked_once_per_request() {
        let source = Flaky::default();
        let creds = SessionCredentials::new(
            SharedCredentialsProvider::new(source.clone()),
            "test".into(),
            "",
        );
        let first = creds.get().await.unwrap();
        source.fail.store(true, Ordering::SeqCst);
        for _ in 0..50 {
            let again = creds.get().await.unwrap();
            assert_eq!(
                again.access_key_id(),
                first.access_key_id(),
                "the valid session is kept"
            );
        }
        assert_eq!(
            source.calls.load(Ordering::SeqCst),
            2,
            "one failed refresh, then a backoff instead of 49 more calls"
        );
    }

    #[test]
    fn refreshes_are_spread_over_a_window_always_before_the_margin() {
        let minted = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // (lifetime, draw) → seconds before expiry.
        let before = |lifetime: u64, draw: f64| {
            let expiry = minted + Duration::from_secs(lifetime);
            expiry
                .duration_since(refresh_point(minted, expiry, draw))
                .unwrap()
                .as_secs()
        };
        // One hour: between 660 s and 300 s before expiry (the 5-minute margin is later
        // than 5 %; the window is a tenth of the hour wide).
        assert_eq!((before(3600, 0.0), before(3600, 1.0)), (300, 660));
        let draws: Vec<u64> = (0..2000).map(|_| before(3600, fastrand::f64())).collect();
        assert!(draws.iter().all(|s| (300..=660).contains(s)), "{draws:?}");
        let spread = draws.iter().max().unwrap() - draws.iter().min().unwrap();
        assert!(spread > 200, "draws cover the window: {spread}");
        // 36 hours (a federation token): 5 % and 15 % of the lifetime.
        assert_eq!((before(129_600, 0.0), before(129_600, 1.0)), (6480, 19_440));
        // Fifteen minutes: the window moves earlier, a tenth of the lifetime wide.
        assert_eq!((before(900, 0.0), before(900, 1.0)), (300, 390));
        // Shorter than the margin: now.
        assert_eq!(before(60, 0.5), 60);
    }

    /// Hands out credentials that expire `lifetime` after each call, counting calls.
    #[derive(Debug, Clone)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        lifetime: Duration,
        fail: bool,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let result = if self.fail {
                Err(provider::error::CredentialsError::not_loaded("down"))
            } else {
                Ok(Credentials::new(
                    format!("AKID{n}"),
                    "secret",
                    Some("token".into()),
                    Some(SystemTime::now() + self.lifetime),
                    "test",
                ))
            };
            future::ProvideCredentials::ready(result)
        }
    }

    fn counting(lifetime: Duration) -> (SessionCredentials, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let source = Counting {
            calls: calls.clone(),
            lifetime,
            fail: false,
        };
        (
            SessionCredentials::new(SharedCredentialsProvider::new(source), "test".into(), ""),
            calls,
        )
    }

    #[tokio::test]
    async fn credentials_are_reused_until_the_refresh_window() {
        let (creds, calls) = counting(Duration::from_secs(3600));
        for _ in 0..50 {
            creds.get().await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn credentials_near_expiry_are_refreshed_before_use() {
        let (creds, calls) = counting(REFRESH_BEFORE_EXPIRY - Duration::from_secs(1));
        let first = creds.get().await.unwrap();
        let second = creds.get().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_ne!(first.access_key_id(), second.access_key_id());
    }

    #[tokio::test]
    async fn invalidate_drops_only_the_session_that_was_refused() {
        let (creds, calls) = counting(Duration::from_secs(3600));
        let first = creds.get().await.unwrap();
        creds.invalidate(first.access_key_id()).await;
        let second = creds.get().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A late report about the first session must not throw away the second.
        creds.invalidate(first.access_key_id()).await;
        assert_eq!(
            creds.get().await.unwrap().access_key_id(),
            second.access_key_id()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_first_fetch_is_an_assume_role_error() {
        let source = Counting {
            calls: Arc::default(),
            lifetime: Duration::ZERO,
            fail: true,
        };
        let creds = SessionCredentials::new(
            SharedCredentialsProvider::new(source),
            "sts:AssumeRole into arn:aws:iam::1:role/x".into(),
            "",
        );
        let err = creds.get().await.unwrap_err().to_string();
        assert!(err.contains("arn:aws:iam::1:role/x"), "{err}");
    }
}
