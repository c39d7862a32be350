//! Where the base credentials come from: the credentials that may only mint the scoped
//! upload session. A closed set chosen by the config; today the instance role from IMDSv2
//! is the only source (access keys in the environment or in profile files are ignored).

use aws_config::imds;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::AuthError;

/// A source of base credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// The instance role's temporary credentials from IMDSv2.
    Ec2InstanceMetadata,
}

impl CredentialSource {
    /// A provider for this source. It is asked once here, so a missing instance profile is
    /// reported as such rather than as a failed AssumeRole.
    pub async fn provider(
        self,
        imds: &imds::Client,
    ) -> Result<SharedCredentialsProvider, AuthError> {
        match self {
            CredentialSource::Ec2InstanceMetadata => {
                let provider = ImdsCredentialsProvider::builder()
                    .imds_client(imds.clone())
                    .build();
                provider
                    .provide_credentials()
                    .await
                    .map_err(|e| AuthError::BaseCredentials {
                        message: crate::message::cause(&e),
                    })?;
                Ok(SharedCredentialsProvider::new(provider))
            }
        }
    }

    /// What `check` says when the source answered.
    pub fn describe(self) -> &'static str {
        match self {
            CredentialSource::Ec2InstanceMetadata => "temporary credentials received from IMDS",
        }
    }
}
