//! The upload pipeline, from a complete file in the queue to a confirmed object and a
//! ledger record: workers ([`worker`]) decide each file's fate, send it whole or in parts
//! ([`send`]) through the S3 seam, pace the bytes ([`pacing`]), retry by one policy
//! ([`retry`]) and carry out the after-upload action ([`after`]).

pub mod after;
pub mod pacing;
pub mod progress;
pub mod retry;
pub mod send;
pub mod worker;

#[cfg(test)]
pub(crate) mod tests;

pub use after::AfterUploadAction;
pub use progress::Progress;
pub use send::Sender;
pub use worker::{Context, Worker};

use crate::auth::Session;
use crate::config::{Config, ConfigError};
use crate::keys::KeyRule;
use crate::s3::WriteOptions;

/// What uploads under a session are written with, filled in for its host: the object
/// options (tag and metadata values have their placeholders filled, and S3's limits are
/// checked again with the values) and the key rule (the session's prefix, then
/// `key_template`). `run` and `check` resolve it the same way.
pub struct Plan {
    pub write: WriteOptions,
    pub keys: KeyRule,
}

impl Plan {
    pub fn for_session(config: &Config, session: &Session) -> Result<Plan, ConfigError> {
        let facts = session.facts.prefix_facts();
        Ok(Plan {
            write: WriteOptions::resolve(&config.object, config.overwrite, &facts)?,
            keys: KeyRule::new(
                session.scope.prefix.clone(),
                config.key_template.with_facts(&facts)?,
            ),
        })
    }
}
