//! Establishing the upload session, step by step: instance facts from IMDS → the expanded
//! key prefix and its session policy → the instance role's credentials → AssumeRole into
//! the upload role → an S3 client that signs with the scoped session. `run` takes all the
//! steps at once; `check` takes them one by one to name the first broken link.

use aws_config::SdkConfig;
use aws_config::imds;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_sdk_s3::config::IdentityCache;

use crate::config::{Config, ConfigError, PrefixFacts};
use crate::credentials::{self, CredentialsError, InstanceFacts, SessionCredentials};
use crate::policy::{self, PolicyTooLong};
use crate::upload::Uploader;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Prefix(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyTooLong),
}

impl SessionError {
    /// A bad prefix or a refused AssumeRole needs an operator; IMDS or STS being
    /// unreachable may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            SessionError::Credentials(e) => e.is_permanent(),
            SessionError::Prefix(_) | SessionError::Policy(_) => true,
        }
    }
}

/// The key prefix for this instance and the session policy that confines writes to it.
#[derive(Debug, Clone)]
pub struct Scope {
    pub prefix: String,
    pub policy: String,
    pub resource: String,
}

pub fn scope(config: &Config, facts: &InstanceFacts) -> Result<Scope, SessionError> {
    let prefix = config.key_prefix.expand(&PrefixFacts {
        instance_id: &facts.instance_id,
        region: &facts.region,
    })?;
    let partition = config.role_arn.partition();
    let emulator = std::env::var_os(policy::EMULATOR_MULTIPART_ACTIONS_VAR).is_some();
    if emulator {
        tracing::warn!(
            "{} is set: the session policy also names the local emulator's multipart \
             actions; never set it against AWS",
            policy::EMULATOR_MULTIPART_ACTIONS_VAR
        );
    }
    let policy = policy::session_policy(partition, &config.bucket, &prefix, emulator)?;
    Ok(Scope {
        resource: policy::object_arn_pattern(partition, &config.bucket, &prefix),
        prefix,
        policy,
    })
}

/// Everything needed to upload, with credentials that were verified once.
pub struct Session {
    pub facts: InstanceFacts,
    pub scope: Scope,
    pub uploader: Uploader,
}

pub async fn instance_facts(
    config: &Config,
) -> Result<(imds::Client, InstanceFacts), CredentialsError> {
    let imds = credentials::imds_client();
    let facts = credentials::instance_facts(&imds, config.region.as_deref()).await?;
    Ok((imds, facts))
}

/// The AssumeRole chain for `scope`, not yet called.
pub async fn upload_credentials(
    config: &Config,
    facts: &InstanceFacts,
    scope: &Scope,
    instance_role: ImdsCredentialsProvider,
) -> (SdkConfig, SessionCredentials) {
    let base = credentials::base_sdk_config(&facts.region, instance_role).await;
    let assume =
        credentials::upload_role_provider(config, &base, facts, scope.policy.clone()).await;
    (
        base,
        SessionCredentials::new(assume, config.role_arn.as_str()),
    )
}

/// An S3 client that signs every request with the scoped session credentials.
pub fn uploader(config: &Config, base: &SdkConfig, credentials: &SessionCredentials) -> Uploader {
    let s3_config = aws_sdk_s3::config::Builder::from(base)
        .credentials_provider(credentials.clone())
        // SessionCredentials caches and refreshes itself.
        .identity_cache(IdentityCache::no_cache())
        .force_path_style(config.force_path_style)
        .build();
    Uploader::new(
        aws_sdk_s3::Client::from_conf(s3_config),
        config.bucket.clone(),
        credentials.clone(),
    )
}

impl Session {
    /// Takes every step and assumes the upload role once, so a broken chain fails at
    /// start-up with its cause rather than at the first file.
    pub async fn establish(config: &Config) -> Result<Session, SessionError> {
        let (imds, facts) = instance_facts(config).await?;
        let scope = scope(config, &facts)?;
        let instance_role = credentials::instance_role_provider(imds);
        credentials::check_instance_role(&instance_role).await?;
        let (base, credentials) = upload_credentials(config, &facts, &scope, instance_role).await;
        credentials.get().await?;
        let uploader = uploader(config, &base, &credentials);
        Ok(Session {
            facts,
            scope,
            uploader,
        })
    }
}
