//! Where the base credentials come from ([`CredentialSource`], chosen by the config): the
//! credentials that may only mint the scoped upload session. With the default source, the
//! instance role from IMDSv2, access keys in the environment or in profile files are
//! ignored; with the others they are the input.

use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_config::imds;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::AuthError;
use crate::chain::Link;
pub use crate::config::CredentialSource;

/// The base credentials, asked once.
pub struct Base {
    pub provider: SharedCredentialsProvider,
    /// Temporary credentials (a role or federated session), which GetFederationToken refuses.
    pub is_session: bool,
    /// The access key id's last four characters, as `aws configure list` shows them.
    pub key_hint: String,
}

impl CredentialSource {
    /// The link of the chain this source is.
    pub fn link(&self) -> Link {
        match self {
            CredentialSource::Ec2InstanceMetadata => Link::InstanceRole,
            CredentialSource::Environment => Link::EnvironmentKeys,
            CredentialSource::Profile(_) => Link::SourceProfile,
        }
    }

    /// A provider for this source. It is asked once here, so missing base credentials are
    /// reported as such rather than as a failed STS call.
    pub async fn base(&self, imds: &imds::Client) -> Result<Base, AuthError> {
        let provider = match self {
            CredentialSource::Ec2InstanceMetadata => SharedCredentialsProvider::new(
                ImdsCredentialsProvider::builder()
                    .imds_client(imds.clone())
                    .build(),
            ),
            CredentialSource::Environment => {
                SharedCredentialsProvider::new(EnvironmentVariableCredentialsProvider::new())
            }
            CredentialSource::Profile(name) => SharedCredentialsProvider::new(
                ProfileFileCredentialsProvider::builder()
                    .profile_name(name)
                    .build(),
            ),
        };
        let credentials =
            provider
                .provide_credentials()
                .await
                .map_err(|e| AuthError::BaseCredentials {
                    origin: self.describe(),
                    message: crate::message::sentence(&e),
                    link: self.link(),
                    permanent: *self != CredentialSource::Ec2InstanceMetadata,
                })?;
        let id = credentials.access_key_id();
        Ok(Base {
            provider,
            is_session: credentials.session_token().is_some(),
            key_hint: format!("****{}", &id[id.len().saturating_sub(4)..]),
        })
    }

    /// What `check` says when the source answered.
    pub fn answered(&self, base: &Base) -> String {
        let kind = if base.is_session {
            "temporary"
        } else {
            "long-term"
        };
        match self {
            CredentialSource::Ec2InstanceMetadata => {
                "temporary credentials received from IMDS".to_string()
            }
            CredentialSource::Environment => format!(
                "{kind} access key {} from AWS_ACCESS_KEY_ID (credential_source = \
                 \"Environment\")",
                base.key_hint
            ),
            CredentialSource::Profile(name) => format!(
                "{kind} access key {} from profile {name:?} of the shared config files",
                base.key_hint
            ),
        }
    }
}
