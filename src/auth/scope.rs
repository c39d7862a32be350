//! What the upload session may write: the expanded key prefix, narrowed for a session
//! handed to another program ([`Reach`]), and the session policy that confines writes to it.

use super::{AuthError, Facts, policy};
use crate::config::Config;
use policy::Writable;

/// How much under the configured prefix a session may write. Both narrowings are relative
/// to the prefix, so nothing can reach outside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Reach {
    /// Every key under the prefix (the daemon's own session).
    #[default]
    Prefix,
    /// Every key under PREFIX + this sub-prefix (which ends in `/`).
    Under(String),
    /// Exactly the key PREFIX + this.
    Key(String),
}

impl Reach {
    /// `--prefix SUB`: a relative path of non-empty segments; a missing trailing `/` is
    /// added, so `logs` does not also grant `logs-private/`.
    pub fn under(sub: &str) -> Result<Reach, String> {
        let sub = sub.strip_suffix('/').unwrap_or(sub);
        check_relative(sub, "--prefix")?;
        Ok(Reach::Under(format!("{sub}/")))
    }

    /// `--key KEY`: a relative path of non-empty segments.
    pub fn key(key: &str) -> Result<Reach, String> {
        check_relative(key, "--key")?;
        Ok(Reach::Key(key.to_string()))
    }
}

/// Refuses what could step outside the prefix or name nothing: an empty value, a leading
/// `/`, empty, `.` or `..` segments, control characters.
fn check_relative(path: &str, flag: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!("{flag} must not be empty"));
    }
    if path.starts_with('/') {
        return Err(format!(
            "{flag} {path:?} must be relative to the configured key_prefix (no leading `/`)"
        ));
    }
    if let Some(bad) = path
        .split('/')
        .find(|segment| segment.is_empty() || *segment == "." || *segment == "..")
    {
        return Err(format!(
            "{flag} {path:?} has an empty, `.` or `..` segment ({bad:?}): it must name a path \
             under the configured key_prefix"
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("{flag} {path:?} contains a control character"));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Scope {
    /// The expanded key prefix every object key starts with.
    pub prefix: String,
    /// The session policy (packed JSON).
    pub policy: String,
    /// The one resource the policy allows writing.
    pub resource: String,
    /// The S3 actions allowed on it (those of the configured object options included).
    pub actions: Vec<&'static str>,
    /// The KMS key the policy allows encrypting with, if any.
    pub kms_key: Option<String>,
}

impl Scope {
    pub fn new(config: &Config, facts: &Facts, reach: &Reach) -> Result<Scope, AuthError> {
        let prefix = config.key_prefix.expand(&facts.prefix_facts())?;
        let partition = config.partition(&facts.region);
        let emulator = std::env::var_os(policy::EMULATOR_MULTIPART_ACTIONS_VAR).is_some();
        if emulator {
            tracing::warn!(
                "{} is set: the session policy also names the local emulator's multipart \
                 actions; never set it against AWS",
                policy::EMULATOR_MULTIPART_ACTIONS_VAR
            );
        }
        let (prefix, key) = match reach {
            Reach::Prefix => (prefix, None),
            Reach::Under(sub) => (format!("{prefix}{sub}"), None),
            Reach::Key(key) => (prefix.clone(), Some(format!("{prefix}{key}"))),
        };
        let writable = match &key {
            Some(key) => Writable::Key(key),
            None => Writable::Under(&prefix),
        };
        let grants = policy::Grants::of(&config.object);
        let policy =
            policy::session_policy(partition, &config.bucket, writable, &grants, emulator)?;
        Ok(Scope {
            resource: policy::object_arn(partition, &config.bucket, writable),
            actions: grants.actions(),
            kms_key: grants.kms_key,
            prefix,
            policy,
        })
    }

    /// What must allow this session's writes, naming every action the policy grants (the
    /// object options add some): as STS mints a session whatever the principal may do,
    /// only the first write shows what is missing.
    pub fn write_fix(&self, config: &Config) -> String {
        let who = match config.session.role_arn() {
            Some(role) => role.to_string(),
            None => "the IAM user".to_string(),
        };
        let kms = self.kms_key.as_ref().map_or(String::new(), |key| {
            format!(
                "; the key {key} must allow {}",
                policy::KMS_ACTIONS.join(" and ")
            )
        });
        format!(
            "{who} must allow {} on {}, and no bucket policy may deny them{kms}",
            self.actions.join(", "),
            self.resource
        )
    }

    /// `check`'s line for the session policy.
    pub fn describe(&self) -> String {
        let kms = self.kms_key.as_ref().map_or(String::new(), |key| {
            format!(", and {} on {key}", policy::KMS_ACTIONS.join(", "))
        });
        format!(
            "{} on {} only{kms} ({} characters)",
            self.actions.join(", "),
            self.resource,
            self.policy.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowings_stay_under_the_prefix() {
        assert_eq!(Reach::under("logs").unwrap(), Reach::Under("logs/".into()));
        assert_eq!(Reach::under("a/b/").unwrap(), Reach::Under("a/b/".into()));
        assert_eq!(Reach::key("a/b.txt").unwrap(), Reach::Key("a/b.txt".into()));
        for bad in ["", "/a", "a//b", "../x", "a/../../x", "./a", "a/.", "a\nb"] {
            assert!(Reach::key(bad).is_err(), "{bad:?} accepted as --key");
        }
        for bad in ["", "/", "/a", "..", "a//"] {
            assert!(Reach::under(bad).is_err(), "{bad:?} accepted as --prefix");
        }
    }

    #[test]
    fn a_refused_write_names_every_action_the_options_need() {
        let key = "arn:aws:kms:eu-west-1:123456789012:key/k-1";
        let config = Config::parse(&format!(
            "watch_dir = \"/w\"\nstate_dir = \"/s\"\nbucket = \"b-1\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/u\"\nkey_prefix = \"{{hostname}}/\"\n\
             tags = {{ a = \"b\" }}\nsse = \"aws:kms\"\nsse_kms_key_id = \"{key}\""
        ))
        .unwrap();
        let facts = Facts {
            instance_id: None,
            region: "eu-west-1".into(),
            hostname: "h".into(),
        };
        let scope = Scope::new(&config, &facts, &Reach::Prefix).unwrap();
        let fix = scope.write_fix(&config);
        for needle in [
            "role/u must allow",
            "s3:PutObject,",
            "s3:PutObjectTagging",
            "arn:aws:s3:::b-1/h/*",
            "kms:GenerateDataKey",
            key,
        ] {
            assert!(fix.contains(needle), "{needle}: {fix}");
        }
        assert!(!fix.contains("PutObjectAcl"), "{fix}");
    }
}
