//! From nothing to a prefix-scoped upload session, as one chain that `run`, `check`,
//! `credentials` and `exec` all walk: facts about the host (from IMDS when needed) → the key
//! prefix and its session policy ([`scope`]) → the base credentials ([`source`]) → the
//! upload session minted with the policy ([`mint`]) → a cache that refreshes it
//! ([`cache`]). Each link reports to a [`chain::Observer`].

mod cache;
pub mod imds;
pub mod mint;
pub mod policy;
pub mod schedule;
pub mod scope;
pub mod source;

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_types::region::Region;

pub use cache::SessionCredentials;
pub use imds::Facts;
pub use scope::{Reach, Scope};
pub use source::CredentialSource;

use crate::chain::{Link, Observer};
use crate::config::{Config, ConfigError, SessionType};
use crate::keys::KeyRule;
use crate::s3::WriteOptions;
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
    #[error(
        "key_prefix uses {{instance_id}}, but the instance metadata service did not answer \
         ({message}): off EC2, use {{hostname}} in key_prefix instead"
    )]
    NoInstanceId { message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyTooLong),
    #[error("no base credentials from {origin}: {message} ({hint})")]
    BaseCredentials {
        /// The config line that chose the source.
        origin: String,
        message: String,
        hint: &'static str,
        /// Keys missing from the environment or a profile file do not appear by waiting;
        /// IMDS may still come up.
        permanent: bool,
    },
    #[error("{call} with the session policy failed: {message} ({hint})")]
    Mint {
        call: String,
        message: String,
        hint: &'static str,
        /// Refused (denied, malformed policy) rather than unreachable.
        refused: bool,
    },
}

impl AuthError {
    /// Will trying again without an operator's change not help? A bad prefix or a refused
    /// session needs an operator; IMDS or STS being unreachable may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            AuthError::Config(_) | AuthError::Policy(_) => true,
            AuthError::Mint { refused, .. } => *refused,
            AuthError::BaseCredentials { permanent, .. } => *permanent,
            AuthError::Imds { .. } | AuthError::NoInstanceId { .. } | AuthError::Region { .. } => {
                false
            }
        }
    }
}

/// A minted upload session: where it runs, what it may write, and the cache that keeps
/// its credentials fresh.
pub struct Session {
    pub facts: Facts,
    pub scope: Scope,
    pub credentials: SessionCredentials,
    /// Region and endpoints for S3 clients (credentials are handed to each request).
    pub sdk: SdkConfig,
    /// What every object is written with, filled in for this host.
    pub write: WriteOptions,
    /// How each file's key is made: this session's prefix, then `key_template` with this
    /// host's facts filled in.
    pub keys: KeyRule,
}

/// What to mint: the daemon's session, or one for another program (narrower, or of
/// another length).
#[derive(Debug, Clone)]
pub struct Request {
    pub reach: Reach,
    pub duration: Duration,
}

impl Request {
    /// The daemon's own session: the whole prefix, for `session_duration_seconds`.
    pub fn daemon(config: &Config) -> Request {
        Request {
            reach: Reach::Prefix,
            duration: config.session_duration,
        }
    }
}

/// Walks the credential chain and mints the daemon's session once, so a broken chain
/// fails here with its cause rather than at the first file.
pub async fn establish(
    config: &Config,
    observer: &mut impl Observer,
) -> Result<Session, AuthError> {
    establish_for(config, &Request::daemon(config), observer).await
}

/// Walks the credential chain and mints the session `request` asks for.
pub async fn establish_for(
    config: &Config,
    request: &Request,
    observer: &mut impl Observer,
) -> Result<Session, AuthError> {
    let imds = imds::client();
    let facts = facts(config, &imds, observer).await?;
    let scope = step(
        observer,
        Link::SessionPolicy,
        Scope::new(config, &facts, &request.reach),
        Scope::describe,
    )?;
    let write = WriteOptions::resolve(&config.object, config.overwrite, &facts.prefix_facts())?;
    let keys = KeyRule::new(
        scope.prefix.clone(),
        config.key_template.with_facts(&facts.prefix_facts())?,
    );
    let source = &config.source;
    let base = step(observer, source.link(), source.base(&imds).await, |base| {
        source.answered(base)
    })?;
    let minter = Minter {
        session: config.session.clone(),
        duration: request.duration,
    };
    let name = mint::session_name(facts.who());
    if minter.session == SessionType::FederationToken && base.is_session {
        // STS would refuse; say why before asking.
        let refused = AuthError::Mint {
            call: minter.call(&name),
            message: format!(
                "the base credentials from {} are temporary (they carry a session token)",
                source.describe()
            ),
            hint: mint::FEDERATION_FROM_SESSION,
            refused: true,
        };
        observer.failed(minter.link(), &refused);
        return Err(refused);
    }
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(facts.region.clone()))
        .credentials_provider(base.provider)
        .load()
        .await;
    let provider = minter.provider(&sdk, &name, scope.policy.clone());
    let credentials = SessionCredentials::new(provider, minter.call(&name), minter.hint());
    step(observer, minter.link(), credentials.get().await, |_| {
        format!("{} with the session policy", minter.call(&name))
    })?;
    Ok(Session {
        facts,
        scope,
        credentials,
        sdk,
        write,
        keys,
    })
}

/// The instance id (only when the source or the prefix needs it: off EC2 IMDS is not
/// asked), the region and the host name.
async fn facts(
    config: &Config,
    imds: &aws_config::imds::Client,
    observer: &mut impl Observer,
) -> Result<Facts, AuthError> {
    let from_instance = config.source == CredentialSource::Ec2InstanceMetadata;
    let instance_id = if from_instance || config.key_prefix.uses("instance_id") {
        let id = imds::instance_id(imds).await.map_err(|e| match e {
            AuthError::Imds { message, .. } if !from_instance => {
                AuthError::NoInstanceId { message }
            }
            other => other,
        });
        Some(step(observer, Link::InstanceMetadata, id, |id| {
            format!("answered; instance {id}")
        })?)
    } else {
        observer.skipped(
            Link::InstanceMetadata,
            &format!(
                "not needed ({} and key_prefix has no {{instance_id}})",
                config.source.describe()
            ),
        );
        None
    };
    let region = imds::region(imds, config.region.as_deref()).await;
    let (region, _) = step(observer, Link::Region, region, |(region, from)| {
        format!("{region} ({})", from.describe())
    })?;
    Ok(Facts {
        instance_id,
        region,
        hostname: imds::hostname(),
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
