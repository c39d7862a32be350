//! From nothing to a prefix-scoped upload session, as one chain that `run`, `check` (and
//! later commands that hand the session to other programs) all walk: instance facts from
//! IMDS → the key prefix and its session policy ([`scope`]) → the base credentials
//! ([`source`]) → the upload session minted with the policy ([`mint`]) → a cache that
//! refreshes it ([`cache`]). Each link reports to a [`chain::Observer`].

mod cache;
pub mod imds;
pub mod mint;
pub mod policy;
pub mod scope;
pub mod source;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_types::region::Region;

pub use cache::SessionCredentials;
pub use imds::InstanceFacts;
pub use scope::Scope;
pub use source::CredentialSource;

use crate::chain::{Link, Observer};
use crate::config::{Config, ConfigError};
use mint::Minter;
use policy::PolicyTooLong;

const IMDS_HINT: &str = "is this an EC2 instance with the metadata service enabled and \
    HttpTokens allowing IMDSv2? In a container, the IMDSv2 token response needs \
    HttpPutResponseHopLimit >= 2 on the instance";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("instance metadata (IMDSv2) did not answer for {what}: {message} ({IMDS_HINT})")]
    Imds { what: &'static str, message: String },
    #[error(
        "no region: set `region` in the config or AWS_REGION, or run where IMDS answers \
         placement/region ({message})"
    )]
    Region { message: String },
    #[error(transparent)]
    Prefix(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyTooLong),
    #[error(
        "the instance role's credentials are not available from IMDS: {message} (does the \
         instance have an instance profile with a role?)"
    )]
    BaseCredentials { message: String },
    #[error(
        "sts:AssumeRole into {target} with the session policy was refused: {message} (the \
         upload role's trust policy must trust the instance role, and the instance role's \
         policy must allow sts:AssumeRole on it)"
    )]
    Mint {
        target: String,
        message: String,
        /// Refused (denied, malformed policy) rather than unreachable.
        refused: bool,
    },
}

impl AuthError {
    /// Will trying again without an operator's change not help? A bad prefix or a refused
    /// session needs an operator; IMDS or STS being unreachable may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            AuthError::Prefix(_) | AuthError::Policy(_) => true,
            AuthError::Mint { refused, .. } => *refused,
            AuthError::Imds { .. }
            | AuthError::Region { .. }
            | AuthError::BaseCredentials { .. } => false,
        }
    }
}

/// A minted upload session: who the instance is, what the session may write, and the
/// cache that keeps its credentials fresh.
pub struct Session {
    pub facts: InstanceFacts,
    pub scope: Scope,
    pub credentials: SessionCredentials,
    /// Region and endpoints for S3 clients (credentials are handed to each request).
    pub sdk: SdkConfig,
}

/// Walks the credential chain and mints the session once, so a broken chain fails here
/// with its cause rather than at the first file.
pub async fn establish(
    config: &Config,
    observer: &mut impl Observer,
) -> Result<Session, AuthError> {
    let imds = imds::client();
    let instance_id = step(
        observer,
        Link::InstanceMetadata,
        imds::instance_id(&imds).await,
        |id| format!("answered; instance {id}"),
    )?;
    let region = imds::region(&imds, config.region.as_deref()).await;
    let (region, _) = step(observer, Link::Region, region, |(region, from)| {
        format!("{region} ({})", from.describe())
    })?;
    let facts = InstanceFacts {
        instance_id,
        region,
    };
    let scope = step(
        observer,
        Link::SessionPolicy,
        Scope::new(config, &facts),
        Scope::describe,
    )?;
    let source = CredentialSource::Ec2InstanceMetadata;
    let base = step(
        observer,
        Link::InstanceRole,
        source.provider(&imds).await,
        |_| source.describe().to_string(),
    )?;
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(facts.region.clone()))
        .credentials_provider(base)
        .load()
        .await;
    let minter = Minter::from_config(config);
    let name = mint::session_name(&facts.instance_id);
    let provider = minter.provider(&sdk, &name, scope.policy.clone()).await;
    let credentials = SessionCredentials::new(provider, &minter.target());
    step(observer, Link::UploadRole, credentials.get().await, |_| {
        format!("{} with the session policy", minter.target())
    })?;
    Ok(Session {
        facts,
        scope,
        credentials,
        sdk,
    })
}

/// Reports one link's outcome and passes it on.
fn step<T>(
    observer: &mut impl Observer,
    link: Link,
    result: Result<T, AuthError>,
    detail: impl FnOnce(&T) -> String,
) -> Result<T, AuthError> {
    match &result {
        Ok(value) => observer.passed(link, &detail(value)),
        Err(e) => observer.failed(link, e),
    }
    result
}
