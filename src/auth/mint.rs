//! How the scoped upload session is minted from the base credentials, as the config's
//! `session_type` says: `sts:AssumeRole` into the upload role, or `sts:GetFederationToken`
//! for an IAM user (seed 000). Either way the inline session policy goes with the call, so
//! the session's permissions are the intersection of the principal's and the policy's.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{
    self, ProvideCredentials, SharedCredentialsProvider, error::CredentialsError,
};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_sdk_sts::operation::get_federation_token::GetFederationTokenError;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority, RetryReason,
};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::retry::ErrorKind;

use crate::chain::Link;
use crate::config::SessionType;

/// What STS says when GetFederationToken is called with temporary credentials.
const FROM_SESSION: &str = "with session credentials";
pub const FEDERATION_FROM_SESSION: &str = "GetFederationToken takes only an IAM user's \
    long-term access keys, never a role session's (the instance role's included)";

/// A way to mint the upload session, with its length.
#[derive(Debug, Clone)]
pub struct Minter {
    pub session: SessionType,
    pub duration: Duration,
}

impl Minter {
    /// The link of the chain minting is.
    pub fn link(&self) -> Link {
        match self.session {
            SessionType::AssumeRole { .. } => Link::UploadRole,
            SessionType::FederationToken => Link::FederationToken,
        }
    }

    /// The STS call, for logs and errors: `sts:AssumeRole into ARN` or
    /// `sts:GetFederationToken as NAME`.
    pub fn call(&self, name: &str) -> String {
        match &self.session {
            SessionType::AssumeRole { role_arn, .. } => format!("sts:AssumeRole into {role_arn}"),
            SessionType::FederationToken => format!("sts:GetFederationToken as {name}"),
        }
    }

    /// A credentials provider that mints a new session with `policy` each time it is asked
    /// (the session cache decides when). `name` identifies the session in CloudTrail.
    pub fn provider(
        &self,
        base: &SdkConfig,
        name: &str,
        policy: String,
    ) -> SharedCredentialsProvider {
        let config = aws_sdk_sts::config::Builder::from(base)
            .retry_classifier(ThrottlingIsTheSchedules)
            .build();
        let name = match self.session {
            SessionType::AssumeRole { .. } => name.to_string(),
            SessionType::FederationToken => federated_user_name(name),
        };
        SharedCredentialsProvider::new(Mint {
            client: aws_sdk_sts::Client::from_conf(config),
            session: self.session.clone(),
            name,
            policy,
            duration: self.duration,
        })
    }
}

/// Leaves throttled STS calls to the session schedule (`auth::schedule`): one throttled
/// call is one request, and the schedule's jittered backoff the only one, so a fleet's load
/// on STS is what docs/FLEET.md and its simulation say. The SDK still retries the rest
/// (clock skew, 5xx, timeouts) at once, as it would.
#[derive(Debug)]
struct ThrottlingIsTheSchedules;

impl ClassifyRetry for ThrottlingIsTheSchedules {
    fn classify_retry(&self, _: &InterceptorContext) -> RetryAction {
        RetryAction::NoActionIndicated
    }

    fn classify_retry_v2(&self, _: &InterceptorContext, previous: &RetryAction) -> RetryAction {
        match previous {
            RetryAction::RetryIndicated(RetryReason::RetryableError {
                kind: ErrorKind::ThrottlingError,
                ..
            }) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "s3drop: STS throttling is the session schedule's"
    }

    fn priority(&self) -> RetryClassifierPriority {
        // After the SDK's classifiers, to overrule their verdict.
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// `sts:AssumeRole` or `sts:GetFederationToken` with the session policy, asked anew each
/// time.
#[derive(Debug)]
struct Mint {
    client: aws_sdk_sts::Client,
    session: SessionType,
    /// The role session name, or the federated user's name.
    name: String,
    policy: String,
    duration: Duration,
}

impl Mint {
    async fn mint(&self) -> provider::Result {
        let seconds = self.duration.as_secs() as i32;
        let (credentials, origin) = match &self.session {
            SessionType::AssumeRole {
                role_arn,
                external_id,
            } => {
                let answer = self
                    .client
                    .assume_role()
                    .role_arn(role_arn.as_str())
                    .role_session_name(&self.name)
                    .policy(&self.policy)
                    .duration_seconds(seconds)
                    .set_external_id(external_id.clone())
                    .send()
                    .await
                    .map_err(CredentialsError::provider_error)?;
                (answer.credentials, "AssumeRole")
            }
            SessionType::FederationToken => {
                let answer = self
                    .client
                    .get_federation_token()
                    .name(&self.name)
                    .policy(&self.policy)
                    .duration_seconds(seconds)
                    .send()
                    .await
                    .map_err(|e| {
                        let message = crate::message::sentence(&e);
                        if message.contains(FROM_SESSION) {
                            CredentialsError::invalid_configuration(format!(
                                "{message} ({FEDERATION_FROM_SESSION})"
                            ))
                        } else {
                            CredentialsError::provider_error(e)
                        }
                    })?;
                (answer.credentials, "GetFederationToken")
            }
        };
        let c = credentials.ok_or_else(|| {
            CredentialsError::unhandled(format!("{origin} returned no credentials"))
        })?;
        let expiry = std::time::SystemTime::try_from(c.expiration)
            .map_err(|_| CredentialsError::unhandled("expiration out of range"))?;
        Ok(Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            Some(expiry),
            origin,
        ))
    }
}

impl ProvideCredentials for Mint {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.mint())
    }
}

/// What a failed STS call means: the one classifier of STS answers, by error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsAnswer {
    /// Slow down: the account's STS request quota is spent. Back off.
    Throttled,
    /// An operator must act (trust policy, permissions, a malformed policy).
    Refused,
    /// It may pass (network, STS unavailable, an expired base session).
    Transient,
}

impl StsAnswer {
    /// Its `result` in `s3drop_sts_requests_total`.
    pub fn result(self) -> crate::metrics::StsResult {
        match self {
            StsAnswer::Throttled => crate::metrics::StsResult::Throttled,
            StsAnswer::Refused => crate::metrics::StsResult::Refused,
            StsAnswer::Transient => crate::metrics::StsResult::Error,
        }
    }
}

/// Classifies a failed mint by the STS error code it carries (AssumeRole's or
/// GetFederationToken's), else by the kind of credentials error.
pub fn classify(error: &CredentialsError) -> StsAnswer {
    if matches!(error, CredentialsError::InvalidConfiguration(_)) {
        return StsAnswer::Refused;
    }
    match sts_code(error).as_deref() {
        Some(code) => classify_code(code),
        None => StsAnswer::Transient,
    }
}

/// The classifier proper: an STS error code → what it means.
pub fn classify_code(code: &str) -> StsAnswer {
    match code {
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequests" => {
            StsAnswer::Throttled
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "MalformedPolicyDocument"
        | "PackedPolicyTooLarge"
        | "RegionDisabledException"
        | "ValidationError"
        | "SignatureDoesNotMatch"
        | "InvalidParameterValue" => StsAnswer::Refused,
        // ExpiredToken (the base session lapsed: IMDS renews it), IDPCommunicationError,
        // ServiceUnavailable, InternalFailure and codes unknown here may pass.
        _ => StsAnswer::Transient,
    }
}

/// The error code of the STS answer inside a credentials error, if STS answered.
fn sts_code(error: &CredentialsError) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>() {
            return e.code().map(str::to_string);
        }
        if let Some(e) = e.downcast_ref::<SdkError<GetFederationTokenError, HttpResponse>>() {
            return e.code().map(str::to_string);
        }
        source = e.source();
    }
    None
}

/// A session name STS accepts (`[\w+=,.@-]`, at most 64 characters) that names the instance
/// (or host) in CloudTrail.
pub fn session_name(who: &str) -> String {
    let cleaned: String = who
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

/// GetFederationToken's `Name`: the same characters, 2 to 32 of them.
fn federated_user_name(session_name: &str) -> String {
    let mut name = session_name.to_string();
    name.truncate(32);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assume_role_failed(code: &str) -> CredentialsError {
        let err = AssumeRoleError::generic(
            aws_smithy_types::error::ErrorMetadata::builder()
                .code(code)
                .message("Rate exceeded")
                .build(),
        );
        let response = HttpResponse::new(
            400u16.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::empty(),
        );
        CredentialsError::provider_error(SdkError::service_error(err, response))
    }

    #[test]
    fn sts_answers_are_classified_by_their_code() {
        assert_eq!(
            classify(&assume_role_failed("Throttling")),
            StsAnswer::Throttled
        );
        assert_eq!(
            classify(&assume_role_failed("AccessDenied")),
            StsAnswer::Refused
        );
        assert_eq!(
            classify(&assume_role_failed("ExpiredToken")),
            StsAnswer::Transient
        );
        // The message alone decides nothing.
        assert_eq!(
            classify(&CredentialsError::provider_error(
                "Throttling: Rate exceeded"
            )),
            StsAnswer::Transient
        );
        assert_eq!(
            classify(&CredentialsError::invalid_configuration("from a session")),
            StsAnswer::Refused
        );
    }

    #[test]
    fn throttled_sts_calls_are_not_retried_by_the_sdk_but_the_rest_are() {
        let ctx = InterceptorContext::new(
            aws_smithy_runtime_api::client::interceptors::context::Input::doesnt_matter(),
        );
        let c = ThrottlingIsTheSchedules;
        assert_eq!(
            c.classify_retry_v2(&ctx, &RetryAction::throttling_error()),
            RetryAction::RetryForbidden
        );
        for kept in [
            RetryAction::server_error(),
            RetryAction::transient_error(),
            RetryAction::NoActionIndicated,
        ] {
            assert_eq!(
                c.classify_retry_v2(&ctx, &kept),
                RetryAction::NoActionIndicated
            );
        }
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

    #[test]
    fn federated_user_name_fits_sts() {
        let name = federated_user_name(&session_name("ip-10-0-0-1.ec2.internal.example"));
        assert_eq!(name.len(), 32);
        assert!(name.starts_with("s3drop-ip-10-0-0-1"));
        assert_eq!(federated_user_name(&session_name("h")), "s3drop-h");
    }
}
