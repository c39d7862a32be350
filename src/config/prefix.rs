//! `key_prefix`: a template whose placeholders only the instance's facts can fill, checked
//! so that the prefix can never widen the session policy.

use super::{ConfigError, invalid};

/// `key_prefix` before the instance's facts are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefixTemplate(String);

/// Values for the placeholders of [`KeyPrefixTemplate`].
pub struct PrefixFacts<'a> {
    /// None off EC2 (no instance metadata asked or answering).
    pub instance_id: Option<&'a str>,
    pub region: &'a str,
    pub hostname: &'a str,
}

const PLACEHOLDERS: [&str; 3] = ["instance_id", "region", "hostname"];

impl KeyPrefixTemplate {
    pub fn parse(template: &str) -> Result<KeyPrefixTemplate, ConfigError> {
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                return Err(invalid("key_prefix", "has a `{` without a closing `}`"));
            };
            let name = &rest[start + 1..start + len];
            if !PLACEHOLDERS.contains(&name) {
                return Err(invalid(
                    "key_prefix",
                    format!(
                        "unknown placeholder {{{name}}} (known: {})",
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    ),
                ));
            }
            rest = &rest[start + len + 1..];
        }
        if rest.contains('}') {
            return Err(invalid("key_prefix", "has a `}` without an opening `{`"));
        }
        // Check the literal parts now so that a bad prefix fails at start-up, not at IMDS time.
        check_expanded_prefix(&template.replace(['{', '}'], ""))?;
        Ok(KeyPrefixTemplate(template.to_string()))
    }

    /// Does the template use `{name}`?
    pub fn uses(&self, name: &str) -> bool {
        self.0.contains(&format!("{{{name}}}"))
    }

    pub fn expand(&self, facts: &PrefixFacts<'_>) -> Result<String, ConfigError> {
        let mut expanded = self.0.clone();
        if self.uses("instance_id") {
            let Some(id) = facts.instance_id else {
                return Err(invalid(
                    "key_prefix",
                    "uses {instance_id}, but there is no instance id here (the instance \
                     metadata service did not answer): off EC2, use {hostname} instead",
                ));
            };
            expanded = expanded.replace("{instance_id}", id);
        }
        let expanded = expanded
            .replace("{region}", facts.region)
            .replace("{hostname}", facts.hostname);
        check_expanded_prefix(&expanded)?;
        Ok(expanded)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The prefix ends up in an IAM resource ARN: characters that IAM reads as wildcards or
/// policy variables would widen the session policy, so they are refused.
fn check_expanded_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(invalid(
            "key_prefix",
            "must not be empty: the session policy would then allow writing anywhere in the bucket",
        ));
    }
    if prefix.starts_with('/') {
        return Err(invalid(
            "key_prefix",
            "must not start with `/` (S3 keys have no leading slash)",
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| matches!(c, '*' | '?' | '$') || c.is_control())
    {
        return Err(invalid(
            "key_prefix",
            format!(
                "must not contain {c:?}: IAM would read it as a wildcard or policy variable and \
                 widen the session policy"
            ),
        ));
    }
    if prefix.len() > 512 {
        return Err(invalid("key_prefix", "must be at most 512 bytes"));
    }
    Ok(())
}
