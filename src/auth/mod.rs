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
use mint::Minter;
use policy::PolicyTooLong;

/// Why the chain broke. Each error's `Display` says what failed and why, in one line
/// ([`crate::message::sentence`] of the SDK's cause); what to do about it is its link's fix
/// ([`AuthError::link`], [`Link::fix`]), said once by whoever shows the error.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("instance metadata (IMDSv2) did not answer for {what}: {message}")]
    Imds { what: &'static str, message: String },
    #[error("no region: IMDS did not answer placement/region: {message}")]
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
    #[error("no base credentials from {origin}: {message}")]
    BaseCredentials {
        /// The config line that chose the source.
        origin: String,
        message: String,
        /// The source's link (its fix says where the credentials must be).
        link: Link,
        /// Keys missing from the environment or a profile file do not appear by waiting;
        /// IMDS may still come up.
        permanent: bool,
    },
    #[error("{call} failed: {message}")]
    Mint {
        call: String,
        message: String,
        /// AssumeRole or GetFederationToken.
        link: Link,
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

    /// The link of the chain that broke.
    pub fn link(&self) -> Link {
        match self {
            AuthError::Imds { .. } | AuthError::NoInstanceId { .. } => Link::InstanceMetadata,
            AuthError::Region { .. } => Link::Region,
            AuthError::Config(_) => Link::Config,
            AuthError::Policy(_) => Link::SessionPolicy,
            AuthError::BaseCredentials { link, .. } | AuthError::Mint { link, .. } => *link,
        }
    }

    /// What an operator can do about it: its link's fix, unless waiting is all it takes
    /// (STS unreachable or throttling: the session schedule asks again).
    pub fn fix(&self, config: &Config) -> Option<String> {
        match self {
            AuthError::Mint { refused: false, .. } => None,
            _ => Some(self.link().fix(Some(config))),
        }
    }

    /// The error and its fix, in one line (see [`crate::message::explain`]).
    pub fn explain(&self, config: &Config) -> String {
        match self.fix(config) {
            Some(fix) => crate::message::explain(&self.to_string(), &fix),
            None => crate::message::fit(&self.to_string(), crate::message::MAX_CHARS),
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
                "the base credentials from {} carry a session token: {}",
                source.describe(),
                mint::FEDERATION_FROM_SESSION
            ),
            link: minter.link(),
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
    let credentials = SessionCredentials::new(provider, minter.call(&name), minter.link());
    step(observer, minter.link(), credentials.get().await, |_| {
        format!("{} with the session policy", minter.call(&name))
    })?;
    Ok(Session {
        facts,
        scope,
        credentials,
        sdk,
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
