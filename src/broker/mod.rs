//! The credential broker (`broker = true`): the running daemon hands sessions to
//! `s3drop credentials` and `s3drop exec` over a Unix socket, so the programs of a host
//! reuse sessions instead of walking IMDS and calling STS once each (a script running `aws
//! s3 cp` a thousand times through `credential_process` would otherwise make a thousand
//! AssumeRole calls against the account's STS quota). The whole prefix is the daemon's own
//! session; a narrower scope (`--prefix`, `--key`) is minted once, with its own session
//! policy, and cached ([`MAX_SCOPES`], the least recently used dropped). A session is
//! handed out only with [`MIN_LEFT`] ahead of it, so an SDK never takes one it must refresh
//! at once; otherwise a fresh one is minted first.
//!
//! Who may ask is who may open the socket (mode 0660, the daemon's group: the `s3drop`
//! group, whose members may already drop files, so it grants no more than the drop folder
//! does). Every hand-out is logged and counted with the caller's uid and pid
//! (`SO_PEERCRED`) and the scope; no secret is ever logged.

pub mod children;
pub mod endpoint;
mod server;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use crate::auth::mint::{Minter, classify, session_name};
use crate::auth::{Facts, Reach, Scope, Session, SessionCredentials};
use crate::config::Config;
use crate::events::{BrokerMinted, Event};

pub use server::{Bound, Shared, bind};

/// Scopes cached at most; the least recently used is dropped for a new one.
pub const MAX_SCOPES: usize = 64;

/// A session is handed out only with this long ahead of it: botocore and the other SDKs
/// refresh credentials 15 minutes before they expire (and insist at 10), so one handed out
/// with less would be asked for again at once, by every call.
pub const MIN_LEFT: Duration = Duration::from_secs(15 * 60);

/// Why a session was not handed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandOutError {
    /// The scope cannot be granted (an invalid `--key`, a policy too long): the caller's
    /// to fix.
    #[error("{0}")]
    Refused(String),
    /// STS did not mint it (unreachable, throttling, refused).
    #[error("{0}")]
    Failed(String),
}

impl HandOutError {
    pub fn result(&self) -> crate::metrics::BrokerResult {
        match self {
            HandOutError::Refused(_) => crate::metrics::BrokerResult::Refused,
            HandOutError::Failed(_) => crate::metrics::BrokerResult::Failed,
        }
    }
}

/// The least time left a session `lifetime` long has when handed out: [`MIN_LEFT`], or half
/// its length for sessions under 30 minutes (which could never have 15 left).
fn min_left(lifetime: Duration) -> Duration {
    MIN_LEFT.min(lifetime / 2)
}

/// Has `credentials` at least `left` ahead of it at `now`?
fn fresh_at(credentials: &Credentials, now: SystemTime, left: Duration) -> bool {
    credentials
        .expiry()
        .is_none_or(|expiry| expiry >= now + left)
}

/// One scope's minting, and the session it last minted (with when).
struct Cached {
    provider: SharedCredentialsProvider,
    credentials: Option<(Credentials, SystemTime)>,
}

/// A scope's entry: held while its session is minted, so a burst of callers mints once.
type Entry = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// The scopes minted, with when each was last asked for (the least recent is dropped).
#[derive(Default)]
struct Scopes {
    entries: HashMap<Reach, (u64, Entry)>,
    clock: u64,
}

impl Scopes {
    /// `reach`'s entry, new if need be (dropping the least recently used past the bound).
    fn entry(&mut self, reach: &Reach) -> Entry {
        self.clock += 1;
        let clock = self.clock;
        if let Some((used, entry)) = self.entries.get_mut(reach) {
            *used = clock;
            return entry.clone();
        }
        if self.entries.len() >= MAX_SCOPES
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(reach, _)| reach.clone())
        {
            self.entries.remove(&oldest);
        }
        let entry = Arc::new(tokio::sync::Mutex::new(None));
        self.entries.insert(reach.clone(), (clock, entry.clone()));
        crate::metrics::get()
            .broker_scopes
            .set(self.entries.len() as i64);
        entry
    }
}

/// What the daemon hands out, and how it mints what it does not hold.
pub struct Broker {
    config: Config,
    facts: Facts,
    /// The base credentials' SDK config (what mints sessions).
    sdk: SdkConfig,
    /// The daemon's own session (the whole prefix).
    own: SessionCredentials,
    /// The expanded key prefix.
    prefix: String,
    region: String,
    scopes: std::sync::Mutex<Scopes>,
}

impl Broker {
    pub fn new(config: &Config, session: &Session) -> Broker {
        Broker {
            config: config.clone(),
            facts: session.facts.clone(),
            sdk: session.sdk.clone(),
            own: session.credentials.clone(),
            prefix: session.scope.prefix.clone(),
            region: session.facts.region.clone(),
            scopes: Default::default(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// What a scope may write, as a key or key pattern (for logs and `status`).
    pub fn describe(&self, reach: &Reach) -> String {
        match reach {
            Reach::Prefix => format!("{}*", self.prefix),
            Reach::Under(sub) => format!("{}{sub}*", self.prefix),
            Reach::Key(key) => format!("{}{key}", self.prefix),
        }
    }

    /// Has `credentials`, minted at `minted` (the daemon's own: a configured length ago at
    /// most), at least [`min_left`] ahead of it?
    fn fresh(&self, credentials: &Credentials, minted: Option<SystemTime>) -> bool {
        let lifetime = match (minted, credentials.expiry()) {
            (Some(minted), Some(expiry)) => expiry.duration_since(minted).unwrap_or_default(),
            _ => self.config.session_duration,
        };
        fresh_at(credentials, SystemTime::now(), min_left(lifetime))
    }

    /// A session for `reach` with at least [`Broker::min_left`] ahead of it: the daemon's
    /// own for the whole prefix while it is fresh enough, else the scope's cached one, else
    /// one minted now (once per scope however many ask at once).
    pub async fn hand_out(&self, reach: &Reach) -> Result<Credentials, HandOutError> {
        if *reach == Reach::Prefix
            && let Ok(own) = self.own.get().await
            && self.fresh(&own, None)
        {
            return Ok(own);
        }
        let entry = self.scopes.lock().expect("scopes lock").entry(reach);
        let mut cached = entry.lock().await;
        if let Some(Cached {
            credentials: Some((credentials, minted)),
            ..
        }) = cached.as_ref()
            && self.fresh(credentials, Some(*minted))
        {
            return Ok(credentials.clone());
        }
        if cached.is_none() {
            *cached = Some(Cached {
                provider: self.provider(reach)?,
                credentials: None,
            });
        }
        let cached = cached.as_mut().expect("set above");
        let asked = SystemTime::now();
        match cached.provider.provide_credentials().await {
            Ok(credentials) => {
                let lifetime = credentials
                    .expiry()
                    .and_then(|e| e.duration_since(asked).ok())
                    .unwrap_or(self.config.session_duration);
                BrokerMinted {
                    scope: &self.describe(reach),
                    expiry: credentials.expiry(),
                    min_left: min_left(lifetime),
                }
                .emit();
                cached.credentials = Some((credentials.clone(), asked));
                Ok(credentials)
            }
            Err(e) => {
                crate::metrics::get().sts(classify(&e).result());
                Err(HandOutError::Failed(format!(
                    "{}: {}",
                    self.minter().call(&self.name()),
                    crate::message::sentence(&e)
                )))
            }
        }
    }

    fn minter(&self) -> Minter {
        Minter {
            session: self.config.session.clone(),
            duration: self.config.session_duration,
        }
    }

    fn name(&self) -> String {
        session_name(self.facts.who())
    }

    /// What mints `reach`'s sessions: its own session policy, checked now.
    fn provider(&self, reach: &Reach) -> Result<SharedCredentialsProvider, HandOutError> {
        let scope = Scope::new(&self.config, &self.facts, reach)
            .map_err(|e| HandOutError::Refused(e.to_string()))?;
        Ok(self
            .minter()
            .provider(&self.sdk, &self.name(), scope.policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiring_in(seconds: u64) -> Credentials {
        let now = SystemTime::now();
        Credentials::new(
            "AKID",
            "secret",
            Some("token".into()),
            Some(now + Duration::from_secs(seconds)),
            "test",
        )
    }

    #[test]
    fn a_session_is_handed_out_only_with_fifteen_minutes_ahead() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        // (A session's lifetime, from its mint to its expiry.)
        assert!(fresh_at(&expiring_in(3600), now, min_left(hour)));
        assert!(fresh_at(&expiring_in(15 * 60 + 5), now, min_left(hour)));
        assert!(!fresh_at(&expiring_in(15 * 60 - 5), now, min_left(hour)));
        // A 15-minute session (STS's shortest) is handed out for its first half, and so is a
        // shorter one (an S3-compatible server's, or a test's).
        let short = Duration::from_secs(900);
        assert_eq!(min_left(short), Duration::from_secs(450));
        assert!(fresh_at(&expiring_in(890), now, min_left(short)));
        assert!(!fresh_at(&expiring_in(400), now, min_left(short)));
    }

    #[test]
    fn scopes_are_bounded_and_the_least_recently_used_goes() {
        let mut scopes = Scopes::default();
        let key = |i: usize| Reach::Key(format!("k{i}"));
        let first = scopes.entry(&key(0));
        for i in 1..MAX_SCOPES {
            scopes.entry(&key(i));
        }
        // k0 used again: k1 is now the least recently used.
        assert!(Arc::ptr_eq(&first, &scopes.entry(&key(0))));
        scopes.entry(&key(MAX_SCOPES));
        assert_eq!(scopes.entries.len(), MAX_SCOPES);
        assert!(scopes.entries.contains_key(&key(0)));
        assert!(!scopes.entries.contains_key(&key(1)));
        assert!(scopes.entries.contains_key(&key(MAX_SCOPES)));
    }
}
