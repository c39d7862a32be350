//! What the upload session may write: the expanded key prefix and the session policy that
//! confines writes to it.

use super::{AuthError, InstanceFacts, policy};
use crate::config::{Config, PrefixFacts};

#[derive(Debug, Clone)]
pub struct Scope {
    /// The expanded key prefix every object key starts with.
    pub prefix: String,
    /// The session policy (packed JSON).
    pub policy: String,
    /// The one resource the policy allows writing.
    pub resource: String,
}

impl Scope {
    pub fn new(config: &Config, facts: &InstanceFacts) -> Result<Scope, AuthError> {
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

    /// `check`'s line for the session policy.
    pub fn describe(&self) -> String {
        format!(
            "{} on {} only ({} characters)",
            policy::ACTIONS.join(", "),
            self.resource,
            self.policy.len()
        )
    }
}
