//! Where the base credentials come from and how the scoped session is minted from them, in
//! AWS's shared-config vocabulary (`credential_source`, `source_profile`), checked as one
//! set so that a combination AWS would refuse fails at start-up, not at the first upload.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, RoleArn, invalid};

/// STS caps a session obtained by role chaining (a role session → AssumeRole) at one hour;
/// a role's MaxSessionDuration is one hour unless raised, so s3drop keeps to it.
pub const MAX_ASSUME_ROLE_SECONDS: u64 = 3600;
/// GetFederationToken's limit for an IAM user (36 hours).
pub const MAX_FEDERATION_SECONDS: u64 = 129_600;
pub const MIN_SESSION_SECONDS: u64 = 900;
pub const DEFAULT_SESSION_SECONDS: u64 = 3600;

/// `credential_source` as written (AWS's own spelling of the values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(super) enum SourceKind {
    Ec2InstanceMetadata,
    Environment,
}

/// `session_type` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum SessionKind {
    #[default]
    AssumeRole,
    FederationToken,
}

/// Where the base credentials come from: the credentials that may only mint the scoped
/// upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// The instance role's temporary credentials from IMDSv2 (the default). Access keys in
    /// the environment or in profile files are ignored.
    Ec2InstanceMetadata,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN` of
    /// s3drop's own environment.
    Environment,
    /// A profile of the shared config and credentials files (`AWS_CONFIG_FILE`,
    /// `AWS_SHARED_CREDENTIALS_FILE` honoured).
    Profile(String),
}

impl CredentialSource {
    /// The config line that chose it, for messages.
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Ec2InstanceMetadata => {
                "credential_source = \"Ec2InstanceMetadata\"".into()
            }
            CredentialSource::Environment => "credential_source = \"Environment\"".into(),
            CredentialSource::Profile(name) => format!("source_profile = {name:?}"),
        }
    }
}

/// How the scoped upload session is minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionType {
    /// `sts:AssumeRole` into the upload role with the session policy.
    AssumeRole {
        role_arn: RoleArn,
        external_id: Option<String>,
    },
    /// `sts:GetFederationToken` with the session policy: the IAM user's own permissions,
    /// narrowed by the policy.
    FederationToken,
}

/// The raw keys this module validates together.
pub(super) struct RawCredentials<'a> {
    pub credential_source: Option<SourceKind>,
    pub source_profile: Option<&'a str>,
    pub session_type: SessionKind,
    pub role_arn: Option<&'a str>,
    pub external_id: Option<&'a str>,
    pub session_duration_seconds: Option<u64>,
}

impl RawCredentials<'_> {
    pub fn validate(&self) -> Result<(CredentialSource, SessionType, Duration), ConfigError> {
        let source = self.source()?;
        let session = self.session()?;
        if session == SessionType::FederationToken
            && source == CredentialSource::Ec2InstanceMetadata
        {
            return Err(invalid(
                "session_type",
                "\"federation_token\" needs an IAM user's long-term access keys, and the \
                 instance role's credentials are a role session, which STS refuses \
                 (\"Cannot call GetFederationToken with session credentials\"): set \
                 credential_source = \"Environment\" or source_profile to the IAM user's \
                 keys, or use session_type = \"assume_role\"",
            ));
        }
        let duration = self.duration(&session)?;
        Ok((source, session, duration))
    }

    fn source(&self) -> Result<CredentialSource, ConfigError> {
        match (self.credential_source, self.source_profile) {
            (Some(_), Some(_)) => Err(invalid(
                "source_profile",
                "cannot be set together with `credential_source`: the base credentials come \
                 from one place (as in AWS's shared config); remove one of them",
            )),
            (None, Some(name)) if name.trim().is_empty() => {
                Err(invalid("source_profile", "must name a profile"))
            }
            (None, Some(name)) => Ok(CredentialSource::Profile(name.to_string())),
            (Some(SourceKind::Environment), None) => Ok(CredentialSource::Environment),
            (Some(SourceKind::Ec2InstanceMetadata) | None, None) => {
                Ok(CredentialSource::Ec2InstanceMetadata)
            }
        }
    }

    fn session(&self) -> Result<SessionType, ConfigError> {
        match self.session_type {
            SessionKind::AssumeRole => {
                let Some(arn) = self.role_arn else {
                    return Err(invalid(
                        "role_arn",
                        "is required with session_type = \"assume_role\" (the default): the \
                         upload role to assume",
                    ));
                };
                if let Some(id) = self.external_id
                    && !(2..=1224).contains(&id.len())
                {
                    return Err(invalid(
                        "external_id",
                        "must be 2 to 1224 characters long (STS limit)",
                    ));
                }
                Ok(SessionType::AssumeRole {
                    role_arn: RoleArn::parse(arn)?,
                    external_id: self.external_id.map(String::from),
                })
            }
            SessionKind::FederationToken => {
                for (key, set) in [
                    ("role_arn", self.role_arn.is_some()),
                    ("external_id", self.external_id.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            key,
                            "is only used with session_type = \"assume_role\": a federation \
                             token is not a role session",
                        ));
                    }
                }
                Ok(SessionType::FederationToken)
            }
        }
    }

    fn duration(&self, session: &SessionType) -> Result<Duration, ConfigError> {
        let seconds = self
            .session_duration_seconds
            .unwrap_or(DEFAULT_SESSION_SECONDS);
        session
            .check_duration(seconds)
            .map_err(|message| invalid("session_duration_seconds", message))
    }
}

impl SessionType {
    /// `seconds` as a session length STS grants for this type, or why not.
    pub fn check_duration(&self, seconds: u64) -> Result<Duration, String> {
        let (max, why) = match self {
            SessionType::AssumeRole { .. } => (
                MAX_ASSUME_ROLE_SECONDS,
                "with session_type = \"assume_role\": STS limits a session assumed with a \
                 role's temporary credentials (role chaining, as from the instance role) to \
                 one hour whatever the role's MaxSessionDuration says",
            ),
            SessionType::FederationToken => (
                MAX_FEDERATION_SECONDS,
                "with session_type = \"federation_token\": STS's limit for an IAM user (36 \
                 hours)",
            ),
        };
        if seconds < MIN_SESSION_SECONDS {
            return Err(format!(
                "{seconds} is below STS's minimum of {MIN_SESSION_SECONDS} seconds"
            ));
        }
        if seconds > max {
            return Err(format!("{seconds} is above {max} {why}"));
        }
        Ok(Duration::from_secs(seconds))
    }

    /// The upload role, when there is one.
    pub fn role_arn(&self) -> Option<&RoleArn> {
        match self {
            SessionType::AssumeRole { role_arn, .. } => Some(role_arn),
            SessionType::FederationToken => None,
        }
    }
}

/// The partition a region belongs to, for ARNs when no role ARN names it.
pub fn partition_of_region(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}
