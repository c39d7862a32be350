//! How the scoped upload session is minted from the base credentials: a closed set chosen
//! by the config. Today: `sts:AssumeRole` into the upload role with the inline session
//! policy (the session's permissions are the intersection of the role's and the policy's).

use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;

use crate::config::{Config, RoleArn};

/// A way to mint the upload session.
#[derive(Debug, Clone)]
pub enum Minter {
    AssumeRole {
        role_arn: RoleArn,
        external_id: Option<String>,
        duration: Duration,
    },
}

impl Minter {
    pub fn from_config(config: &Config) -> Minter {
        Minter::AssumeRole {
            role_arn: config.role_arn.clone(),
            external_id: config.external_id.clone(),
            duration: config.session_duration,
        }
    }

    /// What the session is minted into, for logs and errors.
    pub fn target(&self) -> String {
        match self {
            Minter::AssumeRole { role_arn, .. } => role_arn.to_string(),
        }
    }

    /// A credentials provider that mints a new session with `policy` each time it is asked
    /// (the session cache decides when). `name` identifies the session in CloudTrail.
    pub async fn provider(
        &self,
        base: &SdkConfig,
        name: &str,
        policy: String,
    ) -> AssumeRoleProvider {
        match self {
            Minter::AssumeRole {
                role_arn,
                external_id,
                duration,
            } => {
                let mut builder = AssumeRoleProvider::builder(role_arn.as_str())
                    .session_name(name)
                    .policy(policy)
                    .session_length(*duration)
                    .configure(base);
                if let Some(external_id) = external_id {
                    builder = builder.external_id(external_id.clone());
                }
                builder.build().await
            }
        }
    }
}

/// A session name STS accepts (`[\w+=,.@-]`, at most 64 characters) that names the instance
/// in CloudTrail.
pub fn session_name(instance_id: &str) -> String {
    let cleaned: String = instance_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("s3drop-{cleaned}");
    name.truncate(64);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_name_is_sts_safe() {
        assert_eq!(
            session_name("i-0123456789abcdef0"),
            "s3drop-i-0123456789abcdef0"
        );
        assert_eq!(session_name("a b/c"), "s3drop-a-b-c");
        assert_eq!(session_name(&"x".repeat(100)).len(), 64);
    }
}
