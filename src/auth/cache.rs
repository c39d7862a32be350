//! The upload session's credentials, cached until shortly before they expire. Unlike the
//! SDK's own identity cache it can be told that S3 found a session expired
//! ([`SessionCredentials::invalidate`]), and it keeps using a still-valid session when a
//! refresh fails.

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::AuthError;
use super::mint::{StsAnswer, classify};
use super::schedule::Schedule;
use crate::chain::Link;
use crate::events::{Event, SessionFailed, SessionInvalidated, SessionMinted};

/// Caches the session credentials and asks STS for new ones when [`Schedule`] says:
/// at a random point before they expire, and after a failure only once its backoff has
/// passed (never once per request while STS throttles or is down).
#[derive(Clone, Debug)]
pub struct SessionCredentials {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: SharedCredentialsProvider,
    /// The STS call that mints a session, and its link (whose fix says what to change
    /// when it is refused).
    call: String,
    link: Link,
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    credentials: Option<Credentials>,
    schedule: Schedule,
    /// Why the last call failed (and whether an operator must act), while no session holds.
    failure: Option<(String, bool)>,
}

impl SessionCredentials {
    pub fn new(source: SharedCredentialsProvider, call: String, link: Link) -> Self {
        SessionCredentials {
            inner: Arc::new(Inner {
                source,
                call,
                link,
                state: tokio::sync::Mutex::new(State::default()),
            }),
        }
    }

    /// When the cache will next ask STS (the refresher sleeps until then), if ever.
    pub async fn next_call(&self) -> Option<SystemTime> {
        self.inner.state.lock().await.schedule.next_call()
    }

    /// SIGHUP: with no usable session, ask STS at the next [`SessionCredentials::get`]
    /// rather than after the backoff. True if that changed anything.
    pub async fn hurry(&self) -> bool {
        self.inner
            .state
            .lock()
            .await
            .schedule
            .hurry(SystemTime::now())
    }

    /// Does the cache hold a session that has not expired?
    pub async fn usable(&self) -> bool {
        let state = self.inner.state.lock().await;
        state.credentials.is_some() && state.schedule.usable(SystemTime::now())
    }

    /// Current credentials, refreshed when the schedule says. If a refresh fails while the
    /// old credentials are still valid, those are used; with none valid, the last failure
    /// is answered until its backoff has passed.
    pub async fn get(&self) -> Result<Credentials, AuthError> {
        let mut state = self.inner.state.lock().await;
        let now = SystemTime::now();
        if !state.schedule.due(now) {
            if state.schedule.usable(now)
                && let Some(credentials) = &state.credentials
            {
                return Ok(credentials.clone());
            }
            if let Some((message, refused)) = &state.failure {
                return Err(self.error(format!("{message} (STS is asked again shortly)"), *refused));
            }
        }
        match self.inner.source.provide_credentials().await {
            Ok(credentials) => {
                state
                    .schedule
                    .minted(now, credentials.expiry(), fastrand::f64());
                SessionMinted {
                    call: &self.inner.call,
                    expiry: credentials.expiry(),
                    refresh_in: state
                        .schedule
                        .next_call()
                        .and_then(|at| at.duration_since(now).ok()),
                }
                .emit();
                state.credentials = Some(credentials.clone());
                state.failure = None;
                Ok(credentials)
            }
            Err(e) => {
                let message = format!("{}: {}", self.inner.call, crate::message::sentence(&e));
                let answer = classify(&e);
                let delay = state.schedule.failed(now, fastrand::f64());
                let kept = state.schedule.usable(now) && state.credentials.is_some();
                SessionFailed {
                    error: &message,
                    result: answer.result(),
                    retry_in: delay,
                    kept,
                }
                .emit();
                if kept && let Some(credentials) = &state.credentials {
                    return Ok(credentials.clone());
                }
                let message = crate::message::sentence(&e);
                let refused = answer == StsAnswer::Refused;
                state.failure = Some((message.clone(), refused));
                Err(self.error(message, refused))
            }
        }
    }

    fn error(&self, message: String, refused: bool) -> AuthError {
        AuthError::Mint {
            call: self.inner.call.clone(),
            message,
            link: self.inner.link,
            refused,
        }
    }

    /// S3 refused the session whose access key id is `used` as expired or invalid: fetch
    /// anew on the next request, unless the cache already holds newer credentials (many
    /// requests in flight report the same stale session).
    pub async fn invalidate(&self, used: &str) {
        let mut state = self.inner.state.lock().await;
        if state
            .credentials
            .as_ref()
            .is_some_and(|c| c.access_key_id() == used)
        {
            SessionInvalidated.emit();
            state.credentials = None;
            state.schedule.invalidate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::{self, future};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A source that succeeds until told to fail, counting calls; its sessions last 2 s,
    /// so one is due for a refresh after 1 s.
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
                    Some(SystemTime::now() + Duration::from_secs(2)),
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
            Link::UploadRole,
        );
        let first = creds.get().await.unwrap();
        source.fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1050)).await;
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
            SessionCredentials::new(
                SharedCredentialsProvider::new(source),
                "test".into(),
                Link::UploadRole,
            ),
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
        let (creds, calls) = counting(Duration::from_secs(2));
        let first = creds.get().await.unwrap();
        assert_eq!(
            creds.get().await.unwrap().access_key_id(),
            first.access_key_id()
        );
        tokio::time::sleep(Duration::from_millis(1050)).await;
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
        let calls = Arc::new(AtomicUsize::new(0));
        let source = Counting {
            calls: calls.clone(),
            lifetime: Duration::ZERO,
            fail: true,
        };
        let creds = SessionCredentials::new(
            SharedCredentialsProvider::new(source),
            "sts:AssumeRole into arn:aws:iam::1:role/x".into(),
            Link::UploadRole,
        );
        let err = creds.get().await.unwrap_err().to_string();
        assert!(err.contains("arn:aws:iam::1:role/x"), "{err}");
        // Without a session to fall back on, the failure is answered until its backoff
        // has passed: not one STS call per waiting file.
        for _ in 0..20 {
            assert!(creds.get().await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
