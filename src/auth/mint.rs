//! How the scoped upload session is minted from the base credentials, as the config's
//! `session_type` says: `sts:AssumeRole` into the upload role, or `sts:GetFederationToken`
//! for an IAM user (seed 000). Either way the inline session policy goes with the call, so
//! the session's permissions are the intersection of the principal's and the policy's.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{
    self, ProvideCredentials, SharedCredentialsProvider, error::CredentialsError,
};
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::chain::Link;
use crate::config::{RoleArn, SessionType};

/// What STS says when GetFederationToken is called with temporary credentials.
const FROM_SESSION: &str = "with session credentials";
pub const FEDERATION_FROM_SESSION: &str = "GetFederationToken needs an IAM user's long-term \
    access keys: role sessions (the instance role's included) and other temporary \
    credentials cannot call it";

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

    /// What to fix when STS refuses.
    pub fn hint(&self) -> &'static str {
        match self.session {
            SessionType::AssumeRole { .. } => {
                "the upload role's trust policy must trust the base credentials' principal \
                 (the instance role by default), and that principal's policy must allow \
                 sts:AssumeRole on it"
            }
            SessionType::FederationToken => {
                "the IAM user's policy must allow sts:GetFederationToken, and the token can \
                 never do more than the user itself may (it needs s3:PutObject on the prefix \
                 too)"
            }
        }
    }

    /// A credentials provider that mints a new session with `policy` each time it is asked
    /// (the session cache decides when). `name` identifies the session in CloudTrail.
    pub async fn provider(
        &self,
        base: &SdkConfig,
        name: &str,
        policy: String,
    ) -> SharedCredentialsProvider {
        match &self.session {
            SessionType::AssumeRole {
                role_arn,
                external_id,
            } => SharedCredentialsProvider::new(
                assume_role(
                    role_arn,
                    external_id.as_deref(),
                    self.duration,
                    base,
                    name,
                    policy,
                )
                .await,
            ),
            SessionType::FederationToken => SharedCredentialsProvider::new(FederationToken {
                client: aws_sdk_sts::Client::new(base),
                name: federated_user_name(name),
                policy,
                duration: self.duration,
            }),
        }
    }
}

async fn assume_role(
    role_arn: &RoleArn,
    external_id: Option<&str>,
    duration: Duration,
    base: &SdkConfig,
    name: &str,
    policy: String,
) -> AssumeRoleProvider {
    let mut builder = AssumeRoleProvider::builder(role_arn.as_str())
        .session_name(name)
        .policy(policy)
        .session_length(duration)
        .configure(base);
    if let Some(external_id) = external_id {
        builder = builder.external_id(external_id);
    }
    builder.build().await
}

/// `sts:GetFederationToken` with the session policy, asked anew each time.
#[derive(Debug)]
struct FederationToken {
    client: aws_sdk_sts::Client,
    name: String,
    policy: String,
    duration: Duration,
}

impl FederationToken {
    async fn mint(&self) -> provider::Result {
        let answer = self
            .client
            .get_federation_token()
            .name(&self.name)
            .policy(&self.policy)
            .duration_seconds(self.duration.as_secs() as i32)
            .send()
            .await
            .map_err(|e| {
                let message = DisplayErrorContext(&e).to_string();
                if message.contains(FROM_SESSION) {
                    CredentialsError::invalid_configuration(format!(
                        "{message} ({FEDERATION_FROM_SESSION})"
                    ))
                } else {
                    CredentialsError::provider_error(e)
                }
            })?;
        let c = answer.credentials.ok_or_else(|| {
            CredentialsError::unhandled("GetFederationToken returned no credentials")
        })?;
        let expiry = std::time::SystemTime::try_from(c.expiration)
            .map_err(|_| CredentialsError::unhandled("expiration out of range"))?;
        Ok(Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            Some(expiry),
            "GetFederationToken",
        ))
    }
}

impl ProvideCredentials for FederationToken {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.mint())
    }
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
