//! Credentials: the instance role's temporary credentials from IMDSv2, chained through
//! `sts:AssumeRole` into the upload role with an inline session policy, and cached until
//! shortly before they expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::imds;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::meta::region::ProvideRegion;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider, future};
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_types::region::Region;

use crate::config::Config;

/// Refresh this long before the session's expiry, so no request (or long upload) starts
/// with credentials about to lapse.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

const IMDS_HINT: &str = "is this an EC2 instance with the metadata service enabled and \
    HttpTokens allowing IMDSv2? In a container, the IMDSv2 token response needs \
    HttpPutResponseHopLimit >= 2 on the instance";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("instance metadata (IMDSv2) did not answer for {what}: {message} ({IMDS_HINT})")]
    Imds { what: &'static str, message: String },
    #[error(
        "no region: set `region` in the config or AWS_REGION, or run where IMDS answers \
         placement/region ({message})"
    )]
    Region { message: String },
    #[error(
        "the instance role's credentials are not available from IMDS: {message} (does the \
         instance have an instance profile with a role?)"
    )]
    InstanceRole { message: String },
    #[error(
        "sts:AssumeRole into {role_arn} with the session policy was refused: {message} (the \
         upload role's trust policy must trust the instance role, and the instance role's \
         policy must allow sts:AssumeRole on it)"
    )]
    AssumeRole {
        role_arn: String,
        message: String,
        /// Refused (denied, malformed policy) rather than unreachable.
        refused: bool,
    },
}

impl CredentialsError {
    /// Will trying again without an operator's change not help?
    pub fn is_permanent(&self) -> bool {
        matches!(self, CredentialsError::AssumeRole { refused: true, .. })
    }
}

/// What IMDS tells s3drop about the instance it runs on.
#[derive(Debug, Clone)]
pub struct InstanceFacts {
    pub instance_id: String,
    pub region: String,
}

/// The IMDS client, IMDSv2 only (the SDK's client never falls back to IMDSv1). It honours
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
pub fn imds_client() -> imds::Client {
    imds::Client::builder()
        .max_attempts(4)
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(2))
        .build()
}

/// Instance id from IMDS; region from the config, else `AWS_REGION`, else IMDS.
pub async fn instance_facts(
    imds: &imds::Client,
    configured_region: Option<&str>,
) -> Result<InstanceFacts, CredentialsError> {
    let instance_id = imds
        .get("/latest/meta-data/instance-id")
        .await
        .map_err(|e| CredentialsError::Imds {
            what: "instance-id",
            message: DisplayErrorContext(&e).to_string(),
        })?;
    let region = match configured_region {
        Some(r) => r.to_string(),
        None => match EnvironmentVariableRegionProvider::new().region().await {
            Some(r) => r.to_string(),
            None => imds
                .get("/latest/meta-data/placement/region")
                .await
                .map_err(|e| CredentialsError::Region {
                    message: DisplayErrorContext(&e).to_string(),
                })?
                .as_ref()
                .to_string(),
        },
    };
    Ok(InstanceFacts {
        instance_id: instance_id.as_ref().to_string(),
        region,
    })
}

/// The instance role's credentials, straight from IMDS (used only to call AssumeRole).
pub fn instance_role_provider(imds: imds::Client) -> ImdsCredentialsProvider {
    ImdsCredentialsProvider::builder().imds_client(imds).build()
}

/// Fetches the instance role's credentials once, to report a missing instance profile
/// clearly.
pub async fn check_instance_role(
    provider: &ImdsCredentialsProvider,
) -> Result<Credentials, CredentialsError> {
    provider
        .provide_credentials()
        .await
        .map_err(|e| CredentialsError::InstanceRole {
            message: DisplayErrorContext(&e).to_string(),
        })
}

/// SDK configuration for the instance's region; credentials come only from IMDS (no env
/// keys, no profile files), endpoints from the SDK's own variables (`AWS_ENDPOINT_URL`).
pub async fn base_sdk_config(region: &str, instance_role: ImdsCredentialsProvider) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(instance_role)
        .load()
        .await
}

/// A session name STS accepts (`[\w+=,.@-]`, at most 64 characters) that names the instance
/// in CloudTrail.
pub fn session_name(instance_id: &str) -> String {
    let cleaned: String = instance_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("s3drop-{cleaned}");
    name.truncate(64);
    name
}

/// The AssumeRole provider for the upload role with the inline session policy.
pub async fn upload_role_provider(
    config: &Config,
    base: &SdkConfig,
    facts: &InstanceFacts,
    policy: String,
) -> AssumeRoleProvider {
    let mut builder = AssumeRoleProvider::builder(config.role_arn.as_str())
        .session_name(session_name(&facts.instance_id))
        .policy(policy)
        .session_length(config.session_duration)
        .configure(base);
    if let Some(external_id) = &config.external_id {
        builder = builder.external_id(external_id.clone());
    }
    builder.build().await
}

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
    role_arn: String,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    credentials: Credentials,
}

impl SessionCredentials {
    pub fn new(source: impl ProvideCredentials + 'static, role_arn: &str) -> Self {
        SessionCredentials {
            inner: Arc::new(Inner {
                source: SharedCredentialsProvider::new(source),
                role_arn: role_arn.to_string(),
                cached: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Current credentials, refreshed when within the refresh window of expiry. If a
    /// refresh fails while the old credentials are still valid, those are used.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let mut cached = self.inner.cached.lock().await;
        let now = SystemTime::now();
        if let Some(c) = cached.as_ref()
            && !needs_refresh(&c.credentials, now)
        {
            return Ok(c.credentials.clone());
        }
        match self.inner.source.provide_credentials().await {
            Ok(credentials) => {
                tracing::info!(
                    role_arn = %self.inner.role_arn,
                    expires_in_s = credentials
                        .expiry()
                        .and_then(|e| e.duration_since(now).ok())
                        .map(|d| d.as_secs()),
                    "assumed upload role with session policy"
                );
                *cached = Some(Cached {
                    credentials: credentials.clone(),
                });
                Ok(credentials)
            }
            Err(e) => {
                let message = DisplayErrorContext(&e).to_string();
                if let Some(c) = cached.as_ref()
                    && c.credentials.expiry().is_none_or(|exp| exp > now)
                {
                    tracing::warn!(error = %message, "refreshing credentials failed; using the current ones until they expire");
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
                Err(CredentialsError::AssumeRole {
                    role_arn: self.inner.role_arn.clone(),
                    message,
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
            tracing::info!("S3 refused the session token; assuming the upload role again");
            *cached = None;
        }
    }
}

fn needs_refresh(credentials: &Credentials, now: SystemTime) -> bool {
    credentials
        .expiry()
        .is_some_and(|expiry| expiry <= now + REFRESH_BEFORE_EXPIRY)
}

impl ProvideCredentials for SessionCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.get()
                .await
                .map_err(provider::error::CredentialsError::provider_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        (SessionCredentials::new(source, "arn:test"), calls)
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
        let creds = SessionCredentials::new(source, "arn:aws:iam::1:role/x");
        let err = creds.get().await.unwrap_err().to_string();
        assert!(err.contains("arn:aws:iam::1:role/x"), "{err}");
    }

    #[test]
    fn session_name_is_sts_safe() {
        assert_eq!(
            session_name("i-0123456789abcdef0"),
            "s3drop-i-0123456789abcdef0"
        );
        assert_eq!(session_name("a b/c"), "s3drop-a-b-c");
        assert_eq!(session_name(&"x".repeat(100)).len(), 64);
    }
}
